//! Cache-affinity routing over the durable queue: a conversation's turns stay on one
//! worker while it has room, a full worker's pinned tasks go to the shared queue at once,
//! and a dead owner's conversation (its running turn included) continues on another
//! worker without a repeated or lost token.

use std::{collections::HashMap, time::Duration};

use bitinglip_config::{Config, Role, RoutingMode};
use bitinglip_tests::{
    chat_json, echo_model, metric_sum, post_chat, task_id_of, task_record, test_config, words, NodeProcess, SseReader,
    TestNats,
};
use serde_json::{json, Value};

fn base(url: &str) -> Config {
    let mut c = test_config(url);
    c.cluster.heartbeat_interval = Duration::from_millis(300);
    c.cluster.node_ttl = Duration::from_secs(2);
    c
}

/// A control node and `n` echo worker nodes (`worker-0`…) with `slots` slots each, all
/// ready; returns them with the gateway's base URL.
async fn cluster(
    nats: &TestNats,
    n: usize,
    tokens_per_sec: f64,
    slots: u32,
    mode: RoutingMode,
) -> (NodeProcess, Vec<NodeProcess>, String, Vec<String>) {
    let mut control = base(&nats.url());
    control.roles = vec![Role::Gateway, Role::TaskManager, Role::ModelManager, Role::ClusterManager];
    control.routing.mode = mode;
    let mut front = NodeProcess::spawn(&control, &["node"]);
    let metrics: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", bitinglip_tests::free_port())).collect();
    let mut workers: Vec<NodeProcess> = (0..n)
        .map(|i| {
            let mut c = base(&nats.url());
            c.node_id = format!("worker-{i}");
            c.roles = vec![Role::Worker];
            c.worker.models.push(echo_model("echo", tokens_per_sec, slots));
            c.metrics.listen = Some(metrics[i].clone());
            NodeProcess::spawn(&c, &["node"])
        })
        .collect();
    front.wait_for_model("echo", Duration::from_secs(120)).await;
    for w in &mut workers {
        w.wait_worker_ready("echo", Duration::from_secs(60)).await;
    }
    let url = front.http.clone().unwrap();
    (front, workers, url, metrics)
}

/// A conversation's messages after `turns` turns (system prompt, opening question, then
/// an answer and a question per later turn).
fn conversation(c: usize, turns: usize) -> Vec<Value> {
    let mut m = vec![
        json!({"role": "system", "content": "you answer briefly"}),
        json!({"role": "user", "content": format!("conversation {c}: {}", words(40))}),
    ];
    for t in 1..turns {
        m.push(json!({"role": "assistant", "content": format!("answer {t}")}));
        m.push(json!({"role": "user", "content": format!("question {t} of conversation {c}")}));
    }
    m
}

/// A worker node's metrics, from its metrics listener at `addr`.
async fn worker_metrics(addr: &str) -> String {
    let resp = bitinglip_tests::http().get(format!("http://{addr}/metrics")).send().await.expect("metrics answer");
    resp.text().await.unwrap()
}

