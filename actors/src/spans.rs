//! Spans that `tracing` cannot open by itself: the time a task waited in the queue starts
//! in one process (the task manager's acceptance) and ends in another (a worker's
//! delivery), so the worker writes it afterwards with its real start time, through the
//! OpenTelemetry API. Without an exporter installed this costs nothing and writes nothing.

use std::time::{Duration, SystemTime};

use bitinglip_nats::trace::TraceParent;
use opentelemetry::{
    trace::{Span as _, SpanKind, Tracer as _},
    KeyValue,
};

/// Records the `queue` span of one delivery: from `accepted_ms` (when the task manager
/// stored the task) to now, a child of `parent` (the context the task was queued with).
/// Returns its context, so the worker's own span can follow it in the trace.
pub(crate) fn record_queue(
    parent: Option<&TraceParent>,
    accepted_ms: u64,
    task_id: &str,
    model: &str,
    attempt: u32,
) -> Option<TraceParent> {
    let tracer = opentelemetry::global::tracer("bitinglip");
    let cx = parent.map(TraceParent::otel_context).unwrap_or_default();
    let start = SystemTime::UNIX_EPOCH + Duration::from_millis(accepted_ms);
    let mut span = tracer
        .span_builder("queue")
        .with_kind(SpanKind::Consumer)
        .with_start_time(start.min(SystemTime::now()))
        .with_attributes([
            KeyValue::new("task.id", task_id.to_string()),
            KeyValue::new("gen_ai.request.model", model.to_string()),
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("task.attempt", i64::from(attempt)),
        ])
        .start_with_context(&tracer, &cx);
    span.end();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| TraceParent {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            flags: sc.trace_flags().to_u8(),
        })
        .or(parent.copied())
}
