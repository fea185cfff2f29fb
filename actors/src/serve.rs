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
