//! What both the OpenAI routes and the task API do with a request before it is a task:
//! what it arrives with ([`Call`]), reading the body within the limits, and submitting it
//! with a watch on its events already in place.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    extract::{FromRequest, Request},
    http::{HeaderMap, StatusCode},
};
use bitinglip_bus_schema::{ApiKey, ErrorKind, Priority, SubmitReply, SubmitRequest, TaskId, WireError};
use bitinglip_client::{Relayed, TaskWatch};
use bitinglip_nats::trace::TraceParent;
use std::time::{Duration, Instant};

use super::{
    access::{auth::check_model, limits::Admission},
    error::ApiError,
};
use crate::{ops::task_ids::task_id_for, NodeContext};

/// A request to a route that makes a task, as it arrives: the node, the key the check
/// found, the gateway's admission, the headers and the body (not read yet: it is read
/// within the limits before a request slot is taken).
pub(crate) struct Call {
    pub(crate) ctx: NodeContext,
    pub(crate) key: ApiKey,
    pub(crate) admission: Arc<Admission>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Body,
}

impl FromRequest<NodeContext> for Call {
    type Rejection = ApiError;

    async fn from_request(req: Request, ctx: &NodeContext) -> Result<Self, ApiError> {
        let (mut parts, body) = req.into_parts();
        // Both are put there by the key check every route is behind.
        let missing = || ApiError::from(WireError::new(ErrorKind::Internal, "the request passed no key check"));
        let key = parts.extensions.remove::<ApiKey>().ok_or_else(missing)?;
        let admission = parts.extensions.remove::<Arc<Admission>>().ok_or_else(missing)?;
        Ok(Call { ctx: ctx.clone(), key, admission, headers: parts.headers, body })
    }
}

/// The headers of a request that makes a task, for the OpenAPI document (`Call` reads
/// them from the request).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub(crate) struct TaskHeaders {
    /// the same key and body: the same task, once
    #[param(rename = "Idempotency-Key")]
    _idempotency_key: Option<String>,
    /// W3C trace context of the caller
    #[param(rename = "traceparent")]
    _traceparent: Option<String>,
}

/// Ends `events` when nothing comes for `idle` (keep-alive comments do not count): an
/// abandoned or stuck stream does not hold a connection and a request slot for ever.
pub(super) fn idle_limited<S>(events: S, idle: std::time::Duration) -> impl futures::Stream<Item = S::Item>
where
    S: futures::Stream + Send + 'static,
{
    futures::stream::unfold(Box::pin(events), move |mut events| async move {
        match tokio::time::timeout(idle, futures::StreamExt::next(&mut events)).await {
            Ok(Some(item)) => Some((item, events)),
            Ok(None) => None,
            Err(_) => {
                tracing::info!(idle = ?idle, "stream idle for too long; closed");
                None
            }
        }
    })
}

/// The largest body a request may have: the configured limit, or what one bus message
/// can carry when that is less (with room for the envelope and the other fields).
pub(super) fn body_limit(ctx: &NodeContext) -> usize {
    ctx.config.gateway.max_body_bytes.min(ctx.bus.max_payload().saturating_sub(4096))
}

/// Reads the body up to the limit (the configured one, or what one bus message can carry
/// when that is less): a larger one is a 413 in OpenAI's shape.
pub(super) async fn read_body(ctx: &NodeContext, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    read_body_up_to(ctx, headers, body, body_limit(ctx)).await
}

/// [`read_body`] with its own `limit` (an uploaded file's, larger than a request's).
pub(super) async fn read_body_up_to(
    ctx: &NodeContext,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::from(WireError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body is over the limit of {limit} bytes"),
        ))
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    // A client that trickles its body is cut off: it must not hold the connection (or,
    // were the body read after admission, a request slot) for as long as it likes.
    let timeout = ctx.config.gateway.body_timeout;
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!("the request body took over {timeout:?}"),
        )
        .with_code("request_timeout")
    })?;
    read.map_err(|err| {
        let over = std::error::Error::source(&err).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over {
            too_large()
        } else {
            ApiError::from(WireError::new(ErrorKind::InvalidRequest, format!("could not read the request body: {err}")))
        }
    })
}

/// The `gateway` span of a request to `route`: a child of the caller's `traceparent` when
/// it sent one; the model and the task id are recorded on it as they become known.
pub(super) fn gateway_span(route: &'static str, headers: &HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        "gateway",
        otel.kind = "server",
        http.route = route,
        gen_ai.request.model = tracing::field::Empty,
        task.id = tracing::field::Empty
    );
    let caller = headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(TraceParent::parse);
    bitinglip_nats::trace::continue_trace(&span, caller.as_ref());
    span
}

