//! How an attempt of a task ends, decided from what its generation produced: finish it
//! (the final record, the final event and how to ack), hand it back (the worker is
//! stopping), or retry it (the engine failed and attempts are left). Pure, with tests;
//! `run.rs` does what it decides.

use std::time::{Duration, Instant};

use bitinglip_bus_schema::{
    ChatParams, ErrorKind, FinishReason, TaskCompleted, TaskEvent, TaskFailed, TaskRecord, TaskState, TokenLogprob,
    ToolCall, Usage, WireError,
};

use crate::engine::{EngineError, Generation};
use crate::guided;

/// What one generation produced.
pub(super) struct Generated {
    pub(super) result: Result<Generation, EngineError>,
    /// The whole answer so far (the prefix of earlier attempts included).
    pub(super) text: String,
    /// Its tokens' log probabilities, when asked for.
    pub(super) logprobs: Vec<TokenLogprob>,
    /// Tool calls the engine recognized in it.
    pub(super) tool_calls: Vec<ToolCall>,
    /// The next chunk's `seq` (so: the number of chunks of the answer).
    pub(super) chunks: u64,
    pub(super) first_token: Option<Duration>,
    pub(super) last_token: Option<Instant>,
    /// A newer attempt took the task over: this one publishes and writes nothing more.
    pub(super) stale: bool,
    /// When a client's cancel reached this worker.
    pub(super) cancelled_at: Option<Instant>,
}

/// The most embedding values one answer carries: the final record and event hold them
/// inline, and a MessagePack f32 takes 5 bytes (so about 240 KiB, within one message).
pub(super) const EMBEDDING_VALUES_MAX: usize = 48 * 1024;

fn embedding_values(embeddings: &[Vec<f32>]) -> usize {
    embeddings.iter().map(Vec::len).sum()
}

/// How an attempt ends.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Ending {
    /// The worker is stopping: nak at once, another worker continues the task.
    HandBack,
    /// The engine failed and attempts are left: nak with a delay.
    Retry,
    /// Write `record` (fenced), publish `event`, then ack with `ack`.
    Finish { record: Box<TaskRecord>, event: Box<TaskEvent>, ack: FinalAck, outcome: TaskState },
}

/// The ack that ends a finished attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum FinalAck {
    /// Done: the message leaves the queue.
    Ack,
    /// The task can never succeed: terminate, no redelivery.
    Term,
}

/// How an attempt ends, from what it generated (pure). `usage` is the generation's, when
/// it succeeded; `stop_ms` the time from a cancel reaching the worker to its last token.
#[allow(clippy::too_many_arguments)] // everything the decision reads, from run_claimed
pub(super) fn ending(
    claimed: &TaskRecord,
    chat: &ChatParams,
    generated: &Generated,
    attempt: u32,
    max_deliver: u32,
    handing_back: bool,
    usage: Option<Usage>,
    stop_ms: Option<f64>,
) -> Ending {
    let task_id = claimed.task_id.clone();
    let fail = |error: WireError, ack: FinalAck| {
        let mut r = claimed.clone();
        let cancelled = error.kind == ErrorKind::Cancelled;
        r.state = if cancelled { TaskState::Cancelled } else { TaskState::Failed };
        r.error = Some(error.clone());
        if cancelled {
            r.cancel_to_stop_ms = stop_ms;
        }
        let event = TaskEvent::Failed(TaskFailed { task_id: task_id.clone(), attempt, error });
        Ending::Finish {
            record: Box::new(r),
            event: Box::new(event),
            ack,
            outcome: if cancelled { TaskState::Cancelled } else { TaskState::Failed },
        }
    };
    match &generated.result {
        // The drain grace ended: the task goes to another worker at once, which continues it.
        Ok(_) if handing_back => Ending::HandBack,
        Ok(g) if g.finish_reason == FinishReason::Cancelled => {
            fail(WireError::new(ErrorKind::Cancelled, "cancelled by the client"), FinalAck::Ack)
        }
        Ok(g) if embedding_values(&g.embeddings) > EMBEDDING_VALUES_MAX => fail(
            WireError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "{} embeddings of {} values do not fit one message (at most {EMBEDDING_VALUES_MAX} values): send fewer inputs per request",
                    g.embeddings.len(),
                    g.embeddings.first().map_or(0, Vec::len)
                ),
            ),
            FinalAck::Term,
        ),
        Ok(g) => {
            // A forced tool choice's answer is the calls' JSON (the grammar saw to it); a
            // free answer's calls are those the engine recognized.
            // One that `max_tokens` cut short keeps its calls so far, finishing by length.
            let (tool_calls, cut) = if chat.tool_choice.is_forced() {
                match guided::forced_calls(chat, task_id.as_str(), &generated.text) {
                    Some(calls) => (calls, false),
                    None if g.finish_reason == FinishReason::Length => {
                        (guided::cut_calls(chat, task_id.as_str(), &generated.text), true)
                    }
                    None => (Vec::new(), false),
                }
            } else {
                (generated.tool_calls.clone(), false)
            };
            let finish_reason =
                if tool_calls.is_empty() || cut { g.finish_reason } else { FinishReason::ToolCalls };
            let completed = TaskCompleted {
                task_id: task_id.clone(),
                attempt,
                text: generated.text.clone(),
                finish_reason,
                usage: usage.unwrap_or_default(),
                chunks: generated.chunks,
                text_object: None,
                tool_calls,
                logprobs: generated.logprobs.clone(),
                embeddings: g.embeddings.clone(),
                parts_object: None,
            };
            let mut r = claimed.clone();
            r.state = TaskState::Completed;
            r.result = Some(completed.clone());
            Ending::Finish {
                record: Box::new(r),
                event: Box::new(TaskEvent::Completed(completed)),
                ack: FinalAck::Ack,
                outcome: TaskState::Completed,
            }
        }
        Err(err @ (EngineError::Invalid(_) | EngineError::ContextLength(_))) => {
            let kind = if matches!(err, EngineError::ContextLength(_)) {
                ErrorKind::ContextLength
            } else {
                ErrorKind::InvalidRequest
            };
            fail(WireError::new(kind, err.to_string()), FinalAck::Term)
        }
        Err(EngineError::Failed(_)) if attempt < max_deliver => Ending::Retry,
        Err(EngineError::Failed(reason)) => fail(
            WireError::new(ErrorKind::Engine, format!("failed after {attempt} attempts: {reason}")),
            FinalAck::Term,
        ),
    }
}

