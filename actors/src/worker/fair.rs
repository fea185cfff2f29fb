//! Weighted fair share between tenants, as one worker's fetcher dispatches: a virtual token
//! counter per tenant lane and class (VTC, Sheng et al., OSDI '24). A free slot goes to the
//! waiting lane with the lowest counter; each task dispatched adds its expected tokens (its
//! prompt's, estimated from its text, and its `max_tokens`) divided by its tenant's weight,
//! and when it ends the charge is corrected to what it cost: the prompt tokens the engine
//! computed (those found in its prefix cache are not charged) and the tokens generated. A
//! lane that starts waiting again is lifted to the lowest counter of the lanes waiting (or
//! the highest of all, when none is), so idleness banks no credit; a tenant alone gets
//! every slot (work conserving).
//!
//! Which lanes wait is learned from the wakes the queuers publish
//! (`…queued.<model>.<class>.<tenant>`), from a scan of the lanes' consumers every
//! [`LANE_SCAN`] (a lost wake, a task queued before this worker started), and from pulls
//! that come back short. Nothing waits here: the tasks stay in the stream until pulled.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bitinglip_bus_schema::{decode_token, Priority, TaskId, TaskSpec, TenantServed, MAX_SERVED_TENANTS};
use bitinglip_nats::store::queue::Lane;
use futures::StreamExt;
use tokio::sync::Notify;

use super::WorkerShared;

/// How often the lanes' consumers are listed for waiting tasks.
const LANE_SCAN: Duration = Duration::from_secs(2);

/// Completion tokens expected of a task that sets no `max_tokens`.
const EXPECTED_COMPLETION: u32 = 256;

/// How long after a wake a lane's short pull is taken for a task not ready for its
/// consumer yet (a core wake can overtake the stream), rather than an empty lane.
pub(super) const WOKEN_LATELY: Duration = Duration::from_millis(200);

/// One lane of the fair share.
#[derive(Default)]
struct LaneState {
    /// Tokens served, divided by the weight.
    counter: f64,
    waiting: bool,
    /// Bumped by each wake: a pull that came back short clears `waiting` only when no wake
    /// came since it was made.
    wakes: u64,
    woken_at: Option<Instant>,
    weight: u32,
    /// Its tasks running here (dispatched, not yet ended).
    running: u32,
    lane: Option<Lane>,
}

/// The counters (pure: no I/O).
#[derive(Default)]
struct Counters {
    lanes: HashMap<(Priority, String), LaneState>,
}

/// The lane a slot goes to.
pub(super) struct Pick {
    pub(super) tenant: String,
    /// How many lanes of the class wait (one alone takes every free slot in one pull).
    pub(super) contenders: usize,
    pub(super) wakes: u64,
    pub(super) woken_lately: bool,
}

impl Counters {
    /// `tenant`'s lane of `priority` has tasks waiting (`woke`: a wake said so, and its
    /// task may not be ready for the consumer yet): lifted when it was not waiting.
    fn backlogged(&mut self, priority: Priority, tenant: &str, weight: Option<u32>, woke: bool) {
        let of_class = || self.lanes.iter().filter(move |((p, t), _)| *p == priority && t != tenant);
        let lowest_waiting = of_class().filter(|(_, l)| l.waiting).map(|(_, l)| l.counter).reduce(f64::min);
        let floor = lowest_waiting.or_else(|| of_class().map(|(_, l)| l.counter).reduce(f64::max)).unwrap_or(0.0);
        let lane = self.lanes.entry((priority, tenant.to_string())).or_insert_with(|| LaneState {
            counter: floor,
            weight: 1,
            ..Default::default()
        });
        if let Some(weight) = weight {
            lane.weight = weight.max(1);
        }
        if !lane.waiting {
            lane.counter = lane.counter.max(floor);
            lane.waiting = true;
        }
        lane.wakes += 1;
        if woke {
            lane.woken_at = Some(Instant::now());
        }
    }

    /// The waiting lane of `priority` to serve next (but `skip`): the lowest counter; on a
    /// tie (a lane just lifted to the lowest) the one with fewer tasks running here, then by
    /// name.
    fn pick(&self, priority: Priority, skip: Option<&str>) -> Option<Pick> {
        let waiting = self.lanes.iter().filter(|((p, t), l)| *p == priority && l.waiting && Some(t.as_str()) != skip);
        let contenders = waiting.clone().count();
        let ((_, tenant), lane) = waiting.min_by(|(a, x), (b, y)| {
            x.counter.total_cmp(&y.counter).then(x.running.cmp(&y.running)).then(a.1.cmp(&b.1))
        })?;
        Some(Pick {
            tenant: tenant.clone(),
            contenders,
            wakes: lane.wakes,
            woken_lately: lane.woken_at.is_some_and(|t| t.elapsed() < WOKEN_LATELY),
        })
    }