/// Submits a chat request from HTTP: the task id comes from the `Idempotency-Key` header
/// when there is one, `X-Priority: batch` picks the batch class, `traceparent` continues
/// the caller's trace. Subscribes to the task's events before submitting, so not even the
/// first chunk can be missed; returns the watch and whether it was a retry.
pub(super) async fn submit_chat(
    ctx: &NodeContext,
    full: &super::access::limits::FullQueues,
    headers: &HeaderMap,
    key: &ApiKey,
    chat: bitinglip_bus_schema::ChatParams,
    wait_for_model: bool,
) -> Result<(TaskId, TaskWatch, bool), ApiError> {
    check_model(key, &chat.model)?;
    let idempotency_key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let priority = match headers.get("x-priority").and_then(|v| v.to_str().ok()) {
        Some("batch") => Priority::Batch,
        _ => Priority::Interactive,
    };
    let trace = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
        .unwrap_or_else(TraceParent::new_root);
    // `X-Wait-For-Model: false` (or the body's `wait_for_model`): answer 503 with
    // Retry-After while the model loads, rather than waiting for it.
    let wait_for_model = wait_for_model
        && !headers
            .get("x-wait-for-model")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("false"));
    // A queue a task manager just called full is refused here, without a subscription
    // or a round trip (a flood costs the task managers one submit per queue per
    // `limits::FULL_REMEMBERED`, not one per request).
    if let Some(err) = full.get(&(chat.model.clone(), priority)) {
        return Err(err.into());
    }
    // The task belongs to the key; its idempotency key is scoped to it.
    let owner = Some(key.id.clone());
    // Without an idempotency key the id is a new ULID made here: no earlier task has it.
    let new_id = idempotency_key.is_none();
    let mut submit = SubmitRequest {
        chat,
        task_id: None,
        idempotency_key,
        priority,
        wait_for_model,
        owner,
        new_id,
        // The key's tenant and weight: its share of a busy model.
        tenant: Some(key.tenant().to_string()),
        weight: Some(key.weight()),
    };
    let task_id: TaskId = task_id_for(&submit);
    submit.task_id = Some(task_id.clone());
    let watch = TaskWatch::subscribe(&ctx.bus, &ctx.store, submit.owner.as_deref(), &task_id).await?;
    // While the bus heals (a server restart, a stream leader's election) a submit waits
    // and asks again with the same task id, which the task manager recognises (the
    // record, and the stream's `Nats-Msg-Id`): the client sees no error and never gets
    // two tasks.
    let deadline = Instant::now() + ctx.config.gateway.request_timeout.min(SUBMIT_PATIENCE);
    let mut delay = Duration::from_millis(100);
    let mut retried = false;
    let reply = loop {
        let result = ctx.bus.ask_as(submit.owner.as_deref(), &submit, Some(&trace), None).await;
        if !passing(&result) || Instant::now() + delay > deadline {
            break result;
        }
        tracing::warn!(task.id = %task_id, "submit not answered while the bus heals; asking again");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
        retried = true;
    };
    let reply = reply.map_err(|e| match e {
        bitinglip_nats::BusError::NoResponders { .. } => {
            ApiError::from(WireError::new(ErrorKind::Unavailable, "no task manager is running"))
        }
        other => ApiError::from(WireError::from(&other)),
    })?;
    match reply {
        SubmitReply::Accepted(a) => {
            // Without an idempotency key a duplicate can only be our own earlier try.
            let duplicate = a.duplicate && !(retried && submit.idempotency_key.is_none());
            // A retry of a task that already ran: follow it from its stored events.
            let watch = if duplicate {
                TaskWatch::resume(&ctx.bus, &ctx.store, submit.owner.as_deref(), &task_id, 0).await?
            } else {
                watch
            };
            Ok((task_id, watch, duplicate))
        }
        SubmitReply::Rejected(err) => {
            if err.kind == ErrorKind::Overloaded {
                full.remember((submit.chat.model.clone(), submit.priority), err.clone());
            }
            Err(err.into())
        }
    }
}

/// The answer of a task followed to its end: its text and its result.
pub(super) async fn gather(mut watch: TaskWatch) -> Result<(String, bitinglip_bus_schema::TaskCompleted), WireError> {
    let mut text = String::new();
    while let Some(r) = watch.next().await {
        match r {
            Relayed::Text { text: t, .. } => text.push_str(&t),
            Relayed::Started { .. } => {}
            Relayed::Done(done) => return Ok((text, done)),
            Relayed::Failed(err) => return Err(err),
        }
    }
    Err(WireError::new(ErrorKind::Internal, "event stream ended without a result"))
}

/// How long a submit waits for the bus to heal at most: a server cut off from a cluster
/// (not crashed) is found by the others' pings and replaced by elections, which on a
/// loaded machine can take over 30 s; clients wait minutes by default (the OpenAI SDKs
/// 10), so waiting is better than a 5xx.
const SUBMIT_PATIENCE: Duration = Duration::from_secs(60);

/// True when a submit's outcome is the bus healing, not an answer (pure): no answer, no
/// task manager, or one that could not reach its stream.
fn passing(result: &Result<SubmitReply, bitinglip_nats::BusError>) -> bool {
    use bitinglip_nats::BusError;
    match result {
        Err(BusError::NoResponders { .. } | BusError::Timeout { .. } | BusError::Request { .. }) => true,
        Err(BusError::Publish { .. }) => true,
        Err(_) => false,
        Ok(SubmitReply::Rejected(e)) => matches!(e.kind, ErrorKind::Unavailable | ErrorKind::Timeout),
        Ok(SubmitReply::Accepted(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submit_asks_again_only_while_the_bus_heals() {
        use bitinglip_nats::BusError;
        let unavailable = WireError::new(ErrorKind::Unavailable, "tasks stream unavailable");
        assert!(passing(&Ok(SubmitReply::Rejected(unavailable))));
        assert!(passing(&Err(BusError::NoResponders { subject: "s".into() })));
        let refused = WireError::new(ErrorKind::UnknownModel, "no such model");
        assert!(!passing(&Ok(SubmitReply::Rejected(refused))));
        let full = WireError::new(ErrorKind::Overloaded, "queue full");
        assert!(!passing(&Ok(SubmitReply::Rejected(full))));
    }
}
