//! The subjects of the queues: each task's subject in the tasks stream (in its tenant's
//! lane, pinned to a worker, or as queued before tenants), the filters of the consumers
//! that serve them, and the core wakes of a model's fetchers.

use super::{encode_token, Subjects, TaskId};

impl Subjects {
    /// JetStream subject of one queued task: its model's queue for its priority class,
    /// then its id. One subject per task makes the stream message findable by task id
    /// ([`Subjects::queued_task_anywhere`]) while it is the task's only record.
    pub fn queued_task(&self, model: &str, priority: crate::Priority, task: &TaskId) -> String {
        self.subject(&["queue", &encode_token(model), priority.as_str(), task.as_str()])
    }

    /// JetStream subject of a queued task pinned to one worker (cache-affinity routing):
    /// its model's queue for its class, its id, then the worker ([`encode_token`]). Only
    /// that worker's consumer ([`Subjects::pinned_queue`]) takes it; the shared
    /// consumer's filter has one token less.
    pub fn pinned_task(&self, model: &str, priority: crate::Priority, task: &TaskId, worker: &str) -> String {
        self.subject(&["queue", &encode_token(model), priority.as_str(), task.as_str(), &encode_token(worker)])
    }

    /// The tasks pinned to `worker` in `model`'s interactive queue (its own consumer's
    /// filter, and what its fetcher listens on to wake up).
    pub fn pinned_queue(&self, model: &str, worker: &str) -> String {
        self.subject(&[
            "queue",
            &encode_token(model),
            crate::Priority::Interactive.as_str(),
            "*",
            &encode_token(worker),
        ])
    }

    /// Every task of one model's queue for one class, shared or pinned (the oldest age).
    pub fn queue_all(&self, model: &str, priority: crate::Priority) -> String {
        self.subject(&["queue", &encode_token(model), priority.as_str(), ">"])
    }

    /// Every shared queue's tasks (a worker releases a pinned task it has no room for to
    /// its model's shared queue).
    pub fn shared_queues(&self) -> String {
        self.subject(&["queue", "*", "*", "*"])
    }

    /// Every worker's pinned interactive tasks (a worker listens on its own to wake up).
    pub fn all_pinned_queues(&self) -> String {
        self.subject(&["queue", "*", crate::Priority::Interactive.as_str(), "*", "*"])
    }

    /// One pinned task, in whichever queue and for whichever worker.
    pub fn pinned_task_anywhere(&self, task: &TaskId) -> String {
        self.subject(&["queue", "*", "*", task.as_str(), "*"])
    }

    /// The tasks of one model's queue for one priority class (a worker consumer's filter).
    pub fn queue(&self, model: &str, priority: crate::Priority) -> String {
        self.subject(&["queue", &encode_token(model), priority.as_str(), "*"])
    }

    /// What a model's queue for one class was before tasks had subjects of their own (a
    /// worker consumer still takes tasks queued there before an upgrade).
    pub fn queue_before_task_subjects(&self, model: &str, priority: crate::Priority) -> String {
        self.subject(&["queue", &encode_token(model), priority.as_str()])
    }

    /// JetStream subject of one queued task in its tenant's lane of its model's queue for
    /// its class (`…queue.<model>.<class>.t.<tenant>.<task>`, tenant as [`encode_token`]):
    /// each tenant's waiting tasks are their own FIFO, which the workers' fetchers serve by
    /// weighted fair share. Six tokens, so no lane's filter overlaps a pinned queue's or the
    /// per-class queues' of before tenants.
    pub fn fair_task(&self, model: &str, priority: crate::Priority, tenant: &str, task: &TaskId) -> String {
        self.subject(&["queue", &encode_token(model), priority.as_str(), "t", &encode_token(tenant), task.as_str()])
    }

    /// One tenant's lane of a model's queue for one class (its consumer's filter).
    pub fn tenant_queue(&self, model: &str, priority: crate::Priority, tenant: &str) -> String {
        self.subject(&["queue", &encode_token(model), priority.as_str(), "t", &encode_token(tenant), "*"])
    }

    /// Every tenant lane's tasks of one model's queue for one class.
    pub fn tenant_queues(&self, model: &str, priority: crate::Priority) -> String {
        self.subject(&["queue", &encode_token(model), priority.as_str(), "t", "*", "*"])
    }

    /// Every tenant lane of every queue (a worker releases a pinned task it has no room
    /// for, or requeues one it has no slot for, to its tenant's lane).
    pub fn all_tenant_queues(&self) -> String {
        self.subject(&["queue", "*", "*", "t", "*", "*"])
    }

    /// One task in whichever tenant lane it waits.
    pub fn fair_task_anywhere(&self, task: &TaskId) -> String {
        self.subject(&["queue", "*", "*", "t", "*", task.as_str()])
    }

    /// Core subject (no stream) that wakes a model's fetchers when a task joins a tenant's
    /// lane: `…queued.<model>.<class>.<tenant>`, empty body. Published by whoever queued
    /// the task (a task manager, or a worker releasing or requeueing one); a wake that is
    /// lost costs a fetcher's next scan of the lanes (seconds), never the task.
    pub fn queue_wake(&self, model: &str, priority: crate::Priority, tenant: &str) -> String {
        self.subject(&["queued", &encode_token(model), priority.as_str(), &encode_token(tenant)])
    }

    /// Core subject that has a model's fetchers scan its lanes at once
    /// (`…queued.<model>.rescan`): a delivery was handed back (a NAK), which a lane's
    /// consumer gives out again only to a pull, and which lane is not known to whoever
    /// handed it back.
    pub fn model_rescan(&self, model: &str) -> String {
        self.subject(&["queued", &encode_token(model), "rescan"])
    }

    /// The wakes of one model's lanes (what its fetchers listen on).
    pub fn model_queue_wakes(&self, model: &str) -> String {
        self.subject(&["queued", &encode_token(model), ">"])
    }

    /// Every lane's wakes.
    pub fn all_queue_wakes(&self) -> String {
        self.subject(&["queued", ">"])
    }

    /// One task in whichever queue it is.
    pub fn queued_task_anywhere(&self, task: &TaskId) -> String {
        self.subject(&["queue", "*", "*", task.as_str()])
    }

    /// Every queue subject of one model.
    pub fn model_queues(&self, model: &str) -> String {
        self.subject(&["queue", &encode_token(model), ">"])
    }

    /// Every queue subject (the tasks stream captures this).
    pub fn all_queues(&self) -> String {
        self.subject(&["queue", ">"])
    }
}
