//! Sequencing one task's events for a client, as a pure state machine (no I/O: the
//! caller feeds it events and, when it asks, the events read back from the stream).
//!
//! Rules:
//! - Chunks are relayed in `seq` order, each once: a chunk below the next `seq` is a
//!   repeat and is skipped.
//! - Events of an attempt older than the newest seen are stale and skipped.
//! - A chunk, a `started` (its `resume_from_seq`) or a `completed` (its `chunks`) beyond
//!   the next `seq` means chunks were missed: the machine asks for the stored events
//!   ([`Handled::Gap`]), relays the missing chunks from them first, then the event.
//! - A `completed` whose text goes past what was relayed (chunks the stream no longer
//!   holds), on a watch that saw the answer from its start, sends the rest of the text
//!   as one last chunk before the end.
//! - After `completed` or `failed` nothing more is relayed.

use std::collections::{BTreeMap, VecDeque};

use bitinglip_bus_schema::{ErrorKind, TaskCompleted, TaskEvent, TaskRecord, TaskState, TokenChunk, WireError};

/// What the client is told next.
#[derive(Debug, Clone, PartialEq)]
pub enum Relayed {
    /// A worker started (or restarted) the task.
    Started {
        /// Delivery attempt.
        attempt: u32,
        /// Chunks before this attempt's first.
        resume_from_seq: u64,
    },
    /// More text: chunk `seq`.
    Text {
        /// Position of the chunk.
        seq: u64,
        /// Its text.
        text: String,
        /// Its tokens' log probabilities, when asked for.
        logprobs: Vec<bitinglip_bus_schema::TokenLogprob>,
        /// Tool calls the engine recognized in it.
        tool_calls: Vec<bitinglip_bus_schema::ToolCall>,
    },
    /// Finished; no more follows.
    Done(TaskCompleted),
    /// Failed; no more follows.
    Failed(WireError),
}

/// What handling one event came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// Nothing to tell (a repeat, a stale attempt).
    Skip,
    /// Tell the client this.
    Relay(Relayed),
    /// Chunks before `until` are missing: read the stored events, give them to
    /// [`Sequencer::fill_gap`], then handle `event` again with `filled` set.
    Gap {
        /// The first `seq` not missing.
        until: u64,
        /// The event to handle after the fill.
        event: TaskEvent,
    },
}

/// One client's view of a task's events.
#[derive(Debug, Clone, Default)]
pub struct Sequencer {
    next_seq: u64,
    attempt: u32,
    relayed_bytes: usize,
    backlog: VecDeque<TaskEvent>,
    pending_done: Option<TaskCompleted>,
    finished: bool,
    /// Relayed from chunk 0 (so `relayed_bytes` measures the answer so far).
    from_start: bool,
    /// The attempt the chunks of a requested fill belong to.
    fill_attempt: u32,
}

/// The chunks in `events`, first copy of each `seq`.
pub fn chunks_by_seq(events: &[TaskEvent]) -> BTreeMap<u64, &TokenChunk> {
    let mut chunks = BTreeMap::new();
    for e in events {
        if let TaskEvent::Chunk(c) = e {
            chunks.entry(c.seq).or_insert(c);
        }
    }
    chunks
}

impl From<TokenChunk> for Relayed {
    fn from(c: TokenChunk) -> Self {
        Relayed::Text { seq: c.seq, text: c.text, logprobs: c.logprobs, tool_calls: c.tool_calls }
    }
}

/// Text already streamed for a task, and the `seq` to continue from.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Prefix {
    /// The text of chunks `0..next_seq`.
    pub text: String,
    /// The first chunk not streamed.
    pub next_seq: u64,
    /// The log probabilities of those chunks' tokens, when the task asked for them.
    pub logprobs: Vec<bitinglip_bus_schema::TokenLogprob>,
}

