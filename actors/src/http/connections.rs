//! The open HTTP connections of one listener: who is idle, since when, and which one
//! gives way when the listener is at its cap.
//!
//! Rules (each has a test below):
//! 1. A connection is *busy* while one of its requests is in progress: from the moment its
//!    headers are read until its response body is finished or dropped. Otherwise it is
//!    idle, since it opened or since its last request ended.
//! 2. A connection that has not begun a request within the header timeout of opening is
//!    closed, whatever it sent (nothing, half an HTTP/2 preface, a preface then silence).
//! 3. A connection idle for the idle timeout after a request is closed.
//! 4. At the cap, the connection that gives way is one that never spoke, oldest first,
//!    else the one idle longest; a busy connection never does. With none idle, the new
//!    connection is the one refused.
//! 5. A stream whose client stops reading is dropped: when a frame of an event stream was
//!    handed to the connection and the stream has not been asked for the next one within
//!    the write timeout (the client's buffers are full), the connection is closed.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

/// One open connection's state, shared by its task, its requests and the registry.
#[derive(Debug)]
pub(crate) struct Conn {
    id: u64,
    base: Instant,
    /// Requests in progress.
    busy: AtomicUsize,
    /// Whether a request ever began.
    spoke: AtomicBool,
    /// When it last became idle, in ms since `base`.
    idle_since_ms: AtomicU64,
    /// Each request in progress: since when (ms since `base`, plus 1; 0 for none) a frame
    /// of it has waited for the client to take it (rule 5).
    waiting: Mutex<Vec<(u64, Arc<AtomicU64>)>>,
    next_request: AtomicU64,
    /// Told to close (to make room, or because the server stops).
    pub(crate) close: Notify,
}

/// Held while a request is in progress (rule 1).
#[derive(Debug)]
pub(crate) struct Busy {
    conn: Arc<Conn>,
    id: u64,
    waiting: Arc<AtomicU64>,
}

impl Busy {
    /// A frame was handed to the connection (rule 5).
    pub(crate) fn handed(&self) {
        self.waiting.store(self.conn.base.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
    }

    /// The connection asked for the next frame: what it was handed is taken.
    pub(crate) fn asked(&self) {
        self.waiting.store(0, Ordering::Relaxed);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn.lock_waiting().retain(|(id, _)| *id != self.id);
        self.conn.idle_since_ms.store(self.conn.base.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.conn.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a connection's task does when its timer fires.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// Close it gracefully now: idle after a request (rule 3).
    Close,
    /// Drop it now: silent since it opened (rule 2), or its client stopped reading (rule 5).
    Drop,
    /// Look again after this long.
    Wait(Duration),
}

/// The timeouts rules 2, 3 and 5 apply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) header: Duration,
    pub(crate) idle: Duration,
    pub(crate) write: Duration,
}

impl Conn {
    /// A request begins (rule 1).
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.spoke.store(true, Ordering::Relaxed);
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let waiting = Arc::new(AtomicU64::new(0));
        self.lock_waiting().push((id, waiting.clone()));
        Busy { conn: self.clone(), id, waiting }
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Arc<AtomicU64>)>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Since when (time since it opened) the oldest frame handed over has waited.
    fn waiting_since(&self) -> Option<Duration> {
        let oldest = self.lock_waiting().iter().map(|(_, w)| w.load(Ordering::Relaxed)).filter(|w| *w > 0).min()?;
        Some(Duration::from_millis(oldest - 1))
    }

    /// Whether no request is in progress.
    pub(crate) fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }

    /// Whether a request ever began.
    pub(crate) fn spoke(&self) -> bool {
        self.spoke.load(Ordering::Relaxed)
    }

    /// Rules 2, 3 and 5, as of `now` (time since the connection opened).
    pub(crate) fn due(&self, now: Duration, t: Timeouts) -> Due {
        let left = |since: Duration, limit: Duration| (since + limit).checked_sub(now).filter(|l| !l.is_zero());
        if !self.is_idle() {
            return match self.waiting_since() {
                Some(since) => left(since, t.write).map_or(Due::Drop, Due::Wait),
                None => Due::Wait(t.write),
            };
        }
        if self.spoke() {
            let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
            left(since, t.idle).map_or(Due::Close, Due::Wait)
        } else {
            left(Duration::ZERO, t.header).map_or(Due::Drop, Due::Wait)
        }
    }

    /// Time since it opened.
    pub(crate) fn age(&self) -> Duration {
        self.base.elapsed()
    }
}

