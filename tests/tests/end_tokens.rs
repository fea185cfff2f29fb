//! Where an answer ends, on models whose files disagree about the end token the way real
//! models do (several end tokens; one end token in the generation config while the
//! tokenizer's `<|endoftext|>` is what the grammar engine ends with; an end token only in
//! `generation_config.json`; a beginning token that is also an end token), through the
//! official `openai` Python client (`tests/clients/end_tokens.py`): a forced tool call is
//! a tool call, one cut by `max_tokens` keeps its arguments so far, and no special token
//! reaches a client as text.

use std::time::Duration;

use bitinglip_tests::{test_config, Arch, ModelDir, ModelSpec, NodeProcess};

#[tokio::test(flavor = "multi_thread")]
async fn answers_end_at_any_end_token_and_no_special_token_is_text() {
    use bitinglip_tests::EndTokens;
    let layouts = [
        ("ends-turn-and-text", EndTokens::TurnAndText),
        ("ends-turn-only", EndTokens::TurnOnly),
        ("ends-generation-only", EndTokens::GenerationConfigOnly),
        ("ends-bos-is-end", EndTokens::BosIsEnd),
    ];
    let models: Vec<ModelDir> = layouts
        .iter()
        .map(|(name, ends)| ModelDir::generate(name, &ModelSpec { ends: *ends, ..ModelSpec::tiny(Arch::Qwen2) }))
        .collect();
    let data = tempfile::tempdir().unwrap();
    let url = format!("nats://127.0.0.1:{}", bitinglip_tests::free_port());
    let mut config = test_config(&url);
    config.data_dir = data.path().to_path_buf();
    let mut args = vec!["up".to_string()];
    for m in &models {
        args.extend(["--model".to_string(), m.path().display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = NodeProcess::spawn(&config, &args);
    for m in &models {
        node.wait_for_model(m.id(), Duration::from_secs(180)).await;
    }
    let key = std::fs::read_to_string(data.path().join("admin.key")).unwrap().trim().to_string();
    let api = format!("{}/v1", node.http.clone().unwrap());
    let mut script_args = vec![api.as_str(), key.as_str()];
    script_args.extend(layouts.iter().map(|(name, _)| *name));
    let stdout = bitinglip_tests::python_client("end_tokens.py", &script_args)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
    assert!(stdout.contains("ok all"), "{stdout}");
    eprintln!("{stdout}");
}
