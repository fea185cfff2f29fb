//! The server's side of the roles' permissions: nats-server's `authorization` block with
//! one nkey user per role, the leaf node's users and config, the subjects as a leaf
//! site's clients send them (`in_domain`), and the credentials folder `nats init` writes
//! (a seed file per role, `auth.conf`).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use bitinglip_bus_schema::Subjects;

use super::{permissions, NatsRole};

fn quoted(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// A subject as a client in a leaf node's site sends it to JetStream in `domain` (pure):
/// the API and KV subjects get the domain's prefix (the hub maps them back); the rest
/// (acks, flow control, object chunks, plain subjects) are as they are.
pub fn in_domain(subject: &str, domain: Option<&str>) -> String {
    let Some(d) = domain else { return subject.to_string() };
    if let Some(rest) = subject.strip_prefix("$JS.API.") {
        format!("$JS.{d}.API.{rest}")
    } else if subject.starts_with("$KV.") {
        format!("$JS.{d}.API.{subject}")
    } else {
        subject.to_string()
    }
}

/// One nkey user of a server's config with its permissions (publish subjects as sent in
/// `domain`), allowed only `connection_type` connections.
fn user_entry(
    out: &mut String,
    role: NatsRole,
    public_key: &str,
    s: &Subjects,
    domain: Option<&str>,
    connection_type: &str,
) {
    let mut p = permissions(role, s);
    p.publish_allow = p.publish_allow.iter().map(|x| in_domain(x, domain)).collect();
    p.publish_deny = p.publish_deny.iter().map(|x| in_domain(x, domain)).collect();
    let _ = writeln!(out, "    # {}", role.as_str());
    let _ = writeln!(out, "    {{\n      nkey: \"{public_key}\"\n      allowed_connection_types: [\"{connection_type}\"]\n      permissions: {{");
    if p.publish_allow.is_empty() {
        let _ = writeln!(out, "        publish: {{ deny: {} }}", quoted(&p.publish_deny));
    } else {
        let _ = writeln!(out, "        publish: {{ allow: {}", quoted(&p.publish_allow));
        if !p.publish_deny.is_empty() {
            let _ = writeln!(out, "          deny: {}", quoted(&p.publish_deny));
        }
        let _ = writeln!(out, "        }}");
    }
    let _ = writeln!(out, "        subscribe: {{ allow: {} }}", quoted(&p.subscribe_allow));
    if p.allow_responses {
        let _ = writeln!(out, "        allow_responses: true");
    }
    let _ = writeln!(out, "      }}\n    }}");
}

/// nats-server's config for these users (role, nkey public key), ready to `include` in a
/// server's config: an `authorization` block with the users of the application (the
/// global account, each allowed only client connections), the system account `$SYS`
/// with the `events` user, and, when the cluster's JetStream has a `domain`, the `leaf`
/// user, allowed only leaf node connections.
pub fn authorization_block(users: &[(NatsRole, String)], s: &Subjects, domain: Option<&str>) -> String {
    let mut out =
        String::from("# BitingLip's NATS users, one per role (`bitinglip nats init`).\nauthorization {\n  users = [\n");
    for (role, public_key) in users.iter().filter(|(r, _)| !matches!(r, NatsRole::Events | NatsRole::Leaf)) {
        user_entry(&mut out, *role, public_key, s, None, "STANDARD");
    }
    if let (Some(d), Some((_, public_key))) = (domain, users.iter().find(|(r, _)| *r == NatsRole::Leaf)) {
        user_entry(&mut out, NatsRole::Leaf, public_key, s, Some(d), "LEAFNODE");
    }
    out.push_str("  ]\n}\n");
    let events: Vec<_> = users.iter().filter(|(r, _)| *r == NatsRole::Events).collect();
    if !events.is_empty() {
        out.push_str("# The server's own account: its events of client connections (cluster managers read\n");
        out.push_str("# which node's connection closed).\naccounts {\n  \"$SYS\" {\n  users = [\n");
        for (role, public_key) in events {
            user_entry(&mut out, *role, public_key, s, None, "STANDARD");
        }
        out.push_str("  ]\n  }\n}\nsystem_account: \"$SYS\"\n");
    }
    out
}

/// The local users of a leaf node's nats-server at an edge site: the `worker` user, its
/// JetStream subjects sent in `domain`.
pub fn leaf_authorization_block(worker_public_key: &str, s: &Subjects, domain: &str) -> String {
    let mut out = String::from(
        "# The users of an edge site's leaf node (`bitinglip nats init --jetstream-domain`).\nauthorization {\n  users = [\n",
    );
    user_entry(&mut out, NatsRole::Worker, worker_public_key, s, Some(domain), "STANDARD");
    out.push_str("  ]\n}\n");
    out
}

/// The file an edge site's leaf node `include`s: its local users.
pub const LEAF_AUTH_FILE: &str = "leaf-auth.conf";
/// An edge site's leaf node config: the remote (the cluster, as the `leaf` user) and
/// its local users. Holds the `leaf` seed.
pub const LEAF_FILE: &str = "leaf.conf";

/// Writes `dir/leaf.conf` (mode 0600: it holds the `leaf` seed) for a leaf node that
/// connects to the cluster's leaf node listeners `hubs` (`nats-leaf://host:7422`).
pub fn write_leaf_config(dir: &Path, hubs: &[String]) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let seed = std::fs::read_to_string(seed_file(dir, NatsRole::Leaf))?;
    let urls: Vec<String> = hubs.iter().map(|u| format!("\"{u}\"")).collect();
    let text = format!(
        "# An edge site's leaf node: the cluster as the `leaf` user, and the site's own users.\n\
         leafnodes {{\n  remotes: [\n    {{ urls: [{}], nkey: \"{}\" }}\n  ]\n}}\ninclude \"{LEAF_AUTH_FILE}\"\n",
        urls.join(", "),
        seed.trim()
    );
    let path = dir.join(LEAF_FILE);
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    Ok(path)
}

