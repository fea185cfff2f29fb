//! The loop behind every request/reply endpoint: take each request off a NATS service
//! endpoint (or a subscription) and handle it in its own task, so one slow request (a JetStream PubAck, a KV read) never
//! holds up the next. A handler answers bad input with an error reply; nothing a client
//! sends can stop the loop. When the subscription ends (the client was closed), the owning
//! actor is told, fails, and its supervisor restarts it.

use std::future::Future;

use async_nats::service::endpoint::Endpoint;
use bitinglip_bus_schema::{ErrorKind, OwnerRequest, Reply, Request, WireError};
use futures::{Stream, StreamExt};
use ractor::ActorRef;

/// Requests one endpoint handles at once; more wait in its subscription.
const MAX_IN_FLIGHT: usize = 1024;

/// Runs `handler` for every item of `sub` (a subscription, or a NATS service endpoint),
/// each in its own task. When it ends, sends `on_end` to `owner`.
pub(crate) fn spawn_serve<M, S, H, F>(
    mut sub: S,
    owner: ActorRef<M>,
    on_end: M,
    handler: H,
) -> tokio::task::JoinHandle<()>
where
    M: ractor::Message + Clone,
    S: Stream + Unpin + Send + 'static,
    S::Item: Send + 'static,
    H: Fn(S::Item) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        // A flood of requests waits here, in the subscription, rather than as unbounded
        // tasks in memory.
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        while let Some(msg) = sub.next().await {
            let Ok(permit) = permits.clone().acquire_owned().await else { break };
            let work = handler(msg);
            tokio::spawn(async move {
                work.await;
                drop(permit);
            });
        }
        let _ = owner.cast(on_end);
    })
}

/// An actor's request/reply endpoints: each serves one request type, answering with what
/// its handler returns (or the handler's error, or the decoding error of a request that
/// does not decode, counted as dropped when it has no reply subject), in the reply type
/// the request names. When an endpoint's subscription ends, `on_end` goes to `owner`.
pub(crate) struct Server<M> {
    owner: ActorRef<M>,
    on_end: M,
    ctx: crate::NodeContext,
}

/// What a handler of `R` answers.
type Answered<R> = Result<<<R as Request>::Reply as Reply>::Answer, WireError>;
/// What a handler of owner request `R` answers.
type OwnerAnswered<R> = Result<<<R as OwnerRequest>::Reply as Reply>::Answer, WireError>;

impl<M: ractor::Message + Clone> Server<M> {
    pub(crate) fn new(owner: ActorRef<M>, on_end: M, ctx: crate::NodeContext) -> Self {
        Self { owner, on_end, ctx }
    }

    /// Serves `R` on `endpoint` with `handle`.
    pub(crate) fn serve<R, H, F>(&self, endpoint: Endpoint, handle: H) -> tokio::task::JoinHandle<()>
    where
        R: Request,
        H: Fn(crate::NodeContext, R) -> F + Send + Sync + 'static,
        F: Future<Output = Answered<R>> + Send + 'static,
    {
        self.spawn(endpoint, move |ctx, _subject: &str, req: R| {
            let answer = handle(ctx, req);
            async move { answer.await.map(R::Reply::answer) }
        })
    }

    /// Serves owner request `R` on `endpoint` (a wildcard over the owners' subjects):
    /// `handle` also gets the owner the subject names, which is who asks.
    pub(crate) fn serve_owned<R, H, F>(&self, endpoint: Endpoint, handle: H) -> tokio::task::JoinHandle<()>
    where
        R: OwnerRequest,
        H: Fn(crate::NodeContext, Option<String>, R) -> F + Send + Sync + 'static,
        F: Future<Output = OwnerAnswered<R>> + Send + 'static,
    {
        let handle = std::sync::Arc::new(handle);
        self.spawn(endpoint, move |ctx: crate::NodeContext, subject: &str, req: R| {
            let asker = ctx.bus.subjects().owner_of_task_subject(subject);
            let handle = handle.clone();
            async move {
                let Some(asker) = asker else {
                    return Err(WireError::new(ErrorKind::InvalidRequest, "the subject names no task owner"));
                };
                handle(ctx, asker, req).await.map(R::Reply::answer)
            }
        })
    }

