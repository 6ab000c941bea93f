//! App-only access tokens from Microsoft Entra ID (client-credentials grant), per tenant and
//! resource.
//!
//! Owns the token lifecycle. [`TokenSource`] is the one place backends get tokens: it knows the
//! tenants ([`Tenant`]), and each tenant keeps one [`TenantTokens`] per resource (Exchange
//! Online's EWS, Microsoft Graph, an on-premises Exchange), created on first use from the same
//! app credentials. Each keeps one cached token, refreshed in the background when it nears expiry
//! (a request never waits on Entra while a valid token exists), at most one token request in
//! flight (concurrent misses share it), failures remembered with an exponential back-off so an
//! Entra outage is not hammered, and invalidation when the resource says a token is bad. Free of
//! hyper types; the Entra client is reqwest over rustls.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::TenantConfig;
use crate::credential::Credential;
use crate::error::{GatewayError, Side};

/// Why a token could not be obtained.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The token endpoint could not be reached (DNS, connect, TLS, timeout).
    #[error("the token endpoint {url} could not be reached ({reason})")]
    Unreachable {
        /// Token endpoint URL.
        url: String,
        /// Transport error text.
        reason: String,
    },
    /// The token endpoint answered with a server error or throttling.
    #[error("the token endpoint answered HTTP {status}")]
    Unavailable {
        /// HTTP status.
        status: u16,
    },
    /// Entra refused the request: the gateway's app, secret or tenant is wrong.
    #[error("Entra refused the token request: {error} (AADSTS{code}): {description}")]
    Rejected {
        /// OAuth error, e.g. `invalid_client`.
        error: String,
        /// First AADSTS code.
        code: u64,
        /// First line of `error_description`.
        description: String,
    },
    /// The answer was not a token response.
    #[error("the token endpoint sent an unreadable answer ({0})")]
    BadResponse(String),
    /// A recent failure is still in its back-off window.
    #[error("{last} (retrying in {retry_in:?})")]
    BackingOff {
        /// The failure that started the back-off.
        last: Box<TokenError>,
        /// Time until the next attempt.
        retry_in: Duration,
    },
}

impl TokenError {
    fn is_permanent(&self) -> bool {
        match self {
            Self::Rejected { .. } => true,
            Self::BackingOff { last, .. } => last.is_permanent(),
            _ => false,
        }
    }
}

impl From<TokenError> for GatewayError {
    fn from(err: TokenError) -> Self {
        if err.is_permanent() {
            GatewayError::Misconfigured {
                side: Side::Entra,
                message: format!(
                    "{err}. An administrator must fix the gateway's app registration or credentials."
                ),
            }
        } else {
            let retry_after = match &err {
                TokenError::BackingOff { retry_in, .. } => (*retry_in).max(Duration::from_secs(1)),
                _ => Duration::from_secs(5),
            };
            GatewayError::Unavailable {
                side: Side::Entra,
                message: err.to_string(),
                retry_after,
            }
        }
    }
}

/// An access token and when it stops being usable.
#[derive(Clone)]
pub struct AccessToken {
    value: Arc<str>,
    /// When Entra said it expires.
    pub expires_at: Instant,
    /// When it was obtained.
    pub obtained_at: Instant,
    /// What its claims say, read without trusting them.
    pub findings: TokenFindings,
}

/// The claims of an access token as read (not validated: Exchange validates), and what they
/// mean for EWS.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TokenFindings {
    /// Audience.
    pub aud: Option<String>,
    /// Tenant id.
    pub tid: Option<String>,
    /// App id.
    pub appid: Option<String>,
    /// "1" client secret, "2" certificate.
    pub appidacr: Option<String>,
    /// Application roles.
    pub roles: Vec<String>,
    /// Sentences for an operator; empty when everything looks right.
    pub notes: Vec<String>,
}

/// Audiences an Exchange Online (or Exchange Server hybrid) token may carry.
fn audience_matches_scope(aud: &str, scope: &str) -> bool {
    let resource = scope.trim_end_matches("/.default").trim_end_matches('/');
    aud.trim_end_matches('/').eq_ignore_ascii_case(resource)
        || (resource.eq_ignore_ascii_case("https://outlook.office365.com")
            && aud
                .trim_end_matches('/')
                .eq_ignore_ascii_case("https://outlook.office.com"))
}

