//! Fair share between tenants on the durable queue: a tenant behind another's flood is
//! served in turn, weights share a saturated worker in proportion, and a kill -9 of the
//! worker and a restart of the nats-server during fair dispatch lose and repeat nothing.

use std::time::Duration;

use bitinglip_tests::{
    control_config, echo_config, echo_model, http, serving_node, wait_task_status as until, words, worker_config,
    NodeProcess, TestNats,
};
use serde_json::{json, Value};

/// A new API key of `tenant` at `weight` (made with the admin key); its secret.
async fn key(base: &str, tenant: &str, weight: u32) -> String {
    let body = json!({"name": tenant, "tenant": tenant, "weight": weight});
    let resp = http().post(format!("{base}/api/v1/keys")).json(&body).send().await.unwrap();
    let v: Value = resp.json().await.unwrap();
    v["key"].as_str().unwrap_or_else(|| panic!("no key made: {v}")).to_string()
}

/// Queues a task of `max_tokens` tokens with `secret` (`None`: the admin key); its id.
/// The prompt is long enough for any of them (a test build's echo repeats it 50 times).
async fn submit(base: &str, secret: Option<&str>, max_tokens: u32) -> String {
    let prompt = format!("{} [[repeat-50]]", words(400));
    let body = json!({"model": "echo", "max_tokens": max_tokens, "messages": [{"role": "user", "content": prompt}]});
    let mut req = http().post(format!("{base}/v1/tasks")).json(&body);
    if let Some(secret) = secret {
        req = req.bearer_auth(secret);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(status, 202, "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// Submits each key's `n` tasks, all of the first key's before the next's (so the first
/// tenant's are ahead in time); each key's ids.
async fn flood(base: &str, keys: &[(&str, usize)], max_tokens: u32) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (secret, n) in keys {
        let mut ids = Vec::new();
        for _ in 0..*n {
            ids.push(submit(base, Some(secret), max_tokens).await);
        }
        out.push(ids);
    }
    out
}

/// The tenant (index into `tenants`) of each task, in the order their worker claimed them
/// (acceptance plus time in the queue), once all completed.
async fn claim_order(base: &str, tenants: &[Vec<String>]) -> Vec<usize> {
    let client = http();
    let mut claims = Vec::new();
    for (tenant, ids) in tenants.iter().enumerate() {
        for id in ids {
            let r = until(&client, base, id, "completed").await;
            let claimed = r["created_ms"].as_f64().unwrap() + r["result"]["usage"]["queue_time_ms"].as_f64().unwrap();
            claims.push((claimed, tenant));
        }
    }
    claims.sort_by(|a, b| a.0.total_cmp(&b.0));
    claims.into_iter().map(|(_, t)| t).collect()
}

/// Holds the one slot with a long task of the admin's (until [`unblock`]): every task
/// queued meanwhile waits, and the fair share alone orders them. The blocker's id.
async fn block(base: &str) -> String {
    let blocker = submit(base, None, 20_000).await;
    until(&http(), base, &blocker, "running").await;
    blocker
}

/// Frees the slot [`block`] held.
async fn unblock(base: &str, blocker: &str) {
    http().delete(format!("{base}/v1/tasks/{blocker}")).send().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_behind_a_flood_is_served_in_turn_and_weights_share_in_proportion() {
    let nats = TestNats::start().await;
    // One slot, 400 tokens a second: a task of 20 tokens takes about 50 ms.
    let (_node, base) = serving_node(&echo_config(&nats.url(), 400.0, 1), "echo", Duration::from_secs(60)).await;

    // Equal weights: A queues 12 tasks, then B 4. First come, first served would run B's
    // last (ranks 12 to 15); the fair share alternates while both wait.
    let (a, b) = (key(&base, "team-a", 1).await, key(&base, "team-b", 1).await);
    let blocker = block(&base).await;
    let queued = flood(&base, &[(&a, 12), (&b, 4)], 20).await;
    unblock(&base, &blocker).await;
    let order = claim_order(&base, &queued).await;
    let b_ranks: Vec<usize> = order.iter().enumerate().filter(|(_, t)| **t == 1).map(|(i, _)| i).collect();
    assert!(b_ranks.iter().all(|r| *r <= 8), "B's tasks were served in turn: ranks {b_ranks:?} of {order:?}");

    // Weights 3:1, both backlogged with 12 tasks each: of the first 16 served, C gets
    // three in four.
    let (c, d) = (key(&base, "team-c", 3).await, key(&base, "team-d", 1).await);
    let blocker = block(&base).await;
    let queued = flood(&base, &[(&c, 12), (&d, 12)], 20).await;
    unblock(&base, &blocker).await;
    let order = claim_order(&base, &queued).await;
    let c_first = order[..16].iter().filter(|t| **t == 0).count();
    assert!((11..=13).contains(&c_first), "C (weight 3) got {c_first} of the first 16: {order:?}");
    assert!(order[..8].contains(&1), "D (weight 1) was served in the first 8 though queued last: {order:?}");

    // The lanes are visible per tenant: tokens served and waits, by tenant.
    let metrics = http().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    for tenant in ["team-a", "team-b", "team-c", "team-d"] {
        let tokens = format!("bitinglip_tenant_tokens_total{{model=\"echo\",tenant=\"{tenant}\"}}");
        assert!(metrics.contains(&tokens), "{tokens} missing:\n{metrics}");
        let waits = format!("bitinglip_tenant_wait_seconds_count{{model=\"echo\",tenant=\"{tenant}\"}}");
        assert!(metrics.contains(&waits), "{waits} missing");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_of_the_worker_and_task_manager_and_a_nats_restart_during_fair_dispatch_lose_and_repeat_nothing() {
    let mut nats = TestNats::start().await;
    let control = control_config(&nats.url());
    let mut worker_cfg = worker_config(&nats.url());
    // Two slots, 100 tokens a second: 30 tokens take about 0.3 s.
    worker_cfg.worker.models.push(echo_model("echo", 100.0, 2));
    let (mut control_node, base) = {
        let mut node = NodeProcess::spawn(&control, &["node"]);
        node.wait_for_http(Duration::from_secs(30)).await;
        let base = node.http.clone().unwrap();
        (node, base)
    };
    let mut worker = NodeProcess::spawn(&worker_cfg, &["node"]);
    control_node.wait_for_model("echo", Duration::from_secs(60)).await;

    let (a, b) = (key(&base, "team-a", 1).await, key(&base, "team-b", 2).await);
    let queued = flood(&base, &[(&a, 10), (&b, 10)], 30).await;
    // Some have run, others wait in both lanes, two are running: the worker and the task
    // manager's node die, the server restarts (its JetStream on disk), both come back.
    let client = http();
    let first = &queued[0][0];
    until(&client, &base, first, "completed").await;
    worker.kill9();
    control_node.kill9();
    nats.restart().await;
    let _worker = NodeProcess::spawn(&worker_cfg, &["node"]);
    let mut control_node = NodeProcess::spawn(&control, &["node"]);
    control_node.wait_for_http(Duration::from_secs(30)).await;

    // Every task completes, once: its answer is the one its attempt claimed, and no task
    // of these keys other than these exists.
    for id in queued.iter().flatten() {
        let r = until(&client, &base, id, "completed").await;
        assert_eq!(r["result"]["usage"]["completion_tokens"], 30, "{r}");
    }
    let list: Value = client.get(format!("{base}/v1/tasks?limit=1000")).send().await.unwrap().json().await.unwrap();
    let all: Vec<&str> = list["data"].as_array().unwrap().iter().filter_map(|t| t["id"].as_str()).collect();
    for id in queued.iter().flatten() {
        assert_eq!(all.iter().filter(|x| **x == id.as_str()).count(), 1, "{id} listed once");
    }
}
