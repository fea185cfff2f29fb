//! Random-weight models in Hugging Face layout, generated at test or benchmark time: config.json,
//! a byte-level BPE tokenizer.json, tokenizer_config.json with a ChatML chat template,
//! generation_config.json and model.safetensors. The text they produce is gibberish; the
//! forward passes mistral.rs runs on them are real.

use std::{collections::BTreeMap, path::Path};

use serde_json::{json, Value};

/// Architectures the generator writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `LlamaForCausalLM`.
    Llama,
    /// `Qwen2ForCausalLM` (biases on q, k, v).
    Qwen2,
    /// A Qwen3 embedding model in sentence-transformers layout (`modules.json`, last-token
    /// pooling, normalization): the transformer without its language-model head.
    Qwen3Embedding,
}

/// Shape of a generated model.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Architecture.
    pub arch: Arch,
    /// Hidden size.
    pub hidden: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Context length.
    pub max_positions: usize,
    /// PRNG seed for the weights.
    pub seed: u64,
    /// Which tokens end a sequence, and where the model's files say so.
    pub ends: EndTokens,
}

/// Where a model's files name the tokens that end a sequence, in the ways real models
/// disagree with each other (and with a grammar engine, which ends a constrained answer
/// with the tokenizer's `<|endoftext|>`, whatever the config says).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EndTokens {
    /// `config.json`: `<|im_end|>`; `generation_config.json`: `<|im_end|>` and
    /// `<|endoftext|>` (Qwen's instruct models).
    #[default]
    TurnAndText,
    /// `<|im_end|>` only, in both files; `<|endoftext|>` is the tokenizer's pad token
    /// (Qwen-style models whose generation config names one end token).
    TurnOnly,
    /// No `eos_token_id` in `config.json`: `<|im_end|>` only in `generation_config.json`.
    GenerationConfigOnly,
    /// `<|endoftext|>` is the beginning token and the pad token as well as an end token:
    /// `config.json` names it, `generation_config.json` names `<|im_end|>`.
    BosIsEnd,
}

impl ModelSpec {
    /// A very small model: fast enough for many tests on 2 cores.
    pub fn tiny(arch: Arch) -> Self {
        Self {
            arch,
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 128,
            max_positions: 2048,
            seed: 7,
            ends: EndTokens::default(),
        }
    }

    /// About `params` parameters (for benchmarks: big enough that decoding, not the
    /// platform, dominates): Llama-shaped layers of width 1024, as many as it takes.
    pub fn with_params(arch: Arch, params: usize) -> Self {
        let (hidden, intermediate) = (1024, 2816);
        let mut spec = Self {
            arch,
            hidden,
            layers: 1,
            heads: 16,
            kv_heads: 4,
            intermediate,
            max_positions: 4096,
            seed: 11,
            ends: EndTokens::default(),
        };
        spec.layers = (params.saturating_sub(spec.params_outside_layers()) / spec.params_per_layer()).max(1);
        spec
    }

    fn params_per_layer(&self) -> usize {
        let head_dim = self.hidden / self.heads;
        let kv = self.kv_heads * head_dim;
        let attn = 2 * self.hidden * self.heads * head_dim + 2 * kv * self.hidden;
        attn + 3 * self.hidden * self.intermediate + 2 * self.hidden
    }

    fn params_outside_layers(&self) -> usize {
        2 * vocab_size() * self.hidden + self.hidden
    }

    /// Parameters of the model this spec writes (biases left out).
    pub fn params(&self) -> usize {
        self.params_outside_layers() + self.layers * self.params_per_layer()
    }
}

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const MERGES: [(&str, &str); 16] = [
    ("t", "h"),
    ("h", "e"),
    ("i", "n"),
    ("e", "r"),
    ("a", "n"),
    ("Ġ", "t"),
    ("o", "n"),
    ("r", "e"),
    ("Ġ", "a"),
    ("e", "n"),
    ("a", "t"),
    ("o", "r"),
    ("Ġt", "he"),
    ("i", "s"),
    ("e", "s"),
    ("Ġ", "s"),
];

/// GPT-2's byte-to-unicode table: every byte gets a printable character.
fn byte_chars() -> Vec<char> {
    let printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut chars: BTreeMap<u32, u32> = printable.iter().map(|&b| (b, b)).collect();
    let mut extra = 0;
    for b in 0..256u32 {
        chars.entry(b).or_insert_with(|| {
            extra += 1;
            256 + extra - 1
        });
    }
    (0..256u32).map(|b| char::from_u32(chars[&b]).expect("valid char")).collect()
}

