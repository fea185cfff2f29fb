//! Placement: deployments are spread over worker nodes by memory fit and load, replicas
//! of a dead node move to another, a cluster manager killed in the middle of a reconcile
//! is taken over with nothing lost, a known model loads on its first request, and an
//! idle on-demand model is unloaded.

use std::time::Duration;

use bitinglip_bus_schema::{Deployment, Subjects};
use bitinglip_config::{Config, Role};
use bitinglip_tests::{
    assert_eventually, fake_hub::FakeHub, post_json, run_cli, state::kv_bucket, test_config, wait_task_status, Arch,
    KeyRecorder, ModelDir, ModelSpec, NodeProcess, TestNats,
};
use serde_json::{json, Value};

const GIB: u64 = 1 << 30;

fn control(nats: &TestNats, id: &str) -> Config {
    let mut c = test_config(&nats.url());
    c.node_id = id.into();
    c.roles = vec![Role::Gateway, Role::TaskManager, Role::ModelManager, Role::ClusterManager];
    c.cluster.reconcile_interval = Duration::from_millis(300);
    c
}

fn worker(nats: &TestNats, id: &str, memory: Option<u64>) -> Config {
    let mut c = test_config(&nats.url());
    c.node_id = id.into();
    c.roles = vec![Role::Worker];
    c.worker.memory = memory;
    c
}

/// The subjects and KV names of the default subject root the test configs use.
fn default_subjects() -> Subjects {
    Subjects::new(Config::default().nats.subject_root).expect("the default subject root")
}

