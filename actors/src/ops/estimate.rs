//! Memory estimates: what one replica of a deployment takes, from the model's shape (read
//! once from `config.json` and the safetensors headers) and the deployment's context,
//! sequences and quantization.
//!
//! weights (each parameter in the dtype it is held in, the linear layers' weights in the
//! quantized format when there is one) + KV cache (2 × layers × KV heads × head dim ×
//! dtype bytes per token, × context × sequences) + the engine's working memory. On a
//! GPU each card a replica uses also holds a CUDA context and the libraries' workspace
//! ([`GPU_RUNTIME`]); placement adds it per GPU.

use std::{collections::HashMap, io::Read, path::Path};

use bitinglip_bus_schema::{Deployment, MemoryEstimate, ModelRecord, ModelShape, ModelSpec};
use serde::Deserialize;

/// The context a sequence gets when the deployment does not say: the model's, at most
/// this. A 128k-token model would otherwise reserve its whole window for every sequence.
pub const DEFAULT_CONTEXT: u32 = 8192;

/// What each GPU a replica uses holds besides the model: the CUDA context and cuBLAS's
/// workspace.
pub const GPU_RUNTIME: u64 = 600 << 20;

/// Bytes per value the engine holds weights and cache in: bf16 (mistral.rs picks it on
/// CPUs and on GPUs of compute capability 8.0 and later).
const DTYPE_BYTES: u64 = 2;

/// The engine's own memory besides weights, cache and activations (tokenizer, buffers,
/// the runtime's pools), measured loading the tests' models on a CPU.
const FIXED_OVERHEAD: u64 = 16 << 20;

/// The most tokens the estimate counts in one forward pass: every sequence's prompt at
/// once, up to this (vLLM's default batch of tokens is the same order).
const PREFILL_TOKENS: u64 = 8192;

/// A safetensors header is at most this long (the format's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// The context a sequence of this deployment gets.
pub fn context_of(shape: Option<&ModelShape>, spec: &ModelSpec) -> u32 {
    let model = shape.and_then(|s| s.max_context).unwrap_or(DEFAULT_CONTEXT);
    match spec.context_length {
        Some(c) => c.min(model).max(1),
        None => model.min(DEFAULT_CONTEXT),
    }
}

/// What one token of a sequence takes in the KV cache: keys and values of every layer.
pub fn kv_bytes_per_token(shape: &ModelShape) -> u64 {
    2 * u64::from(shape.layers) * u64::from(shape.kv_heads) * u64::from(shape.head_dim) * DTYPE_BYTES
}

/// The estimate for one replica of `spec` of a model of `shape` (pure).
pub fn estimate(shape: &ModelShape, spec: &ModelSpec) -> MemoryEstimate {
    let sequences = spec.max_sequences.unwrap_or(4).max(1);
    let context_length = context_of(Some(shape), spec);
    let kv_bytes_per_token = kv_bytes_per_token(shape);
    let kv_cache = kv_bytes_per_token.saturating_mul(u64::from(context_length)).saturating_mul(u64::from(sequences));
    let weights = match spec.quantize {
        Some(q) => {
            let linear = shape.linear_params.min(shape.params);
            (shape.params - linear).saturating_mul(DTYPE_BYTES).saturating_add(q.bytes(linear))
        }
        None => shape.params.saturating_mul(DTYPE_BYTES),
    };
    // Activations of a prefill of every sequence at once, up to PREFILL_TOKENS tokens in
    // one forward pass: per token the MLP's three intermediate vectors and four hidden
    // ones, in bf16.
    let per_token = 3 * u64::from(shape.intermediate) + 4 * u64::from(shape.hidden);
    let prefill = (u64::from(sequences) * u64::from(context_length)).min(PREFILL_TOKENS);
    let activations = prefill * per_token * DTYPE_BYTES;
    let fixed = FIXED_OVERHEAD + weights / 20;
    // On a CPU (no paged attention) each step runs on a copy of the sequences' caches
    // put together as one batch: the cache again.
    let overhead = fixed.saturating_add(activations).saturating_add(kv_cache);
    // On a GPU the cache is paged, reserved once; attention over a prompt without flash
    // attention holds its scores (heads × context², bf16) for one sequence.
    let scores = u64::from(shape.heads) * u64::from(context_length) * u64::from(context_length) * DTYPE_BYTES;
    let gpu_overhead = fixed.saturating_add(activations).saturating_add(scores);
    MemoryEstimate {
        weights,
        kv_cache,
        overhead,
        total: weights.saturating_add(kv_cache).saturating_add(overhead),
        gpu_overhead,
        gpu_total: weights.saturating_add(kv_cache).saturating_add(gpu_overhead),
        kv_bytes_per_token,
        context_length,
        sequences,
        dtype: "bf16".into(),
        quantize: spec.quantize,
        gpu_runtime: GPU_RUNTIME,
    }
}

