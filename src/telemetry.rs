//! Prometheus metrics: the process-wide recorder, the metric names and their help texts.
//!
//! Labels are bounded by construction: operations are EWS operation names from a fixed list
//! (anything else is `other`), statuses are HTTP codes, outcomes and results are fixed words,
//! and tenants come from the configuration. No user name or address is ever a label.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Requests answered, by operation, status and outcome.
pub const REQUESTS: &str = "ews_gateway_requests_total";
/// Time from request arrival to the end of its response body.
pub const REQUEST_DURATION: &str = "ews_gateway_request_duration_seconds";
/// Time from sending a request upstream to its response head.
pub const UPSTREAM_LATENCY: &str = "ews_gateway_upstream_latency_seconds";
/// Failed logins (wrong password, unknown user, locked, malformed).
pub const AUTH_FAILURES: &str = "ews_gateway_auth_failures_total";
/// Lockouts started, by kind (user, source).
pub const LOCKOUTS: &str = "ews_gateway_lockouts_total";
/// Token requests to Entra, by tenant and result.
pub const TOKEN_ACQUISITIONS: &str = "ews_gateway_token_acquisitions_total";
/// Age of the token each tenant currently holds.
pub const TOKEN_AGE: &str = "ews_gateway_token_age_seconds";
/// Seconds until each tenant's token expires.
pub const TOKEN_REMAINING: &str = "ews_gateway_token_remaining_seconds";
/// Requests in flight (including open streaming responses).
pub const IN_FLIGHT: &str = "ews_gateway_in_flight_requests";
/// Streaming-notification responses open.
pub const STREAMING: &str = "ews_gateway_streaming_connections";
/// Body bytes, by direction (`in` from clients, `out` to clients).
pub const BYTES: &str = "ews_gateway_body_bytes_total";
/// Requests refused by a limit, by limit (`principal_rate`, `mailbox_concurrency`).
pub const THROTTLED: &str = "ews_gateway_throttled_total";
/// Configuration reloads, by result (`ok`, `invalid`).
pub const RELOADS: &str = "ews_gateway_config_reloads_total";
/// Audit lines dropped because the writer fell behind.
pub const AUDIT_DROPPED: &str = "ews_gateway_audit_dropped_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Changes the log filter of the running subscriber (registered by `main`).
pub type LogFilterSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static LOG_FILTER: OnceLock<LogFilterSetter> = OnceLock::new();

/// Registers how the log filter is changed at run time (once, by `main`).
pub fn register_log_filter(setter: LogFilterSetter) {
    let _ = LOG_FILTER.set(setter);
}

/// Applies a log filter directive (`info`, `ews_gateway=debug,info`) to the running subscriber;
/// a no-op where none was registered (tests, embedding).
pub fn set_log_filter(directive: &str) -> Result<(), String> {
    match LOG_FILTER.get() {
        Some(set) => set(directive),
        None => Ok(()),
    }
}

/// Installs the process-wide recorder (once; later calls return the same handle). `None` when
/// another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0, 1800.0,
                ])
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

/// The metrics in Prometheus text format.
pub fn render() -> String {
    match install() {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS,
        "Requests answered, by EWS operation, HTTP status and outcome."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Request arrival to end of response body."
    );
    describe_histogram!(
        UPSTREAM_LATENCY,
        Unit::Seconds,
        "Upstream request sent to response head received."
    );
    describe_counter!(
        AUTH_FAILURES,
        "Failed logins (wrong password, unknown user, locked, malformed)."
    );
    describe_counter!(LOCKOUTS, "Lockouts started, by kind (user or source).");
    describe_counter!(
        TOKEN_ACQUISITIONS,
        "Token requests to Entra ID, by tenant and result."
    );
    describe_gauge!(
        TOKEN_AGE,
        Unit::Seconds,
        "Age of each tenant's current access token."
    );
    describe_gauge!(
        TOKEN_REMAINING,
        Unit::Seconds,
        "Seconds until each tenant's current access token expires."
    );
    describe_gauge!(
        IN_FLIGHT,
        "Requests in flight, including open streaming responses."
    );
    describe_gauge!(STREAMING, "Open streaming-notification responses.");
    describe_counter!(
        BYTES,
        Unit::Bytes,
        "Body bytes, by direction (in: from clients, out: to clients)."
    );
    describe_counter!(THROTTLED, "Requests refused by a limit, by limit.");
    describe_counter!(RELOADS, "Configuration reloads, by result.");
    describe_counter!(
        AUDIT_DROPPED,
        "Audit lines dropped because the writer fell behind."
    );
    crate::graph_shaping::describe_metrics();
}

/// The operation label: a known EWS operation, an Autodiscover flavour, `-` or `other`.
pub fn operation_label(operation: Option<&str>) -> &'static str {
    match operation {
        None => "-",
        Some("AutodiscoverPox") => "AutodiscoverPox",
        Some("AutodiscoverSoap") => "AutodiscoverSoap",
        Some("AutodiscoverJson") => "AutodiscoverJson",
        Some(op) => crate::soap::known_operation(op).unwrap_or("other"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_labels_are_bounded() {
        assert_eq!(operation_label(Some("FindItem")), "FindItem");
        assert_eq!(operation_label(Some("alice@contoso.example")), "other");
        assert_eq!(operation_label(Some("AutodiscoverPox")), "AutodiscoverPox");
        assert_eq!(operation_label(None), "-");
    }
}
