//! The Files and Batch APIs: a batch of real mistral.rs chat requests through the official
//! `openai` Python client (`tests/clients/openai_batch.py`) that survives the worker's
//! kill -9 and a nats-server restart in its middle, each line run exactly once; cancel;
//! and files and batches out of another key's reach. A batch spends its key's limits
//! line by line (requests per minute, the day's token budget, after which the rest fail
//! with `rate_limit_exceeded`), and a revoked key's batch is cancelled.

use std::time::Duration;

use bitinglip_config::ModelConfig;
use bitinglip_tests::{
    control_config, serving_node, test_config, worker_config, Arch, ModelDir, ModelSpec, NodeProcess, TestNats,
    TEST_ADMIN_KEY,
};
use serde_json::{json, Value};

const LOAD: Duration = Duration::from_secs(120);

/// A node with every role but the worker, and a worker node for `model`.
fn control_and_worker(url: &str, model: &ModelDir) -> (NodeProcess, bitinglip_config::Config) {
    let (control, worker) = configs(url, model);
    (NodeProcess::spawn(&control, &["node"]), worker)
}

/// The configs of the two nodes: control (every role but the worker), and worker.
fn configs(url: &str, model: &ModelDir) -> (bitinglip_config::Config, bitinglip_config::Config) {
    let control = control_config(url);
    let mut worker = worker_config(url);
    let mut m = ModelConfig::new(model.path().display().to_string());
    m.name = Some(model.id().to_string());
    worker.worker.models.push(m);
    (control, worker)
}