/// What earlier attempts streamed: chunks 0, 1, 2, … in `seq` order up to the first gap.
/// A new attempt continues at `next_seq`.
///
/// A chunk counts only when the attempt that owned its `seq` wrote it: each attempt's
/// `started` event says where it took over (`resume_from_seq`), so `seq` belongs to the
/// latest attempt that started at or before it. A late chunk of an attempt that was
/// handed on, or a chunk of an attempt that never started (forged), never becomes the
/// next attempt's prompt.
pub fn prefix_of(events: &[TaskEvent]) -> Prefix {
    let mut starts: BTreeMap<u32, u64> = BTreeMap::new();
    for e in events {
        if let TaskEvent::Started(s) = e {
            starts.entry(s.attempt).or_insert(s.resume_from_seq);
        }
    }
    let owner = |seq: u64| starts.iter().filter(|(_, from)| **from <= seq).map(|(attempt, _)| *attempt).max();
    let mut chunks = BTreeMap::new();
    for e in events {
        if let TaskEvent::Chunk(c) = e {
            if owner(c.seq) == Some(c.attempt) {
                chunks.entry(c.seq).or_insert(c);
            }
        }
    }
    let mut prefix = Prefix::default();
    for (seq, c) in chunks {
        if seq != prefix.next_seq {
            break;
        }
        prefix.text.push_str(&c.text);
        prefix.logprobs.extend(c.logprobs.iter().cloned());
        prefix.next_seq += 1;
    }
    prefix
}

impl Sequencer {
    /// Relays chunks from `next_seq` on (everything when 0).
    pub fn from_seq(next_seq: u64) -> Self {
        Self { next_seq, from_start: next_seq == 0, ..Self::default() }
    }

    /// Queues events read back from the stream, ahead of live ones.
    pub fn push_stored(&mut self, events: impl IntoIterator<Item = TaskEvent>) {
        self.backlog.extend(events);
    }

    /// The next queued event, if any (handle it before waiting for a live one).
    pub fn pop_backlog(&mut self) -> Option<TaskEvent> {
        self.backlog.pop_front()
    }

    /// What is due before any further event: the end held back behind a last chunk.
    pub fn take_pending(&mut self) -> Option<Relayed> {
        self.pending_done.take().map(|done| self.end(Relayed::Done(done)))
    }

    /// True once `completed` or `failed` was relayed.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Handles one event; `filled` is set when handling it again after a gap's fill.
    pub fn handle(&mut self, event: TaskEvent, filled: bool) -> Handled {
        match event {
            TaskEvent::Started(s) => {
                if s.attempt <= self.attempt {
                    return Handled::Skip;
                }
                // The new attempt continues at `resume_from_seq`: anything between what
                // we have and that point was published and stored.
                if !filled && s.resume_from_seq > self.next_seq {
                    return self.gap(s.resume_from_seq, s.attempt, TaskEvent::Started(s));
                }
                self.attempt = s.attempt;
                Handled::Relay(Relayed::Started { attempt: s.attempt, resume_from_seq: s.resume_from_seq })
            }
            TaskEvent::Chunk(c) => {
                if c.attempt < self.attempt || c.seq < self.next_seq {
                    return Handled::Skip;
                }
                if !filled && c.seq > self.next_seq {
                    return self.gap(c.seq, c.attempt, TaskEvent::Chunk(c));
                }
                self.attempt = self.attempt.max(c.attempt);
                if let Some(r) = self.backlog_text() {
                    // Text read back for the gap goes first; this chunk follows it.
                    self.backlog.push_front(TaskEvent::Chunk(c));
                    return Handled::Relay(r);
                }
                if c.seq != self.next_seq {
                    tracing::warn!(task.id = %c.task_id, expected = self.next_seq, got = c.seq, "gap in task events");
                }
                self.next_seq = c.seq + 1;
                self.relayed_bytes += c.text.len();
                Handled::Relay(c.into())
            }
            TaskEvent::Completed(done) => {
                if done.attempt < self.attempt {
                    return Handled::Skip;
                }
                if done.chunks > self.next_seq {
                    if !filled {
                        return self.gap(done.chunks, done.attempt, TaskEvent::Completed(done));
                    }
                    // Chunks we have not relayed: send them, then this.
                    if let Some(r) = self.backlog_text() {
                        let at = self
                            .backlog
                            .iter()
                            .position(|e| !matches!(e, TaskEvent::Chunk(_)))
                            .unwrap_or(self.backlog.len());
                        self.backlog.insert(at, TaskEvent::Completed(done));
                        return Handled::Relay(r);
                    }
                }
                Handled::Relay(self.complete(done))
            }
            TaskEvent::Failed(f) => {
                if f.attempt < self.attempt {
                    return Handled::Skip;
                }
                Handled::Relay(self.end(Relayed::Failed(f.error)))
            }
        }
    }

