//! The generation pipeline, written once for every route that runs a model: read the body
//! (within the limits, before a slot is taken), take one of the gateway's request slots,
//! read the body in its API's shape, submit the task with a watch on its events already
//! in place, then answer whole (gathered within `gateway.request_timeout`) or as a stream
//! of server-sent events (closed after `gateway.stream_idle_timeout` of silence); the
//! answer carries the task's id in `x-task-id`, a client that goes away cancels the task,
//! and every outcome is counted in `bitinglip_requests_total`.
//!
//! What differs between the APIs is a [`Shape`]: how a body becomes a task, and how the
//! task's end (or its events) becomes an answer, as Dynamo splits a per-API aggregator
//! and delta generator from the engine's stream and sgl-model-gateway a router trait per
//! API from its pipeline. The shapes: `chat::{Chat, Text}`, `embeddings::Embeddings`,
//! `responses::Responses`; the batch runner renders its lines' answers with the same ones.

use std::{convert::Infallible, future::Future, pin::Pin};

use axum::{
    body::Body,
    http::HeaderMap,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Json,
};
use bitinglip_bus_schema::{ApiKey, ChatParams, ErrorKind, TaskCompleted, TaskId, WireError};
use bitinglip_client::{CancelOnDrop, TaskWatch};
use futures::Stream;
use serde::Serialize;
use tracing::Instrument;

use crate::{
    gateway::{
        access::limits::Admission,
        error::ApiError,
        submit::{gateway_span, gather, idle_limited, read_body, submit_chat, Call},
    },
    NodeContext,
};

/// A streamed answer's events.
pub(crate) type Events = Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;

/// What a request asked for, read in its API's shape.
pub(crate) struct Asked<S> {
    /// The API's own settings, kept for the answer.
    pub(crate) shape: S,
    /// The task to run.
    pub(crate) chat: ChatParams,
    /// Answer as server-sent events.
    pub(crate) stream: bool,
    /// Wait while the model loads (else 503 with `Retry-After` at once).
    pub(crate) wait_for_model: bool,
}

/// A task that ended with a result.
pub(crate) struct Finished {
    /// The task's id (the answer's ids are made from it).
    pub(crate) task_id: TaskId,
    /// When the answer was made, in Unix seconds.
    pub(crate) created: u64,
    /// The whole text.
    pub(crate) text: String,
    /// The result.
    pub(crate) done: TaskCompleted,
}

/// A task whose answer goes out as it is generated.
pub(crate) struct Streamed {
    pub(crate) ctx: NodeContext,
    pub(crate) key: ApiKey,
    pub(crate) task_id: TaskId,
    /// When the answer began, in Unix seconds.
    pub(crate) created: u64,
    /// The task's events, from its first.
    pub(crate) watch: TaskWatch,
    /// Cancels the task if the stream is dropped before its end (disarm at the end).
    pub(crate) cancel: CancelOnDrop,
    /// The relay span, for the finish reasons.
    pub(crate) relay: tracing::Span,
}

/// One API's shape over the pipeline.
pub(crate) trait Shape: Sized + Send + 'static {
    /// The route, for the `gateway` span.
    const ROUTE: &'static str;
    /// The whole answer.
    type Answer: Serialize + Send;

    /// The request read from its body: the task and the settings its answer needs.
    fn read<'a>(
        ctx: &'a NodeContext,
        key: &'a ApiKey,
        body: &'a [u8],
    ) -> impl Future<Output = Result<Asked<Self>, ApiError>> + Send + 'a;

    /// The whole answer of a finished task.
    fn answer(&self, finished: &Finished) -> Self::Answer;

    /// What is done with a whole answer before it goes out (a response is stored).
    fn keep<'a>(
        &'a self,
        _ctx: &'a NodeContext,
        _key: &'a ApiKey,
        _finished: &'a Finished,
        _answer: &'a Self::Answer,
    ) -> impl Future<Output = Result<(), ApiError>> + Send + 'a {
        async { Ok(()) }
    }

    /// The answer as events, in the API's streaming format; by default one event with
    /// the whole answer (or the error) when the task ends.
    fn events(self, streamed: Streamed) -> Events {
        let Streamed { task_id, created, watch, mut cancel, .. } = streamed;
        Box::pin(futures::stream::once(async move {
            let event = match gather(watch).await {
                Ok((text, done)) => sse_data(&self.answer(&Finished { task_id, created, text, done })),
                Err(err) => sse_data(&ApiError::from(err).body()),
            };
            cancel.disarm();
            Ok(event)
        }))
    }
}