/// Sends one chat (not streamed) and returns the id of the worker that ran it.
async fn served_by(url: &str, body: Value) -> String {
    let http = bitinglip_tests::http();
    let resp = post_chat(&http, url, &body).await;
    assert_eq!(resp.status(), 200);
    let id = task_id_of(&resp);
    let answer: Value = resp.json().await.unwrap();
    assert!(answer["choices"][0]["message"]["content"].is_string(), "{answer}");
    let record = task_record(&http, url, &id).await;
    record["worker"].as_str().expect("the record names its worker").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conversations_turns_stay_on_one_worker_and_conversations_spread() {
    let nats = TestNats::start().await;
    let (front, _workers, url, _) = cluster(&nats, 3, 2000.0, 4, RoutingMode::Affinity).await;

    let (mut same, mut later) = (0, 0);
    let mut first_workers: HashMap<String, u32> = HashMap::new();
    for c in 0..12 {
        let mut owner = None;
        for turn in 1..=4 {
            let body = json!({"model": "echo", "messages": conversation(c, turn), "max_tokens": 8});
            let worker = served_by(&url, body).await;
            match &owner {
                None => {
                    *first_workers.entry(worker.clone()).or_default() += 1;
                    owner = Some(worker);
                }
                Some(o) => {
                    later += 1;
                    same += u32::from(*o == worker);
                }
            }
        }
    }
    eprintln!("turns 2+ on their conversation's worker: {same} of {later}; first turns per worker: {first_workers:?}");
    assert_eq!(same, later, "an idle owner keeps every later turn");
    assert!(first_workers.len() >= 2, "conversations spread over the workers: {first_workers:?}");

    // `prompt_cache_key` names the conversation, whatever the prompt.
    let keyed = |text: &str| {
        json!({"model": "echo", "messages": [{"role": "user", "content": text}], "max_tokens": 4,
               "prompt_cache_key": "support-thread-42"})
    };
    let first = served_by(&url, keyed("one opening")).await;
    for text in ["another opening", "a third one", "and a fourth"] {
        assert_eq!(served_by(&url, keyed(text)).await, first, "the key decides the worker");
    }
    // An empty key is refused, naming the field.
    let http = bitinglip_tests::http();
    let mut empty = keyed("x");
    empty["prompt_cache_key"] = json!("");
    let resp = post_chat(&http, &url, &empty).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("prompt_cache_key"), "{err}");

    let metrics = front.metrics().await;
    let pinned = metric_sum(&metrics, "bitinglip_routed_tasks_total", &["route=\"pinned\""]).unwrap_or(0.0);
    assert!(pinned >= 52.0, "every interactive task was pinned: {pinned}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_owner_hands_its_conversations_turns_to_a_free_worker_and_shared_mode_pins_nothing() {
    let nats = TestNats::start().await;
    // One slot each and slow answers: the owner is full while the other turns arrive.
    let (front, workers, url, addrs) = cluster(&nats, 2, 40.0, 1, RoutingMode::Affinity).await;
    let body = |i: usize| {
        json!({"model": "echo", "messages": [{"role": "user", "content": format!("turn {i} {}", words(40))}],
               "max_tokens": 50, "prompt_cache_key": "one-conversation"})
    };
    let started = std::time::Instant::now();
    let runs = (0..4).map(|i| served_by(&url, body(i)));
    let served: Vec<String> = futures::future::join_all(runs).await;
    let took = started.elapsed();
    let distinct: std::collections::HashSet<_> = served.iter().collect();
    eprintln!("4 turns of one key on 2 one-slot workers: {served:?} in {took:?}");
    assert_eq!(distinct.len(), 2, "a full owner's turns go to the free worker: {served:?}");
    let mut released = 0.0;
    for addr in &addrs {
        released += metric_sum(&worker_metrics(addr).await, "bitinglip_pinned_released_total", &[]).unwrap_or(0.0);
    }
    let shared = metric_sum(&front.metrics().await, "bitinglip_routed_tasks_total", &["route=\"shared\""]);
    eprintln!("released by the full owner: {released}; queued shared at once: {shared:?}");
    assert!(released + shared.unwrap_or(0.0) >= 1.0, "the spill went through release or the router");
    drop((front, workers));

    // Shared mode: nothing pinned, all still served.
    let nats = TestNats::start().await;
    let (front, _workers, url, _) = cluster(&nats, 2, 2000.0, 4, RoutingMode::Shared).await;
    for i in 0..4 {
        served_by(&url, body(i)).await;
    }
    let metrics = front.metrics().await;
    assert_eq!(metric_sum(&metrics, "bitinglip_routed_tasks_total", &["route=\"pinned\""]), None);
    // (The start-up check of `wait_for_model` queued one more.)
    assert!(metric_sum(&metrics, "bitinglip_routed_tasks_total", &["route=\"shared\""]).unwrap() >= 4.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_of_a_conversations_owner_mid_turn_continues_it_on_another_worker() {
    let nats = TestNats::start().await;
    let (_front, mut workers, url, _) = cluster(&nats, 3, 25.0, 2, RoutingMode::Affinity).await;
    let http = bitinglip_tests::http();
    let prompt = words(80);
    let turn = |t: usize| {
        let mut messages = conversation(7, t);
        messages.push(json!({"role": "user", "content": prompt}));
        json!({"model": "echo", "messages": messages, "max_tokens": 1000, "prompt_cache_key": "conv-7"})
    };
    // Turn 1 names the owner.
    let owner = served_by(
        &url,
        json!({"model": "echo", "messages": conversation(7, 1), "max_tokens": 4,
                                        "prompt_cache_key": "conv-7"}),
    )
    .await;
    let owner_index: usize = owner.trim_start_matches("worker-").split('-').next().unwrap().parse().unwrap();

    // Turn 2, streamed: its owner is killed after 15 chunks.
    let mut body = turn(2);
    body["stream"] = json!(true);
    let resp = post_chat(&http, &url, &body).await;
    assert_eq!(resp.status(), 200);
    let id = task_id_of(&resp);
    let mut sse = SseReader::new(resp);
    let (mut text, mut chunks) = (String::new(), 0);
    while let Some(t) = sse.next_text().await {
        text.push_str(&t);
        chunks += 1;
        if chunks == 15 {
            let record = task_record(&http, &url, &id).await;
            assert_eq!(record["worker"].as_str().unwrap(), owner, "the turn ran on its owner");
            workers[owner_index].kill9();
        }
    }
    assert!(chunks > 15, "the stream outlived the kill");
    // The echo engine answers with the last user message: one unbroken answer.
    assert_eq!(text, prompt, "nothing repeated, nothing skipped");
    let record = task_record(&http, &url, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert!(record["attempts"].as_u64().unwrap() >= 2, "{record}");
    assert_ne!(record["worker"].as_str().unwrap(), owner, "continued on another worker");

    // Turn 3 finds a new owner, and keeps it.
    let mut short = turn(3);
    short["max_tokens"] = json!(4);
    let next = served_by(&url, short.clone()).await;
    assert_ne!(next, owner);
    assert_eq!(served_by(&url, short).await, next, "the new owner keeps the conversation");
    let answer =
        chat_json(&http, &url, &json!({"model": "echo", "messages": conversation(1, 1), "max_tokens": 4})).await;
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
}
