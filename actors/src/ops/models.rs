//! Model bookkeeping that several actors share: memory estimates from files, merging a
//! registration into the registry's record, and the worker config of a placed replica.

use bitinglip_bus_schema::{ModelRecord, ModelShape, ModelSource, Replica};
use bitinglip_config::ModelConfig;

/// Memory one replica needs when only its files' sizes are known: the weights plus a
/// fifth for the KV cache and activations.
pub fn estimate_memory<'a>(files: impl IntoIterator<Item = (&'a str, u64)>) -> u64 {
    let weights: u64 = files
        .into_iter()
        .filter(|(name, _)| [".safetensors", ".bin", ".gguf", ".pt", ".pth"].iter().any(|ext| name.ends_with(ext)))
        .map(|(_, size)| size)
        .sum();
    weights + weights / 5
}

/// A model folder's shape and the estimate of one replica with the default spec (its
/// context up to 8192 tokens, 4 sequences): what a registration records.
pub fn folder_estimate(dir: &std::path::Path) -> (Option<ModelShape>, Option<u64>) {
    let shape = super::estimate::read_shape(dir);
    let memory = match &shape {
        Some(shape) => Some(super::estimate::estimate(shape, &default_spec()).total),
        None => {
            let files = folder_files(dir);
            Some(estimate_memory(files.iter().map(|f| (f.name.as_str(), f.size))))
        }
    };
    (shape, memory)
}

fn default_spec() -> bitinglip_bus_schema::ModelSpec {
    bitinglip_bus_schema::ModelSpec {
        source: String::new(),
        revision: None,
        engine: Default::default(),
        max_sequences: None,
        echo_tokens_per_sec: None,
        context_length: None,
        quantize: None,
    }
}

/// The files of a model folder (names relative to it, `/`-separated, sorted; sizes; no
/// sha256: hashing gigabytes at every load is not worth it for a folder the operator
/// placed), at most four levels deep.
pub fn folder_files(dir: &std::path::Path) -> Vec<bitinglip_bus_schema::ModelFile> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, depth: u32, out: &mut Vec<bitinglip_bus_schema::ModelFile>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() && depth < 4 {
                walk(root, &path, depth + 1, out);
            } else if meta.is_file() {
                let name = path.strip_prefix(root).unwrap_or(&path);
                let name = name.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                out.push(bitinglip_bus_schema::ModelFile { name, size: meta.len(), sha256: None });
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, dir, 0, &mut files);
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
}

/// The record to store when `record` is registered over `existing` (pure): a worker
/// that loaded the model adds its context length and engine; what a pull recorded
/// (revision sha, files) stays; the first registration's time stays.
pub fn merge_registration(mut record: ModelRecord, existing: Option<ModelRecord>, now: u64) -> ModelRecord {
    let is_pull = !record.files.is_empty();
    match existing {
        Some(existing) => {
            record.created_ms = existing.created_ms;
            if record.files.is_empty() {
                record.files = existing.files;
            }
            record.revision_sha = record.revision_sha.or(existing.revision_sha);
            record.estimated_memory = record.estimated_memory.or(existing.estimated_memory);
            record.shape = record.shape.or(existing.shape);
            if is_pull {
                // A pull keeps the engine a worker recorded.
                record.engine = existing.engine;
            }
            record.context_length = record.context_length.or(existing.context_length);
        }
        None => record.created_ms = now,
    }
    record.updated_ms = now;
    record
}

/// Where a worker's model comes from, as the registry records it.
pub fn source_of(model: &ModelConfig) -> ModelSource {
    if model.is_local() {
        ModelSource::Local { path: model.source.clone() }
    } else {
        ModelSource::Hub { revision: model.revision.clone() }
    }
}

/// The worker config of a replica the cluster placed on this node.
pub fn replica_config(r: &Replica) -> ModelConfig {
    let defaults = ModelConfig::default();
    ModelConfig {
        source: r.spec.source.clone(),
        name: Some(r.model.clone()),
        revision: r.spec.revision.clone().unwrap_or(defaults.revision),
        engine: r.spec.engine,
        max_sequences: r
            .spec
            .max_sequences
            .unwrap_or(defaults.max_sequences)
            .clamp(1, bitinglip_bus_schema::MAX_SEQUENCES),
        echo_tokens_per_sec: r.spec.echo_tokens_per_sec.unwrap_or(defaults.echo_tokens_per_sec),
        context_length: r.spec.context_length,
        quantize: r.spec.quantize,
        gpus: r.gpus.clone(),
    }
}

#[cfg(test)]
mod tests {
    use bitinglip_bus_schema::{EngineKind, ModelFile};

    use super::*;

    fn record(files: Vec<ModelFile>, engine: EngineKind, context_length: Option<u32>) -> ModelRecord {
        ModelRecord {
            id: "m".into(),
            source: ModelSource::Hub { revision: "main".into() },
            context_length,
            revision_sha: None,
            files,
            estimated_memory: None,
            engine,
            shape: None,
            created_ms: 0,
            updated_ms: 0,
        }
    }

    #[test]
    fn a_folders_files_are_listed_with_their_sizes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
        std::fs::write(dir.path().join("1_Pooling/config.json"), "{\"a\":1}").unwrap();
        let files = folder_files(dir.path());
        let listed: Vec<(&str, u64)> = files.iter().map(|f| (f.name.as_str(), f.size)).collect();
        assert_eq!(listed, [("1_Pooling/config.json", 7), ("config.json", 2)]);
    }

    #[test]
    fn weights_count_with_a_fifth_more_and_other_files_not_at_all() {
        assert_eq!(estimate_memory([("model.safetensors", 1000), ("tokenizer.json", 500)]), 1200);
        assert_eq!(estimate_memory([("config.json", 10)]), 0);
    }

    #[test]
    fn a_registration_keeps_what_a_pull_recorded_and_a_pull_keeps_the_engine() {
        let file = ModelFile { name: "model.safetensors".into(), size: 10, sha256: None };
        let mut pulled = record(vec![file], EngineKind::Mistralrs, None);
        pulled.revision_sha = Some("abc".into());
        let first = merge_registration(pulled, None, 5);
        assert_eq!((first.created_ms, first.updated_ms), (5, 5));

        let loaded = merge_registration(record(vec![], EngineKind::Echo, Some(128)), Some(first.clone()), 9);
        assert_eq!(loaded.files, first.files);
        assert_eq!(loaded.revision_sha.as_deref(), Some("abc"));
        assert_eq!(
            (loaded.engine, loaded.context_length, loaded.created_ms, loaded.updated_ms),
            (EngineKind::Echo, Some(128), 5, 9)
        );

        let pulled_again =
            merge_registration(record(first.files.clone(), EngineKind::Mistralrs, None), Some(loaded), 12);
        assert_eq!((pulled_again.engine, pulled_again.context_length), (EngineKind::Echo, Some(128)));
    }
}
