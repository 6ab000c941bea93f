//! The backend seam: where an authorised EWS call goes, and which backend serves which mailbox.
//!
//! The pipeline (`proxy`) decides who calls, as which mailbox, for which tenant and operation;
//! it hands a backend an [`AuthorisedCall`] and nothing else. A backend carries the call out its
//! own way and gets its own tokens from the call's [`Tenant`] by resource (scope). Today's
//! backend is [`passthrough::EwsPassthrough`] (EWS to Exchange Online or Exchange Server).
//!
//! Adding a backend is a module implementing [`Backend`] plus a `config::BackendConfig` variant
//! built in [`build`]; the pipeline does not change.

pub mod passthrough;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Response};

use crate::auth::{MailboxPattern, Principal};
use crate::config::{BackendConfig, Config};
use crate::error::GatewayError;
use crate::http_util::Body;
use crate::rewrite::{HeadInfo, ScannedHead};
use crate::soap::ConnectingSid;
use crate::token::{Tenant, TokenSource};

/// Request headers a client may send through to Exchange; everything else is dropped
/// (deny by default: the client's `Authorization`, spoofed `X-Forwarded-*`, ...).
/// `Content-Type` is set by the gateway to the canonical value and `SOAPAction` is checked and
/// dropped (see `canonical` in the core crate): neither is the client's to pass on.
const FORWARDED_REQUEST_HEADERS: &[&str] = &[
    "accept",
    "accept-encoding",
    "accept-language",
    "user-agent",
    "cookie",
    "client-request-id",
    "return-client-request-id",
    "x-preferserveraffinity",
    "x-backendoverridecookie",
    "x-clientstatistics",
    "prefer",
];

