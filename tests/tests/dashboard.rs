//! The dashboard at `/ui/` in a real browser (Debian's Chromium driven by playwright-core,
//! `tests/ui/dashboard.mjs`): sign in, a live node and its model, the prefix cache's hit
//! rate per model and use per worker, the playground's
//! streamed answer, a pull from a hub with its progress to 100%, loading it into a
//! deployment that serves, queues, cancelling a running task, keys and usage, a key
//! without admin scope seeing no admin view, a phone's width, no console error. The views' screenshots go to
//! this test's output folder (`target/tmp/dashboard`); with `DASHBOARD_SCREENSHOTS=docs`
//! the cluster and playground views are also written to `docs/` for the README.

use std::time::Duration;

use bitinglip_tests::{
    echo_model, fake_hub::FakeHub, test_config, words, Arch, ModelDir, ModelSpec, NodeProcess, TestNats, TEST_ADMIN_KEY,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_works_in_a_real_browser() {
    let root = bitinglip_tests::workspace_root();
    let ui = root.join("tests/ui");
    assert!(
        ui.join("node_modules/playwright-core").is_dir(),
        "playwright-core missing in {}: run .ci/setup",
        ui.display()
    );
    assert!(std::path::Path::new("/usr/bin/chromium").exists(), "/usr/bin/chromium missing: run .ci/setup");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();

    let nats = TestNats::start().await;
    let model = ModelDir::generate("tiny-ui", &ModelSpec::tiny(Arch::Qwen2));
    // A hub to pull from, as users' hub is reached: through hf-hub at the configured endpoint.
    let hub = FakeHub::start().await;
    hub.add_repo_from_dir("acme/tiny-pull", "0123456789abcdef0123456789abcdef01234567", &model.path());
    let cache = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats.url());
    hub.configure(&mut config.hub);
    config.hub.cache_dir = Some(cache.path().to_path_buf());
    config.hub.chunk_size = Some(64 * 1024);
    let mut chat = bitinglip_config::ModelConfig::new(model.path().display().to_string());
    chat.name = Some("tiny-ui".into());
    config.worker.models.push(chat);
    config.worker.models.push(echo_model("echo-slow", 2.0, 2));
    // A GPU, through the test builds' NVML seam, for the cluster view's GPU table.
    let gpus = r#"[{"index":0,"uuid":"GPU-ui","name":"NVIDIA L4","memory_total":25769803776,"memory_used":1073741824,"memory_free":24696061952,"compute_capability":"8.9","utilization":5}]"#;
    let mut node = NodeProcess::spawn_under(&["env".into(), format!("TEST_NVML_GPUS={gpus}")], &config, &["node"]);
    node.wait_for_model("tiny-ui", Duration::from_secs(120)).await;
    node.wait_for_model("echo-slow", Duration::from_secs(60)).await;
    let base = node.http.clone().unwrap();
    let http = bitinglip_tests::http();

    let inference_key = bitinglip_tests::create_inference_key(&http, &base, "browser-user").await;
    // A few answers, for the metrics charts to draw.
    for i in 0..3 {
        let body = json!({"model": "tiny-ui", "messages": [{"role": "user", "content": format!("hello {i}")}], "max_tokens": 8});
        let resp = http.post(format!("{base}/v1/chat/completions")).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    // A conversation's second turn, for the prefix cache's hit rate in the cluster view.
    let opening =
        json!([{"role": "system", "content": format!("notes: {}", words(150))}, {"role": "user", "content": "first"}]);
    for turn in 0..2 {
        let mut messages = opening.as_array().unwrap().clone();
        if turn == 1 {
            messages.push(json!({"role": "assistant", "content": "an answer"}));
            messages.push(json!({"role": "user", "content": "second"}));
        }
        let body = json!({"model": "tiny-ui", "messages": messages, "max_tokens": 4});
        let resp = http.post(format!("{base}/v1/chat/completions")).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    // A task that runs for minutes, for the browser to cancel.
    let slow = bitinglip_tests::post_json(
        http.post(format!("{base}/v1/tasks")),
        &json!({"model": "echo-slow", "messages": [{"role": "user", "content": words(400)}]}),
    )
    .await;
    let slow = slow["id"].as_str().unwrap_or_else(|| panic!("{slow}")).to_string();
    bitinglip_tests::wait_task_status(&http, &base, &slow, "running").await;

    let run = tokio::process::Command::new("node")
        .current_dir(&ui)
        .arg("dashboard.mjs")
        .args([
            base.as_str(),
            TEST_ADMIN_KEY,
            &inference_key,
            "tiny-ui",
            &slow,
            out.to_str().unwrap(),
            "acme/tiny-pull",
        ])
        .output();
    let result = tokio::time::timeout(Duration::from_secs(300), run).await.expect("the browser test ends").unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success() && stdout.contains("ok all"),
        "the dashboard in Chromium: {stdout}\n{stderr}\n(screenshots in {})",
        out.display()
    );
    let record = bitinglip_tests::task_record(&http, &base, &slow).await;
    assert_eq!(record["status"], "cancelled", "{record}");
    if std::env::var("DASHBOARD_SCREENSHOTS").is_ok_and(|v| v == "docs") {
        for view in ["dashboard-cluster", "dashboard-playground"] {
            std::fs::copy(out.join(format!("{view}.png")), root.join(format!("docs/{view}.png"))).unwrap();
        }
    }
}