/// The registry of one listener's open connections.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Connections {
    /// Registers a connection that just opened.
    pub(crate) fn open(&self) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            base: Instant::now(),
            busy: AtomicUsize::new(0),
            spoke: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            waiting: Mutex::default(),
            next_request: AtomicU64::new(0),
            close: Notify::new(),
        });
        self.lock().insert(conn.id, conn.clone());
        conn
    }

    /// Forgets a connection that closed.
    pub(crate) fn closed(&self, conn: &Conn) {
        self.lock().remove(&conn.id);
    }

    /// How many are open.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Makes room for one more below `max` (rule 4): tells the connection that gives way
    /// to close and forgets it. False when every open connection is busy.
    pub(crate) fn make_room(&self, max: usize) -> bool {
        let mut open = self.lock();
        if open.len() < max {
            return true;
        }
        let victim = pick_victim(open.values().map(|c| Candidate {
            id: c.id,
            idle: c.is_idle(),
            spoke: c.spoke(),
            idle_for: c.age().saturating_sub(Duration::from_millis(c.idle_since_ms.load(Ordering::Relaxed))),
        }));
        match victim.and_then(|id| open.remove(&id)) {
            Some(conn) => {
                conn.close.notify_one();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        // A panic while holding this lock leaves the map consistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What rule 4 looks at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub(crate) id: u64,
    pub(crate) idle: bool,
    pub(crate) spoke: bool,
    pub(crate) idle_for: Duration,
}

/// Rule 4: never-spoken before spoken, then longest idle; never a busy one.
pub(crate) fn pick_victim(candidates: impl Iterator<Item = Candidate>) -> Option<u64> {
    candidates.filter(|c| c.idle).max_by_key(|c| (!c.spoke, c.idle_for, std::cmp::Reverse(c.id))).map(|c| c.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);
    const WRITE: Duration = Duration::from_secs(30);
    const T: Timeouts = Timeouts { header: HEADER, idle: IDLE, write: WRITE };

    #[test]
    fn rule_1_a_request_makes_it_busy_until_its_guard_is_dropped() {
        let conns = Connections::default();
        let c = conns.open();
        assert!(c.is_idle() && !c.spoke());
        let busy = c.begin();
        assert!(!c.is_idle() && c.spoke());
        drop(busy);
        assert!(c.is_idle());
    }

    #[test]
    fn rule_2_silence_before_a_request_closes_it_at_the_header_timeout() {
        let c = Connections::default().open();
        assert_eq!(c.due(Duration::from_secs(3), T), Due::Wait(Duration::from_secs(7)));
        assert_eq!(c.due(HEADER, T), Due::Drop);
    }

    #[test]
    fn rule_3_idle_after_a_request_closes_it_at_the_idle_timeout_and_busy_never() {
        let c = Connections::default().open();
        let busy = c.begin();
        assert_eq!(c.due(Duration::from_secs(600), T), Due::Wait(WRITE));
        drop(busy);
        let ended = Duration::from_millis(c.idle_since_ms.load(Ordering::Relaxed));
        assert!(matches!(c.due(ended + HEADER, T), Due::Wait(_)), "the header timeout no longer applies");
        assert_eq!(c.due(ended + IDLE, T), Due::Close);
    }

    #[test]
    fn rule_5_a_frame_the_client_does_not_take_within_the_write_timeout_drops_it() {
        let c = Connections::default().open();
        let slow = c.begin();
        let steady = c.begin();
        slow.handed();
        let at = c.waiting_since().expect("a frame waits");
        // The other request asking for more does not hide the one that waits.
        steady.handed();
        steady.asked();
        assert!(matches!(c.due(at + WRITE / 2, T), Due::Wait(_)));
        assert_eq!(c.due(at + WRITE, T), Due::Drop);
        // Taken in time: nothing waits.
        slow.asked();
        assert_eq!(c.due(at + WRITE * 10, T), Due::Wait(WRITE));
        slow.handed();
        drop(slow);
        assert_eq!(c.waiting_since(), None, "a finished request waits for nothing");
    }

    #[test]
    fn rule_4_the_silent_give_way_first_then_the_longest_idle_never_the_busy() {
        let c = |id, idle, spoke, secs| Candidate { id, idle, spoke, idle_for: Duration::from_secs(secs) };
        let all = [c(1, true, true, 50), c(2, true, false, 1), c(3, false, true, 99), c(4, true, false, 5)];
        assert_eq!(pick_victim(all.into_iter()), Some(4));
        assert_eq!(pick_victim([c(1, true, true, 50), c(5, true, true, 70)].into_iter()), Some(5));
        assert_eq!(pick_victim([c(3, false, true, 99)].into_iter()), None);
    }

    #[test]
    fn rule_4_at_the_cap_room_is_made_only_by_closing_an_idle_one() {
        let conns = Connections::default();
        let a = conns.open();
        let _busy = a.begin();
        let b = conns.open();
        assert!(conns.make_room(3), "below the cap");
        assert!(conns.make_room(2));
        assert_eq!(conns.len(), 1, "the idle one was forgotten");
        use futures::FutureExt as _;
        assert!(b.close.notified().now_or_never().is_some(), "b was told to close");
        assert!(!conns.make_room(1), "only a busy one is left");
    }
}
