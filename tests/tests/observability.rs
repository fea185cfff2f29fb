//! Observability across processes: one chat request is one trace, exported by the gateway
//! node and the worker node to an OTLP receiver this test runs; `/metrics` on both nodes
//! carries the platform's series after real traffic; `/health`, `/ready` and
//! `bitinglip status` report the cluster's health.

use std::{collections::BTreeMap, time::Duration};

use bitinglip_config::Config;
use bitinglip_tests::{
    assert_eventually, control_config, echo_model, free_port, metric_sum, otlp::OtlpReceiver, otlp::ReceivedSpan,
    post_chat, post_task, wait_task_status, words, worker_config, NodeProcess, TestNats,
};
use serde_json::json;

/// A gateway node (with the control roles) and an echo worker node, on one nats-server.
fn two_nodes(nats: &TestNats, tweak: impl Fn(&mut Config)) -> (NodeProcess, NodeProcess, String) {
    let mut control = control_config(&nats.url());
    control.node_id = "front-1".into();
    tweak(&mut control);
    let front = NodeProcess::spawn(&control, &["node"]);

    let mut worker = worker_config(&nats.url());
    worker.node_id = "back-1".into();
    worker.worker.models = vec![echo_model("echo", 40.0, 1)];
    let metrics = format!("127.0.0.1:{}", free_port());
    worker.metrics.listen = Some(metrics.clone());
    tweak(&mut worker);
    let back = NodeProcess::spawn(&worker, &["node"]);
    (front, back, format!("http://{metrics}"))
}

