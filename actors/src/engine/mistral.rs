//! The mistral.rs engine: a model in Hugging Face layout (a local folder, or a hub id
//! through hf-hub's cache), loaded once, generating many sequences at once.
//!
//! Each generation is a streaming request sent straight to the engine's request channel,
//! with a response channel this worker owns. Cancelling drops that channel: mistral.rs's
//! next send for the sequence fails and it marks the sequence cancelled, which frees its
//! slot and its KV cache at the next step.

use std::time::Duration;

use bitinglip_bus_schema::{EngineKind, FinishReason};
use bitinglip_config::ModelConfig;
use mistralrs::{
    Constraint, Model, NormalRequest, Request, RequestLike, RequestMessage, Response, SamplingParams, StopTokens,
    TextMessageRole, TextMessages, TextModelBuilder,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Engine, EngineError, GenerateRequest, Generation};

/// A loaded mistral.rs model.
pub(crate) struct MistralEngine {
    model: Model,
    context_length: Option<u32>,
}

impl MistralEngine {
    /// Loads the model (this can take minutes for a large one).
    pub(crate) async fn load(cfg: &ModelConfig, force_cpu: bool) -> Result<Self, EngineError> {
        let source = if cfg.is_local() {
            std::path::Path::new(&cfg.source)
                .canonicalize()
                .map_err(|e| EngineError::Failed(format!("{}: {e}", cfg.source)))?
                .display()
                .to_string()
        } else {
            cfg.source.clone()
        };
        let mut builder = TextModelBuilder::new(&source)
            .with_max_num_seqs(cfg.max_sequences as usize)
            // Prefix caching keeps finished sequences' KV cache around; a server with many
            // unrelated prompts gains little from it and pays in memory.
            .with_prefix_cache_n(None);
        if !cfg.is_local() {
            builder = builder.with_hf_revision(&cfg.revision);
        }
        if force_cpu || !cfg!(any(feature = "cuda", feature = "metal")) {
            builder = builder.with_force_cpu();
        }
        let model = builder.build().await.map_err(|e| EngineError::Failed(format!("loading {}: {e:#}", cfg.source)))?;
        let context_length = model.max_sequence_length().ok().flatten().map(|n| n.min(u32::MAX as usize) as u32);
        Ok(Self { model, context_length })
    }
}

fn role(name: &str) -> TextMessageRole {
    match name {
        "user" => TextMessageRole::User,
        "assistant" => TextMessageRole::Assistant,
        "system" | "developer" => TextMessageRole::System,
        "tool" => TextMessageRole::Tool,
        other => TextMessageRole::Custom(other.to_string()),
    }
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "length" => FinishReason::Length,
        "canceled" | "cancelled" => FinishReason::Cancelled,
        _ => FinishReason::Stop,
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
        out: mpsc::Sender<String>,
        cancel: CancellationToken,
    ) -> Result<Generation, EngineError> {
        let mut messages = TextMessages::new();
        for m in &req.messages {
            messages = messages.add_message(role(&m.role), &m.content);
        }
        // Tokenize first (the chat template applied): the prompt's length is checked against
        // the context before any inference, and max_tokens is clamped to what is left.
        let prompt = self
            .model
            .tokenize(either::Either::Left(messages.clone()), None, true, true, None)
            .await
            .map_err(|e| EngineError::Invalid(format!("cannot tokenize the prompt: {e}")))?;
        let mut tokens = prompt;
        let prompt_len = tokens.len() as u32;
        // A continuation: the prompt plus the answer so far, as raw tokens, so the model
        // goes on from where the earlier attempt stopped.
        let mut prefix_len = 0u32;
        if !req.prefix.is_empty() {
            let prefix = self
                .model
                .tokenize(either::Either::Right(req.prefix.clone()), None, false, false, None)
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
        sampling.temperature = req.temperature;
        sampling.top_p = req.top_p;
        if !req.stop.is_empty() {
            sampling.stop_toks = Some(StopTokens::Seqs(req.stop.clone()));
        }
        // A roomy channel: the engine must never wait on us between tokens.
        let (tx, mut rx) = mpsc::channel::<Response>(256);
        let continuing = prefix_len > 0;
        let request_messages =
            if continuing { RequestMessage::CompletionTokens(tokens) } else { messages.take_messages() };
        let request = Request::Normal(Box::new(NormalRequest {
            messages: request_messages,
            sampling_params: sampling,
            response: tx,
            return_logprobs: false,
            is_streaming: true,
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
        let sender = self.model.inner().get_sender(None).map_err(|e| EngineError::Failed(e.to_string()))?;
        sender.send(request).await.map_err(|e| EngineError::Failed(format!("engine stopped: {e}")))?;

        let mut completion_tokens = prefix_len;
        let mut prompt_tokens = prompt_len;
        loop {
            let response = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    // Dropping the receiver makes the engine cancel the sequence at its
                    // next token; give it a moment so the slot is free when we return.
                    drop(rx);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    return Ok(Generation { finish_reason: FinishReason::Cancelled, prompt_tokens, completion_tokens });
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
                return Ok(Generation { finish_reason, prompt_tokens, completion_tokens: completion_tokens.max(1) });
            };
            match response {
                Response::Chunk(chunk) => {
                    let mut finished = None;
                    for choice in &chunk.choices {
                        if let Some(text) = &choice.delta.content {
                            if !text.is_empty() && out.send(text.clone()).await.is_err() {
                                cancel.cancel();
                            }
                        }
                        completion_tokens += 1;
                        if let Some(reason) = &choice.finish_reason {
                            finished = Some(finish_reason(reason));
                        }
                    }
                    if let Some(usage) = &chunk.usage {
                        prompt_tokens = usage.prompt_tokens as u32;
                        completion_tokens = usage.completion_tokens as u32 + prefix_len;
                    }
                    if let Some(finish_reason) = finished {
                        return Ok(Generation { finish_reason, prompt_tokens, completion_tokens });
                    }
                }
                Response::CompletionChunk(chunk) => {
                    let mut finished = None;
                    for choice in &chunk.choices {
                        if !choice.text.is_empty() && out.send(choice.text.clone()).await.is_err() {
                            cancel.cancel();
                        }
                        completion_tokens += 1;
                        if let Some(reason) = &choice.finish_reason {
                            finished = Some(finish_reason(reason));
                        }
                    }
                    if let Some(finish_reason) = finished {
                        return Ok(Generation { finish_reason, prompt_tokens, completion_tokens });
                    }
                }
                Response::Done(done) => {
                    let reason =
                        done.choices.first().map(|c| finish_reason(&c.finish_reason)).unwrap_or(FinishReason::Stop);
                    return Ok(Generation {
                        finish_reason: reason,
                        prompt_tokens: done.usage.prompt_tokens as u32,
                        completion_tokens: done.usage.completion_tokens as u32,
                    });
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
