//! Memory estimates against what a load really takes, on CPU: a generated model is
//! deployed with a context and a number of sequences, every sequence fills its context,
//! and the node's anonymous resident memory grows by the estimate (weights, KV cache, working
//! memory) within ±15 %. Quantized (`--quantize`), the same model takes less, the
//! estimate says so, and it still answers.

use std::time::Duration;

use bitinglip_tests::{
    assert_eventually, http, run_cli, test_config, Arch, ModelDir, ModelSpec, NodeProcess, TestNats,
};
use serde_json::{json, Value};

/// A Llama whose KV cache is a real part of its memory: full multi-head attention
/// (8 KV heads of 64) over 8 layers, 16 KiB a token; 27 M parameters.
fn model_spec() -> ModelSpec {
    ModelSpec {
        hidden: 512,
        layers: 8,
        heads: 8,
        kv_heads: 8,
        intermediate: 1536,
        max_positions: 1024,
        ..ModelSpec::tiny(Arch::Llama)
    }
}

/// A field of a process's memory from `/proc/<pid>/status` (`RssAnon:`), bytes.
fn proc_memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the node's /proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in\n{status}"));
    kb * 1024
}

/// The node's anonymous memory once it has settled: two readings 200 ms apart within
/// 1 MiB of each other (30 s at most; then the last reading).
async fn settled_memory(pid: u32) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = proc_memory(pid, "RssAnon:");
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = proc_memory(pid, "RssAnon:");
        if now.abs_diff(last) < 1 << 20 || std::time::Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

fn deployments(url: &str) -> Vec<Value> {
    let (code, out, err) = run_cli(&["deployments", "ls", "--json", "--nats", url]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(&out).expect("JSON").as_array().cloned().unwrap_or_default()
}

/// Deploys `model` with `extra` flags on a fresh node, fills every sequence's context,
/// and returns (estimate, resident memory grown by the load and the generation).
async fn load_and_fill(model: &ModelDir, name: &str, extra: &[&str]) -> (Value, u64) {
    let nats = TestNats::start().await;
    let url = nats.url();
    let mut node = NodeProcess::spawn(&test_config(&url), &["node"]);
    node.wait_for_http(Duration::from_secs(60)).await;
    node.wait_node_live(Duration::from_secs(30)).await;
    // What the node holds before any model, once settled: the baseline. Anonymous memory
    // only: the weights' files are mapped while they load, and pages of a file are not
    // memory the model keeps.
    let before = settled_memory(node.pid()).await;

    let path = model.path();
    let mut args = vec![
        "deployments",
        "set",
        path.to_str().unwrap(),
        "--name",
        name,
        "--max-sequences",
        "4",
        "--context-length",
        "1024",
    ];
    args.extend(extra);
    args.extend(["--nats", url.as_str()]);
    let (code, out, err) = run_cli(&args);
    assert_eq!(code, 0, "{out}{err}");
    node.wait_worker_ready(name, Duration::from_secs(180)).await;
    // The registry has the model's shape once the worker registered it.
    let mut estimate = Value::Null;
    assert_eventually!(
        Duration::from_secs(30),
        async {
            estimate = deployments(&url)
                .into_iter()
                .find(|d| d["deployment"]["model"] == name)
                .map(|d| d["estimate"].clone())
                .unwrap_or(Value::Null);
            !estimate.is_null()
        },
        "no estimate for {name}"
    );

    // Four sequences at once, each filling its context: a prompt of about 700 tokens and
    // an answer that runs to the end of the 1,024 (the end token is banned).
    let base = node.http.clone().unwrap();
    let vocab = bitinglip_modelgen::vocab_size();
    let banned: serde_json::Map<String, Value> = (vocab - 3..vocab).map(|id| (id.to_string(), json!(-100))).collect();
    let prompt: String = (0..700).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    // The most the node held while the sequences ran, sampled.
    let pid = node.pid();
    println!("{name}: loaded, {:.1} MiB grown", mib(proc_memory(pid, "RssAnon:").saturating_sub(before)));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut most = proc_memory(pid, "RssAnon:");
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(proc_memory(pid, "RssAnon:"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            most
        })
    };
    let mut answers = Vec::new();
    for _ in 0..4 {
        let body = json!({
            "model": name,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 1024,
            "temperature": 0.0,
            "logit_bias": banned,
        });
        let url = format!("{base}/v1/chat/completions");
        answers.push(tokio::spawn(async move {
            let resp = http().post(url).json(&body).timeout(Duration::from_secs(600)).send().await.unwrap();
            let status = resp.status();
            let body: Value = resp.json().await.unwrap();
            assert!(status.is_success(), "{status}: {body}");
            body
        }));
    }
    for a in answers {
        let body = a.await.unwrap();
        let used = body["usage"]["total_tokens"].as_u64().unwrap();
        assert!(used > 900, "a sequence filled {used} tokens of its 1,024: {body}");
        assert!(!body["choices"][0]["message"]["content"].as_str().unwrap().is_empty(), "{body}");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    (estimate, peak.saturating_sub(before))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replicas_estimate_is_what_loading_it_and_filling_its_sequences_takes_and_quantizing_takes_less() {
    let model = ModelDir::generate("est-llama", &model_spec());

    let (full, grew) = load_and_fill(&model, "est-llama", &[]).await;
    let total = full["total"].as_u64().unwrap();
    // 2 × 8 layers × 8 KV heads × 64 × 2 bytes = 16 KiB a token; 1,024 tokens × 4.
    assert_eq!(full["kv_bytes_per_token"], 16384, "{full}");
    assert_eq!(full["kv_cache"], 16384 * 1024 * 4, "{full}");
    let ratio = grew as f64 / total as f64;
    println!(
        "bf16: estimate {:.1} MiB (weights {:.1}, KV {:.1}, overhead {:.1}); resident growth {:.1} MiB; ratio {ratio:.3}",
        mib(total),
        mib(full["weights"].as_u64().unwrap()),
        mib(full["kv_cache"].as_u64().unwrap()),
        mib(full["overhead"].as_u64().unwrap()),
        mib(grew)
    );
    assert!(
        (0.85..=1.15).contains(&ratio),
        "bf16: grew {:.1} MiB against an estimate of {:.1} MiB",
        mib(grew),
        mib(total)
    );

    let (q4, grew_q4) = load_and_fill(&model, "est-llama-q4k", &["--quantize", "Q4K"]).await;
    let total_q4 = q4["total"].as_u64().unwrap();
    let ratio_q4 = grew_q4 as f64 / total_q4 as f64;
    println!(
        "Q4K: estimate {:.1} MiB (weights {:.1}); resident growth {:.1} MiB; ratio {ratio_q4:.3}",
        mib(total_q4),
        mib(q4["weights"].as_u64().unwrap()),
        mib(grew_q4)
    );
    assert_eq!(q4["quantize"], "Q4K", "{q4}");
    assert!(q4["weights"].as_u64().unwrap() * 3 < full["weights"].as_u64().unwrap(), "{q4} vs {full}");
    assert!(grew_q4 < grew, "quantized, the model took {:.1} MiB against {:.1} MiB", mib(grew_q4), mib(grew));
    assert!(
        (0.85..=1.15).contains(&ratio_q4),
        "Q4K: grew {:.1} MiB against an estimate of {:.1} MiB",
        mib(grew_q4),
        mib(total_q4)
    );
}
