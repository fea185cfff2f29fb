//! Bus calls, typed at the call: a request names its subject and its reply, and a reply
//! splits into its answer or the error its server sent. The bus layer's `call` and the
//! actors' `serve` read both from here, so no call site pairs a subject, a request and a
//! reply type by hand, and no reply's error is unwrapped by hand.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{
    Ack, CancelTask, ClusterStatus, DeleteDeployment, Deployment, DeploymentList, DeploymentReply, DeploymentStatus,
    EnsureConsumers, GetClusterStatus, GetModelStatus, GetResult, GetTask, HubModel, ListDeployments, ListModels,
    ListTasks, LoadModel, ModelList, ModelNodeStatus, ModelRecord, ModelRef, ModelStatusList, NodeHeartbeat, PullModel,
    PullReply, RecordUsage, RegisterModel, ResultReply, SearchModels, SearchResults, SetDeployment, Subjects,
    SubmitReply, SubmitRequest, TaskAccepted, TaskList, TaskRecord, TaskStatusReply, WireError,
};

/// A request on a subject of its own.
pub trait Request: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// What it gets back.
    type Reply: Reply;
    /// Where it is sent.
    fn subject(&self, subjects: &Subjects) -> String;
}

/// A request on a subject that names the task owner asking (`…task.<owner>.<verb>`): the
/// server lets each NATS user publish only its own owner's subjects.
pub trait OwnerRequest: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// What it gets back.
    type Reply: Reply;
    /// Where `owner` sends it.
    fn subject(&self, subjects: &Subjects, owner: Option<&str>) -> String;
}

/// A reply: an answer, or the error its server sent.
pub trait Reply: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// What an answer carries.
    type Answer: Send;
    /// The answer, or the server's error.
    fn into_answer(self) -> Result<Self::Answer, WireError>;
    /// The reply that carries `answer` (what a server sends).
    fn answer(answer: Self::Answer) -> Self;
    /// The reply that carries `error`.
    fn error(error: WireError) -> Self;
}

/// `Request` for `$request`, on `$subject`, answered by `$reply`.
macro_rules! request {
    ($request:ty => $reply:ty, $subject:ident) => {
        impl Request for $request {
            type Reply = $reply;
            fn subject(&self, subjects: &Subjects) -> String {
                subjects.$subject()
            }
        }
    };
    (owned $request:ty => $reply:ty, $subject:ident) => {
        impl OwnerRequest for $request {
            type Reply = $reply;
            fn subject(&self, subjects: &Subjects, owner: Option<&str>) -> String {
                subjects.$subject(owner)
            }
        }
    };
}

/// `Reply` for an enum of an answer variant and an error variant.
macro_rules! reply {
    ($reply:ident: $answer:ty, $variant:ident { $field:ident }, $error:ident) => {
        impl Reply for $reply {
            type Answer = $answer;
            fn into_answer(self) -> Result<$answer, WireError> {
                match self {
                    $reply::$variant { $field } => Ok($field),
                    $reply::$error(e) => Err(e),
                }
            }
            fn answer(answer: $answer) -> Self {
                $reply::$variant { $field: answer }
            }
            fn error(error: WireError) -> Self {
                $reply::$error(error)
            }
        }
    };
    ($reply:ident: struct $answer:ident, $variant:ident { $($field:ident),+ }, $error:ident) => {
        impl Reply for $reply {
            type Answer = $answer;
            fn into_answer(self) -> Result<$answer, WireError> {
                match self {
                    $reply::$variant { $($field),+ } => Ok($answer { $($field),+ }),
                    $reply::$error(e) => Err(e),
                }
            }
            fn answer(answer: $answer) -> Self {
                let $answer { $($field),+ } = answer;
                $reply::$variant { $($field),+ }
            }
            fn error(error: WireError) -> Self {
                $reply::$error(error)
            }
        }
    };
    ($reply:ident: $answer:ty, $variant:ident(), $error:ident) => {
        impl Reply for $reply {
            type Answer = $answer;
            fn into_answer(self) -> Result<$answer, WireError> {
                match self {
                    $reply::$variant(answer) => Ok(answer),
                    $reply::$error(e) => Err(e),
                }
            }
            fn answer(answer: $answer) -> Self {
                $reply::$variant(answer)
            }
            fn error(error: WireError) -> Self {
                $reply::$error(error)
            }
        }
    };
}

