//! The engine trait a worker drives, and what crosses it. mistral.rs is the engine users
//! run; the echo engine exists only to measure the platform and to drive fault tests.

use bitinglip_bus_schema::{ChatMessage, FinishReason};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One generation to run.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Answer text already streamed by an earlier attempt: generation continues after it,
    /// and `max_tokens` counts it.
    pub prefix: String,
    /// Most tokens to generate (already clamped to the context).
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Stop strings.
    pub stop: Vec<String>,
}

/// How a generation ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Generation {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Prompt tokens (after the chat template).
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
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
    /// `mistralrs` or `echo`.
    fn kind(&self) -> &'static str;

    /// Longest sequence (prompt plus answer) the model accepts, when known.
    fn context_length(&self) -> Option<u32>;

    /// Generates, sending each piece of text to `out` as it is produced. When `cancel`
    /// fires the engine stops the sequence and frees its slot, and returns what it has with
    /// [`FinishReason::Cancelled`].
    async fn generate(
        &self,
        req: GenerateRequest,
        out: mpsc::Sender<String>,
        cancel: CancellationToken,
    ) -> Result<Generation, EngineError>;
}
