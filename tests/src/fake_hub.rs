//! A local HTTP server that speaks the Hugging Face hub's file API, for download tests
//! through the same hf-hub code users run: model info (`/api/models/{id}/revision/{rev}`),
//! search (`/api/models?search=`), and files with ranges (`/{id}/resolve/{rev}/{file}`).
//! It can cut a file's download once (an interrupted transfer), serve corrupted bytes
//! under the right checksum, or redirect large files to a "CDN" on another address (as the
//! real hub does), recording which requests carried an `Authorization` header. It can
//! also be hostile ([`Attack`]): names that are paths, sizes that lie, redirects that go
//! nowhere or for ever, bodies longer than asked for.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{Arc, Mutex},
};

use axum::{
    body::Body,
    extract::{Path as UrlPath, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::{json, Value};
use sha2::Digest;

/// What a hostile hub does for one repository.
#[derive(Clone, Debug)]
pub enum Attack {
    /// The model info's `sha` (the commit) is this.
    InfoSha(String),
    /// The model info lists one more file under this name (16 bytes of it).
    FileName(String),
    /// The model info lists every file at this size.
    ListedSize(u64),
    /// Every file answer's `ETag` and `X-Linked-Etag` is this.
    Etag(String),
    /// Every file answer's `X-Repo-Commit` is this.
    Commit(String),
    /// Every file answer's `Content-Range` names this total size.
    ContentRangeSize(String),
    /// Every file request is answered `302 Found` without a `Location`.
    RedirectWithoutLocation,
    /// Every file request is redirected to itself.
    RedirectLoop,
    /// Every ranged answer carries this many bytes more than the range asked for.
    ExtraBytes(usize),
}

/// One repository.
#[derive(Clone)]
struct HubRepo {
    sha: String,
    files: Vec<(String, Vec<u8>)>,
}

#[derive(Default)]
struct Inner {
    repos: HashMap<String, HubRepo>,
    /// File name → bytes after which its first transfer is cut.
    cut_once: HashMap<String, usize>,
    /// Files served with one byte flipped.
    corrupt: HashSet<String>,
    /// (file, first byte, last byte) of every range served.
    served: Vec<(String, usize, usize)>,
    /// File name → how many ranges were served (of every file) when its transfer was cut.
    cut_at: HashMap<String, usize>,
    /// Delay before every ranged answer (a slow link).
    delay: Option<std::time::Duration>,
    /// The CDN's base URL, when large files are redirected there.
    cdn: Option<String>,
    /// (where: `hub` or `cdn`, the Authorization header) of every file request.
    auth_seen: Vec<(&'static str, Option<String>)>,
    /// Repository id → what the hub does wrong for it.
    attacks: HashMap<String, Attack>,
}

/// The running fake hub.
#[derive(Clone)]
pub struct FakeHub {
    inner: Arc<Mutex<Inner>>,
    url: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A git blob id, the hub's `ETag` of a file kept in git (not LFS).
fn git_blob_id(bytes: &[u8]) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex(&h.finalize())
}

fn is_lfs(name: &str) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".bin")
}

impl FakeHub {
    /// Starts on a free port.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let app = Router::new()
            .route("/api/models", get(search))
            .route("/api/models/{*rest}", get(info))
            .route("/{org}/{name}/resolve/{rev}/{*file}", get(file))
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { inner, url }
    }

    /// Starts one that publishes a generated tiny model of `arch` (its folder named
    /// `name`) as repository `repo` at commit `sha`; returns it with the model.
    pub async fn start_with(repo: &str, sha: &str, name: &str, arch: crate::Arch) -> (Self, crate::ModelDir) {
        let hub = Self::start().await;
        let model = crate::ModelDir::generate(name, &crate::ModelSpec::tiny(arch));
        hub.add_repo_from_dir(repo, sha, &model.path());
        (hub, model)
    }

    /// Its base URL (`HF_ENDPOINT`).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Publishes every file of `dir` as repository `id` at commit `sha`.
    pub fn add_repo_from_dir(&self, id: &str, sha: &str, dir: &Path) {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).expect("model dir") {
            let entry = entry.expect("entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            files.push((name, std::fs::read(entry.path()).expect("file")));
        }
        files.sort();
        self.inner.lock().unwrap().repos.insert(id.to_string(), HubRepo { sha: sha.to_string(), files });
    }

    /// Makes the hub hostile for repository `id` (see [`Attack`]).
    pub fn attack(&self, id: &str, attack: Attack) {
        self.inner.lock().unwrap().attacks.insert(id.to_string(), attack);
    }

    /// Points `hub` at this server (plain http, so `allow_http` is set).
    pub fn configure(&self, hub: &mut bitinglip_config::HubConfig) {
        hub.endpoint = Some(self.url());
        hub.allow_http = true;
    }

    /// [`FakeHub::configure`], with the hub cache in `cache`.
    pub fn configure_cached(&self, hub: &mut bitinglip_config::HubConfig, cache: &Path) {
        self.configure(hub);
        hub.cache_dir = Some(cache.to_path_buf());
    }

    /// Cuts the first transfer of `file` after `bytes` bytes.
    pub fn cut_once(&self, file: &str, bytes: usize) {
        self.inner.lock().unwrap().cut_once.insert(file.to_string(), bytes);
    }

    /// Serves `file` with one byte flipped (its advertised checksum stays right).
    pub fn corrupt(&self, file: &str) {
        self.inner.lock().unwrap().corrupt.insert(file.to_string());
    }

    /// Slows every ranged answer down by `delay`.
    pub fn slow(&self, delay: std::time::Duration) {
        self.inner.lock().unwrap().delay = Some(delay);
    }

    /// Redirects the large (LFS) files to a CDN on another address, which serves them.
    pub async fn redirect_large_files_to_a_cdn(&self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.expect("bind the CDN");
        let cdn = format!("http://{}", listener.local_addr().expect("addr"));
        let app = Router::new().route("/cdn/{org}/{name}/{*file}", get(cdn_file)).with_state(self.inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        self.inner.lock().unwrap().cdn = Some(cdn);
    }

    /// The `Authorization` headers the hub (`"hub"`) and the CDN (`"cdn"`) received with
    /// file requests, in order.
    pub fn auth_seen(&self, at: &str) -> Vec<Option<String>> {
        self.inner.lock().unwrap().auth_seen.iter().filter(|(w, _)| *w == at).map(|(_, a)| a.clone()).collect()
    }

    /// Ranges served for `file`.
    pub fn served(&self, file: &str) -> Vec<(usize, usize)> {
        self.inner.lock().unwrap().served.iter().filter(|(f, _, _)| f == file).map(|(_, a, b)| (*a, *b)).collect()
    }

    /// Ranges served for `file` after its transfer was cut (see [`FakeHub::cut_once`]);
    /// None when it was not cut. A download that starts again after the cut asks for the
    /// file's metadata first: a `bytes=0-0` range, `(0, 0)` here.
    pub fn served_after_cut(&self, file: &str) -> Option<Vec<(usize, usize)>> {
        let inner = self.inner.lock().unwrap();
        let cut = *inner.cut_at.get(file)?;
        Some(inner.served[cut..].iter().filter(|(f, _, _)| f == file).map(|(_, a, b)| (*a, *b)).collect())
    }
}

type Shared = State<Arc<Mutex<Inner>>>;

async fn search(State(inner): Shared, Query(q): Query<HashMap<String, String>>) -> Json<Value> {
    let needle = q.get("search").cloned().unwrap_or_default();
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(20);
    let inner = inner.lock().unwrap();
    let mut ids: Vec<&String> = inner.repos.keys().filter(|id| id.contains(&needle)).collect();
    ids.sort();
    Json(json!(ids
        .into_iter()
        .take(limit)
        .map(|id| json!({"id": id, "modelId": id, "downloads": 7, "likes": 1}))
        .collect::<Vec<_>>()))
}

async fn info(State(inner): Shared, UrlPath(rest): UrlPath<String>) -> Response {
    let (id, _rev) = rest.split_once("/revision/").unwrap_or((rest.as_str(), "main"));
    let inner = inner.lock().unwrap();
    let Some(repo) = inner.repos.get(id) else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "Repository not found"}))).into_response();
    };
    let attack = inner.attacks.get(id).cloned();
    let mut siblings: Vec<Value> = repo
        .files
        .iter()
        .map(|(name, bytes)| {
            let mut s = json!({"rfilename": name, "size": bytes.len()});
            if is_lfs(name) {
                s["lfs"] = json!({"sha256": hex(&sha2::Sha256::digest(bytes)), "size": bytes.len()});
            }
            if let Some(Attack::ListedSize(size)) = &attack {
                s["size"] = json!(size);
                if is_lfs(name) {
                    s["lfs"]["size"] = json!(size);
                }
            }
            s
        })
        .collect();
    let mut sha = repo.sha.clone();
    match attack {
        Some(Attack::InfoSha(s)) => sha = s,
        Some(Attack::FileName(name)) => siblings.push(json!({"rfilename": name, "size": 16})),
        _ => {}
    }
    Json(json!({"id": id, "sha": sha, "siblings": siblings})).into_response()
}

