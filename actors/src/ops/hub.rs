//! Downloads from the Hugging Face hub with hf-hub, into the hub's own cache layout (so
//! other tools share it), with progress, resume and verification.
//!
//! The revision is resolved to its commit sha first and every file is fetched at that
//! commit. hf-hub downloads in chunks and records the last whole chunk in its partial
//! file, so a download that is cut (a network failure, a killed process) resumes from
//! there. Each file is then checked: its size, and its sha256 where the hub gives one
//! (LFS files); a file that does not match is deleted and the pull fails.
//!
//! The hub is input (a mirror, or anyone on the path of an `http://` endpoint, may send
//! anything): the commit and every listed file name are checked before they become paths
//! (hex commit ids, relative normalised names), the whole pull is held to
//! `hub.max_pull_bytes` and to the free disk before a byte is fetched, and each file to its
//! listed size. The vendored hf-hub checks the rest (etags, redirects, sizes, each file's
//! bytes against its blob id before it is placed; see `vendor/hf-hub/BITINGLIP.md`).

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bitinglip_bus_schema::{ErrorKind, HubModel, ModelFile, PullProgress, WireError};
use bitinglip_config::HubConfig;
use hf_hub::{
    api::tokio::{Api, ApiBuilder, Progress},
    Repo, RepoType,
};
use serde::Deserialize;
use sha2::Digest;

/// A configured hub client.
#[derive(Clone)]
pub struct Hub {
    api: Api,
    endpoint: String,
    cache_dir: PathBuf,
    config: HubConfig,
}

/// The model info answer is read up to this many bytes (a hub could send an endless one).
const MAX_INFO_BYTES: usize = 16 * 1024 * 1024;
/// Files one model may list.
const MAX_FILES: usize = 10_000;
/// Disk kept free beyond what a pull needs (the partial files' trailers, the refs).
const DISK_MARGIN: u64 = 64 * 1024 * 1024;

/// What a pull produced.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The snapshot folder (`…/models--org--name/snapshots/<sha>`), ready to load.
    pub dir: PathBuf,
    /// The commit the revision resolved to.
    pub sha: String,
    /// The files, verified.
    pub files: Vec<ModelFile>,
}

#[derive(Debug, Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    lfs: Option<Lfs>,
}

#[derive(Debug, Deserialize)]
struct Info {
    sha: String,
    siblings: Vec<Sibling>,
}

#[derive(Debug, Deserialize)]
struct SearchHit {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "modelId")]
    model_id: Option<String>,
    #[serde(default)]
    downloads: Option<u64>,
    #[serde(default)]
    likes: Option<u64>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> WireError {
    WireError::new(ErrorKind::Unavailable, format!("{what}: {e}"))
}

/// The hub sent something that cannot be used as it stands.
fn refused(what: impl std::fmt::Display) -> WireError {
    WireError::new(ErrorKind::InvalidRequest, format!("the hub's answer was refused: {what}; nothing was downloaded"))
}

/// Refuses an endpoint that is not https, unless `hub.allow_http` (the endpoint may come
/// from `HF_ENDPOINT`, which config validation does not see).
fn check_endpoint(endpoint: &str, allow_http: bool) -> Result<(), WireError> {
    let bad = |why: &str| WireError::new(ErrorKind::InvalidRequest, format!("hub endpoint {endpoint}: {why}"));
    let url = reqwest::Url::parse(endpoint).map_err(|e| bad(&format!("not a URL ({e})")))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http => Ok(()),
        "http" => Err(bad("an http:// hub is refused; set hub.allow_http = true for a mirror on a trusted network")),
        _ => Err(bad("the scheme must be https://")),
    }
}

/// Bytes free to this user on the file system that holds `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