/// The file holding `role`'s nkey seed in a credentials folder.
pub fn seed_file(dir: &Path, role: NatsRole) -> PathBuf {
    dir.join(format!("{}.nk", role.as_str()))
}

/// The seed file of worker node `name`'s own identity (`worker-<name>.nk`): a `worker`
/// user of its own, revocable alone.
pub fn worker_seed_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("worker-{name}.nk"))
}

/// Whether `name` can name a worker identity: a node id (letters, digits, `-`, `_`; at
/// most 64).
pub fn is_worker_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The seed `role` connects with from folder `dir` on node `node_id`: a worker node's own
/// identity (`worker-<node id>.nk`) when there is one, else the role's (`<role>.nk`).
pub fn seed_for(dir: &Path, role: NatsRole, node_id: &str) -> PathBuf {
    if role == NatsRole::Worker && is_worker_name(node_id) {
        let own = worker_seed_file(dir, node_id);
        if own.exists() {
            return own;
        }
    }
    seed_file(dir, role)
}

/// Makes a seed for each worker identity of `add` that has none (mode 0600, never
/// overwritten) and removes those of `revoke`; returns the identities created. Run
/// [`init_credentials`] after, so that `auth.conf` lists the identities left.
pub fn manage_worker_identities(dir: &Path, add: &[String], revoke: &[String]) -> std::io::Result<Vec<String>> {
    use std::os::unix::fs::OpenOptionsExt;
    let bad = add.iter().chain(revoke).find(|n| !is_worker_name(n));
    if let Some(name) = bad {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("worker identity {name:?}: use 1 to 64 letters, digits, '-' and '_' (the node's id)"),
        ));
    }
    std::fs::create_dir_all(dir)?;
    let mut created = Vec::new();
    for name in add {
        let path = worker_seed_file(dir, name);
        if path.exists() {
            continue;
        }
        let pair = nkeys::KeyPair::new_user();
        let seed = pair.seed().map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        std::io::Write::write_all(&mut file, format!("{seed}\n").as_bytes())?;
        created.push(name.clone());
    }
    for name in revoke {
        match std::fs::remove_file(worker_seed_file(dir, name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(created)
}

/// The worker identities whose seeds are in `dir` (`worker-<name>.nk`), by name.
fn worker_identities(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some(id) = name.strip_prefix("worker-").and_then(|n| n.strip_suffix(".nk")) {
            if is_worker_name(id) {
                found.push((id.to_string(), path.clone()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The file `include`d by a server's config.
pub const AUTH_FILE: &str = "auth.conf";

/// Makes a credentials folder: one nkey seed per role (`<role>.nk`, mode 0600) and the
/// server's `auth.conf` with their public keys; with the cluster's JetStream `domain`,
/// also `leaf-auth.conf` for edge sites' leaf nodes. An existing seed is kept (never
/// overwritten) and the files are written again from the seeds found; returns the roles
/// whose seeds it created.
pub fn init_credentials(dir: &Path, s: &Subjects, domain: Option<&str>) -> std::io::Result<Vec<NatsRole>> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let mut created = Vec::new();
    let mut users = Vec::new();
    for role in NatsRole::ALL {
        let path = seed_file(dir, role);
        let pair = match std::fs::read_to_string(&path) {
            Ok(seed) => nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: not an nkey seed: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pair = nkeys::KeyPair::new_user();
                let seed = pair.seed().map_err(|e| std::io::Error::other(e.to_string()))?;
                // create_new: two starts at once never overwrite each other's seed.
                let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
                std::io::Write::write_all(&mut file, format!("{seed}\n").as_bytes())?;
                created.push(role);
                pair
            }
            Err(e) => return Err(e),
        };
        users.push((role, pair.public_key()));
    }
    // Worker nodes' own identities: `worker` users each, revoked by removing the seed.
    for (name, path) in worker_identities(dir)? {
        let seed = std::fs::read_to_string(&path)?;
        let pair = nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not an nkey seed ({name}): {e}", path.display()),
            )
        })?;
        users.push((NatsRole::Worker, pair.public_key()));
    }
    let block = authorization_block(&users, s, domain);
    let tmp = dir.join(format!("{AUTH_FILE}.tmp"));
    std::fs::write(&tmp, block)?;
    std::fs::rename(&tmp, dir.join(AUTH_FILE))?;
    if let (Some(d), Some((_, worker))) = (domain, users.iter().find(|(r, _)| *r == NatsRole::Worker)) {
        std::fs::write(dir.join(LEAF_AUTH_FILE), leaf_authorization_block(worker, s, d))?;
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_names_every_user() {
        let s = Subjects::default();
        let users: Vec<_> = NatsRole::ALL.iter().map(|r| (*r, format!("U{}", r.as_str().to_uppercase()))).collect();
        let block = authorization_block(&users, &s, None);
        for (role, key) in users.iter().filter(|(r, _)| *r != NatsRole::Leaf) {
            assert!(block.contains(&format!("nkey: \"{key}\"")), "{role:?}");
        }
        // Without a JetStream domain there is no leaf user (a leaf could not reach JetStream).
        assert!(!block.contains("ULEAF"));
        assert!(!block.contains("LEAFNODE"));
        // Every node role answers (at least whether it is alive); clients do not.
        assert_eq!(block.matches("allow_responses: true").count(), 6);
        // The events user is in the system account, and may only read disconnects.
        let (app, system) = block.split_once("accounts {").expect("a system account");
        assert!(!app.contains("UEVENTS") && system.contains("UEVENTS"));
        assert!(system.contains("subscribe: { allow: [\"$SYS.ACCOUNT.*.DISCONNECT\"] }"), "{system}");
        assert!(system.contains("publish: { deny: [\">\"] }"), "{system}");
        assert!(block.trim_end().ends_with("system_account: \"$SYS\""));
    }

    #[test]
    fn subjects_go_to_jetstream_through_the_domain() {
        assert_eq!(in_domain("$JS.API.STREAM.INFO.T", Some("hub")), "$JS.hub.API.STREAM.INFO.T");
        assert_eq!(in_domain("$KV.b.>", Some("hub")), "$JS.hub.API.$KV.b.>");
        assert_eq!(in_domain("$JS.ACK.T.>", Some("hub")), "$JS.ACK.T.>");
        assert_eq!(in_domain("bitinglip.v1.task.*.events", Some("hub")), "bitinglip.v1.task.*.events");
        assert_eq!(in_domain("$JS.API.INFO", None), "$JS.API.INFO");
    }

    #[test]
    fn the_leaf_user_is_a_worker_through_the_domain_on_leaf_connections_only() {
        let s = Subjects::default();
        let users: Vec<_> = NatsRole::ALL.iter().map(|r| (*r, format!("U{}", r.as_str().to_uppercase()))).collect();
        let block = authorization_block(&users, &s, Some("hub"));
        let leaf = &block[block.find("# leaf").expect("a leaf user")..];
        // The last user of the application's block.
        let leaf = &leaf[..leaf.find("  ]\n}").expect("the end of the users")];
        assert!(leaf.contains("allowed_connection_types: [\"LEAFNODE\"]"), "{leaf}");
        assert!(leaf.contains("\"$JS.hub.API.CONSUMER.MSG.NEXT.BITINGLIP_TASKS.>\""), "{leaf}");
        assert!(
            leaf.contains("\"$JS.hub.API.STREAM.DELETE.BITINGLIP_TASKS\""),
            "the deny list, in the domain too: {leaf}"
        );
        assert!(leaf.contains("\"_INBOX_cluster_manager.>\""), "{leaf}");
        assert!(!leaf.contains("allow_responses"), "{leaf}");
        // Every other user may only connect as a client.
        assert_eq!(block.matches("\"STANDARD\"").count(), NatsRole::ALL.len() - 1);
    }

    #[test]
    fn worker_identities_are_node_ids_listed_in_the_block_and_revoked_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = Subjects::default();
        assert!(manage_worker_identities(dir.path(), &["../x".to_string()], &[]).is_err());
        let names = vec!["box-a".to_string(), "box-b".to_string()];
        assert_eq!(manage_worker_identities(dir.path(), &names, &[]).unwrap(), names);
        init_credentials(dir.path(), &s, None).unwrap();
        let key = |name: &str| {
            let seed = std::fs::read_to_string(worker_seed_file(dir.path(), name)).unwrap();
            nkeys::KeyPair::from_seed(seed.trim()).unwrap().public_key()
        };
        let (a, b) = (key("box-a"), key("box-b"));
        let block = std::fs::read_to_string(dir.path().join(AUTH_FILE)).unwrap();
        assert!(block.contains(&a) && block.contains(&b));
        assert_eq!(seed_for(dir.path(), NatsRole::Worker, "box-a"), worker_seed_file(dir.path(), "box-a"));
        assert_eq!(seed_for(dir.path(), NatsRole::Worker, "box-c"), seed_file(dir.path(), NatsRole::Worker));
        manage_worker_identities(dir.path(), &[], &["box-b".to_string()]).unwrap();
        init_credentials(dir.path(), &s, None).unwrap();
        let block = std::fs::read_to_string(dir.path().join(AUTH_FILE)).unwrap();
        assert!(block.contains(&a) && !block.contains(&b), "box-b revoked, box-a kept");
    }

    #[test]
    fn credentials_are_made_once_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = Subjects::default();
        assert_eq!(init_credentials(dir.path(), &s, None).unwrap().len(), NatsRole::ALL.len());
        let worker = std::fs::read_to_string(seed_file(dir.path(), NatsRole::Worker)).unwrap();
        assert!(worker.starts_with("SU"));
        let mode = std::fs::metadata(seed_file(dir.path(), NatsRole::Worker)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(init_credentials(dir.path(), &s, None).unwrap().is_empty());
        assert_eq!(std::fs::read_to_string(seed_file(dir.path(), NatsRole::Worker)).unwrap(), worker);
        let public = nkeys::KeyPair::from_seed(worker.trim()).unwrap().public_key();
        assert!(std::fs::read_to_string(dir.path().join(AUTH_FILE)).unwrap().contains(&public));
    }
}