/// Reads a JWT's claims (no signature check) and explains what matters for EWS.
pub fn inspect(token: &str, expected_scope: &str, expected_tenant: &str) -> TokenFindings {
    use base64::Engine;
    let mut f = TokenFindings::default();
    let claims: Option<serde_json::Value> = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Some(c) = claims else {
        f.notes.push("The access token is not a readable JWT; Exchange may still accept it (opaque tokens are possible on-premises).".to_owned());
        return f;
    };
    let text = |k: &str| c.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    f.aud = text("aud");
    f.tid = text("tid");
    f.appid = text("appid").or_else(|| text("azp"));
    f.appidacr = text("appidacr");
    f.roles = c
        .get("roles")
        .and_then(|r| r.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if let Some(aud) = &f.aud
        && !audience_matches_scope(aud, expected_scope)
    {
        f.notes.push(format!("The token's audience is {aud}, not the resource of the scope {expected_scope}: Exchange will answer 401 (2000003)."));
    }
    if let Some(tid) = &f.tid
        && uuid::Uuid::parse_str(expected_tenant).is_ok()
        && !tid.eq_ignore_ascii_case(expected_tenant)
    {
        f.notes.push(format!(
            "The token was issued by tenant {tid}, not the configured {expected_tenant}."
        ));
    }
    if !f.roles.iter().any(|r| r == "full_access_as_app") {
        f.notes.push("The token carries no full_access_as_app role. That is right only if the app is authorised through RBAC for Applications (New-ManagementRoleAssignment -Role \"Application EWS.AccessAsApp\"); otherwise grant admin consent for the application permission full_access_as_app, or Exchange answers 401 (2000008).".to_owned());
    }
    f
}

impl AccessToken {
    /// The bearer value; only the forwarding code should call this.
    pub fn bearer(&self) -> &str {
        &self.value
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Failure {
    error: TokenError,
    until: Instant,
    streak: u32,
}

/// Token state for one tenant and one resource.
pub struct TenantTokens {
    /// Tenant id or domain, as configured.
    pub tenant_id: String,
    /// Application (client) id.
    pub client_id: String,
    /// Scope requested.
    pub scope: String,
    /// This tenant's EWS endpoint when it is not the gateway's default (other cloud, on-premises).
    pub ews_url: Option<http::Uri>,
    endpoint: Box<dyn TokenEndpoint>,
    refresh_margin: Duration,
    current: ArcSwapOption<AccessToken>,
    refresh: Arc<Mutex<Option<Failure>>>,
    acquisitions: AtomicU64,
}

impl std::fmt::Debug for TenantTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantTokens")
            .field("tenant_id", &self.tenant_id)
            .field("endpoint", &self.endpoint.describe())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: NumberOrString,
}

#[derive(Deserialize)]
struct ErrorResponse {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(u64),
    String(String),
}

/// Builds the HTTP client for a token endpoint: rustls, platform roots plus an optional CA file.
pub fn http_client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30));
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())?;
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| e.to_string())
}

