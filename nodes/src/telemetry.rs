//! Logs and traces of the process: `tracing` to stderr, and, when a collector is
//! configured (`telemetry.otlp_endpoint` or the standard `OTEL_EXPORTER_OTLP_*`
//! variables), every BitingLip span exported over OTLP/HTTP (protobuf) in batches.
//!
//! The log filter (`RUST_LOG`, `log.level`) applies to the logs only: a node that logs
//! warnings still exports its spans. Export runs on the SDK's own thread; its HTTP
//! requests run on the node's tokio runtime, so no second HTTP stack is needed.

use std::time::Duration;

use bitinglip_config::Config;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::{
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider},
    Resource,
};
use tracing_subscriber::{
    filter::filter_fn, layer::SubscriberExt as _, util::SubscriberInitExt as _, EnvFilter, Layer as _,
};

/// Flushes and stops the trace exporter when dropped (call it outside the runtime).
pub(crate) struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(err) = provider.shutdown() {
                eprintln!("bitinglip: flushing traces failed: {err}");
            }
        }
    }
}

/// An OTLP HTTP client that sends on the process's tokio runtime: the exporter's thread
/// waits on the result without a runtime of its own.
#[derive(Debug, Clone)]
struct RuntimeClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let request: reqwest::Request = request.try_into()?;
        let sent = self.runtime.spawn(async move {
            let response = client.execute(request).await?.error_for_status()?;
            let status = response.status();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        });
        let (status, body) = sent.await??;
        Ok(Response::builder().status(status).body(body)?)
    }
}

/// Installs logging, and span export when a collector is configured. Client commands log
/// warnings only, and export nothing.
pub(crate) fn init(config: &Config, server: bool, runtime: &tokio::runtime::Handle) -> TelemetryGuard {
    let default = if server { config.log.level.clone() } else { "warn".to_string() };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if config.log.format == "json" { fmt.json().boxed() } else { fmt.boxed() };
    let env = |k: &str| std::env::var(k).ok();
    let url = if server { config.telemetry.traces_url(env) } else { None };
    let provider = url.and_then(|url| match provider(config, &url, runtime) {
        Ok(p) => Some(p),
        Err(err) => {
            eprintln!("bitinglip: traces will not be exported to {url}: {err}");
            None
        }
    });
    let otel = provider.as_ref().map(|p| {
        let tracer = p.tracer("bitinglip");
        // BitingLip's own spans, at info and above, whatever the log filter says.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(filter_fn(|m| m.target().starts_with("bitinglip") && *m.level() <= tracing::Level::INFO))
    });
    tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otel).init();
    TelemetryGuard { provider }
}

fn provider(
    config: &Config,
    url: &str,
    runtime: &tokio::runtime::Handle,
) -> Result<SdkTracerProvider, Box<dyn std::error::Error>> {
    let client = RuntimeClient {
        client: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
        runtime: runtime.clone(),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(url)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()?;
    let batch = BatchConfigBuilder::default().with_scheduled_delay(config.telemetry.export_interval).build();
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
    let env = |k: &str| std::env::var(k).ok();
    let resource = Resource::builder()
        .with_service_name(config.telemetry.service_name(env))
        .with_attribute(opentelemetry::KeyValue::new("service.instance.id", config.node_id.clone()))
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(provider)
}