    /// A pull of the lane (made at `wakes`) came back short: it waits no more, unless a
    /// wake came since.
    fn emptied(&mut self, priority: Priority, tenant: &str, wakes: u64) {
        if let Some(lane) = self.lanes.get_mut(&(priority, tenant.to_string())) {
            if lane.wakes == wakes {
                lane.waiting = false;
            }
        }
    }

    /// One more (`true`) or one less of the lane's tasks running here.
    fn running(&mut self, priority: Priority, tenant: &str, more: bool) {
        let lane = self.lanes.entry((priority, tenant.to_string())).or_default();
        lane.running = if more { lane.running + 1 } else { lane.running.saturating_sub(1) };
    }

    /// Adds `tokens` of `weight` to the lane's counter (negative: a correction).
    fn charge(&mut self, priority: Priority, tenant: &str, tokens: f64, weight: u32) {
        let lane = self.lanes.entry((priority, tenant.to_string())).or_default();
        lane.weight = weight.max(1);
        lane.counter += tokens / f64::from(lane.weight);
    }
}

/// What one task was charged at dispatch.
struct Charge {
    priority: Priority,
    tenant: String,
    tokens: f64,
    weight: u32,
}

/// One worker's fair share: its counters, what each running task was charged, and the
/// signal that a lane has tasks.
#[derive(Default)]
pub(crate) struct Share {
    counters: Mutex<Counters>,
    charged: Mutex<HashMap<TaskId, Charge>>,
    /// Fires when a lane gets a task (a wake, or a scan that found one waiting).
    pub(super) woken: Notify,
    /// Fires when the lanes are to be scanned at once (a delivery handed back).
    rescan: Notify,
    /// Tasks ended here and their tokens, by tenant, since the engine loaded.
    served: Mutex<HashMap<String, (u64, u64)>>,
    /// The lane of the task dispatched last (an idle fetcher keeps a pull waiting on it).
    last: Mutex<Option<(Priority, String)>>,
}

impl Share {
    fn with<T>(&self, f: impl FnOnce(&mut Counters) -> T) -> Option<T> {
        self.counters.lock().ok().map(|mut c| f(&mut c))
    }

    pub(super) fn backlogged(&self, priority: Priority, tenant: &str, weight: Option<u32>, woke: bool) {
        self.with(|c| c.backlogged(priority, tenant, weight, woke));
        self.woken.notify_one();
    }

    pub(super) fn pick(&self, priority: Priority, skip: Option<&str>) -> Option<Pick> {
        self.with(|c| c.pick(priority, skip)).flatten()
    }

    /// The lane's consumer, when bound.
    pub(super) fn lane(&self, priority: Priority, tenant: &str) -> Option<Lane> {
        self.with(|c| c.lanes.get(&(priority, tenant.to_string())).and_then(|l| l.lane.clone())).flatten()
    }

    /// The lane of the task dispatched last.
    pub(super) fn last_served(&self) -> Option<(Priority, String)> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    pub(super) fn emptied(&self, priority: Priority, tenant: &str, wakes: u64) {
        self.with(|c| c.emptied(priority, tenant, wakes));
    }

    /// Keeps the lane's consumer once bound (`None`: forgets it, to bind again).
    pub(super) fn bind(&self, priority: Priority, tenant: &str, lane: Option<Lane>) {
        self.with(|c| c.lanes.entry((priority, tenant.to_string())).or_default().lane = lane);
    }

    /// A task dispatched: its tenant's lane is charged what it is expected to cost.
    pub(super) fn dispatched(&self, spec: &TaskSpec) {
        let tokens = f64::from(expected_tokens(spec));
        let (priority, tenant, weight) = (spec.priority, spec.tenant().to_string(), spec.weight());
        self.with(|c| {
            c.charge(priority, &tenant, tokens, weight);
            c.running(priority, &tenant, true);
        });
        if let Ok(mut last) = self.last.lock() {
            *last = Some((priority, tenant.clone()));
        }
        if let Ok(mut charged) = self.charged.lock() {
            charged.insert(spec.task_id.clone(), Charge { priority, tenant, tokens, weight });
        }
    }