    fn spawn<Req, Rep, H, F>(&self, endpoint: Endpoint, handle: H) -> tokio::task::JoinHandle<()>
    where
        Req: serde::de::DeserializeOwned + Send + 'static,
        Rep: Reply,
        H: Fn(crate::NodeContext, &str, Req) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Rep, WireError>> + Send + 'static,
    {
        let (handle, ctx) = (std::sync::Arc::new(handle), self.ctx.clone());
        spawn_serve(endpoint, self.owner.clone(), self.on_end.clone(), move |req: async_nats::service::Request| {
            let (ctx, handle) = (ctx.clone(), handle.clone());
            async move {
                let reply = match ctx.bus.decode::<Req>(&req.message) {
                    Ok(incoming) => handle(ctx.clone(), req.message.subject.as_str(), incoming.envelope.body)
                        .await
                        .unwrap_or_else(Rep::error),
                    Err(err) => {
                        if req.message.reply.is_none() {
                            tracing::warn!(subject = %req.message.subject, cause = %err, "undecodable message dropped");
                            ctx.count_dropped();
                        }
                        Rep::error(err.into())
                    }
                };
                if let Err(err) = ctx.bus.respond(&req, &reply).await {
                    tracing::warn!(subject = %req.message.subject, cause = %err, "reply not sent");
                }
            }
        })
    }
}

/// A role that is a NATS service: request/reply endpoints on one queue group (and tasks
/// beside them, such as watchers), run by the actor [`Served`]. The four service roles
/// (task manager, model manager, cluster manager, puller) are each one `Service`; what
/// they share (the NATS service, failing when an endpoint's subscription ends, aborting
/// every task on stop) is written once, here.
#[ractor::async_trait]
pub(crate) trait Service: Send + Sync + 'static {
    /// What it does, for `nats micro info`.
    const DESCRIPTION: &'static str;
    /// Its queue group, which its endpoints share so that several can run and each
    /// request is answered once; the NATS service is `bitinglip-<group>`.
    const GROUP: fn(&bitinglip_bus_schema::Subjects) -> String;

    /// Opens the endpoints and starts the tasks, all on `on`: the actor aborts them when
    /// it stops, or when `start` fails part way.
    async fn start(on: &Endpoints) -> Started;

    /// After the tasks are aborted, on stop.
    async fn stopped(_ctx: &crate::NodeContext) {}
}

/// What a service's start ends with.
pub(crate) type Started = Result<(), ractor::ActorProcessingErr>;

/// The actor that runs service `S`. Supervised by the node supervisor; supervises
/// nothing. If a subscription ends it fails, and the supervisor starts it again.
pub(crate) struct Served<S>(std::marker::PhantomData<fn() -> S>);

impl<S> Default for Served<S> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// Messages to a service's actor.
#[derive(Debug, Clone)]
pub(crate) enum ServedMsg {
    /// A subscription ended; fail so the supervisor restarts us.
    SubscriptionEnded,
}

/// A service actor's state: its tasks and the NATS service they belong to.
pub(crate) struct ServedState {
    ctx: crate::NodeContext,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _service: async_nats::service::Service,
}