async fn file(
    State(inner): Shared,
    UrlPath((org, name, _rev, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    let (cdn, attack) = {
        let mut guard = inner.lock().unwrap();
        guard.auth_seen.push(("hub", auth));
        (guard.cdn.clone().filter(|_| is_lfs(&file)), guard.attacks.get(&format!("{org}/{name}")).cloned())
    };
    if let Some(resp) = hostile_redirect(&inner, attack, &org, &name, &file) {
        return resp;
    }
    if let Some(cdn) = cdn {
        return redirect(&inner, &cdn, &org, &name, &file);
    }
    let (resp, delay) = prepare(&inner, &org, &name, file, &headers);
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    resp
}

/// A redirect without a `Location`, or to the same URL again.
fn hostile_redirect(
    inner: &Mutex<Inner>,
    attack: Option<Attack>,
    org: &str,
    name: &str,
    file: &str,
) -> Option<Response> {
    let location = match attack? {
        Attack::RedirectWithoutLocation => None,
        Attack::RedirectLoop => Some(format!("/{org}/{name}/resolve/main/{file}")),
        _ => return None,
    };
    let sha = inner.lock().unwrap().repos.get(&format!("{org}/{name}"))?.sha.clone();
    let mut resp = Response::builder()
        .status(StatusCode::FOUND)
        .header("x-repo-commit", sha)
        .header("etag", format!("\"{}\"", "a".repeat(40)));
    if let Some(l) = location {
        resp = resp.header("location", l);
    }
    Some(resp.body(Body::empty()).expect("a redirect"))
}

/// The hub's answer for a file on the CDN: a redirect that names the commit and the etag.
fn redirect(inner: &Mutex<Inner>, cdn: &str, org: &str, name: &str, file: &str) -> Response {
    let guard = inner.lock().unwrap();
    let Some(repo) = guard.repos.get(&format!("{org}/{name}")) else { return StatusCode::NOT_FOUND.into_response() };
    let Some((_, bytes)) = repo.files.iter().find(|(n, _)| n == file) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let digest = hex(&sha2::Sha256::digest(bytes));
    Response::builder()
        .status(StatusCode::FOUND)
        .header("location", format!("{cdn}/cdn/{org}/{name}/{file}"))
        .header("x-repo-commit", &repo.sha)
        .header("x-linked-etag", format!("\"{digest}\""))
        .header("etag", format!("\"{digest}\""))
        .body(Body::empty())
        .expect("a redirect")
}

/// The CDN: serves a redirected file (with ranges), recording the Authorization header.
async fn cdn_file(
    State(inner): Shared,
    UrlPath((org, name, file)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    inner.lock().unwrap().auth_seen.push(("cdn", auth));
    prepare(&inner, &org, &name, file, &headers).0
}

fn prepare(
    inner: &Mutex<Inner>,
    org: &str,
    name: &str,
    file: String,
    headers: &HeaderMap,
) -> (Response, Option<std::time::Duration>) {
    let id = format!("{org}/{name}");
    let mut guard = inner.lock().unwrap();
    let Some(repo) = guard.repos.get(&id).cloned() else {
        return (StatusCode::NOT_FOUND.into_response(), None);
    };
    let Some((_, bytes)) = repo.files.iter().find(|(n, _)| *n == file).cloned() else {
        return (StatusCode::NOT_FOUND.into_response(), None);
    };
    let size = bytes.len();
    let (start, end) = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .unwrap_or((0, size.saturating_sub(1)));
    let end = end.min(size.saturating_sub(1));
    let digest = hex(&sha2::Sha256::digest(&bytes));
    let blob_id = git_blob_id(&bytes);
    let mut body = bytes[start..=end].to_vec();
    let attack = guard.attacks.get(&id).cloned();
    if let (Some(Attack::ExtraBytes(n)), true) = (&attack, end > start) {
        body.extend(std::iter::repeat_n(b'x', *n));
    }
    if guard.corrupt.contains(&file) && !body.is_empty() && end > 0 {
        body[0] ^= 0xff;
    }
    guard.served.push((file.clone(), start, end));
    let cut =
        if end > start { guard.cut_once.get(&file).copied().filter(|at| *at > start && *at <= end) } else { None };
    if cut.is_some() {
        guard.cut_once.remove(&file);
        let served = guard.served.len();
        guard.cut_at.insert(file.clone(), served);
    }
    let delay = guard.delay.filter(|_| end > start);
    drop(guard);
    let mut resp = respond(repo.sha, file, blob_id, start, end, size, digest, body, cut);
    let headers = resp.headers_mut();
    let value = |v: String| axum::http::HeaderValue::from_str(&v).expect("a header value");
    match attack {
        Some(Attack::Etag(e)) => {
            headers.insert("etag", value(e.clone()));
            headers.insert("x-linked-etag", value(e));
        }
        Some(Attack::Commit(c)) => {
            headers.insert("x-repo-commit", value(c));
        }
        Some(Attack::ContentRangeSize(n)) => {
            headers.insert("content-range", value(format!("bytes {start}-{end}/{n}")));
        }
        _ => {}
    }
    (resp, delay)
}

#[allow(clippy::too_many_arguments)]
fn respond(
    sha: String,
    file: String,
    blob_id: String,
    start: usize,
    end: usize,
    size: usize,
    digest: String,
    body: Vec<u8>,
    cut: Option<usize>,
) -> Response {
    let mut resp = Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header("x-repo-commit", &sha)
        .header("content-range", format!("bytes {start}-{end}/{size}"))
        .header("accept-ranges", "bytes");
    resp = if is_lfs(&file) {
        resp.header("x-linked-etag", format!("\"{digest}\"")).header("etag", format!("\"{digest}\""))
    } else {
        resp.header("etag", format!("\"{blob_id}\""))
    };
    let body = match cut {
        // Send the first part, then fail the body: the connection is cut mid-transfer.
        Some(at) => {
            let first = bytes::Bytes::from(body[..at - start].to_vec());
            let stream = futures::stream::iter(vec![
                Ok::<_, std::io::Error>(first),
                Err(std::io::Error::other("connection cut")),
            ]);
            Body::from_stream(stream)
        }
        None => Body::from(body),
    };
    resp.body(body).expect("a valid response")
}
