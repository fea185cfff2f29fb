//! Cache-affinity routing: which worker an interactive task is pinned to, so that a
//! conversation's turns reach the engine whose prefix cache holds their prompt.
//!
//! mistral.rs reports no cache events, so the route is predicted, not observed: every
//! task of one conversation has the same key (the request's `prompt_cache_key`, else the
//! prompt's beginning), and rendezvous hashing (highest random weight) of the key over the
//! model's ready workers picks the same worker for all of them. A worker joining or
//! leaving moves only the keys it wins or held. A worker with no free sequence slot (as
//! its last heartbeat says) is passed over for the key's next choice; when none has room,
//! the task goes to the shared queue, for whichever worker frees a slot first. A pinned
//! task whose worker fills up before it is pulled is released by that worker to the
//! shared queue (see the worker's fetcher); one whose worker dies is taken over by the
//! model's other workers.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use bitinglip_bus_schema::{ChatParams, Priority, WorkerInfo, WorkerState};
use bitinglip_config::RoutingMode;

/// How much of a prompt (bytes) makes its key when the request names no
/// `prompt_cache_key`: a conversation's later turns begin with the same bytes.
const KEY_PREFIX_BYTES: usize = 1024;

/// The affinity key of a task (pure): the hash of its `prompt_cache_key`, else of the
/// messages up to the first user message (system prompt and opening question: the same
/// in every turn of a conversation), at most [`KEY_PREFIX_BYTES`], else of a raw prompt's
/// first [`KEY_PREFIX_BYTES`]. `None` for tasks that keep no prompt in a cache
/// (embeddings).
pub(super) fn affinity_key(chat: &ChatParams) -> Option<u64> {
    if let Some(key) = &chat.prompt_cache_key {
        return Some(fnv1a(&[b"key\0", key.as_bytes()]));
    }
    if !chat.input.is_empty() {
        return None;
    }
    if let Some(prompt) = &chat.prompt {
        return Some(fnv1a(&[b"prompt\0", cut(prompt, KEY_PREFIX_BYTES).as_bytes()]));
    }
    let mut text = String::new();
    for message in &chat.messages {
        text.push_str(&message.role);
        text.push('\0');
        text.push_str(&message.content);
        text.push('\0');
        if message.role == "user" || text.len() >= KEY_PREFIX_BYTES {
            break;
        }
    }
    if text.is_empty() {
        return None;
    }
    Some(fnv1a(&[b"chat\0", cut(&text, KEY_PREFIX_BYTES).as_bytes()]))
}

/// `text`'s first `max` bytes, cut at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// How many sequences more than the least loaded ready worker a key's worker may run and
/// still get the key's task: sticky while the load is about even, balanced when one
/// worker gets far more than its share (a burst of distinct prompts).
const LOAD_SLACK: u32 = 2;

/// Where to queue a task (pure): the id of the worker it is pinned to, or `None` for the
/// shared queue (shared mode, batch class, no key, or no ready worker with room). A
/// worker's load is what its heartbeat says it runs plus `recent(worker)`, the tasks this
/// task manager pinned to it since that heartbeat.
pub(super) fn pin(
    mode: RoutingMode,
    priority: Priority,
    key: Option<u64>,
    workers: &[WorkerInfo],
    recent: impl Fn(&str) -> u32,
) -> Option<String> {
    if mode == RoutingMode::Shared || priority != Priority::Interactive {
        return None;
    }
    let key = key?;
    let mut ranked: Vec<(u64, &WorkerInfo, u32)> = workers
        .iter()
        .filter(|w| w.state == WorkerState::Ready && w.takes_pinned)
        .map(|w| (weight(key, &w.worker_id), w, w.in_flight + recent(&w.worker_id)))
        .collect();
    let least = ranked.iter().map(|(_, _, load)| *load).min()?;
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.worker_id.cmp(&b.1.worker_id)));
    ranked
        .into_iter()
        .find(|(_, w, load)| *load < w.max_sequences.max(1) && *load <= least + LOAD_SLACK)
        .map(|(_, w, _)| w.worker_id.clone())
}

