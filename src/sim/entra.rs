//! Simulated Entra ID token endpoint (client-credentials grant, v1 and v2).

use std::sync::Arc;

use http::{Response, StatusCode};

use super::{SimRequest, SimState, respond};
use crate::http_util::Body;

/// Which token API a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenApi {
    /// `/{tenant}/oauth2/token` with `resource=`.
    V1,
    /// `/{tenant}/oauth2/v2.0/token` with `scope=`.
    V2,
}

/// Token endpoint state.
#[derive(Debug, Default)]
pub struct EntraState {}

/// Handles a token request.
pub async fn handle_token(
    _state: &Arc<SimState>,
    _tenant: &str,
    _api: TokenApi,
    _req: SimRequest,
) -> Response<Body> {
    respond(StatusCode::NOT_IMPLEMENTED, "text/plain", "not yet")
}