/// A request to a generating route, from its body to its answer.
pub(crate) async fn run<S: Shape>(call: Call) -> Result<Response, ApiError> {
    let Call { ctx, key, admission, headers, body } = call;
    let span = gateway_span(S::ROUTE, &headers);
    let mut model = None;
    let nodes = ctx.nodes.clone();
    let result = generate::<S>(ctx, &key, &admission, headers, body, span.clone(), &mut model).instrument(span).await;
    if let Err(err) = &result {
        // A model no node serves is not a series of its own, whatever the error.
        let label = crate::metrics::model_label(&nodes, model.as_deref());
        crate::metrics::metrics().requests.with_label_values(&[label, err.code()]).inc();
    }
    result
}

async fn generate<S: Shape>(
    ctx: NodeContext,
    key: &ApiKey,
    admission: &Admission,
    headers: HeaderMap,
    body: Body,
    span: tracing::Span,
    model_seen: &mut Option<String>,
) -> Result<Response, ApiError> {
    // The body first: a slow client spends its own time, not one of the request slots.
    let body = read_body(&ctx, &headers, body).await?;
    let permit = admission.admit()?;
    let Asked { shape, chat, stream, wait_for_model } = S::read(&ctx, key, &body).await?;
    let model = chat.model.clone();
    span.record("gen_ai.request.model", model.as_str());
    *model_seen = Some(model.clone());
    let (task_id, watch, duplicate) = submit_chat(&ctx, &admission.full, &headers, key, chat, wait_for_model).await?;
    span.record("task.id", task_id.as_str());
    let relay = tracing::info_span!(parent: &span, "relay", task.id = %task_id, gen_ai.response.finish_reasons = tracing::field::Empty);
    let mut cancel = CancelOnDrop::new(&ctx.bus, Some(&key.id), &task_id);
    if duplicate {
        // A retry follows the original; its client going away must not cancel it.
        cancel.disarm();
    }
    let created = bitinglip_nats::now_ms() / 1000;
    let mut resp = if stream {
        let idle = ctx.config.gateway.stream_idle_timeout;
        let streamed =
            Streamed { ctx, key: key.clone(), task_id: task_id.clone(), created, watch, cancel, relay: relay.clone() };
        // The slot, and the gateway and relay spans, are held while the stream is open.
        let events = futures::StreamExt::map(shape.events(streamed), move |e| {
            let _held = (&permit, &span, &relay);
            e
        });
        Sse::new(idle_limited(events, idle)).keep_alive(KeepAlive::default()).into_response()
    } else {
        let timeout = ctx.config.gateway.request_timeout;
        let (text, done) = match tokio::time::timeout(timeout, gather(watch)).instrument(relay.clone()).await {
            Err(_) => return Err(WireError::new(ErrorKind::Timeout, format!("no answer within {timeout:?}")).into()),
            Ok(Err(err)) => {
                cancel.disarm();
                return Err(err.into());
            }
            Ok(Ok(v)) => v,
        };
        cancel.disarm();
        relay.record("gen_ai.response.finish_reasons", done.finish_reason.as_str());
        crate::metrics::metrics().requests.with_label_values(&[&model, "ok"]).inc();
        let finished = Finished { task_id: task_id.clone(), created, text, done };
        let answer = shape.answer(&finished);
        shape.keep(&ctx, key, &finished, &answer).await?;
        Json(answer).into_response()
    };
    resp.headers_mut().insert("x-task-id", task_id.as_str().parse().expect("task ids are valid header values"));
    Ok(resp)
}

/// A `data:` event holding `v` as JSON.
pub(crate) fn sse_data<T: Serialize>(v: &T) -> Event {
    Event::default().data(serde_json::to_string(v).unwrap_or_default())
}