/// The tokenizer's vocabulary size (bytes, merges, specials).
pub fn vocab_size() -> usize {
    256 + MERGES.len() + SPECIALS.len()
}

fn tokenizer_json() -> Value {
    let mut vocab = serde_json::Map::new();
    for (i, c) in byte_chars().into_iter().enumerate() {
        vocab.insert(c.to_string(), json!(i));
    }
    for (i, (a, b)) in MERGES.iter().enumerate() {
        vocab.insert(format!("{a}{b}"), json!(256 + i));
    }
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": 256 + MERGES.len() + i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab,
            "merges": MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>(),
        }
    })
}

const CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Deterministic xorshift64*, mapped to roughly N(0, 0.02) by summing uniforms.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545F4914F6CDD1D);
        (v >> 40) as f32 / (1u64 << 24) as f32
    }

    fn normalish(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.next_f32()).sum::<f32>() - 2.0;
        s * 0.035
    }
}

/// Writes a model folder; returns its config.json as written.
pub fn generate(dir: &Path, spec: &ModelSpec) -> std::io::Result<Value> {
    std::fs::create_dir_all(dir)?;
    let vocab = vocab_size();
    let eos = (256 + MERGES.len() + 2) as u32;
    let bos = (256 + MERGES.len()) as u32;
    let head_dim = spec.hidden / spec.heads;
    let (arch_name, model_type) = match spec.arch {
        Arch::Llama => ("LlamaForCausalLM", "llama"),
        Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        Arch::Qwen3Embedding => ("Qwen3ForCausalLM", "qwen3"),
    };
    let mut config = json!({
        "architectures": [arch_name],
        "model_type": model_type,
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "max_position_embeddings": spec.max_positions,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
        "use_cache": true,
    });
    // Where the end tokens are named (`bos` is `<|endoftext|>`, `eos` `<|im_end|>`).
    let (generation_eos, bos_token) = match spec.ends {
        EndTokens::TurnAndText => (json!([eos, bos]), Value::Null),
        EndTokens::TurnOnly => (json!(eos), Value::Null),
        EndTokens::GenerationConfigOnly => {
            config.as_object_mut().expect("an object").remove("eos_token_id");
            (json!(eos), Value::Null)
        }
        EndTokens::BosIsEnd => {
            config["eos_token_id"] = json!(bos);
            (json!(eos), json!(SPECIALS[0]))
        }
    };
    if spec.arch == Arch::Qwen2 {
        config["sliding_window"] = json!(spec.max_positions);
        config["use_sliding_window"] = json!(false);
        config["max_window_layers"] = json!(spec.layers);
    }
    if spec.arch == Arch::Qwen3Embedding {
        config["sliding_window"] = json!(null);
        config["use_sliding_window"] = json!(false);
        config["max_window_layers"] = json!(spec.layers);
        config["attention_bias"] = json!(false);
        config["tie_word_embeddings"] = json!(true);
        sentence_transformers(dir, spec.hidden)?;
    }
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_vec_pretty(&tokenizer_json())?)?;
    let mut decoder = serde_json::Map::new();
    for (i, s) in SPECIALS.iter().enumerate() {
        decoder.insert(
            (256 + MERGES.len() + i).to_string(),
            json!({"content": s, "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true}),
        );
    }
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_vec_pretty(&json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": bos_token,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": null,
            "model_max_length": spec.max_positions,
            "add_bos_token": false,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "added_tokens_decoder": decoder,
            "chat_template": CHAT_TEMPLATE,
        }))?,
    )?;
    std::fs::write(
        dir.join("generation_config.json"),
        // Like Qwen's instruct models: the end of a turn and the end of text both end a
        // sequence (constrained decoding ends an answer with the latter).
        serde_json::to_vec_pretty(&json!({"bos_token_id": bos, "eos_token_id": generation_eos, "do_sample": false}))?,
    )?;

    let mut rng = Rng(spec.seed.max(1));
    // Little-endian f32 bytes straight away: a benchmark-sized model is never held twice.
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    fn random(tensors: &mut Vec<(String, Vec<usize>, Vec<u8>)>, name: String, shape: Vec<usize>, rng: &mut Rng) {
        let n: usize = shape.iter().product();
        tensors.push((name, shape, (0..n).flat_map(|_| rng.normalish().to_le_bytes()).collect()));
    }
    fn ones(n: usize) -> Vec<u8> {
        (0..n).flat_map(|_| 1.0f32.to_le_bytes()).collect()
    }
    let h = spec.hidden;
    let kv = spec.kv_heads * head_dim;
    // An embedding model is the bare transformer: no `model.` prefix, no head.
    let embedder = spec.arch == Arch::Qwen3Embedding;
    let root = if embedder { "" } else { "model." };
    random(&mut tensors, format!("{root}embed_tokens.weight"), vec![vocab, h], &mut rng);
    if !embedder {
        random(&mut tensors, "lm_head.weight".into(), vec![vocab, h], &mut rng);
    }
    for l in 0..spec.layers {
        let p = format!("{root}layers.{l}");
        random(&mut tensors, format!("{p}.self_attn.q_proj.weight"), vec![spec.heads * head_dim, h], &mut rng);
        random(&mut tensors, format!("{p}.self_attn.k_proj.weight"), vec![kv, h], &mut rng);
        random(&mut tensors, format!("{p}.self_attn.v_proj.weight"), vec![kv, h], &mut rng);
        random(&mut tensors, format!("{p}.self_attn.o_proj.weight"), vec![h, spec.heads * head_dim], &mut rng);
        if spec.arch == Arch::Qwen2 {
            random(&mut tensors, format!("{p}.self_attn.q_proj.bias"), vec![spec.heads * head_dim], &mut rng);
            random(&mut tensors, format!("{p}.self_attn.k_proj.bias"), vec![kv], &mut rng);
            random(&mut tensors, format!("{p}.self_attn.v_proj.bias"), vec![kv], &mut rng);
        }
        random(&mut tensors, format!("{p}.mlp.gate_proj.weight"), vec![spec.intermediate, h], &mut rng);
        random(&mut tensors, format!("{p}.mlp.up_proj.weight"), vec![spec.intermediate, h], &mut rng);
        random(&mut tensors, format!("{p}.mlp.down_proj.weight"), vec![h, spec.intermediate], &mut rng);
        if embedder {
            tensors.push((format!("{p}.self_attn.q_norm.weight"), vec![head_dim], ones(head_dim)));
            tensors.push((format!("{p}.self_attn.k_norm.weight"), vec![head_dim], ones(head_dim)));
        }
        tensors.push((format!("{p}.input_layernorm.weight"), vec![h], ones(h)));
        tensors.push((format!("{p}.post_attention_layernorm.weight"), vec![h], ones(h)));
    }
    tensors.push((format!("{root}norm.weight"), vec![h], ones(h)));

    let bytes = tensors;
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(name, shape, data)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .expect("shape matches data");
            (name.clone(), view)
        })
        .collect();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize_to_file(views, Some(meta), &dir.join("model.safetensors")).map_err(std::io::Error::other)?;
    Ok(config)
}

