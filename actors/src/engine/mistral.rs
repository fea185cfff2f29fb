//! The mistral.rs engine: a model in Hugging Face layout (a local folder, or a hub id
//! through hf-hub's cache), loaded once, generating many sequences at once.
//!
//! Each generation is a streaming request sent straight to the engine's request channel,
//! with a response channel this worker owns. Cancelling drops that channel: mistral.rs's
//! next send for the sequence fails and it marks the sequence cancelled, which frees its
//! slot and its KV cache at the next step.

use std::time::Duration;

use bitinglip_bus_schema::{ChatParams, EngineKind, FinishReason, ModelShape};
use bitinglip_config::{ModelConfig, WorkerConfig};
use either::Either;
use indexmap::IndexMap;
use mistralrs::core::TokenizationRequest;
use mistralrs::{
    Constraint, EmbeddingModelBuilder, MessageContent, Model, NormalRequest, Request, RequestMessage, Response,
    SamplingParams, StopTokens, TextModelBuilder, Tool, ToolChoice,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    convert::{constraint, engine_tools, finish_reason, template_messages, token_logprob, tool_call, LogitBias},
    loading::{device_map, empty_shape, isq, model_shape, prefix_cache_sequences, spec_of},
    specials::{without_specials, END_TOKENS, TEMPLATE_TOKENS},
    Engine, EngineError, GenerateRequest, Generation, Piece,
};
use crate::guided::{self, Guide};

/// A loaded mistral.rs model.
pub(crate) struct MistralEngine {
    model: Model,
    context_length: Option<u32>,
    /// A sentence-transformers model (a `modules.json` in its folder): it makes
    /// embeddings, not text.
    embedding: bool,
    /// It keeps a prefix cache (each generation looks in it).
    prefix_cache: bool,
    /// The special tokens of its vocabulary that end a sequence in one model or another
    /// ([`END_TOKENS`]): every answer stops at any of them.
    ends: Vec<String>,
    /// Every special token of its vocabulary named in [`END_TOKENS`] or
    /// [`TEMPLATE_TOKENS`]: never text of an answer.
    specials: Vec<String>,
}

