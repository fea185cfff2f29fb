//! Real faults: kill -9 and SIGSTOP of worker nodes mid-stream, poison tasks, and a
//! nats-server restart under load. Nothing accepted may be lost; a streaming client sees
//! one unbroken answer.

use std::time::{Duration, Instant};

use bitinglip_config::{Config, Role};
use bitinglip_tests::{
    chat_json, echo_model, metric_sum, post_chat, serving_node, submit_task, task_id_of, test_config, words, Arch,
    ModelDir, ModelSpec, NodeProcess, SseReader, TestNats,
};
use serde_json::{json, Value};

fn fast_failover(url: &str) -> Config {
    let mut c = test_config(url);
    c.cluster.heartbeat_interval = Duration::from_millis(300);
    c.cluster.node_ttl = Duration::from_secs(2);
    c.jetstream.ack_wait = Duration::from_secs(30);
    c
}

/// The cluster settings a user gets (heartbeat every 2 s, node TTL 10 s): a killed
/// process is found from its closed connection, not its heartbeats.
fn default_failover(url: &str) -> Config {
    let mut c = test_config(url);
    c.cluster = bitinglip_config::ClusterConfig::default();
    c.jetstream.ack_wait = Duration::from_secs(30);
    c
}

fn control(url: &str) -> Config {
    control_with(fast_failover(url))
}

fn control_with(mut c: Config) -> Config {
    c.roles = vec![Role::Gateway, Role::TaskManager, Role::ModelManager, Role::ClusterManager];
    c
}

fn worker(url: &str, id: &str, model: bitinglip_config::ModelConfig) -> Config {
    worker_with(fast_failover(url), id, model)
}

fn worker_with(mut c: Config, id: &str, model: bitinglip_config::ModelConfig) -> Config {
    c.node_id = id.into();
    c.roles = vec![Role::Worker];
    c.worker.models.push(model);
    c
}

use bitinglip_tests::task_record as task;

/// A control node and two worker nodes, `worker-a` and `worker-b`, serving `model` (whose
/// id is `id`), all loaded; returns them with the gateway's base URL.
async fn front_and_two_workers(
    nats: &TestNats,
    id: &str,
    model: bitinglip_config::ModelConfig,
) -> (NodeProcess, NodeProcess, NodeProcess, String) {
    front_and_two_workers_with(fast_failover(&nats.url()), id, model).await
}

/// [`front_and_two_workers`] with the cluster settings of `base`.
async fn front_and_two_workers_with(
    base: Config,
    id: &str,
    model: bitinglip_config::ModelConfig,
) -> (NodeProcess, NodeProcess, NodeProcess, String) {
    let mut front = NodeProcess::spawn(&control_with(base.clone()), &["node"]);
    let mut a = NodeProcess::spawn(&worker_with(base.clone(), "worker-a", model.clone()), &["node"]);
    let mut b = NodeProcess::spawn(&worker_with(base, "worker-b", model), &["node"]);
    front.wait_for_model(id, Duration::from_secs(120)).await;
    a.wait_worker_ready(id, Duration::from_secs(60)).await;
    b.wait_worker_ready(id, Duration::from_secs(60)).await;
    let base = front.http.clone().unwrap();
    (front, a, b, base)
}

/// Streams a chat; after `after` chunks calls `fault` with the task's worker id and the
/// task id; returns
/// (streamed text, task id, time from the fault to the next chunk), or None when the
/// answer ended before `after` chunks.
async fn stream_with_fault(
    base: &str,
    body: Value,
    after: usize,
    mut fault: impl FnMut(&str, &str),
) -> Option<(String, String, Duration)> {
    let http = bitinglip_tests::http();
    let resp = post_chat(&http, base, &body).await;
    assert_eq!(resp.status(), 200);
    let id = task_id_of(&resp);
    let mut sse = SseReader::new(resp);
    let mut text = String::new();
    let mut chunks = 0;
    let mut faulted_at: Option<Instant> = None;
    let mut gap = None;
    while let Some(t) = sse.next_text().await {
        if let (Some(at), None) = (faulted_at, gap) {
            gap = Some(at.elapsed());
        }
        text.push_str(&t);
        chunks += 1;
        if chunks == after && faulted_at.is_none() {
            let record = task(&http, base, &id).await;
            let worker = record["worker"].as_str().unwrap().to_string();
            fault(&worker, &id);
            faulted_at = Some(Instant::now());
        }
    }
    gap.map(|g| (text, id, g))
}