    /// A task ended here having cost `tokens` (computed prompt and generated): its charge
    /// is corrected to that. The tenant it was charged to.
    pub(super) fn ended(&self, task: &TaskId, tokens: u64) -> Option<String> {
        let charge = self.charged.lock().ok()?.remove(task)?;
        self.with(|c| {
            c.charge(charge.priority, &charge.tenant, tokens as f64 - charge.tokens, charge.weight);
            c.running(charge.priority, &charge.tenant, false);
        });
        if let Ok(mut served) = self.served.lock() {
            let (tasks, total) = served.entry(charge.tenant.clone()).or_default();
            *tasks += 1;
            *total += tokens;
        }
        Some(charge.tenant)
    }

    /// What this worker served each tenant, the most served first, at most
    /// [`MAX_SERVED_TENANTS`] (for its heartbeat).
    pub(crate) fn served(&self) -> Vec<TenantServed> {
        let Ok(served) = self.served.lock() else { return Vec::new() };
        let mut out: Vec<TenantServed> = served
            .iter()
            .map(|(tenant, (tasks, tokens))| TenantServed { tenant: tenant.clone(), tasks: *tasks, tokens: *tokens })
            .collect();
        out.sort_by(|a, b| b.tokens.cmp(&a.tokens).then_with(|| a.tenant.cmp(&b.tenant)));
        out.truncate(MAX_SERVED_TENANTS);
        out
    }

    /// A task's attempt here is over (ended, handed back or lost): its dispatch charge
    /// stands when it was not corrected.
    pub(super) fn forget(&self, task: &TaskId) {
        let charge = self.charged.lock().ok().and_then(|mut c| c.remove(task));
        if let Some(charge) = charge {
            self.with(|c| c.running(charge.priority, &charge.tenant, false));
        }
    }
}

/// The tokens a task is expected to cost at dispatch: its prompt's (about four bytes a
/// token) and its `max_tokens` (or [`EXPECTED_COMPLETION`]).
fn expected_tokens(spec: &TaskSpec) -> u32 {
    let chat = &spec.chat;
    let bytes: usize = chat.messages.iter().map(|m| m.content.len()).sum::<usize>()
        + chat.prompt.as_ref().map_or(0, String::len)
        + chat.input.iter().map(String::len).sum::<usize>();
    let prompt = u32::try_from(bytes.div_ceil(4)).unwrap_or(u32::MAX);
    prompt.saturating_add(chat.max_tokens.unwrap_or(EXPECTED_COMPLETION))
}

