//! Simulated EWS endpoint: bearer validation, impersonation, routing headers, SOAP envelope.

use std::sync::Arc;

use http::{Response, StatusCode};

use super::{SimRequest, SimState, respond};
use crate::http_util::Body;

/// Handles a request under `/EWS/`.
pub async fn handle(_state: &Arc<SimState>, _req: SimRequest) -> Response<Body> {
    respond(StatusCode::NOT_IMPLEMENTED, "text/plain", "not yet")
}