/// The tasks this task manager pinned to each worker that the worker's heartbeat does not
/// count yet: each pin is remembered with the time of the worker's heartbeat when it was
/// made, and counts until a newer heartbeat comes (a worker writes one at once when it
/// claims a task), or for [`RECENT`] at most. Times are compared in the worker's clock.
#[derive(Default)]
pub(super) struct RecentPins(Mutex<HashMap<String, VecDeque<(Instant, u64)>>>);

/// Longest a pin counts as not yet in its worker's heartbeat.
const RECENT: Duration = Duration::from_secs(1);

impl RecentPins {
    /// Pins to `worker` made since its heartbeat of `heartbeat_ms`.
    pub(super) fn count(&self, worker: &str, heartbeat_ms: u64) -> u32 {
        let Ok(mut pins) = self.0.lock() else { return 0 };
        let Some(times) = pins.get_mut(worker) else { return 0 };
        times.retain(|(at, seen)| at.elapsed() <= RECENT && *seen >= heartbeat_ms);
        times.len() as u32
    }

    /// Remembers a pin to `worker`, whose last heartbeat was at `heartbeat_ms`; forgets
    /// workers with no pin left to count.
    pub(super) fn add(&self, worker: &str, heartbeat_ms: u64) {
        let Ok(mut pins) = self.0.lock() else { return };
        pins.retain(|_, t| t.back().is_some_and(|(at, _)| at.elapsed() <= RECENT));
        pins.entry(worker.to_string()).or_default().push_back((Instant::now(), heartbeat_ms));
    }
}