impl TenantTokens {
    /// Token state around any token endpoint (tests use a fake one under paused time).
    pub fn with_endpoint(
        tenant_id: &str,
        endpoint: Box<dyn TokenEndpoint>,
        refresh_margin: Duration,
    ) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            client_id: String::new(),
            scope: "https://outlook.office365.com/.default".to_owned(),
            ews_url: None,
            endpoint,
            refresh_margin,
            current: ArcSwapOption::empty(),
            refresh: Arc::new(Mutex::new(None)),
            acquisitions: AtomicU64::new(0),
        }
    }

    /// How many token requests were sent to Entra so far.
    pub fn acquisitions(&self) -> u64 {
        self.acquisitions.load(Ordering::Relaxed)
    }

    /// The current token if it is still valid, without ever contacting Entra.
    pub fn cached(&self) -> Option<Arc<AccessToken>> {
        self.current
            .load_full()
            .filter(|t| Instant::now() < t.expires_at)
    }

    /// A valid token: the cached one, or a new one when there is none.
    ///
    /// A token inside its refresh margin is still returned at once while a background task
    /// replaces it.
    pub async fn get(self: &Arc<Self>) -> Result<Arc<AccessToken>, TokenError> {
        let now = Instant::now();
        if let Some(token) = self.current.load_full() {
            if now + self.refresh_margin < token.expires_at {
                return Ok(token);
            }
            if now < token.expires_at {
                self.refresh_in_background();
                return Ok(token);
            }
        }
        let mut failure = self.refresh.lock().await;
        // Someone else may have refreshed while this request waited for the lock.
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        self.acquire_locked(&mut failure).await
    }

    /// Drops `token` if it is still the current one (Exchange said it is bad).
    pub fn invalidate(&self, token: &Arc<AccessToken>) {
        let current = self.current.load();
        if let Some(cur) = current.as_ref()
            && Arc::ptr_eq(cur, token)
        {
            self.current.store(None);
        }
    }

    fn refresh_in_background(self: &Arc<Self>) {
        let Ok(mut failure) = Arc::clone(&self.refresh).try_lock_owned() else {
            return; // a refresh is already running
        };
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(err) = this.acquire_locked(&mut failure).await {
                tracing::warn!(tenant = %this.tenant_id, error = %err, "background token refresh failed; the current token keeps serving until it expires");
            }
        });
    }

    async fn acquire_locked(
        &self,
        failure: &mut Option<Failure>,
    ) -> Result<Arc<AccessToken>, TokenError> {
        let now = Instant::now();
        if let Some(f) = failure.as_ref()
            && now < f.until
        {
            return Err(TokenError::BackingOff {
                last: Box::new(f.error.clone()),
                retry_in: f.until - now,
            });
        }
        let fetched = self.fetch().await;
        let result = if fetched.is_ok() { "ok" } else { "error" };
        metrics::counter!(crate::telemetry::TOKEN_ACQUISITIONS, "tenant" => self.tenant_id.clone(), "result" => result).increment(1);
        match fetched {
            Ok(token) => {
                let token = Arc::new(token);
                self.current.store(Some(Arc::clone(&token)));
                *failure = None;
                tracing::info!(tenant = %self.tenant_id, expires_in = ?token.expires_at.saturating_duration_since(Instant::now()), "obtained access token");
                Ok(token)
            }
            Err(error) => {
                let streak = failure.as_ref().map_or(0, |f| f.streak) + 1;
                let backoff = with_jitter(backoff_for(streak), rand::random::<f64>());
                tracing::warn!(tenant = %self.tenant_id, error = %error, backoff = ?backoff, "token request failed");
                *failure = Some(Failure {
                    error: error.clone(),
                    until: Instant::now() + backoff,
                    streak,
                });
                Err(error)
            }
        }
    }

    async fn fetch(&self) -> Result<AccessToken, TokenError> {
        self.acquisitions.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let fetched = self.endpoint.fetch().await?;
        let findings = inspect(&fetched.access_token, &self.scope, &self.tenant_id);
        for note in &findings.notes {
            tracing::warn!(tenant = %self.tenant_id, "{note}");
        }
        Ok(AccessToken {
            value: Arc::from(fetched.access_token),
            expires_at: started + fetched.expires_in,
            obtained_at: started,
            findings,
        })
    }
}

