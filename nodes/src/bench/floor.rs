//! The floor: what the same nats-server does with nothing of BitingLip in the way. A
//! core-NATS request answered by a plain responder, and a JetStream publish (waiting for
//! its PubAck) consumed from a pull consumer, which is the work-queue hop every task
//! takes.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;

use super::stats::{closed_loop, Samples};

/// A payload about the size of a small chat request in its envelope.
fn payload() -> bytes::Bytes {
    bytes::Bytes::from(vec![b'x'; 256])
}

/// Request/reply against a responder on its own connection, at `clients` at once.
pub(crate) async fn request_reply(url: &str, clients: usize, duration: Duration) -> anyhow::Result<Samples> {
    let responder = async_nats::connect(url).await?;
    let requester = async_nats::connect(url).await?;
    let mut sub = responder.subscribe("bench.floor.echo").await?;
    let answer = responder.clone();
    let serve = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                let _ = answer.publish(reply, msg.payload).await;
            }
        }
    });
    responder.flush().await?;
    let (mut series, _) = closed_loop(clients, duration, move || {
        let requester = requester.clone();
        async move {
            let t = Instant::now();
            requester.request("bench.floor.echo", payload()).await.ok()?;
            Some(vec![t.elapsed().as_secs_f64()])
        }
    })
    .await;
    serve.abort();
    Ok(series.pop().unwrap_or_default())
}

/// One JetStream round per client: publish and wait for the PubAck, then pull a message
/// from a durable consumer shared by all clients and ack it (waiting for the ack's
/// confirmation), sequentially; `clients` such loops at once. Each round stores one message
/// and removes one, as a task's queue hop does; like the platform's tasks stream, the
/// stream is a file-backed work queue on the same server (`sync_interval` as the run's).
pub(crate) async fn jetstream_publish_consume(
    url: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Samples> {
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);
    let name = format!("BENCH_FLOOR_{clients}");
    let subject = format!("bench.floor.queue.{clients}");
    let stream = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .get_or_create_consumer(
            "bench-floor",
            pull::Config { durable_name: Some("bench-floor".into()), ..Default::default() },
        )
        .await?;
    let (mut series, _) = closed_loop(clients, duration, move || {
        let (js, consumer, subject) = (js.clone(), consumer.clone(), subject.clone());
        async move {
            let t = Instant::now();
            js.publish(subject, payload()).await.ok()?.await.ok()?;
            let mut batch = consumer.batch().max_messages(1).expires(Duration::from_secs(5)).messages().await.ok()?;
            let msg = batch.next().await?.ok()?;
            msg.double_ack().await.ok()?;
            Some(vec![t.elapsed().as_secs_f64()])
        }
    })
    .await;
    let _ = js_delete(url, &name).await;
    Ok(series.pop().unwrap_or_default())
}

/// Removes a floor stream once measured (a work queue left behind would hold nothing,
/// but its files would stay on the benchmark's server until it stops).
async fn js_delete(url: &str, name: &str) -> anyhow::Result<()> {
    let js = jetstream::new(async_nats::connect(url).await?);
    js.delete_stream(name).await?;
    Ok(())
}
