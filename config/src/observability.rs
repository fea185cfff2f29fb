//! Observability keys: where traces go (`telemetry.*`) and where a node without a gateway
//! serves its metrics (`metrics.*`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Traces, exported over OTLP/HTTP (protobuf). Unset keys follow the standard
/// OpenTelemetry variables, so a node configured for a collector by its environment needs
/// nothing here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Collector base URL (`http://collector:4318`; spans go to `<url>/v1/traces`). Unset:
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is), then `OTEL_EXPORTER_OTLP_ENDPOINT`;
    /// with none of them, no spans are exported.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute (unset: `OTEL_SERVICE_NAME`, else `bitinglip`).
    pub service_name: Option<String>,
    /// How long finished spans wait before they are exported in one batch.
    #[serde(with = "humantime_serde")]
    pub export_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { otlp_endpoint: None, service_name: None, export_interval: Duration::from_secs(5) }
    }
}

impl TelemetryConfig {
    /// The URL spans are posted to, from this config or the standard variables in `env`
    /// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is a full URL; the others get `/v1/traces`).
    pub fn traces_url(&self, env: impl Fn(&str) -> Option<String>) -> Option<String> {
        let base = |url: &str| format!("{}/v1/traces", url.trim_end_matches('/'));
        if let Some(url) = self.otlp_endpoint.as_deref().filter(|u| !u.is_empty()) {
            return Some(base(url));
        }
        if let Some(url) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|u| !u.is_empty()) {
            return Some(url);
        }
        env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|u| !u.is_empty()).map(|u| base(&u))
    }

    /// The service name, from this config, `OTEL_SERVICE_NAME`, or `bitinglip`.
    pub fn service_name(&self, env: impl Fn(&str) -> Option<String>) -> String {
        self.service_name
            .clone()
            .or_else(|| env("OTEL_SERVICE_NAME"))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "bitinglip".to_string())
    }
}

/// Prometheus metrics. A node with a gateway serves `/metrics` on its HTTP port; `listen`
/// adds a small listener (`/metrics`, `/health`, `/ready`) on any node, which is how a
/// worker-only node is scraped.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the metrics listener (`0.0.0.0:9464`); unset: none.
    pub listen: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_prefers_config_then_the_standard_variables() {
        let none = |_: &str| None;
        let mut t = TelemetryConfig::default();
        assert_eq!(t.traces_url(none), None);
        let env = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://c:4318/".to_string()),
            _ => None,
        };
        assert_eq!(t.traces_url(env).as_deref(), Some("http://c:4318/v1/traces"));
        let env2 = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => Some("http://t:1/x".to_string()),
            _ => env(k),
        };
        assert_eq!(t.traces_url(env2).as_deref(), Some("http://t:1/x"));
        t.otlp_endpoint = Some("http://cfg:4318".into());
        assert_eq!(t.traces_url(env2).as_deref(), Some("http://cfg:4318/v1/traces"));
        assert_eq!(t.service_name(none), "bitinglip");
    }
}