    /// Asks for the stored chunks before `until`; they will count as `attempt`'s (or the
    /// current one's, if newer), so the attempt that continues them relays them.
    fn gap(&mut self, until: u64, attempt: u32, event: TaskEvent) -> Handled {
        self.fill_attempt = self.attempt.max(attempt);
        Handled::Gap { until, event }
    }

    /// Puts the stored chunks `next_seq..until` at the front of the backlog.
    pub fn fill_gap(&mut self, stored: &[TaskEvent], until: u64) {
        let chunks = chunks_by_seq(stored);
        let task_id = stored.iter().find_map(|e| match e {
            TaskEvent::Chunk(c) => Some(c.task_id.clone()),
            _ => None,
        });
        let Some(task_id) = task_id else { return };
        let missing: Vec<TaskEvent> = chunks
            .range(self.next_seq..until)
            .map(|(_, chunk)| {
                TaskEvent::Chunk(TokenChunk {
                    task_id: task_id.clone(),
                    attempt: self.fill_attempt.max(self.attempt),
                    ..(*chunk).clone()
                })
            })
            .collect();
        for e in missing.into_iter().rev() {
            self.backlog.push_front(e);
        }
    }

    /// What the status record says when events went quiet: a final record ends the
    /// watch (a lost final event never leaves a client waiting).
    pub fn on_record(&mut self, record: TaskRecord) -> Option<Relayed> {
        match record.state {
            TaskState::Completed => record.result.map(|done| self.complete(done)),
            TaskState::Failed | TaskState::Cancelled => Some(self.end(Relayed::Failed(
                record.error.unwrap_or_else(|| WireError::new(ErrorKind::Internal, "task failed")),
            ))),
            TaskState::Queued | TaskState::Running => None,
        }
    }

    /// Ends the watch with `r`.
    pub fn end(&mut self, r: Relayed) -> Relayed {
        self.finished = true;
        r
    }

    fn backlog_text(&mut self) -> Option<Relayed> {
        match self.backlog.front() {
            Some(TaskEvent::Chunk(c)) if c.seq == self.next_seq => {
                let Some(TaskEvent::Chunk(c)) = self.backlog.pop_front() else { return None };
                self.next_seq = c.seq + 1;
                self.relayed_bytes += c.text.len();
                Some(c.into())
            }
            _ => None,
        }
    }

    /// Finishes with `done`; text the events never brought (and the events stream no
    /// longer holds) is sent first, when this watch saw the answer from its start.
    fn complete(&mut self, done: TaskCompleted) -> Relayed {
        if self.from_start
            && self.next_seq < done.chunks
            && self.relayed_bytes < done.text.len()
            && done.text.is_char_boundary(self.relayed_bytes)
        {
            let missing = done.text[self.relayed_bytes..].to_string();
            self.relayed_bytes = done.text.len();
            let seq = self.next_seq;
            self.next_seq = done.chunks.max(seq + 1);
            self.pending_done = Some(done);
            return Relayed::Text { seq, text: missing, logprobs: vec![], tool_calls: vec![] };
        }
        self.end(Relayed::Done(done))
    }
}

#[cfg(test)]
mod tests {
    use bitinglip_bus_schema::{FinishReason, TaskFailed, TaskId, TaskStarted, Usage};

    use super::*;

