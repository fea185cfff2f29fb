//! Placement on GPUs, with a GPU inventory the test controls (`TEST_NVML_GPUS`, compiled
//! into test builds only): two worker nodes, each with a 24 GiB and an 80 GiB GPU (budgets
//! 21.6 and 72 GiB). Deployments go to the GPU the rule says (see `placement.rs`), several
//! replicas of a model run on one node, each worker pinned to its GPUs; a model no GPU
//! holds spreads over two of one node; no GPU is overcommitted; a replica that fits
//! nowhere is reported with what it needs and the largest free GPU. A deployment's
//! quantization and context are taken over HTTP and refused by name when wrong.

use std::{collections::BTreeMap, time::Duration};

use bitinglip_config::Role;
use bitinglip_tests::{assert_eventually, http, run_cli, test_config, NodeProcess, TestNats};
use serde_json::{json, Value};

const GIB: u64 = 1 << 30;
/// What each GPU a replica uses holds besides (the CUDA runtime), as placement counts it.
const RUNTIME: u64 = 600 << 20;

fn deployments(url: &str) -> Vec<Value> {
    let (code, out, err) = run_cli(&["deployments", "ls", "--json", "--nats", url]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(&out).expect("JSON").as_array().cloned().unwrap_or_default()
}

/// Each replica of `model` as (node, GPUs), sorted.
fn places(all: &[Value], model: &str) -> Vec<(String, Vec<u64>)> {
    let mut v: Vec<(String, Vec<u64>)> = all
        .iter()
        .filter(|d| d["deployment"]["model"] == model)
        .flat_map(|d| d["replicas"].as_array().cloned().unwrap_or_default())
        .map(|r| {
            let gpus = r["gpus"].as_array().unwrap().iter().map(|g| g.as_u64().unwrap()).collect();
            (r["node"].as_str().unwrap().to_string(), gpus)
        })
        .collect();
    v.sort();
    v
}

fn on(node: &str, gpus: &[u64]) -> (String, Vec<u64>) {
    (node.to_string(), gpus.to_vec())
}

/// Sets a deployment of the echo engine needing `gib` GiB and waits until `expect` is
/// where its replicas are.
async fn deploy(url: &str, model: &str, replicas: u32, gib: u64, expect: &[(String, Vec<u64>)]) {
    set_deployment(url, model, replicas, gib);
    let mut seen = Vec::new();
    assert_eventually!(
        Duration::from_secs(30),
        async {
            seen = places(&deployments(url), model);
            seen == expect
        },
        "{model}: placed on {seen:?}, not {expect:?}"
    );
}

/// `deployments set` of `replicas` echo replicas of `gib` GiB each.
fn set_deployment(url: &str, model: &str, replicas: u32, gib: u64) {
    let (memory, replicas) = (format!("{gib}GiB"), replicas.to_string());
    let (code, out, err) = run_cli(&[
        "deployments",
        "set",
        model,
        "--engine",
        "echo",
        "--replicas",
        &replicas,
        "--memory",
        &memory,
        "--nats",
        url,
    ]);
    assert_eq!(code, 0, "{out}{err}");
}

/// No GPU holds more than its budget (21.6 GiB of GPU 0, 72 of GPU 1), and no GPU runs two
/// replicas of one model.
fn no_gpu_overcommitted(all: &[Value]) {
    let mut claimed: BTreeMap<(String, u64), u64> = BTreeMap::new();
    for d in all {
        let mut seen = std::collections::BTreeSet::new();
        for r in d["replicas"].as_array().unwrap() {
            let gpus = r["gpus"].as_array().unwrap();
            let share = r["memory"].as_u64().unwrap().div_ceil(gpus.len() as u64) + RUNTIME;
            for g in gpus {
                let at = (r["node"].as_str().unwrap().to_string(), g.as_u64().unwrap());
                assert!(seen.insert(at.clone()), "{} twice on {at:?}", d["deployment"]["model"]);
                *claimed.entry(at).or_default() += share;
            }
        }
    }
    for ((node, gpu), bytes) in &claimed {
        let budget = if *gpu == 0 { 24 * GIB / 10 * 9 } else { 80 * GIB / 10 * 9 };
        assert!(*bytes <= budget, "{node} GPU {gpu}: {bytes} claimed of {budget}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deployments_go_to_the_gpus_the_rule_says_and_never_overcommit_one() {
    let nats = TestNats::start().await;
    let url = nats.url();
    let mut control = test_config(&url);
    control.node_id = "control".into();
    control.roles = vec![Role::Gateway, Role::TaskManager, Role::ModelManager, Role::ClusterManager];
    control.cluster.reconcile_interval = Duration::from_millis(300);
    let mut control = NodeProcess::spawn(&control, &["node"]);
    control.wait_for_http(Duration::from_secs(60)).await;

    let gpus = json!([
        {"index": 0, "uuid": "GPU-24", "name": "NVIDIA L4", "memory_total": 24 * GIB, "memory_used": 0,
         "memory_free": 24 * GIB, "compute_capability": "8.9"},
        {"index": 1, "uuid": "GPU-80", "name": "NVIDIA H100 80GB HBM3", "memory_total": 80 * GIB, "memory_used": 0,
         "memory_free": 80 * GIB, "compute_capability": "9.0"},
    ]);
    let mut workers = Vec::new();
    for id in ["a", "b"] {
        let mut c = test_config(&url);
        c.node_id = id.into();
        c.roles = vec![Role::Worker];
        let mut node = NodeProcess::spawn_under(&["env".into(), format!("TEST_NVML_GPUS={gpus}")], &c, &["node"]);
        let hb = node.wait_node_live(Duration::from_secs(60)).await;
        assert_eq!((hb.device.as_str(), hb.gpus.len()), ("cuda", 2), "{hb:?}");
        workers.push(node);
    }

    // 55 GiB fits only the 80 GiB GPUs: one replica on each node's.
    deploy(&url, "m55", 2, 55, &[on("a", &[1]), on("b", &[1])]).await;
    // 25 GiB fits no single GPU now (21.6 and 16.4 GiB of room): spread over both GPUs of
    // node a (12.5 GiB and the runtime on each).
    deploy(&url, "m25", 1, 25, &[on("a", &[0, 1])]).await;
    // 16 GiB: b's 24 GiB GPU; the second replica fits nowhere, and says why.
    deploy(&url, "m16", 2, 16, &[on("b", &[0])]).await;
    let mut why = String::new();
    assert_eventually!(
        Duration::from_secs(10),
        async {
            let all = deployments(&url);
            let m16 = all.iter().find(|d| d["deployment"]["model"] == "m16").cloned().unwrap();
            why = m16["unplaced"].as_str().unwrap_or_default().to_string();
            !why.is_empty()
        },
        "no reason given for m16"
    );
    assert!(why.starts_with("1 of 2 replicas placed"), "{why}");
    assert!(
        why.contains("needs 16.6 GiB on a GPU") && why.contains("the largest free GPU has 16.4 GiB (GPU 1 of b)"),
        "{why}"
    );
    // 1 GiB × 4: the least loaded node each time, on it the GPU it fits best; one replica
    // of the model per GPU, so two on each node.
    deploy(&url, "m1", 4, 1, &[on("a", &[0]), on("a", &[1]), on("b", &[0]), on("b", &[1])]).await;

    // The reason follows the room left: m1 took some of GPU 1 of b.
    let all = deployments(&url);
    let (code, _, err) = run_cli(&["deployments", "ls", "--nats", &url]);
    assert_eq!(code, 0);
    assert!(err.contains("m16: 1 of 2 replicas placed"), "{err}");

    no_gpu_overcommitted(&all);

    // Each node runs a worker per replica placed there, pinned to its GPUs.
    for (node, id) in workers.iter_mut().zip(["a", "b"]) {
        let mut pinned = Vec::new();
        assert_eventually!(
            Duration::from_secs(30),
            async {
                let hb = node.heartbeat().await;
                pinned = hb
                    .map(|hb| {
                        let mut v: Vec<(String, Vec<u32>)> = hb
                            .workers
                            .iter()
                            .filter(|w| w.state == bitinglip_bus_schema::WorkerState::Ready)
                            .map(|w| (w.model.clone(), w.gpus.clone()))
                            .collect();
                        v.sort();
                        v
                    })
                    .unwrap_or_default();
                let want: Vec<(String, Vec<u32>)> = all
                    .iter()
                    .flat_map(|d| {
                        let model = d["deployment"]["model"].as_str().unwrap().to_string();
                        d["replicas"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter(|r| r["node"] == id)
                            .map(|r| {
                                let gpus = r["gpus"].as_array().unwrap().iter().map(|g| g.as_u64().unwrap() as u32);
                                (model.clone(), gpus.collect())
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                pinned == want
            },
            "node {id} runs {pinned:?}"
        );
    }

    // `workers ls` shows each worker's GPUs.
    let (code, out, err) = run_cli(&["workers", "ls", "--nats", &url]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cuda:0+1") && out.contains("cuda:1"), "{out}");

    // A request reaches a model with replicas on two GPUs of each node.
    let base = control.http.clone().unwrap();
    let body = json!({"model": "m1", "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 3});
    let resp = http().post(format!("{base}/v1/chat/completions")).json(&body).send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());

    // Quantization and context over HTTP; a wrong one is refused by name.
    let set = |spec: Value| {
        let base = base.clone();
        async move {
            let body = json!({"model": "mq", "spec": spec, "replicas": 0});
            let resp = http().post(format!("{base}/api/v1/deployments")).json(&body).send().await.unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    };
    let (status, text) =
        set(json!({"source": "mq", "engine": "echo", "quantize": "Q8_0", "context_length": 2048})).await;
    assert!(status.is_success(), "{status}: {text}");
    let mq = deployments(&url).into_iter().find(|d| d["deployment"]["model"] == "mq").unwrap();
    assert_eq!(
        (&mq["deployment"]["spec"]["quantize"], &mq["deployment"]["spec"]["context_length"]),
        (&json!("Q8_0"), &json!(2048))
    );
    let (status, text) = set(json!({"source": "mq", "engine": "echo", "quantize": "Q4"})).await;
    assert_eq!(status.as_u16(), 400, "{text}");
    assert!(text.contains("quantize") || text.contains("Q4"), "{text}");
    let (status, text) = set(json!({"source": "mq", "engine": "echo", "context_length": 0})).await;
    assert_eq!(status.as_u16(), 400, "{text}");
    assert!(text.contains("context_length"), "{text}");
    let (code, out, err) =
        run_cli(&["deployments", "set", "mq", "--engine", "echo", "--quantize", "Q4", "--nats", &url]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("--quantize") && err.contains("Q4K"), "{err}");

    // Sixteen more, twenty in all: each placed in full or told why, none overcommitting.
    let more: [(u32, u64); 16] = [
        (2, 1),
        (1, 2),
        (2, 3),
        (1, 5),
        (1, 8),
        (3, 1),
        (2, 2),
        (1, 4),
        (1, 6),
        (1, 10),
        (1, 12),
        (1, 3),
        (2, 7),
        (1, 9),
        (3, 2),
        (1, 15),
    ];
    for (i, (replicas, gib)) in more.iter().enumerate() {
        set_deployment(&url, &format!("s{i:02}"), *replicas, *gib);
    }
    let mut settled = Vec::new();
    assert_eventually!(
        Duration::from_secs(30),
        async {
            settled = deployments(&url);
            settled.iter().filter(|d| d["deployment"]["model"].as_str().is_some_and(|m| m.starts_with('s'))).count()
                == 16
                && settled.iter().all(|d| {
                    let want = d["deployment"]["replicas"].as_u64().unwrap() as usize;
                    let have = d["replicas"].as_array().unwrap().len();
                    have == want || d["unplaced"].as_str().is_some_and(|w| w.contains("largest free GPU"))
                })
        },
        "the twenty deployments did not settle: {settled:?}"
    );
    assert_eq!(settled.len(), 21, "twenty deployments and mq");
    no_gpu_overcommitted(&settled);
    // A refusal is true: what a replica needs is more than the largest room it names.
    let gib_after = |text: &str, marker: &str| -> f64 {
        let rest = &text[text.find(marker).unwrap_or_else(|| panic!("no {marker:?} in {text}")) + marker.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let mut refused = 0;
    for d in &settled {
        if let Some(why) = d["unplaced"].as_str() {
            refused += 1;
            assert!(gib_after(why, "needs ") > gib_after(why, "largest free GPU has "), "{why}");
        }
    }
    let placed: usize = settled.iter().map(|d| d["replicas"].as_array().unwrap().len()).sum();
    assert!(placed >= 12 && refused >= 1, "{placed} replicas placed, {refused} deployments short");
}
