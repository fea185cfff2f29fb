//! An answer larger than one NATS message (1 MiB) completes: the worker keeps it in the
//! results object store and the record and the `completed` event carry its name. The task
//! API returns the whole text, the events end with it, and a plain chat completion
//! returns it; nothing is handed back.

use std::time::Duration;

use bitinglip_tests::{echo_model, http, sse_data, test_config, wait_task_status, NodeProcess, TestNats};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_larger_than_one_message_completes() {
    let nats = TestNats::start().await;
    let mut config = test_config(&nats.url());
    config.worker.models = vec![echo_model("echo", 0.0, 4)];
    let mut node = NodeProcess::spawn(&config, &["node"]);
    node.wait_for_http(Duration::from_secs(30)).await;
    node.wait_worker_ready("echo", Duration::from_secs(30)).await;
    let base = format!("http://{}", config.gateway.http);

    // The echo engine of test builds repeats the prompt: 6 kB × 250 is about 1.5 MB.
    let prompt = format!("{}[[repeat-250]] ", format!("{} ", "x".repeat(60)).repeat(100));
    let expected = prompt.repeat(250);
    assert!(expected.len() > 1_400_000);
    let request = json!({"model": "echo", "messages": [{"role": "user", "content": prompt}], "max_tokens": 30_000});

    let accepted: Value =
        http().post(format!("{base}/v1/tasks")).json(&request).send().await.unwrap().json().await.unwrap();
    let id = accepted["id"].as_str().unwrap_or_else(|| panic!("{accepted}")).to_string();
    let record = wait_task_status(&http(), &base, &id, "completed").await;
    assert_eq!(record["attempts"], 1, "completed on its first attempt, never handed back");
    let text = record["result"]["text"].as_str().unwrap();
    assert_eq!(text.len(), expected.len());
    assert!(text == expected, "the whole answer");

    // The events end with the whole answer too.
    let events = http().get(format!("{base}/v1/tasks/{id}/events")).send().await.unwrap().text().await.unwrap();
    let completed: Value = sse_data(&events)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v.get("finish_reason").is_some())
        .unwrap_or_else(|| panic!("no completed event in {} bytes", events.len()));
    assert_eq!(completed["text"].as_str().map(str::len), Some(expected.len()));

    // A plain chat completion of the same size.
    let resp = http().post(format!("{base}/v1/chat/completions")).json(&request).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"].as_str().map(str::len), Some(expected.len()));
}