impl MistralEngine {
    /// Loads the model (this can take minutes for a large one).
    pub(crate) async fn load(cfg: &ModelConfig, worker: &WorkerConfig) -> Result<Self, EngineError> {
        let source = if cfg.is_local() {
            std::path::Path::new(&cfg.source)
                .canonicalize()
                .map_err(|e| EngineError::Failed(format!("{}: {e}", cfg.source)))?
                .display()
                .to_string()
        } else {
            cfg.source.clone()
        };
        let cpu = worker.force_cpu || !cfg!(any(feature = "cuda", feature = "metal"));
        let shape = model_shape(cfg, &source);
        // A sentence-transformers layout (its `modules.json`: transformer, pooling,
        // normalization) is an embedding model.
        let embedding = std::path::Path::new(&source).join("modules.json").is_file();
        // The prefix cache keeps finished sequences' KV cache, so a prompt that continues
        // one (a conversation's next turn) computes only what is new: at most as many
        // sequences as `worker.prefix_cache` holds at the whole context, least recently
        // used evicted first, on the CPU too (a patch of mistral.rs,
        // `vendor/mistralrs-core/BITINGLIP.md`). Under paged attention (GPUs) the cache is
        // the pool's blocks, shared by prefix.
        let context = crate::ops::estimate::context_of(shape.as_ref(), &spec_of(cfg));
        let cached = prefix_cache_sequences(worker.prefix_cache_bytes(), shape.as_ref(), context);
        let prefix_cache = !embedding && cached.is_some();
        let built = if embedding {
            let mut builder = EmbeddingModelBuilder::new(&source).with_max_num_seqs(cfg.max_sequences as usize);
            if cpu {
                builder = builder.with_force_cpu();
            }
            if let Some(q) = cfg.quantize {
                builder = builder.with_isq(isq(q));
            }
            builder.build().await
        } else {
            let mut builder = TextModelBuilder::new(&source)
                .with_max_num_seqs(cfg.max_sequences as usize)
                .with_prefix_cache_n(cached);
            if !cfg.is_local() {
                builder = builder.with_hf_revision(&cfg.revision);
            }
            if let Some(q) = cfg.quantize {
                builder = builder.with_isq(isq(q));
            }
            if cpu {
                builder = builder.with_force_cpu();
            } else {
                // On a GPU the KV cache is reserved up front, as the estimate counts it:
                // the context of each sequence times the sequences.
                let tokens = context as usize * cfg.max_sequences as usize;
                let paged = mistralrs::PagedAttentionMetaBuilder::default()
                    .with_gpu_memory(mistralrs::MemoryGpuConfig::ContextSize(tokens))
                    .build()
                    .map_err(|e| EngineError::Failed(format!("paged attention for {}: {e:#}", cfg.source)))?;
                builder = builder.with_paged_attn(paged);
                if let Some((device, mapping)) = device_map(&cfg.gpus, shape.as_ref())? {
                    builder = builder.with_device(device);
                    if let Some(mapping) = mapping {
                        builder = builder.with_device_mapping(mapping);
                    }
                }
            }
            builder.build().await
        };
        let model = built.map_err(|e| EngineError::Failed(format!("loading {}: {e:#}", cfg.source)))?;
        // The context a sequence gets: the model's, cut to the deployment's (at most 8192
        // tokens unless it says more), as the memory estimate counts it.
        let model_context = model.max_sequence_length().ok().flatten().map(|n| n.min(u32::MAX as usize) as u32);
        let context_length = model_context.map(|n| {
            let served = ModelShape { max_context: Some(n), ..shape.clone().unwrap_or_else(empty_shape) };
            crate::ops::estimate::context_of(Some(&served), &spec_of(cfg))
        });
        let mut engine =
            Self { model, context_length, embedding, prefix_cache, ends: Vec::new(), specials: Vec::new() };
        if !embedding {
            // Which of the known special tokens this vocabulary has: each is one token.
            for name in END_TOKENS.iter().chain(TEMPLATE_TOKENS.iter()) {
                let tokens = engine.tokenize(Either::Right(name.to_string()), None, false, false).await;
                if tokens.is_ok_and(|t| t.len() == 1) {
                    if END_TOKENS.contains(name) {
                        engine.ends.push(name.to_string());
                    }
                    engine.specials.push(name.to_string());
                }
            }
            tracing::debug!(model = %cfg.source, ends = ?engine.ends, "end tokens");
        }
        Ok(engine)
    }

    /// One vector per input; `dimensions` cuts each to its first values, renormalized.
    async fn embed(&self, chat: &ChatParams, cancel: CancellationToken) -> Result<Generation, EngineError> {
        if !self.embedding {
            return Err(EngineError::Invalid(format!("`{}` is not an embedding model", chat.model)));
        }
        let sender = self.model.inner().get_sender(None).map_err(|e| EngineError::Failed(e.to_string()))?;
        let mut receivers = Vec::with_capacity(chat.input.len());
        for text in &chat.input {
            let (tx, rx) = mpsc::channel::<Response>(1);
            let request = Request::Normal(Box::new(NormalRequest {
                messages: RequestMessage::Embedding { prompt: text.clone() },
                sampling_params: SamplingParams::deterministic(),
                response: tx,
                return_logprobs: false,
                is_streaming: false,
                id: 0,
                constraint: Constraint::None,
                suffix: None,
                tools: None,
                tool_choice: None,
                logits_processors: None,
                return_raw_logits: false,
                web_search_options: None,
                model_id: None,
                truncate_sequence: false,
            }));
            sender.send(request).await.map_err(|e| EngineError::Failed(format!("engine stopped: {e}")))?;
            receivers.push(rx);
        }
        let mut generation = Generation::ended(FinishReason::Stop, 0, 0);
        for (i, mut rx) in receivers.into_iter().enumerate() {
            let response = tokio::select! {
                _ = cancel.cancelled() => return Ok(Generation { finish_reason: FinishReason::Cancelled, ..generation }),
                r = rx.recv() => r,
            };
            match response {
                Some(Response::Embeddings { embeddings, prompt_tokens, .. }) => {
                    generation.prompt_tokens += prompt_tokens as u32;
                    generation.embeddings.push(cut(embeddings, chat.dimensions)?);
                }
                Some(Response::ValidationError(e)) => {
                    return Err(EngineError::Invalid(format!("`input[{i}]`: {e}")));
                }
                Some(Response::InternalError(e)) => return Err(EngineError::Failed(e.to_string())),
                Some(_) => return Err(EngineError::Failed("unexpected response kind from the engine".into())),
                None => return Err(EngineError::Failed("the engine stopped without an embedding".into())),
            }
        }
        Ok(generation)
    }
}

