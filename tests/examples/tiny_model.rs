//! Writes a tiny random-weight model in Hugging Face layout, for trying BitingLip without
//! a download: `cargo run -p bitinglip-tests --example tiny_model -- DIR [llama|qwen2]`.

use bitinglip_tests::{tiny_model, Arch, ModelSpec};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: tiny_model DIR [llama|qwen2]");
    let arch = match args.next().as_deref() {
        None | Some("llama") => Arch::Llama,
        Some("qwen2") => Arch::Qwen2,
        Some(other) => panic!("unknown architecture {other}: use llama or qwen2"),
    };
    tiny_model::generate(std::path::Path::new(&dir), &ModelSpec::tiny(arch)).expect("model written");
    println!("wrote {dir}");
}
