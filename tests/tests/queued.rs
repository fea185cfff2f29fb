//! A task waiting in its queue has no status record: its stream message is its record
//! until a worker claims it. It is still found by id, listed, owned, retried as the same
//! task and cancelled, and accepting it writes nothing to the records bucket.

use bitinglip_tests::{create_inference_key, echo_node, http_with, words, TestNats};
use serde_json::{json, Value};

async fn post_task(http: &reqwest::Client, base: &str, prompt: &str, idempotency_key: Option<&str>) -> (u16, Value) {
    let mut req = http
        .post(format!("{base}/v1/tasks"))
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": prompt}]}));
    if let Some(k) = idempotency_key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Messages in the records bucket's stream (every write to it is one).
async fn record_writes(nats: &TestNats) -> u64 {
    let js = async_nats::jetstream::new(nats.client().await);
    let mut stream = js.get_stream("KV_bitinglip_tasks").await.unwrap();
    stream.info().await.unwrap().state.last_sequence
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_task_is_its_stream_message_found_listed_owned_retried_and_cancelled() {
    let nats = TestNats::start().await;
    // One slot, slow: a running task keeps the others waiting in the queue.
    let (_node, base) = echo_node(&nats.url(), 20.0, 1).await;
    let admin = bitinglip_tests::http();
    let key = create_inference_key(&admin, &base, "queued-test").await;
    let http = http_with(&key);

    let (status, blocker) = post_task(&http, &base, &words(400), None).await;
    assert_eq!(status, 202, "{blocker}");
    let blocker = blocker["id"].as_str().unwrap().to_string();
    bitinglip_tests::wait_task_status(&admin, &base, &blocker, "running").await;

    // Accepting two tasks behind it writes no record.
    let writes = record_writes(&nats).await;
    let (status, plain) = post_task(&http, &base, "plain one", None).await;
    assert_eq!(status, 202, "{plain}");
    let (status, keyed) = post_task(&http, &base, "keyed one", Some("queued-k1")).await;
    assert_eq!(status, 202, "{keyed}");
    let (plain, keyed) = (plain["id"].as_str().unwrap().to_string(), keyed["id"].as_str().unwrap().to_string());
    assert_eq!(record_writes(&nats).await, writes, "accepting a task wrote a status record");

    // Found by id, as queued, by its owner.
    for id in [&plain, &keyed] {
        let t: Value = http.get(format!("{base}/v1/tasks/{id}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(t["status"], "queued", "{t}");
        assert_eq!(t["attempts"], 0, "{t}");
    }
    // Another key does not see it.
    let other = http_with(&create_inference_key(&admin, &base, "queued-other").await);
    let resp = other.get(format!("{base}/v1/tasks/{plain}")).send().await.unwrap();
    assert_eq!(resp.status(), 404);

    // Listed among the queued ones.
    let list: Value = http.get(format!("{base}/v1/tasks?status=queued")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().filter_map(|t| t["id"].as_str()).collect();
    assert!(ids.contains(&plain.as_str()) && ids.contains(&keyed.as_str()), "{list}");
    assert!(!ids.contains(&blocker.as_str()), "a running task is not queued: {list}");

    // A retry under the same key is the same task; another request under it is refused.
    let (status, again) = post_task(&http, &base, "keyed one", Some("queued-k1")).await;
    assert_eq!((status, again["id"].as_str()), (202, Some(keyed.as_str())), "{again}");
    let (status, conflict) = post_task(&http, &base, "another request", Some("queued-k1")).await;
    assert_eq!(status, 409, "{conflict}");

    // Cancelled while queued: it never runs; the other one runs once the slot is free.
    assert_eq!(http.delete(format!("{base}/v1/tasks/{keyed}")).send().await.unwrap().status(), 200);
    let t = bitinglip_tests::wait_task_status(&http, &base, &keyed, "cancelled").await;
    assert_eq!(t["attempts"], 0, "a cancelled queued task never runs: {t}");
    assert_eq!(http.delete(format!("{base}/v1/tasks/{blocker}")).send().await.unwrap().status(), 200);
    let t = bitinglip_tests::wait_task_status(&http, &base, &plain, "completed").await;
    assert_eq!(t["attempts"], 1, "{t}");
    assert_eq!(t["result"]["text"], "plain one", "{t}");
    let t = bitinglip_tests::wait_task_status(&http, &base, &keyed, "cancelled").await;
    assert_eq!(t["attempts"], 0, "the cancelled one stayed cancelled: {t}");
}