/// What one replica of `d` reserves, bytes, on a CPU node and on GPUs, and the estimate
/// behind it: the memory the deployment names, else the estimate from the model's shape,
/// else the registry's estimate from the files' sizes, else nothing (0: placed anywhere).
pub fn for_deployment(d: &Deployment, record: Option<&ModelRecord>) -> (Reserve, Option<MemoryEstimate>) {
    let estimate = record.and_then(|r| r.shape.as_ref()).map(|shape| estimate(shape, &d.spec));
    let fallback = record.and_then(|r| r.estimated_memory).unwrap_or(0);
    let reserve = match (d.memory, &estimate) {
        (Some(m), _) => Reserve { cpu: m, gpu: m },
        (None, Some(e)) => Reserve { cpu: e.total, gpu: e.gpu_total },
        (None, None) => Reserve { cpu: fallback, gpu: fallback },
    };
    (reserve, estimate)
}

/// Bytes one replica reserves where it runs (the CUDA runtime of each GPU apart).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserve {
    /// On a CPU node.
    pub cpu: u64,
    /// On GPUs, all of them together.
    pub gpu: u64,
}

/// The fields of `config.json` an estimate needs (a multimodal model keeps them under
/// `text_config`).
#[derive(Debug, Default, Deserialize)]
struct Config {
    hidden_size: Option<u64>,
    intermediate_size: Option<u64>,
    num_hidden_layers: Option<u64>,
    num_attention_heads: Option<u64>,
    num_key_value_heads: Option<u64>,
    head_dim: Option<u64>,
    vocab_size: Option<u64>,
    max_position_embeddings: Option<u64>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    text_config: Option<Box<Config>>,
}

#[derive(Debug, Deserialize)]
struct TensorInfo {
    dtype: String,
    shape: Vec<u64>,
}

