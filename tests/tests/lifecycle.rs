//! The durable task lifecycle, with real node processes and a real nats-server: idempotent
//! submit, the task API with resumable events, cancel, drain, and hostile input. Timing
//! matters here, so these drive the echo engine (a configurable token rate).

use std::time::{Duration, Instant};

use bitinglip_config::Role;
use bitinglip_tests::{
    chat_json, control_config, echo_model, echo_node, post_chat, submit_task, task_id_of, test_config, words,
    worker_config, NodeProcess, SseReader, TestNats,
};
use serde_json::{json, Value};

fn chat(model: &str, prompt: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1000})
}

use bitinglip_tests::{task_record as task, wait_task_status as wait_status};

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_submit_returns_the_same_task() {
    let nats = TestNats::start().await;
    let (_node, base) = echo_node(&nats.url(), 0.0, 4).await;
    let http = bitinglip_tests::http();

    let send = || {
        http.post(format!("{base}/v1/chat/completions"))
            .header("Idempotency-Key", "order-42")
            .json(&chat("echo", "one two three"))
    };
    let first = send().send().await.unwrap();
    let id1 = task_id_of(&first);
    let body1: Value = first.json().await.unwrap();
    let second = send().send().await.unwrap();
    let id2 = task_id_of(&second);
    let body2: Value = second.json().await.unwrap();
    assert_eq!(id1, id2, "a retry is the same task");
    assert_eq!(body1["choices"][0]["message"]["content"], body2["choices"][0]["message"]["content"]);
    let t = task(&http, &base, &id1).await;
    assert_eq!(t["attempts"], 1, "it ran once: {t}");

    // The same key through the task API: still the same task, marked as a retry.
    let resp = http
        .post(format!("{base}/v1/tasks"))
        .header("Idempotency-Key", "order-42")
        .json(&chat("echo", "one two three"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["id"], id1.as_str());
    assert_eq!(v["duplicate"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn task_api_events_resume_across_gateways_without_gap_or_repeat() {
    let nats = TestNats::start().await;
    let mut config = test_config(&nats.url());
    config.worker.models.push(echo_model("echo", 40.0, 4));
    let mut a = NodeProcess::spawn(&config, &["node"]);
    let mut other = test_config(&nats.url());
    other.roles = vec![Role::Gateway];
    let b = NodeProcess::spawn(&other, &["node"]);
    a.wait_for_model("echo", Duration::from_secs(60)).await;
    let (base_a, base_b) = (a.http.clone().unwrap(), b.http.clone().unwrap());
    let http = bitinglip_tests::http();

    let prompt = words(60);
    let resp = http.post(format!("{base_a}/v1/tasks")).json(&chat("echo", &prompt)).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();

    // Read a few chunks from gateway A, then drop the connection.
    let mut text = String::new();
    let mut last_id = None;
    {
        let resp = http.get(format!("{base_a}/v1/tasks/{id}/events")).send().await.unwrap();
        let mut sse = SseReader::new(resp);
        let mut chunks = 0;
        while let Some((eid, event, data)) = sse.next().await {
            if event.as_deref() == Some("chunk") {
                let v: Value = serde_json::from_str(&data).unwrap();
                assert_eq!(eid.as_deref(), Some(v["seq"].to_string().as_str()));
                text.push_str(v["text"].as_str().unwrap());
                last_id = eid;
                chunks += 1;
                if chunks == 5 {
                    break;
                }
            }
        }
    }
    // Resume on gateway B from the last id seen.
    let resp = http
        .get(format!("{base_b}/v1/tasks/{id}/events"))
        .header("Last-Event-ID", last_id.unwrap())
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(resp);
    let mut completed = None;
    while let Some((_, event, data)) = sse.next().await {
        let v: Value = serde_json::from_str(&data).unwrap();
        match event.as_deref() {
            Some("chunk") => text.push_str(v["text"].as_str().unwrap()),
            Some("completed") => {
                completed = Some(v);
                break;
            }
            Some("failed") => panic!("failed: {v}"),
            _ => {}
        }
    }
    let completed = completed.expect("a completed event");
    assert_eq!(text, prompt, "no gap, no repeat");
    assert_eq!(completed["text"], prompt.as_str());

    let t = wait_status(&http, &base_b, &id, "completed").await;
    assert_eq!(t["result"]["text"], prompt.as_str());
    assert_eq!(http.get(format!("{base_a}/v1/tasks/no-such-task")).send().await.unwrap().status(), 404);
    // The largest number is no chunk number (its next one would overflow): 400, not a panic.
    let resp = http
        .get(format!("{base_b}/v1/tasks/{id}/events"))
        .header("Last-Event-ID", u64::MAX.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let list: Value = http.get(format!("{base_b}/v1/tasks?limit=5")).send().await.unwrap().json().await.unwrap();
    assert!(list["data"].as_array().unwrap().iter().any(|t| t["id"] == id.as_str()), "{list}");

    // The CLI sees it too.
    let (code, out, err) = bitinglip_tests::run_cli(&["tasks", "ls", "--nats", &nats.url()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id) && out.contains("completed"), "{out}");
    let (code, out, err) = bitinglip_tests::run_cli(&["tasks", "watch", "--nats", &nats.url(), &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim_end(), prompt);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_the_engine_and_frees_the_slot() {
    let nats = TestNats::start().await;
    // One slot, slow: a running task blocks the next, so a queued one can be cancelled.
    let (_node, base) = echo_node(&nats.url(), 20.0, 1).await;
    let http = bitinglip_tests::http();

    // DELETE a running task.
    let id = submit_task(&http, &base, &chat("echo", &words(200))).await;
    wait_status(&http, &base, &id, "running").await;
    // And a queued one behind it.
    let queued = submit_task(&http, &base, &chat("echo", &words(200))).await;
    let resp = http.delete(format!("{base}/v1/tasks/{queued}")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let t = wait_status(&http, &base, &queued, "cancelled").await;
    assert_eq!(t["attempts"], 0, "a cancelled queued task never runs: {t}");

    let started = Instant::now();
    assert_eq!(http.delete(format!("{base}/v1/tasks/{id}")).send().await.unwrap().status(), 200);
    let t = wait_status(&http, &base, &id, "cancelled").await;
    let stop_ms = t["cancel_to_stop_ms"].as_f64().expect("cancel-to-stop time recorded");
    eprintln!(
        "DELETE: cancel to the engine's last token: {stop_ms:.1} ms (observed by the client in {:?})",
        started.elapsed()
    );
    assert!(stop_ms < 1000.0, "{t}");

    // A streaming client that disconnects cancels its task too, and the slot is free again.
    let resp = post_chat(&http, &base, &json!({"model": "echo", "messages": [{"role": "user", "content": words(200)}], "max_tokens": 1000, "stream": true})).await;
    let id = task_id_of(&resp);
    let mut sse = SseReader::new(resp);
    for _ in 0..3 {
        sse.next().await.unwrap();
    }
    drop(sse);
    let t = wait_status(&http, &base, &id, "cancelled").await;
    eprintln!("disconnect: cancel to the engine's last token: {:?} ms", t["cancel_to_stop_ms"]);
    let body = chat_json(&http, &base, &chat("echo", "slot is free")).await;
    assert_eq!(body["choices"][0]["message"]["content"], "slot is free");

    // And the CLI.
    let id = submit_task(&http, &base, &chat("echo", &words(200))).await;
    wait_status(&http, &base, &id, "running").await;
    let (code, _, err) = bitinglip_tests::run_cli(&["tasks", "cancel", "--nats", &nats.url(), &id]);
    assert_eq!(code, 0, "{err}");
    wait_status(&http, &base, &id, "cancelled").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_then_hands_back() {
    let nats = TestNats::start().await;
    let mut front = NodeProcess::spawn(&control_config(&nats.url()), &["node"]);
    let mut w = worker_config(&nats.url());
    w.worker.drain_grace = Duration::from_secs(10);
    w.worker.models.push(echo_model("echo", 20.0, 2));
    let mut worker = NodeProcess::spawn(&w, &["node"]);
    front.wait_for_model("echo", Duration::from_secs(60)).await;
    let base = front.http.clone().unwrap();
    let http = bitinglip_tests::http();

    // A short task finishes within the grace period; the node then exits 0.
    let prompt = words(20);
    let id = submit_task(&http, &base, &chat("echo", &prompt)).await;
    wait_status(&http, &base, &id, "running").await;
    let status = worker.sigterm(Duration::from_secs(30)).await.expect("exits");
    assert!(status.success(), "{status}");
    let t = wait_status(&http, &base, &id, "completed").await;
    assert_eq!(t["result"]["text"], prompt.as_str());

    // A long task outlives a short grace: it is handed back, and the next worker finishes
    // it, continuing the text.
    w.worker.drain_grace = Duration::from_millis(500);
    let mut worker = NodeProcess::spawn(&w, &["node"]);
    worker.wait_worker_ready("echo", Duration::from_secs(30)).await;
    let prompt = words(100);
    let id = submit_task(&http, &base, &chat("echo", &prompt)).await;
    wait_status(&http, &base, &id, "running").await;
    let status = worker.sigterm(Duration::from_secs(30)).await.expect("exits");
    assert!(status.success(), "{status}");
    let mut next = NodeProcess::spawn(&w, &["node"]);
    next.wait_worker_ready("echo", Duration::from_secs(30)).await;
    let t = wait_status(&http, &base, &id, "completed").await;
    assert_eq!(t["result"]["text"], prompt.as_str(), "{t}");
    assert!(t["attempts"].as_u64().unwrap() >= 2, "{t}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_on_every_subject_gets_an_error_and_service_goes_on() {
    let nats = TestNats::start().await;
    let (mut node, base) = echo_node(&nats.url(), 0.0, 2).await;
    let client = nats.client().await;
    let subjects = [
        "bitinglip.v1.task.=.submit",
        "bitinglip.v1.task.get",
        "bitinglip.v1.task.list",
        "bitinglip.v1.task.client-x.get",
        "bitinglip.v1.task.client-x.list",
        "bitinglip.v1.task.client-x.result",
        "bitinglip.v1.task.=.some-task.cancel",
        "bitinglip.v1.model.register",
        "bitinglip.v1.model.list",
        "bitinglip.v1.cluster.status",
    ];
    let mut gigabytes = vec![0x85, 0xa1, b'v', 0x01, 0xa4, b'b', b'o', b'd', b'y', 0xdb, 0xff, 0xff, 0xff, 0xf0];
    gigabytes.extend([0u8; 8]);
    let payloads: Vec<Vec<u8>> = vec![
        vec![0xc1, 0xde, 0xad],                                                       // not MessagePack
        vec![0x85, 0xa1, b'v'],                                                       // truncated
        rmp_serde::to_vec_named(&json!({"v": 1, "body": {"x": [1, 2, 3]}})).unwrap(), // wrong schema
        gigabytes,                                                                    // declared length of gigabytes
        vec![0x91; 100_000],                                                          // deep nesting
        rmp_serde::to_vec_named(&json!({"v": 99, "id": "x", "time_ms": 0, "source": "s", "body": {}})).unwrap(), // future version
    ];
    for subject in subjects {
        for p in &payloads {
            let reply = client.request(subject, p.clone().into()).await.unwrap_or_else(|e| panic!("{subject}: {e}"));
            let v: rmpv::Value = rmpv::decode::read_value(&mut &reply.payload[..]).unwrap();
            let body = v.as_map().unwrap().iter().find(|(k, _)| k.as_str() == Some("body")).unwrap().1.clone();
            let kind = body
                .as_map()
                .unwrap()
                .iter()
                .find(|(k, _)| k.as_str() == Some("kind"))
                .map(|(_, v)| v.as_str().unwrap().to_string());
            assert!(matches!(kind.as_deref(), Some("decode" | "unsupported_version")), "{subject}: {body}");
        }
        // Without a reply subject: dropped and counted, nothing breaks.
        client.publish(subject, vec![0xc1].into()).await.unwrap();
    }
    client.flush().await.unwrap();
    // Service goes on.
    let body = chat_json(&bitinglip_tests::http(), &base, &chat("echo", "still here")).await;
    assert_eq!(body["choices"][0]["message"]["content"], "still here");
    assert!(node.try_exit_status().is_none());
}