    fn id() -> TaskId {
        TaskId::parse("t1").unwrap()
    }

    fn chunk(attempt: u32, seq: u64, text: &str) -> TaskEvent {
        TaskEvent::Chunk(TokenChunk::text(id(), attempt, seq, text.into()))
    }

    fn started(attempt: u32, resume_from_seq: u64) -> TaskEvent {
        TaskEvent::Started(TaskStarted { task_id: id(), attempt, worker: "w".into(), resume_from_seq })
    }

    fn completed(attempt: u32, text: &str, chunks: u64) -> TaskEvent {
        TaskEvent::Completed(TaskCompleted {
            task_id: id(),
            attempt,
            text: text.into(),
            finish_reason: FinishReason::Stop,
            usage: Usage::default(),
            chunks,
            text_object: None,
            tool_calls: vec![],
            logprobs: vec![],
            embeddings: vec![],
            parts_object: None,
        })
    }

    /// Runs the machine over live `events`, answering gaps from `stored`, and returns
    /// everything relayed.
    fn run(seq: &mut Sequencer, events: Vec<TaskEvent>, stored: &[TaskEvent]) -> Vec<Relayed> {
        let mut live: VecDeque<TaskEvent> = events.into();
        let mut out = Vec::new();
        loop {
            if let Some(r) = seq.take_pending() {
                out.push(r);
            }
            if seq.finished() {
                return out;
            }
            let Some(event) = seq.pop_backlog().or_else(|| live.pop_front()) else { return out };
            let handled = match seq.handle(event, false) {
                Handled::Gap { until, event } => {
                    seq.fill_gap(stored, until);
                    seq.handle(event, true)
                }
                other => other,
            };
            match handled {
                Handled::Relay(r) => out.push(r),
                Handled::Skip => {}
                Handled::Gap { .. } => panic!("a filled event asks for no second fill"),
            }
        }
    }

