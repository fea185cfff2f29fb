//! Downloads from the Hugging Face hub with hf-hub, into the hub's own cache layout (so
//! other tools share it), with progress, resume and verification.
//!
//! The revision is resolved to its commit sha first and every file is fetched at that
//! commit. hf-hub downloads in chunks and records the last whole chunk in its partial
//! file, so a download that is cut (a network failure, a killed process) resumes from
//! there. Each file is then checked: its size, and its sha256 where the hub gives one
//! (LFS files); a file that does not match is deleted and the pull fails.

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
    token: Option<String>,
    cache_dir: PathBuf,
    http: reqwest::Client,
}

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
        let token = cfg.token_or_env();
        let cache_dir = cfg.cache_dir_or_env();
        let mut builder = ApiBuilder::new()
            .with_endpoint(endpoint.clone())
            .with_cache_dir(cache_dir.clone())
            .with_token(token.clone())
            .with_progress(false);
        builder = builder
            .with_chunk_size(Some(cfg.chunk_size.unwrap_or(10 * 1024 * 1024)))
            .with_max_files(cfg.parallel_chunks.unwrap_or(8).max(1));
        let api = builder.build().map_err(|e| unavailable("hub client", e))?;
        Ok(Self { api, endpoint, token, cache_dir, http: reqwest::Client::new() })
    }

    fn get(&self, url: String) -> reqwest::RequestBuilder {
        let req = self.http.get(url);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
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
        let hits: Vec<SearchHit> = resp.json().await.map_err(|e| unavailable("hub search", e))?;
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
        let repo = self.api.repo(Repo::with_revision(model.to_string(), RepoType::Model, revision.to_string()));
        let resp = repo.info_request().query(&[("blobs", "true")]).send().await.map_err(|e| unavailable("hub", e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND || resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(WireError::new(ErrorKind::UnknownModel, format!("the hub has no model {model} at {revision}")));
        }
        let info: Info = resp
            .error_for_status()
            .map_err(|e| unavailable("hub", e))?
            .json()
            .await
            .map_err(|e| unavailable("hub model info", e))?;
        // Every file at the commit the revision points to now.
        let repo = self.api.repo(Repo::with_revision(model.to_string(), RepoType::Model, info.sha.clone()));
        let total = info.siblings.len() as u32;
        let mut files = Vec::new();
        let mut dir = None;
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
            let cached = hf_hub::Cache::new(self.cache_dir.clone())
                .repo(Repo::with_revision(model.to_string(), RepoType::Model, info.sha.clone()))
                .get(&name);
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
                    Err(err) if attempt < 5 => {
                        attempt += 1;
                        tracing::warn!(model, file = %name, attempt, cause = %err, "download interrupted; resuming");
                        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    }
                    Err(err) => return Err(unavailable(&format!("downloading {name}"), err)),
                }
            };
            let file = verify(&path, sibling).await?;
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
}

fn snapshot_dir(path: &Path, name: &str) -> Option<PathBuf> {
    let depth = Path::new(name).components().count();
    let mut dir = path.to_path_buf();
    for _ in 0..depth {
        dir = dir.parent()?.to_path_buf();
    }
    Some(dir)
}

/// Checks size and sha256; a file that does not match is deleted.
async fn verify(path: &Path, sibling: &Sibling) -> Result<ModelFile, WireError> {
    let path = path.to_path_buf();
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
            let _ = std::fs::remove_file(&bytes_path);
            let _ = std::fs::remove_file(&path);
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
