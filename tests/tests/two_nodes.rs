//! Two nodes on one NATS server: the gateway and control roles on one, a worker on the
//! other. A request to the first is served by the second, across the bus.

use std::time::Duration;

use bitinglip_config::Role;
use bitinglip_tests::{test_config, Arch, ModelDir, ModelSpec, NodeProcess, TestNats};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn gateway_node_and_worker_node_serve_a_request_across_the_bus() {
    let nats = TestNats::start().await;
    let model = ModelDir::generate("tiny-remote", &ModelSpec::tiny(Arch::Qwen2));

    let mut control = test_config(&nats.url());
    control.node_id = "control-1".into();
    control.roles = vec![Role::Gateway, Role::TaskManager, Role::ModelManager, Role::ClusterManager];
    let mut front = NodeProcess::spawn(&control, &["node"]);

    let mut worker = test_config(&nats.url());
    worker.node_id = "gpu-box-1".into();
    worker.roles = vec![Role::Worker];
    let path = model.path();
    let mut back = NodeProcess::spawn(&worker, &["node", "--model", path.to_str().unwrap()]);

    front.wait_for_model("tiny-remote", Duration::from_secs(120)).await;
    back.wait_worker_ready("tiny-remote", Duration::from_secs(60)).await;
    let base = front.http.clone().unwrap();
    let resp = bitinglip_tests::http()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "tiny-remote", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    // The worker process did the generation; the front one has no worker at all.
    let hb = front.heartbeat().await.expect("the front node's heartbeat");
    assert!(!hb.runs(bitinglip_bus_schema::Role::Worker) && hb.workers.is_empty(), "{hb:?}");

    let (code, out, err) = bitinglip_tests::run_cli(&["status", "--nats", &nats.url()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("control-1") && out.contains("gpu-box-1"), "{out}");
    assert!(out.contains("2 node(s)"), "{out}");
    assert!(out.contains("cpu") && out.contains("GB"), "device and memory: {out}");

    let (code, out, err) = bitinglip_tests::run_cli(&["workers", "ls", "--nats", &nats.url()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("gpu-box-1-w0") && out.contains("tiny-remote") && out.contains("ready"), "{out}");
}
