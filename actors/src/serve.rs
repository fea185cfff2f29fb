//! The loop behind every request/reply endpoint: take each request off a NATS service
//! endpoint (or a subscription) and handle it in its own task, so one slow request (a JetStream PubAck, a KV read) never
//! holds up the next. A handler answers bad input with an error reply; nothing a client
//! sends can stop the loop. When the subscription ends (the client was closed), the owning
//! actor is told, fails, and its supervisor restarts it.

use std::future::Future;

use futures::{Stream, StreamExt};
use ractor::ActorRef;

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
        while let Some(msg) = sub.next().await {
            tokio::spawn(handler(msg));
        }
        let _ = owner.cast(on_end);
    })
}