/// Waits until `trace_id` has a span of every name in `wanted`; returns its spans by name.
async fn spans_of(receiver: &OtlpReceiver, trace_id: &str, wanted: &[&str]) -> BTreeMap<String, ReceivedSpan> {
    assert_eventually!(
        Duration::from_secs(20),
        async { wanted.iter().all(|w| receiver.trace(trace_id).iter().any(|s| s.name == *w)) },
        "spans of trace {trace_id}: {:#?}",
        receiver.trace(trace_id)
    );
    receiver.trace(trace_id).into_iter().map(|s| (s.name.clone(), s)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_request_is_one_trace_across_the_gateway_and_worker_processes() {
    let nats = TestNats::start().await;
    let receiver = OtlpReceiver::start().await;
    let (mut front, _back, _) = two_nodes(&nats, |c| {
        c.telemetry.otlp_endpoint = Some(receiver.url.clone());
        c.telemetry.export_interval = Duration::from_millis(100);
    });
    front.wait_for_model("echo", Duration::from_secs(60)).await;
    let base = front.http.clone().unwrap();

    // The caller's own trace: the platform's spans must join it.
    let (trace_id, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let resp = bitinglip_tests::http()
        .post(format!("{base}/v1/chat/completions"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "one two three four five"}], "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(body.contains("[DONE]"), "{body}");

    let spans =
        spans_of(&receiver, trace_id, &["gateway", "relay", "task_manager", "queue", "worker", "claim", "generate"])
            .await;
    let span = |n: &str| &spans[n];
    let node = |n: &str| span(n).resource.get("service.instance.id").cloned().unwrap_or_default();

    // Two processes, one trace.
    for n in ["gateway", "relay", "task_manager"] {
        assert_eq!(node(n), "front-1", "{n}: {:?}", span(n));
    }
    for n in ["queue", "worker", "claim", "generate"] {
        assert_eq!(node(n), "back-1", "{n}: {:?}", span(n));
    }
    assert_eq!(span("gateway").resource.get("service.name").map(String::as_str), Some("bitinglip"));

    // Every hop is the child of the one before it.
    let parent_of = |child: &str, parent: &str| {
        assert_eq!(span(child).parent_span_id, span(parent).span_id, "{child} is a child of {parent}: {spans:#?}");
    };
    assert_eq!(span("gateway").parent_span_id, caller_span);
    parent_of("task_manager", "gateway");
    parent_of("relay", "gateway");
    parent_of("queue", "task_manager");
    parent_of("worker", "queue");
    parent_of("claim", "worker");
    parent_of("generate", "worker");

    // What the generation did.
    let generate = span("generate");
    assert_eq!(generate.attributes.get("gen_ai.usage.output_tokens").map(String::as_str), Some("5"), "{generate:?}");
    let ttft: f64 = generate.attributes["time_to_first_token_ms"].parse().unwrap();
    assert!(ttft >= 0.0, "{generate:?}");
    assert_eq!(span("queue").attributes.get("gen_ai.request.model").map(String::as_str), Some("echo"));
    assert_eq!(span("gateway").attributes.get("gen_ai.request.model").map(String::as_str), Some("echo"));
    // The queue span starts when the task was accepted and ends at its delivery.
    assert!(span("queue").start_ns <= span("queue").end_ns);
    assert!(span("queue").end_ns <= span("worker").end_ns);

    // A task submitted without waiting for it is one trace too.
    let queued = "5bf92f3577b34da6a3ce929d0e0e4736";
    let resp = bitinglip_tests::http()
        .post(format!("{base}/v1/tasks"))
        .header("traceparent", format!("00-{queued}-{caller_span}-01"))
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "six seven"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let spans = spans_of(&receiver, queued, &["gateway", "task_manager", "queue", "worker", "generate"]).await;
    assert_eq!(spans["gateway"].attributes.get("http.route").map(String::as_str), Some("/v1/tasks"));
    assert_eq!(spans["task_manager"].parent_span_id, spans["gateway"].span_id);
    assert_eq!(spans["worker"].parent_span_id, spans["queue"].span_id);
}

async fn get_text(url: &str) -> String {
    bitinglip_tests::http().get(url).send().await.map(|r| r.text()).unwrap().await.unwrap_or_default()
}

async fn positive(url: &str, name: &str, labels: &[&str]) -> bool {
    metric_sum(&get_text(url).await, name, labels).is_some_and(|v| v > 0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_health_and_status_after_real_traffic() {
    let mut nats = TestNats::start().await;
    let (mut front, _back, back_http) = two_nodes(&nats, |c| c.jetstream.max_deliver = 2);
    front.wait_for_model("echo", Duration::from_secs(60)).await;
    let base = front.http.clone().unwrap();
    let front_metrics = format!("{base}/metrics");
    let back_metrics = format!("{back_http}/metrics");
    let http = bitinglip_tests::http();
    let model = "model=\"echo\"";
    let submit = |prompt: String| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let (status, task) =
                post_task(&http, &base, &json!({"model": "echo", "messages": [{"role": "user", "content": prompt}]}))
                    .await;
            assert_eq!(status, 202);
            task["id"].as_str().unwrap().to_string()
        }
    };

    // Probes: the worker node answers on its metrics listener; both are ready.
    assert_eq!(http.get(format!("{back_http}/health")).send().await.unwrap().status(), 200);
    let ready: serde_json::Value = http.get(format!("{back_http}/ready")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["model_loaded"], true, "{ready}");
    assert_eq!(http.get(format!("{base}/ready")).send().await.unwrap().status(), 200);

    // One slot, several tasks at 40 tokens per second: some wait in the queue.
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submit(words(60)).await);
    }
    assert_eventually!(
        Duration::from_secs(10),
        positive(&front_metrics, "bitinglip_queue_depth", &[model]),
        "queue depth"
    );
    assert_eventually!(
        Duration::from_secs(10),
        positive(&front_metrics, "bitinglip_queue_oldest_task_age_seconds", &[model]),
        "oldest task age"
    );
    assert_eventually!(
        Duration::from_secs(10),
        positive(&back_metrics, "bitinglip_worker_slots_in_use", &[model]),
        "slots in use"
    );
    for id in &ids {
        wait_task_status(&http, &base, id, "completed").await;
    }

    // A cancel of a running task.
    let long = submit(words(400)).await;
    wait_task_status(&http, &base, &long, "running").await;
    assert_eventually!(
        Duration::from_secs(10),
        positive(&back_metrics, "bitinglip_generated_tokens_total", &[model]),
        "tokens before the cancel"
    );
    http.delete(format!("{base}/v1/tasks/{long}")).send().await.unwrap();
    wait_task_status(&http, &base, &long, "cancelled").await;

    // A task whose engine fails is delivered again (max_deliver = 2), then failed.
    let failing = submit("boom [[fail]]".to_string()).await;
    wait_task_status(&http, &base, &failing, "failed").await;

    // A chat request through the gateway, counted by model and outcome.
    let resp =
        post_chat(&http, &base, &json!({"model": "echo", "messages": [{"role": "user", "content": "a b c"}]})).await;
    assert_eq!(resp.status(), 200);
    // A made-up model name mints no series: it is counted under `other`.
    let made_up = json!({"model": "made-up-7f3a", "messages": [{"role": "user", "content": "a"}]});
    assert_eq!(post_chat(&http, &base, &made_up).await.status(), 404);

    // The cluster's health on one screen.
    let (code, out, err) = bitinglip_tests::run_cli(&["status", "--nats", &nats.url()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("front-1") && out.contains("back-1"), "{out}");
    assert!(out.contains("HEALTH") && out.contains("ok"), "{out}");
    assert!(out.contains("QUEUE") && out.contains("echo"), "{out}");

    // The nats-server restarts: both nodes reconnect.
    nats.restart().await;
    for url in [&front_metrics, &back_metrics] {
        assert_eventually!(
            Duration::from_secs(20),
            positive(url, "bitinglip_nats_reconnects_total", &[]),
            "reconnect on {url}"
        );
        assert_eventually!(
            Duration::from_secs(20),
            positive(url, "bitinglip_nats_connected", &[]),
            "connected again on {url}"
        );
    }

    let front_text = get_text(&front_metrics).await;
    let back_text = get_text(&back_metrics).await;
    let must = |text: &str, name: &str, labels: &[&str]| {
        let v = metric_sum(text, name, labels);
        assert!(v.is_some_and(|v| v > 0.0), "{name}{labels:?} = {v:?} in\n{text}");
    };
    must(&front_text, "bitinglip_requests_total", &[model, "outcome=\"ok\""]);
    must(&front_text, "bitinglip_requests_total", &["model=\"other\"", "outcome=\"unknown_model\""]);
    assert!(!front_text.contains("made-up-7f3a"), "a made-up model name became a label");
    must(&front_text, "bitinglip_task_submits_total", &[model, "outcome=\"accepted\""]);
    must(&back_text, "bitinglip_tasks_total", &[model, "outcome=\"completed\""]);
    must(&back_text, "bitinglip_tasks_total", &[model, "outcome=\"cancelled\""]);
    must(&back_text, "bitinglip_tasks_total", &[model, "outcome=\"failed\""]);
    must(&back_text, "bitinglip_time_to_first_token_seconds_count", &[model]);
    must(&back_text, "bitinglip_inter_token_latency_seconds_count", &[model]);
    must(&back_text, "bitinglip_inter_token_latency_seconds_sum", &[model]);
    must(&back_text, "bitinglip_queue_time_seconds_count", &[model]);
    must(&back_text, "bitinglip_generated_tokens_total", &[model]);
    must(&back_text, "bitinglip_tokens_per_second_count", &[model]);
    must(&back_text, "bitinglip_redeliveries_total", &[model]);
    must(&back_text, "bitinglip_cancels_total", &[model]);
    must(&back_text, "bitinglip_cancel_to_stop_seconds_count", &[model]);
    must(&back_text, "bitinglip_worker_slots", &[model]);
    // Queue gauges exist for the model on every node, worker nodes too.
    assert_eventually!(
        Duration::from_secs(10),
        async {
            metric_sum(&get_text(&back_metrics).await, "bitinglip_queue_depth", &[model, "priority=\"batch\""])
                .is_some()
        },
        "queue gauges on the worker node"
    );
}
