//! HTTP for tests: clients with a key, SSE parsing, and the task API's waits.

use std::time::{Duration, Instant};

/// The admin key every test node's gateway accepts (`gateway.admin_key`), which
/// [`http`] sends.
pub const TEST_ADMIN_KEY: &str = "test-admin-key-0123456789abcdef-0123456789abcdef";

/// An HTTP client builder that sends `key` as a bearer token on every request.
pub fn http_builder_with(key: &str) -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = format!("Bearer {key}").parse().expect("a key is a valid header value");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder().default_headers(headers)
}

/// An HTTP client builder with the test admin key.
pub fn http_builder() -> reqwest::ClientBuilder {
    http_builder_with(TEST_ADMIN_KEY)
}

/// An HTTP client with the test admin key.
pub fn http() -> reqwest::Client {
    http_builder().build().expect("an HTTP client")
}

/// An HTTP client with `key`.
pub fn http_with(key: &str) -> reqwest::Client {
    http_builder_with(key).build().expect("an HTTP client")
}

/// Parses an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.trim_start().to_string()).collect()
}

/// A streamed chat request's SSE body, read chunk by chunk.
pub struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    /// Wraps a streaming response.
    pub fn new(resp: reqwest::Response) -> Self {
        Self { resp, buf: String::new() }
    }

    /// The next event as (id, event name, data); `None` at the end of the body.
    pub async fn next(&mut self) -> Option<(Option<String>, Option<String>, String)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, None, Vec::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.trim_start().to_string());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some((id, event, data.join("\n")));
            }
            match self.resp.chunk().await {
                Ok(Some(bytes)) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// The next piece of a streamed chat completion's text (empty pieces skipped); `None`
    /// at `[DONE]` or the end of the body. Panics on an error chunk.
    pub async fn next_text(&mut self) -> Option<String> {
        while let Some((_, _, data)) = self.next().await {
            if data == "[DONE]" {
                return None;
            }
            let v: serde_json::Value = serde_json::from_str(&data).expect("a JSON chunk");
            assert!(v.get("error").is_none(), "stream failed: {v}");
            if let Some(t) = v["choices"][0]["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
                return Some(t.to_string());
            }
        }
        None
    }
}

/// The task id a gateway names in an answer's `x-task-id` header.
pub fn task_id_of(resp: &reqwest::Response) -> String {
    resp.headers()["x-task-id"].to_str().expect("a task id is text").to_string()
}

/// `POST /v1/chat/completions` on `base` with the JSON `body`; the answer, whatever its
/// status.
pub async fn post_chat(http: &reqwest::Client, base: &str, body: &serde_json::Value) -> reqwest::Response {
    http.post(format!("{base}/v1/chat/completions")).json(body).send().await.expect("gateway answers")
}

/// The JSON answer of [`post_chat`], whatever its status.
pub async fn chat_json(http: &reqwest::Client, base: &str, body: &serde_json::Value) -> serde_json::Value {
    post_chat(http, base, body).await.json().await.expect("JSON")
}

/// `POST /v1/tasks` on `base` with the JSON `body`: the answer's status and JSON body.
pub async fn post_task(http: &reqwest::Client, base: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let resp = http.post(format!("{base}/v1/tasks")).json(body).send().await.expect("gateway answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON"))
}

/// Submits `body` as a task (`POST /v1/tasks` on `base`) and returns its id; panics when
/// the answer names none.
pub async fn submit_task(http: &reqwest::Client, base: &str, body: &serde_json::Value) -> String {
    let (_, answer) = post_task(http, base, body).await;
    answer["id"].as_str().unwrap_or_else(|| panic!("no task id in {answer}")).to_string()
}

/// `GET {base}{path}`'s JSON answer, whatever its status.
pub async fn get_json(http: &reqwest::Client, base: &str, path: &str) -> serde_json::Value {
    http.get(format!("{base}{path}")).send().await.expect("gateway answers").json().await.expect("JSON")
}

/// Sends `req` with the JSON `body` and returns the JSON answer, whatever its status.
pub async fn post_json(req: reqwest::RequestBuilder, body: &serde_json::Value) -> serde_json::Value {
    req.json(body).send().await.expect("gateway answers").json().await.expect("JSON")
}

/// `GET /v1/tasks/{id}` on `base`.
pub async fn task_record(http: &reqwest::Client, base: &str, id: &str) -> serde_json::Value {
    get_json(http, base, &format!("/v1/tasks/{id}")).await
}

/// Polls `GET /v1/tasks/{id}` until its status is `status` (60 s at most).
pub async fn wait_task_status(http: &reqwest::Client, base: &str, id: &str, status: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = task_record(http, base, id).await;
        if t["status"] == status {
            return t;
        }
        assert!(Instant::now() < deadline, "task {id} never became {status}: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asks `model` at the gateway `base` for a chat completion of `content` until one is
/// served (200), for up to 20 s while the node comes up; returns the answer (`Null` when
/// none came).
pub async fn chat_when_served(base: &str, model: &str, content: &str) -> serde_json::Value {
    let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": content}]});
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let resp = http().post(format!("{base}/v1/chat/completions")).json(&body).send().await;
        if let Some(resp) = resp.ok().filter(|r| r.status() == reqwest::StatusCode::OK) {
            return resp.json().await.unwrap_or_default();
        }
        tokio::time::sleep(crate::POLL_INTERVAL).await;
    }
    serde_json::Value::Null
}

/// Creates an API key of scope `inference` named `name` through the admin API of the
/// gateway at `base`, as `admin` (an HTTP client with an admin key); returns its secret.
pub async fn create_inference_key(admin: &reqwest::Client, base: &str, name: &str) -> String {
    let created: serde_json::Value = admin
        .post(format!("{base}/api/v1/keys"))
        .json(&serde_json::json!({"name": name, "scope": "inference"}))
        .send()
        .await
        .expect("gateway answers")
        .json()
        .await
        .expect("JSON");
    created["key"].as_str().unwrap_or_else(|| panic!("no key in {created}")).to_string()
}

/// Runs `tests/clients/<script>` with the `.ci/setup` Python and `args`: its stdout when it
/// exits 0, else what it printed.
pub async fn python_client(script: &str, args: &[&str]) -> Result<String, String> {
    let root = crate::workspace_root();
    let python = root.join(".venv/bin/python");
    assert!(python.is_file(), "{} missing: run .ci/setup", python.display());
    let out = tokio::process::Command::new(python)
        .arg(root.join("tests/clients").join(script))
        .args(args)
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        return Ok(stdout);
    }
    Err(format!("{script} {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
}
