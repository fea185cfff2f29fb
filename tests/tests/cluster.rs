//! A 3-server NATS cluster with replicated (R3) streams and buckets: two of three servers
//! killed and brought back keep every stream, bucket and record; the server leading the
//! tasks stream is killed (SIGKILL) in the middle of a run of submits; all three are
//! restarted one after another while submits keep coming. No submit fails (each waits
//! out the election and asks again with the same task id), every accepted task
//! completes, and there is exactly one task per submit.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bitinglip_bus_schema::Subjects;
use bitinglip_tests::{echo_model, words, NodeProcess, TestCluster};
use serde_json::{json, Value};

/// The cluster and one node with every role on it, serving an echo model at
/// `tokens_per_sec`; and its gateway's URL.
async fn cluster_with_a_node(tokens_per_sec: f64) -> (TestCluster, NodeProcess, String) {
    let cluster = TestCluster::start().await;
    let mut config = cluster.node_config();
    config.worker.models.push(echo_model("echo", tokens_per_sec, 4));
    let mut node = NodeProcess::spawn(&config, &["node"]);
    node.wait_for_model("echo", Duration::from_secs(90)).await;
    let base = node.http.clone().expect("a gateway");
    (cluster, node, base)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tasks_stream_leader_killed_under_load_fails_no_submit_and_loses_no_task() {
    let (mut cluster, node, base) = cluster_with_a_node(200.0).await;
    let http = bitinglip_tests::http_builder().timeout(Duration::from_secs(90)).build().unwrap();
    let leader = cluster.leader_of(&Subjects::default().tasks_stream()).await.expect("the tasks stream has a leader");

    let total = 60;
    let mut accepted = Vec::new();
    let mut killed_at = None;
    let mut slowest_after_kill = Duration::ZERO;
    for i in 0..total {
        if i == 20 {
            cluster.kill(leader);
            killed_at = Some(Instant::now());
        }
        let sent = Instant::now();
        let resp = http
            .post(format!("{base}/v1/tasks"))
            .json(&json!({"model": "echo", "messages": [{"role": "user", "content": words(8)}]}))
            .send()
            .await;
        let resp = resp.unwrap_or_else(|e| panic!("submit {i} got no answer: {e}\n{}", node.log()));
        assert_eq!(resp.status(), 202, "submit {i} failed while the cluster healed:\n{}", node.log());
        accepted.push(resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
        if killed_at.is_some() {
            slowest_after_kill = slowest_after_kill.max(sent.elapsed());
        }
    }
    eprintln!(
        "server n{leader} (tasks stream leader) killed: {total} of {total} submits accepted; the slowest took {slowest_after_kill:?}"
    );

    each_completes_once(&http, &base, &accepted, &node).await;

    // The killed server comes back and catches up.
    cluster.start_again(leader).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_of_three_servers_killed_and_back_keep_every_stream_and_bucket() {
    let (mut cluster, node, base) = cluster_with_a_node(0.0).await;
    let before = bitinglip_tests::chat_when_served(&base, "echo", "before the outage").await;
    let task = before["id"].as_str().unwrap().trim_start_matches("chatcmpl-").to_string();

    // Quorum lost, then regained.
    cluster.kill(1);
    cluster.kill(2);
    cluster.start_again(1).await;
    cluster.start_again(2).await;

    let s = Subjects::default();
    let js = async_nats::jetstream::new(cluster.client().await);
    let mut streams = vec![s.tasks_stream(), s.events_stream(), s.usage_stream()];
    streams.extend(
        [s.tasks_bucket(), s.models_bucket(), s.deployments_bucket(), s.keys_bucket()].map(|b| format!("KV_{b}")),
    );
    // Each stream answers again (within a minute of the quorum's return), with 3 replicas.
    for stream in &streams {
        bitinglip_tests::assert_eventually!(
            Duration::from_secs(60),
            async {
                match js.get_stream(stream).await {
                    Ok(mut st) => st.info().await.is_ok_and(|i| i.config.num_replicas == 3),
                    Err(_) => false,
                }
            },
            "{stream} never answered with 3 replicas"
        );
    }
    // The record from before is still there, and the cluster serves again.
    let http = bitinglip_tests::http();
    bitinglip_tests::assert_eventually!(
        Duration::from_secs(60),
        async {
            let record = http.get(format!("{base}/v1/tasks/{task}")).send().await;
            match record {
                Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["status"] == "completed"),
                Err(_) => false,
            }
        },
        "the record from before the outage is gone"
    );
    let after = bitinglip_tests::chat_when_served(&base, "echo", "after the outage").await;
    assert_eq!(after["choices"][0]["message"]["content"], "after the outage", "{after}\n{}", node.log());
}

/// Waits (60 s at most) until `count`, the submits accepted so far, has grown by ten;
/// else panics saying that submits stalled `when`, with `node`'s log.
async fn ten_more_accepted(count: &impl Fn() -> usize, when: &str, node: &NodeProcess) {
    let before = count();
    bitinglip_tests::assert_eventually!(
        Duration::from_secs(60),
        async { count() >= before + 10 },
        "submits stalled {when}:\n{}",
        node.log()
    );
}

/// Every accepted task of `accepted` completes, and they are all the tasks there are
/// (one per submit; the readiness probes' `ping` aside).
async fn each_completes_once(http: &reqwest::Client, base: &str, accepted: &[String], node: &NodeProcess) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in accepted {
        loop {
            let done = match http.get(format!("{base}/v1/tasks/{id}")).send().await {
                Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["status"] == "completed"),
                Err(_) => false,
            };
            if done {
                break;
            }
            assert!(Instant::now() < deadline, "accepted task {id} never completed:\n{}", node.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Every page of the task list.
    let mut ours = 0;
    let mut before: Option<u64> = None;
    loop {
        let cursor = before.map(|b| format!("&before={b}")).unwrap_or_default();
        let page: Value =
            http.get(format!("{base}/v1/tasks?limit=1000{cursor}")).send().await.unwrap().json().await.unwrap();
        ours += page["data"].as_array().unwrap().iter().filter(|t| t["result"]["text"] != "ping").count();
        match page["next"].as_u64() {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(ours, accepted.len(), "one task per submit");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_of_all_three_servers_under_load_fails_no_submit_and_loses_no_task() {
    let (mut cluster, node, base) = cluster_with_a_node(200.0).await;
    let http = bitinglip_tests::http_builder().timeout(Duration::from_secs(90)).build().unwrap();
    // Submits keep coming, one after another, for the whole restart.
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let submitter = {
        let (http, base, accepted, failed, stop) =
            (http.clone(), base.clone(), accepted.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let resp = http
                    .post(format!("{base}/v1/tasks"))
                    .json(&json!({"model": "echo", "messages": [{"role": "user", "content": words(8)}]}))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 202 => {
                        let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
                        accepted.lock().unwrap().push(id);
                    }
                    Ok(r) => {
                        let why = format!("submit {i}: {} {}", r.status(), r.text().await.unwrap_or_default());
                        failed.lock().unwrap().push(why);
                    }
                    Err(e) => failed.lock().unwrap().push(format!("submit {i}: {e}")),
                }
                i += 1;
                // A steady load, not a flood: some hundreds of tasks over the restart.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let count = || accepted.lock().unwrap().len();
    let stream = Subjects::default().tasks_stream();
    for i in 0..3 {
        // Some submits before each restart, then the server goes and comes back, and the
        // next waits until it has caught up (as an operator's rolling restart does).
        ten_more_accepted(&count, &format!("before restarting server {i}"), &node).await;
        let restarted = Instant::now();
        cluster.kill(i);
        cluster.start_again(i).await;
        bitinglip_tests::assert_eventually!(
            Duration::from_secs(90),
            cluster.caught_up(&stream),
            "server {i} never caught up"
        );
        eprintln!("server n{i} restarted and caught up in {:?}", restarted.elapsed());
    }
    ten_more_accepted(&count, "after the restarts", &node).await;
    stop.store(true, Ordering::SeqCst);
    submitter.await.unwrap();
    let failed = failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "submits failed during the rolling restart: {failed:#?}\n{}", node.log());
    let accepted = accepted.lock().unwrap().clone();
    eprintln!("rolling restart: {} submits, all accepted", accepted.len());
    each_completes_once(&http, &base, &accepted, &node).await;
}
