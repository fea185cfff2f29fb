//! Autoscaling: the leading cluster manager sets each autoscaled deployment's replica
//! count from the load it reads every `cluster.autoscale_interval`, and placement (the
//! next reconcile) decides where the replicas go.
//!
//! The signals are the ones the cluster already keeps: the model's queue (tasks waiting
//! and running, the age of the oldest waiting one, from the consumers) and its workers'
//! heartbeats (replicas serving, sequences each runs, time to first token at p95 over
//! their last 10 s). A decision, in [`decide`], is:
//! - **up** by at least one when the signal is over the target, and to as many as the
//!   waiting and running tasks fill at the replicas' batch size (Knative's concurrency
//!   rule); at once from zero; not again while a replica it added is still starting
//!   (the signal lags a replica's start, and growing on it would overshoot);
//! - **down** when the signal is comfortably under the target (half of it), to the
//!   replicas the load fills, but only to the most the load asked for over
//!   `cluster.scale_down_window` (Kubernetes' scale-down stabilisation), so a lull does
//!   not flap it;
//! - **to zero** (with `min_replicas` 0) after `idle_ms` with no task waiting or running.
//!
//! A replica removed drains (see the worker): it takes no new task and finishes what it
//! runs, or hands it on past `worker.drain_grace` to continue elsewhere. The decision and
//! its reason are written on the deployment (`deployments ls`). The recommendations of the
//! window are held by the leader only: a new leader starts a fresh window, which delays a
//! scale-down, never a scale-up.

use std::{
    collections::{HashMap, VecDeque},
    sync::atomic::{AtomicBool, Ordering},
};

use bitinglip_bus_schema::{Autoscale, Deployment, ScaleSignal, WireError, WorkerInfo};
use bitinglip_nats::{now_ms, store::queue::Load};

use crate::{ops::deployments, NodeContext};

/// Sequences a replica runs at once when neither its workers nor its spec say.
const DEFAULT_SEQUENCES: u32 = 4;

/// One deployment's load now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Signals {
    /// Tasks waiting in its queue.
    pub(super) waiting: u64,
    /// Tasks its workers run.
    pub(super) running: u64,
    /// Age of the oldest waiting task, ms.
    pub(super) oldest_waiting_ms: u64,
    /// The highest of its workers' time to first token at p95, ms.
    pub(super) first_token_p95_ms: Option<u64>,
    /// Replicas ready.
    pub(super) serving: u32,
    /// Sequences one replica runs at once.
    pub(super) slots: u32,
}

impl Signals {
    fn busy(&self) -> bool {
        self.waiting + self.running > 0
    }

    /// The value `signal` reads, ms: a first-token target counts the queue wait too (a task
    /// that waits has not had its first token).
    fn value(&self, signal: ScaleSignal) -> u64 {
        match signal {
            ScaleSignal::QueueWait => self.oldest_waiting_ms,
            ScaleSignal::FirstToken => self.first_token_p95_ms.unwrap_or(0).max(self.oldest_waiting_ms),
        }
    }

    /// Replicas the waiting and running tasks fill.
    fn filled(&self) -> u32 {
        let load = self.waiting + self.running;
        load.div_ceil(u64::from(self.slots.max(1))).min(u64::from(u32::MAX)) as u32
    }
}

/// The cluster's windows, ms.
#[derive(Debug, Clone, Copy)]
pub(super) struct Windows {
    /// `cluster.scale_up_window`.
    pub(super) up_ms: u64,
    /// `cluster.scale_down_window`.
    pub(super) down_ms: u64,
    /// `cluster.idle_unload`: the idle time of a deployment that names none (0: never).
    pub(super) idle_ms: u64,
}

/// What the leader remembers of one deployment between decisions.
#[derive(Debug, Default)]
pub(super) struct History {
    /// Its recommendations, oldest first: (ms, replicas).
    recs: VecDeque<(u64, u32)>,
    /// When this leader first looked at it.
    since_ms: Option<u64>,
    /// When a task last waited or ran.
    busy_ms: Option<u64>,
}

/// A change of a deployment's replicas.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Decision {
    /// Replicas after.
    pub(super) to: u32,
    /// Why, for `deployments ls`.
    pub(super) reason: String,
}

/// `4.2 s`, `2 s`.
fn secs(ms: u64) -> String {
    let text = format!("{:.1}", ms as f64 / 1000.0);
    format!("{} s", text.strip_suffix(".0").unwrap_or(&text))
}