/// Reads a model folder's shape: `config.json` and every `*.safetensors` header (at
/// most [`MAX_HEADER`] bytes each; what a hub served is checked like any input). `None`
/// when the folder has no usable `config.json` (a GGUF file, an embedding layout it
/// cannot read).
pub fn read_shape(dir: &Path) -> Option<ModelShape> {
    let raw = std::fs::read(dir.join("config.json")).ok()?;
    let top: Config = serde_json::from_slice(&raw).ok()?;
    let config = match top.text_config {
        Some(text) if top.hidden_size.is_none() => *text,
        _ => Config { text_config: None, ..top },
    };
    let hidden = config.hidden_size.filter(|h| *h > 0)?;
    let layers = config.num_hidden_layers.filter(|l| *l > 0)?;
    let heads = config.num_attention_heads.filter(|h| *h > 0)?;
    let kv_heads = config.num_key_value_heads.filter(|h| *h > 0).unwrap_or(heads);
    let head_dim = config.head_dim.filter(|d| *d > 0).unwrap_or(hidden / heads);
    let intermediate = config.intermediate_size.unwrap_or(4 * hidden);
    let vocab = config.vocab_size.unwrap_or(0);
    let file_dtype = config.torch_dtype.or(config.dtype).unwrap_or_else(|| "float32".into());

    let (mut params, mut linear) = (0u64, 0u64);
    let mut dtypes: HashMap<String, u64> = HashMap::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    for file in &files {
        for (name, info) in header(file)? {
            let count = info.shape.iter().try_fold(1u64, |n, d| n.checked_mul(*d))?;
            params = params.checked_add(count)?;
            *dtypes.entry(info.dtype.to_lowercase()).or_default() += count;
            if info.shape.len() == 2 && name.ends_with(".weight") && !name.contains("embed") && !name.contains("norm") {
                linear += count;
            }
        }
    }
    if files.is_empty() {
        // Weights in another format (`.bin`): their size in the config's dtype.
        let bytes: u64 = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "bin" || x == "pt" || x == "pth"))
            .filter_map(|e| e.metadata().ok().map(|m| m.len()))
            .sum();
        params = bytes / dtype_bytes(&file_dtype);
        // Without names, the layers' matrices are the whole less the embeddings.
        linear = params.saturating_sub(2 * vocab * hidden);
    }
    let file_dtype =
        dtypes.into_iter().max_by_key(|(_, n)| *n).map(|(d, _)| short_dtype(&d)).unwrap_or(short_dtype(&file_dtype));
    let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    Some(ModelShape {
        params,
        linear_params: linear,
        layers: narrow(layers),
        kv_heads: narrow(kv_heads),
        head_dim: narrow(head_dim),
        hidden: narrow(hidden),
        intermediate: narrow(intermediate),
        heads: narrow(heads),
        vocab: narrow(vocab),
        max_context: config.max_position_embeddings.map(narrow),
        file_dtype,
    })
}

/// A safetensors file's tensors (name → dtype and shape), from its header.
fn header(file: &Path) -> Option<Vec<(String, TensorInfo)>> {
    let mut f = std::fs::File::open(file).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER || len > f.metadata().ok()?.len() {
        tracing::warn!(file = %file.display(), len, "a safetensors header longer than the file or the format allows");
        return None;
    }
    let mut raw = vec![0u8; len as usize];
    f.read_exact(&mut raw).ok()?;
    let entries: HashMap<String, serde_json::Value> = serde_json::from_slice(&raw).ok()?;
    Some(
        entries
            .into_iter()
            .filter(|(name, _)| name != "__metadata__")
            .filter_map(|(name, v)| Some((name, serde_json::from_value(v).ok()?)))
            .collect(),
    )
}

fn dtype_bytes(dtype: &str) -> u64 {
    match short_dtype(dtype).as_str() {
        "f64" | "i64" | "u64" => 8,
        "f32" | "i32" | "u32" => 4,
        "f16" | "bf16" | "i16" | "u16" => 2,
        _ => 1,
    }
}

/// `torch.bfloat16`, `bfloat16`, `BF16` → `bf16`.
fn short_dtype(dtype: &str) -> String {
    let d = dtype.trim_start_matches("torch.").to_lowercase();
    match d.as_str() {
        "bfloat16" => "bf16".into(),
        "float16" | "half" => "f16".into(),
        "float32" | "float" => "f32".into(),
        "float64" | "double" => "f64".into(),
        _ => d,
    }
}

#[cfg(test)]
mod tests {
    use bitinglip_bus_schema::{EngineKind, Quantize};

    use super::*;

    fn spec(context: Option<u32>, sequences: u32, quantize: Option<Quantize>) -> ModelSpec {
        ModelSpec {
            source: "m".into(),
            revision: None,
            engine: EngineKind::Mistralrs,
            max_sequences: Some(sequences),
            echo_tokens_per_sec: None,
            context_length: context,
            quantize,
        }
    }