async fn python(base: &str, model: &str, args: &[&str]) -> String {
    try_python(base, model, args).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn try_python(base: &str, model: &str, args: &[&str]) -> Result<String, String> {
    let api = format!("{base}/v1");
    let all: Vec<&str> = [api.as_str(), model, TEST_ADMIN_KEY].into_iter().chain(args.iter().copied()).collect();
    bitinglip_tests::python_client("openai_batch.py", &all).await
}

/// A model big enough that decoding takes a few seconds on 2 cores, so that a batch is
/// still running when the test restarts things.
fn slow() -> ModelSpec {
    ModelSpec { hidden: 384, layers: 6, heads: 6, kv_heads: 2, intermediate: 1024, ..ModelSpec::tiny(Arch::Qwen2) }
}

/// `logit_bias` that bans the generated models' end-of-turn and end-of-text tokens.
fn end_tokens_banned() -> Value {
    let vocab = bitinglip_modelgen::vocab_size();
    json!({(vocab - 1).to_string(): -100, (vocab - 3).to_string(): -100})
}

/// The content of batch `b`'s error file.
async fn error_file(http: &reqwest::Client, base: &str, b: &Value) -> String {
    let id = b["error_file_id"].as_str().unwrap_or_else(|| panic!("no error file: {b}"));
    http.get(format!("{base}/v1/files/{id}/content")).send().await.unwrap().text().await.unwrap()
}

/// Batch `id` as `GET /v1/batches/{id}` answers with `http`.
async fn batch(http: &reqwest::Client, base: &str, id: &str) -> Value {
    bitinglip_tests::get_json(http, base, &format!("/v1/batches/{id}")).await
}

/// Cancels batch `id` with `client`, which answers that it is `cancelling`, and waits
/// until it has ended `cancelled` (30 s at most, else panics saying `never`).
async fn cancel_batch(client: &reqwest::Client, base: &str, id: &str, never: &str) {
    let cancelling: Value =
        client.post(format!("{base}/v1/batches/{id}/cancel")).send().await.unwrap().json().await.unwrap();
    assert_eq!(cancelling["status"], "cancelling", "{cancelling}");
    bitinglip_tests::assert_eventually!(
        Duration::from_secs(30),
        async { batch(client, base, id).await["status"] == "cancelled" },
        "{never}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_survives_its_worker_and_the_nats_server_restarting_and_runs_each_line_once() {
    let model = ModelDir::generate("slow-batch", &slow());
    let mut nats = TestNats::start().await;
    let (control_config, worker_config) = configs(&nats.url(), &model);
    let mut control = NodeProcess::spawn(&control_config, &["node"]);
    let mut worker = NodeProcess::spawn(&worker_config, &["node"]);
    control.wait_for_model(model.id(), LOAD).await;
    let base = control.http.clone().unwrap();
    let http = bitinglip_tests::http();

    // Lines long enough to be in the middle through both restarts: the model's two end
    // tokens are banned, so each line writes all its tokens.
    let bias = json!({"logit_bias": end_tokens_banned()}).to_string();
    let id = python(&base, model.id(), &["create", &bias]).await.trim().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let line = bitinglip_tests::task_record(&http, &base, &format!("{id}-0")).await;
        if line["status"] == "running" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the batch's first line never ran long enough: {line}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = batch(&http, &base, &id).await;
    assert_eq!(
        (b["status"].as_str(), b["request_counts"]["completed"].as_u64()),
        (Some("in_progress"), Some(0)),
        "{b}"
    );
    worker.kill9();

    // The node whose gateway drives the batch dies too; the nats-server restarts (its
    // JetStream on disk); then both nodes come back (the batch's lease, held by the dead
    // gateway, lapses and the new one takes it).
    control.kill9();
    nats.restart().await;
    let mut worker = NodeProcess::spawn(&worker_config, &["node"]);
    let mut control = NodeProcess::spawn(&control_config, &["node"]);
    control.wait_for_http(LOAD).await;
    let out = match try_python(&base, model.id(), &["finish", &id]).await {
        Ok(out) => out,
        Err(e) => {
            let mut lines = String::new();
            for n in 0..3 {
                lines.push_str(&bitinglip_tests::task_record(&http, &base, &format!("{id}-{n}")).await.to_string());
                lines.push('\n');
            }
            panic!("{e}\n{lines}\ncontrol:\n{}\nworker:\n{}", control.log(), worker.log());
        }
    };
    assert!(out.contains("ok all"), "{out}");

    // Each line ran once: one task per line, completed, and no other task of the batch.
    let list: Value = http.get(format!("{base}/v1/tasks?limit=1000")).send().await.unwrap().json().await.unwrap();
    let mut ours: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["id"].as_str())
        .filter(|t| t.starts_with(&id))
        .collect();
    ours.sort();
    assert_eq!(ours, vec![format!("{id}-0"), format!("{id}-1"), format!("{id}-2")], "{list}");
    for task in &ours {
        let t = bitinglip_tests::task_record(&http, &base, task).await;
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["priority"], "batch", "{t}");
    }
    let _ = worker.sigterm(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_batch_stops_its_lines_and_another_key_sees_nothing() {
    let model = ModelDir::generate("slow-cancel", &slow());
    let nats = TestNats::start().await;
    let (mut control, worker_config) = control_and_worker(&nats.url(), &model);
    let _worker = NodeProcess::spawn(&worker_config, &["node"]);
    control.wait_for_model(model.id(), LOAD).await;
    let base = control.http.clone().unwrap();
    let http = bitinglip_tests::http();
    // Long lines (their end tokens banned): the cancel catches each of them running.
    let lines: Vec<Value> = (0..3)
        .map(|i| {
            json!({"custom_id": format!("c{i}"), "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": model.id(), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300,
                            "logit_bias": end_tokens_banned()}})
        })
        .collect();
    let file_id = upload(&http, &base, &lines).await;
    let id = start_batch(&http, &base, &file_id).await;
    bitinglip_tests::assert_eventually!(
        Duration::from_secs(30),
        async { bitinglip_tests::task_record(&http, &base, &format!("{id}-2")).await["status"] == "running" },
        "the batch's lines never started"
    );

    // Another key (inference scope) sees neither the file nor the batch.
    let other = bitinglip_tests::http_with(&bitinglip_tests::create_inference_key(&http, &base, "other").await);
    for path in [format!("/v1/files/{file_id}"), format!("/v1/files/{file_id}/content"), format!("/v1/batches/{id}")] {
        let status = other.get(format!("{base}{path}")).send().await.unwrap().status();
        assert_eq!(status, 404, "{path}");
    }
    let listed: Value = other.get(format!("{base}/v1/batches")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["data"], json!([]), "{listed}");
    let refused = other.post(format!("{base}/v1/batches/{id}/cancel")).send().await.unwrap().status();
    assert_eq!(refused, 404);

    // Cancel: the running lines stop in the engine; the batch ends cancelled, with an
    // error file.
    cancel_batch(&http, &base, &id, "the batch never ended cancelled").await;
    let b = batch(&http, &base, &id).await;
    assert_eq!(b["request_counts"], json!({"total": 3, "completed": 0, "failed": 3}), "{b}");
    assert!(b["cancelled_at"].is_u64() && b["output_file_id"].is_null(), "{b}");
    let errors = error_file(&http, &base, &b).await;
    assert_eq!(errors.lines().count(), 3, "{errors}");
    for n in 0..3 {
        let t = bitinglip_tests::task_record(&http, &base, &format!("{id}-{n}")).await;
        assert_eq!(t["status"], "cancelled", "{t}");
    }
    // A batch of an endpoint it does not serve, or of an unknown file, is refused by name.
    let (_, bad) = try_start_batch(&http, &base, "file-nope").await;
    assert_eq!(bad["error"]["param"], "input_file_id", "{bad}");
}

/// Sends `lines` (JSON values, one a line) as a batch input file with `client`: the
/// status and the answer.
async fn try_upload(client: &reqwest::Client, base: &str, lines: &[Value]) -> (u16, Value) {
    let lines: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    let boundary = "BitingLipTestBoundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\r\n{lines}\r\n--{boundary}--\r\n"
    );
    let resp = client
        .post(format!("{base}/v1/files"))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// Uploads `lines` as a batch input file with `client`; its id.
async fn upload(client: &reqwest::Client, base: &str, lines: &[Value]) -> String {
    let (_, file) = try_upload(client, base, lines).await;
    file["id"].as_str().unwrap_or_else(|| panic!("{file}")).to_string()
}

/// Asks for a batch of chat completions over `file_id` with `client`: the status and the
/// answer.
async fn try_start_batch(client: &reqwest::Client, base: &str, file_id: &str) -> (u16, Value) {
    let resp = client
        .post(format!("{base}/v1/batches"))
        .json(&json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// Creates a batch of chat completions over `file_id` with `client`; its id.
async fn start_batch(client: &reqwest::Client, base: &str, file_id: &str) -> String {
    let (_, created) = try_start_batch(client, base, file_id).await;
    created["id"].as_str().unwrap_or_else(|| panic!("{created}")).to_string()
}

/// Uploads `lines` as a batch input file and starts a batch over it with `client`; its id.
async fn batch_of(client: &reqwest::Client, base: &str, lines: &[Value]) -> String {
    let file = upload(client, base, lines).await;
    start_batch(client, base, &file).await
}

fn echo_line(i: usize, model: &str, max_tokens: u32) -> Value {
    json!({"custom_id": format!("l{i}"), "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": model, "messages": [{"role": "user", "content": "a b c d e f g h"}], "max_tokens": max_tokens}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_spends_its_keys_limits_and_a_revoked_keys_batch_is_cancelled() {
    let nats = TestNats::start().await;
    let url = nats.url();
    let mut config = test_config(&url);
    config.worker.models =
        vec![bitinglip_tests::echo_model("echo", 0.0, 8), bitinglip_tests::echo_model("slow", 1.0, 4)];
    let (mut node, base) = serving_node(&config, "echo", LOAD).await;
    node.wait_for_model("slow", LOAD).await;
    let http = bitinglip_tests::http();

    // A day's budget of 40 tokens; each line costs about 16 (8 words in, 8 out). The
    // running lines hold their max_tokens against the budget, so the first lines run, and
    // once the budget is spent the rest fail with `rate_limit_exceeded`.
    let (_, secret) = bitinglip_tests::cli_key(&url, &["--name", "budget", "--tokens-per-day", "40", "--rpm", "1000"]);
    let budget = bitinglip_tests::http_with(&secret);
    let lines: Vec<Value> = (0..10).map(|i| echo_line(i, "echo", 8)).collect();
    let id = batch_of(&budget, &base, &lines).await;
    bitinglip_tests::assert_eventually!(
        Duration::from_secs(60),
        async { batch(&budget, &base, &id).await["status"] == "completed" },
        "the budget batch never ended: {}",
        batch(&budget, &base, &id).await
    );
    let b = batch(&budget, &base, &id).await;
    let (completed, failed) =
        (b["request_counts"]["completed"].as_u64().unwrap(), b["request_counts"]["failed"].as_u64().unwrap());
    assert_eq!(completed + failed, 10, "{b}");
    assert!(completed >= 1 && failed >= 1, "some lines ran, the rest were refused: {b}");
    assert!(completed <= 5, "the budget held the lines back: {b}");
    let errors = error_file(&budget, &base, &b).await;
    assert_eq!(errors.lines().count() as u64, failed, "{errors}");
    for line in errors.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["response"]["status_code"], 429, "{v}");
        assert_eq!(v["response"]["body"]["error"]["code"], "rate_limit_exceeded", "{v}");
    }
    // Every line that ran was a request of the key: the batch (1), its lines and this one.
    let resp = budget
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    // The day's budget is spent: refused, as the batch's last lines were.
    assert_eq!(resp.status(), 429);

    // A revoked key's batch is cancelled within moments, its running line stopped.
    let (revoked_id, secret) = bitinglip_tests::cli_key(&url, &["--name", "soon-revoked"]);
    let doomed = bitinglip_tests::http_with(&secret);
    let lines: Vec<Value> = (0..3).map(|i| echo_line(i, "slow", 30)).collect();
    let id = batch_of(&doomed, &base, &lines).await;
    bitinglip_tests::assert_eventually!(
        Duration::from_secs(30),
        async { bitinglip_tests::task_record(&http, &base, &format!("{id}-0")).await["status"] == "running" },
        "the batch's first line never started"
    );
    let (code, out, err) = bitinglip_tests::run_cli(&["keys", "revoke", &revoked_id, "--nats", &url]);
    assert_eq!(code, 0, "{out}{err}");
    bitinglip_tests::assert_eventually!(
        Duration::from_secs(15),
        async { batch(&http, &base, &id).await["status"] == "cancelled" },
        "the revoked key's batch was not cancelled: {}",
        batch(&http, &base, &id).await
    );
    let line = bitinglip_tests::task_record(&http, &base, &format!("{id}-0")).await;
    assert_eq!(line["status"], "cancelled", "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_keeps_at_most_its_share_of_files_and_batches() {
    let nats = TestNats::start().await;
    let url = nats.url();
    let mut config = test_config(&url);
    config.worker.models = vec![bitinglip_tests::echo_model("slow", 1.0, 4)];
    config.gateway.max_files_per_key = 2;
    config.gateway.max_file_bytes_per_key = 100_000;
    config.gateway.max_batches_per_key = 1;
    config.gateway.batch_retention = Duration::from_secs(5);
    let (_node, base) = serving_node(&config, "slow", LOAD).await;
    let (_, secret) = bitinglip_tests::cli_key(&url, &["--name", "thrifty"]);
    let key = bitinglip_tests::http_with(&secret);
    let lines: Vec<Value> = (0..2).map(|i| echo_line(i, "slow", 30)).collect();
    let first = upload(&key, &base, &lines).await;
    upload(&key, &base, &lines).await;

    // A third file is over the key's count.
    let (status, body) = try_upload(&key, &base, &lines).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("gateway.max_files_per_key"), "{body}");
    // So is a file larger than what is left of its bytes, for another key.
    let (_, other) = bitinglip_tests::cli_key(&url, &["--name", "bulky"]);
    let big: Vec<Value> = (0..1000).map(|i| echo_line(i, "slow", 30)).collect();
    let (status, body) = try_upload(&bitinglip_tests::http_with(&other), &base, &big).await;
    assert_eq!(status, 429, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("gateway.max_file_bytes_per_key"), "{body}");

    // One batch in progress at a time.
    let id = start_batch(&key, &base, &first).await;
    let (status, body) = try_start_batch(&key, &base, &first).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    // Once it has ended, the next one may start.
    cancel_batch(&key, &base, &id, "the batch never ended").await;
    start_batch(&key, &base, &first).await;
    // The ended batch is removed after its retention, with its error file.
    let error_file = batch(&key, &base, &id).await["error_file_id"].as_str().map(str::to_string);
    bitinglip_tests::assert_eventually!(
        Duration::from_secs(30),
        async { key.get(format!("{base}/v1/batches/{id}")).send().await.unwrap().status() == 404 },
        "the ended batch was never removed"
    );
    if let Some(file) = error_file {
        assert_eq!(key.get(format!("{base}/v1/files/{file}")).send().await.unwrap().status(), 404);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_whose_lines_are_all_refused_ends_at_once_with_a_bounded_record() {
    let nats = TestNats::start().await;
    let mut config = test_config(&nats.url());
    config.worker.models = vec![bitinglip_tests::echo_model("echo", 0.0, 4)];
    let (_node, base) = serving_node(&config, "echo", LOAD).await;
    let http = bitinglip_tests::http();
    // 6,000 lines for a model nobody serves, its name long: every line is refused at
    // submit, and their refusals together are larger than one message.
    let model = format!("no-such-model-{}", "x".repeat(150));
    let lines: Vec<Value> = (0..6000).map(|i| echo_line(i, &model, 4)).collect();
    let id = batch_of(&http, &base, &lines).await;
    bitinglip_tests::assert_eventually!(
        Duration::from_secs(60),
        async { batch(&http, &base, &id).await["status"] == "failed" },
        "the batch never ended: {}",
        batch(&http, &base, &id).await["status"]
    );
    let b = batch(&http, &base, &id).await;
    let errors = b["errors"]["data"].as_array().unwrap();
    assert!(errors.len() <= 1_001, "{} errors listed", errors.len());
    assert!(errors.iter().any(|e| e["code"] == "unknown_model"), "{}", errors[0]);
    assert!(errors.iter().any(|e| e["code"] == "batch_failed"), "{}", errors.last().unwrap());
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_batches_over_one_large_file_keep_the_gateways_memory_flat() {
    let nats = TestNats::start().await;
    let mut config = test_config(&nats.url());
    // A slow model: the batches stay in progress while the memory is measured.
    config.worker.models = vec![bitinglip_tests::echo_model("slow", 1.0, 2)];
    config.gateway.max_batches_per_key = 40;
    let (node, base) = serving_node(&config, "slow", LOAD).await;
    let http = bitinglip_tests::http();
    // 30,000 lines of about 1 kB: a 30 MB input file.
    let pad = "word ".repeat(180);
    let lines: Vec<Value> = (0..30_000)
        .map(|i| {
            json!({"custom_id": format!("l{i}"), "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "slow", "messages": [{"role": "user", "content": pad}], "max_tokens": 2}})
        })
        .collect();
    let file = upload(&http, &base, &lines).await;
    let driven = |id: String| {
        let (http, base) = (http.clone(), base.clone());
        async move { bitinglip_tests::task_record(&http, &base, &format!("{id}-0")).await["status"].is_string() }
    };

    // One batch first, driven: whatever parsing the file once costs is in the baseline.
    let first = start_batch(&http, &base, &file).await;
    bitinglip_tests::assert_eventually!(Duration::from_secs(60), driven(first.clone()), "the first batch never ran");
    let before = rss(node.pid());
    let mut ids = vec![first];
    for _ in 0..29 {
        ids.push(start_batch(&http, &base, &file).await);
    }
    for id in &ids {
        bitinglip_tests::assert_eventually!(Duration::from_secs(60), driven(id.clone()), "batch {id} never ran");
    }
    // Rounds of driving all thirty, until their lines have completed a few at a time.
    let completed = || {
        let (http, base, ids) = (http.clone(), base.clone(), ids.clone());
        async move {
            let mut n = 0;
            for id in &ids {
                n += batch(&http, &base, id).await["request_counts"]["completed"].as_u64().unwrap_or(0);
            }
            n
        }
    };
    bitinglip_tests::assert_eventually!(
        Duration::from_secs(90),
        async { completed().await >= 10 },
        "the batches never made progress"
    );
    let after = rss(node.pid());
    eprintln!("resident: {} MiB before the 29 batches, {} MiB with all 30 driven", before >> 20, after >> 20);
    // Holding every batch's lines would be about 30 × 30 MB; a page or two each is a few.
    let grown = after.saturating_sub(before);
    assert!(grown < 300 << 20, "the node grew by {} MiB driving thirty batches over one file", grown >> 20);
    for id in &ids {
        http.post(format!("{base}/v1/batches/{id}/cancel")).send().await.unwrap();
    }
}