/// The replicas `a` should have at `now` (pure but for `h`, which it updates): see the
/// module's doc. `None` keeps `current`.
pub(super) fn decide(
    a: &Autoscale,
    current: u32,
    s: &Signals,
    h: &mut History,
    now: u64,
    w: &Windows,
) -> Option<Decision> {
    let since = *h.since_ms.get_or_insert(now);
    if s.busy() || h.busy_ms.is_none() {
        h.busy_ms = Some(now);
    }
    let bounded = current.clamp(a.min_replicas, a.max_replicas);
    if bounded != current {
        let reason = format!("outside its bounds {} to {}", a.min_replicas, a.max_replicas);
        return Some(Decision { to: bounded, reason });
    }
    let value = s.value(a.signal);
    let filled = s.filled();
    let load = s.waiting + s.running;
    let floor = if s.busy() { a.min_replicas.max(1) } else { a.min_replicas };
    let mut at_once = false;
    let (rec, reason) = if current == 0 && s.busy() {
        at_once = true;
        (filled.max(1), format!("{load} task(s) waiting with no replica"))
    } else if value > a.target_ms {
        // A replica still starting: the signal has not seen it yet.
        let grow = if s.serving < current { current } else { current + 1 };
        (grow.max(filled), format!("{} {} > {}", a.signal.describe(), secs(value), secs(a.target_ms)))
    } else if !s.busy() {
        let idle = now.saturating_sub(h.busy_ms.unwrap_or(now));
        let idle_ms = a.idle_ms.unwrap_or(w.idle_ms);
        if a.min_replicas == 0 && idle_ms > 0 && idle >= idle_ms {
            at_once = true;
            (0, format!("no task for {}", secs(idle)))
        } else {
            (current.min(1), "no task waiting or running".to_string())
        }
    } else if value.saturating_mul(2) <= a.target_ms {
        let reason = format!(
            "{load} task(s) waiting or running fill {filled} replica(s) of {} sequences; {} {} < {}",
            s.slots,
            a.signal.describe(),
            secs(value),
            secs(a.target_ms)
        );
        (filled, reason)
    } else {
        (current.max(filled), String::new())
    };
    let rec = if rec == 0 && at_once { 0 } else { rec.clamp(floor, a.max_replicas) };
    h.recs.push_back((now, rec));
    let keep = w.up_ms.max(w.down_ms);
    while h.recs.front().is_some_and(|(at, _)| now.saturating_sub(*at) > keep) {
        h.recs.pop_front();
    }
    let over = |window: u64| h.recs.iter().filter(move |(at, _)| now.saturating_sub(*at) <= window).map(|(_, r)| *r);
    let to = if at_once {
        rec
    } else if rec > current {
        // Up once the load has asked for more for the whole up window.
        if now.saturating_sub(since) < w.up_ms {
            return None;
        }
        over(w.up_ms).min().unwrap_or(rec)
    } else if rec < current {
        // Down to the most the load asked for over the down window.
        if now.saturating_sub(since) < w.down_ms {
            return None;
        }
        over(w.down_ms).max().unwrap_or(rec)
    } else {
        return None;
    };
    (to != current).then_some(Decision { to, reason })
}

/// How long the autoscaler goes on a list of the deployments with no change seen: a
/// watch that missed one (reconnecting) costs at most this.
const RELIST: std::time::Duration = std::time::Duration::from_secs(10);

/// The autoscaler's memory, held by the leading cluster manager.
#[derive(Debug, Default)]
pub(super) struct Autoscaler {
    histories: HashMap<String, History>,
    /// The deployments as last read, and when: read again on a change (the bucket's
    /// watch), or after [`RELIST`]. Scanning the bucket every second was most of a step's
    /// messages and time at a thousand nodes.
    deployments: Option<(Vec<Deployment>, std::time::Instant)>,
}