/// Reads a response body of at most `max` bytes.
async fn read_capped(mut resp: reqwest::Response, max: usize, what: &str) -> Result<Vec<u8>, WireError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| unavailable(what, e))? {
        if body.len() + chunk.len() > max {
            return Err(refused(format!("{what} is over {max} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reports download progress, at most every 100 ms per file.
#[derive(Clone)]
struct Reporter {
    done: Arc<AtomicU64>,
    size: Arc<AtomicU64>,
    last: Arc<Mutex<Instant>>,
    report: Arc<dyn Fn(u64, u64) + Send + Sync>,
}

impl Progress for Reporter {
    async fn init(&mut self, size: usize, _filename: &str) {
        self.size.store(size as u64, Ordering::Relaxed);
        (self.report)(0, size as u64);
    }

    async fn update(&mut self, size: usize) {
        let done = self.done.fetch_add(size as u64, Ordering::Relaxed) + size as u64;
        let due = self.last.lock().map(|mut l| {
            if l.elapsed() >= Duration::from_millis(100) {
                *l = Instant::now();
                true
            } else {
                false
            }
        });
        if due.unwrap_or(false) {
            (self.report)(done, self.size.load(Ordering::Relaxed));
        }
    }

    async fn finish(&mut self) {
        let size = self.size.load(Ordering::Relaxed);
        (self.report)(size, size);
    }
}

impl Hub {
    /// A client for the configured endpoint, token and cache.
    pub fn new(cfg: &HubConfig) -> Result<Self, WireError> {
        let endpoint = cfg.endpoint_or_env();
        check_endpoint(&endpoint, cfg.allow_http)?;
        let cache_dir = cfg.cache_dir_or_env();
        let api = Self::api(cfg, &endpoint, &cache_dir, cfg.max_pull_bytes())?;
        Ok(Self { api, endpoint, cache_dir, config: cfg.clone() })
    }

    /// An hf-hub client that fetches no file over `max_file` bytes. Its clients follow
    /// only the redirects hf-hub's guard allows, and carry the token.
    fn api(cfg: &HubConfig, endpoint: &str, cache_dir: &Path, max_file: u64) -> Result<Api, WireError> {
        ApiBuilder::new()
            .with_endpoint(endpoint.to_string())
            .with_cache_dir(cache_dir.to_path_buf())
            .with_token(cfg.token_or_env())
            .with_progress(false)
            .with_chunk_size(Some(cfg.chunk_size.unwrap_or(10 * 1024 * 1024).max(1)))
            .with_max_files(cfg.parallel_chunks.unwrap_or(8).max(1))
            .with_max_file_size(max_file)
            .build()
            .map_err(|e| unavailable("hub client", e))
    }

    fn get(&self, url: String) -> reqwest::RequestBuilder {
        self.api.client().get(url)
    }

    /// Searches the hub's models.
    pub async fn search(&self, query: &str, limit: u32) -> Result<Vec<HubModel>, WireError> {
        let url = format!("{}/api/models", self.endpoint);
        let resp = self
            .get(url)
            .query(&[("search", query), ("limit", &limit.to_string())])
            .send()
            .await
            .map_err(|e| unavailable("hub search", e))?
            .error_for_status()
            .map_err(|e| unavailable("hub search", e))?;
        let body = read_capped(resp, MAX_INFO_BYTES, "the hub's search answer").await?;
        let hits: Vec<SearchHit> = serde_json::from_slice(&body).map_err(|e| unavailable("hub search", e))?;
        Ok(hits
            .into_iter()
            .filter_map(|h| h.id.or(h.model_id).map(|id| HubModel { id, downloads: h.downloads, likes: h.likes }))
            .collect())
    }

    /// Downloads every file of `model` at `revision`, reporting progress.
    pub async fn pull(
        &self,
        model: &str,
        revision: &str,
        progress: impl Fn(PullProgress) + Send + Sync + 'static,
    ) -> Result<Pulled, WireError> {
        let progress = Arc::new(progress);
        if !hf_hub::guard::is_safe_revision(revision) {
            return Err(WireError::new(ErrorKind::InvalidRequest, format!("invalid revision {revision:?}")));
        }
        let repo = self.api.repo(Repo::with_revision(model.to_string(), RepoType::Model, revision.to_string()));
        let resp = repo.info_request().query(&[("blobs", "true")]).send().await.map_err(|e| unavailable("hub", e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND || resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(WireError::new(ErrorKind::UnknownModel, format!("the hub has no model {model} at {revision}")));
        }
        let resp = resp.error_for_status().map_err(|e| unavailable("hub", e))?;
        let body = read_capped(resp, MAX_INFO_BYTES, "the hub's model info").await?;
        let info: Info = serde_json::from_slice(&body).map_err(|e| refused(format!("the model info: {e}")))?;
        let cached = self.check_listing(model, &info)?;
        // Every file at the commit the revision points to now.
        let total = info.siblings.len() as u32;
        let mut files = Vec::new();
        let mut dir = None;
        let mut fetched: u64 = 0;
        for (i, sibling) in info.siblings.iter().enumerate() {
            let name = sibling.rfilename.clone();
            let report = {
                let (progress, model, name) = (progress.clone(), model.to_string(), name.clone());
                Arc::new(move |done: u64, size: u64| {
                    progress(PullProgress {
                        model: model.clone(),
                        file: name.clone(),
                        file_done: done,
                        file_size: size,
                        files_done: i as u32,
                        files_total: total,
                    })
                })
            };
            // Already in the cache at this commit: verify, do not fetch again.
            let cached = cached[i].clone();
            // No file may be larger than it was listed, nor than what the pull has left.
            let left = self.config.max_pull_bytes().saturating_sub(fetched);
            let cap = sibling.lfs.as_ref().map(|l| l.size).or(sibling.size).map_or(left, |s| s.min(left));
            let api = Self::api(&self.config, &self.endpoint, &self.cache_dir, cap)?;
            let repo = api.repo(Repo::with_revision(model.to_string(), RepoType::Model, info.sha.clone()));
            let mut attempt = 0;
            let path = loop {
                if let Some(path) = &cached {
                    break path.clone();
                }
                let reporter = Reporter {
                    done: Arc::default(),
                    size: Arc::default(),
                    last: Arc::new(Mutex::new(Instant::now())),
                    report: report.clone(),
                };
                match repo.download_with_progress(&name, reporter).await {
                    Ok(p) => break p,
                    Err(hf_hub::api::tokio::ApiError::ChecksumMismatch(_)) => {
                        return Err(WireError::new(
                            ErrorKind::InvalidRequest,
                            format!("{name} failed verification (its bytes do not match the checksum the hub named it by); nothing was placed in the cache"),
                        ))
                    }
                    Err(err) if !err.is_transient() => return Err(refused(format!("downloading {name}: {err}"))),
                    Err(err) if attempt < 5 => {
                        attempt += 1;
                        tracing::warn!(model, file = %name, attempt, cause = %err, "download interrupted; resuming");
                        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    }
                    Err(err) => return Err(unavailable(&format!("downloading {name}"), err)),
                }
            };
            let file = verify(&path, sibling, &self.cache_dir).await?;
            fetched = fetched.saturating_add(file.size);
            if fetched > self.config.max_pull_bytes() {
                return Err(WireError::new(
                    ErrorKind::PayloadTooLarge,
                    format!("{model} is over hub.max_pull_bytes ({})", self.config.max_pull_bytes()),
                ));
            }
            if dir.is_none() {
                dir = snapshot_dir(&path, &name);
            }
            files.push(file);
        }
        // Point the branch at the commit, as the hub's own tools do, so they share the cache.
        if let Some(d) = &dir {
            if let Some(repo_dir) = d.parent().and_then(Path::parent) {
                let refs = repo_dir.join("refs");
                let _ = std::fs::create_dir_all(&refs);
                if !revision.contains('/') && revision != info.sha {
                    let _ = std::fs::write(refs.join(revision), &info.sha);
                }
            }
        }
        let dir = dir.ok_or_else(|| WireError::new(ErrorKind::InvalidRequest, format!("{model} has no files")))?;
        Ok(Pulled { dir, sha: info.sha, files })
    }

    /// Checks the hub's listing before anything is fetched: a commit id, safe file names,
    /// a total within `hub.max_pull_bytes` and within the free disk. Returns, per file,
    /// its path when it is already in the cache at that commit.
    fn check_listing(&self, model: &str, info: &Info) -> Result<Vec<Option<PathBuf>>, WireError> {
        if !hf_hub::guard::is_commit(&info.sha) {
            return Err(refused(format!("a commit that is no commit id: {:?}", info.sha)));
        }
        if info.siblings.len() > MAX_FILES {
            return Err(refused(format!("{} files listed, over {MAX_FILES}", info.siblings.len())));
        }
        if let Some(bad) = info.siblings.iter().find(|s| !hf_hub::guard::is_safe_filename(&s.rfilename)) {
            return Err(refused(format!("a file name that leaves the model's folder: {:?}", bad.rfilename)));
        }
        let size = |s: &Sibling| s.lfs.as_ref().map(|l| l.size).or(s.size).unwrap_or(0);
        let total = info.siblings.iter().map(size).fold(0u64, u64::saturating_add);
        let max = self.config.max_pull_bytes();
        if total > max {
            return Err(WireError::new(
                ErrorKind::PayloadTooLarge,
                format!("{model} is {total} bytes, over hub.max_pull_bytes ({max}); nothing was downloaded"),
            ));
        }
        let snapshot = hf_hub::Cache::new(self.cache_dir.clone()).repo(Repo::with_revision(
            model.to_string(),
            RepoType::Model,
            info.sha.clone(),
        ));
        let cached: Vec<Option<PathBuf>> = info.siblings.iter().map(|s| snapshot.get(&s.rfilename)).collect();
        let needed = info
            .siblings
            .iter()
            .zip(&cached)
            .filter(|(_, c)| c.is_none())
            .map(|(s, _)| size(s))
            .fold(0u64, u64::saturating_add);
        if needed > 0 {
            std::fs::create_dir_all(&self.cache_dir).map_err(|e| unavailable("the hub cache", e))?;
            let free = free_bytes(&self.cache_dir).map_err(|e| unavailable("the hub cache's free space", e))?;
            if needed.saturating_add(DISK_MARGIN) > free {
                return Err(WireError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "not enough disk for {model}: it needs {needed} bytes (and {DISK_MARGIN} to spare), {free} are free in {}",
                        self.cache_dir.display()
                    ),
                ));
            }
        }
        Ok(cached)
    }
}

fn snapshot_dir(path: &Path, name: &str) -> Option<PathBuf> {
    let depth = Path::new(name).components().count();
    let mut dir = path.to_path_buf();
    for _ in 0..depth {
        dir = dir.parent()?.to_path_buf();
    }
    Some(dir)
}

/// Checks size and sha256; a file that does not match is deleted (only ever inside the
/// cache).
async fn verify(path: &Path, sibling: &Sibling, cache_dir: &Path) -> Result<ModelFile, WireError> {
    let path = path.to_path_buf();
    let roots = [cache_dir.to_path_buf(), std::fs::canonicalize(cache_dir).unwrap_or_else(|_| cache_dir.to_path_buf())];
    let expected_size = sibling.lfs.as_ref().map(|l| l.size).or(sibling.size);
    let expected_sha = sibling.lfs.as_ref().map(|l| l.sha256.to_ascii_lowercase());
    let name = sibling.rfilename.clone();
    tokio::task::spawn_blocking(move || {
        let bytes_path = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        let mut file = std::fs::File::open(&bytes_path).map_err(|e| unavailable(&name, e))?;
        let mut hasher = sha2::Sha256::new();
        let size = std::io::copy(&mut file, &mut hasher).map_err(|e| unavailable(&name, e))?;
        let sha = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>();
        let size_ok = expected_size.is_none_or(|s| s == size);
        let sha_ok = expected_sha.as_ref().is_none_or(|s| *s == sha);
        if !(size_ok && sha_ok) {
            for p in [&bytes_path, &path] {
                if roots.iter().any(|r| p.starts_with(r)) {
                    let _ = std::fs::remove_file(p);
                }
            }
            return Err(WireError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "{name} failed verification (size {size}, expected {expected_size:?}; sha256 {sha}, expected {expected_sha:?}); it was deleted"
                ),
            ));
        }
        Ok(ModelFile { name, size, sha256: Some(sha) })
    })
    .await
    .map_err(|e| WireError::new(ErrorKind::Internal, e.to_string()))?
}

#[cfg(test)]
mod tests {
    use hf_hub::guard;

    use super::*;

    #[test]
    fn an_http_hub_is_refused_unless_allowed() {
        assert!(check_endpoint("https://huggingface.co", false).is_ok());
        let err = check_endpoint("http://mirror.lan:8080", false).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidRequest);
        assert!(err.message.contains("hub.allow_http"), "{err}");
        assert!(check_endpoint("http://mirror.lan:8080", true).is_ok());
        assert!(check_endpoint("file:///etc", true).is_err());
        assert!(check_endpoint("not a url", true).is_err());
    }

    // Below, the checks of the vendored hf-hub's guard (`vendor/hf-hub/src/guard.rs`), which
    // every value a hub sends passes before it becomes a path, a size or an address.

    #[test]
    fn commits_and_blob_names_are_hex_of_the_right_length() {
        assert!(guard::is_commit("0123456789abcdef0123456789abcdef01234567"));
        assert!(!guard::is_commit("../../../../etc"));
        assert!(!guard::is_commit("0123456789abcdef0123456789abcdef0123456"));
        assert!(!guard::is_commit("0123456789abcdef0123456789abcdef0123456g"));
        assert_eq!(
            guard::blob_name("\"0123456789ABCDEF0123456789abcdef01234567\""),
            Some("0123456789abcdef0123456789abcdef01234567".into())
        );
        assert_eq!(
            guard::blob_name("W/\"0123456789abcdef0123456789abcdef01234567\"").as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        assert!(guard::blob_name(&"a".repeat(64)).is_some());
        assert!(guard::blob_name("../../x").is_none());
        assert!(guard::blob_name(&"a".repeat(63)).is_none());
        assert!(guard::blob_name("").is_none());
    }

    #[test]
    fn file_names_are_relative_and_normalised() {
        for good in ["config.json", "onnx/model.onnx", "a/b/c.safetensors", ".gitattributes"] {
            assert!(guard::is_safe_filename(good), "{good}");
        }
        for bad in
            ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\\..\\b", "a/", "x\n", &"a/".repeat(17)]
        {
            assert!(!guard::is_safe_filename(bad), "{bad:?}");
        }
        assert!(guard::is_safe_revision("main") && guard::is_safe_revision("refs/pr/1"));
        assert!(!guard::is_safe_revision("..") && !guard::is_safe_revision("/abs"));
    }

    #[test]
    fn content_is_checked_against_its_blob_name() {
        let dir = std::env::temp_dir().join(format!("hf-guard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x");
        std::fs::write(&f, b"hello\n").unwrap();
        // `git hash-object` of "hello\n", and its sha256.
        assert!(guard::content_matches("ce013625030ba8dba906f756967f9e9ca394464a", &f).unwrap());
        assert!(guard::content_matches("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03", &f).unwrap());
        assert!(!guard::content_matches("ce013625030ba8dba906f756967f9e9ca394464b", &f).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn redirects_never_downgrade_nor_go_local_from_a_public_hub() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        let hub = u("https://huggingface.co/a/b/resolve/main/x");
        assert!(guard::redirect_allowed(&hub, &u("https://cdn-lfs.hf.co/x?sig=1"), false).is_ok());
        assert!(guard::redirect_allowed(&hub, &u("http://cdn-lfs.hf.co/x"), false).is_err());
        assert!(guard::redirect_allowed(&hub, &u("file:///etc/passwd"), false).is_err());
        for local in [
            "https://127.0.0.1/x",
            "https://localhost/x",
            "https://api.localhost./x",
            "https://10.1.2.3/x",
            "https://192.168.0.1/x",
            "https://172.16.0.1/x",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/x",
            "https://0.0.0.0/x",
            "https://[::1]/x",
            "https://[fe80::1]/x",
            "https://[fd00::1]/x",
            "https://[::ffff:127.0.0.1]/x",
        ] {
            assert!(guard::redirect_allowed(&hub, &u(local), false).is_err(), "{local}");
            assert!(guard::redirect_allowed(&hub, &u(local), true).is_ok(), "{local} from a local hub");
        }
        assert!(guard::endpoint_is_local("http://127.0.0.1:8080"));
        assert!(guard::endpoint_is_local("http://localhost:8080"));
        assert!(!guard::endpoint_is_local("https://huggingface.co"));
        let plain = u("http://127.0.0.1:1/x");
        assert!(guard::redirect_allowed(&plain, &u("http://127.0.0.2:2/y"), true).is_ok());
    }
}