    fn text(relayed: &[Relayed]) -> String {
        relayed
            .iter()
            .filter_map(|r| match r {
                Relayed::Text { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn relays_in_order_and_drops_repeats() {
        let mut seq = Sequencer::from_seq(0);
        let out = run(
            &mut seq,
            vec![started(1, 0), chunk(1, 0, "a"), chunk(1, 0, "a"), chunk(1, 1, "b"), completed(1, "ab", 2)],
            &[],
        );
        assert_eq!(text(&out), "ab");
        assert!(matches!(out.last(), Some(Relayed::Done(_))));
        assert!(seq.finished());
    }

    #[test]
    fn a_gap_is_filled_from_the_stored_events_before_the_chunk_after_it() {
        let stored = vec![chunk(1, 0, "a"), chunk(1, 1, "b"), chunk(1, 2, "c")];
        let mut seq = Sequencer::from_seq(0);
        let out = run(&mut seq, vec![chunk(1, 0, "a"), chunk(1, 2, "c"), completed(1, "abc", 3)], &stored);
        let seqs: Vec<u64> = out
            .iter()
            .filter_map(|r| match r {
                Relayed::Text { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, [0, 1, 2]);
        assert_eq!(text(&out), "abc");
    }

    #[test]
    fn a_new_attempt_continues_after_what_the_dead_one_streamed_and_stale_events_are_dropped() {
        let stored = vec![chunk(1, 0, "a"), chunk(1, 1, "b")];
        let mut seq = Sequencer::from_seq(0);
        let out = run(
            &mut seq,
            vec![
                started(1, 0),
                chunk(1, 0, "a"),
                // Chunk 1 of attempt 1 was lost on the way; attempt 2 resumes after it.
                started(2, 2),
                chunk(1, 2, "stale"),
                chunk(2, 2, "c"),
                completed(1, "stale", 9),
                completed(2, "abc", 3),
            ],
            &stored,
        );
        assert_eq!(text(&out), "abc");
        assert!(out.contains(&Relayed::Started { attempt: 2, resume_from_seq: 2 }));
        assert!(matches!(out.last(), Some(Relayed::Done(d)) if d.attempt == 2));
    }

    #[test]
    fn completed_past_the_relayed_chunks_reads_them_back_first() {
        let stored = vec![chunk(1, 0, "a"), chunk(1, 1, "b")];
        let mut seq = Sequencer::from_seq(0);
        let out = run(&mut seq, vec![completed(1, "ab", 2)], &stored);
        assert_eq!(text(&out), "ab");
        assert!(matches!(out.last(), Some(Relayed::Done(_))));
    }

    #[test]
    fn text_the_stream_no_longer_holds_comes_from_the_completed_event() {
        let mut seq = Sequencer::from_seq(0);
        let out = run(&mut seq, vec![chunk(1, 0, "a"), completed(1, "abc", 3)], &[]);
        assert_eq!(text(&out), "abc");
        assert!(matches!(out.last(), Some(Relayed::Done(_))));
    }

    #[test]
    fn resuming_mid_answer_relays_only_what_follows() {
        let stored = vec![chunk(1, 0, "a"), chunk(1, 1, "b"), chunk(1, 2, "c")];
        let mut seq = Sequencer::from_seq(2);
        seq.push_stored(stored.clone());
        let out = run(&mut seq, vec![completed(1, "abc", 3)], &stored);
        assert_eq!(text(&out), "c");
    }

    #[test]
    fn a_failure_ends_the_watch_and_a_final_record_ends_a_quiet_one() {
        let mut seq = Sequencer::from_seq(0);
        let error = WireError::new(ErrorKind::Engine, "boom");
        let failed = TaskEvent::Failed(TaskFailed { task_id: id(), attempt: 1, error: error.clone() });
        let out = run(&mut seq, vec![chunk(1, 0, "a"), failed, chunk(1, 1, "late")], &[]);
        assert_eq!(out.last(), Some(&Relayed::Failed(error)));
        assert_eq!(text(&out), "a");

        let mut quiet = Sequencer::from_seq(0);
        let mut record = TaskRecord::queued(id(), "m".into(), Default::default(), 1);
        assert_eq!(quiet.on_record(record.clone()), None);
        record.state = TaskState::Cancelled;
        assert!(matches!(quiet.on_record(record), Some(Relayed::Failed(_))));
        assert!(quiet.finished());
    }

    #[test]
    fn the_prefix_stops_at_the_first_gap() {
        let events = vec![started(1, 0), chunk(1, 0, "a"), started(2, 1), chunk(2, 1, "b"), chunk(2, 3, "d")];
        assert_eq!(prefix_of(&events), Prefix { text: "ab".into(), next_seq: 2, logprobs: vec![] });
        assert_eq!(prefix_of(&[]), Prefix::default());
    }

    #[test]
    fn the_prefix_takes_chunks_only_from_the_attempt_that_owned_them() {
        // Attempt 1 wrote 0 and 1, attempt 2 took over at 2; attempt 1 woke up late and
        // wrote 2 and 3 anyway; someone forged attempt 7's chunk 4 (7 never started).
        let events = vec![
            started(1, 0),
            chunk(1, 0, "a"),
            chunk(1, 1, "b"),
            started(2, 2),
            chunk(1, 2, "STALE"),
            chunk(2, 2, "c"),
            chunk(1, 3, "STALE"),
            chunk(2, 3, "d"),
            chunk(7, 4, "FORGED"),
        ];
        assert_eq!(prefix_of(&events), Prefix { text: "abcd".into(), next_seq: 4, logprobs: vec![] });
        // The stale copy arriving first does not win either.
        let events = vec![started(1, 0), chunk(1, 0, "a"), started(2, 1), chunk(1, 1, "STALE"), chunk(2, 1, "b")];
        assert_eq!(prefix_of(&events), Prefix { text: "ab".into(), next_seq: 2, logprobs: vec![] });
        // Chunks with no attempt started at all are nobody's.
        assert_eq!(prefix_of(&[chunk(1, 0, "a")]), Prefix::default());
    }
}
