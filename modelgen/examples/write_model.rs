//! Writes a random-weight Llama folder (config.json, tokenizer files, model.safetensors) for
//! a machine that has no build of its own: `.ci/gpu-build` packs its tokenizer with the CUDA
//! build, and a GPU check makes weights of the same shape beside it.
//!
//! ```text
//! cargo run -p bitinglip-modelgen --example write_model -- DIR [hidden=64] [layers=2]
//!     [heads=4] [kv_heads=2] [intermediate=128] [max_positions=2048] [seed=7]
//! ```
//!
//! Each `key=value` overrides one field of `ModelSpec::tiny(Arch::Llama)`. Prints the
//! tokenizer's vocabulary size, the one number a writer of matching weights needs that
//! config.json alone does not make obvious.

use std::{path::PathBuf, process::ExitCode};

use bitinglip_modelgen::{generate, vocab_size, Arch, ModelSpec};

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("write_model: {message}");
            eprintln!(
                "usage: write_model DIR [hidden=N] [layers=N] [heads=N] [kv_heads=N] \
                 [intermediate=N] [max_positions=N] [seed=N]"
            );
            // EX_USAGE, as the node exits on a bad configuration.
            ExitCode::from(64)
        }
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let (dir, overrides) = args.split_first().ok_or("no folder given")?;
    let mut spec = ModelSpec::tiny(Arch::Llama);
    for pair in overrides {
        let (key, value) = pair.split_once('=').ok_or_else(|| format!("`{pair}` is not key=value"))?;
        let number: u64 = value.parse().map_err(|_| format!("`{pair}`: `{value}` is not a whole number"))?;
        let size = usize::try_from(number).map_err(|_| format!("`{pair}` is too large"))?;
        match key {
            "hidden" => spec.hidden = size,
            "layers" => spec.layers = size,
            "heads" => spec.heads = size,
            "kv_heads" => spec.kv_heads = size,
            "intermediate" => spec.intermediate = size,
            "max_positions" => spec.max_positions = size,
            "seed" => spec.seed = number,
            _ => return Err(format!("unknown field `{key}`")),
        }
    }
    // The generator divides by these; a zero would write a config no engine loads.
    if spec.heads == 0
        || spec.kv_heads == 0
        || !spec.hidden.is_multiple_of(spec.heads)
        || !spec.heads.is_multiple_of(spec.kv_heads)
    {
        return Err(format!(
            "hidden ({}) must be a multiple of heads ({}), and heads of kv_heads ({})",
            spec.hidden, spec.heads, spec.kv_heads
        ));
    }
    generate(&PathBuf::from(dir), &spec).map_err(|e| format!("writing {dir}: {e}"))?;
    println!("{}", vocab_size());
    Ok(())
}
