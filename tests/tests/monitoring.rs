//! The monitoring an operator loads, against a real Prometheus scraping a real node: the
//! alerting rules (`docs/deploy/prometheus/alerts.yml`) load with every rule healthy,
//! every metric the rules and the Grafana dashboard (`docs/deploy/grafana/bitinglip.json`)
//! name has series once the node has served traffic, and every panel's query evaluates.
//! A metric renamed or dropped in the code fails here, instead of leaving an alert that
//! can never fire or a panel that stays empty.
//!
//! The traffic is what makes each series exist: chat requests with the admin key and with
//! a key that has limits, a task whose engine fails (a redelivery), a task that crashes its
//! worker node on every delivery (the cluster manager gives it up: a poisoned task), an
//! autoscaled deployment, and a GPU from the test builds' NVML seam (`TEST_NVML_GPUS`).
//!
//! Needs `prometheus` (`/usr/bin/prometheus`, or the path in `PROMETHEUS_BIN`): Debian's
//! `prometheus` package, which `.ci/monitoring` installs. Without it the test fails.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bitinglip_tests::{
    assert_eventually, cli_key, echo_model, free_port, http, http_with, post_chat, run_cli, submit_task, task_record,
    test_config, wait_task_status, words, worker_config, workspace_root, NodeProcess, TestNats, POLL_INTERVAL,
};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The `prometheus` binary: `PROMETHEUS_BIN`, else Debian's. Panics, naming how to install
/// it, when it is missing.
fn prometheus_bin() -> PathBuf {
    let bin = std::env::var_os("PROMETHEUS_BIN").map_or_else(|| PathBuf::from("/usr/bin/prometheus"), PathBuf::from);
    assert!(
        bin.is_file(),
        "{} is missing: install Prometheus (`apt-get install prometheus` on Debian, as .ci/monitoring does) \
         or set PROMETHEUS_BIN",
        bin.display()
    );
    bin
}

/// A `prometheus` process that scrapes one target every second as the job `bitinglip`
/// and evaluates the alerting rules every second, with its config, storage and log in a
/// temp folder. Killed on drop.
struct Prometheus {
    child: Child,
    dir: TempDir,
    /// `http://127.0.0.1:PORT`.
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts it scraping `target` (`host:port`, whose `/metrics` needs no key).
    fn start(target: &str) -> Self {
        let bin = prometheus_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let rules = workspace_root().join("docs/deploy/prometheus/alerts.yml");
        // The job's name is the one the rules select (`up{job="bitinglip"}`).
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: bitinglip\n    static_configs:\n      - targets: [{target:?}]\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("config written");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("an HTTP client");
        Self { child, dir, base: format!("http://{addr}"), http }
    }

