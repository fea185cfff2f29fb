//! The engines' prefix cache, on real mistral.rs inference with a generated model: a
//! conversation's next turn takes the earlier turn's KV cache (its answer says how many
//! prompt tokens came from the cache, over HTTP and in the task record; the metrics count
//! lookups and hits), and on the CPU the cache's memory stays within its bound over a
//! thousand distinct prompts of about a thousand tokens.

use std::time::Duration;

use bitinglip_bus_schema::{decode_body, Subjects, TaskRecord, DEFAULT_MAX_PAYLOAD};
use bitinglip_config::ModelConfig;
use bitinglip_tests::{
    http, metric_sum, serving_node, task_id_of, task_record, test_config, Arch, ModelDir, ModelSpec, NodeProcess,
    TestNats,
};
use serde_json::{json, Value};

const LOAD: Duration = Duration::from_secs(120);

/// A node serving a generated Llama named `name` with `slots` sequences and a prefix
/// cache of `prefix_cache` bytes; returns it with its base URL.
async fn tiny_node(nats: &TestNats, name: &str, slots: u32, prefix_cache: u64) -> (NodeProcess, String, ModelDir) {
    let model = ModelDir::generate(name, &ModelSpec::tiny(Arch::Llama));
    let mut config = test_config(&nats.url());
    config.worker.prefix_cache = Some(prefix_cache);
    config
        .worker
        .models
        .push(ModelConfig { max_sequences: slots, ..ModelConfig::new(model.path().display().to_string()) });
    let (node, base) = serving_node(&config, model.id(), LOAD).await;
    (node, base, model)
}

