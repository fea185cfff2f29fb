//! A client that follows only the docs (`docs/NATS-API.md`): a plain NATS connection and hand-built
//! MessagePack maps, no BitingLip crate. It subscribes to the task's events subject,
//! submits on `bitinglip.v1.task.client-default.submit`, and reads the streamed answer.

use std::time::Duration;

use bitinglip_tests::{test_config, Arch, ModelDir, ModelSpec, NodeProcess, TestNats};
use futures::StreamExt;
use rmpv::Value;

fn map(pairs: Vec<(&str, Value)>) -> Value {
    Value::Map(pairs.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
}

fn envelope(body: Value) -> Vec<u8> {
    let env = map(vec![
        ("v", Value::from(1)),
        ("id", Value::from("client-msg-1")),
        ("time_ms", Value::from(0)),
        ("source", Value::from("other-language-client")),
        ("body", body),
    ]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &env).unwrap();
    out
}

fn get<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.as_map().and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)).unwrap_or(&Value::Nil)
}

fn decode(bytes: &[u8]) -> Value {
    rmpv::decode::read_value(&mut &bytes[..]).unwrap()
}

/// A submit request for task `task_id`: a chat of `content` with `tiny-nats`, at most
/// `max_tokens`, and the chat fields of `extra`.
fn submit_request(task_id: &str, content: &str, max_tokens: u32, extra: Vec<(&str, Value)>) -> Value {
    let message = map(vec![("role", Value::from("user")), ("content", Value::from(content))]);
    let mut chat = vec![
        ("model", Value::from("tiny-nats")),
        ("messages", Value::Array(vec![message])),
        ("max_tokens", Value::from(max_tokens)),
    ];
    chat.extend(extra);
    map(vec![("chat", map(chat)), ("task_id", Value::from(task_id))])
}

