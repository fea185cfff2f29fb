//! How a mistral.rs model is loaded for a worker's config: its shape (what the memory
//! estimate reads), the spec it stands for, the quantization, and the GPUs it is pinned
//! to with its layers spread over them.

use bitinglip_bus_schema::{ModelShape, Quantize};
use bitinglip_config::ModelConfig;
use mistralrs::core::{DeviceLayerMapMetadata, DeviceMapMetadata};

use super::EngineError;

/// The model's shape from its folder (a local one, or the hub cache's snapshot).
pub(super) fn model_shape(cfg: &ModelConfig, source: &str) -> Option<ModelShape> {
    let dir = if cfg.is_local() {
        std::path::PathBuf::from(source)
    } else {
        let repo = hf_hub::Repo::with_revision(cfg.source.clone(), hf_hub::RepoType::Model, cfg.revision.clone());
        hf_hub::Cache::from_env().repo(repo).get("config.json")?.parent()?.to_path_buf()
    };
    crate::ops::estimate::read_shape(&dir)
}

pub(super) fn empty_shape() -> ModelShape {
    ModelShape {
        params: 0,
        linear_params: 0,
        layers: 0,
        kv_heads: 0,
        head_dim: 0,
        hidden: 0,
        intermediate: 0,
        heads: 0,
        vocab: 0,
        max_context: None,
        file_dtype: String::new(),
    }
}

/// The deployment spec a worker config stands for (what estimates read).
pub(super) fn spec_of(cfg: &ModelConfig) -> bitinglip_bus_schema::ModelSpec {
    bitinglip_bus_schema::ModelSpec {
        source: cfg.source.clone(),
        revision: Some(cfg.revision.clone()),
        engine: cfg.engine,
        max_sequences: Some(cfg.max_sequences),
        echo_tokens_per_sec: None,
        context_length: cfg.context_length,
        quantize: cfg.quantize,
    }
}

pub(super) fn isq(q: Quantize) -> mistralrs::IsqType {
    use mistralrs::IsqType;
    match q {
        Quantize::Q4_0 => IsqType::Q4_0,
        Quantize::Q4_1 => IsqType::Q4_1,
        Quantize::Q5_0 => IsqType::Q5_0,
        Quantize::Q5_1 => IsqType::Q5_1,
        Quantize::Q8_0 => IsqType::Q8_0,
        Quantize::Q2K => IsqType::Q2K,
        Quantize::Q3K => IsqType::Q3K,
        Quantize::Q4K => IsqType::Q4K,
        Quantize::Q5K => IsqType::Q5K,
        Quantize::Q6K => IsqType::Q6K,
        Quantize::Q8K => IsqType::Q8K,
    }
}

/// The device of a worker pinned to `gpus` (its first) and, on several, its layers
/// spread evenly over them in order (the first GPUs take the remainder). `None`: no GPU
/// named, mistral.rs picks.
#[allow(clippy::type_complexity)]
pub(super) fn device_map(
    gpus: &[u32],
    shape: Option<&ModelShape>,
) -> Result<Option<(mistralrs::Device, Option<mistralrs::DeviceMapSetting>)>, EngineError> {
    let Some(first) = gpus.first() else { return Ok(None) };
    let device =
        mistralrs::Device::new_cuda(*first as usize).map_err(|e| EngineError::Failed(format!("GPU {first}: {e}")))?;
    let layers = shape.map_or(0, |s| s.layers as usize);
    let mapping = if gpus.len() > 1 && layers > 0 {
        Some(mistralrs::DeviceMapSetting::Map(DeviceMapMetadata::from_num_device_layers(
            layer_split(gpus, layers)
                .into_iter()
                .map(|(ordinal, layers)| DeviceLayerMapMetadata { ordinal, layers })
                .collect(),
        )))
    } else {
        // One GPU: every layer on it.
        Some(mistralrs::DeviceMapSetting::Map(DeviceMapMetadata::from_num_device_layers(vec![
            DeviceLayerMapMetadata { ordinal: *first as usize, layers: layers.max(1) },
        ])))
        .filter(|_| layers > 0)
    };
    Ok(Some((device, mapping)))
}

/// Finished sequences the prefix cache may keep within `budget` bytes: as many as fit
/// when each holds the whole context (the most a sequence can hold), at least one when
/// the budget is not 0; `None` (no prefix cache) for 0. A model whose shape is unknown
/// keeps mistral.rs's default count.
pub(super) fn prefix_cache_sequences(budget: u64, shape: Option<&ModelShape>, context: u32) -> Option<usize> {
    if budget == 0 {
        return None;
    }
    let Some(shape) = shape.filter(|s| s.layers > 0 && s.kv_heads > 0 && s.head_dim > 0) else {
        return Some(DEFAULT_PREFIX_SEQUENCES);
    };
    let per_sequence = crate::ops::estimate::kv_bytes_per_token(shape) * u64::from(context.max(1));
    Some(usize::try_from(budget / per_sequence.max(1)).unwrap_or(usize::MAX).clamp(1, MAX_PREFIX_SEQUENCES))
}

/// mistral.rs's own default count of cached sequences.
const DEFAULT_PREFIX_SEQUENCES: usize = 16;

/// The most sequences the cache keeps whatever the budget: each lookup compares the
/// prompt with every cached sequence.
const MAX_PREFIX_SEQUENCES: usize = 256;

/// `layers` spread evenly over `gpus` in order, the first taking the remainder.
fn layer_split(gpus: &[u32], layers: usize) -> Vec<(usize, usize)> {
    let (each, extra) = (layers / gpus.len(), layers % gpus.len());
    gpus.iter().enumerate().map(|(i, g)| (*g as usize, each + usize::from(i < extra))).filter(|(_, n)| *n > 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_cache_keeps_as_many_whole_contexts_as_its_budget_holds() {
        // 2 × 2 layers × 2 KV heads × 16 × 2 bytes = 256 bytes a token; 1,024 tokens: 256 KiB.
        let shape = ModelShape { layers: 2, kv_heads: 2, head_dim: 16, ..empty_shape() };
        assert_eq!(prefix_cache_sequences(0, Some(&shape), 1024), None);
        assert_eq!(prefix_cache_sequences(1 << 20, Some(&shape), 1024), Some(4));
        assert_eq!(prefix_cache_sequences(1, Some(&shape), 1024), Some(1));
        assert_eq!(prefix_cache_sequences(1 << 40, Some(&shape), 1024), Some(MAX_PREFIX_SEQUENCES));
        assert_eq!(prefix_cache_sequences(1 << 20, None, 1024), Some(DEFAULT_PREFIX_SEQUENCES));
    }

    #[test]
    fn layers_spread_evenly_over_gpus_the_first_taking_the_remainder() {
        assert_eq!(layer_split(&[2, 3], 16), [(2, 8), (3, 8)]);
        assert_eq!(layer_split(&[0, 1, 2], 16), [(0, 6), (1, 5), (2, 5)]);
        assert_eq!(layer_split(&[0, 1, 2], 2), [(0, 1), (1, 1)]);
    }
}