    /// Everything it printed.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Waits until it answers `/-/ready` (storage open, config and rules loaded); panics
    /// with its log when it exits or `timeout` passes first.
    async fn wait_ready(&mut self, timeout: Duration) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", self.log());
            }
            let answer = self.http.get(format!("{}/-/ready", self.base)).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(started.elapsed() < timeout, "prometheus not ready within {timeout:?}:\n{}", self.log());
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `GET /api/v1/<path>` with `query`: the whole JSON answer (`status`, `data`,
    /// `error`), or `Null` when none came.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        match self.http.get(format!("{}/api/v1/{path}", self.base)).query(query).send().await {
            Ok(resp) => resp.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// The instant query `expr`, evaluated now: the whole JSON answer.
    async fn query(&self, expr: &str) -> Value {
        self.api("query", &[("query", expr)]).await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- prometheus log ----\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `bitinglip_…` metric names in `text`, as written (a histogram's `_bucket` series
/// under that name): whole names only, not the tail of a longer word.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("bitinglip_") {
        let whole = !rest[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let len =
            tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        if whole {
            names.insert(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    names
}

/// The alert of each rule in the rules file, sorted (a name appears once per rule: an
/// alert with a warning and a critical level has two).
fn alert_names(rules: &str) -> Vec<String> {
    let mut names: Vec<String> =
        rules.lines().filter_map(|l| l.trim().strip_prefix("- alert:")).map(|n| n.trim().to_string()).collect();
    names.sort();
    names
}

/// Every query of the dashboard's panels (a row's panels too), with its panel's title.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((panel["title"].as_str().unwrap_or_default().to_string(), expr.to_string()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// A panel's query as Grafana would send it for every model, with a rate window of a
/// minute (the data source variable only picks the Prometheus it goes to).
fn as_sent(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("${model}", ".+").replace("$model", ".+")
}

#[test]
fn metric_names_are_whole_names_as_written() {
    let names = metric_names(r#"rate(bitinglip_a_total{job="bitinglip"}[5m]) / notbitinglip_b + bitinglip_c_bucket"#);
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["bitinglip_a_total", "bitinglip_c_bucket"]);
    assert_eq!(alert_names("      - alert: B\n        expr: x\n      - alert: A\n"), ["A", "B"]);
    assert_eq!(
        as_sent(r#"rate(m{model=~"$model"}[$__rate_interval]) + n{model=~"${model}"}"#),
        r#"rate(m{model=~".+"}[1m]) + n{model=~".+"}"#
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_loads_the_alerts_and_every_metric_they_and_the_dashboard_name_has_series() {
    let root = workspace_root();
    let rules_text = std::fs::read_to_string(root.join("docs/deploy/prometheus/alerts.yml")).expect("alerts.yml");
    let dashboard_text = std::fs::read_to_string(root.join("docs/deploy/grafana/bitinglip.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&dashboard_text).expect("the dashboard is JSON");
    let queries = panel_queries(&dashboard);
    assert!(!queries.is_empty(), "the dashboard has no queries");
    let expected_alerts = alert_names(&rules_text);
    assert!(!expected_alerts.is_empty(), "alerts.yml has no alert");
    // Before any node starts: a missing Prometheus fails at once.
    prometheus_bin();

    let nats = TestNats::start().await;
    let url = nats.url();
    // One node with every role, an echo model, a GPU, and its metrics listener (no key).
    let mut config = test_config(&url);
    config.node_id = "monitored".into();
    // The cluster's delivery settings, the same on both nodes: a task is given up after
    // its second delivery, and one its worker never acknowledged is delivered again after
    // 3 s.
    config.jetstream.max_deliver = 2;
    config.jetstream.ack_wait = Duration::from_secs(3);
    config.worker.models = vec![echo_model("echo", 0.0, 2)];
    let metrics = format!("127.0.0.1:{}", free_port());
    config.metrics.listen = Some(metrics.clone());
    let gpus = json!([{"index": 0, "uuid": "GPU-monitored", "name": "NVIDIA L4", "memory_total": 24u64 << 30,
        "memory_used": 1u64 << 30, "memory_free": 23u64 << 30, "compute_capability": "8.9", "utilization": 5}]);
    let mut node = NodeProcess::spawn_under(&["env".into(), format!("TEST_NVML_GPUS={gpus}")], &config, &["node"]);
    node.wait_for_model("echo", Duration::from_secs(60)).await;
    let base = node.http.clone().expect("a gateway node");
    // A worker node whose only model's tasks crash it: the test starts it again after each
    // crash, as a supervisor would.
    let mut crashy_config = worker_config(&url);
    crashy_config.node_id = "crashy".into();
    crashy_config.jetstream = config.jetstream.clone();
    crashy_config.worker.models = vec![echo_model("crashy", 50.0, 1)];
    let mut crashy = NodeProcess::spawn(&crashy_config, &["node"]);
    node.wait_for_model("crashy", Duration::from_secs(60)).await;

    let mut prometheus = Prometheus::start(&metrics);
    prometheus.wait_ready(Duration::from_secs(30)).await;
    let mut targets = Value::Null;
    assert_eventually!(
        Duration::from_secs(30),
        async {
            targets = prometheus.api("targets", &[]).await;
            targets["data"]["activeTargets"]
                .as_array()
                .is_some_and(|all| !all.is_empty() && all.iter().all(|t| t["health"] == "up"))
        },
        "the node's metrics were never scraped: {targets}"
    );

    // (a) Every rule of the file is loaded and evaluates without an error.
    let mut rules: Vec<Value> = Vec::new();
    assert_eventually!(
        Duration::from_secs(30),
        async {
            let answer = prometheus.api("rules", &[]).await;
            rules = answer["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            let mut names: Vec<String> = rules.iter().filter_map(|r| r["name"].as_str().map(String::from)).collect();
            names.sort();
            names == expected_alerts && rules.iter().all(|r| r["health"] == "ok")
        },
        "the rules are not {expected_alerts:?}, each healthy: {:#}",
        Value::Array(rules.clone())
    );

    // Traffic, for every series to exist. An autoscaled deployment: its replicas (wanted,
    // serving, min, max) and its queue-wait target.
    let (code, out, err) = run_cli(&[
        "deployments",
        "set",
        "echo-scaled",
        "--engine",
        "echo",
        "--memory",
        "1GiB",
        "--replicas",
        "1",
        "--min-replicas",
        "1",
        "--max-replicas",
        "2",
        "--target-queue-wait",
        "3s",
        "--nats",
        &url,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    // Chat requests with the admin key and with a key that has limits (its quota gauges, its
    // tenant's lane).
    let admin = http();
    let (_, secret) = cli_key(&url, &["--name", "metered", "--rpm", "1000", "--tpm", "1000000"]);
    let metered = http_with(&secret);
    for i in 0..3 {
        let body = json!({"model": "echo", "messages": [{"role": "user", "content": format!("{i} {}", words(8))}]});
        for client in [&admin, &metered] {
            let resp = post_chat(client, &base, &body).await;
            let status = resp.status();
            assert_eq!(status, 200, "{}", resp.text().await.unwrap_or_default());
        }
    }
    // A task whose engine fails: delivered again, then failed.
    let failing = json!({"model": "echo", "messages": [{"role": "user", "content": "boom [[fail]]"}]});
    let failing = submit_task(&admin, &base, &failing).await;
    wait_task_status(&admin, &base, &failing, "failed").await;
    // A task that aborts its worker's process on every delivery: once its deliveries are
    // used up, the cluster manager gives it up (a poisoned task).
    let crash = json!({"model": "crashy", "messages": [{"role": "user", "content": "a b c d e [[abort-at-2]]"}]});
    let crash = submit_task(&admin, &base, &crash).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let record = task_record(&admin, &base, &crash).await;
        if record["status"] == "failed" {
            break;
        }
        assert!(Instant::now() < deadline, "the crashing task was never given up: {record}");
        if crashy.try_exit_status().is_some() {
            crashy = NodeProcess::spawn(&crashy_config, &["node"]);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    // (b) Every metric the rules and the panels name has series in Prometheus.
    let mut wanted = metric_names(&rules_text);
    for (_, expr) in &queries {
        wanted.extend(metric_names(expr));
    }
    let mut missing: Vec<String> = wanted.into_iter().collect();
    assert_eventually!(
        Duration::from_secs(30),
        async {
            let mut still = Vec::new();
            for name in &missing {
                let answer = prometheus.query(&format!("count({{__name__=\"{name}\"}})")).await;
                if answer["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
                    still.push(name.clone());
                }
            }
            missing = still;
            missing.is_empty()
        },
        "no series in Prometheus of {missing:?}, which the rules or the dashboard name"
    );

    // (c) Every panel's query evaluates.
    for (title, expr) in &queries {
        let sent = as_sent(expr);
        let answer = prometheus.query(&sent).await;
        assert_eq!(answer["status"], "success", "panel {title:?}: {sent}\n{answer}");
    }
}
