//! A streamed answer: the task's events relayed as server-sent events in OpenAI's chunk
//! shapes (chat or legacy completion), from the role's opening chunk through text, tool
//! calls and log probabilities to the last chunk, the usage chunk and `[DONE]`.

use std::convert::Infallible;

use axum::response::sse::Event;
use bitinglip_bus_schema::{FinishReason, TokenLogprob, ToolCall, Usage};
use bitinglip_client::{CancelOnDrop, Relayed, TaskWatch};
use futures::Stream;

use super::Api;
use crate::{
    gateway::{
        error::ApiError,
        openai::{self, pipeline::sse_data, Delta, ToolCallOut, ToolMode},
    },
    guided,
};

/// The next event a client sees (workers starting are not shown).
async fn next_visible(watch: &mut TaskWatch) -> Option<Relayed> {
    loop {
        match watch.next().await {
            Some(Relayed::Started { .. }) => continue,
            other => return other,
        }
    }
}

/// Where a streamed answer is.
enum Phase {
    Start,
    Relay,
    /// The calls of a `required` answer, then its last chunk.
    Calls(bitinglip_bus_schema::TaskCompleted),
    Last(bitinglip_bus_schema::TaskCompleted),
    Usage(bitinglip_bus_schema::Usage),
    Done,
    End,
}

/// What a streamed answer's chunks carry besides its pieces.
#[derive(Debug, Clone)]
pub(super) struct Answering {
    pub(super) api: Api,
    pub(super) id: String,
    pub(super) created: u64,
    pub(super) model: String,
    pub(super) include_usage: bool,
    pub(super) mode: ToolMode,
    pub(super) logprobs: bool,
    pub(super) task_id: String,
}

/// A streamed answer's state between events.
struct Streaming {
    watch: TaskWatch,
    cancel: CancelOnDrop,
    shape: Answering,
    relay: tracing::Span,
    phase: Phase,
    /// Calls the engine recognized so far (their `index`).
    calls: u32,
    /// Bytes of text sent so far (a legacy completion's `text_offset`).
    sent: usize,
    /// A chat chunk of plain text, as JSON around its content: made once per stream, so a
    /// token costs the escaping of its own text only.
    text_frame: TextFrame,
}

/// The JSON of a chat chunk whose only news is text, split around the content string.
struct TextFrame {
    before: String,
    after: String,
}

impl TextFrame {
    /// The frame of `shape`'s chunks: everything but the text is the same in each.
    fn of(shape: &Answering) -> Self {
        let delta = Delta { role: None, content: Some(String::new()), tool_calls: None };
        let json =
            serde_json::to_string(&openai::chunk(&shape.id, shape.created, &shape.model, delta, None, None, None))
                .unwrap_or_default();
        const EMPTY: &str = "\"content\":\"\"";
        match json.find(EMPTY) {
            Some(at) => {
                Self { before: json[..at + EMPTY.len() - 2].to_string(), after: json[at + EMPTY.len()..].to_string() }
            }
            None => Self { before: String::new(), after: String::new() },
        }
    }

    /// The chunk of `text`, the same bytes serde would write for it; none when the frame
    /// could not be made.
    fn event(&self, text: &str) -> Option<Event> {
        self.json(text).map(|data| Event::default().data(data))
    }

    fn json(&self, text: &str) -> Option<String> {
        if self.before.is_empty() {
            return None;
        }
        let quoted = serde_json::to_string(text).ok()?;
        let mut data = String::with_capacity(self.before.len() + quoted.len() + self.after.len());
        data.push_str(&self.before);
        data.push_str(&quoted);
        data.push_str(&self.after);
        Some(data)
    }
}

impl Streaming {
    /// A chat chunk of `delta`.
    fn chat(
        &self,
        delta: Delta,
        logprobs: &[TokenLogprob],
        reason: Option<FinishReason>,
        usage: Option<&Usage>,
    ) -> Event {
        let s = &self.shape;
        let lp = openai::choice_logprobs(s.logprobs && !logprobs.is_empty(), logprobs);
        sse_data(&openai::chunk(&s.id, s.created, &s.model, delta, lp, reason, usage))
    }

    /// A legacy completion chunk of `text`.
    fn text(
        &mut self,
        text: String,
        logprobs: &[TokenLogprob],
        reason: Option<FinishReason>,
        usage: Option<&Usage>,
    ) -> Event {
        let s = &self.shape;
        let lp = openai::legacy_logprobs(s.logprobs && !logprobs.is_empty(), logprobs, self.sent);
        self.sent += text.len();
        sse_data(&openai::text_completion(&s.id, s.created, &s.model, Some((text, lp, reason)), usage))
    }

    /// The event for one relayed piece, or none (a `required` answer is held until whole).
    fn piece(&mut self, text: String, logprobs: Vec<TokenLogprob>, tool_calls: Vec<ToolCall>) -> Option<Event> {
        if self.shape.api == Api::Text {
            return Some(self.text(text, &logprobs, None, None));
        }
        let delta = match &self.shape.mode {
            ToolMode::Free if tool_calls.is_empty() && !text.is_empty() && !self.shape.logprobs => {
                if let Some(event) = self.text_frame.event(&text) {
                    return Some(event);
                }
                Delta { role: None, content: Some(text), tool_calls: None }
            }
            ToolMode::Free => {
                let calls: Vec<ToolCallOut> = tool_calls
                    .iter()
                    .map(|c| {
                        self.calls += 1;
                        ToolCallOut::whole(c, Some(self.calls - 1))
                    })
                    .collect();
                Delta {
                    role: None,
                    content: (!text.is_empty()).then_some(text),
                    tool_calls: (!calls.is_empty()).then_some(calls),
                }
            }
            ToolMode::Named(_) => Delta { tool_calls: Some(vec![ToolCallOut::arguments(text)]), ..Delta::default() },
            ToolMode::Required if self.shape.logprobs && !logprobs.is_empty() => Delta::default(),
            ToolMode::Required => return None,
        };
        Some(self.chat(delta, &logprobs, None, None))
    }

