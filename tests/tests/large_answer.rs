//! An answer larger than one NATS message (1 MiB) completes: the worker keeps it in the
//! results object store and the record and the `completed` event carry its name. The task
//! API returns the whole text, the events end with it, and a plain chat completion
//! returns it; nothing is handed back. The same for an answer whose logprobs alone are
//! larger than one message: it completes on its first attempt and its usage is counted.

use std::time::Duration;

use bitinglip_tests::{
    assert_eventually, cli_key, echo_config, http, http_with, run_cli, spawn_gateway, sse_data, test_config,
    wait_task_status, Arch, ModelDir, ModelSpec, NodeProcess, TestNats,
};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_larger_than_one_message_completes() {
    let nats = TestNats::start().await;
    let (mut node, base) = spawn_gateway(&echo_config(&nats.url(), 0.0, 4)).await;
    node.wait_worker_ready("echo", Duration::from_secs(30)).await;

    // The echo engine of test builds repeats the prompt: 6 kB × 250 is about 1.5 MB.
    let prompt = format!("{}[[repeat-250]] ", format!("{} ", "x".repeat(60)).repeat(100));
    let expected = prompt.repeat(250);
    assert!(expected.len() > 1_400_000);
    let request = json!({"model": "echo", "messages": [{"role": "user", "content": prompt}], "max_tokens": 30_000});

    let accepted: Value =
        http().post(format!("{base}/v1/tasks")).json(&request).send().await.unwrap().json().await.unwrap();
    let id = accepted["id"].as_str().unwrap_or_else(|| panic!("{accepted}")).to_string();
    let record = wait_task_status(&http(), &base, &id, "completed").await;
    assert_eq!(record["attempts"], 1, "completed on its first attempt, never handed back");
    let text = record["result"]["text"].as_str().unwrap();
    assert_eq!(text.len(), expected.len());
    assert!(text == expected, "the whole answer");

    // The events end with the whole answer too.
    let events = http().get(format!("{base}/v1/tasks/{id}/events")).send().await.unwrap().text().await.unwrap();
    let completed: Value = sse_data(&events)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v.get("finish_reason").is_some())
        .unwrap_or_else(|| panic!("no completed event in {} bytes", events.len()));
    assert_eq!(completed["text"].as_str().map(str::len), Some(expected.len()));

    // Over NATS a client identity reads the same answer through its own `result`
    // subject, part by part (it may not read the results store itself).
    use bitinglip_bus_schema::{
        decode_body, encode, ChatParams, Envelope, GetResult, ResultReply, Subjects, SubmitReply, SubmitRequest,
        TaskEvent, TaskId, DEFAULT_MAX_PAYLOAD,
    };
    let client = nats.client_user().await;
    let (s, owner) = (Subjects::default(), Some("client-default"));
    let ask = |subject: String, body: Vec<u8>| {
        let client = client.clone();
        async move { client.request(subject, body.into()).await.unwrap().payload }
    };
    fn envelope<T: serde::Serialize>(body: T) -> Vec<u8> {
        let id =
            format!("large-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
        encode(&Envelope::new(id, 0, "large-answer-test", body)).unwrap()
    }
    let task = TaskId::parse("large-over-nats").unwrap();
    let mut events = client.subscribe(s.task_events(owner, &task)).await.unwrap();
    client.flush().await.unwrap();
    let chat = ChatParams { max_tokens: Some(30_000), ..ChatParams::user("echo", prompt.clone()) };
    let submit = SubmitRequest { task_id: Some(task.clone()), ..SubmitRequest::new(chat) };
    let reply: SubmitReply =
        decode_body(&ask(s.task_submit(owner), envelope(submit)).await, DEFAULT_MAX_PAYLOAD).unwrap();
    assert!(matches!(reply, SubmitReply::Accepted(_)), "{reply:?}");
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let msg = futures::StreamExt::next(&mut events).await.unwrap();
            if let Ok(TaskEvent::Completed(done)) =
                bitinglip_bus_schema::decode_event(&msg.payload, DEFAULT_MAX_PAYLOAD)
            {
                return done;
            }
        }
    })
    .await
    .expect("the task completes");
    let name = done.text_object.clone().expect("the text is in the results store");
    assert!(done.text.is_empty());
    let mut text = Vec::new();
    loop {
        let get = GetResult { task_id: task.clone(), name: name.clone(), offset: text.len() as u64 };
        let part: ResultReply =
            decode_body(&ask(s.owner_task_result(owner), envelope(get)).await, DEFAULT_MAX_PAYLOAD).unwrap();
        let ResultReply::Part { data, size, .. } = part else { panic!("{part:?}") };
        assert!(!data.is_empty() && data.len() <= bitinglip_bus_schema::RESULT_PART_MAX);
        text.extend(data);
        if text.len() as u64 >= size {
            break;
        }
    }
    assert!(text == expected.as_bytes(), "the whole answer, read in parts");
    // Another task's name is not this task's result.
    let get = GetResult { task_id: task.clone(), name: format!("{id}.1"), offset: 0 };
    let part: ResultReply =
        decode_body(&ask(s.owner_task_result(owner), envelope(get)).await, DEFAULT_MAX_PAYLOAD).unwrap();
    assert!(
        matches!(part, ResultReply::Error(ref e) if e.kind == bitinglip_bus_schema::ErrorKind::NotFound),
        "{part:?}"
    );

    // A plain chat completion of the same size.
    let resp = http().post(format!("{base}/v1/chat/completions")).json(&request).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"].as_str().map(str::len), Some(expected.len()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_with_twenty_logprobs_a_token_past_one_message_completes_and_is_counted() {
    let nats = TestNats::start().await;
    let url = nats.url();
    let model = ModelDir::generate("tiny-logprobs", &ModelSpec { max_positions: 4096, ..ModelSpec::tiny(Arch::Qwen2) });
    let config = test_config(&url);
    let path = model.path();
    let mut node = NodeProcess::spawn(&config, &["node", "--model", path.to_str().unwrap()]);
    node.wait_for_model("tiny-logprobs", Duration::from_secs(120)).await;
    let base = node.http.clone().unwrap();
    let (key_id, secret) = cli_key(&url, &["--name", "logprobs"]);

    // 1,800 tokens with 20 alternatives each: about 1.2 MB of logprobs, over the 1 MiB a
    // message may carry. The special tokens are banned, so the answer runs its whole
    // length, and so are the bytes above 127 (byte-level token ids are the bytes), so every
    // token completes a character and comes with its logprobs.
    let vocab = bitinglip_modelgen::vocab_size();
    let banned: serde_json::Map<String, Value> =
        (128..256).chain(vocab - 3..vocab).map(|id| (id.to_string(), json!(-100))).collect();
    let request = json!({
        "model": "tiny-logprobs",
        "messages": [{"role": "user", "content": "count"}],
        "max_tokens": 1800,
        "logprobs": true,
        "top_logprobs": 20,
        "logit_bias": banned,
    });
    let resp = http_with(&secret).post(format!("{base}/v1/chat/completions")).json(&request).send().await.unwrap();
    let status = resp.status();
    let id = resp.headers().get("x-task-id").map(|v| v.to_str().unwrap().to_string());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{}", node.log());
    let tokens = body["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(tokens, 1800, "{} {}", body["usage"], body["choices"][0]["finish_reason"]);
    let content = body["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len() as u64, tokens);
    assert!(content.iter().all(|t| t["top_logprobs"].as_array().is_some_and(|a| a.len() == 20)));

    // Completed on its first attempt, the record read back whole.
    let id = id.expect("x-task-id");
    let record = wait_task_status(&http(), &base, &id, "completed").await;
    assert_eq!(record["attempts"], 1, "never handed back");
    // Its usage is counted, once.
    assert_eventually!(
        Duration::from_secs(10),
        async {
            let (code, out, _) = run_cli(&["usage", "--nats", &url, "--key", &key_id, "--json"]);
            let rows: Value = serde_json::from_str(&out).unwrap_or_default();
            code == 0 && rows.as_array().is_some_and(|r| r.iter().any(|row| row["completion_tokens"] == 1800))
        },
        "the answer's usage is counted"
    );
}
