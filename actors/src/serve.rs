//! The loop behind every request/reply endpoint: take each message off a subscription and
//! handle it in its own task, so one slow request (a JetStream PubAck, a KV read) never
//! holds up the next. A handler answers bad input with an error reply; nothing a client
//! sends can stop the loop. When the subscription ends (the client was closed), the owning
//! actor is told, fails, and its supervisor restarts it.

use std::future::Future;

use async_nats::{Message, Subscriber};
use futures::StreamExt;
use ractor::ActorRef;

/// Runs `handler` for every message of `sub`, each in its own task. When the subscription
/// ends, sends `on_end` to `owner`.
pub(crate) fn spawn_serve<M, H, F>(
    mut sub: Subscriber,
    owner: ActorRef<M>,
    on_end: M,
    handler: H,
) -> tokio::task::JoinHandle<()>
where
    M: ractor::Message + Clone,
    H: Fn(Message) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            tokio::spawn(handler(msg));
        }
        let _ = owner.cast(on_end);
    })
}