impl EntraEndpoint {
    /// A token from Azure's managed identity endpoint (IMDS or App Service): a GET with the
    /// resource, answered with `expires_in` or `expires_on` as strings.
    async fn managed_identity(
        &self,
        identity: &crate::credential::ManagedIdentity,
    ) -> Result<FetchedToken, TokenError> {
        let resource = self.scope.trim_end_matches("/.default");
        let mut query = vec![("resource", resource)];
        query.push(match identity.identity_header {
            Some(_) => ("api-version", "2019-08-01"),
            None => ("api-version", "2018-02-01"),
        });
        if let Some(id) = &identity.client_id {
            query.push(("client_id", id.as_str()));
        }
        let encoded = serde_urlencoded::to_string(&query)
            .map_err(|e| TokenError::BadResponse(e.to_string()))?;
        let mut req = self.http.get(format!("{}?{encoded}", identity.endpoint));
        req = match &identity.identity_header {
            Some(header) => req.header("X-IDENTITY-HEADER", header.expose()),
            None => req.header("Metadata", "true"),
        };
        let unreachable = |e: reqwest::Error| TokenError::Unreachable {
            url: identity.endpoint.clone(),
            reason: crate::error::error_chain(&e),
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let value: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| TokenError::BadResponse(format!("managed identity endpoint: {e}")))?;
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(TokenError::Unavailable {
                status: status.as_u16(),
            });
        }
        let text = |k: &str| {
            value.get(k).and_then(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .or_else(|| v.as_u64().map(|n| n.to_string()))
            })
        };
        if !status.is_success() {
            return Err(TokenError::Rejected {
                error: text("error").unwrap_or_else(|| "managed_identity_error".to_owned()),
                code: 0,
                description: text("error_description").unwrap_or_default(),
            });
        }
        let access_token = text("access_token")
            .ok_or_else(|| TokenError::BadResponse("no access_token".into()))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let expires_in = match (text("expires_in"), text("expires_on")) {
            (Some(s), _) => s.parse::<u64>().ok(),
            (None, Some(on)) => on.parse::<u64>().ok().map(|on| on.saturating_sub(now)),
            _ => None,
        }
        .ok_or_else(|| TokenError::BadResponse("no expires_in or expires_on".into()))?;
        Ok(FetchedToken {
            access_token,
            expires_in: Duration::from_secs(expires_in),
        })
    }
}

/// A token as a token endpoint returned it.
pub struct FetchedToken {
    /// The bearer value.
    pub access_token: String,
    /// Its lifetime from the moment it was requested.
    pub expires_in: Duration,
}

/// Where tokens come from: the seam between the lifecycle (cache, refresh, back-off) and the
/// credential kind.
pub trait TokenEndpoint: Send + Sync + 'static {
    /// Requests one new token.
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<FetchedToken, TokenError>> + Send + '_>>;
    /// Where it asks, for logs.
    fn describe(&self) -> String;
}

/// The client-credentials grant at an Entra token endpoint, with one or more credentials.
///
/// Credentials are tried from the last one that worked; one refused as `invalid_client` (a
/// rotated-out secret or certificate) passes the turn to the next.
struct EntraEndpoint {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    credentials: Vec<Credential>,
    preferred: std::sync::atomic::AtomicUsize,
    scope: String,
}

impl TokenEndpoint for EntraEndpoint {
    fn describe(&self) -> String {
        self.token_url.clone()
    }

    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<FetchedToken, TokenError>> + Send + '_>> {
        Box::pin(self.fetch_any())
    }
}

impl EntraEndpoint {
    async fn fetch_any(&self) -> Result<FetchedToken, TokenError> {
        let n = self.credentials.len();
        let start = self.preferred.load(Ordering::Relaxed) % n.max(1);
        let mut last = TokenError::BadResponse("no credential is configured".to_owned());
        for i in 0..n {
            let index = (start + i) % n;
            let Some(credential) = self.credentials.get(index) else {
                continue;
            };
            match self.request(credential).await {
                Ok(token) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(token);
                }
                Err(TokenError::Rejected {
                    error,
                    code,
                    description,
                }) if error == "invalid_client" => {
                    tracing::warn!(
                        credential = index,
                        code,
                        "credential refused; trying the next one"
                    );
                    last = TokenError::Rejected {
                        error,
                        code,
                        description,
                    };
                }
                Err(other) => return Err(other),
            }
        }
        Err(last)
    }

    async fn request(&self, credential: &Credential) -> Result<FetchedToken, TokenError> {
        if let Credential::ManagedIdentity(identity) = credential {
            return self.managed_identity(identity).await;
        }
        let assertion;
        let federated;
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
        ];
        match credential {
            Credential::Secret(secret) => form.push(("client_secret", secret.expose())),
            Credential::ManagedIdentity(_) => {}
            Credential::Federated(path) => {
                // Re-read every time: the platform rotates the file.
                federated = tokio::fs::read_to_string(path).await.map_err(|e| {
                    TokenError::BadResponse(format!("federated token file {}: {e}", path.display()))
                })?;
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
                form.push(("client_assertion", federated.trim()));
            }
            Credential::Certificate(cert) => {
                assertion = cert
                    .assertion(&self.client_id, &self.token_url)
                    .map_err(|e| TokenError::BadResponse(e.to_string()))?;
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
                form.push(("client_assertion", assertion.as_str()));
            }
        }
        let resp = self
            .http
            .post(&self.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| TokenError::Unreachable {
                url: self.token_url.clone(),
                reason: crate::error::error_chain(&e),
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| TokenError::Unreachable {
            url: self.token_url.clone(),
            reason: crate::error::error_chain(&e),
        })?;
        if status.is_success() {
            let parsed: TokenResponse = serde_json::from_slice(&bytes)
                .map_err(|e| TokenError::BadResponse(e.to_string()))?;
            let expires_in = match parsed.expires_in {
                NumberOrString::Number(n) => n,
                NumberOrString::String(s) => s
                    .parse()
                    .map_err(|_| TokenError::BadResponse("expires_in is not a number".into()))?,
            };
            return Ok(FetchedToken {
                access_token: parsed.access_token,
                expires_in: Duration::from_secs(expires_in),
            });
        }
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(TokenError::Unavailable {
                status: status.as_u16(),
            });
        }
        let parsed: ErrorResponse = serde_json::from_slice(&bytes).map_err(|_| {
            TokenError::BadResponse(format!(
                "HTTP {} without an OAuth error body",
                status.as_u16()
            ))
        })?;
        let description = parsed
            .error_description
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        Err(TokenError::Rejected {
            error: parsed.error,
            code: parsed.error_codes.first().copied().unwrap_or_default(),
            description,
        })
    }
}