    /// The first event.
    fn start(&self) -> Event {
        let delta = match &self.shape.mode {
            ToolMode::Free => Delta { role: Some("assistant"), content: Some(String::new()), tool_calls: None },
            ToolMode::Named(name) => Delta {
                role: Some("assistant"),
                content: None,
                tool_calls: Some(vec![ToolCallOut::opening(guided::call_id(&self.shape.task_id, 0), name.clone())]),
            },
            ToolMode::Required => Delta { role: Some("assistant"), content: None, tool_calls: None },
        };
        self.chat(delta, &[], None, None)
    }

    /// The last event with a choice.
    fn last(&mut self, done: &bitinglip_bus_schema::TaskCompleted) -> Event {
        match self.shape.api {
            Api::Chat => self.chat(Delta::default(), &[], Some(done.finish_reason), Some(&done.usage)),
            Api::Text => self.text(String::new(), &[], Some(done.finish_reason), Some(&done.usage)),
        }
    }

    /// The usage-only event (`stream_options.include_usage`).
    fn usage(&self, usage: &Usage) -> Event {
        let s = &self.shape;
        match s.api {
            Api::Chat => sse_data(&openai::usage_chunk(&s.id, s.created, &s.model, usage)),
            Api::Text => sse_data(&openai::text_completion(&s.id, s.created, &s.model, None, Some(usage))),
        }
    }

    /// The next event and the state after it; `None` ends the stream.
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            let phase = std::mem::replace(&mut self.phase, Phase::End);
            let (event, next) = match phase {
                Phase::Start => (self.start(), Phase::Relay),
                Phase::Relay => match next_visible(&mut self.watch).await {
                    Some(Relayed::Started { .. }) => unreachable!("filtered by next_visible"),
                    Some(Relayed::Text { text, logprobs, tool_calls, .. }) => {
                        match self.piece(text, logprobs, tool_calls) {
                            Some(event) => (event, Phase::Relay),
                            None => {
                                self.phase = Phase::Relay;
                                continue;
                            }
                        }
                    }
                    Some(Relayed::Done(done)) => {
                        self.cancel.disarm();
                        self.relay.record("gen_ai.response.finish_reasons", done.finish_reason.as_str());
                        crate::metrics::metrics().requests.with_label_values(&[&self.shape.model, "ok"]).inc();
                        self.phase = if self.shape.mode == ToolMode::Required && !done.tool_calls.is_empty() {
                            Phase::Calls(done)
                        } else {
                            Phase::Last(done)
                        };
                        continue;
                    }
                    Some(Relayed::Failed(err)) => {
                        self.cancel.disarm();
                        crate::metrics::metrics()
                            .requests
                            .with_label_values(&[&self.shape.model, err.kind.as_str()])
                            .inc();
                        // Headers are gone; the error travels as an event in OpenAI's shape.
                        (sse_data(&ApiError::from(err).body()), Phase::Done)
                    }
                    None => return None,
                },
                Phase::Calls(done) => {
                    let calls = done.tool_calls.iter().enumerate().map(|(i, c)| ToolCallOut::whole(c, Some(i as u32)));
                    let delta = Delta { tool_calls: Some(calls.collect()), ..Delta::default() };
                    (self.chat(delta, &[], None, None), Phase::Last(done))
                }
                Phase::Last(done) => {
                    let event = self.last(&done);
                    (event, if self.shape.include_usage { Phase::Usage(done.usage) } else { Phase::Done })
                }
                Phase::Usage(usage) => (self.usage(&usage), Phase::Done),
                Phase::Done => (Event::default().data("[DONE]"), Phase::End),
                Phase::End => return None,
            };
            self.phase = next;
            return Some((Ok(event), self));
        }
    }
}

pub(super) fn sse_events(
    watch: TaskWatch,
    cancel: CancelOnDrop,
    shape: Answering,
    relay: tracing::Span,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let text_frame = TextFrame::of(&shape);
    let state = Streaming { watch, cancel, shape, relay, phase: Phase::Start, calls: 0, sent: 0, text_frame };
    futures::stream::unfold(state, Streaming::next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_chunk_from_its_frame_is_the_chunk_serde_writes() {
        let shape = Answering {
            api: Api::Chat,
            id: "chatcmpl-t1".into(),
            created: 1_700_000_000,
            model: "org/m \"x\"".into(),
            include_usage: false,
            mode: ToolMode::Free,
            logprobs: false,
            task_id: "t1".into(),
        };
        let frame = TextFrame::of(&shape);
        for text in ["hello", " w\"o\\r\nld", "é\u{1}\u{2028}😀", "\"content\":\"\""] {
            let delta = Delta { role: None, content: Some(text.to_string()), tool_calls: None };
            let serde =
                serde_json::to_string(&openai::chunk(&shape.id, shape.created, &shape.model, delta, None, None, None))
                    .unwrap();
            assert_eq!(frame.json(text).as_deref(), Some(serde.as_str()), "{text:?}");
        }
    }
}