impl Autoscaler {
    /// Reads the load of every autoscaled deployment and writes the decisions; `dirty`
    /// says a deployment changed since the last step (it is cleared here).
    pub(super) async fn step(&mut self, ctx: &NodeContext, dirty: &AtomicBool) -> Result<(), WireError> {
        let began = std::time::Instant::now();
        let cluster = &ctx.config.cluster;
        let windows = Windows {
            up_ms: cluster.scale_up_window.as_millis() as u64,
            down_ms: cluster.scale_down_window.as_millis() as u64,
            idle_ms: cluster.idle_unload.as_millis() as u64,
        };
        let stale = self.deployments.as_ref().is_none_or(|(_, at)| at.elapsed() >= RELIST);
        if dirty.swap(false, Ordering::Relaxed) || stale {
            match ctx.store.deployments().list().await {
                Ok(all) => self.deployments = Some((all, std::time::Instant::now())),
                Err(err) => {
                    dirty.store(true, Ordering::Relaxed);
                    return Err(err.into());
                }
            }
        }
        let all = self.deployments.as_ref().map(|(all, _)| all.clone()).unwrap_or_default();
        let scaled: Vec<&Deployment> = all.iter().filter(|d| d.autoscale.is_some()).collect();
        self.histories.retain(|m, _| scaled.iter().any(|d| &d.model == m));
        if scaled.is_empty() {
            return Ok(());
        }
        let models: Vec<String> = scaled.iter().map(|d| d.model.clone()).collect();
        let listed = began.elapsed();
        let loads = ctx.store.queue().loads(&models).await?;
        let read = began.elapsed();
        let nodes = ctx.nodes.live();
        let ready = bitinglip_bus_schema::ready_workers(&nodes);
        for (d, load) in scaled.into_iter().zip(loads) {
            let Some(a) = &d.autoscale else { continue };
            let s = signals(d, load, ready.get(d.model.as_str()).map_or(&[], Vec::as_slice));
            let h = self.histories.entry(d.model.clone()).or_default();
            if let Some(decision) = decide(a, d.replicas, &s, h, now_ms(), &windows) {
                apply(ctx, &d.model, d.replicas, decision).await?;
                // The list read is stale now: the next step reads it again.
                dirty.store(true, Ordering::Relaxed);
            }
        }
        tracing::debug!(
            deployments = models.len(),
            listed_ms = listed.as_millis() as u64,
            loads_ms = (read - listed).as_millis() as u64,
            total_ms = began.elapsed().as_millis() as u64,
            "autoscale step"
        );
        Ok(())
    }
}

/// The load of `d` from its queue's `load` and its `ready` workers' heartbeats.
fn signals(d: &Deployment, load: Load, ready: &[&WorkerInfo]) -> Signals {
    let slots = ready.iter().map(|w| w.max_sequences).max().or(d.spec.max_sequences).unwrap_or(DEFAULT_SEQUENCES);
    Signals {
        waiting: load.waiting,
        running: load.running,
        oldest_waiting_ms: load.oldest_waiting_ms,
        first_token_p95_ms: ready.iter().filter_map(|w| w.first_token_p95_ms).max().map(u64::from),
        serving: ready.len() as u32,
        slots,
    }
}

