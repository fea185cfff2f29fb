//! The OpenAI API beyond plain chat, driven by the official `openai` Python client against
//! a node from `bitinglip up` with real mistral.rs inference on a generated random-weight
//! model: tool calls, structured output, log probabilities, legacy completions, the grammar
//! extension, embeddings from a generated embedding model, and refusals
//! (`tests/clients/openai_api.py`).

use std::time::Duration;

use bitinglip_tests::{test_config, Arch, ModelDir, ModelSpec, NodeProcess};
use serde_json::{json, Value};

async fn up(models: &[&ModelDir]) -> (NodeProcess, tempfile::TempDir, String) {
    let data = tempfile::tempdir().unwrap();
    let url = format!("nats://127.0.0.1:{}", bitinglip_tests::free_port());
    let mut config = test_config(&url);
    config.data_dir = data.path().to_path_buf();
    let mut args = vec!["up".to_string()];
    for m in models {
        args.extend(["--model".to_string(), m.path().display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = NodeProcess::spawn(&config, &args);
    for m in models {
        node.wait_for_model(m.id(), Duration::from_secs(120)).await;
    }
    let key = std::fs::read_to_string(data.path().join("admin.key")).unwrap().trim().to_string();
    (node, data, key)
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_structured_output_logprobs_completions_and_embeddings_through_the_openai_client() {
    let model = ModelDir::generate("tiny-api", &ModelSpec::tiny(Arch::Qwen2));
    let embedder = ModelDir::generate("tiny-embed", &ModelSpec::tiny(Arch::Qwen3Embedding));
    let (node, _data, key) = up(&[&model, &embedder]).await;
    let base = node.http.clone().unwrap();
    let api = format!("{base}/v1");
    let stdout = bitinglip_tests::python_client("openai_api.py", &[&api, "tiny-api", &key, "tiny-embed"])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
    assert!(stdout.contains("ok all"), "{stdout}");
    eprintln!("{stdout}");

    // The task record of a forced call holds the calls and the reason, for the task API
    // and for clients on the bus.
    let http = bitinglip_tests::http_with(&key);
    let body = json!({
        "model": "tiny-api",
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": false}}}],
        "tool_choice": "required",
        "parallel_tool_calls": false,
        "max_tokens": 100,
    });
    let resp = http.post(format!("{base}/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let task_id = resp.headers()["x-task-id"].to_str().unwrap().to_string();
    let answer: Value = resp.json().await.unwrap();
    let record = bitinglip_tests::task_record(&http, &base, &task_id).await;
    assert_eq!(record["result"]["finish_reason"], "tool_calls", "{record}");
    let call = &record["result"]["tool_calls"][0];
    assert_eq!(call["name"], "f", "{record}");
    assert_eq!(call["id"], answer["choices"][0]["message"]["tool_calls"][0]["id"], "{answer}");
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(args["ok"].is_boolean(), "{args}");

    // The registry lists a local model's files (`models ls` shows them).
    let registry: Value = http.get(format!("{base}/api/v1/models")).send().await.unwrap().json().await.unwrap();
    let entry = registry["data"].as_array().and_then(|d| d.iter().find(|m| m["id"] == "tiny-embed")).cloned();
    let files: Vec<String> = entry
        .as_ref()
        .and_then(|m| m["files"].as_array())
        .map(|f| f.iter().filter_map(|f| f["name"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    assert!(
        files.iter().any(|f| f == "model.safetensors") && files.iter().any(|f| f == "1_Pooling/config.json"),
        "{registry}"
    );

    // A schema that is not a JSON Schema object is refused at submit, the field named.
    let bad = json!({"model": "tiny-api", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": 5}}});
    let resp = http.post(format!("{base}/v1/chat/completions")).json(&bad).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("json_schema.schema"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_responses_api_through_the_openai_client() {
    let model = ModelDir::generate("tiny-responses", &ModelSpec::tiny(Arch::Qwen2));
    let (node, _data, key) = up(&[&model]).await;
    let base = node.http.clone().unwrap();
    // A second key, of inference scope: it must not see the first key's responses.
    let other = bitinglip_tests::create_inference_key(&bitinglip_tests::http_with(&key), &base, "other").await;
    let api = format!("{base}/v1");
    let stdout = bitinglip_tests::python_client("openai_responses.py", &[&api, "tiny-responses", &key, &other])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
    assert!(stdout.contains("ok all"), "{stdout}");
    eprintln!("{stdout}");
}