fn backoff_for(streak: u32) -> Duration {
    // 1 s, 2 s, 4 s ... capped at 30 s: quick recovery, no hammering during an outage.
    let secs = 1u64 << streak.saturating_sub(1).min(5);
    Duration::from_secs(secs.min(30))
}

/// Spreads a back-off over 75–100 % of its length (`unit` in [0, 1)), so that replicas that
/// failed together do not all retry Entra in the same instant.
fn with_jitter(backoff: Duration, unit: f64) -> Duration {
    backoff.mul_f64(0.75 + 0.25 * unit.clamp(0.0, 1.0))
}

/// Makes the token endpoint of one resource (scope) of a tenant's app.
pub type EndpointFactory = Box<dyn Fn(&str) -> Box<dyn TokenEndpoint> + Send + Sync>;

/// The client-credentials grant of one configured app, for any resource.
struct EntraFactory {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    credentials: Arc<[Credential]>,
}

impl EntraFactory {
    fn new(config: &TenantConfig, credentials: Vec<Credential>, http: reqwest::Client) -> Self {
        let authority = config.authority();
        let authority = authority.trim_end_matches('/');
        Self {
            http,
            token_url: format!("{authority}/{}/oauth2/v2.0/token", config.tenant_id),
            client_id: config.client_id.clone(),
            credentials: credentials.into(),
        }
    }

    fn endpoint(&self, scope: &str) -> Box<dyn TokenEndpoint> {
        Box::new(EntraEndpoint {
            http: self.http.clone(),
            token_url: self.token_url.clone(),
            client_id: self.client_id.clone(),
            credentials: self.credentials.to_vec(),
            preferred: std::sync::atomic::AtomicUsize::new(0),
            scope: scope.to_owned(),
        })
    }
}

/// One tenant: its app, the resources its cloud offers, and a token state per resource in use.
pub struct Tenant {
    /// Tenant id or domain, as configured.
    pub tenant_id: String,
    /// Application (client) id.
    pub client_id: String,
    /// The Exchange Online (EWS) scope: configured, else the cloud's.
    pub ews_scope: String,
    /// The Microsoft Graph scope of the tenant's cloud.
    pub graph_scope: String,
    /// This tenant's EWS endpoint when it is not the gateway's default (other cloud, on-premises).
    pub ews_url: Option<http::Uri>,
    endpoints: EndpointFactory,
    refresh_margin: Duration,
    by_scope: std::sync::RwLock<HashMap<String, Arc<TenantTokens>>>,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("tenant_id", &self.tenant_id)
            .finish_non_exhaustive()
    }
}

impl Tenant {
    /// A configured tenant with its loaded credentials (tried in order).
    pub fn new(config: &TenantConfig, credentials: Vec<Credential>, http: reqwest::Client) -> Self {
        let factory = EntraFactory::new(config, credentials, http);
        let mut tenant = Self::with_endpoints(
            &config.tenant_id,
            Box::new(move |scope: &str| factory.endpoint(scope)),
            Duration::from_secs(config.refresh_before_expiry_seconds),
        );
        tenant.client_id = config.client_id.clone();
        tenant.ews_scope = config.scope();
        tenant.graph_scope = format!("{}/.default", config.cloud.graph_resource());
        tenant.ews_url = config.ews_url_override().and_then(|u| u.parse().ok());
        tenant
    }

