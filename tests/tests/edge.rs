//! The HTTP edge against hostile clients: connections that trickle their headers are
//! closed after `gateway.header_timeout`, bodies that stall get 408 after
//! `gateway.body_timeout` without holding a request slot, and a real client is served
//! all along.

use std::time::{Duration, Instant};

use bitinglip_tests::{echo_model, http, test_config, NodeProcess, TestNats, TEST_ADMIN_KEY};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Waits until the server closes `conn` (EOF or reset); returns what it sent before.
async fn closed_by_server(mut conn: TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read_all).await.ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_clients_are_cut_off_while_a_real_client_is_served() {
    let nats = TestNats::start().await;
    let mut config = test_config(&nats.url());
    config.worker.models = vec![echo_model("echo", 0.0, 4)];
    config.gateway.header_timeout = Duration::from_secs(2);
    config.gateway.body_timeout = Duration::from_secs(2);
    // Few slots: stalled bodies must not take them.
    config.gateway.max_concurrent_requests = 2;
    let mut node = NodeProcess::spawn(&config, &["node"]);
    node.wait_for_model("echo", Duration::from_secs(60)).await;
    let base = node.http.clone().unwrap();
    let addr = config.gateway.http.clone();

    // 200 connections that send half a request's headers, and 5 that send whole headers
    // and then stall in the body.
    let mut half_headers = Vec::new();
    for _ in 0..200 {
        let mut conn = TcpStream::connect(&addr).await.expect("the gateway accepts");
        conn.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: app").await.unwrap();
        half_headers.push(conn);
    }
    let mut stalled_bodies = Vec::new();
    for _ in 0..5 {
        let mut conn = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TEST_ADMIN_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\": \"echo\","
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        stalled_bodies.push(conn);
    }
    let started = Instant::now();

    // A real client is served meanwhile, slots and all.
    let chat = json!({"model": "echo", "messages": [{"role": "user", "content": "still here"}], "max_tokens": 2});
    let resp = http().post(format!("{base}/v1/chat/completions")).json(&chat).send().await.unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    // 200, not 503: the five stalled bodies hold no slot (there are only two).
    assert_eq!(status, 200, "{body}");

    // Every half-request is closed within the header timeout (plus a margin).
    let closes = half_headers.into_iter().map(|c| closed_by_server(c, Duration::from_secs(8)));
    let closed = futures::future::join_all(closes).await;
    let open = closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(open, 0, "{open} of 200 stalled connections still open after {:?}", started.elapsed());
    // Every stalled body got a 408.
    for conn in stalled_bodies {
        let answer =
            closed_by_server(conn, Duration::from_secs(8)).await.expect("a stalled body is answered and closed");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
    }
    // And the node is fine.
    let resp = http().post(format!("{base}/v1/chat/completions")).json(&chat).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_with_nothing_to_say_is_closed_after_the_idle_timeout() {
    let nats = TestNats::start().await;
    let mut config = test_config(&nats.url());
    // One token every three seconds: the stream is idle longer than its limit of one.
    config.worker.models = vec![echo_model("slow", 1.0 / 3.0, 2)];
    config.gateway.stream_idle_timeout = Duration::from_secs(1);
    let mut node = NodeProcess::spawn(&config, &["node"]);
    node.wait_worker_ready("slow", Duration::from_secs(60)).await;
    let base = node.http.clone().unwrap();
    let chat = json!({"model": "slow", "messages": [{"role": "user", "content": "a b c d e f"}], "max_tokens": 6, "stream": true});
    let resp = http().post(format!("{base}/v1/chat/completions")).json(&chat).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-task-id"].to_str().unwrap().to_string();
    // The body ends early, without the answer's end.
    let body = tokio::time::timeout(Duration::from_secs(15), resp.text()).await.expect("the stream is closed").unwrap();
    assert!(!body.contains("[DONE]"), "{body}");
    // Closing it cancelled the task, as a client that went away would.
    let t = bitinglip_tests::wait_task_status(&http(), &base, &id, "cancelled").await;
    assert_eq!(t["status"], "cancelled");
}
