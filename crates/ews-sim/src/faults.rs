//! Fault injection for the simulator: latency, throttling, outages, dropped connections.
//!
//! Set in the simulator config, through `PUT /_sim/faults` or `SimHandle::set_faults`.

use serde::{Deserialize, Serialize};

/// Faults currently injected. The default injects nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added latency before every EWS answer, in milliseconds.
    pub ews_latency_ms: u64,
    /// Answer every EWS request with an `ErrorServerBusy` fault carrying this `BackOffMilliseconds`.
    pub ews_server_busy_backoff_ms: Option<u64>,
    /// Answer every EWS request with HTTP 503.
    pub ews_unavailable: bool,
    /// Send the response head and part of the body, then drop the connection.
    pub ews_drop_mid_response: bool,
    /// Token endpoint answers HTTP 503 (Entra outage).
    pub token_unavailable: bool,
    /// Added latency before every token endpoint answer, in milliseconds.
    pub token_latency_ms: u64,
    /// EWS refuses tokens obtained with a client secret (401 `2000010`), as organisations that
    /// require certificate credentials do.
    pub ews_require_certificate_auth: bool,
    /// Added latency of every admitted Graph request, in milliseconds, spent while it counts
    /// as in flight (so concurrency limits and high-water marks can be exercised).
    pub graph_latency_ms: u64,
}
