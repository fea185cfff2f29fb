//! Hosts for real: nats-servers and nodes each in a network namespace of their own, so
//! their traffic crosses interfaces. A worker host cut off from NATS for longer than
//! `jetstream.ack_wait` and then healed changes nothing: the other worker's is the one
//! result. A 3-server cluster across three hosts, one node on each, loses a whole host
//! (its server and its node cut off at once) in the middle of a run of submits: every
//! submit is accepted and completes once while the host is away, and the host catches
//! up when it is back. An
//! edge worker that reaches the cluster only through a leaf node (as a GPU box behind
//! NAT would), with a worker's credentials, is placed like any other and serves.

use std::time::{Duration, Instant};

use bitinglip_bus_schema::{TaskRecord, TaskState};
use bitinglip_config::{Config, Role};
use bitinglip_tests::{
    echo_model, lan_or_skip, netns::Host, run_cli, test_config, words, KeyRecorder, LeafServer, NodeProcess, SseReader,
    TestCluster, TestNats,
};
use serde_json::{json, Value};

/// A node config for `host`: its gateway on the host's address, NATS at `servers`.
fn on_host(host: &Host, servers: &[String], id: &str, roles: &[Role]) -> Config {
    let mut c = test_config(&servers[0]);
    c.nats.servers = servers.to_vec();
    c.node_id = id.into();
    c.roles = roles.to_vec();
    c.gateway.http = format!("{}:8080", host.ip());
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_host_cut_off_longer_than_ack_wait_changes_nothing_when_it_returns() {
    let mut lan = lan_or_skip!();
    let (nats_host, front_host, a_host, b_host) = (lan.host("nats"), lan.host("front"), lan.host("wa"), lan.host("wb"));
    let nats = TestNats::start_on(Some(&nats_host)).await;
    let servers = vec![nats.url()];
    let ack_wait = Duration::from_secs(4);
    let config = |host: &Host, id: &str, roles: &[Role]| {
        let mut c = on_host(host, &servers, id, roles);
        c.jetstream.ack_wait = ack_wait;
        c
    };
    let control = [Role::Gateway, Role::TaskManager, Role::ModelManager, Role::ClusterManager];
    let mut front = NodeProcess::spawn_under(&front_host.wrapper(), &config(&front_host, "front", &control), &["node"]);
    let worker = |host: &Host, id: &str| {
        let mut c = config(host, id, &[Role::Worker]);
        c.worker.models.push(echo_model("echo", 10.0, 2));
        NodeProcess::spawn_under(&host.wrapper(), &c, &["node"])
    };
    let (mut a, mut b) = (worker(&a_host, "worker-a"), worker(&b_host, "worker-b"));
    front.wait_for_model("echo", Duration::from_secs(90)).await;
    a.wait_worker_ready("echo", Duration::from_secs(60)).await;
    b.wait_worker_ready("echo", Duration::from_secs(60)).await;
    let base = front.http.clone().unwrap();
    let http = bitinglip_tests::http();

    // A stream of 60 tokens at 10 a second; after 10 its worker's host is cut off.
    let prompt = words(60);
    let body = json!({"model": "echo", "messages": [{"role": "user", "content": prompt}], "stream": true});
    let resp = http.post(format!("{base}/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-task-id"].to_str().unwrap().to_string();
    let record = KeyRecorder::start(&nats.url(), &bitinglip_bus_schema::Subjects::default().tasks_bucket(), &id).await;
    let mut sse = SseReader::new(resp);
    let (mut text, mut chunks, mut cut) = (String::new(), 0, None);
    let mut cut_host = None;
    while let Some((_, _, data)) = sse.next().await {
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&data).unwrap();
        assert!(v.get("error").is_none(), "stream failed: {v}");
        let Some(t) = v["choices"][0]["delta"]["content"].as_str().filter(|t| !t.is_empty()) else { continue };
        text.push_str(t);
        chunks += 1;
        if chunks == 10 {
            let running = bitinglip_tests::task_record(&http, &base, &id).await;
            let host = if running["worker"].as_str().unwrap().starts_with("worker-a") { &a_host } else { &b_host };
            host.cut();
            cut = Some(Instant::now());
            cut_host = Some(host.ip().to_string());
        }
    }
    let cut = cut.expect("the stream was long enough to cut its worker off");
    assert_eq!(text, prompt, "one unbroken answer while its first worker was cut off");
    let (late, other) =
        if cut_host.as_deref() == Some(a_host.ip()) { (&a_host, "worker-b") } else { (&b_host, "worker-a") };

    // Cut off for longer than AckWait, then back.
    let away = ack_wait + Duration::from_secs(3);
    tokio::time::sleep(away.saturating_sub(cut.elapsed())).await;
    late.heal();
    let healed_ms = bitinglip_nats::now_ms();
    let late_node = if other == "worker-b" { &mut a } else { &mut b };
    // Back: its heartbeat is written again, so whatever it held back has been sent.
    bitinglip_tests::assert_eventually!(
        Duration::from_secs(60),
        async { late_node.heartbeat().await.is_some_and(|hb| hb.time_ms > healed_ms + 1000) },
        "the cut-off worker never came back"
    );

    // Exactly one result, the other worker's; nothing the late worker sent changed it.
    let done = bitinglip_tests::wait_task_status(&http, &base, &id, "completed").await;
    assert!(done["worker"].as_str().unwrap().starts_with(other), "{done}");
    assert_eq!(done["result"]["text"], prompt.as_str(), "{done}");
    let writes: Vec<TaskRecord> = record.values::<TaskRecord>().into_iter().flatten().collect();
    let finals: Vec<&TaskRecord> = writes.iter().filter(|r| r.state.is_final()).collect();
    assert_eq!(finals.len(), 1, "one final write of the record: {writes:#?}");
    assert_eq!(writes.last().map(|r| r.state), Some(TaskState::Completed), "nothing after the result: {writes:#?}");
    assert!(finals[0].worker.as_deref().unwrap_or_default().starts_with(other), "{writes:#?}");
    // The same answer still, for a reader after it all.
    let again = bitinglip_tests::task_record(&http, &base, &id).await;
    assert_eq!(again["result"]["text"], prompt.as_str());
    assert_eq!(again["attempts"], done["attempts"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_across_three_hosts_loses_a_whole_host_and_no_submit() {
    let mut lan = lan_or_skip!();
    let hosts = [lan.host("h1"), lan.host("h2"), lan.host("h3")];
    let cluster = TestCluster::start_on(&[&hosts[0], &hosts[1], &hosts[2]]).await;
    // One node per host with every role, each on its own host's server first.
    let mut nodes = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let mut servers = cluster.urls();
        servers.rotate_left(i);
        let mut c = on_host(host, &servers, &format!("node-{}", i + 1), &Role::ALL);
        c.jetstream.replicas = 3;
        c.worker.models.push(echo_model("echo", 200.0, 4));
        nodes.push(NodeProcess::spawn_under(&host.wrapper(), &c, &["node"]));
    }
    for node in &mut nodes {
        node.wait_for_model("echo", Duration::from_secs(120)).await;
    }
    let http = bitinglip_tests::http_builder().timeout(Duration::from_secs(90)).build().unwrap();
    let base = nodes[0].http.clone().unwrap();

    // 45 submits through host 1's gateway; after 15, host 3 is cut off (server and node).
    let total = 45;
    let mut accepted = Vec::new();
    let mut slowest = Duration::ZERO;
    for i in 0..total {
        if i == 15 {
            hosts[2].cut();
        }
        let sent = Instant::now();
        let resp = http
            .post(format!("{base}/v1/tasks"))
            .json(&json!({"model": "echo", "messages": [{"role": "user", "content": words(6)}]}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("submit {i} got no answer: {e}"));
        let status = resp.status();
        assert_eq!(
            status,
            202,
            "submit {i} failed with a host cut off: {}\n{}",
            resp.text().await.unwrap_or_default(),
            nodes[0].log()
        );
        accepted.push(resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
        if i >= 15 {
            slowest = slowest.max(sent.elapsed());
        }
    }
    eprintln!("host 3 cut off: {total} of {total} submits accepted; the slowest after the cut took {slowest:?}");
    // Every accepted task completes, once, while host 3 is away: one it had claimed is
    // handed on (the NAK sent again until a new attempt claims it), and a pull that a
    // consumer leader on host 3 took with it is made again.
    let away = Instant::now() + Duration::from_secs(90);
    for id in &accepted {
        while !completed(&http, &base, id).await {
            assert!(
                Instant::now() < away,
                "task {id} not completed while host 3 was away: {}\n{}",
                bitinglip_tests::task_record(&http, &base, id).await,
                consumers_state(&cluster).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let list: Value = http.get(format!("{base}/v1/tasks?limit=200")).send().await.unwrap().json().await.unwrap();
    let ours = list["data"].as_array().unwrap().iter().filter(|t| t["result"]["text"] != "ping").count();
    assert_eq!(ours, total, "one task per submit");

    // Back: its server catches up (every replica of the tasks stream current again) and
    // its node serves again.
    hosts[2].heal();
    let stream = bitinglip_bus_schema::Subjects::default().tasks_stream();
    bitinglip_tests::assert_eventually!(
        Duration::from_secs(90),
        cluster.caught_up(&stream),
        "the cut-off server never caught up"
    );
    let third = nodes[2].http.clone().unwrap();
    let answer = bitinglip_tests::chat_when_served(&third, "echo", "back again").await;
    assert_eq!(answer["choices"][0]["message"]["content"], "back again", "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_worker_behind_a_leaf_node_is_placed_like_any_other_and_serves() {
    let mut lan = lan_or_skip!();
    let (hub_host, front_host, edge_host) = (lan.host("hub"), lan.host("front"), lan.host("edge"));
    // The operator's step: credentials for a cluster whose JetStream domain is `hub`,
    // with its leaf node listener, so an edge site's leaf.conf is written too.
    let creds = tempfile::tempdir().unwrap();
    let hub_leafnodes = format!("nats-leaf://{}:7422", hub_host.ip());
    let dir = creds.path().to_str().unwrap();
    let (code, out, err) =
        run_cli(&["nats", "init", "--out", dir, "--jetstream-domain", "hub", "--hub", &hub_leafnodes]);
    assert_eq!(code, 0, "{out}{err}");
    let hub = TestNats::start_hub(&hub_host, creds.path(), "hub").await;
    let control = [Role::Gateway, Role::TaskManager, Role::ModelManager, Role::ClusterManager];
    let mut front = NodeProcess::spawn_under(
        &front_host.wrapper(),
        &on_host(&front_host, &[hub.url()], "front", &control),
        &["node"],
    );
    front.wait_for_http(Duration::from_secs(60)).await;
    let base = front.http.clone().unwrap();

    // The edge site: a leaf node, and a worker that knows only the leaf, the worker's
    // seed and the domain.
    let leaf = LeafServer::start(&edge_host, creds.path(), "hub").await;
    let edge_creds = tempfile::tempdir().unwrap();
    std::fs::copy(creds.path().join("worker.nk"), edge_creds.path().join("worker.nk")).unwrap();
    let mut edge = on_host(&edge_host, &[leaf.url()], "edge-1", &[Role::Worker]);
    edge.nats.credentials_dir = Some(edge_creds.path().to_path_buf());
    edge.jetstream.domain = Some("hub".into());
    let edge = NodeProcess::spawn_under(&edge_host.wrapper(), &edge, &["node"]);

    // Placed like any other: a deployment's replica goes to the one worker there is.
    let (code, out, err) =
        run_cli(&["deployments", "set", "edge-echo", "--engine", "echo", "--replicas", "1", "--nats", &hub.url()]);
    assert_eq!(code, 0, "{out}{err}");
    let answer = bitinglip_tests::chat_when_served(&base, "edge-echo", "hello from the edge").await;
    assert_eq!(answer["choices"][0]["message"]["content"], "hello from the edge", "{answer}\n{}", edge.log());
    let id = answer["id"].as_str().unwrap().trim_start_matches("chatcmpl-");
    let record = bitinglip_tests::task_record(&bitinglip_tests::http(), &base, id).await;
    assert!(record["worker"].as_str().unwrap_or_default().starts_with("edge-1"), "{record}");
    // A stream from the edge to a client on the hub's side.
    let resp = bitinglip_tests::http()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "edge-echo", "messages": [{"role": "user", "content": words(20)}], "stream": true}))
        .send()
        .await
        .unwrap();
    let text: String = bitinglip_tests::sse_data(&resp.text().await.unwrap())
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(String::from))
        .collect();
    assert_eq!(text, words(20));

    // What a worker may not do, it may not do from the edge either.
    let seed = std::fs::read_to_string(creds.path().join("worker.nk")).unwrap();
    let (tx, mut errors) = tokio::sync::mpsc::unbounded_channel();
    let worker = async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
        .custom_inbox_prefix("_INBOX_worker")
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(err) = e {
                    let _ = tx.send(err.to_string());
                }
            }
        })
        .connect(leaf.url())
        .await
        .unwrap();
    let delete = "$JS.hub.API.STREAM.DELETE.BITINGLIP_TASKS";
    worker.publish(delete, "".into()).await.unwrap();
    worker.flush().await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = errors.recv().await {
            if e.to_lowercase().contains("permissions violation") && e.contains(delete) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(refused, Ok(true), "a worker at the edge deleted the tasks stream");
    let js = async_nats::jetstream::new(hub.client().await);
    assert!(js.get_stream("BITINGLIP_TASKS").await.is_ok());
}

async fn completed(http: &reqwest::Client, base: &str, id: &str) -> bool {
    bitinglip_tests::task_record(http, base, id).await["status"] == "completed"
}

/// The tasks stream and its consumers as the servers that answer see them (for a message
/// when a task is late).
async fn consumers_state(cluster: &TestCluster) -> String {
    use futures::TryStreamExt;
    let js = async_nats::jetstream::new(cluster.client().await);
    let stream = bitinglip_bus_schema::Subjects::default().tasks_stream();
    let Ok(mut s) = js.get_stream(&stream).await else { return "no tasks stream answers".into() };
    let mut out = format!("stream: {:?}\n", s.info().await.map(|i| (i.state.clone(), i.cluster.clone())));
    let names: Vec<String> = s.consumer_names().try_collect().await.unwrap_or_default();
    for name in names {
        out.push_str(&format!("consumer {name}: {:?}\n", s.consumer_info(&name).await));
    }
    out
}