reply!(ModelList: Vec<ModelRecord>, Models { models }, Error);
reply!(SearchResults: Vec<HubModel>, Models { models }, Error);
reply!(ModelStatusList: Vec<ModelNodeStatus>, Statuses { statuses }, Error);
reply!(DeploymentList: Vec<DeploymentStatus>, Deployments { deployments }, Error);
reply!(PullReply: ModelRecord, Pulled(), Error);
reply!(DeploymentReply: Deployment, Deployment(), Error);
reply!(TaskStatusReply: TaskRecord, Found(), Error);
reply!(SubmitReply: TaskAccepted, Accepted(), Rejected);
reply!(TaskList: struct TaskPage, Tasks { tasks, next }, Error);
reply!(ResultReply: struct ResultPart, Part { offset, data, size }, Error);
reply!(ClusterStatus: struct ClusterNodes, Nodes { nodes, leader, warnings }, Error);

impl Reply for Ack {
    type Answer = ();
    fn into_answer(self) -> Result<(), WireError> {
        match self {
            Ack::Ok => Ok(()),
            Ack::Error(e) => Err(e),
        }
    }
    fn answer((): ()) -> Self {
        Ack::Ok
    }
    fn error(error: WireError) -> Self {
        Ack::Error(error)
    }
}

/// A page of task records.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPage {
    /// Most recently changed first.
    pub tasks: Vec<TaskRecord>,
    /// The cursor of the next page, when there may be more.
    pub next: Option<u64>,
}

/// Bytes of a stored result.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultPart {
    /// Where these bytes start.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// The whole object's size.
    pub size: u64,
}

/// The cluster as a cluster manager sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterNodes {
    /// Every live node's last heartbeat.
    pub nodes: Vec<NodeHeartbeat>,
    /// The cluster manager leading placement, if any.
    pub leader: Option<String>,
    /// What the answering cluster manager cannot do as set up.
    pub warnings: Vec<String>,
}

/// Request on `…model.unload`: a [`ModelRef`] (its deployment goes to 0 replicas).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnloadModel(pub ModelRef);

/// Request on `…model.delete`: a [`ModelRef`] (deployment, registry entry and node
/// statuses removed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeleteModel(pub ModelRef);

request!(ListModels => ModelList, model_list);
request!(RegisterModel => Ack, model_register);
request!(PullModel => PullReply, model_pull);
request!(GetModelStatus => ModelStatusList, model_status);
request!(SearchModels => SearchResults, model_search);
request!(LoadModel => DeploymentReply, model_load);
request!(UnloadModel => Ack, model_unload);
request!(DeleteModel => Ack, model_delete);
request!(SetDeployment => DeploymentReply, deployment_set);
request!(DeleteDeployment => Ack, deployment_delete);
request!(ListDeployments => DeploymentList, deployment_list);
request!(GetClusterStatus => ClusterStatus, cluster_status);
request!(GetTask => TaskStatusReply, task_get);
request!(ListTasks => TaskList, task_list);
request!(RecordUsage => Ack, task_usage);
request!(EnsureConsumers => Ack, task_consumers);

request!(owned SubmitRequest => SubmitReply, task_submit);
request!(owned GetTask => TaskStatusReply, owner_task_get);
request!(owned ListTasks => TaskList, owner_task_list);
request!(owned GetResult => ResultReply, owner_task_result);

impl OwnerRequest for CancelTask {
    type Reply = Ack;
    fn subject(&self, subjects: &Subjects, owner: Option<&str>) -> String {
        subjects.task_cancel(owner, &self.task_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_split_into_answers_and_errors_and_back() {
        let err = WireError::new(crate::ErrorKind::NotFound, "no");
        assert_eq!(ModelList::error(err.clone()).into_answer(), Err(err.clone()));
        assert_eq!(ModelList::answer(vec![]).into_answer(), Ok(vec![]));
        assert_eq!(Ack::answer(()), Ack::Ok);
        assert!(SubmitReply::error(err.clone()) == SubmitReply::Rejected(err.clone()));
        let page = TaskPage { tasks: vec![], next: Some(3) };
        assert_eq!(TaskList::answer(page.clone()).into_answer(), Ok(page));
        // The wrappers are their model reference on the wire.
        let r = ModelRef { model: "m".into() };
        let bytes = rmp_serde::to_vec_named(&r).unwrap();
        assert_eq!(rmp_serde::to_vec_named(&UnloadModel(r.clone())).unwrap(), bytes);
        assert_eq!(rmp_serde::to_vec_named(&DeleteModel(r)).unwrap(), bytes);
    }

    #[test]
    fn requests_name_their_subjects() {
        let s = Subjects::default();
        assert_eq!(ListModels {}.subject(&s), s.model_list());
        let cancel = CancelTask { task_id: crate::TaskId::parse("t1").unwrap(), reason: String::new() };
        assert_eq!(OwnerRequest::subject(&cancel, &s, Some("k1")), s.task_cancel(Some("k1"), &cancel.task_id));
    }
}