/// Streams `prompt` back from `model` through the official openai client
/// (`tests/clients/openai_stream.py`); after `after` pieces calls `fault` with the task's
/// worker id; returns (the text the client got, the task id, the time from the fault to
/// the next piece the client got).
async fn openai_stream_with_fault(
    base: &str,
    model: &str,
    prompt: &str,
    after: usize,
    mut fault: impl FnMut(&str),
) -> (String, String, Duration) {
    use tokio::io::AsyncBufReadExt;
    let root = bitinglip_tests::workspace_root();
    let mut child = tokio::process::Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/clients/openai_stream.py"))
        .args([&format!("{base}/v1"), bitinglip_tests::TEST_ADMIN_KEY, model, prompt, "1000"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut text, mut id, mut pieces) = (String::new(), String::new(), 0);
    let (mut faulted_at, mut gap): (Option<Instant>, Option<Duration>) = (None, None);
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let (kind, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            match kind {
                "task" => id = rest.to_string(),
                "chunk" => {
                    if let (Some(at), None) = (faulted_at, gap) {
                        gap = Some(at.elapsed());
                    }
                    let (_, piece) = rest.split_once(' ').unwrap();
                    text.push_str(&serde_json::from_str::<String>(piece).unwrap());
                    pieces += 1;
                    if pieces == after {
                        let record = task(&bitinglip_tests::http(), base, &id).await;
                        fault(record["worker"].as_str().unwrap());
                        faulted_at = Some(Instant::now());
                    }
                }
                "done" => {
                    assert_eq!(rest, "stop", "the answer ended whole");
                    break;
                }
                other => panic!("unexpected line {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read).await.expect("the stream ends");
    assert!(child.wait().await.unwrap().success(), "the openai client failed");
    (text, id, gap.expect("the stream outlived the fault"))
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_of_a_worker_mid_stream_continues_on_another() {
    let nats = TestNats::start().await;
    // The settings a user gets: the kill is found from the closed connection (the node
    // TTL of 10 s is only the fallback).
    let (_front, mut a, mut b, base) =
        front_and_two_workers_with(default_failover(&nats.url()), "echo", echo_model("echo", 25.0, 2)).await;

    let prompt = words(80);
    let body =
        json!({"model": "echo", "messages": [{"role": "user", "content": prompt}], "max_tokens": 1000, "stream": true});
    let (text, id, gap) =
        stream_with_fault(&base, body, 15, |w, _| if w.starts_with("worker-a") { a.kill9() } else { b.kill9() })
            .await
            .expect("the stream outlives the kill");
    eprintln!("kill -9 of the worker to the next token: {gap:?} (default settings: node TTL 10 s, AckWait 30 s)");
    assert_eq!(text, prompt, "one unbroken answer: nothing repeated, nothing skipped");
    // Well under the node TTL (10 s): the death was found from the closed connection
    // (typically a few hundred ms; bounded loosely for a loaded machine).
    assert!(gap < Duration::from_secs(4), "handed on from the closed connection, not the TTL: {gap:?}");
    let record = task(&bitinglip_tests::http(), &base, &id).await;
    assert_eq!(record["status"], "completed");
    assert!(record["attempts"].as_u64().unwrap() >= 2, "{record}");
    assert_eq!(record["result"]["text"], prompt.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_of_a_worker_is_found_at_once_without_the_servers_events_user_and_the_node_says_so() {
    // A server set up by hand, as far as BitingLip can tell: no `events` user to follow
    // the server's client-disconnect events (the seeds of every other role, as before).
    let nats = TestNats::start().await;
    let creds = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(nats.credentials_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "nk") && path.file_stem().is_some_and(|s| s != "events") {
            std::fs::copy(&path, creds.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut base = default_failover(&nats.url());
    base.nats.credentials_dir = Some(creds.path().to_path_buf());
    let (front, mut a, mut b, api) =
        front_and_two_workers_with(base.clone(), "echo", echo_model("echo", 25.0, 2)).await;

    // It says so, naming the fix: in /ready and in `bitinglip status`.
    let ready: Value = bitinglip_tests::http().get(format!("{api}/ready")).send().await.unwrap().json().await.unwrap();
    let warning = ready["warnings"][0].as_str().unwrap_or_else(|| panic!("no warning in {ready}"));
    assert!(warning.contains("events") && warning.contains("bitinglip nats init"), "{warning}");
    let (code, _, err) = bitinglip_tests::run_cli(&["status", "--nats", &nats.url()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning:") && err.contains("events.nk"), "{err}");

    // And a killed worker is still found at once, well under the node TTL (10 s), as a
    // user of the official openai client sees it.
    let prompt = words(80);
    let (text, id, gap) = openai_stream_with_fault(&api, "echo", &prompt, 15, |w| {
        if w.starts_with("worker-a") {
            a.kill9()
        } else {
            b.kill9()
        }
    })
    .await;
    eprintln!("without the events user: kill -9 of the worker to the next token: {gap:?} (node TTL 10 s)");
    assert_eq!(text, prompt, "one unbroken answer");
    assert!(gap < Duration::from_secs(4), "found by asking the node, not by the TTL: {gap:?}\n{}", front.log());
    let record = task(&bitinglip_tests::http(), &api, &id).await;
    assert_eq!(record["status"], "completed");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_of_a_mistralrs_worker_mid_stream_continues_on_another() {
    let nats = TestNats::start().await;
    // Big enough that decoding takes a few seconds on 2 cores, so it can be killed mid-stream.
    let spec =
        ModelSpec { hidden: 384, layers: 6, heads: 6, kv_heads: 2, intermediate: 1024, ..ModelSpec::tiny(Arch::Llama) };
    let model = ModelDir::generate("slow-llama", &spec);
    let path = model.path().display().to_string();
    let mut m = bitinglip_config::ModelConfig::new(path);
    m.max_sequences = 2;
    let (_front, mut a, mut b, base) = front_and_two_workers(&nats, "slow-llama", m).await;
    let http = bitinglip_tests::http();

    // Random weights may stop early on an end token; try again until a stream is long
    // enough to be killed in the middle.
    for _ in 0..5 {
        let body = json!({"model": "slow-llama", "messages": [{"role": "user", "content": "Tell a long story"}], "max_tokens": 400, "stream": true});
        let Some((text, id, gap)) =
            stream_with_fault(&base, body, 12, |w, _| if w.starts_with("worker-a") { a.kill9() } else { b.kill9() })
                .await
        else {
            continue;
        };
        eprintln!("mistral.rs: kill -9 of the worker to the next token: {gap:?}");
        assert!(gap < Duration::from_secs(30), "redelivered sooner than AckWait: {gap:?}");
        let record = task(&http, &base, &id).await;
        assert_eq!(record["status"], "completed", "{record}");
        assert!(record["attempts"].as_u64().unwrap() >= 2, "{record}");
        assert_eq!(record["result"]["text"].as_str().unwrap(), text, "the client saw exactly the recorded answer");
        return;
    }
    panic!("no stream was long enough to be killed mid-way");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_worker_loses_its_task_and_cannot_interleave_when_it_wakes() {
    let nats = TestNats::start().await;
    let (_front, a, b, base) = front_and_two_workers(&nats, "echo", echo_model("echo", 25.0, 2)).await;
    let (pa, pb) = (a.pid(), b.pid());
    let prompt = words(120);
    let body =
        json!({"model": "echo", "messages": [{"role": "user", "content": prompt}], "max_tokens": 1000, "stream": true});
    let watch_base = base.clone();
    let (text, id, gap) = stream_with_fault(&base, body, 10, |w, task_id| {
        let frozen = if w.starts_with("worker-a") { pa } else { pb };
        let pid = nix::unistd::Pid::from_raw(frozen as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP);
        // Wake it as soon as the other worker has taken the task over, while it is still
        // generating.
        let (base, task_id) = (watch_base.clone(), task_id.to_string());
        tokio::spawn(async move {
            let http = bitinglip_tests::http();
            bitinglip_tests::assert_eventually!(
                Duration::from_secs(30),
                async { task(&http, &base, &task_id).await["attempts"].as_u64().unwrap_or(0) >= 2 },
                "the task was never taken over"
            );
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        });
    })
    .await
    .expect("the stream outlives the freeze");
    eprintln!("SIGSTOP of the worker to the next token: {gap:?}");
    assert_eq!(text, prompt, "the woken worker's late chunks changed nothing");
    let record = task(&bitinglip_tests::http(), &base, &id).await;
    assert_eq!(record["result"]["text"], prompt.as_str());
    assert!(record["attempts"].as_u64().unwrap() >= 2, "{record}");
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_tasks_fail_after_max_deliver_and_others_keep_flowing() {
    let nats = TestNats::start().await;
    let mut config = fast_failover(&nats.url());
    config.jetstream.max_deliver = 3;
    config.worker.models.push(echo_model("echo", 0.0, 2));
    let (node, base) = serving_node(&config, "echo", Duration::from_secs(60)).await;
    let http = bitinglip_tests::http();
    for fault in ["[[fail]]", "[[panic]]"] {
        let started = Instant::now();
        let poison = json!({"model": "echo", "messages": [{"role": "user", "content": format!("poison {fault}")}]});
        let resp = post_chat(&http, &base, &poison).await;
        assert_eq!(resp.status(), 500);
        let body: Value = resp.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("after 3 attempts"), "{fault}: {body}");
        eprintln!("{fault}: failed after 3 attempts in {:?}", started.elapsed());
        // Others keep flowing, and the worker did not crash-loop.
        let ok =
            chat_json(&http, &base, &json!({"model": "echo", "messages": [{"role": "user", "content": "fine"}]})).await;
        assert_eq!(ok["choices"][0]["message"]["content"], "fine");
    }
    // No actor was restarted: the node's restart counter is absent or zero.
    let restarts = metric_sum(&node.metrics().await, "bitinglip_actor_restarts_total", &[]);
    assert_eq!(restarts.unwrap_or(0.0), 0.0, "no actor restarted:\n{}", node.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_crashes_every_worker_is_failed_by_the_cluster_manager() {
    let nats = TestNats::start().await;
    let mut c = control(&nats.url());
    c.jetstream.max_deliver = 2;
    c.jetstream.ack_wait = Duration::from_secs(3);
    let mut front = NodeProcess::spawn(&c, &["node"]);
    let mut w = worker(&nats.url(), "crashy", echo_model("echo", 50.0, 1));
    w.jetstream = c.jetstream.clone();
    let mut node = NodeProcess::spawn(&w, &["node"]);
    front.wait_for_model("echo", Duration::from_secs(60)).await;
    let base = front.http.clone().unwrap();
    let http = bitinglip_tests::http();
    let crash = json!({"model": "echo", "messages": [{"role": "user", "content": "a b c d e [[abort-at-2]]"}]});
    let id = submit_task(&http, &base, &crash).await;
    // Each attempt aborts the worker process; a supervisor (here, the test) restarts it.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let record = task(&http, &base, &id).await;
        if record["status"] == "failed" {
            assert!(record["error"]["message"].as_str().unwrap().contains("2 attempts"), "{record}");
            break;
        }
        assert!(Instant::now() < deadline, "never failed: {record}");
        if node.try_exit_status().is_some() {
            node = NodeProcess::spawn(&w, &["node"]);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The queue is clear: a normal task runs.
    let ok =
        chat_json(&http, &base, &json!({"model": "echo", "messages": [{"role": "user", "content": "after"}]})).await;
    assert_eq!(ok["choices"][0]["message"]["content"], "after");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_server_restart_under_load_loses_no_accepted_task() {
    let mut nats = TestNats::start().await;
    let mut config = fast_failover(&nats.url());
    config.worker.models.push(echo_model("echo", 200.0, 4));
    let (node, base) = serving_node(&config, "echo", Duration::from_secs(60)).await;
    // A submit during the restart waits for the bus to heal (up to 30 s) instead of failing.
    let http = bitinglip_tests::http_builder().timeout(Duration::from_secs(45)).build().unwrap();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        if i == 15 {
            nats.restart().await;
        }
        match http
            .post(format!("{base}/v1/tasks"))
            .json(&json!({"model": "echo", "messages": [{"role": "user", "content": words(10)}]}))
            .send()
            .await
        {
            Ok(r) if r.status() == 202 => {
                accepted.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string())
            }
            _ => refused += 1,
        }
    }
    eprintln!("{} accepted, {refused} refused while the server restarted", accepted.len());
    assert_eq!(refused, 0, "no client saw the restart:\n{}", node.log());
    let deadline = Instant::now() + Duration::from_secs(90);
    for id in &accepted {
        loop {
            if let Ok(r) = http.get(format!("{base}/v1/tasks/{id}")).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    if v["status"] == "completed" {
                        break;
                    }
                }
            }
            assert!(Instant::now() < deadline, "accepted task {id} never completed:\n{}", node.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // One task per submit: a retried submit never made a second one (the list also holds
    // the ping that waiting for the model sent).
    let list: Value = http.get(format!("{base}/v1/tasks?limit=100")).send().await.unwrap().json().await.unwrap();
    let ours = list["data"].as_array().unwrap().iter().filter(|t| t["result"]["text"] != "ping").count();
    assert_eq!(ours, 40, "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generation_longer_than_ack_wait_keeps_its_lease() {
    let nats = TestNats::start().await;
    let mut config = test_config(&nats.url());
    config.jetstream.ack_wait = Duration::from_secs(2);
    config.worker.models.push(echo_model("echo", 10.0, 2));
    let (_node, base) = serving_node(&config, "echo", Duration::from_secs(60)).await;
    let http = bitinglip_tests::http();
    // 50 tokens at 10 per second: 5 s, two and a half AckWaits.
    let prompt = words(50);
    let started = Instant::now();
    let body = bitinglip_tests::post_json(
        http.post(format!("{base}/v1/chat/completions")).header("Idempotency-Key", "long-one"),
        &json!({"model": "echo", "messages": [{"role": "user", "content": prompt}], "max_tokens": 1000}),
    )
    .await;
    assert!(started.elapsed() > Duration::from_secs(4));
    assert_eq!(body["choices"][0]["message"]["content"], prompt.as_str());
    let id = body["id"].as_str().unwrap().trim_start_matches("chatcmpl-").to_string();
    let record = task(&http, &base, &id).await;
    assert_eq!(record["attempts"], 1, "never redelivered while its worker lived: {record}");
}
