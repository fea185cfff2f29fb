//! The subjects of tasks: submitting, following, cancelling, reading and listing, each
//! naming the task's owner where a NATS user's permissions must hold it to its own.

use super::{owner_of_token, owner_token, Subjects, TaskId};

impl Subjects {
    // ---- tasks -------------------------------------------------------------------------
    //
    // Every subject a task's owner uses names the owner ([`owner_token`]): nats-server's
    // permissions then hold each NATS client identity to its own tasks. The unscoped
    // `task.get` and `task.list` are for the trusted roles (gateway, admin) only.

    /// Request/reply: submit a chat task for `owner` ([`crate::SubmitRequest`] →
    /// [`crate::SubmitReply`]); the task belongs to the subject's owner, whatever the body
    /// says. Task managers serve it on the queue group [`Self::task_manager_queue_group`].
    pub fn task_submit(&self, owner: Option<&str>) -> String {
        self.subject(&["task", &owner_token(owner), "submit"])
    }

    /// Submits for every owner (what task managers serve).
    pub fn all_task_submits(&self) -> String {
        self.subject(&["task", "*", "submit"])
    }

    /// Queue group of the task managers.
    pub fn task_manager_queue_group(&self) -> String {
        "task-manager".to_string()
    }

    /// Queue group of the model managers.
    pub fn model_manager_queue_group(&self) -> String {
        "model-manager".to_string()
    }

    /// Queue group of the cluster managers.
    pub fn cluster_manager_queue_group(&self) -> String {
        "cluster-manager".to_string()
    }

    /// Publish: the events of `owner`'s task ([`crate::TaskEvent`]), in sequence order.
    pub fn task_events(&self, owner: Option<&str>, task: &TaskId) -> String {
        self.subject(&["task", &owner_token(owner), task.as_str(), "events"])
    }

    /// The events of every task (the events stream captures this).
    pub fn all_task_events(&self) -> String {
        self.subject(&["task", "*", "*", "events"])
    }

    /// What every task's events were before their subjects named the owner: the events
    /// stream still captures it, so an upgrade removes none of its subjects.
    pub fn task_events_before_owners(&self) -> String {
        self.subject(&["task", "*", "events"])
    }

    /// The events of every task of `owner`.
    pub fn owner_task_events(&self, owner: Option<&str>) -> String {
        self.subject(&["task", &owner_token(owner), "*", "events"])
    }

    /// Publish: cancel `owner`'s task ([`crate::CancelTask`]).
    pub fn task_cancel(&self, owner: Option<&str>, task: &TaskId) -> String {
        self.subject(&["task", &owner_token(owner), task.as_str(), "cancel"])
    }

    /// Cancels of every task (workers and task managers subscribe to this).
    pub fn all_task_cancels(&self) -> String {
        self.subject(&["task", "*", "*", "cancel"])
    }

    /// Cancels of every task of `owner`.
    pub fn owner_task_cancels(&self, owner: Option<&str>) -> String {
        self.subject(&["task", &owner_token(owner), "*", "cancel"])
    }

    /// Request/reply: any task's status record ([`crate::GetTask`] →
    /// [`crate::TaskStatusReply`]); trusted roles only.
    pub fn task_get(&self) -> String {
        self.subject(&["task", "get"])
    }

    /// Request/reply: the status record of one of `owner`'s tasks (another owner's is
    /// `not_found`).
    pub fn owner_task_get(&self, owner: Option<&str>) -> String {
        self.subject(&["task", &owner_token(owner), "get"])
    }

    /// The owner-scoped gets of every owner (what task managers serve).
    pub fn all_owner_task_gets(&self) -> String {
        self.subject(&["task", "*", "get"])
    }

    /// Request/reply: the most recent tasks of any owner ([`crate::ListTasks`] →
    /// [`crate::TaskList`]); trusted roles only.
    pub fn task_list(&self) -> String {
        self.subject(&["task", "list"])
    }

    /// Request/reply: count a finished task's usage ([`crate::RecordUsage`] →
    /// [`crate::Ack`]); workers ask, task managers add what the task's record says to its
    /// owner's counters (a worker never writes a counter).
    pub fn task_usage(&self) -> String {
        self.subject(&["task", "usage"])
    }

    /// Request/reply: make (or bring up to date) a model's queue consumers
    /// ([`crate::EnsureConsumers`] → [`crate::Ack`]); workers ask, task managers create
    /// them, so a worker never sets a consumer's config.
    pub fn task_consumers(&self) -> String {
        self.subject(&["task", "consumers"])
    }

    /// Request/reply: the most recent tasks of `owner`.
    pub fn owner_task_list(&self, owner: Option<&str>) -> String {
        self.subject(&["task", &owner_token(owner), "list"])
    }

    /// The owner-scoped lists of every owner (what task managers serve).
    pub fn all_owner_task_lists(&self) -> String {
        self.subject(&["task", "*", "list"])
    }

    /// Request/reply: a part of one of `owner`'s answers kept in the results store
    /// ([`crate::GetResult`] → [`crate::ResultReply`]).
    pub fn owner_task_result(&self, owner: Option<&str>) -> String {
        self.subject(&["task", &owner_token(owner), "result"])
    }

    /// The result reads of every owner (what task managers serve).
    pub fn all_owner_task_results(&self) -> String {
        self.subject(&["task", "*", "result"])
    }

    /// Every task subject of `owner` (`…task.<owner>.>`): what a client identity uses.
    pub fn owner_tasks(&self, owner: Option<&str>) -> String {
        self.subject(&["task", &owner_token(owner), ">"])
    }

    /// The owner a task subject names (`<root>.v1.task.<owner>.…`): `None` when it is no
    /// owner-scoped task subject, `Some(None)` for a task without an owner.
    pub fn owner_of_task_subject(&self, subject: &str) -> Option<Option<String>> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".task.")?;
        let (token, rest) = rest.split_once('.')?;
        if rest.is_empty() {
            return None;
        }
        owner_of_token(token).ok()
    }
}
