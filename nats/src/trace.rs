//! W3C trace context (`traceparent`) carried in NATS headers, so one request is one trace
//! across every hop.
//!
//! When spans are exported (an OpenTelemetry layer is installed), the context sent on is
//! the current span's, and a receiver opens its span as a child of the one it got: every
//! hop's span has its real parent in the trace. Without an exporter the ids still travel,
//! so logs of one request share its trace id.

use std::fmt;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header that carries the trace context, as in HTTP.
pub const TRACEPARENT: &str = "traceparent";

/// A W3C `traceparent`: version 00, trace id, parent span id, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id (never all zero).
    pub trace_id: u128,
    /// 8-byte span id of the sender (never zero).
    pub span_id: u64,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Starts a new trace.
    pub fn new_root() -> Self {
        Self { trace_id: nonzero_u128(), span_id: nonzero_u64(), flags: 1 }
    }

    /// The same trace, a new span: what a hop sends on.
    pub fn child(&self) -> Self {
        Self { span_id: nonzero_u64(), ..*self }
    }

    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; anything else is `None`.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|v| *v != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|v| *v != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self { trace_id, span_id, flags })
    }

    /// The current tracing span's context, when that span is exported.
    pub fn current() -> Option<Self> {
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| Self {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            flags: sc.trace_flags().to_u8(),
        })
    }

    /// This context as the remote parent of spans opened in this process.
    pub fn otel_context(&self) -> opentelemetry::Context {
        let sc = SpanContext::new(
            TraceId::from_bytes(self.trace_id.to_be_bytes()),
            SpanId::from_bytes(self.span_id.to_be_bytes()),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        );
        opentelemetry::Context::new().with_remote_span_context(sc)
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

/// Makes a span opened for a received message the child of the sender's span. Call it
/// before the span is entered; without an exporter it does nothing.
pub fn continue_trace(span: &tracing::Span, parent: Option<&TraceParent>) {
    if let Some(p) = parent {
        // Fails only when no exporter is installed or the span is filtered out: then
        // there is nothing to link.
        let _ = span.set_parent(p.otel_context());
    }
}

fn nonzero_u128() -> u128 {
    loop {
        let v: u128 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_malformed_values() {
        let tp = TraceParent::new_root();
        assert_eq!(TraceParent::parse(&tp.to_string()), Some(tp));
        let child = tp.child();
        assert_eq!(child.trace_id, tp.trace_id);
        assert_ne!(child.span_id, tp.span_id);
        let known = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(TraceParent::parse(known).unwrap().to_string(), known);
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-xyz",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }
}