/// `vector` cut to its first `dimensions` values and scaled back to unit length.
fn cut(mut vector: Vec<f32>, dimensions: Option<u32>) -> Result<Vec<f32>, EngineError> {
    let Some(d) = dimensions.map(|d| d as usize) else { return Ok(vector) };
    if d == 0 || d > vector.len() {
        return Err(EngineError::Invalid(format!(
            "`dimensions` is {d}; this model's embeddings have {} (use 1 to {0})",
            vector.len()
        )));
    }
    vector.truncate(d);
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|v| *v /= norm);
    }
    Ok(vector)
}

/// Why a text could not be tokenized (the engine's words).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TokenizeError(String);

impl MistralEngine {
    async fn tokenize(
        &self,
        text: Either<Vec<IndexMap<String, MessageContent>>, String>,
        tools: Option<Vec<Tool>>,
        special: bool,
        generation_prompt: bool,
    ) -> Result<Vec<u32>, TokenizeError> {
        let (tx, mut rx) = mpsc::channel(1);
        let request = Request::Tokenize(TokenizationRequest {
            text,
            tools,
            add_special_tokens: special,
            add_generation_prompt: generation_prompt,
            enable_thinking: None,
            reasoning_effort: None,
            response: tx,
        });
        let sender = self.model.inner().get_sender(None).map_err(|e| TokenizeError(e.to_string()))?;
        sender.send(request).await.map_err(|e| TokenizeError(format!("engine stopped: {e}")))?;
        match rx.recv().await {
            Some(Ok(tokens)) => Ok(tokens),
            Some(Err(e)) => Err(TokenizeError(e.to_string())),
            None => Err(TokenizeError("the engine dropped the request".into())),
        }
    }
}

