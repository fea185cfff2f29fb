//! The loop behind every request/reply endpoint: take each request off a NATS service
//! endpoint (or a subscription) and handle it in its own task, so one slow request (a JetStream PubAck, a KV read) never
//! holds up the next. A handler answers bad input with an error reply; nothing a client
//! sends can stop the loop. When the subscription ends (the client was closed), the owning
//! actor is told, fails, and its supervisor restarts it.

use std::future::Future;

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

/// Serves one request/reply endpoint of a NATS service: decodes each request as `Req`,
/// answers with what `handle` returns, its error (or a request that does not decode,
/// counted as dropped when it has no reply subject) wrapped by `on_error`.
pub(crate) fn spawn_endpoint<M, Req, Rep, H, F>(
    endpoint: async_nats::service::endpoint::Endpoint,
    owner: ActorRef<M>,
    on_end: M,
    ctx: crate::NodeContext,
    on_error: fn(bitinglip_bus_schema::WireError) -> Rep,
    handle: H,
) -> tokio::task::JoinHandle<()>
where
    M: ractor::Message + Clone,
    Req: serde::de::DeserializeOwned + Send + 'static,
    Rep: serde::Serialize + Send + Sync + 'static,
    H: Fn(crate::NodeContext, Req) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Rep, bitinglip_bus_schema::WireError>> + Send + 'static,
{
    let handle = std::sync::Arc::new(handle);
    spawn_subject_endpoint(endpoint, owner, on_end, ctx, on_error, move |ctx, _subject: &str, req| handle(ctx, req))
}

/// [`spawn_endpoint`] for a task owner's subjects (`…task.<owner>.<verb>`, a wildcard
/// endpoint): `handle` also gets the owner the subject names, which is who asks, since
/// the server lets each NATS user publish only its own owner's subjects.
pub(crate) fn spawn_owner_endpoint<M, Req, Rep, H, F>(
    endpoint: async_nats::service::endpoint::Endpoint,
    owner: ActorRef<M>,
    on_end: M,
    ctx: crate::NodeContext,
    on_error: fn(bitinglip_bus_schema::WireError) -> Rep,
    handle: H,
) -> tokio::task::JoinHandle<()>
where
    M: ractor::Message + Clone,
    Req: serde::de::DeserializeOwned + Send + 'static,
    Rep: serde::Serialize + Send + Sync + 'static,
    H: Fn(crate::NodeContext, Option<String>, Req) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Rep, bitinglip_bus_schema::WireError>> + Send + 'static,
{
    let handle = std::sync::Arc::new(handle);
    spawn_subject_endpoint(
        endpoint,
        owner,
        on_end,
        ctx,
        on_error,
        move |ctx: crate::NodeContext, subject: &str, req| {
            let asker = ctx.bus.subjects().owner_of_task_subject(subject);
            let handle = handle.clone();
            async move {
                let Some(asker) = asker else {
                    return Err(bitinglip_bus_schema::WireError::new(
                        bitinglip_bus_schema::ErrorKind::InvalidRequest,
                        "the subject names no task owner",
                    ));
                };
                handle(ctx, asker, req).await
            }
        },
    )
}

fn spawn_subject_endpoint<M, Req, Rep, H, F>(
    endpoint: async_nats::service::endpoint::Endpoint,
    owner: ActorRef<M>,
    on_end: M,
    ctx: crate::NodeContext,
    on_error: fn(bitinglip_bus_schema::WireError) -> Rep,
    handle: H,
) -> tokio::task::JoinHandle<()>
where
    M: ractor::Message + Clone,
    Req: serde::de::DeserializeOwned + Send + 'static,
    Rep: serde::Serialize + Send + Sync + 'static,
    H: Fn(crate::NodeContext, &str, Req) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Rep, bitinglip_bus_schema::WireError>> + Send + 'static,
{
    let handle = std::sync::Arc::new(handle);
    spawn_serve(endpoint, owner, on_end, move |req: async_nats::service::Request| {
        let (ctx, handle) = (ctx.clone(), handle.clone());
        async move {
            let reply = match ctx.bus.decode::<Req>(&req.message) {
                Ok(incoming) => handle(ctx.clone(), req.message.subject.as_str(), incoming.envelope.body)
                    .await
                    .unwrap_or_else(on_error),
                Err(err) => {
                    if req.message.reply.is_none() {
                        tracing::warn!(subject = %req.message.subject, cause = %err, "undecodable message dropped");
                        ctx.count_dropped();
                    }
                    on_error(err.into())
                }
            };
            if let Err(err) = ctx.bus.respond(&req, &reply).await {
                tracing::warn!(subject = %req.message.subject, cause = %err, "reply not sent");
            }
        }
    })
}