#[cfg(test)]
mod tests {
    use bitinglip_bus_schema::{Priority, TaskId};

    use super::*;

    fn claimed() -> TaskRecord {
        let mut r = TaskRecord::queued(TaskId::parse("t1").unwrap(), "m".into(), Priority::Interactive, 1);
        r.state = TaskState::Running;
        r.attempt = 1;
        r
    }

    fn generated(result: Result<Generation, EngineError>) -> Generated {
        Generated {
            result,
            text: "ab".into(),
            logprobs: vec![],
            tool_calls: vec![],
            chunks: 2,
            first_token: None,
            last_token: None,
            stale: false,
            cancelled_at: None,
        }
    }

    fn done(finish_reason: FinishReason) -> Result<Generation, EngineError> {
        Ok(Generation::ended(finish_reason, 3, 2))
    }

    fn finished(e: Ending) -> (TaskRecord, TaskEvent, FinalAck, TaskState) {
        match e {
            Ending::Finish { record, event, ack, outcome } => (*record, *event, ack, outcome),
            other => panic!("expected a finish, got {other:?}"),
        }
    }

    #[test]
    fn a_finished_generation_completes_with_its_text_and_chunk_count() {
        let (r, event, ack, outcome) = finished(ending(
            &claimed(),
            &ChatParams::user("m", "x"),
            &generated(done(FinishReason::Stop)),
            1,
            3,
            false,
            Some(Usage::default()),
            None,
        ));
        assert_eq!((r.state, ack, outcome), (TaskState::Completed, FinalAck::Ack, TaskState::Completed));
        let TaskEvent::Completed(c) = event else { panic!("a completed event") };
        assert_eq!((c.text.as_str(), c.chunks, c.attempt), ("ab", 2, 1));
        assert_eq!(r.result, Some(c));
    }

    #[test]
    fn a_cancel_is_recorded_with_its_stop_time_and_acked() {
        let (r, _, ack, outcome) = finished(ending(
            &claimed(),
            &ChatParams::user("m", "x"),
            &generated(done(FinishReason::Cancelled)),
            1,
            3,
            false,
            None,
            Some(12.0),
        ));
        assert_eq!(
            (r.state, ack, outcome, r.cancel_to_stop_ms),
            (TaskState::Cancelled, FinalAck::Ack, TaskState::Cancelled, Some(12.0))
        );
        assert_eq!(r.error.unwrap().kind, ErrorKind::Cancelled);
    }

    #[test]
    fn a_stopping_worker_hands_back_whatever_the_engine_said() {
        assert_eq!(
            ending(
                &claimed(),
                &ChatParams::user("m", "x"),
                &generated(done(FinishReason::Cancelled)),
                1,
                3,
                true,
                None,
                None
            ),
            Ending::HandBack
        );
    }

    #[test]
    fn engine_failures_retry_until_the_last_attempt_and_bad_requests_never_do() {
        let failed = || generated(Err(EngineError::Failed("oom".into())));
        assert_eq!(ending(&claimed(), &ChatParams::user("m", "x"), &failed(), 1, 3, false, None, None), Ending::Retry);
        let (r, _, ack, _) =
            finished(ending(&claimed(), &ChatParams::user("m", "x"), &failed(), 3, 3, false, None, None));
        assert_eq!((r.state, ack), (TaskState::Failed, FinalAck::Term));
        assert_eq!(r.error.unwrap().kind, ErrorKind::Engine);
        let (r, _, ack, _) = finished(ending(
            &claimed(),
            &ChatParams::user("m", "x"),
            &generated(Err(EngineError::ContextLength("long".into()))),
            1,
            3,
            false,
            None,
            None,
        ));
        assert_eq!((r.error.unwrap().kind, ack), (ErrorKind::ContextLength, FinalAck::Term));
    }
}