fn cli_json(nats: &TestNats, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--json", "--nats"]);
    let url = nats.url();
    all.push(&url);
    let (code, out, err) = run_cli(&all);
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

/// The deployment of `model` as `deployments ls --json` prints it.
fn deployment(nats: &TestNats, model: &str) -> Option<Value> {
    cli_json(nats, &["deployments", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["deployment"]["model"] == model)
        .cloned()
}

/// Sorted node ids of a deployment's `placed` or `serving` list.
fn nodes_of(d: &Option<Value>, which: &str) -> Vec<String> {
    let mut v: Vec<String> = d
        .as_ref()
        .and_then(|d| d[which].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn deploy(nats: &TestNats, args: &[&str]) {
    let mut all = vec!["deployments", "set"];
    all.extend(args);
    all.extend(["--engine", "echo", "--nats"]);
    let url = nats.url();
    all.push(&url);
    let (code, out, err) = run_cli(&all);
    assert_eq!(code, 0, "{args:?}: {out}{err}");
}

/// Live nodes, 0 while no cluster manager answers yet.
fn live_nodes(nats: &TestNats) -> usize {
    let (code, out, _) = run_cli(&["cluster", "status", "--json", "--nats", &nats.url()]);
    if code != 0 {
        return 0;
    }
    serde_json::from_str::<Value>(&out).ok().and_then(|v| v.as_array().map(Vec::len)).unwrap_or(0)
}

async fn chat(base: &str, model: &str, wait: bool) -> (u16, Option<String>, Value) {
    let resp = bitinglip_tests::http()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 3, "wait_for_model": wait}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, retry, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_are_placed_by_memory_and_load_and_move_off_a_dead_node() {
    let nats = TestNats::start().await;
    let mut front = NodeProcess::spawn(&control(&nats, "control"), &["node"]);
    let mut small = NodeProcess::spawn(&worker(&nats, "small", Some(2 * GIB)), &["node"]);
    let _medium = NodeProcess::spawn(&worker(&nats, "medium", Some(4 * GIB)), &["node"]);
    let _large = NodeProcess::spawn(&worker(&nats, "large", Some(8 * GIB)), &["node"]);
    front.wait_for_http(Duration::from_secs(30)).await;
    assert_eventually!(Duration::from_secs(30), async { live_nodes(&nats) == 4 }, "4 nodes up");

    // `big` fits only the large node; `mid` then only the medium one; the two `tiny`
    // replicas go to the least loaded nodes with room: small (empty), then large (more
    // memory free than medium).
    deploy(&nats, &["big", "--memory", "6GiB"]);
    deploy(&nats, &["mid", "--memory", "3GiB"]);
    deploy(&nats, &["tiny", "--memory", "1GiB", "--replicas", "2", "--min-memory", "1GiB"]);
    let want = [("big", vec!["large"]), ("mid", vec!["medium"]), ("tiny", vec!["large", "small"])];
    for (model, nodes) in &want {
        assert_eventually!(
            Duration::from_secs(30),
            async { nodes_of(&deployment(&nats, model), "serving") == *nodes },
            "{model} served by {nodes:?}: {:?}\n{}",
            deployment(&nats, model),
            front.log()
        );
        assert_eq!(nodes_of(&deployment(&nats, model), "placed"), *nodes);
    }
    let base = front.http.clone().unwrap();
    for (model, _) in &want {
        let (status, _, body) = chat(&base, model, true).await;
        assert_eq!(status, 200, "{model}: {body}");
    }
    // Placed workers show as such.
    let (code, out, _) = run_cli(&["workers", "ls", "--nats", &nats.url()]);
    assert_eq!(code, 0);
    assert!(out.contains("small-r0") && out.contains("tiny"), "{out}");

    // The small node dies: its `tiny` replica goes to the one node left with room.
    let subjects = default_subjects();
    let deployments = kv_bucket(&nats.url(), &subjects.deployments_bucket()).await.expect("the deployments bucket");
    let small_placement = || async {
        deployments.get(bitinglip_nats::store::deployments::placement_key("small")).await.expect("a KV read")
    };
    assert!(small_placement().await.is_some(), "the small node has a placement");
    small.kill9();
    assert_eventually!(
        Duration::from_secs(30),
        async { nodes_of(&deployment(&nats, "tiny"), "serving") == ["large", "medium"] },
        "tiny moved to medium: {:?}\n{}",
        deployment(&nats, "tiny"),
        front.log()
    );
    let (status, _, body) = chat(&base, "tiny", true).await;
    assert_eq!(status, 200, "{body}");
    // The leader saw the node gone: its placement is removed from the deployments bucket.
    assert_eventually!(
        Duration::from_secs(10),
        async { small_placement().await.is_none() },
        "the dead node's placement is still there\n{}",
        front.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_manager_killed_mid_reconcile_is_taken_over_and_restarts_cleanly() {
    let nats = TestNats::start().await;
    let configs = [control(&nats, "cm-a"), control(&nats, "cm-b")];
    let mut managers: Vec<NodeProcess> = configs.iter().map(|c| NodeProcess::spawn(c, &["node"])).collect();
    let _workers: Vec<NodeProcess> =
        ["w1", "w2", "w3"].iter().map(|id| NodeProcess::spawn(&worker(&nats, id, Some(4 * GIB)), &["node"])).collect();
    assert_eventually!(Duration::from_secs(30), async { live_nodes(&nats) == 5 }, "5 nodes up");
    let leader = || {
        let base = managers_http(&configs);
        async move {
            for b in base {
                if let Ok(r) = bitinglip_tests::http().get(format!("{b}/api/v1/cluster")).send().await {
                    if let Ok(v) = r.json::<Value>().await {
                        if let Some(l) = v["leader"].as_str() {
                            return Some(l.to_string());
                        }
                    }
                }
            }
            None
        }
    };
    assert_eventually!(Duration::from_secs(30), async { leader().await.is_some() }, "a leader");
    let first = leader().await.unwrap();
    let index = configs.iter().position(|c| c.node_id == first).unwrap();

    // Declare three replicas and kill the leader while it places them.
    deploy(&nats, &["spread", "--memory", "1GiB", "--replicas", "3"]);
    managers[index].kill9();

    // The other cluster manager takes the lease once it expires and finishes the job.
    assert_eventually!(
        Duration::from_secs(30),
        async { nodes_of(&deployment(&nats, "spread"), "serving") == ["w1", "w2", "w3"] },
        "three replicas, one per worker: {:?}\n{}",
        deployment(&nats, "spread"),
        managers[1 - index].log()
    );
    let other = configs[1 - index].node_id.clone();
    assert_eventually!(
        Duration::from_secs(30),
        async { leader().await.as_deref() == Some(other.as_str()) },
        "{other} leads"
    );

    // The killed one comes back: no manual step, no duplicate replica, the plan unchanged.
    managers[index] = NodeProcess::spawn(&configs[index], &["node"]);
    managers[index].wait_for_http(Duration::from_secs(30)).await;
    // Scaled down over HTTP this time.
    let base = managers[index].http.clone().unwrap();
    let http = bitinglip_tests::http();
    let set = json!({"model": "spread", "spec": {"source": "spread", "engine": "echo"}, "replicas": 2, "memory": GIB});
    let resp = http.post(format!("{base}/api/v1/deployments")).json(&set).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let bad = json!({"spec": {"source": "x", "engine": "turbo"}, "replicas": 1});
    let resp = http.post(format!("{base}/api/v1/deployments")).json(&bad).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("spec.engine"));
    assert_eventually!(
        Duration::from_secs(30),
        async { nodes_of(&deployment(&nats, "spread"), "serving").len() == 2 },
        "scaled down to two: {:?}",
        deployment(&nats, "spread")
    );
    // The replica let go drains, then unloads: two are left.
    let spread =
        || cli_json(&nats, &["workers", "ls"]).as_array().unwrap().iter().filter(|w| w["model"] == "spread").count();
    assert_eventually!(
        Duration::from_secs(30),
        async { spread() == 2 },
        "two spread workers: {}",
        cli_json(&nats, &["workers", "ls"])
    );
    let listed: Value = http.get(format!("{base}/api/v1/deployments")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["data"][0]["deployment"]["replicas"], 2, "{listed}");
    let resp = http.delete(format!("{base}/api/v1/deployments/spread")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eventually!(
        Duration::from_secs(30),
        async { cli_json(&nats, &["workers", "ls"]).as_array().unwrap().is_empty() },
        "a deleted deployment's replicas unload"
    );
}

fn managers_http(configs: &[Config]) -> Vec<String> {
    configs.iter().map(|c| format!("http://{}", c.gateway.http)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_known_model_loads_on_its_first_request_and_unloads_when_idle() {
    let nats = TestNats::start().await;
    let hub = FakeHub::start().await;
    let model = ModelDir::generate("tiny-chat", &ModelSpec::tiny(Arch::Qwen2));
    hub.add_repo_from_dir("acme/tiny-chat", "0123456789abcdef0123456789abcdef01234567", &model.path());

    let mut ctl = control(&nats, "control");
    ctl.cluster.idle_unload = Duration::from_secs(4);
    let mut front = NodeProcess::spawn(&ctl, &["node"]);
    let cache = tempfile::tempdir().unwrap();
    let mut w = worker(&nats, "gpu-1", None);
    w.worker.drain_grace = Duration::ZERO;
    hub.configure(&mut w.hub);
    w.hub.cache_dir = Some(cache.path().to_path_buf());
    let mut back = NodeProcess::spawn(&w, &["node"]);
    front.wait_for_http(Duration::from_secs(30)).await;
    assert_eventually!(Duration::from_secs(30), async { live_nodes(&nats) == 2 }, "2 nodes up");

    // Known (pulled and registered) but loaded nowhere.
    let (code, out, err) = run_cli(&["models", "pull", "acme/tiny-chat", "--nats", &nats.url()]);
    assert_eq!(code, 0, "{out}{err}");
    let base = front.http.clone().unwrap();

    // A client that will not wait gets 503, Retry-After and what the load is doing...
    let (status, retry, body) = chat(&base, "acme/tiny-chat", false).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "model_loading", "{body}");
    assert!(retry.is_some_and(|r| r.parse::<u64>().unwrap() >= 1));
    assert!(body["error"]["message"].as_str().unwrap().contains("loading"), "{body}");
    // ...and one that waits is answered once the load is done.
    let (status, _, body) = chat(&base, "acme/tiny-chat", true).await;
    assert_eq!(status, 200, "{body}\n{}", back.log());
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() >= 1, "{body}");
    back.wait_worker_ready("acme/tiny-chat", Duration::from_secs(5)).await;
    let d = deployment(&nats, "acme/tiny-chat").expect("an on-demand deployment");
    assert_eq!(d["deployment"]["on_demand"], true);
    assert_eq!(nodes_of(&Some(d), "serving"), ["gpu-1"]);

    // No requests for idle_unload: unloaded everywhere, the deployment kept at 0.
    assert_eventually!(
        Duration::from_secs(30),
        async {
            let d = deployment(&nats, "acme/tiny-chat");
            d.as_ref().is_some_and(|d| d["deployment"]["replicas"] == 0) && nodes_of(&d, "serving").is_empty()
        },
        "idle model unloaded: {:?}\n{}",
        deployment(&nats, "acme/tiny-chat"),
        front.log()
    );
    assert_eventually!(
        Duration::from_secs(30),
        async { cli_json(&nats, &["workers", "ls"]).as_array().unwrap().is_empty() },
        "no worker left"
    );

    // The next request loads it again.
    let (status, _, body) = chat(&base, "acme/tiny-chat", true).await;
    assert_eq!(status, 200, "{body}");

    // Unloaded by hand with tasks queued and running: the worker hands its tasks back at
    // once (drain_grace 0), the queued tasks bring the model back, every task completes.
    let http = bitinglip_tests::http();
    let task = json!({"model": "acme/tiny-chat", "messages": [{"role": "user", "content": "tell me more"}], "max_tokens": 128});
    let posts = (0..16).map(|_| {
        let (http, base, task) = (http.clone(), base.clone(), task.clone());
        async move { post_json(http.post(format!("{base}/v1/tasks")), &task).await["id"].as_str().unwrap().to_string() }
    });
    let ids = futures::future::join_all(posts).await;
    let subjects = default_subjects();
    let key = bitinglip_nats::store::deployments::deployment_key("acme/tiny-chat");
    let deployment_values = KeyRecorder::start(&nats.url(), &subjects.deployments_bucket(), &key).await;
    let resp = http
        .post(format!("{base}/api/v1/models/unload"))
        .json(&json!({"model": "acme/tiny-chat"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for id in &ids {
        wait_task_status(&http, &base, id, "completed").await;
    }
    // The unload set the deployment to 0 replicas; with tasks still queued, the leader set
    // it back to 1 (nothing else asks for a load meanwhile: no request came in).
    let replicas_after_unload =
        || -> Vec<u32> { deployment_values.values::<Deployment>().into_iter().flatten().map(|d| d.replicas).collect() };
    assert_eventually!(
        Duration::from_secs(10),
        async { replicas_after_unload().into_iter().skip_while(|r| *r != 0).any(|r| r >= 1) },
        "the queued tasks did not bring the unloaded model back: replicas {:?}\n{}",
        replicas_after_unload(),
        front.log()
    );

    // Unload and remove by hand.
    let (code, _, err) = run_cli(&["models", "unload", "acme/tiny-chat", "--nats", &nats.url()]);
    assert_eq!(code, 0, "{err}");
    assert_eventually!(
        Duration::from_secs(30),
        async { cli_json(&nats, &["workers", "ls"]).as_array().unwrap().is_empty() },
        "unloaded by hand"
    );
    let resp = http.delete(format!("{base}/api/v1/models/acme/tiny-chat")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (status, _, body) = chat(&base, "acme/tiny-chat", true).await;
    assert_eq!(status, 404, "{body}");
    assert!(deployment(&nats, "acme/tiny-chat").is_none());
}

/// Placement and admission read the live nodes from the heartbeats bucket while every
/// node keeps writing its heartbeat: the list is whole every time, never short of a node
/// that was there all along because another one beat during the read.
#[tokio::test(flavor = "multi_thread")]
async fn the_live_nodes_are_listed_whole_while_every_node_beats() {
    let nats = TestNats::start().await;
    let config = test_config(&nats.url());
    let client = bitinglip_nats::connect(&config.nats, "bitinglip-test-store", None).await.expect("connect");
    let subjects = Subjects::new(config.nats.subject_root.clone()).unwrap();
    let bus = bitinglip_nats::Bus::new(client, subjects, "store-test", Duration::from_secs(30));
    let store = bitinglip_nats::Store::provision(&bus, &config).await.expect("the store opens");
    const NODES: usize = 24;
    let beat = |i: usize| bitinglip_bus_schema::NodeHeartbeat {
        node_id: format!("n{i}"),
        roles: vec![Role::Worker],
        started_ms: 1,
        time_ms: bitinglip_nats::now_ms(),
        ..Default::default()
    };
    for i in 0..NODES {
        store.nodes().beat(&beat(i)).await.unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beaters: Vec<_> = (0..4)
        .map(|b| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for i in (b..NODES).step_by(4) {
                        store.nodes().beat(&beat(i)).await.unwrap();
                    }
                }
            })
        })
        .collect();
    for round in 0..300 {
        let live = store.nodes().live().await.expect("a read");
        assert_eq!(live.len(), NODES, "round {round}: {:?}", live.iter().map(|n| &n.node_id).collect::<Vec<_>>());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in beaters {
        b.await.unwrap();
    }
}