#[async_trait::async_trait]
impl Engine for MistralEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Mistralrs
    }

    fn context_length(&self) -> Option<u32> {
        self.context_length
    }

    async fn generate(
        &self,
        req: GenerateRequest,
        out: mpsc::Sender<Piece>,
        cancel: CancellationToken,
    ) -> Result<Generation, EngineError> {
        let chat = &req.chat;
        if !chat.input.is_empty() {
            return self.embed(chat, cancel).await;
        }
        if self.embedding {
            return Err(EngineError::Invalid(format!(
                "`{}` is an embedding model: ask it for embeddings (`POST /v1/embeddings`)",
                chat.model
            )));
        }
        let guide = guided::guide(chat).map_err(|e| EngineError::Invalid(e.message))?;
        let tools = engine_tools(&chat.tools)?;
        // mistral.rs reads tool calls out of any answer unless told not to: only a free
        // answer with tools on offer may hold calls it recognizes (a forced call is read
        // back from the grammar's JSON by the worker).
        let recognize_calls = tools.is_some() && chat.tool_choice.is_auto() && guide == Guide::None;
        // Tokenize first (the chat template applied): the prompt's length is checked against
        // the context before any inference, and max_tokens is clamped to what is left.
        let messages = template_messages(&chat.messages);
        let prompt = match &chat.prompt {
            Some(text) => self.tokenize(Either::Right(text.clone()), None, true, false).await,
            None => self.tokenize(Either::Left(messages.clone()), tools.clone(), true, true).await,
        }
        .map_err(|e| EngineError::Invalid(format!("cannot tokenize the prompt: {e}")))?;
        let mut tokens = prompt;
        let prompt_len = tokens.len() as u32;
        // A continuation: the prompt plus the answer so far, as raw tokens, so the model
        // goes on from where the earlier attempt stopped.
        let mut prefix_len = 0u32;
        if !req.prefix.is_empty() {
            let prefix = self
                .tokenize(Either::Right(req.prefix.clone()), None, false, false)
                .await
                .map_err(|e| EngineError::Invalid(format!("cannot tokenize the answer so far: {e}")))?;
            prefix_len = prefix.len() as u32;
            tokens.extend(prefix);
        }
        let mut max_tokens = req.max_tokens.saturating_sub(prefix_len).max(1);
        if let Some(context) = self.context_length {
            if prompt_len >= context {
                return Err(EngineError::ContextLength(format!(
                    "the prompt is {prompt_len} tokens; the model's context is {context} tokens"
                )));
            }
            max_tokens = max_tokens.min(context.saturating_sub(prompt_len + prefix_len).max(1));
        }
        let mut sampling = SamplingParams::neutral();
        sampling.max_len = Some(max_tokens as usize);
        sampling.temperature = chat.temperature;
        sampling.top_p = chat.top_p;
        sampling.presence_penalty = chat.presence_penalty;
        sampling.frequency_penalty = chat.frequency_penalty;
        // mistral.rs keeps `logits_bias` in its sampling parameters but applies it nowhere:
        // the bias is a logits processor of ours.
        let logits_processors = (!chat.logit_bias.is_empty()).then(|| {
            let bias: std::sync::Arc<dyn mistralrs::CustomLogitsProcessor> =
                std::sync::Arc::new(LogitBias(chat.logit_bias.clone()));
            vec![bias]
        });
        // The caller's stop sequences, and every end token of the vocabulary: whichever
        // one the model (or the grammar engine) picks ends the answer, and none is text.
        let mut stops = chat.stop.clone();
        stops.extend(self.ends.iter().filter(|e| !chat.stop.contains(e)).cloned());
        if !stops.is_empty() {
            sampling.stop_toks = Some(StopTokens::Seqs(stops));
        }
        if let Some(top) = chat.logprobs {
            sampling.top_n_logprobs = top as usize;
            // Greedy decoding by argmax reports logs of raw logits: the same choice made
            // from the softmax (top 1 at temperature 1) reports real probabilities.
            if chat.temperature.is_none_or(|t| t <= 0.0) {
                sampling.temperature = Some(1.0);
                sampling.top_k = Some(1);
            }
        }
        // A roomy channel: the engine must never wait on us between tokens.
        let (tx, mut rx) = mpsc::channel::<Response>(256);
        let continuing = prefix_len > 0;
        let request_messages = if continuing {
            RequestMessage::CompletionTokens(tokens)
        } else if let Some(text) = &chat.prompt {
            RequestMessage::Completion { text: text.clone(), echo_prompt: false, best_of: None }
        } else {
            RequestMessage::Chat { messages, enable_thinking: None, reasoning_effort: None }
        };
        let request = Request::Normal(Box::new(NormalRequest {
            messages: request_messages,
            sampling_params: sampling,
            response: tx,
            return_logprobs: chat.logprobs.is_some(),
            is_streaming: true,
            id: 0,
            constraint: constraint(guide),
            suffix: None,
            tool_choice: Some(if recognize_calls { ToolChoice::Auto } else { ToolChoice::None }),
            tools,
            logits_processors,
            return_raw_logits: false,
            web_search_options: None,
            model_id: None,
            truncate_sequence: false,
        }));
        let sender = self.model.inner().get_sender(None).map_err(|e| EngineError::Failed(e.to_string()))?;
        sender.send(request).await.map_err(|e| EngineError::Failed(format!("engine stopped: {e}")))?;

        let mut completion_tokens = prefix_len;
        let mut prompt_tokens = prompt_len;
        // Known from the last chunk's usage; until then, nothing found.
        let mut cached = self.prefix_cache.then_some(0);
        loop {
            let response = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    // Dropping the receiver makes the engine cancel the sequence at its
                    // next token; give it a moment so the slot is free when we return.
                    drop(rx);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    return Ok(Generation::ended(FinishReason::Cancelled, prompt_tokens, completion_tokens).with_cached(cached));
                }
                r = rx.recv() => r,
            };
            let Some(response) = response else {
                if sender.is_closed() {
                    return Err(EngineError::Failed("the engine stopped without finishing the sequence".into()));
                }
                // The engine lives, yet ended the sequence without a final chunk: mistral.rs
                // does so when the last token completes no whole UTF-8 character (the
                // bytes are held back, so no delta, so no chunk). The sequence did finish:
                // by length if we saw every token, else by a stop token.
                let finish_reason =
                    if completion_tokens >= max_tokens { FinishReason::Length } else { FinishReason::Stop };
                return Ok(
                    Generation::ended(finish_reason, prompt_tokens, completion_tokens.max(1)).with_cached(cached)
                );
            };
            match response {
                Response::Chunk(chunk) => {
                    let mut finished = None;
                    for choice in &chunk.choices {
                        let text = choice.delta.content.as_deref().unwrap_or_default();
                        let piece = Piece {
                            text: without_specials(text, &self.specials).into_owned(),
                            logprobs: choice.logprobs.iter().map(token_logprob).collect(),
                            tool_calls: choice.delta.tool_calls.iter().flatten().map(tool_call).collect(),
                        };
                        let empty = piece.text.is_empty() && piece.tool_calls.is_empty();
                        if !empty && out.send(piece).await.is_err() {
                            cancel.cancel();
                        }
                        completion_tokens += 1;
                        if let Some(reason) = &choice.finish_reason {
                            finished = Some(finish_reason(reason));
                        }
                    }
                    if let Some(usage) = &chunk.usage {
                        prompt_tokens = usage.prompt_tokens as u32;
                        completion_tokens = usage.completion_tokens as u32 + prefix_len;
                        cached = cached.map(|_| usage.cached_prompt_tokens.min(u32::MAX as usize) as u32);
                    }
                    if let Some(finish_reason) = finished {
                        return Ok(
                            Generation::ended(finish_reason, prompt_tokens, completion_tokens).with_cached(cached)
                        );
                    }
                }
                Response::CompletionChunk(chunk) => {
                    let mut finished = None;
                    for choice in &chunk.choices {
                        let piece = Piece {
                            text: without_specials(&choice.text, &self.specials).into_owned(),
                            logprobs: choice.logprobs.iter().map(token_logprob).collect(),
                            tool_calls: vec![],
                        };
                        if !piece.text.is_empty() && out.send(piece).await.is_err() {
                            cancel.cancel();
                        }
                        completion_tokens += 1;
                        if let Some(reason) = &choice.finish_reason {
                            finished = Some(finish_reason(reason));
                        }
                    }
                    if let Some(finish_reason) = finished {
                        return Ok(
                            Generation::ended(finish_reason, prompt_tokens, completion_tokens).with_cached(cached)
                        );
                    }
                }
                Response::Done(done) => {
                    let reason =
                        done.choices.first().map(|c| finish_reason(&c.finish_reason)).unwrap_or(FinishReason::Stop);
                    cached = cached.map(|_| done.usage.cached_prompt_tokens.min(u32::MAX as usize) as u32);
                    return Ok(Generation::ended(
                        reason,
                        done.usage.prompt_tokens as u32,
                        done.usage.completion_tokens as u32,
                    )
                    .with_cached(cached));
                }
                // The context length was checked above; anything else the engine refuses is
                // a request it can never run.
                Response::ValidationError(e) => return Err(EngineError::Invalid(e.to_string())),
                Response::InternalError(e) => return Err(EngineError::Failed(e.to_string())),
                Response::ModelError(e, _) => return Err(EngineError::Failed(e)),
                _ => return Err(EngineError::Failed("unexpected response kind from the engine".into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_cut_and_renormalize() {
        let v = cut(vec![3.0, 4.0, 12.0], Some(2)).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6, "{v:?}");
        assert_eq!(cut(vec![1.0, 2.0], None).unwrap(), vec![1.0, 2.0]);
        let err = cut(vec![1.0], Some(2)).unwrap_err();
        assert!(err.to_string().contains("`dimensions` is 2"), "{err}");
    }
}