/// Writes a decision, unless the deployment changed since it was read.
async fn apply(ctx: &NodeContext, model: &str, from: u32, decision: Decision) -> Result<(), WireError> {
    let written = ctx
        .store
        .deployments()
        .modify(model, |d| {
            Ok::<_, WireError>(d.filter(|d| d.replicas == from && d.autoscale.is_some()).map(|mut d| {
                deployments::record_scale(&mut d, decision.to, now_ms(), decision.reason.clone());
                d.replicas = decision.to;
                d
            }))
        })
        .await??;
    if written.is_some() {
        tracing::info!(model, from, to = decision.to, reason = %decision.reason, "autoscaled");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scale(min: u32, max: u32) -> Autoscale {
        Autoscale {
            min_replicas: min,
            max_replicas: max,
            signal: ScaleSignal::QueueWait,
            target_ms: 2000,
            idle_ms: Some(30_000),
        }
    }

    const WINDOWS: Windows = Windows { up_ms: 0, down_ms: 10_000, idle_ms: 900_000 };

    fn load(waiting: u64, running: u64, oldest_waiting_ms: u64, serving: u32) -> Signals {
        Signals { waiting, running, oldest_waiting_ms, first_token_p95_ms: None, serving, slots: 4 }
    }

    #[test]
    fn a_wait_over_target_adds_replicas_to_what_the_load_fills_but_not_while_one_starts() {
        let (a, mut h) = (scale(1, 5), History::default());
        // 1 replica, 4 running and 2 waiting for 4.2 s: one more (6 tasks fill 2).
        let d = decide(&a, 1, &load(2, 4, 4200, 1), &mut h, 1000, &WINDOWS).unwrap();
        assert_eq!(d.to, 2);
        assert_eq!(d.reason, "queue wait p95 4.2 s > 2 s");
        // The second is still starting: hold, even though the wait grew.
        assert_eq!(decide(&a, 2, &load(3, 4, 5000, 1), &mut h, 2000, &WINDOWS), None);
        // Both serve and the wait is still over: a third, or what 14 tasks fill (4).
        assert_eq!(decide(&a, 2, &load(6, 8, 3000, 2), &mut h, 3000, &WINDOWS).unwrap().to, 4);
        // Never above the most.
        assert_eq!(decide(&a, 4, &load(40, 16, 9000, 4), &mut h, 4000, &WINDOWS).unwrap().to, 5);
        assert_eq!(decide(&a, 5, &load(40, 20, 9000, 5), &mut h, 5000, &WINDOWS), None);
    }

    #[test]
    fn scaling_down_waits_for_the_window_and_takes_its_highest_recommendation() {
        let (a, mut h) = (scale(1, 5), History::default());
        // A new leader: nothing goes down before it has watched for the whole window.
        assert_eq!(decide(&a, 3, &load(0, 5, 0, 3), &mut h, 0, &WINDOWS), None);
        assert_eq!(decide(&a, 3, &load(0, 5, 0, 3), &mut h, 9_000, &WINDOWS), None);
        // 5 running fill 2; the window (0 to 10 s) asked for 2 all along.
        let d = decide(&a, 3, &load(0, 5, 0, 3), &mut h, 10_000, &WINDOWS).unwrap();
        assert_eq!(d.to, 2);
        assert!(d.reason.starts_with("5 task(s) waiting or running fill 2 replica(s) of 4 sequences"), "{}", d.reason);
        // A burst asked for 2 at 12 s, then a lull asks for 1: still 2 until 22 s.
        assert_eq!(decide(&a, 2, &load(0, 6, 0, 2), &mut h, 12_000, &WINDOWS), None);
        assert_eq!(decide(&a, 2, &load(0, 1, 0, 2), &mut h, 15_000, &WINDOWS), None);
        assert_eq!(decide(&a, 2, &load(0, 1, 0, 2), &mut h, 22_001, &WINDOWS).unwrap().to, 1);
        // Between half the target and the target: hold.
        assert_eq!(decide(&a, 2, &load(1, 1, 1500, 2), &mut h, 40_000, &WINDOWS), None);
    }

    #[test]
    fn an_idle_deployment_goes_to_zero_and_a_task_brings_it_back_at_once() {
        let (a, mut h) = (scale(0, 3), History::default());
        assert_eq!(decide(&a, 1, &load(0, 1, 0, 1), &mut h, 0, &WINDOWS), None);
        // Idle, but not for 30 s: it stays at 1 (the floor while it may be asked).
        assert_eq!(decide(&a, 1, &load(0, 0, 0, 1), &mut h, 20_000, &WINDOWS), None);
        let d = decide(&a, 1, &load(0, 0, 0, 1), &mut h, 30_000, &WINDOWS).unwrap();
        assert_eq!((d.to, d.reason.as_str()), (0, "no task for 30 s"));
        assert_eq!(decide(&a, 0, &load(0, 0, 0, 0), &mut h, 31_000, &WINDOWS), None);
        // A task waits: one replica at once, with no up window.
        let up = Windows { up_ms: 5_000, ..WINDOWS };
        let d = decide(&a, 0, &load(1, 0, 300, 0), &mut h, 32_000, &up).unwrap();
        assert_eq!((d.to, d.reason.as_str()), (1, "1 task(s) waiting with no replica"));
        // With min 1 it never goes below 1.
        let mut h = History::default();
        let a = scale(1, 3);
        assert_eq!(decide(&a, 1, &load(0, 0, 0, 1), &mut h, 0, &WINDOWS), None);
        assert_eq!(decide(&a, 1, &load(0, 0, 0, 1), &mut h, 100_000, &WINDOWS), None);
    }

    #[test]
    fn an_up_window_needs_the_load_for_all_of_it_and_bounds_apply_at_once() {
        let up = Windows { up_ms: 3_000, ..WINDOWS };
        let (a, mut h) = (scale(1, 4), History::default());
        assert_eq!(decide(&a, 1, &load(5, 4, 2500, 1), &mut h, 0, &up), None);
        assert_eq!(decide(&a, 1, &load(5, 4, 2600, 1), &mut h, 2_000, &up), None);
        // Over the target for the whole window; the lowest it asked for is 3.
        assert_eq!(decide(&a, 1, &load(5, 4, 3000, 1), &mut h, 3_000, &up).unwrap().to, 3);
        // An operator lowered the most to 2: at once.
        let d = decide(&scale(1, 2), 3, &load(5, 4, 3000, 3), &mut h, 3_100, &up).unwrap();
        assert_eq!((d.to, d.reason.as_str()), (2, "outside its bounds 1 to 2"));
    }

    #[test]
    fn a_first_token_target_reads_the_workers_p95_and_the_queue_wait() {
        let a = Autoscale { signal: ScaleSignal::FirstToken, target_ms: 1000, ..scale(1, 3) };
        let mut s = load(0, 4, 0, 1);
        s.first_token_p95_ms = Some(1800);
        let d = decide(&a, 1, &s, &mut History::default(), 0, &WINDOWS).unwrap();
        assert_eq!((d.to, d.reason.as_str()), (2, "time to first token p95 1.8 s > 1 s"));
        s.first_token_p95_ms = Some(100);
        s.oldest_waiting_ms = 1500;
        assert_eq!(decide(&a, 1, &s, &mut History::default(), 0, &WINDOWS).unwrap().to, 2);
    }
}