/// Copies the client headers that may go upstream.
pub fn forwardable_request_headers(client: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in client {
        if FORWARDED_REQUEST_HEADERS.contains(&name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The client's request body: the scanned envelope head, the unread rest, and its length.
pub struct RequestBody {
    head: ScannedHead,
    rest: Option<Body>,
    /// The client's `Content-Length`, when it sent one.
    declared_length: Option<u64>,
    /// Bytes read into the head.
    consumed: u64,
}

/// A request body with the impersonation written into its head.
pub struct Rewritten {
    /// Everything read so far, rewritten.
    pub prefix: Bytes,
    /// The rest of the client's body, unchanged; `None` when `prefix` is the whole body.
    pub rest: Option<Body>,
    /// The length of `prefix` and `rest` together, when the client declared its length.
    pub content_length: Option<u64>,
}

impl RequestBody {
    /// A body whose head was scanned after reading `consumed` bytes.
    pub fn new(
        head: ScannedHead,
        rest: Option<Body>,
        declared_length: Option<u64>,
        consumed: u64,
    ) -> Self {
        Self {
            head,
            rest,
            declared_length,
            consumed,
        }
    }

    /// What the envelope head says (SOAP version, operation, the client's impersonation).
    pub fn info(&self) -> &HeadInfo {
        self.head.info()
    }

    /// The body with exactly one impersonation of `target` in its head, every other byte as
    /// the client sent it.
    pub fn rewrite(self, target: &ConnectingSid) -> Rewritten {
        let prefix = self.head.rewrite(target);
        let content_length = self
            .declared_length
            .map(|len| len - self.consumed.min(len) + prefix.len() as u64);
        Rewritten {
            prefix,
            rest: self.rest,
            content_length,
        }
    }

    /// The body exactly as the client sent it: the bytes read so far and the unread rest.
    pub fn into_original(self) -> (Bytes, Option<Body>) {
        (self.head.into_original(), self.rest)
    }
}

/// An EWS call the pipeline has authenticated and authorised.
pub struct AuthorisedCall {
    /// Who is calling.
    pub principal: Arc<Principal>,
    /// The mailbox the call acts as, in the form the client named it (or the principal's own).
    pub mailbox: ConnectingSid,
    /// The `X-AnchorMailbox` to route by: the mailbox, or an authorised streaming group anchor.
    pub anchor: String,
    /// The tenant whose app acts; tokens come from it by resource.
    pub tenant: Arc<Tenant>,
    /// The EWS operation (local name of the Body's first element).
    pub operation: String,
    /// Client headers that may go upstream (the deny-by-default list).
    pub headers: HeaderMap,
    /// The request body.
    pub body: RequestBody,
}

/// A GET of a service description document (WSDL/XSD) by an authenticated principal.
#[derive(Debug)]
pub struct DocumentRequest {
    /// Path below the EWS base, e.g. `/EWS/Services.wsdl`.
    pub path: &'static str,
    /// The tenant of the principal's own mailbox.
    pub tenant: Arc<Tenant>,
    /// The principal's own mailbox (anchor).
    pub anchor: String,
    /// Client headers that may go upstream.
    pub headers: HeaderMap,
}

/// What a backend answered.
pub struct BackendResponse {
    /// Status, headers and the streaming body.
    pub response: Response<Body>,
    /// The upstream's request id, for the audit trail.
    pub upstream_request_id: Option<String>,
    /// A long-lived stream (streaming notifications): it closes cleanly when the gateway drains.
    pub streaming: bool,
}

/// What backend futures are: boxed, so backends can be chosen per call.
pub type BackendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<BackendResponse, GatewayError>> + Send + 'a>>;

/// A backend for authorised EWS calls.
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs and `check`.
    fn name(&self) -> &'static str;

    /// Carries out an EWS SOAP call.
    fn call(&self, call: AuthorisedCall) -> BackendFuture<'_>;

    /// Serves a service description document; backends without one answer 404.
    fn document(&self, request: DocumentRequest) -> BackendFuture<'_> {
        let _ = request;
        Box::pin(async { Err(GatewayError::NotFound) })
    }
}

/// The backend and tenant serving one mailbox.
#[derive(Clone)]
pub struct Chosen {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// The tenant whose app acts.
    pub tenant: Arc<Tenant>,
}

struct Route {
    patterns: Vec<MailboxPattern>,
    backend: Arc<dyn Backend>,
    tenant: Option<Arc<Tenant>>,
}

/// Which backend serves which mailbox: `[[route]]` entries first (in order), else the backend
/// of the tenant serving the mailbox's domain.
pub struct Backends {
    tokens: Arc<TokenSource>,
    routes: Vec<Route>,
    by_tenant: Vec<(String, Arc<dyn Backend>)>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

impl Backends {
    /// Every mailbox of every tenant served by `backend` (tests, `check`).
    pub fn single(tokens: Arc<TokenSource>, backend: Arc<dyn Backend>) -> Self {
        let by_tenant = tokens
            .tenants()
            .map(|t| (t.tenant_id.clone(), Arc::clone(&backend)))
            .collect();
        Self {
            tokens,
            routes: Vec::new(),
            by_tenant,
        }
    }

    /// The tenants and their tokens.
    pub fn tokens(&self) -> &Arc<TokenSource> {
        &self.tokens
    }

    /// The backend and tenant serving `mailbox`; `None` when no tenant serves its domain.
    pub fn choose(&self, mailbox: &str) -> Option<Chosen> {
        let by_domain = || self.tokens.for_mailbox(mailbox).cloned();
        if let Some(route) = self
            .routes
            .iter()
            .find(|r| r.patterns.iter().any(|p| p.matches(mailbox)))
        {
            let tenant = route.tenant.clone().or_else(by_domain)?;
            return Some(Chosen {
                backend: Arc::clone(&route.backend),
                tenant,
            });
        }
        let tenant = by_domain()?;
        let backend = self
            .by_tenant
            .iter()
            .find(|(id, _)| *id == tenant.tenant_id)
            .map(|(_, b)| Arc::clone(b))?;
        Some(Chosen { backend, tenant })
    }
}

/// Errors building the backends.
#[derive(Debug, thiserror::Error)]
pub enum BackendSetupError {
    /// The pass-through could not be built.
    #[error(transparent)]
    Passthrough(#[from] passthrough::UpstreamSetupError),
    /// The Graph backend's HTTP client could not be built.
    #[error("graph backend: {0}")]
    GraphClient(String),
    /// A `[[route]]` is unusable (validation reports these first).
    #[error("route[{index}]: {message}")]
    Route {
        /// Which route.
        index: usize,
        /// What is wrong.
        message: String,
    },
}

/// Builds the backends `config` names over `tokens`; `upstream_ca_pem` is the extra CA of
/// `[upstream]`; Graph backends wait for `graph_shaper` (one for all: Graph's limits are per
/// app and mailbox).
pub fn build(
    config: &Config,
    tokens: Arc<TokenSource>,
    upstream_ca_pem: Option<&[u8]>,
    graph_shaper: &Arc<crate::graph_shaping::Shaper>,
) -> Result<Backends, BackendSetupError> {
    let http = passthrough::PassthroughClient::new(config, upstream_ca_pem)?;
    let graph_http =
        crate::token::http_client(upstream_ca_pem).map_err(BackendSetupError::GraphClient)?;
    let make = |backend: &BackendConfig| -> Result<Arc<dyn Backend>, BackendSetupError> {
        Ok(match backend {
            BackendConfig::ExchangeOnline => Arc::new(http.exchange_online()?),
            BackendConfig::ExchangeServer { ews_url, scope } => {
                Arc::new(http.exchange_server(ews_url, scope.as_deref())?)
            }
            BackendConfig::Graph { graph_url } => Arc::new(graph_backend(
                config,
                &tokens,
                graph_url,
                &graph_http,
                graph_shaper,
            )),
        })
    };
    let mut by_tenant = Vec::new();
    for t in &config.tenants {
        by_tenant.push((t.tenant_id.clone(), make(&t.backend)?));
    }
    let mut routes = Vec::new();
    for (index, r) in config.routes.iter().enumerate() {
        let patterns = r
            .mailboxes
            .iter()
            .map(|m| MailboxPattern::parse(m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| BackendSetupError::Route { index, message })?;
        let tenant = match &r.tenant {
            Some(id) => Some(Arc::clone(tokens.by_id(id).ok_or_else(|| {
                BackendSetupError::Route {
                    index,
                    message: format!("tenant {id:?} is not configured"),
                }
            })?)),
            None => None,
        };
        routes.push(Route {
            patterns,
            backend: make(&r.backend)?,
            tenant,
        });
    }
    Ok(Backends {
        tokens,
        routes,
        by_tenant,
    })
}

/// The Graph port every tenant's translator uses: the tenant's Graph token, the shared shaper.
pub type GraphPortFor = crate::graph::http::HttpGraph<
    Arc<crate::token::TenantTokens>,
    crate::graph::shaper::ConfiguredShaper,
>;

/// A Graph translation backend at `graph_url` with one translator per tenant, each with that
/// tenant's token for its Graph scope.
fn graph_backend(
    config: &Config,
    tokens: &TokenSource,
    graph_url: &str,
    http: &reqwest::Client,
    shaper: &Arc<crate::graph_shaping::Shaper>,
) -> crate::graph::backend::GraphUpstream<GraphPortFor> {
    let translators = tokens
        .tenants()
        .map(|tenant| {
            let port = crate::graph::http::HttpGraph::new(
                http.clone(),
                crate::graph::http::HttpGraphConfig {
                    graph_url: graph_url.to_owned(),
                    ..Default::default()
                },
                tenant.tokens(&tenant.graph_scope),
                crate::graph::shaper::ConfiguredShaper::new(
                    Arc::clone(shaper),
                    tenant.client_id.clone(),
                ),
            );
            (
                tenant.tenant_id.clone(),
                crate::graph::backend::GraphTranslator::new(port, Default::default()),
            )
        })
        .collect();
    crate::graph::backend::GraphUpstream {
        translators,
        max_body: config.limits.max_body_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Tenant;

    fn config(extra: &str, users: &std::path::Path) -> Config {
        let text = format!(
            r#"
[listen]
address = "127.0.0.1:8080"
[auth]
users_file = "{}"
[upstream]
ews_url = "https://outlook.office365.com/EWS/Exchange.asmx"
[[tenant]]
tenant_id = "contoso-tenant"
domains = ["contoso.example", "onprem.contoso.example"]
client_id = "c"
client_secret = "x"
[[tenant]]
tenant_id = "fabrikam-tenant"
domains = ["fabrikam.example"]
client_id = "c"
client_secret = "x"
backend = {{ kind = "exchange-server", ews_url = "https://mail.fabrikam.example/EWS/Exchange.asmx" }}
{extra}
"#,
            users.display()
        );
        let config = Config::parse(&text, "test").unwrap();
        config.validate().unwrap();
        config
    }

    fn tokens(config: &Config) -> Arc<TokenSource> {
        let http = reqwest::Client::new();
        Arc::new(TokenSource::new(
            config
                .tenants
                .iter()
                .map(|t| {
                    (
                        t.domains.clone(),
                        Arc::new(Tenant::new(t, Vec::new(), http.clone())),
                    )
                })
                .collect(),
        ))
    }

    fn chosen(backends: &Backends, mailbox: &str) -> Option<(&'static str, String)> {
        backends
            .choose(mailbox)
            .map(|c| (c.backend.name(), c.tenant.tenant_id.clone()))
    }

    #[test]
    fn routes_win_over_the_tenant_backend_and_default_to_the_domain_tenant() {
        crate::tls::install_crypto_provider();
        let users = tempfile::NamedTempFile::new().unwrap();
        let config = config(
            r#"
[[route]]
mailboxes = ["*@onprem.contoso.example", "Legacy@contoso.example"]
backend = { kind = "exchange-server", ews_url = "https://mail.contoso.example/EWS/Exchange.asmx" }
[[route]]
mailboxes = ["guest@elsewhere.example"]
backend = { kind = "exchange-online" }
tenant = "fabrikam-tenant"
[[route]]
mailboxes = ["*@cloud.contoso.example"]
backend = { kind = "graph" }
tenant = "contoso-tenant"
"#,
            users.path(),
        );
        let backends = build(
            &config,
            tokens(&config),
            None,
            &Arc::new(crate::graph_shaping::Shaper::local(Default::default())),
        )
        .unwrap();
        let online = |t: &str| Some(("exchange-online", t.to_owned()));
        let server = |t: &str| Some(("exchange-server", t.to_owned()));
        assert_eq!(
            chosen(&backends, "alice@contoso.example"),
            online("contoso-tenant")
        );
        assert_eq!(
            chosen(&backends, "bob@onprem.contoso.example"),
            server("contoso-tenant")
        );
        assert_eq!(
            chosen(&backends, "legacy@contoso.example"),
            server("contoso-tenant")
        );
        assert_eq!(
            chosen(&backends, "x@fabrikam.example"),
            server("fabrikam-tenant")
        );
        assert_eq!(
            chosen(&backends, "guest@elsewhere.example"),
            online("fabrikam-tenant")
        );
        assert_eq!(chosen(&backends, "nobody@elsewhere.example"), None);
        assert_eq!(
            chosen(&backends, "carol@cloud.contoso.example"),
            Some(("graph", "contoso-tenant".to_owned()))
        );
    }

    #[test]
    fn a_graph_backend_needs_an_http_graph_url() {
        let users = tempfile::NamedTempFile::new().unwrap();
        let text = format!(
            r#"
[listen]
address = "127.0.0.1:8080"
[auth]
users_file = "{}"
[upstream]
ews_url = "https://outlook.office365.com/EWS/Exchange.asmx"
[[tenant]]
tenant_id = "t"
domains = ["contoso.example"]
client_id = "c"
client_secret = "x"
backend = {{ kind = "graph", graph_url = "graph.example" }}
"#,
            users.path().display()
        );
        let config = Config::parse(&text, "test").unwrap();
        let problems = format!("{:?}", config.validate().unwrap_err());
        assert!(problems.contains("backend.graph_url"), "{problems}");
    }

    #[test]
    fn an_on_premises_backend_asks_for_its_own_resource() {
        crate::tls::install_crypto_provider();
        let users = tempfile::NamedTempFile::new().unwrap();
        let config = config("", users.path());
        let tokens = tokens(&config);
        let backends = build(
            &config,
            Arc::clone(&tokens),
            None,
            &Arc::new(crate::graph_shaping::Shaper::local(Default::default())),
        )
        .unwrap();
        let fabrikam = backends.choose("x@fabrikam.example").unwrap();
        assert_eq!(
            fabrikam.tenant.ews_scope,
            "https://outlook.office365.com/.default"
        );
        assert_eq!(
            fabrikam.tenant.graph_scope,
            "https://graph.microsoft.com/.default"
        );
        // Nothing asked for a token yet: no state exists; a resource gets one on first use.
        assert!(fabrikam.tenant.token_states().is_empty());
        let a = fabrikam
            .tenant
            .tokens("https://mail.fabrikam.example/.default");
        let b = fabrikam
            .tenant
            .tokens("https://mail.fabrikam.example/.default");
        assert!(Arc::ptr_eq(&a, &b), "one state per (tenant, resource)");
        assert_eq!(a.scope, "https://mail.fabrikam.example/.default");
        assert!(!Arc::ptr_eq(&a, &fabrikam.tenant.ews_tokens()));
        assert_eq!(fabrikam.tenant.token_states().len(), 2);
    }

    #[test]
    fn route_mistakes_are_reported_together() {
        let users = tempfile::NamedTempFile::new().unwrap();
        let text = format!(
            r#"
[listen]
address = "127.0.0.1:8080"
[auth]
users_file = "{}"
[upstream]
ews_url = "https://outlook.office365.com/EWS/Exchange.asmx"
[[tenant]]
tenant_id = "t"
client_id = "c"
client_secret = "x"
backend = {{ kind = "exchange-server", ews_url = "mail.contoso.example" }}
[[route]]
mailboxes = ["*"]
backend = {{ kind = "exchange-online" }}
tenant = "nope"
"#,
            users.path().display()
        );
        let err = Config::parse(&text, "t").unwrap().validate().unwrap_err();
        let all = err.to_string();
        assert!(all.contains("tenant[0] (t).backend.ews_url"), "{all}");
        assert!(all.contains("route[0].mailboxes"), "{all}");
        assert!(all.contains("route[0].tenant: \"nope\""), "{all}");
        let unknown = text.replace("exchange-online", "exchange-2003");
        assert!(
            Config::parse(&unknown, "t").is_err(),
            "unknown kinds are refused"
        );
    }
}
