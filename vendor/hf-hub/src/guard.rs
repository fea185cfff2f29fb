//! BitingLip: what a hub (or a mirror, or anyone on the path of an `http://` endpoint)
//! sends is input. These checks run before a value becomes a path, a size or a place to
//! connect to: commit and blob names are hex of the right length, file names are relative
//! and normalised, a download's content matches the name it is stored under, and a
//! redirect never downgrades the scheme nor leads into the local network unless the
//! configured endpoint is itself there.

use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

/// Redirects followed for one request at the most.
pub const MAX_REDIRECTS: usize = 5;

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A git commit id: 40 hex digits.
pub fn is_commit(s: &str) -> bool {
    s.len() == 40 && is_hex(s)
}

/// The blob name an `ETag` / `X-Linked-Etag` header gives, lowercased: a git blob id (40
/// hex digits) or a sha256 (64), with the quotes and a weak `W/` prefix taken off. None
/// for anything else.
pub fn blob_name(header: &str) -> Option<String> {
    let raw = header.trim();
    let raw = raw.strip_prefix("W/").unwrap_or(raw);
    let raw = raw.trim_matches('"');
    ((raw.len() == 40 || raw.len() == 64) && is_hex(raw)).then(|| raw.to_ascii_lowercase())
}

/// A repository file name the hub lists: relative, normalised, `/`-separated, without
/// `..`, `.`, empty or absolute parts, backslashes or control characters, at most 1,024
/// bytes and 16 levels deep.
pub fn is_safe_filename(name: &str) -> bool {
    if name.is_empty() || name.len() > 1024 || name.contains('\\') || name.chars().any(char::is_control) {
        return false;
    }
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() <= 16 && parts.iter().all(|p| !p.is_empty() && *p != "." && *p != "..")
}

/// A revision as a ref name: what [`is_safe_filename`] accepts (branches may hold `/`),
/// at most 255 bytes.
pub fn is_safe_revision(rev: &str) -> bool {
    rev.len() <= 255 && is_safe_filename(rev)
}

/// Whether `content` (a file) has the content its blob name promises: a sha256 for a
/// 64-digit name (LFS files), a git blob id (`sha1("blob <len>\0" + content)`) for a
/// 40-digit one.
pub fn content_matches(blob: &str, content: &Path) -> std::io::Result<bool> {
    use sha1::Digest as _;
    let mut file = std::fs::File::open(content)?;
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let digest: Vec<u8> = if blob.len() == 64 {
        let mut h = sha2::Sha256::new();
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        h.finalize().to_vec()
    } else {
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {len}\0").as_bytes());
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        h.finalize().to_vec()
    };
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(hex == blob)
}

/// Loopback, private, link-local, unique-local, unspecified, or a name of the local
/// machine (`localhost`, `*.localhost`).
pub fn is_local_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        url::Host::Ipv4(ip) => is_local_ip(IpAddr::V4(*ip)),
        url::Host::Ipv6(ip) => is_local_ip(IpAddr::V6(*ip)),
    }
}

/// See [`is_local_host`].
pub fn is_local_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                // 100.64.0.0/10, carrier-grade NAT: not the public internet either.
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_local_ip(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
        }
    }
}

/// Whether a request may follow a redirect from `from` to `to`: http or https only, never
/// from https to http, and never to a local address (see [`is_local_host`]) unless
/// `local_allowed` (the configured endpoint is itself local). The reason when not.
pub fn redirect_allowed(from: &url::Url, to: &url::Url, local_allowed: bool) -> Result<(), String> {
    if !matches!(to.scheme(), "http" | "https") {
        return Err(format!("a redirect to a {} URL", to.scheme()));
    }
    if from.scheme() == "https" && to.scheme() != "https" {
        return Err(format!("a redirect from https to {}", to.scheme()));
    }
    match to.host() {
        None => Err("a redirect to a URL without a host".to_string()),
        Some(host) if !local_allowed && is_local_host(&host) => {
            Err(format!("a redirect to a local address ({host}) from a hub that is not local"))
        }
        Some(_) => Ok(()),
    }
}

/// Whether the endpoint's host is local: then redirects to local addresses are allowed.
pub fn endpoint_is_local(endpoint: &str) -> bool {
    url::Url::parse(endpoint).ok().and_then(|u| u.host().map(|h| is_local_host(&h))).unwrap_or(false)
}

// Tested in BitingLip, where the workspace runs the tests: `actors/src/ops/hub.rs`.