/// Subscribes `client` to the events of task `task_id`, on the subject the docs name.
async fn follow(client: &async_nats::Client, task_id: &str) -> async_nats::Subscriber {
    let events = client.subscribe(format!("bitinglip.v1.task.client-default.{task_id}.events")).await.unwrap();
    client.flush().await.unwrap();
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_nats_client_submits_and_reads_the_stream() {
    let nats = TestNats::start().await;
    let model = ModelDir::generate("tiny-nats", &ModelSpec::tiny(Arch::Llama));
    let config = test_config(&nats.url());
    let path = model.path();
    let mut node = NodeProcess::spawn(&config, &["node", "--model", path.to_str().unwrap()]);
    node.wait_for_model("tiny-nats", Duration::from_secs(120)).await;

    // As the docs' `client` user: its nkey seed, and replies under its inbox prefix.
    let client = nats.client_user().await;
    let task_id = "readme-client-task-1";
    let mut events = follow(&client, task_id).await;

    let submit = submit_request(task_id, "hello", 6, vec![]);
    let reply = client.request("bitinglip.v1.task.client-default.submit", envelope(submit).into()).await.unwrap();
    let reply = decode(&reply.payload);
    let body = get(&reply, "body");
    assert_eq!(get(body, "type").as_str(), Some("accepted"), "{reply}");
    assert_eq!(get(body, "task_id").as_str(), Some(task_id));
    assert_eq!(
        get(body, "events_subject").as_str(),
        Some("bitinglip.v1.task.client-default.readme-client-task-1.events")
    );

    let mut next_seq = 0;
    let mut text = String::new();
    let completed = loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), events.next()).await.unwrap().unwrap();
        let event = decode(&msg.payload);
        let body = get(&event, "body").clone();
        match get(&body, "type").as_str() {
            Some("started") => assert_eq!(get(&body, "attempt").as_u64(), Some(1)),
            Some("chunk") => {
                assert_eq!(get(&body, "seq").as_u64(), Some(next_seq), "chunks arrive in order");
                next_seq += 1;
                text.push_str(get(&body, "text").as_str().unwrap());
            }
            Some("completed") => break body,
            other => panic!("unexpected event {other:?}: {event}"),
        }
    };
    assert_eq!(get(&completed, "text").as_str(), Some(text.as_str()));
    assert_eq!(get(&completed, "chunks").as_u64(), Some(next_seq));
    let usage = get(&completed, "usage");
    let n = get(usage, "completion_tokens").as_u64().unwrap();
    assert!((1..=6).contains(&n));
    assert!(get(usage, "time_to_first_token_ms").as_f64().unwrap() > 0.0);
    assert!(matches!(get(&completed, "finish_reason").as_str(), Some("length" | "stop")));

    // The status record says completed, over the documented request subject.
    let get_req = map(vec![("task_id", Value::from(task_id))]);
    let reply = client.request("bitinglip.v1.task.client-default.get", envelope(get_req).into()).await.unwrap();
    let reply = decode(&reply.payload);
    let body = get(&reply, "body");
    assert_eq!(get(body, "type").as_str(), Some("found"), "{reply}");
    assert_eq!(get(body, "state").as_str(), Some("completed"));

    // Garbage on the submit subject gets a decode error, and the next request still works.
    let reply = client.request("bitinglip.v1.task.client-default.submit", vec![0xc1, 0x00, 0xff].into()).await.unwrap();
    let reply = decode(&reply.payload);
    let body = get(&reply, "body");
    assert_eq!(get(body, "type").as_str(), Some("rejected"));
    assert_eq!(get(body, "kind").as_str(), Some("decode"));

    // Every actor endpoint is a NATS service: what `nats micro ls | info | stats` read
    // (an operator's tools, as `admin`; the client user may not).
    let client = nats.client().await;
    let inbox = client.new_inbox();
    let mut pongs = client.subscribe(inbox.clone()).await.unwrap();
    client.publish_with_reply("$SRV.PING", inbox, "".into()).await.unwrap();
    let mut names = std::collections::BTreeSet::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), pongs.next()).await {
        let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        names.insert(v["name"].as_str().unwrap().to_string());
    }
    for service in
        ["bitinglip-task-manager", "bitinglip-model-manager", "bitinglip-cluster-manager", "bitinglip-puller"]
    {
        assert!(names.contains(service), "{service} in {names:?}");
    }
    let info = client.request("$SRV.INFO.bitinglip-task-manager", "".into()).await.unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    let endpoints = info["endpoints"].as_array().unwrap();
    assert!(endpoints.iter().any(|e| e["name"] == "submit" && e["subject"] == "bitinglip.v1.task.*.submit"), "{info}");
    let stats = client.request("$SRV.STATS.bitinglip-task-manager", "".into()).await.unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.payload).unwrap();
    let submit = stats["endpoints"].as_array().unwrap().iter().find(|e| e["name"] == "submit").unwrap().clone();
    assert!(submit["num_requests"].as_u64().unwrap() >= 2, "{stats}");

    // A forced tool call, as the docs' schema puts it: the tool's parameters and the
    // call's arguments are JSON text; the completed event carries the parsed call.
    let client = nats.client_user().await;
    let task_id = "readme-client-tool-1";
    let mut events = follow(&client, task_id).await;
    let parameters =
        r#"{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"],"additionalProperties":false}"#;
    let tool = map(vec![("name", Value::from("check")), ("parameters", Value::from(parameters))]);
    let submit = submit_request(
        task_id,
        "check",
        100,
        vec![
            ("tools", Value::Array(vec![tool])),
            ("tool_choice", map(vec![("type", Value::from("function")), ("name", Value::from("check"))])),
        ],
    );
    let reply = decode(
        &client.request("bitinglip.v1.task.client-default.submit", envelope(submit).into()).await.unwrap().payload,
    );
    assert_eq!(get(get(&reply, "body"), "type").as_str(), Some("accepted"), "{reply}");
    let completed = loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), events.next()).await.unwrap().unwrap();
        let body = get(&decode(&msg.payload), "body").clone();
        if get(&body, "type").as_str() == Some("completed") {
            break body;
        }
    };
    assert_eq!(get(&completed, "finish_reason").as_str(), Some("tool_calls"), "{completed}");
    let call = &get(&completed, "tool_calls").as_array().unwrap()[0];
    assert_eq!(get(call, "name").as_str(), Some("check"));
    let arguments: serde_json::Value = serde_json::from_str(get(call, "arguments").as_str().unwrap()).unwrap();
    assert!(arguments["ok"].is_boolean(), "{arguments}");
}
