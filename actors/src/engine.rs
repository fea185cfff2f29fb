//! The engine trait a worker drives, what crosses it, and loading an engine from a
//! model's config. mistral.rs is the engine users run; the echo engine exists only to
//! measure the platform and to drive fault tests. The benchmark loads the very engine a
//! worker runs, in its own process, as the baseline of the platform's streaming rate.

mod convert;
mod echo;
mod loading;
mod mistral;
mod specials;

use std::sync::Arc;

use bitinglip_bus_schema::{ChatParams, EngineKind, FinishReason, TokenLogprob, ToolCall};
use bitinglip_config::{ModelConfig, WorkerConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One generation to run.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The request as submitted: the conversation (or a raw prompt), sampling, tools, the
    /// output format, log probabilities.
    pub chat: ChatParams,
    /// Answer text already streamed by an earlier attempt: generation continues after it,
    /// and `max_tokens` counts it.
    pub prefix: String,
    /// Most tokens to generate (already clamped to the context).
    pub max_tokens: u32,
}

impl GenerateRequest {
    /// A fresh generation of `chat` (no prefix), at most `max_tokens`.
    pub fn new(chat: ChatParams, max_tokens: u32) -> Self {
        Self { chat, prefix: String::new(), max_tokens }
    }
}

/// A piece of the answer as the engine produces it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Piece {
    /// Text (one or more tokens; may be empty when the piece carries tool calls only).
    pub text: String,
    /// The log probabilities of its tokens, when asked for.
    pub logprobs: Vec<TokenLogprob>,
    /// Tool calls the engine recognized.
    pub tool_calls: Vec<ToolCall>,
}

impl Generation {
    /// A generation that ended for `finish_reason` after `completion_tokens`.
    pub fn ended(finish_reason: FinishReason, prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self { finish_reason, prompt_tokens, completion_tokens, embeddings: vec![], cached_tokens: None }
    }

    /// The same, with `cached` prompt tokens found in the engine's prefix cache.
    pub fn with_cached(self, cached: Option<u32>) -> Self {
        Self { cached_tokens: cached, ..self }
    }
}

impl From<String> for Piece {
    fn from(text: String) -> Self {
        Self { text, ..Self::default() }
    }
}

/// How a generation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Prompt tokens (after the chat template).
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// An embedding request's vectors, one per input.
    pub embeddings: Vec<Vec<f32>>,
    /// Of the prompt tokens, those taken from the engine's prefix cache; `None` when the
    /// engine looked in no cache (none kept, or an engine without one).
    pub cached_tokens: Option<u32>,
}

/// Why a generation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The request can never succeed (bad parameters): fail the task, do not retry.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The prompt does not fit the model's context: fail the task, do not retry.
    #[error("{0}")]
    ContextLength(String),
    /// The engine failed; another attempt may succeed.
    #[error("engine failure: {0}")]
    Failed(String),
}

/// A loaded model that generates text.
#[async_trait::async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Which engine this is.
    fn kind(&self) -> EngineKind;

    /// Longest sequence (prompt plus answer) the model accepts, when known.
    fn context_length(&self) -> Option<u32>;

    /// Generates, sending each piece of text to `out` as it is produced. When `cancel`
    /// fires the engine stops the sequence and frees its slot, and returns what it has with
    /// [`FinishReason::Cancelled`]. A request with `input` asks for embeddings instead: an
    /// embedding model returns them in [`Generation::embeddings`]; any other refuses.
    async fn generate(
        &self,
        req: GenerateRequest,
        out: mpsc::Sender<Piece>,
        cancel: CancellationToken,
    ) -> Result<Generation, EngineError>;
}

/// Loads `model` into the engine its config names (a hub model must be in the local
/// cache or reachable; a worker pulls it first).
pub async fn load(model: &ModelConfig, worker: &WorkerConfig) -> Result<Arc<dyn Engine>, EngineError> {
    match model.engine {
        EngineKind::Echo => Ok(Arc::new(echo::EchoEngine::new(model.echo_tokens_per_sec))),
        EngineKind::Mistralrs => Ok(Arc::new(mistral::MistralEngine::load(model, worker).await?)),
        EngineKind::Unknown => Err(EngineError::Invalid("this build does not know the engine".into())),
    }
}

/// Loads `model` into a mistral.rs engine, as a worker would.
pub async fn load_mistralrs(model: &ModelConfig, worker: &WorkerConfig) -> Result<Arc<dyn Engine>, EngineError> {
    Ok(Arc::new(mistral::MistralEngine::load(model, worker).await?))
}