/// The sentence-transformers modules of an embedding model: the transformer, last-token
/// pooling, normalization to unit length.
fn sentence_transformers(dir: &Path, hidden: usize) -> std::io::Result<()> {
    let modules = json!([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]);
    std::fs::write(dir.join("modules.json"), serde_json::to_vec_pretty(&modules)?)?;
    std::fs::create_dir_all(dir.join("1_Pooling"))?;
    std::fs::create_dir_all(dir.join("2_Normalize"))?;
    let pooling = json!({
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": false,
        "pooling_mode_mean_tokens": false,
        "pooling_mode_max_tokens": false,
        "pooling_mode_mean_sqrt_len_tokens": false,
        "pooling_mode_weightedmean_tokens": false,
        "pooling_mode_lasttoken": true,
        "include_prompt": true,
    });
    std::fs::write(dir.join("1_Pooling/config.json"), serde_json::to_vec_pretty(&pooling)?)?;
    std::fs::write(
        dir.join("config_sentence_transformers.json"),
        serde_json::to_vec_pretty(
            &json!({"prompts": {}, "default_prompt_name": null, "similarity_fn_name": "cosine"}),
        )?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let chars = byte_chars();
        let set: std::collections::HashSet<_> = chars.iter().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(chars[b' ' as usize], 'Ġ');
        assert_eq!(chars[b'a' as usize], 'a');
    }

    #[test]
    fn writes_a_complete_folder() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &ModelSpec::tiny(Arch::Qwen2)).unwrap();
        for f in
            ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors"]
        {
            assert!(dir.path().join(f).is_file(), "{f}");
        }
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert!(st.tensor("model.layers.1.self_attn.q_proj.bias").is_ok());
    }

    #[test]
    fn sizes_a_model_by_parameters() {
        let spec = ModelSpec::with_params(Arch::Llama, 150_000_000);
        assert!((120_000_000..180_000_000).contains(&spec.params()), "{}", spec.params());
    }
}
