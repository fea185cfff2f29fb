//! Chat completions over HTTP through `bitinglip up` (which starts its own nats-server),
//! plain and streamed, on real mistral.rs inference with generated Llama and Qwen2 models.

use std::time::Duration;

use bitinglip_tests::{sse_data, test_config, Arch, ModelDir, ModelSpec, NodeProcess};
use serde_json::{json, Value};

const LOAD: Duration = Duration::from_secs(120);

async fn up_with(model: &ModelDir) -> (NodeProcess, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    // No server runs at this URL: `up` must start one in its data folder.
    let url = format!("nats://127.0.0.1:{}", bitinglip_tests::free_port());
    let mut config = test_config(&url);
    config.data_dir = data.path().to_path_buf();
    let path = model.path();
    let mut node = NodeProcess::spawn(&config, &["up", "--model", path.to_str().unwrap()]);
    node.wait_for_model(model.id(), LOAD).await;
    // It started a nats-server of its own, in its data folder, that refuses anonymous
    // clients and takes the per-role users it made there (seeds readable by their owner).
    let pid_file = data.path().join("nats/nats-server.pid");
    assert!(node.own_nats_server().is_some(), "no live server named in {}:\n{}", pid_file.display(), node.log());
    let anonymous = tokio::time::timeout(Duration::from_secs(3), async_nats::connect(node.nats_url())).await;
    assert!(!matches!(anonymous, Ok(Ok(_))), "an anonymous client was let in");
    for role in ["admin", "worker", "gateway", "client"] {
        let seed_file = data.path().join(format!("nats/{role}.nk"));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&seed_file).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "{}", seed_file.display());
    }
    // Its JetStream has memory and disk limits.
    let conf = std::fs::read_to_string(data.path().join("nats/nats-server.conf")).unwrap();
    assert!(conf.contains("max_memory_store: ") && conf.contains("max_file_store: "), "{conf}");
    let seed = std::fs::read_to_string(data.path().join("nats/admin.nk")).unwrap();
    let nats = async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
        .custom_inbox_prefix("_INBOX_admin")
        .connect(node.nats_url())
        .await;
    assert!(nats.is_ok(), "its nats-server at {}: {:?}\n{}", node.nats_url(), nats.err(), node.log());
    // On its first start it created an admin key, readable by its owner only, that works.
    let key_file = data.path().join("admin.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key_file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", key_file.display());
    let key = std::fs::read_to_string(&key_file).unwrap().trim().to_string();
    let base = node.http.clone().unwrap();
    let models = bitinglip_tests::http_with(&key).get(format!("{base}/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), 200, "the admin key from {}", key_file.display());
    (node, data)
}

async fn plain_and_streamed(arch: Arch, name: &str) {
    let model = ModelDir::generate(name, &ModelSpec::tiny(arch));
    let (node, _data) = up_with(&model).await;
    let base = node.http.clone().unwrap();
    let http = bitinglip_tests::http();

    // Plain.
    let resp = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": name, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 12}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-task-id"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], name);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    let usage = &body["usage"];
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&completion), "{body}");
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 3, "{body}");
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), usage["prompt_tokens"].as_u64().unwrap() + completion);
    let reason = body["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(reason == "length" || reason == "stop", "{body}");
    if reason == "length" {
        assert_eq!(completion, 12);
    }

    // A prompt longer than the context is refused before any inference.
    let long = "hello ".repeat(3000);
    let resp = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": name, "messages": [{"role": "user", "content": long}], "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "context_length", "{err}");

    // Streamed.
    let resp = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": name, "messages": [{"role": "user", "content": "Count"}], "max_tokens": 8,
                      "stream": true, "stream_options": {"include_usage": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let finish: Vec<&Value> = chunks.iter().filter(|c| !c["choices"][0]["finish_reason"].is_null()).collect();
    assert_eq!(finish.len(), 1, "{text}");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0, "usage chunk last: {text}");
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    let n = usage["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=8).contains(&n));
    assert!(!streamed.is_empty() || n > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn llama_answers_plain_and_streamed() {
    plain_and_streamed(Arch::Llama, "tiny-llama").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn qwen2_answers_plain_and_streamed() {
    plain_and_streamed(Arch::Qwen2, "tiny-qwen2").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn models_health_ready_and_status() {
    let model = ModelDir::generate("tiny-status", &ModelSpec::tiny(Arch::Llama));
    let (node, data) = up_with(&model).await;
    let base = node.http.clone().unwrap();
    let http = bitinglip_tests::http();
    let models: Value = http.get(format!("{base}/v1/models")).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "tiny-status");
    assert_eq!(models["data"][0]["object"], "model");
    assert_eq!(http.get(format!("{base}/health")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{base}/ready")).send().await.unwrap().status(), 200);

    // `bitinglip status` over NATS lists the node, its roles and its ready worker.
    let url = node.nats_url().to_string();
    // The CLI on that machine (same data folder) connects as the `admin` user `up` made.
    let data_dir = data.path().display().to_string();
    let env = [("BITINGLIP_DATA_DIR", data_dir.as_str())];
    let (code, out, err) = bitinglip_tests::run_cli_env(&["status", "--nats", &url], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("gateway,task-manager") || out.contains("cluster-manager"), "{out}");
    assert!(out.contains("tiny-status") && out.contains("ready") && out.contains("mistralrs"), "{out}");

    // `bitinglip chat` streams an answer over NATS alone.
    let (code, out, err) = bitinglip_tests::run_cli_env(
        &["chat", "--nats", &url, "--model", "tiny-status", "--max-tokens", "5", "hi"],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("completion tokens"), "{err}");
    let _ = out;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_up_cleanly_with_its_nats_server() {
    let model = ModelDir::generate("tiny-stop", &ModelSpec::tiny(Arch::Llama));
    let (mut node, data) = up_with(&model).await;
    let status = node.sigterm(Duration::from_secs(30)).await.expect("exits after SIGTERM");
    assert!(status.success(), "{status}: {}", node.log());
    // The local nats-server it started is gone too: its port no longer answers.
    let conf = std::fs::read_to_string(data.path().join("nats/nats-server.conf")).unwrap();
    let port: u16 = conf.lines().find_map(|l| l.strip_prefix("port: ")).unwrap().trim().parse().unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_openai_python_client_works() {
    let model = ModelDir::generate("tiny-openai", &ModelSpec::tiny(Arch::Qwen2));
    let (node, data) = up_with(&model).await;
    let base = format!("{}/v1", node.http.clone().unwrap());
    // The key `up` created on its first start, as a user following the README would use it.
    let key = std::fs::read_to_string(data.path().join("admin.key")).unwrap().trim().to_string();
    let stdout = bitinglip_tests::python_client("openai_chat.py", &[&base, "tiny-openai", &key])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
    assert!(stdout.starts_with("ok"), "{stdout}");
}