    /// A tenant around any token endpoints (tests use fakes under paused time).
    pub fn with_endpoints(
        tenant_id: &str,
        endpoints: EndpointFactory,
        refresh_margin: Duration,
    ) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            client_id: String::new(),
            ews_scope: "https://outlook.office365.com/.default".to_owned(),
            graph_scope: "https://graph.microsoft.com/.default".to_owned(),
            ews_url: None,
            endpoints,
            refresh_margin,
            by_scope: std::sync::RwLock::new(HashMap::new()),
        }
    }

    /// The token state of `scope`, made on first use (so a resource no backend uses never costs
    /// a token request).
    pub fn tokens(&self, scope: &str) -> Arc<TenantTokens> {
        if let Ok(map) = self.by_scope.read()
            && let Some(tokens) = map.get(scope)
        {
            return Arc::clone(tokens);
        }
        let Ok(mut map) = self.by_scope.write() else {
            // A poisoned map: serve from a fresh state rather than fail the request.
            return Arc::new(self.make(scope));
        };
        Arc::clone(
            map.entry(scope.to_owned())
                .or_insert_with(|| Arc::new(self.make(scope))),
        )
    }

    /// The token state of the tenant's Exchange Online (EWS) resource.
    pub fn ews_tokens(&self) -> Arc<TenantTokens> {
        self.tokens(&self.ews_scope)
    }

    /// Token states made so far, by scope.
    pub fn token_states(&self) -> Vec<Arc<TenantTokens>> {
        self.by_scope
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn make(&self, scope: &str) -> TenantTokens {
        let mut tokens = TenantTokens::with_endpoint(
            &self.tenant_id,
            (self.endpoints)(scope),
            self.refresh_margin,
        );
        tokens.client_id = self.client_id.clone();
        tokens.scope = scope.to_owned();
        tokens.ews_url = self.ews_url.clone();
        tokens
    }
}

/// All tenants, and which tenant serves which mailbox: where every backend gets its tokens, by
/// (tenant, resource).
#[derive(Debug)]
pub struct TokenSource {
    tenants: Vec<(Vec<String>, Arc<Tenant>)>,
}

impl TokenSource {
    /// One entry per configured tenant, with the domains it serves.
    pub fn new(tenants: Vec<(Vec<String>, Arc<Tenant>)>) -> Self {
        Self { tenants }
    }

    /// The tenant serving `mailbox`: the one listing its domain, or the only tenant.
    pub fn for_mailbox(&self, mailbox: &str) -> Option<&Arc<Tenant>> {
        let domain = mailbox.rsplit_once('@').map(|(_, d)| d)?;
        if let Some((_, t)) = self
            .tenants
            .iter()
            .find(|(domains, _)| domains.iter().any(|d| d.eq_ignore_ascii_case(domain)))
        {
            return Some(t);
        }
        match self.tenants.as_slice() {
            [(domains, only)] if domains.is_empty() => Some(only),
            _ => None,
        }
    }

    /// The tenant with this id, as configured.
    pub fn by_id(&self, tenant_id: &str) -> Option<&Arc<Tenant>> {
        self.tenants()
            .find(|t| t.tenant_id.eq_ignore_ascii_case(tenant_id))
    }

