//! Autoscaling: replicas follow the load between their bounds, a scale-down drains
//! (nothing fails or repeats, with the leader killed in the middle), and an idle
//! deployment goes to zero replicas and comes back for the next request.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bitinglip_config::{Config, Role};
use bitinglip_tests::{assert_eventually, post_chat, post_json, test_config, words, NodeProcess, SseReader, TestNats};
use serde_json::{json, Value};

/// A node with `roles` (every role when none), fast heartbeats and decisions so the test
/// runs in seconds, and a scale-down window of 3 s.
fn fast(nats: &TestNats, id: &str, roles: &[Role]) -> Config {
    let mut c = test_config(&nats.url());
    c.node_id = id.into();
    if !roles.is_empty() {
        c.roles = roles.to_vec();
    }
    c.cluster.heartbeat_interval = Duration::from_millis(300);
    c.cluster.node_ttl = Duration::from_secs(2);
    c.cluster.reconcile_interval = Duration::from_millis(300);
    c.cluster.autoscale_interval = Duration::from_millis(250);
    c.cluster.scale_down_window = Duration::from_secs(3);
    // A replica stopped by a scale-down hands on what it runs after 200 ms: the streams
    // of the test's 0.5 s answers continue on another replica.
    c.worker.drain_grace = Duration::from_millis(200);
    c
}

const CONTROL: [Role; 4] = [Role::Gateway, Role::TaskManager, Role::ModelManager, Role::ClusterManager];