/// What a service's `start` opens its endpoints on.
pub(crate) struct Endpoints {
    service: async_nats::service::Service,
    server: Server<ServedMsg>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Endpoints {
    /// The node's context, as the service's role sees it.
    pub(crate) fn ctx(&self) -> &crate::NodeContext {
        &self.server.ctx
    }

    /// The subjects its endpoints are on.
    pub(crate) fn subjects(&self) -> bitinglip_bus_schema::Subjects {
        self.ctx().bus.subjects().clone()
    }

    /// The endpoint `name` on `subject`, to serve by hand.
    pub(crate) async fn endpoint(&self, name: &str, subject: String) -> Result<Endpoint, ractor::ActorProcessingErr> {
        Ok(self.ctx().bus.endpoint(&self.service, name, subject).await?)
    }

    /// Runs `task` beside the endpoints, until the actor stops.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.keep(tokio::spawn(task));
    }

    fn keep(&self, task: tokio::task::JoinHandle<()>) {
        self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(task);
    }

    fn take(&self) -> Vec<tokio::task::JoinHandle<()>> {
        std::mem::take(&mut *self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Serves request `R` on the endpoint `name` with `handle` (see [`Server::serve`]).
    pub(crate) async fn serve<R, H, F>(&self, name: &str, subject: String, handle: H) -> Started
    where
        R: Request,
        H: Fn(crate::NodeContext, R) -> F + Send + Sync + 'static,
        F: Future<Output = Answered<R>> + Send + 'static,
    {
        let endpoint = self.endpoint(name, subject).await?;
        self.keep(self.server.serve(endpoint, handle));
        Ok(())
    }

    /// Serves owner request `R` on the endpoint `name` (see [`Server::serve_owned`]).
    pub(crate) async fn serve_owned<R, H, F>(&self, name: &str, subject: String, handle: H) -> Started
    where
        R: OwnerRequest,
        H: Fn(crate::NodeContext, Option<String>, R) -> F + Send + Sync + 'static,
        F: Future<Output = OwnerAnswered<R>> + Send + 'static,
    {
        let endpoint = self.endpoint(name, subject).await?;
        self.keep(self.server.serve_owned(endpoint, handle));
        Ok(())
    }

    /// Runs `handler` for every item of `sub` (see [`spawn_serve`]); its end fails the
    /// actor like an endpoint's.
    pub(crate) fn each<S, H, F>(&self, sub: S, handler: H)
    where
        S: Stream + Unpin + Send + 'static,
        S::Item: Send + 'static,
        H: Fn(S::Item) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        self.keep(spawn_serve(sub, self.server.owner.clone(), ServedMsg::SubscriptionEnded, handler));
    }
}

#[ractor::async_trait]
impl<S: Service> ractor::Actor for Served<S> {
    type Msg = ServedMsg;
    type State = ServedState;
    type Arguments = crate::NodeContext;

    async fn pre_start(
        &self,
        myself: ActorRef<ServedMsg>,
        ctx: crate::NodeContext,
    ) -> Result<ServedState, ractor::ActorProcessingErr> {
        let group = (S::GROUP)(ctx.bus.subjects());
        let service = ctx.bus.service(&format!("bitinglip-{group}"), S::DESCRIPTION, &group).await?;
        let server = Server::new(myself, ServedMsg::SubscriptionEnded, ctx.clone());
        let on = Endpoints { service, server, tasks: Default::default() };
        let started = S::start(&on).await;
        let tasks = on.take();
        if let Err(err) = started {
            tasks.iter().for_each(tokio::task::JoinHandle::abort);
            return Err(err);
        }
        Ok(ServedState { ctx, tasks, _service: on.service })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ServedMsg>,
        msg: ServedMsg,
        state: &mut ServedState,
    ) -> Result<(), ractor::ActorProcessingErr> {
        match msg {
            ServedMsg::SubscriptionEnded => {
                Err(format!("a subscription of {} ended", (S::GROUP)(state.ctx.bus.subjects())).into())
            }
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ServedMsg>,
        state: &mut ServedState,
    ) -> Result<(), ractor::ActorProcessingErr> {
        state.tasks.iter().for_each(tokio::task::JoinHandle::abort);
        S::stopped(&state.ctx).await;
        Ok(())
    }
}
