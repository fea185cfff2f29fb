//! Queue limits answer at once (429 with `Retry-After`), accepted tasks are never
//! dropped, interactive goes first and batch is never starved.

use std::time::{Duration, Instant};

use bitinglip_tests::{echo_config, serving_node, words, TestNats};
use serde_json::{json, Value};

async fn submit(http: &reqwest::Client, base: &str, prompt: &str, batch: bool) -> reqwest::Response {
    let mut req = http
        .post(format!("{base}/v1/tasks"))
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": prompt}]}));
    if batch {
        req = req.header("X-Priority", "batch");
    }
    req.send().await.unwrap()
}

async fn id_of(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().to_string()
}

use bitinglip_tests::wait_task_status as until;

#[tokio::test(flavor = "multi_thread")]
async fn full_queues_refuse_at_once_and_priorities_are_fair() {
    let nats = TestNats::start().await;
    // One slot: tasks wait in the queue behind the one running.
    let mut config = echo_config(&nats.url(), 20.0, 1);
    config.task_manager.queue_max_tasks = 8;
    let (_node, base) = serving_node(&config, "echo", Duration::from_secs(60)).await;
    let http = bitinglip_tests::http();

    let blocker = id_of(submit(&http, &base, &words(400), false).await).await;
    until(&http, &base, &blocker, "running").await;

    // One batch task first, then interactive ones up to the limit (a running task holds
    // its place in the queue until it is acked: 1 + 7).
    let batch = id_of(submit(&http, &base, "batch job", true).await).await;
    let mut interactive = Vec::new();
    for i in 0..7 {
        interactive.push(id_of(submit(&http, &base, &format!("interactive {i}"), false).await).await);
    }
    // The next is refused at once, with Retry-After.
    let started = Instant::now();
    let full = submit(&http, &base, "one too many", false).await;
    assert_eq!(full.status(), 429);
    assert!(full.headers().contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(2));
    let body: Value = full.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");

    // A flood over HTTP: every answer is immediate, accepted or refused; none is dropped.
    let mut accepted_in_flood = 0;
    for _ in 0..50 {
        let r = submit(&http, &base, "flood", true).await;
        match r.status().as_u16() {
            202 => accepted_in_flood += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(accepted_in_flood, 7, "the batch queue takes 8 in all");

    // Free the slot: interactive goes first, batch is never starved (it runs within the
    // first five).
    http.delete(format!("{base}/v1/tasks/{blocker}")).send().await.unwrap();
    let mut claims = Vec::new();
    for id in interactive.iter().chain(std::iter::once(&batch)) {
        let r = until(&http, &base, id, "completed").await;
        let claimed = r["created_ms"].as_f64().unwrap() + r["result"]["usage"]["queue_time_ms"].as_f64().unwrap();
        claims.push((claimed, id.clone()));
    }
    claims.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let batch_rank = claims.iter().position(|(_, id)| *id == batch).unwrap();
    assert!(batch_rank >= 1, "interactive went first: rank {batch_rank}");
    assert!(batch_rank <= 4, "batch was not starved: rank {batch_rank}");
}