    /// Llama-3.1-8B's shape.
    fn llama_8b() -> ModelShape {
        ModelShape {
            params: 8_030_261_248,
            linear_params: 8_030_261_248 - 128_256 * 4096 - 65 * 4096,
            layers: 32,
            kv_heads: 8,
            head_dim: 128,
            hidden: 4096,
            intermediate: 14_336,
            heads: 32,
            vocab: 128_256,
            max_context: Some(131_072),
            file_dtype: "bf16".into(),
        }
    }

    #[test]
    fn an_8b_model_takes_its_weights_and_a_kv_cache_sized_by_context_and_sequences() {
        let e = estimate(&llama_8b(), &spec(Some(8192), 4, None));
        // 2 × 32 layers × 8 KV heads × 128 × 2 bytes = 128 KiB a token.
        assert_eq!(e.kv_bytes_per_token, 131_072);
        assert_eq!(e.kv_cache, 131_072 * 8192 * 4);
        assert_eq!(e.weights, 8_030_261_248 * 2);
        assert_eq!(e.total, e.weights + e.kv_cache + e.overhead);
        assert_eq!(e.gpu_total, e.weights + e.kv_cache + e.gpu_overhead);
        // On a CPU each step copies the cache into a batch; on a GPU it is paged.
        assert!(e.overhead >= e.kv_cache);
        // Defaults: the model's context capped at 8192, 4 sequences.
        let default = estimate(&llama_8b(), &spec(None, 4, None));
        assert_eq!(default.context_length, DEFAULT_CONTEXT);
        // A context longer than the model's is cut to it.
        assert_eq!(estimate(&llama_8b(), &spec(Some(1 << 30), 1, None)).context_length, 131_072);
    }

    #[test]
    fn quantization_shrinks_the_linear_layers_only() {
        let shape = llama_8b();
        let q4 = estimate(&shape, &spec(Some(4096), 1, Some(Quantize::Q4K)));
        let embeddings = (shape.params - shape.linear_params) * 2;
        assert_eq!(q4.weights, embeddings + shape.linear_params / 256 * 144);
        let q8 = estimate(&shape, &spec(Some(4096), 1, Some(Quantize::Q8_0)));
        let full = estimate(&shape, &spec(Some(4096), 1, None));
        assert!(q4.weights < q8.weights && q8.weights < full.weights);
        // About 4.9 GiB at Q4K against 15 GiB in bf16.
        assert!((5_000_000_000..5_600_000_000).contains(&q4.weights), "{}", q4.weights);
    }

    #[test]
    fn a_folders_shape_comes_from_its_config_and_safetensors_headers() {
        let dir = tempfile::tempdir().unwrap();
        let spec = bitinglip_modelgen::ModelSpec::tiny(bitinglip_modelgen::Arch::Llama);
        bitinglip_modelgen::generate(dir.path(), &spec).unwrap();
        let shape = read_shape(dir.path()).unwrap();
        assert_eq!(shape.layers as usize, spec.layers);
        assert_eq!(shape.kv_heads as usize, spec.kv_heads);
        assert_eq!(shape.head_dim as usize, spec.hidden / spec.heads);
        assert_eq!(shape.file_dtype, "f32");
        assert_eq!(shape.max_context, Some(spec.max_positions as u32));
        // The file holds the parameters in f32 (and a small header).
        let size = std::fs::metadata(dir.path().join("model.safetensors")).unwrap().len();
        assert!(size >= shape.params * 4 && size < shape.params * 4 + 100_000, "{size} vs {}", shape.params);
        let embeddings = bitinglip_modelgen::vocab_size() as u64 * spec.hidden as u64;
        assert!(shape.linear_params + embeddings <= shape.params);
        assert!(shape.linear_params > shape.params / 4);

        // A header that claims more than the file holds is refused, not allocated.
        std::fs::write(dir.path().join("model.safetensors"), u64::MAX.to_le_bytes()).unwrap();
        assert_eq!(read_shape(dir.path()), None);
    }
}