    /// Every tenant.
    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.iter().map(|(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        use base64::Engine;
        let e = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            e(b"{\"alg\":\"RS256\"}"),
            e(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn token_findings_explain_what_exchange_will_refuse() {
        let scope = "https://outlook.office365.com/.default";
        let tid = "5f1c2d3e-4b5a-4c6d-8e7f-901a2b3c4d5e";
        let good = inspect(
            &jwt(
                serde_json::json!({"aud":"https://outlook.office365.com","tid":tid,"roles":["full_access_as_app"],"appidacr":"2"}),
            ),
            scope,
            tid,
        );
        assert!(good.notes.is_empty(), "{:?}", good.notes);
        assert_eq!(good.appidacr.as_deref(), Some("2"));
        let no_roles = inspect(
            &jwt(serde_json::json!({"aud":"https://outlook.office365.com","tid":tid})),
            scope,
            tid,
        );
        assert!(
            no_roles
                .notes
                .iter()
                .any(|n| n.contains("RBAC for Applications"))
        );
        let graph = inspect(
            &jwt(
                serde_json::json!({"aud":"https://graph.microsoft.com","tid":tid,"roles":["full_access_as_app"]}),
            ),
            scope,
            tid,
        );
        assert!(graph.notes.iter().any(|n| n.contains("2000003")));
        let other_tenant = inspect(
            &jwt(
                serde_json::json!({"aud":"https://outlook.office365.com","tid":"00000000-0000-0000-0000-000000000000","roles":["full_access_as_app"]}),
            ),
            scope,
            tid,
        );
        assert!(
            other_tenant
                .notes
                .iter()
                .any(|n| n.contains("not the configured"))
        );
        assert!(!inspect("opaque", scope, tid).notes.is_empty());
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_for(1), Duration::from_secs(1));
        assert_eq!(backoff_for(2), Duration::from_secs(2));
        assert_eq!(backoff_for(5), Duration::from_secs(16));
        assert_eq!(backoff_for(40), Duration::from_secs(30));
        assert_eq!(
            with_jitter(Duration::from_secs(8), 0.0),
            Duration::from_secs(6)
        );
        assert_eq!(
            with_jitter(Duration::from_secs(8), 1.0),
            Duration::from_secs(8)
        );
        let spread: std::collections::HashSet<Duration> = (0..20)
            .map(|_| with_jitter(Duration::from_secs(30), rand::random::<f64>()))
            .collect();
        assert!(spread.len() > 1, "jitter varies");
    }

    #[test]
    fn rejected_is_misconfiguration_and_outage_is_busy() {
        let rejected = TokenError::Rejected {
            error: "invalid_client".into(),
            code: 7000215,
            description: "AADSTS7000215: Invalid client secret provided.".into(),
        };
        let g: GatewayError = rejected.into();
        assert_eq!(g.fault_code(), Some("ErrorInternalServerError"));
        assert!(g.to_string().contains("AADSTS7000215"));
        let g: GatewayError = TokenError::Unavailable { status: 503 }.into();
        assert_eq!(g.fault_code(), Some("ErrorServerBusy"));
    }

    fn source(domains: &[&[&str]]) -> TokenSource {
        let http = reqwest::Client::new();
        TokenSource::new(
            domains
                .iter()
                .enumerate()
                .map(|(i, ds)| {
                    let cfg: TenantConfig = toml::from_str(&format!(
                        "tenant_id = \"t{i}\"\nclient_id = \"c\"\nclient_secret = \"s\""
                    ))
                    .unwrap();
                    (
                        ds.iter().map(|d| d.to_string()).collect(),
                        Arc::new(Tenant::new(&cfg, Vec::new(), http.clone())),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn mailbox_domain_selects_the_tenant() {
        let s = source(&[&["contoso.example"], &["fabrikam.example"]]);
        assert_eq!(s.for_mailbox("a@Fabrikam.example").unwrap().tenant_id, "t1");
        assert_eq!(s.for_mailbox("a@contoso.example").unwrap().tenant_id, "t0");
        assert!(s.for_mailbox("a@other.example").is_none());
        let single = source(&[&[]]);
        assert_eq!(single.for_mailbox("a@any.example").unwrap().tenant_id, "t0");
    }

    /// A token endpoint under test control: counts calls, takes `delay`, can fail.
    struct FakeEndpoint {
        calls: Arc<AtomicU64>,
        failing: Arc<std::sync::atomic::AtomicBool>,
        delay: Duration,
        lifetime: Duration,
    }

    impl TokenEndpoint for FakeEndpoint {
        fn describe(&self) -> String {
            "fake".to_owned()
        }
        fn fetch(
            &self,
        ) -> Pin<Box<dyn Future<Output = Result<FetchedToken, TokenError>> + Send + '_>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(self.delay).await;
                if self.failing.load(Ordering::SeqCst) {
                    return Err(TokenError::Unavailable { status: 503 });
                }
                Ok(FetchedToken {
                    access_token: format!("token-{n}"),
                    expires_in: self.lifetime,
                })
            })
        }
    }

    struct Harness {
        tokens: Arc<TenantTokens>,
        calls: Arc<AtomicU64>,
        failing: Arc<std::sync::atomic::AtomicBool>,
    }

    fn harness(delay: Duration, lifetime: Duration, margin: Duration) -> Harness {
        let calls = Arc::new(AtomicU64::new(0));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let endpoint = FakeEndpoint {
            calls: Arc::clone(&calls),
            failing: Arc::clone(&failing),
            delay,
            lifetime,
        };
        Harness {
            tokens: Arc::new(TenantTokens::with_endpoint("t", Box::new(endpoint), margin)),
            calls,
            failing,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_ahead_of_expiry_never_makes_a_request_wait() {
        let h = harness(
            Duration::from_secs(2),
            Duration::from_secs(3600),
            Duration::from_secs(300),
        );
        assert_eq!(h.tokens.get().await.unwrap().bearer(), "token-1");
        tokio::time::advance(Duration::from_secs(3400)).await; // inside the refresh margin
        let before = Instant::now();
        let token = h.tokens.get().await.unwrap();
        assert_eq!(
            token.bearer(),
            "token-1",
            "the valid token is served at once"
        );
        assert_eq!(Instant::now(), before, "no waiting on Entra");
        tokio::time::sleep(Duration::from_secs(3)).await; // the background refresh lands
        assert_eq!(h.calls.load(Ordering::SeqCst), 2);
        assert_eq!(h.tokens.get().await.unwrap().bearer(), "token-2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_a_thousand_shares_one_token_request() {
        let h = harness(
            Duration::from_secs(1),
            Duration::from_secs(3600),
            Duration::from_secs(300),
        );
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let tokens = Arc::clone(&h.tokens);
            tasks.push(tokio::spawn(async move {
                tokens.get().await.map(|t| t.bearer().to_owned())
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "token-1");
        }
        assert_eq!(h.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_ridden_out_until_expiry_then_recovered_from() {
        let h = harness(
            Duration::from_millis(100),
            Duration::from_secs(600),
            Duration::from_secs(300),
        );
        assert_eq!(h.tokens.get().await.unwrap().bearer(), "token-1");
        h.failing.store(true, Ordering::SeqCst);
        // Inside the margin and until expiry, requests keep the current token.
        for _ in 0..58 {
            tokio::time::advance(Duration::from_secs(10)).await;
            assert_eq!(h.tokens.get().await.unwrap().bearer(), "token-1");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let attempts = h.calls.load(Ordering::SeqCst) - 1;
        assert!(attempts >= 2, "refresh was attempted");
        assert!(
            attempts <= 20,
            "back-off keeps attempts few during the outage: {attempts}"
        );
        tokio::time::advance(Duration::from_secs(20)).await; // past expiry
        assert!(
            h.tokens.get().await.is_err(),
            "an expired token is never served"
        );
        h.failing.store(false, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(31)).await; // past the longest back-off
        let recovered = h.tokens.get().await.unwrap();
        assert_ne!(recovered.bearer(), "token-1");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_instead_of_hammering() {
        let h = harness(
            Duration::from_millis(10),
            Duration::from_secs(600),
            Duration::from_secs(300),
        );
        h.failing.store(true, Ordering::SeqCst);
        assert!(matches!(
            h.tokens.get().await,
            Err(TokenError::Unavailable { .. })
        ));
        for _ in 0..50 {
            assert!(matches!(
                h.tokens.get().await,
                Err(TokenError::BackingOff { .. })
            ));
        }
        assert_eq!(h.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn invalidation_drops_only_the_token_it_names() {
        let h = harness(
            Duration::from_millis(10),
            Duration::from_secs(600),
            Duration::from_secs(60),
        );
        let first = h.tokens.get().await.unwrap();
        h.tokens.invalidate(&first);
        let second = h.tokens.get().await.unwrap();
        assert_eq!(second.bearer(), "token-2");
        h.tokens.invalidate(&first); // stale: must not drop token-2
        assert_eq!(h.tokens.get().await.unwrap().bearer(), "token-2");
        assert_eq!(h.calls.load(Ordering::SeqCst), 2);
    }
}
