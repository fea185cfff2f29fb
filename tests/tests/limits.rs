//! Limits and usage of API keys across two gateways: requests per minute counted
//! cluster-wide with OpenAI's headers and a 429 at the limit, a daily token budget, and
//! usage per key, model and day equal to the sum of the responses' `usage`, over HTTP, the
//! CLI and `/metrics`; and a cap on the requests and streams one key has in progress.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bitinglip_tests::{
    assert_eventually, cli_key, echo_model, http, http_with, metric_sum, run_cli, test_config, two_gateways,
    NodeProcess, TestNats,
};
use serde_json::{json, Value};

fn chat(model: &str, prompt: &str, max_tokens: u32) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens})
}

/// Waits for the next minute when fewer than 15 s are left of this one: the rate test's
/// requests must fall in one minute window.
async fn start_of_a_minute() {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() % 60;
    if secs > 45 {
        tokio::time::sleep(Duration::from_secs(61 - secs)).await;
    }
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_count_across_gateways_and_usage_adds_up() {
    let nats = TestNats::start().await;
    let url = nats.url();
    let (mut front, mut second, a, b) = two_gateways(&url, &["echo-a", "echo-b"]).await;

    // 3 requests a minute, counted across both gateways.
    let (_, limited) = cli_key(&url, &["--name", "limited", "--rpm", "3"]);
    let limited = http_with(&limited);
    start_of_a_minute().await;
    for (i, base) in [&a, &a, &b].into_iter().enumerate() {
        let resp =
            limited.post(format!("{base}/v1/chat/completions")).json(&chat("echo-a", "hi", 2)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(header(&resp, "x-ratelimit-limit-requests"), "3");
        assert_eq!(header(&resp, "x-ratelimit-remaining-requests"), (2 - i).to_string());
        assert!(header(&resp, "x-ratelimit-reset-requests").ends_with('s'));
    }
    let resp = limited.post(format!("{b}/v1/chat/completions")).json(&chat("echo-a", "hi", 2)).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "x-ratelimit-remaining-requests"), "0");
    assert!(header(&resp, "retry-after").parse::<u64>().is_ok_and(|s| (1..=60).contains(&s)));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    // A key without limits is not counted and gets no limit headers.
    let resp = http().post(format!("{a}/v1/chat/completions")).json(&chat("echo-a", "hi", 2)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-ratelimit-limit-requests").is_none());

    // A daily budget of 10 tokens: spent by one answer, then refused until midnight UTC.
    let (budget_id, budget) = cli_key(&url, &["--name", "budget", "--tokens-per-day", "10"]);
    let budget = http_with(&budget);
    let resp = budget
        .post(format!("{a}/v1/chat/completions"))
        .json(&chat("echo-a", "one two three four five six", 6))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let usage_of = |key: String| {
        let url = url.clone();
        async move {
            let (code, out, err) = run_cli(&["usage", "--nats", &url, "--key", &key, "--json"]);
            assert_eq!(code, 0, "{err}");
            serde_json::from_str::<Value>(&out).unwrap()
        }
    };
    assert_eventually!(
        Duration::from_secs(10),
        async { usage_of(budget_id.clone()).await.as_array().is_some_and(|rows| !rows.is_empty()) },
        "the budget key's usage is counted"
    );
    let resp = budget.post(format!("{b}/v1/chat/completions")).json(&chat("echo-a", "more", 2)).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "x-ratelimit-remaining-tokens-per-day"), "0");

    // Usage per key, model and day is the sum of the responses' usage.
    let (user_id, user) = cli_key(&url, &["--name", "metered"]);
    let user = http_with(&user);
    let mut want: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for (i, model) in ["echo-a", "echo-b", "echo-a", "echo-a", "echo-b"].into_iter().enumerate() {
        let base = if i % 2 == 0 { &a } else { &b };
        let prompt = "w ".repeat(i + 1);
        let resp =
            user.post(format!("{base}/v1/chat/completions")).json(&chat(model, &prompt, 3)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        let entry = want.entry(model).or_default();
        entry.0 += 1;
        entry.1 += body["usage"]["prompt_tokens"].as_u64().unwrap();
        entry.2 += body["usage"]["completion_tokens"].as_u64().unwrap();
    }
    let got = || async {
        let (_, v) = {
            let resp = http().get(format!("{a}/api/v1/usage?key={user_id}")).send().await.unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap())
        };
        let mut got: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
        for row in v["data"].as_array().unwrap() {
            assert_eq!(row["key"], user_id.as_str());
            let e = got.entry(row["model"].as_str().unwrap().to_string()).or_default();
            e.0 += row["requests"].as_u64().unwrap();
            e.1 += row["prompt_tokens"].as_u64().unwrap();
            e.2 += row["completion_tokens"].as_u64().unwrap();
        }
        got
    };
    let want: BTreeMap<String, (u64, u64, u64)> = want.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eventually!(Duration::from_secs(10), async { got().await == want }, "usage {:?} != {want:?}", got().await);
    // The CLI says the same.
    let rows = usage_of(user_id.clone()).await;
    let requests: u64 = rows.as_array().unwrap().iter().map(|r| r["requests"].as_u64().unwrap()).sum();
    assert_eq!(requests, 5);
    // And the worker node's metrics carry the key id, never a secret.
    let metrics = front.metrics().await;
    let key_label = format!("key=\"{user_id}\"");
    assert_eq!(metric_sum(&metrics, "bitinglip_key_requests_total", &[&key_label]), Some(5.0));
    let tokens: u64 = want.values().map(|(_, p, c)| p + c).sum();
    assert_eq!(metric_sum(&metrics, "bitinglip_key_tokens_total", &[&key_label]), Some(tokens as f64));
    assert!(!metrics.contains("blk-"));
    let _ = (&mut front, &mut second);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_holds_at_most_its_cap_of_requests_and_streams_at_once() {
    let nats = TestNats::start().await;
    let url = nats.url();
    let mut config = test_config(&url);
    // Two tokens a second: a stream of six stays open about three seconds.
    config.worker.models = vec![echo_model("slow", 2.0, 8)];
    let mut node = NodeProcess::spawn(&config, &["node"]);
    node.wait_for_model("slow", Duration::from_secs(60)).await;
    let base = node.http.clone().unwrap();
    let (_, secret) = cli_key(&url, &["--name", "one-at-a-time", "--max-concurrent", "1"]);
    let key = http_with(&secret);
    let stream = json!({"model": "slow", "messages": [{"role": "user", "content": "a b c d e f"}], "max_tokens": 6, "stream": true});
    let open = key.post(format!("{base}/v1/chat/completions")).json(&stream).send().await.unwrap();
    assert_eq!(open.status(), 200);

    // While it is open, the same key is refused at once, on a run and on an event stream.
    let resp = key.post(format!("{base}/v1/chat/completions")).json(&chat("slow", "x", 1)).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "retry-after"), "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_concurrent_requests", "{body}");
    let id = open.headers()["x-task-id"].to_str().unwrap().to_string();
    let resp = key.get(format!("{base}/v1/tasks/{id}/events")).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    // Reads are not counted, and another key is not affected.
    assert_eq!(key.get(format!("{base}/v1/tasks/{id}")).send().await.unwrap().status(), 200);
    let resp = http().post(format!("{base}/v1/chat/completions")).json(&chat("slow", "x", 1)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // The key shows its cap.
    let keys: Value = http().get(format!("{base}/api/v1/keys")).send().await.unwrap().json().await.unwrap();
    let shown = keys["data"].as_array().unwrap().iter().find(|k| k["name"] == "one-at-a-time").cloned().unwrap();
    assert_eq!(shown["limits"]["max_concurrent"], 1, "{shown}");

    // Once the stream is read to its end, its place is free again.
    let text = open.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    assert_eventually!(
        Duration::from_secs(10),
        async {
            let resp = key.post(format!("{base}/v1/chat/completions")).json(&chat("slow", "x", 1)).send().await;
            resp.is_ok_and(|r| r.status() == 200)
        },
        "the key is served again"
    );
}
