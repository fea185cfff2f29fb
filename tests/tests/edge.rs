//! The HTTP edge against hostile clients: connections that trickle their headers are
//! closed after `gateway.header_timeout`, bodies that stall get 408 after
//! `gateway.body_timeout` without holding a request slot, sockets that never speak (or
//! stop after half an HTTP/2 preface, or after a whole one) are closed within the header
//! timeout even past `gateway.max_connections`, idle keep-alive connections are closed
//! after `gateway.idle_timeout`, HTTP/2 connections are pinged, a stream whose client
//! stops reading is closed after `gateway.write_timeout`, and a real client is served all
//! along.

use std::time::{Duration, Instant};

use bitinglip_tests::{
    echo_config, echo_model, http, serving_node, spawn_gateway, test_config, words, NodeProcess, TestNats,
    TEST_ADMIN_KEY,
};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Waits until the server closes `conn` (EOF or reset); returns what it sent before.
async fn closed_by_server(conn: TcpStream, within: Duration) -> Option<String> {
    closed_by_server_bytes(conn, within).await.map(|got| String::from_utf8_lossy(&got).into_owned())
}

/// [`closed_by_server`], with the bytes as they came.
async fn closed_by_server_bytes(mut conn: TcpStream, within: Duration) -> Option<Vec<u8>> {
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
    Some(got)
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_clients_are_cut_off_while_a_real_client_is_served() {
    let nats = TestNats::start().await;
    let mut config = echo_config(&nats.url(), 0.0, 4);
    config.gateway.header_timeout = Duration::from_secs(2);
    config.gateway.body_timeout = Duration::from_secs(2);
    // Few slots: stalled bodies must not take them.
    config.gateway.max_concurrent_requests = 2;
    let (_node, base) = serving_node(&config, "echo", Duration::from_secs(60)).await;
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

/// The HTTP/2 frame types in `bytes`, in order (a server's side of a connection).
fn h2_frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = (usize::from(bytes[at]) << 16) | (usize::from(bytes[at + 1]) << 8) | usize::from(bytes[at + 2]);
        types.push(bytes[at + 3]);
        at += 9 + len;
    }
    types
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_sockets_past_the_connection_cap_never_keep_a_real_client_out() {
    let nats = TestNats::start().await;
    let mut config = test_config(&nats.url());
    config.gateway.header_timeout = Duration::from_secs(3);
    config.gateway.keep_alive_interval = Duration::from_secs(1);
    config.gateway.idle_timeout = Duration::from_secs(2);
    config.gateway.max_connections = 16;
    let (_node, base) = spawn_gateway(&config).await;
    let addr = config.gateway.http.clone();

    // Twice the cap of sockets that never send a request: nothing at all, half an HTTP/2
    // preface, or a whole preface (with its SETTINGS) and then silence.
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let mut silent = Vec::new();
    for i in 0..32 {
        let mut conn = TcpStream::connect(&addr).await.expect("the gateway accepts");
        match i % 3 {
            0 => {}
            1 => conn.write_all(&PREFACE[..10]).await.unwrap(),
            _ => conn.write_all(PREFACE).await.unwrap(),
        }
        silent.push((i, conn));
    }
    let started = Instant::now();

    // A real client is served at once, HTTP/1 and HTTP/2 alike.
    let models = http().get(format!("{base}/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), 200);
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let models = h2.get(format!("{base}/v1/models")).bearer_auth(TEST_ADMIN_KEY).send().await.unwrap();
    assert_eq!((models.status(), models.version()), (reqwest::StatusCode::OK, reqwest::Version::HTTP_2));

    // Every silent socket is closed within the header timeout (plus a margin for a busy
    // machine); the cap closed some of them sooner.
    let closes =
        silent.into_iter().map(|(i, c)| async move { (i, closed_by_server_bytes(c, Duration::from_secs(6)).await) });
    let closed = futures::future::join_all(closes).await;
    let open: Vec<_> = closed.iter().filter(|(_, c)| c.is_none()).map(|(i, _)| i).collect();
    assert!(open.is_empty(), "silent sockets {open:?} still open after {:?}", started.elapsed());
    // The ones that sent a whole preface were pinged before they were closed.
    let pinged =
        closed.iter().filter(|(i, c)| i % 3 == 2 && c.as_ref().is_some_and(|b| h2_frame_types(b).contains(&6)));
    assert!(pinged.count() > 0, "no HTTP/2 PING reached a silent HTTP/2 connection");

    // A keep-alive connection that made one request and then says nothing is closed after
    // the idle timeout.
    let mut keep = TcpStream::connect(&addr).await.unwrap();
    keep.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answer = closed_by_server(keep, Duration::from_secs(8)).await.expect("closed after the idle timeout");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // And the node is fine.
    let resp = http().get(format!("{base}/v1/models")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_whose_client_stops_reading_is_closed_after_the_write_timeout() {
    let nats = TestNats::start().await;
    let mut config = echo_config(&nats.url(), 0.0, 4);
    config.gateway.write_timeout = Duration::from_secs(2);
    config.task_manager.max_tokens_limit = 100_000;
    let (_node, base) = serving_node(&config, "echo", Duration::from_secs(60)).await;
    let addr: std::net::SocketAddr = config.gateway.http.parse().unwrap();

    // A long streamed answer (a test build's `[[repeat-N]]`: 301 words, 200 times over),
    // far more than the socket buffers hold, to a client with a small receive buffer.
    let prompt = format!("{} [[repeat-200]]", words(300));
    let chat = json!({"model": "echo", "messages": [{"role": "user", "content": prompt}], "max_tokens": 100_000, "stream": true});
    let body = chat.to_string();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TEST_ADMIN_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body.as_bytes()).await.unwrap();
    let mut start = vec![0u8; 512];
    let n = conn.read(&mut start).await.unwrap();
    assert!(
        String::from_utf8_lossy(&start[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&start[..n])
    );

    // The client stops reading for longer than the write timeout (this pause is the
    // behaviour under test, not a wait for readiness); a real client is served meanwhile.
    let paused = Instant::now();
    let resp = http().get(format!("{base}/v1/models")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(paused.elapsed())).await;

    // Reading again, it gets what was buffered and then the end of the connection, not
    // the end of the answer: the server closed it.
    let rest = closed_by_server_bytes(conn, Duration::from_secs(30)).await.expect("the connection ends");
    let text = String::from_utf8_lossy(&rest);
    assert!(
        !text.contains("[DONE]"),
        "the stream ran to its end ({} bytes, {} events): a client that stopped reading was not cut off",
        rest.len(),
        text.matches("data:").count()
    );
    // And the node is fine.
    let resp = http().get(format!("{base}/v1/models")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}
