//! The echo engine: answers with the last user message, word by word, at a configurable
//! rate. It never runs by default; it exists to measure the platform's own overhead and to
//! drive fault tests where mistral.rs's speed would get in the way.

use std::time::Duration;

use bitinglip_bus_schema::{EngineKind, FinishReason};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Engine, EngineError, GenerateRequest, Generation, Piece};

/// Echoes the prompt back.
pub(super) struct EchoEngine {
    tokens_per_sec: f64,
}

impl EchoEngine {
    /// An echo engine producing `tokens_per_sec` words per second (0: no delay).
    pub(super) fn new(tokens_per_sec: f64) -> Self {
        Self { tokens_per_sec }
    }
}

/// Splits text into "tokens": words with their trailing whitespace.
fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            out.push(&text[start..i]);
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Faults a test can ask for in the prompt: `[[fail]]` fails every attempt, `[[panic]]`
/// panics, `[[abort-at-N]]` aborts the whole process once N tokens were produced (a crash
/// mid-stream, like a kill -9). Compiled only with the `fault-injection` feature, which the
/// tests crate enables: in any other build a prompt can never stop a node.
#[cfg(not(feature = "fault-injection"))]
fn faults(_prompt: &str) -> impl Fn(u32) -> Result<(), EngineError> {
    |_produced| Ok(())
}

/// In a build for tests, `[[repeat-N]]` makes the answer the prompt N times over (an
/// answer larger than any request); in any other build the answer is the prompt.
#[cfg(not(feature = "fault-injection"))]
fn answer_of(prompt: String) -> String {
    prompt
}

/// See above: the repeated answer, in a build for tests.
#[cfg(feature = "fault-injection")]
fn answer_of(prompt: String) -> String {
    let times =
        prompt.split("[[repeat-").nth(1).and_then(|rest| rest.split("]]").next()).and_then(|n| n.parse::<usize>().ok());
    match times {
        Some(n) => prompt.repeat(n.min(10_000)),
        None => prompt,
    }
}

/// See above: the faults, in a build for tests.
#[cfg(feature = "fault-injection")]
fn faults(prompt: &str) -> impl Fn(u32) -> Result<(), EngineError> {
    // Read once: the check runs after every token.
    let fail = prompt.contains("[[fail]]");
    let panics = prompt.contains("[[panic]]");
    let abort_at =
        prompt.split("[[abort-at-").nth(1).and_then(|rest| rest.split("]]").next()).and_then(|n| n.parse::<u32>().ok());
    move |produced| {
        if fail {
            return Err(EngineError::Failed("injected failure".into()));
        }
        if panics {
            panic!("injected panic");
        }
        if abort_at.is_some_and(|n| produced >= n) {
            std::process::abort();
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Engine for EchoEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Echo
    }

    fn context_length(&self) -> Option<u32> {
        Some(1 << 20)
    }

    async fn generate(
        &self,
        req: GenerateRequest,
        out: mpsc::Sender<Piece>,
        cancel: CancellationToken,
    ) -> Result<Generation, EngineError> {
        if !req.chat.input.is_empty() {
            return Err(EngineError::Invalid("the echo engine makes no embeddings".into()));
        }
        let messages = &req.chat.messages;
        let prompt_tokens: usize = messages.iter().map(|m| words(&m.content).len()).sum::<usize>()
            + req.chat.prompt.as_deref().map_or(0, |p| words(p).len());
        let prompt = match &req.chat.prompt {
            Some(p) => p.clone(),
            None => messages.iter().rev().find(|m| m.role == "user").map(|m| m.content.clone()).unwrap_or_default(),
        };
        let fault = faults(&prompt);
        let answer = answer_of(prompt);
        let pieces = words(&answer);
        // A continuation skips what an earlier attempt already produced.
        let skip = words(&req.prefix).len();
        let mut produced = skip as u32;
        let delay = (self.tokens_per_sec > 0.0).then(|| Duration::from_secs_f64(1.0 / self.tokens_per_sec));
        let mut text = req.prefix.clone();
        fault(produced)?;
        for piece in pieces.iter().skip(skip) {
            if produced >= req.max_tokens {
                return Ok(Generation::ended(FinishReason::Length, prompt_tokens as u32, produced));
            }
            if let Some(d) = delay {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = cancel.cancelled() => break,
                }
            }
            if cancel.is_cancelled() {
                break;
            }
            text.push_str(piece);
            produced += 1;
            fault(produced)?;
            if out.send(Piece::from(piece.to_string())).await.is_err() {
                break;
            }
            if req.chat.stop.iter().any(|s| text.contains(s.as_str())) {
                return Ok(Generation::ended(FinishReason::Stop, prompt_tokens as u32, produced));
            }
        }
        let finish_reason = if cancel.is_cancelled() { FinishReason::Cancelled } else { FinishReason::Stop };
        Ok(Generation::ended(finish_reason, prompt_tokens as u32, produced))
    }
}

#[cfg(test)]
mod tests {
    use bitinglip_bus_schema::ChatParams;

    use super::*;

    fn req(text: &str, max_tokens: u32) -> GenerateRequest {
        GenerateRequest::new(ChatParams::user("echo", text), max_tokens)
    }

    #[tokio::test]
    async fn echoes_word_by_word_and_respects_max_tokens() {
        let engine = EchoEngine::new(0.0);
        let (tx, mut rx) = mpsc::channel(64);
        let g = engine.generate(req("a bb  ccc", 10), tx, CancellationToken::new()).await.unwrap();
        let mut got = Vec::new();
        while let Some(p) = rx.recv().await {
            got.push(p.text);
        }
        assert_eq!(got, ["a ", "bb  ", "ccc"]);
        assert_eq!(g.completion_tokens, 3);
        assert_eq!(g.finish_reason, FinishReason::Stop);

        let (tx, _rx) = mpsc::channel(64);
        let g = engine.generate(req("a b c d", 2), tx, CancellationToken::new()).await.unwrap();
        assert_eq!((g.completion_tokens, g.finish_reason), (2, FinishReason::Length));
    }

    #[tokio::test]
    async fn continues_after_a_prefix() {
        let engine = EchoEngine::new(0.0);
        let (tx, mut rx) = mpsc::channel(64);
        let mut r = req("a b c d", 10);
        r.prefix = "a b ".into();
        let g = engine.generate(r, tx, CancellationToken::new()).await.unwrap();
        let mut got = String::new();
        while let Some(p) = rx.recv().await {
            got.push_str(&p.text);
        }
        assert_eq!(got, "c d");
        assert_eq!(g.completion_tokens, 4);
    }

    #[tokio::test]
    async fn stops_when_cancelled() {
        let engine = EchoEngine::new(1000.0);
        let (tx, _rx) = mpsc::channel(1024);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let g = engine.generate(req(&"w ".repeat(100), 1000), tx, cancel).await.unwrap();
        assert_eq!(g.finish_reason, FinishReason::Cancelled);
        assert_eq!(g.completion_tokens, 0);
    }
}

#[cfg(all(test, not(feature = "fault-injection")))]
mod without_fault_injection {
    #[test]
    fn a_prompt_cannot_fail_panic_or_abort_a_node() {
        assert!(super::faults("[[fail]] [[panic]] [[abort-at-0]]")(5).is_ok());
    }
}