/// The rendezvous weight of `worker` for `key`: a hash of both, the same in every task
/// manager of every build (FNV-1a, then a 64-bit finalizer so near keys spread).
fn weight(key: u64, worker: &str) -> u64 {
    let mut x = key ^ fnv1a(&[worker.as_bytes()]);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// FNV-1a over the parts, in order.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bitinglip_bus_schema::{ChatMessage, EngineKind};

    use super::*;

    fn worker(id: &str, in_flight: u32) -> WorkerInfo {
        WorkerInfo {
            worker_id: id.into(),
            model: "m".into(),
            engine: EngineKind::Echo,
            max_sequences: 4,
            in_flight,
            state: WorkerState::Ready,
            running: vec![],
            last_used_ms: 0,
            placed: true,
            gpus: vec![],
            prefix_cache: Default::default(),
            takes_pinned: true,
            served: Vec::new(),
            first_token_p95_ms: None,
        }
    }

    fn chat(messages: &[(&str, &str)]) -> ChatParams {
        ChatParams {
            model: "m".into(),
            messages: messages.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect(),
            ..ChatParams::default()
        }
    }

    #[test]
    fn a_conversations_turns_share_a_key_and_conversations_differ() {
        let first = chat(&[("system", "be brief"), ("user", "tell me about rust")]);
        let second = chat(&[
            ("system", "be brief"),
            ("user", "tell me about rust"),
            ("assistant", "a language"),
            ("user", "and its borrow checker?"),
        ]);
        let other = chat(&[("system", "be brief"), ("user", "tell me about go")]);
        assert_eq!(affinity_key(&first), affinity_key(&second));
        assert_ne!(affinity_key(&first), affinity_key(&other));
        // A named key wins over the prompt.
        let mut keyed = other.clone();
        keyed.prompt_cache_key = Some("conversation-7".into());
        let mut keyed_too = first.clone();
        keyed_too.prompt_cache_key = Some("conversation-7".into());
        assert_eq!(affinity_key(&keyed), affinity_key(&keyed_too));
        // Embeddings keep nothing in a prefix cache.
        let embed = ChatParams { input: vec!["x".into()], ..ChatParams::default() };
        assert_eq!(affinity_key(&embed), None);
        // A long first message: only its first KEY_PREFIX_BYTES count, cut on a character.
        let long = "é".repeat(KEY_PREFIX_BYTES);
        assert!(affinity_key(&chat(&[("user", &long)])).is_some());
    }

    #[test]
    fn the_same_key_goes_to_the_same_worker_and_keys_spread() {
        let workers: Vec<_> = (0..3).map(|i| worker(&format!("n{i}-w0"), 0)).collect();
        let mut per_worker: HashMap<String, u32> = HashMap::new();
        for k in 0..3000u64 {
            let key = fnv1a(&[&k.to_le_bytes()]);
            let a = pin(RoutingMode::Affinity, Priority::Interactive, Some(key), &workers, |_| 0).unwrap();
            let b = pin(RoutingMode::Affinity, Priority::Interactive, Some(key), &workers, |_| 0).unwrap();
            assert_eq!(a, b);
            *per_worker.entry(a).or_default() += 1;
        }
        for (w, n) in &per_worker {
            assert!((800..1200).contains(n), "{w} got {n} of 3000 keys");
        }
    }

    #[test]
    fn a_worker_leaving_moves_only_its_keys_and_a_full_one_passes_to_the_next_choice() {
        let three: Vec<_> = (0..3).map(|i| worker(&format!("n{i}-w0"), 0)).collect();
        let two = &three[..2];
        for k in 0..1000u64 {
            let key = fnv1a(&[&k.to_le_bytes()]);
            let before = pin(RoutingMode::Affinity, Priority::Interactive, Some(key), &three, |_| 0).unwrap();
            let after = pin(RoutingMode::Affinity, Priority::Interactive, Some(key), two, |_| 0).unwrap();
            if before != "n2-w0" {
                assert_eq!(before, after, "key {k} moved though its worker stayed");
            }
        }
        // Its first choice full: the next one; all full: the shared queue.
        let key = fnv1a(&[b"k"]);
        let first = pin(RoutingMode::Affinity, Priority::Interactive, Some(key), &three, |_| 0).unwrap();
        let mut full = three.clone();
        full.iter_mut().find(|w| w.worker_id == first).unwrap().in_flight = 4;
        let next = pin(RoutingMode::Affinity, Priority::Interactive, Some(key), &full, |_| 0).unwrap();
        assert_ne!(next, first);
        full.iter_mut().for_each(|w| w.in_flight = 4);
        assert_eq!(pin(RoutingMode::Affinity, Priority::Interactive, Some(key), &full, |_| 0), None);
    }

    #[test]
    fn a_key_stays_on_a_worker_a_little_busier_than_the_rest_but_not_on_a_far_busier_one() {
        let mut workers: Vec<_> = (0..3).map(|i| worker(&format!("n{i}-w0"), 0)).collect();
        workers.iter_mut().for_each(|w| w.max_sequences = 8);
        let key = fnv1a(&[b"conversation"]);
        let owner = pin(RoutingMode::Affinity, Priority::Interactive, Some(key), &workers, |_| 0).unwrap();
        let at = |load: u32, recent: u32| {
            let mut w = workers.clone();
            w.iter_mut().find(|w| w.worker_id == owner).unwrap().in_flight = load;
            let owner_id = owner.clone();
            pin(
                RoutingMode::Affinity,
                Priority::Interactive,
                Some(key),
                &w,
                move |id| if id == owner_id { recent } else { 0 },
            )
        };
        assert_eq!(at(2, 0).unwrap(), owner, "two more than the least loaded: still sticky");
        assert_ne!(at(3, 0).unwrap(), owner, "three more: balanced");
        assert_ne!(at(1, 2).unwrap(), owner, "pins not in a heartbeat yet count too");
        let recent = RecentPins::default();
        recent.add("a", 10);
        recent.add("a", 10);
        assert_eq!((recent.count("a", 10), recent.count("b", 10)), (2, 0));
        // A newer heartbeat counts them itself.
        assert_eq!(recent.count("a", 11), 0);
    }

    #[test]
    fn shared_mode_batch_tasks_draining_and_old_workers_are_never_pinned() {
        let mut workers = vec![worker("a", 0)];
        assert_eq!(pin(RoutingMode::Shared, Priority::Interactive, Some(1), &workers, |_| 0), None);
        assert_eq!(pin(RoutingMode::Affinity, Priority::Batch, Some(1), &workers, |_| 0), None);
        assert_eq!(pin(RoutingMode::Affinity, Priority::Interactive, None, &workers, |_| 0), None);
        workers[0].state = WorkerState::Draining;
        assert_eq!(pin(RoutingMode::Affinity, Priority::Interactive, Some(1), &workers, |_| 0), None);
        workers[0].state = WorkerState::Ready;
        workers[0].takes_pinned = false;
        assert_eq!(pin(RoutingMode::Affinity, Priority::Interactive, Some(1), &workers, |_| 0), None);
    }
}
