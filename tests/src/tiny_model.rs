//! Tiny random-weight models in Hugging Face layout, generated at test time (the generator
//! lives in `bitinglip-modelgen`, which the benchmark uses too).

pub use bitinglip_modelgen::*;
