//! Simulated Azure managed identity endpoints: the VM Instance Metadata Service (IMDS) and the
//! App Service / Container Apps identity endpoint. Both issue app-only tokens for the tenant's
//! managed-identity service principal, with Azure's request rules and response shapes.

// Early answers are whole responses; the simulator is not a hot path worth boxing them for.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use http::{Method, Response, StatusCode};

use super::directory::{App, Tenant};
use super::tokens::{ClientAuth, EXCHANGE_AUDIENCES, TokenClaims, now_unix};
use super::{SimRequest, SimState, respond};
use ews_http::http_util::Body;

fn query(req: &SimRequest) -> Vec<(String, String)> {
    req.query
        .as_deref()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    respond(status, "application/json; charset=utf-8", value.to_string())
}

fn error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    json(
        status,
        serde_json::json!({ "error": error, "error_description": description }),
    )
}

/// The managed identity (tenant and app) a request names, by `client_id` or the first one.
fn identity(state: &SimState, client_id: Option<&str>) -> Option<(Tenant, App)> {
    let dir = state.directory.read().ok()?;
    dir.tenants.iter().find_map(|t| {
        t.apps
            .iter()
            .find(|a| {
                a.managed_identity && client_id.is_none_or(|c| a.client_id.eq_ignore_ascii_case(c))
            })
            .map(|a| (t.clone(), a.clone()))
    })
}

/// Issues a token; the error is the response to send.
fn issue(
    state: &SimState,
    params: &[(String, String)],
) -> Result<(String, TokenClaims), Response<Body>> {
    let resource = param(params, "resource").unwrap_or_default();
    if resource.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'resource' is missing",
        ));
    }
    let graph = super::entra::GRAPH_RESOURCES.contains(&resource);
    if !graph && !EXCHANGE_AUDIENCES.contains(&resource) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            &format!(
                "AADSTS500011: The resource principal named {resource} was not found in the tenant."
            ),
        ));
    }
    let client_id = param(params, "client_id").or_else(|| param(params, "clientid"));
    let (tenant, app) = identity(state, client_id).ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Identity not found",
        )
    })?;
    let mut claims = TokenClaims::app_only(
        &tenant.id,
        &app,
        resource,
        ClientAuth::Certificate,
        now_unix(),
        state.tokens.lifetime(),
    );
    if graph {
        claims.roles = app.graph_roles.clone();
    }
    let token = state.tokens.issue(&claims).map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            &e.to_string(),
        )
    })?;
    Ok((token, claims))
}

async fn faults(state: &SimState) -> Option<Response<Body>> {
    let f = state.faults();
    if f.token_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(f.token_latency_ms)).await;
    }
    f.token_unavailable.then(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "The identity endpoint is unavailable.",
        )
    })
}

/// `GET /metadata/identity/oauth2/token` with `Metadata: true` (Azure VM IMDS).
pub async fn imds(state: &SimState, req: &SimRequest) -> Response<Body> {
    if let Some(resp) = faults(state).await {
        return resp;
    }
    if req.method != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "Only GET is supported",
        );
    }
    if req.headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    let params = query(req);
    if param(&params, "api-version").is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'api-version' is missing",
        );
    }
    match issue(state, &params) {
        Ok((token, claims)) => json(
            StatusCode::OK,
            serde_json::json!({
                "access_token": token,
                "client_id": claims.appid,
                "expires_in": (claims.exp - now_unix()).to_string(),
                "expires_on": claims.exp.to_string(),
                "ext_expires_in": (claims.exp - now_unix()).to_string(),
                "not_before": claims.nbf.to_string(),
                "resource": claims.aud,
                "token_type": "Bearer",
            }),
        ),
        Err(resp) => resp,
    }
}

/// `GET /msi/token` with `X-IDENTITY-HEADER` (App Service, Container Apps; `IDENTITY_ENDPOINT`).
pub async fn app_service(state: &SimState, req: &SimRequest) -> Response<Body> {
    if let Some(resp) = faults(state).await {
        return resp;
    }
    let header = req
        .headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok());
    if header != Some(state.config.identity_header.as_str()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_request",
            "The X-IDENTITY-HEADER header is missing or wrong",
        );
    }
    let params = query(req);
    if param(&params, "api-version") != Some("2019-08-01") {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "api-version 2019-08-01 is required",
        );
    }
    match issue(state, &params) {
        Ok((token, claims)) => json(
            StatusCode::OK,
            serde_json::json!({
                "access_token": token,
                "expires_on": claims.exp.to_string(),
                "resource": claims.aud,
                "token_type": "Bearer",
                "client_id": claims.appid,
            }),
        ),
        Err(resp) => resp,
    }
}
