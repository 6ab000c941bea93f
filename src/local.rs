//! What the gateway answers itself, without any backend: Autodiscover (POX, SOAP, JSON) and the
//! `GET /EWS/Exchange.asmx` probe. Callers are authenticated by the pipeline's own step.

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;

use crate::audit::RequestAudit;
use crate::autodiscover::{self, Flavor};
use crate::error::GatewayError;
use crate::http_util::{self, Body, ConnInfo, DeadlineBody};
use crate::proxy::{ClientBody, Gateway, authenticate_or_challenge, authenticate_request};

/// Largest Autodiscover request body read.
const AUTODISCOVER_LIMIT: usize = 64 * 1024;

/// The EWS URL Autodiscover hands out: the configured public URL, else this request's origin.
fn public_ews_url(gw: &Gateway, headers: &HeaderMap, conn: ConnInfo) -> String {
    if let Some(url) = &gw.public_url {
        return format!("{}/EWS/Exchange.asmx", url.trim_end_matches('/'));
    }
    let scheme = if conn.tls { "https" } else { "http" };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '@']))
        .map(str::to_owned)
        .unwrap_or_else(|| conn.local.to_string());
    format!("{scheme}://{host}/EWS/Exchange.asmx")
}

fn xml_ok(body: String, content_type: &'static str, status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(http_util::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Autodiscover, answered locally: nothing goes upstream.
pub(crate) async fn autodiscover<B: ClientBody>(
    gw: &Gateway,
    req: Request<B>,
    conn: ConnInfo,
    flavor: Flavor,
    audit: &mut RequestAudit,
) -> Result<Response<Body>, GatewayError> {
    audit.operation = Some(format!("Autodiscover{flavor:?}"));
    let url = public_ews_url(gw, req.headers(), conn);
    if flavor == Flavor::Json {
        if req.method() != Method::GET {
            return Err(GatewayError::MethodNotAllowed { allow: "GET" });
        }
        return Ok(match autodiscover::json(req.uri().query(), &url) {
            Ok(body) => xml_ok(body, "application/json; charset=utf-8", StatusCode::OK),
            Err(body) => xml_ok(
                body,
                "application/json; charset=utf-8",
                StatusCode::BAD_REQUEST,
            ),
        });
    }
    if req.method() != Method::POST {
        return Err(GatewayError::MethodNotAllowed { allow: "POST" });
    }
    let (principal, req) = match authenticate_or_challenge(gw, req, conn, audit).await {
        Ok(authenticated) => authenticated,
        Err(challenge) => return Ok(challenge),
    };
    let limited = http_body_util::Limited::new(
        DeadlineBody::new(req.into_body(), gw.body_read_timeout),
        AUTODISCOVER_LIMIT,
    );
    let body = limited
        .collect()
        .await
        .map_err(|_| GatewayError::Refused {
            code: "ErrorInvalidRequest",
            message: "The Autodiscover request body could not be read or is larger than 64 KiB."
                .to_owned(),
        })?
        .to_bytes();
    audit.bytes_in = body.len() as u64;
    match flavor {
        Flavor::Pox => Ok(xml_ok(
            autodiscover::pox(&principal, &body, &url),
            "text/xml; charset=utf-8",
            StatusCode::OK,
        )),
        _ => autodiscover::soap(&principal, &body, &url)
            .map(|xml| xml_ok(xml, "text/xml; charset=utf-8", StatusCode::OK))
            .ok_or_else(|| GatewayError::Refused {
                code: "ErrorInvalidRequest",
                message: "The Autodiscover SOAP request is not a GetUserSettings request."
                    .to_owned(),
            }),
    }
}

/// `GET /EWS/Exchange.asmx`: DavMail probes it on every IMAP connection and needs 200 or 401.
/// Answered locally; nothing goes upstream.
pub(crate) async fn ews_probe<B: ClientBody>(
    gw: &Gateway,
    req: Request<B>,
    conn: ConnInfo,
    audit: &mut RequestAudit,
) -> Result<Response<Body>, GatewayError> {
    authenticate_request(gw, req.headers(), conn, audit).await?;
    let mut resp = Response::new(http_util::full(
        "ews-gateway: EWS is served here; send SOAP requests with POST.\n",
    ));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}
