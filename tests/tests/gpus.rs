//! A node's GPUs, as NVML reports them, with the budget BitingLip may use of each: in the
//! heartbeat, `bitinglip status` (table and `--json`), `/api/v1/cluster` and `/metrics`.
//! The GPUs come from the tests' seam (`TEST_NVML_GPUS`, compiled into test builds
//! only); a node without NVML has none, with no error.

use std::time::Duration;

use bitinglip_tests::{echo_model, http, run_cli, test_config, NodeProcess, TestNats};
use serde_json::{json, Value};

const GIB: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread")]
async fn a_nodes_gpus_and_their_budget_are_in_its_heartbeat_status_cluster_view_and_metrics() {
    let nats = TestNats::start().await;
    let gpus = json!([
        {"index": 0, "uuid": "GPU-aaaa", "name": "NVIDIA L4", "memory_total": 24 * GIB, "memory_used": GIB,
         "memory_free": 23 * GIB, "compute_capability": "8.9", "utilization": 7},
        {"index": 1, "uuid": "GPU-bbbb", "name": "NVIDIA H100 80GB HBM3", "memory_total": 80 * GIB,
         "memory_used": 2 * GIB, "memory_free": 78 * GIB, "compute_capability": "9.0", "utilization": 0},
    ]);
    let mut config = test_config(&nats.url());
    config.node_id = "gpu-node".into();
    config.worker.models = vec![echo_model("echo", 0.0, 2)];
    config.worker.gpu_budget = bitinglip_config::GpuBudget::parse("0.5").unwrap();
    let mut node = NodeProcess::spawn_under(&["env".into(), format!("TEST_NVML_GPUS={gpus}")], &config, &["node"]);
    node.wait_for_http(Duration::from_secs(30)).await;
    let hb = node.wait_node_live(Duration::from_secs(30)).await;
    assert_eq!(hb.gpus.len(), 2, "{hb:?}");
    assert_eq!((hb.gpus[1].name.as_str(), hb.gpus[1].budget), ("NVIDIA H100 80GB HBM3", 40 * GIB));

    // `bitinglip status --json`: each node's `gpus`; the table has a row per GPU.
    let url = nats.url();
    let (code, out, err) = run_cli(&["status", "--json", "--nats", &url]);
    assert_eq!(code, 0, "{err}");
    let nodes: Value = serde_json::from_str(&out).unwrap();
    let node_json = nodes.as_array().unwrap().iter().find(|n| n["node_id"] == "gpu-node").unwrap();
    assert_eq!(node_json["gpus"][0]["uuid"], "GPU-aaaa", "{node_json}");
    assert_eq!(node_json["gpus"][0]["budget"], 12 * GIB, "{node_json}");
    assert_eq!(node_json["gpus"][1]["compute_capability"], "9.0");
    let (code, out, err) = run_cli(&["status", "--nats", &url]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("NVIDIA H100 80GB HBM3") && out.contains("GPU-bbbb") && out.contains("40.0 GiB"), "{out}");

    // `/api/v1/cluster`.
    let base = node.http.clone().unwrap();
    let cluster: Value = http().get(format!("{base}/api/v1/cluster")).send().await.unwrap().json().await.unwrap();
    let listed = cluster["nodes"].as_array().unwrap().iter().find(|n| n["node_id"] == "gpu-node").unwrap();
    assert_eq!(listed["gpus"][1]["memory_total"], 80 * GIB, "{listed}");

    // `/metrics`: memory by kind, and utilization.
    let metrics = http().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let budget = metrics
        .lines()
        .find(|l| {
            l.starts_with("bitinglip_gpu_memory_bytes{")
                && l.contains("uuid=\"GPU-bbbb\"")
                && l.contains("kind=\"budget\"")
        })
        .unwrap_or_else(|| panic!("no budget gauge in\n{metrics}"));
    assert!(budget.ends_with(&format!(" {}", 40 * GIB)), "{budget}");
    assert!(
        metrics.lines().any(|l| l.starts_with("bitinglip_gpu_utilization_percent{")
            && l.contains("GPU-aaaa")
            && l.ends_with(" 7")),
        "{metrics}"
    );
}