/// Marks lanes waiting as their wakes come (`…queued.<model>.<class>.<tenant>`), and has
/// them scanned at once on a rescan (`…queued.<model>.rescan`); resubscribes if the
/// subscription ends.
pub(super) async fn listen_wakes(shared: Arc<WorkerShared>, model: String) {
    let subjects = shared.ctx.bus.subjects();
    let subject = subjects.model_queue_wakes(&model);
    let prefix = &subject[..subject.len() - 1];
    loop {
        match shared.ctx.bus.subscribe(subject.clone()).await {
            Ok(mut sub) => {
                while let Some(msg) = sub.next().await {
                    let Some(rest) = msg.subject.as_str().strip_prefix(prefix) else { continue };
                    match rest.split_once('.') {
                        Some((class, tenant)) => {
                            if let (Some(priority), Ok(tenant)) = (Priority::parse(class), decode_token(tenant)) {
                                shared.share.backlogged(priority, &tenant, None, true);
                            }
                        }
                        None if rest == "rescan" => shared.share.rescan.notify_one(),
                        None => {}
                    }
                }
            }
            Err(err) => tracing::warn!(cause = %err, "cannot listen for lane wakes; the lane scan finds the tasks"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Marks the lanes with tasks every [`LANE_SCAN`] (and on a rescan), from their
/// consumers: those waiting, and those with deliveries out, one of which may have been
/// handed back (a consumer gives a NAKed or expired delivery out again only to a pull).
pub(super) async fn scan_lanes(shared: Arc<WorkerShared>, model: String) {
    loop {
        match shared.ctx.store.queue().census(&model).await {
            Ok(census) => {
                for lane in census.lanes.iter().filter(|l| l.waiting + l.running > 0) {
                    shared.share.backlogged(lane.priority, &lane.tenant, Some(lane.weight), false);
                }
            }
            Err(err) => tracing::debug!(cause = %err, "lanes not listed; trying again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(LANE_SCAN) => {}
            _ = shared.share.rescan.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Priority = Priority::Interactive;

    /// Serves `rounds` tasks of `cost` tokens from the lanes as picked, every lane always
    /// waiting; the tokens each got.
    fn serve(c: &mut Counters, rounds: usize, cost: f64) -> HashMap<String, f64> {
        let mut got = HashMap::new();
        for _ in 0..rounds {
            let pick = c.pick(I, None).expect("a lane waits");
            let weight = c.lanes[&(I, pick.tenant.clone())].weight;
            c.charge(I, &pick.tenant, cost, weight);
            *got.entry(pick.tenant).or_default() += cost;
        }
        got
    }

    #[test]
    fn equal_weights_share_equally_and_weights_share_in_proportion() {
        let mut c = Counters::default();
        c.backlogged(I, "a", Some(1), true);
        c.backlogged(I, "b", Some(1), true);
        let got = serve(&mut c, 1000, 10.0);
        assert_eq!(got["a"], got["b"]);

        let mut c = Counters::default();
        c.backlogged(I, "a", Some(3), true);
        c.backlogged(I, "b", Some(1), true);
        let got = serve(&mut c, 1000, 10.0);
        assert!((got["a"] / (got["a"] + got["b"]) - 0.75).abs() < 0.01, "{got:?}");
    }

    #[test]
    fn a_lane_alone_gets_every_slot_and_banks_nothing_while_idle() {
        let mut c = Counters::default();
        c.backlogged(I, "a", Some(1), true);
        let got = serve(&mut c, 100, 10.0);
        assert_eq!(got.len(), 1);
        // B arrives after A was served alone: lifted to A's counter, so it does not get
        // the next hundred slots in a row.
        c.backlogged(I, "b", Some(1), true);
        let got = serve(&mut c, 10, 10.0);
        assert!(got["a"] >= 40.0 && got["b"] >= 40.0, "{got:?}");
    }

    #[test]
    fn a_tenant_lifted_to_a_tie_goes_before_one_with_tasks_running() {
        let mut c = Counters::default();
        c.backlogged(I, "a", Some(1), true);
        for _ in 0..4 {
            c.charge(I, "a", 64.0, 1);
            c.running(I, "a", true);
        }
        c.backlogged(I, "z", Some(1), true);
        assert_eq!(c.pick(I, None).expect("both wait").tenant, "z", "a light tenant waits for no one's next task");
    }

    #[test]
    fn a_short_pull_empties_a_lane_unless_a_wake_came_since() {
        let mut c = Counters::default();
        c.backlogged(I, "a", None, true);
        let pick = c.pick(I, None).expect("waits");
        c.backlogged(I, "a", None, true);
        c.emptied(I, "a", pick.wakes);
        assert!(c.pick(I, None).is_some(), "the wake after the pull keeps it waiting");
        let pick = c.pick(I, None).expect("waits");
        c.emptied(I, "a", pick.wakes);
        assert!(c.pick(I, None).is_none());
        assert!(c.pick(Priority::Batch, None).is_none(), "classes are apart");
    }

    #[test]
    fn the_charge_is_corrected_to_what_the_task_cost() {
        let share = Share::default();
        let mut spec = TaskSpec {
            task_id: TaskId::parse("t1").expect("id"),
            chat: Default::default(),
            priority: I,
            accepted_ms: 0,
            owner: None,
            request_sha256: None,
            tenant: Some("a".into()),
            weight: Some(2),
        };
        spec.chat.max_tokens = Some(100);
        share.dispatched(&spec);
        let charged = share.with(|c| c.lanes[&(I, "a".to_string())].counter).expect("lock");
        assert_eq!(charged, 50.0);
        assert_eq!(share.ended(&spec.task_id, 20).as_deref(), Some("a"));
        let corrected = share.with(|c| c.lanes[&(I, "a".to_string())].counter).expect("lock");
        assert_eq!(corrected, 10.0);
        assert_eq!(share.ended(&spec.task_id, 20), None, "corrected once");
        assert_eq!(share.served(), vec![TenantServed { tenant: "a".into(), tasks: 1, tokens: 20 }]);
    }
}