/// The deployments as the admin API lists them.
async fn deployments(base: &str) -> Vec<Value> {
    let http = bitinglip_tests::http();
    match http.get(format!("{base}/api/v1/deployments")).send().await {
        Ok(r) => r.json::<Value>().await.ok().and_then(|v| v["data"].as_array().cloned()).unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// (replicas wanted, nodes serving) of `model`.
async fn replicas(base: &str, model: &str) -> (u64, usize) {
    deployments(base)
        .await
        .iter()
        .find(|d| d["deployment"]["model"] == model)
        .map(|d| {
            let wanted = d["deployment"]["replicas"].as_u64().unwrap_or(0);
            (wanted, d["serving"].as_array().map_or(0, Vec::len))
        })
        .unwrap_or((0, 0))
}

/// The scaling decisions of `model`, as (from, to, reason).
async fn decisions(base: &str, model: &str) -> Vec<(u64, u64, String)> {
    let all = deployments(base).await;
    let Some(d) = all.iter().find(|d| d["deployment"]["model"] == model) else { return Vec::new() };
    d["deployment"]["scaling"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| (e["from"].as_u64().unwrap(), e["to"].as_u64().unwrap(), e["reason"].as_str().unwrap().to_string()))
        .collect()
}

/// Declares an echo deployment answering 40 words per second, 2 sequences per replica.
async fn deploy(base: &str, model: &str, autoscale: Value) {
    let body = json!({
        "model": model,
        "spec": {"source": model, "engine": "echo", "max_sequences": 2, "echo_tokens_per_sec": 40.0},
        "replicas": 1,
        "memory": 1u64 << 30,
        "autoscale": autoscale,
    });
    let answer = post_json(bitinglip_tests::http().post(format!("{base}/api/v1/deployments")), &body).await;
    assert_eq!(answer["model"], model, "{answer}");
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    /// Answers streamed whole: exactly the prompt, echoed.
    exact: AtomicUsize,
    /// Anything else, with what it was.
    wrong: std::sync::Mutex<Vec<String>>,
}

/// Streams chats back to back from `clients` clients until `stop`, each prompt distinct.
fn load(
    base: &str,
    model: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (base, model, stop, tally) = (base.to_string(), model.to_string(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                let http = bitinglip_tests::http();
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    let prompt = format!("client{c} round{round} {}", words(18));
                    let body =
                        json!({"model": model, "messages": [{"role": "user", "content": prompt}], "stream": true});
                    let resp = post_chat(&http, &base, &body).await;
                    if resp.status() != 200 {
                        let status = resp.status();
                        let text = resp.text().await.unwrap_or_default();
                        tally.wrong.lock().unwrap().push(format!("{status}: {text}"));
                        continue;
                    }
                    let mut sse = SseReader::new(resp);
                    let mut text = String::new();
                    while let Some(t) = sse.next_text().await {
                        text.push_str(&t);
                    }
                    if text == prompt {
                        tally.exact.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tally.wrong.lock().unwrap().push(format!("asked {prompt:?}, streamed {text:?}"));
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_follow_the_load_and_scale_down_by_drain_with_the_leader_killed() {
    let nats = TestNats::start().await;
    let configs = [fast(&nats, "cm-a", &CONTROL), fast(&nats, "cm-b", &CONTROL)];
    let mut managers: Vec<NodeProcess> = configs.iter().map(|c| NodeProcess::spawn(c, &["node"])).collect();
    let _workers: Vec<NodeProcess> =
        ["w1", "w2", "w3"].iter().map(|id| NodeProcess::spawn(&fast(&nats, id, &[Role::Worker]), &["node"])).collect();
    for m in managers.iter_mut() {
        m.wait_for_http(Duration::from_secs(30)).await;
    }
    let bases: Vec<String> = managers.iter().map(|m| m.http.clone().unwrap()).collect();
    let leader = |base: String| async move {
        let v: Value =
            bitinglip_tests::http().get(format!("{base}/api/v1/cluster")).send().await.ok()?.json().await.ok()?;
        v["leader"].as_str().map(str::to_string)
    };
    assert_eventually!(Duration::from_secs(30), async { leader(bases[0].clone()).await.is_some() }, "a leader");
    let first = leader(bases[0].clone()).await.unwrap();
    let index = configs.iter().position(|c| c.node_id == first).unwrap();
    // The clients use the gateway of the node that will live.
    let base = bases[1 - index].clone();

    // Wait p95 under 500 ms, 1 to 3 replicas (one per worker node).
    let model = "auto";
    deploy(&base, model, json!({"min_replicas": 1, "max_replicas": 3, "signal": "queue_wait", "target_ms": 500})).await;
    assert_eventually!(Duration::from_secs(60), async { replicas(&base, model).await == (1, 1) }, "one replica serves");

    // 16 clients on 2 sequences: the queue waits, replicas go to the most, 3.
    let tally = Arc::new(Tally::default());
    let heavy = Arc::new(AtomicBool::new(false));
    let mut clients = load(&base, model, 16, heavy.clone(), tally.clone());
    let began = Instant::now();
    assert_eventually!(
        Duration::from_secs(30),
        async { replicas(&base, model).await == (3, 3) },
        "three replicas serve under load: {:?}",
        decisions(&base, model).await
    );
    let up = began.elapsed();
    let ups = decisions(&base, model).await;
    // Up on the tasks the load keeps in flight (16 fill 8 replicas of 2), or on the wait.
    assert!(
        ups.iter().any(|(from, to, why)| to > from && (why.contains("fill") || why.starts_with("queue wait p95"))),
        "{ups:?}"
    );

    // The load falls to 3 clients (2 replicas' worth): after the 3 s window, one drains
    // while the clients keep streaming.
    let light = Arc::new(AtomicBool::new(false));
    clients.extend(load(&base, model, 3, light.clone(), tally.clone()));
    heavy.store(true, Ordering::Relaxed);
    assert_eventually!(
        Duration::from_secs(30),
        async { replicas(&base, model).await == (2, 2) },
        "down to two replicas: {:?}",
        decisions(&base, model).await
    );

    // The leader dies; the other cluster manager takes over and, the load at 1 client,
    // scales down again once its own window has passed.
    managers[index].kill9();
    let one = Arc::new(AtomicBool::new(false));
    clients.extend(load(&base, model, 1, one.clone(), tally.clone()));
    light.store(true, Ordering::Relaxed);
    assert_eventually!(
        Duration::from_secs(40),
        async { replicas(&base, model).await == (1, 1) },
        "down to one replica under the new leader: {:?}\n{}",
        decisions(&base, model).await,
        managers[1 - index].log()
    );
    let downs = decisions(&base, model).await;
    assert!(downs.iter().filter(|(from, to, _)| to < from).count() >= 2, "{downs:?}");
    assert!(
        downs.iter().any(|(_, _, why)| why.contains("waiting or running fill")),
        "a scale-down names the load it fits: {downs:?}"
    );
    one.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let wrong = tally.wrong.lock().unwrap().clone();
    assert!(wrong.is_empty(), "{} answers wrong or failed: {wrong:?}", wrong.len());
    let exact = tally.exact.load(Ordering::Relaxed);
    assert!(exact >= 30, "{exact} answers");
    eprintln!("1 -> 3 replicas in {up:?}; {exact} answers streamed whole across 2 scale-downs");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_deployment_goes_to_zero_and_the_next_request_waits_for_a_replica() {
    let nats = TestNats::start().await;
    let mut node = NodeProcess::spawn(&fast(&nats, "solo", &[]), &["node"]);
    node.wait_for_http(Duration::from_secs(30)).await;
    let base = node.http.clone().unwrap();
    let model = "sleepy";
    deploy(
        &base,
        model,
        json!({"min_replicas": 0, "max_replicas": 2, "signal": "first_token", "target_ms": 2000, "idle_ms": 2000}),
    )
    .await;
    // It starts at one replica, ready for a first request.
    assert_eventually!(Duration::from_secs(60), async { replicas(&base, model).await == (1, 1) }, "one replica serves");

    // Idle for 2 s: 0 replicas, the worker gone.
    assert_eventually!(
        Duration::from_secs(30),
        async { replicas(&base, model).await == (0, 0) },
        "scaled to zero: {:?}",
        decisions(&base, model).await
    );
    let zero = decisions(&base, model).await;
    assert!(zero.iter().any(|(from, to, why)| (*from, *to) == (1, 0) && why.starts_with("no task for")), "{zero:?}");

    // A request now is accepted, held in the queue while a replica starts, and answered.
    let http = bitinglip_tests::http();
    let prompt = words(5);
    let asked = Instant::now();
    let body = json!({"model": model, "messages": [{"role": "user", "content": prompt}], "stream": true});
    let resp = post_chat(&http, &base, &body).await;
    assert_eq!(resp.status(), 200);
    let mut sse = SseReader::new(resp);
    let first = sse.next_text().await.expect("a first token");
    let cold = asked.elapsed();
    let mut text = first;
    while let Some(t) = sse.next_text().await {
        text.push_str(&t);
    }
    assert_eq!(text, prompt);
    let back = decisions(&base, model).await;
    assert!(back.last().is_some_and(|(from, to, _)| (*from, *to) == (0, 1)), "{back:?}");
    eprintln!("cold start, request to first token: {cold:?}");

    // The CLI shows the bounds and the last decision.
    let (code, out, err) = bitinglip_tests::run_cli(&["deployments", "ls", "--nats", &nats.url()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0-2 first_token<2s") && out.contains("0 → 1 at "), "{out}");
}
