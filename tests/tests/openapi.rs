//! The OpenAPI document against the running gateway. Schemathesis, a client nobody here
//! wrote that knows the API only from `/openapi.json`, sends hundreds of generated
//! requests (valid and invalid bodies, queries, paths, methods) with an admin key, then
//! again without a key. No answer may be a server error (5xx), and every answer must
//! match the document: its status is listed, its content type and headers are the
//! documented ones, its body fits the schema; with the key, leaving the key out must be
//! refused.

use std::{path::Path, process::Command, time::Duration};

use bitinglip_tests::{
    echo_config, fake_hub::FakeHub, get_json, http, spawn_gateway, workspace_root, Arch, TestNats, TEST_ADMIN_KEY,
};
use serde_json::Value;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// The checks every answer must pass (`ignored_auth` only applies with a key).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

/// Runs schemathesis on `doc` against `base`; returns its exit status, its output and the
/// statuses of every answer it got (from its HAR report).
fn schemathesis(doc: &Path, base: &str, key: Option<&str>, checks: &str, report: &Path) -> (bool, String, Vec<u16>) {
    let bin = workspace_root().join(".venv/bin/schemathesis");
    assert!(bin.is_file(), "{} missing: run .ci/setup", bin.display());
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg(doc)
        .args(["--url", base, "--checks", checks, "--max-examples", "12", "--seed", "7", "--workers", "1"])
        .args(["--request-timeout", "30", "--no-color", "--report", "har", "--report-dir"])
        .arg(report)
        // Its caches go beside the report, not into the source tree.
        .current_dir(report.parent().expect("the report folder has a parent"))
        .env("SCHEMATHESIS_TELEMETRY", "false");
    if let Some(key) = key {
        cmd.args(["-H", &format!("Authorization: Bearer {key}")]);
    }
    let out = cmd.output().expect("schemathesis runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let har = std::fs::read_dir(report)
        .expect("a report folder")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a HAR report");
    let har: Value = serde_json::from_slice(&std::fs::read(har).unwrap()).unwrap();
    let statuses = har["log"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_u64().unwrap_or(0) as u16)
        .collect();
    (out.status.success(), text, statuses)
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let nats = TestNats::start().await;
    // Hub search and pull answer from a local hub (one repository), not the internet.
    let (hub, _model) = FakeHub::start_with("acme/tiny-chat", SHA, "tiny-chat", Arch::Qwen2).await;
    let cache = tempfile::tempdir().unwrap();
    let mut config = echo_config(&nats.url(), 0.0, 8);
    hub.configure_cached(&mut config.hub, cache.path());
    let (mut node, base) = spawn_gateway(&config).await;
    node.wait_worker_ready("echo", Duration::from_secs(30)).await;

    // The document needs a key, like every route but the probes.
    let anonymous = reqwest::Client::new().get(format!("{base}/openapi.json")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let doc = get_json(&http(), &base, "/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    let dir = tempfile::tempdir().unwrap();
    let doc_path = dir.path().join("openapi.json");
    std::fs::write(&doc_path, serde_json::to_vec(&doc).unwrap()).unwrap();

    let with_key = format!("{CHECKS},ignored_auth");
    let (ok, out, statuses) =
        schemathesis(&doc_path, &base, Some(TEST_ADMIN_KEY), &with_key, &dir.path().join("with-key"));
    assert!(ok, "with a key:\n{out}\n{}", node.log());
    let served = statuses.iter().filter(|s| (200..300).contains(*s)).count();
    eprintln!("with a key: {} requests, {served} answered 2xx", statuses.len());
    assert!(statuses.len() >= 300, "a few hundred requests: {}", statuses.len());
    assert!(served >= 30, "generated requests reach the handlers: {served} of {}", statuses.len());
    assert!(statuses.iter().all(|s| *s > 0 && *s < 500), "{statuses:?}");

    let (ok, out, statuses) = schemathesis(&doc_path, &base, None, CHECKS, &dir.path().join("without-key"));
    assert!(ok, "without a key:\n{out}\n{}", node.log());
    eprintln!("without a key: {} requests", statuses.len());
    assert!(statuses.len() >= 100, "{}", statuses.len());
    // Without a key only the probes answer (a wrong method on them is a 405); everything
    // else is a 401.
    assert!(statuses.iter().all(|s| [200, 401, 405].contains(s)), "{statuses:?}");

    // Still serving after all that.
    let ready = reqwest::get(format!("{base}/ready")).await.unwrap();
    assert_eq!(ready.status(), 200, "{}", node.log());
}