/// `POST /v1/chat/completions` of `messages`; the answer's body and task id.
async fn chat(base: &str, model: &str, messages: &Value, max_tokens: u32) -> (Value, String) {
    let request = json!({"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0});
    let resp = http().post(format!("{base}/v1/chat/completions")).json(&request).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let id = task_id_of(&resp);
    (resp.json().await.unwrap(), id)
}

/// `name`'s prefix-cache counters on `node`: lookups, hits, cached tokens.
async fn cache_counters(node: &NodeProcess, name: &str) -> [f64; 3] {
    let metrics = node.metrics().await;
    let label = format!("model=\"{name}\"");
    ["lookups", "hits", "tokens"]
        .map(|c| metric_sum(&metrics, &format!("bitinglip_prefix_cache_{c}_total"), &[&label]).unwrap_or(0.0))
}

fn cached_tokens(answer: &Value) -> u64 {
    answer["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("no usage.prompt_tokens_details.cached_tokens in {answer}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conversations_next_turn_takes_the_earlier_turns_cache() {
    let nats = TestNats::start().await;
    let (node, base, model) = tiny_node(&nats, "pc-turns", 2, 64 << 20).await;
    let name = model.id();
    let system = format!("You answer questions about this text. {}", bitinglip_tests::words(300));
    // Waiting for the model sent a request of its own.
    let before = cache_counters(&node, name).await;

    let mut messages = json!([
        {"role": "system", "content": system},
        {"role": "user", "content": "What is the first word?"},
    ]);
    let (first, _) = chat(&base, name, &messages, 8).await;
    assert_eq!(cached_tokens(&first), 0, "nothing cached before the first turn: {first}");

    let reply = first["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string();
    let turns = messages.as_array_mut().unwrap();
    turns.push(json!({"role": "assistant", "content": reply}));
    turns.push(json!({"role": "user", "content": "And the last?"}));
    let (second, id) = chat(&base, name, &messages, 8).await;
    let cached = cached_tokens(&second);
    let prompt = second["usage"]["prompt_tokens"].as_u64().unwrap();
    // At least the system message and the first question were computed before.
    assert!(cached >= 300 && cached < prompt, "{cached} of {prompt} prompt tokens cached: {second}\n{}", node.log());

    // The task record says the same.
    let record = task_record(&http(), &base, &id).await;
    assert_eq!(record["result"]["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(), Some(cached), "{record}");

    // Over NATS the stored record (and the `completed` event) says `usage.cached_tokens`.
    let tasks = bitinglip_tests::state::kv_bucket(&nats.url(), &Subjects::default().tasks_bucket()).await.unwrap();
    let stored = tasks.get(id.as_str()).await.unwrap().expect("the task's record");
    let stored: TaskRecord = decode_body(&stored, DEFAULT_MAX_PAYLOAD).unwrap();
    assert_eq!(stored.result.map(|r| u64::from(r.usage.cached_tokens)), Some(cached));

    // Two lookups, one hit, and the cached tokens counted.
    let after = cache_counters(&node, name).await;
    let counted = [0, 1, 2].map(|i| after[i] - before[i]);
    assert_eq!(counted, [2.0, 1.0, cached as f64], "lookups, hits and cached tokens");
}

#[tokio::test(flavor = "multi_thread")]
async fn several_conversations_at_once_on_one_engine_keep_their_caches_whole() {
    // Conversations of different lengths on one engine: the engine parks the sequences of
    // other lengths while one length decodes. A parked sequence restored from the prefix
    // cache used to be taken for a prompt again and append its whole length to its own
    // cache, until a turn failed with the cache over the model's context.
    let nats = TestNats::start().await;
    let (node, base, model) = tiny_node(&nats, "pc-several", 4, 64 << 20).await;
    let name = model.id().to_string();
    let conversation = |c: usize| {
        let base = base.clone();
        let name = name.clone();
        async move {
            let system = format!("Conversation {c}. {}", bitinglip_tests::words(120 + 17 * c));
            let mut messages = json!([{"role": "system", "content": system}, {"role": "user", "content": "Begin."}]);
            let mut cached = Vec::new();
            for turn in 1..=5 {
                let (answer, _) = chat(&base, &name, &messages, 24).await;
                assert!(answer["choices"][0]["message"].is_object(), "turn {turn} of conversation {c}: {answer}");
                cached.push(cached_tokens(&answer));
                let reply = answer["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string();
                let turns = messages.as_array_mut().unwrap();
                turns.push(json!({"role": "assistant", "content": reply}));
                turns.push(json!({"role": "user", "content": format!("Turn {turn}: go on.")}));
            }
            cached
        }
    };
    let all = futures::future::join_all((0..4).map(conversation)).await;
    for (c, cached) in all.iter().enumerate() {
        // Every later turn found its conversation's opening in the cache.
        assert!(
            cached[1..].iter().all(|&n| n >= 100),
            "conversation {c}: cached tokens per turn {cached:?}\n{}",
            node.log()
        );
    }
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_stays_within_its_memory_over_a_thousand_distinct_prompts() {
    const PROMPTS: usize = 1000;
    const STEADY: usize = 200;
    const AT_ONCE: usize = 4;
    let nats = TestNats::start().await;
    // 2 MiB: a few whole contexts of the tiny model (each 2,048 tokens of 256 bytes).
    let (node, base, model) = tiny_node(&nats, "pc-bound", AT_ONCE as u32, 2 << 20).await;
    let name = model.id().to_string();
    let before = cache_counters(&node, &name).await;
    // Each prompt begins with its own number: no two share a prefix.
    let prompt = |i: usize| format!("{i} {}", bitinglip_tests::words(220));
    let (first, _) = chat(&base, &name, &json!([{"role": "user", "content": prompt(0)}]), 1).await;
    let tokens = first["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!((900..=1500).contains(&tokens), "a prompt of about a thousand tokens, not {tokens}");

    let mut steady = 0;
    for start in (1..PROMPTS).step_by(AT_ONCE) {
        let batch = (start..(start + AT_ONCE).min(PROMPTS)).map(|i| {
            let (base, name) = (base.clone(), name.clone());
            tokio::spawn(async move { chat(&base, &name, &json!([{"role": "user", "content": prompt(i)}]), 1).await })
        });
        for answer in futures::future::join_all(batch).await {
            let (answer, _) = answer.unwrap();
            assert_eq!(cached_tokens(&answer), 0, "distinct prompts share nothing: {answer}");
        }
        if start + AT_ONCE > STEADY && steady == 0 {
            steady = rss(node.pid());
        }
    }
    let end = rss(node.pid());
    assert!(
        end as f64 <= steady as f64 * 1.10,
        "RSS grew from {} MiB after {STEADY} prompts to {} MiB after {PROMPTS}",
        steady >> 20,
        end >> 20
    );
    let after = cache_counters(&node, &name).await;
    assert_eq!([after[0] - before[0], after[1] - before[1]], [PROMPTS as f64, 0.0], "lookups and hits");
}
