//! Error statuses of the HTTP API, in OpenAI's error shape, and a bad config's exit code.

use std::time::Duration;

use bitinglip_config::EngineKind;
use bitinglip_tests::{run_cli, test_config, NodeProcess, TestNats};
use serde_json::{json, Value};

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "OpenAI error shape: {body}");
    assert!(body["error"]["type"].is_string(), "OpenAI error shape: {body}");
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn http_errors_have_the_right_status_and_shape() {
    let nats = TestNats::start().await;
    let mut config = test_config(&nats.url());
    config.gateway.max_body_bytes = 4096;
    // The echo engine: this test is about the platform's answers, not the model's.
    let mut m = bitinglip_config::ModelConfig::new("echo-model");
    m.engine = EngineKind::Echo;
    config.worker.models.push(m);
    let mut node = NodeProcess::spawn(&config, &["node"]);
    node.wait_for_model("echo-model", Duration::from_secs(60)).await;
    let base = node.http.clone().unwrap();
    let url = format!("{base}/v1/chat/completions");
    let http = bitinglip_tests::http();
    let ok = json!({"model": "echo-model", "messages": [{"role": "user", "content": "one two three"}]});

    // It works, and echo answers with the prompt.
    let body: Value = http.post(&url).json(&ok).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "one two three");

    // 400: malformed JSON.
    let (s, b) =
        error_of(http.post(&url).header("content-type", "application/json").body("{\"model\": ").send().await.unwrap())
            .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["type"], "invalid_request_error");

    // 400: a field of the wrong type, named.
    let (s, b) =
        error_of(http.post(&url).json(&json!({"model": "echo-model", "messages": "nope"})).send().await.unwrap()).await;
    assert_eq!(s, 400);
    assert!(b["error"]["message"].as_str().unwrap().contains("messages"), "{b}");

    // 400: an invalid value, named.
    let mut bad = ok.clone();
    bad["temperature"] = json!(7.5);
    let (s, b) = error_of(http.post(&url).json(&bad).send().await.unwrap()).await;
    assert_eq!(s, 400);
    assert!(b["error"]["message"].as_str().unwrap().contains("temperature"), "{b}");

    // 400 at submit, never queued: a grammar that does not compile.
    for grammar in [json!({"type": "regex", "value": "(yes|no"}), json!({"type": "lark", "value": "start: ("})] {
        let mut bad = ok.clone();
        bad["grammar"] = grammar.clone();
        let (s, b) = error_of(http.post(&url).json(&bad).send().await.unwrap()).await;
        assert_eq!(s, 400, "{grammar}: {b}");
        assert!(b["error"]["message"].as_str().unwrap().contains("does not compile"), "{b}");
    }

    // 404: unknown model.
    let mut unknown = ok.clone();
    unknown["model"] = json!("no-such-model");
    let (s, b) = error_of(http.post(&url).json(&unknown).send().await.unwrap()).await;
    assert_eq!(s, 404, "{b}");
    assert_eq!(b["error"]["code"], "unknown_model");

    // 413: body over the configured limit.
    let mut big = ok.clone();
    big["messages"][0]["content"] = json!("x".repeat(10_000));
    let (s, b) = error_of(http.post(&url).json(&big).send().await.unwrap()).await;
    assert_eq!(s, 413, "{b}");

    // 404 for an unknown route, in the same shape.
    let (s, _) = error_of(http.get(format!("{base}/v1/nothing")).send().await.unwrap()).await;
    assert_eq!(s, 404);

    // 503: a registered model whose only worker is gone. Until its heartbeat expires
    // (cluster.node_ttl) requests are still accepted and queued for it; after, 503.
    node.kill9();
    let mut config2 = test_config(&nats.url());
    config2.gateway.http = config.gateway.http.clone();
    config2.roles.retain(|r| *r != bitinglip_config::Role::Worker);
    let _front = NodeProcess::spawn(&config2, &["node"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (s, b) = loop {
        if let Ok(resp) = http.post(&url).timeout(Duration::from_secs(2)).json(&ok).send().await {
            let (s, b) = error_of(resp).await;
            if s == 503 || std::time::Instant::now() > deadline {
                break (s, b);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["error"]["code"], "no_worker");
}

#[test]
fn a_bad_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[gateway]\nhttp = \"nowhere\"\n").unwrap();
    let (code, _, err) = run_cli(&["node", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("gateway.http") && err.contains("nowhere"), "{err}");

    let (code, _, err) = run_cli(&["node", "--roles", "gateway,chef"]);
    assert_eq!(code, 64);
    assert!(err.contains("chef"), "{err}");
}
