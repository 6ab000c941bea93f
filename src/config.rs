//! Gateway configuration: the TOML file `ews-gateway serve --config FILE` reads.
//!
//! Every key is documented in `ews-gateway.example.toml`. Unknown keys are refused, and
//! [`Config::validate`] reports every problem at once before anything listens. Secrets are read
//! from files or environment variables; an inline secret is accepted only with a warning.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors while loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said (line and column included).
        message: String,
    },
    /// The file parsed, but has problems; all are listed.
    #[error("configuration has {} problem(s):\n  - {}", .0.len(), .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Inbound listener.
    pub listen: ListenConfig,
    /// Inbound authentication.
    pub auth: AuthConfig,
    /// Where EWS requests go.
    pub upstream: UpstreamConfig,
    /// Entra tenants whose app-only tokens the gateway uses.
    #[serde(rename = "tenant")]
    pub tenants: Vec<TenantConfig>,
    /// Mailboxes served by another backend than their tenant's (e.g. still on-premises).
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Resource limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The audit trail.
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
    /// The admin listener: health, readiness, metrics.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Logging, and reloading without a restart.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The Microsoft Graph backend.
    #[serde(default)]
    pub graph: GraphConfig,
}

/// `[graph]`: settings of the Microsoft Graph backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    /// `[graph.shaping]`: per-mailbox shaping of Graph traffic to Graph's limits.
    #[serde(default)]
    pub shaping: crate::graph_shaping::ShapingPolicy,
}

/// `[admin]`: a separate plain-HTTP listener for probes and Prometheus. It exposes no user
/// data; keep it on loopback or a cluster-internal address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address for `/live`, `/ready` and `/metrics`, e.g. `127.0.0.1:9090`. Unset: no admin
    /// listener.
    #[serde(default)]
    pub address: Option<SocketAddr>,
}

/// `[runtime]`: logging and live changes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Log filter (`info`, `debug`, `ews_gateway=debug,info`); `RUST_LOG` overrides it at start.
    /// Applied again on every reload, so the level changes without a restart.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Seconds between checks of the configuration, users file and TLS files for changes (a
    /// change reloads, as SIGHUP does); 0: only SIGHUP reloads.
    #[serde(default = "default_watch_interval")]
    pub watch_interval_seconds: u64,
    /// Seconds in-flight requests get to finish after SIGTERM before they are cut.
    #[serde(default = "default_grace")]
    pub shutdown_grace_seconds: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            log_level: default_log_level(),
            watch_interval_seconds: default_watch_interval(),
            shutdown_grace_seconds: default_grace(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}
fn default_watch_interval() -> u64 {
    5
}
fn default_grace() -> u64 {
    30
}

/// Inbound listener settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Address and port, e.g. `0.0.0.0:8443`.
    pub address: SocketAddr,
    /// PEM certificate chain for TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (Basic credentials then cross the network in
    /// clear text; only behind a TLS-terminating load balancer).
    #[serde(default)]
    pub allow_plain_http: bool,
    /// The URL clients reach the gateway at (e.g. `https://ews-gw.contoso.com`), returned by
    /// Autodiscover. Default: the scheme and `Host` of each Autodiscover request.
    #[serde(default)]
    pub public_url: Option<String>,
}

/// Inbound authentication settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The users file (TOML) with password hashes and mailbox policy.
    pub users_file: PathBuf,
    /// Realm in the `WWW-Authenticate: Basic` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Domain appended to a bare user name (`alice` -> `alice@<default_domain>`).
    #[serde(default)]
    pub default_domain: Option<String>,
    /// NetBIOS domain -> mail domain, for `DOMAIN\user` logins.
    #[serde(default)]
    pub netbios_domains: BTreeMap<String, String>,
    /// How long a verified credential is remembered (seconds), so steady traffic skips the hash.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl_seconds: u64,
    /// Failed-login tracking and temporary lockouts.
    #[serde(default)]
    pub lockout: crate::lockout::LockoutPolicy,
}

/// Where EWS requests go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The EWS endpoint (default: Exchange Online, `https://outlook.office365.com/EWS/Exchange.asmx`).
    #[serde(default = "default_ews_url")]
    pub ews_url: String,
    /// Extra CA certificates (PEM) to trust besides the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Seconds to wait for a TCP+TLS connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: u64,
    /// Seconds to wait for the response head once the request is sent.
    #[serde(default = "default_response_timeout")]
    pub response_timeout_seconds: u64,
}

/// An Entra tenant and the app registration the gateway uses in it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Tenant id (GUID) or its initial domain.
    pub tenant_id: String,
    /// Mail domains whose mailboxes belong to this tenant. May be empty when there is one tenant.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Application (client) id of the gateway's app registration.
    pub client_id: String,
    /// Client secret read from this file (trailing newline ignored).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Client secret read from this environment variable.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// Client secret inline (discouraged: a warning is logged).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// Further credentials, tried in order when one is refused as invalid (rotation):
    /// certificates (preferred by Microsoft) and secrets.
    #[serde(default, rename = "credential")]
    pub credentials: Vec<CredentialConfig>,
    /// Microsoft cloud: `global` (default), `gcc-high`, `dod` or `china`; sets the authority,
    /// scope and EWS URL defaults.
    #[serde(default)]
    pub cloud: Cloud,
    /// Token authority, e.g. `https://login.microsoftonline.com` (default: the cloud's).
    #[serde(default)]
    pub authority: Option<String>,
    /// EWS endpoint for this tenant's mailboxes (default: the cloud's, or `upstream.ews_url` for
    /// the global cloud). Set it with `scope` for Exchange Server with hybrid modern auth.
    #[serde(default)]
    pub ews_url: Option<String>,
    /// Scope requested, e.g. `https://outlook.office365.com/.default`.
    #[serde(default)]
    pub scope: Option<String>,
    /// Extra CA certificates (PEM) for the token endpoint besides the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Refresh a token this many seconds before it expires.
    #[serde(default = "default_refresh_margin")]
    pub refresh_before_expiry_seconds: u64,
    /// The backend serving this tenant's mailboxes (default: EWS pass-through to Exchange Online).
    #[serde(default)]
    pub backend: BackendConfig,
}

/// A backend and its settings (`backend = { kind = "..." }`). Adding a backend adds a variant
/// here and a module behind `backend::build`; nothing else changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BackendConfig {
    /// EWS passed through to Exchange Online: the tenant's `ews_url`, else its cloud's, else
    /// `upstream.ews_url`, with the tenant's Exchange scope.
    #[default]
    ExchangeOnline,
    /// EWS passed through to Exchange Server on-premises (hybrid modern auth).
    ExchangeServer {
        /// Its EWS endpoint, e.g. `https://mail.contoso.com/EWS/Exchange.asmx`.
        ews_url: String,
        /// The scope its tokens are requested for (default: the origin of `ews_url` with
        /// `/.default`, as hybrid modern auth registers it).
        #[serde(default)]
        scope: Option<String>,
    },
    /// EWS translated to Microsoft Graph (mailboxes whose EWS is retired), with the tenant's
    /// Graph token (scope `{graph resource}/.default`).
    Graph {
        /// Graph base URL; requests go to `{graph_url}/v1.0/users/{mailbox}/...`.
        #[serde(default = "default_graph_url")]
        graph_url: String,
    },
}

fn default_graph_url() -> String {
    "https://graph.microsoft.com".to_owned()
}

/// `[[route]]`: mailboxes that another backend serves than their tenant's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Exact addresses and `*@domain` patterns; the first route that matches wins.
    pub mailboxes: Vec<String>,
    /// The backend serving them.
    pub backend: BackendConfig,
    /// The tenant whose app tokens are used (default: the tenant serving the mailbox's domain).
    #[serde(default)]
    pub tenant: Option<String>,
}

impl BackendConfig {
    /// Problems with these settings, prefixed with `at`.
    fn problems(&self, at: &str, problems: &mut Vec<String>) {
        match self {
            Self::ExchangeOnline => {}
            Self::ExchangeServer { ews_url, scope } => {
                let scheme = ews_url
                    .parse::<http::Uri>()
                    .ok()
                    .and_then(|u| u.scheme_str().map(str::to_owned));
                if !matches!(scheme.as_deref(), Some("https" | "http")) {
                    problems.push(format!("{at}.ews_url: {ews_url:?} is not an http(s) URL"));
                }
                if scope.as_deref().is_some_and(|s| s.trim().is_empty()) {
                    problems.push(format!("{at}.scope: must not be empty"));
                }
            }
            Self::Graph { graph_url } => {
                let scheme = graph_url
                    .parse::<http::Uri>()
                    .ok()
                    .and_then(|u| u.scheme_str().map(str::to_owned));
                if !matches!(scheme.as_deref(), Some("https" | "http")) {
                    problems.push(format!(
                        "{at}.graph_url: {graph_url:?} is not an http(s) URL"
                    ));
                }
            }
        }
    }
}

/// Microsoft clouds, with their token authority, Exchange resource and EWS URL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cloud {
    /// Worldwide (and GCC).
    #[default]
    Global,
    /// US Government GCC High.
    GccHigh,
    /// US Government DoD.
    Dod,
    /// China, operated by 21Vianet.
    China,
}

impl Cloud {
    /// Token authority host.
    pub fn authority(self) -> &'static str {
        match self {
            Self::Global => "https://login.microsoftonline.com",
            Self::GccHigh | Self::Dod => "https://login.microsoftonline.us",
            Self::China => "https://login.partner.microsoftonline.cn",
        }
    }

    /// Exchange Online resource (scope without `/.default`).
    pub fn resource(self) -> &'static str {
        match self {
            Self::Global => "https://outlook.office365.com",
            Self::GccHigh => "https://outlook.office365.us",
            Self::Dod => "https://outlook-dod.office365.us",
            Self::China => "https://partner.outlook.cn",
        }
    }

    /// Microsoft Graph resource (scope without `/.default`).
    pub fn graph_resource(self) -> &'static str {
        match self {
            Self::Global => "https://graph.microsoft.com",
            Self::GccHigh => "https://graph.microsoft.us",
            Self::Dod => "https://dod-graph.microsoft.us",
            Self::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }

    /// EWS endpoint.
    pub fn ews_url(self) -> String {
        format!("{}/EWS/Exchange.asmx", self.resource())
    }
}

impl TenantConfig {
    /// The token authority: explicit, else the cloud's.
    pub fn authority(&self) -> String {
        self.authority
            .clone()
            .unwrap_or_else(|| self.cloud.authority().to_owned())
    }

    /// The scope: explicit, else the cloud's Exchange resource with `/.default`.
    pub fn scope(&self) -> String {
        self.scope
            .clone()
            .unwrap_or_else(|| format!("{}/.default", self.cloud.resource()))
    }

    /// This tenant's EWS URL, when it differs from `upstream.ews_url`.
    pub fn ews_url_override(&self) -> Option<String> {
        match (&self.ews_url, self.cloud) {
            (Some(url), _) => Some(url.clone()),
            (None, Cloud::Global) => None,
            (None, cloud) => Some(cloud.ews_url()),
        }
    }
}

/// One `[[tenant.credential]]` as written: the keys of every kind, of which exactly one kind
/// may be used. [`CredentialConfig::parse`] turns it into a [`CredentialSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// Certificate registered on the app (PEM).
    #[serde(default)]
    pub certificate_file: Option<PathBuf>,
    /// Its private key (PEM, PKCS#8 or PKCS#1; RSA of at least 2048 bits).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Certificate and key in one PKCS#12 (`.pfx`) file, instead of certificate_file + key_file.
    #[serde(default)]
    pub pkcs12_file: Option<PathBuf>,
    /// The PKCS#12 password from a file (trailing newline ignored) ...
    #[serde(default)]
    pub pkcs12_password_file: Option<PathBuf>,
    /// ... or from an environment variable ...
    #[serde(default)]
    pub pkcs12_password_env: Option<String>,
    /// ... or inline (discouraged: a warning is logged). None of the three: an empty password.
    #[serde(default)]
    pub pkcs12_password: Option<Secret>,
    /// Client assertion algorithm: `PS256` (with `x5t#S256`, the default) or `RS256` (with `x5t`).
    #[serde(default)]
    pub algorithm: Option<String>,
    /// Client secret from a file.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Client secret from an environment variable.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Client secret inline (discouraged: a warning is logged).
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Azure managed identity: `imds` (VM, VM scale set, AKS node) or `app-service` (App
    /// Service, Functions, Container Apps: `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`).
    #[serde(default)]
    pub managed_identity: Option<String>,
    /// Client id of a user-assigned managed identity (system-assigned when absent).
    #[serde(default)]
    pub identity_client_id: Option<String>,
    /// Identity endpoint URL (default: IMDS at 169.254.169.254, or `$IDENTITY_ENDPOINT`).
    #[serde(default)]
    pub identity_endpoint: Option<String>,
    /// Workload identity federation: a file holding an external token (e.g. the Kubernetes
    /// service account token AKS projects at `/var/run/secrets/azure/tokens/azure-identity-token`),
    /// re-read for every token request and presented as the client assertion.
    #[serde(default)]
    pub federated_token_file: Option<PathBuf>,
}

/// Resource limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body in bytes (default fits a 150 MB attachment in base64).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Largest SOAP envelope head (everything before the operation element) in bytes.
    #[serde(default = "default_max_prefix")]
    pub max_envelope_head_bytes: usize,
    /// Seconds a new connection has to finish its TLS handshake and send its first request head
    /// (slowloris defence).
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout_seconds: u64,
    /// Seconds a kept-alive connection may sit between requests (until its next complete head);
    /// never counts while a response, such as a streaming notification, is being sent.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: u64,
    /// Seconds a request body has to arrive in full once its head is in. A client that
    /// trickles its body is answered `ErrorTimeoutExpired` and disconnected, and whatever was
    /// already streamed upstream is aborted. The default lets a full-size (210 MiB) body
    /// arrive at about 2 Mbit/s.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout_seconds: u64,
    /// Largest request head in bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Concurrent requests per acted-as mailbox, streaming subscriptions included (Exchange
    /// Online allows 27 per mailbox); 0: no cap.
    #[serde(default = "default_per_mailbox")]
    pub max_concurrent_requests_per_mailbox: usize,
    /// Sustained requests per second per principal; 0: no cap.
    #[serde(default = "default_principal_rate")]
    pub requests_per_second_per_principal: u32,
    /// Requests a principal may send at once above its sustained rate.
    #[serde(default = "default_principal_burst")]
    pub request_burst_per_principal: u32,
    /// Most header fields in a request head.
    #[serde(default = "default_max_header_count")]
    pub max_header_count: usize,
    /// Most client connections served at once; further ones are closed right after accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body(),
            max_envelope_head_bytes: default_max_prefix(),
            header_read_timeout_seconds: default_header_timeout(),
            idle_timeout_seconds: default_idle_timeout(),
            body_read_timeout_seconds: default_body_read_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_concurrent_requests_per_mailbox: default_per_mailbox(),
            requests_per_second_per_principal: default_principal_rate(),
            request_burst_per_principal: default_principal_burst(),
            max_header_count: default_max_header_count(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_per_mailbox() -> usize {
    27
}
fn default_principal_rate() -> u32 {
    50
}
fn default_principal_burst() -> u32 {
    100
}
fn default_realm() -> String {
    "ews-gateway".to_owned()
}
fn default_cache_ttl() -> u64 {
    60
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_response_timeout() -> u64 {
    120
}
fn default_ews_url() -> String {
    Cloud::Global.ews_url()
}
fn default_refresh_margin() -> u64 {
    300
}
fn default_max_body() -> u64 {
    // 150 MB of attachment is ~200 MiB once base64 and SOAP are added.
    210 * 1024 * 1024
}
fn default_max_prefix() -> usize {
    64 * 1024
}
fn default_header_timeout() -> u64 {
    30
}
fn default_body_read_timeout() -> u64 {
    900
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_idle_timeout() -> u64 {
    // IIS's default connection timeout: clients tuned against Exchange expect at least this.
    120
}
fn default_max_header_count() -> usize {
    100
}
fn default_max_connections() -> usize {
    1024
}

/// A secret value; `Debug` never shows it. Deserialised from an inline configuration value.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Secret {}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself; call only where it is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Config {
    /// Reads and parses a file, then validates it; all problems are reported together.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let config = Self::parse(&text, &path.display().to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text (no validation).
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// Checks everything that can be checked without the network; lists every problem. Each
    /// section reports its own; this adds the few that span sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = self.listen.problems();
        problems.extend(self.auth.problems());
        problems.extend(self.upstream.problems());
        problems.extend(self.runtime.problems());
        problems.extend(self.limits.problems());
        if let Some(admin) = self.admin.address
            && admin.port() != 0
            && admin == self.listen.address
        {
            problems.push("admin.address must differ from listen.address".to_owned());
        }
        if self.tenants.is_empty() {
            problems.push("tenant: at least one [[tenant]] is required".to_owned());
        }
        for (i, t) in self.tenants.iter().enumerate() {
            t.backend.problems(
                &format!("tenant[{i}] ({}).backend", t.tenant_id),
                &mut problems,
            );
        }
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("route[{i}]");
            if r.mailboxes.is_empty() {
                problems.push(format!(
                    "{at}.mailboxes: list at least one address or *@domain"
                ));
            }
            for m in &r.mailboxes {
                if let Err(why) = crate::auth::MailboxPattern::parse(m) {
                    problems.push(format!("{at}.mailboxes: {why}"));
                }
            }
            if let Some(tenant) = &r.tenant
                && !self
                    .tenants
                    .iter()
                    .any(|t| t.tenant_id.eq_ignore_ascii_case(tenant))
            {
                problems.push(format!(
                    "{at}.tenant: {tenant:?} is not a configured [[tenant]]"
                ));
            }
            r.backend.problems(&format!("{at}.backend"), &mut problems);
        }
        let several = self.tenants.len() > 1;
        let mut seen_domains = std::collections::HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let at = t.label(i);
            problems.extend(t.problems(&at));
            if several && t.domains.is_empty() {
                problems.push(format!(
                    "{at}: with several tenants each must list its mail domains"
                ));
            }
            for d in &t.domains {
                if !seen_domains.insert(d.to_ascii_lowercase()) {
                    problems.push(format!("{at}: domain {d} is claimed by two tenants"));
                }
            }
        }
        problems.extend(self.graph.shaping.problems());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

fn not_a_file(key: &str, path: &Path) -> Option<String> {
    (!path.is_file()).then(|| format!("{key}: {} is not a readable file", path.display()))
}

impl ListenConfig {
    /// Problems of `[listen]`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                problems.push("listen: tls_cert and tls_key must be set together".to_owned())
            }
            (None, None) if !self.address.ip().is_loopback() && !self.allow_plain_http => {
                problems.push(format!(
                    "listen: {} is not loopback and no tls_cert/tls_key is set; Basic credentials would cross the network in clear text (set allow_plain_http = true only behind a TLS-terminating load balancer)",
                    self.address
                ))
            }
            _ => {}
        }
        for (key, path) in [
            ("listen.tls_cert", &self.tls_cert),
            ("listen.tls_key", &self.tls_key),
        ] {
            problems.extend(path.as_deref().and_then(|p| not_a_file(key, p)));
        }
        problems
    }
}

impl AuthConfig {
    /// Problems of `[auth]` and `[auth.lockout]`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = not_a_file("auth.users_file", &self.users_file)
            .into_iter()
            .collect();
        if self.realm.contains('"') || self.realm.is_empty() {
            problems.push("auth.realm: must be non-empty and contain no double quote".to_owned());
        }
        problems.extend(self.lockout.problems());
        problems
    }
}

impl UpstreamConfig {
    /// Problems of `[upstream]`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = url_parts(&self.ews_url) {
            problems.push(format!("upstream.ews_url: {e}"));
        }
        problems.extend(
            self.ca_file
                .as_deref()
                .and_then(|p| not_a_file("upstream.ca_file", p)),
        );
        problems
    }
}

impl RuntimeConfig {
    /// Problems of `[runtime]`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            problems.push(format!(
                "runtime.log_level: {:?} is not a log filter (e.g. \"info\" or \"ews_gateway=debug,info\")",
                self.log_level
            ));
        }
        if self.shutdown_grace_seconds > 3600 {
            problems.push("runtime.shutdown_grace_seconds: at most 3600".to_owned());
        }
        problems
    }
}

impl LimitsConfig {
    /// Problems of `[limits]`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_envelope_head_bytes < 1024 {
            problems.push("limits.max_envelope_head_bytes: at least 1024".to_owned());
        }
        for (key, value) in [
            (
                "header_read_timeout_seconds",
                self.header_read_timeout_seconds,
            ),
            ("idle_timeout_seconds", self.idle_timeout_seconds),
            ("body_read_timeout_seconds", self.body_read_timeout_seconds),
            ("max_header_count", self.max_header_count as u64),
            ("max_connections", self.max_connections as u64),
        ] {
            if value == 0 {
                problems.push(format!("limits.{key}: at least 1"));
            }
        }
        if self.max_header_bytes < 8192 {
            problems.push("limits.max_header_bytes: at least 8192".to_owned());
        }
        problems
    }
}

impl TenantConfig {
    /// How problems of the `i`th tenant are prefixed.
    pub fn label(&self, i: usize) -> String {
        format!("tenant[{i}] ({})", self.tenant_id)
    }

    /// Problems of one `[[tenant]]` (`at` prefixes each), its credentials included.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.tenant_id.trim().is_empty() {
            problems.push(format!("{at}: tenant_id is empty"));
        }
        if self.client_id.trim().is_empty() {
            problems.push(format!("{at}: client_id is empty"));
        }
        if let Err(more) = self.credential_specs(at) {
            problems.extend(more);
        }
        problems.extend(
            self.ca_file
                .as_deref()
                .and_then(|p| not_a_file(&format!("{at}: ca_file"), p)),
        );
        if let Err(e) = url_parts(&self.authority()) {
            problems.push(format!("{at}: authority: {e}"));
        }
        if let Some(url) = &self.ews_url
            && let Err(e) = url_parts(url)
        {
            problems.push(format!("{at}: ews_url: {e}"));
        }
        if !self.scope().ends_with("/.default") {
            problems.push(format!(
                "{at}: scope {} must end with /.default (client-credentials grant)",
                self.scope()
            ));
        }
        problems
    }

    /// The tenant's credentials, parsed, in the order they are tried: the `client_secret*`
    /// shorthand first, then each `[[tenant.credential]]`; or every problem with them.
    pub fn credential_specs(&self, at: &str) -> Result<Vec<CredentialSpec>, Vec<String>> {
        let mut specs = Vec::new();
        let mut problems = Vec::new();
        match SecretSource::pick(
            ["client_secret_file", "client_secret_env", "client_secret"],
            self.client_secret_file.as_deref(),
            self.client_secret_env.as_deref(),
            self.client_secret.clone(),
        ) {
            Ok(Some(source)) => {
                problems.extend(source.problem().map(|p| format!("{at}: {p}")));
                specs.push(CredentialSpec::Secret(source));
            }
            Ok(None) => {}
            Err(p) => problems.push(format!("{at}: {p}")),
        }
        if specs.is_empty() && problems.is_empty() && self.credentials.is_empty() {
            problems.push(format!(
                "{at}: no credential: set client_secret_file, client_secret_env or client_secret, or add a [[tenant.credential]]"
            ));
        }
        for (j, c) in self.credentials.iter().enumerate() {
            match c.parse() {
                Ok(spec) => specs.push(spec),
                Err(more) => problems.extend(
                    more.into_iter()
                        .map(|p| format!("{at}: credential[{j}] {p}")),
                ),
            }
        }
        if problems.is_empty() {
            Ok(specs)
        } else {
            Err(problems)
        }
    }
}

/// Where a secret is read from. One source for every secret the configuration names (client
/// secrets, the PKCS#12 password, the Redis URL), each set with `<key>_file`, `<key>_env` or
/// `<key>` (inline, discouraged).
#[derive(Clone)]
pub enum SecretSource {
    /// A file; a trailing newline is ignored (as `echo` and Kubernetes Secrets leave one).
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// Inline in the configuration file.
    Inline(Secret),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "SecretSource::File({})", p.display()),
            Self::Env(v) => write!(f, "SecretSource::Env({v})"),
            Self::Inline(_) => f.write_str("SecretSource::Inline(..)"),
        }
    }
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read (or is not UTF-8).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The environment variable is not set (or not Unicode).
    #[error("environment variable {0} is not set")]
    Env(String),
}

impl SecretSource {
    /// The one source set among the keys `names` (file, environment, inline); `None` when none
    /// is, a problem when several are.
    pub fn pick(
        names: [&str; 3],
        file: Option<&Path>,
        env: Option<&str>,
        inline: Option<Secret>,
    ) -> Result<Option<Self>, String> {
        let mut set: Vec<Self> = file
            .map(|p| Self::File(p.to_owned()))
            .into_iter()
            .chain(env.map(|v| Self::Env(v.to_owned())))
            .chain(inline.map(Self::Inline))
            .collect();
        if set.len() > 1 {
            return Err(format!(
                "set at most one of {}, {}, {}",
                names[0], names[1], names[2]
            ));
        }
        Ok(set.pop())
    }

    /// Why the secret cannot be read now, if it cannot (missing file, unset variable).
    pub fn problem(&self) -> Option<String> {
        match self {
            Self::File(p) => {
                (!p.is_file()).then(|| format!("{} is not a readable file", p.display()))
            }
            Self::Env(var) => std::env::var_os(var)
                .is_none()
                .then(|| format!("environment variable {var} is not set")),
            Self::Inline(_) => None,
        }
    }

    /// Whether the secret is written in the configuration file itself.
    pub fn is_inline(&self) -> bool {
        matches!(self, Self::Inline(_))
    }

    /// Reads the secret.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        match self {
            Self::File(path) => std::fs::read_to_string(path)
                .map(|text| Secret::new(text.trim_end_matches(['\r', '\n']).to_owned()))
                .map_err(|source| SecretError::Read {
                    path: path.display().to_string(),
                    source,
                }),
            Self::Env(var) => std::env::var(var)
                .map(Secret::new)
                .map_err(|_| SecretError::Env(var.clone())),
            Self::Inline(secret) => Ok(secret.clone()),
        }
    }
}

/// One credential of a tenant's app, parsed: exactly one kind, with what that kind needs.
#[derive(Debug, Clone)]
pub enum CredentialSpec {
    /// A client secret.
    Secret(SecretSource),
    /// A certificate and its RSA key, signing client assertions.
    Certificate {
        /// Where the certificate and key are.
        source: CertificateSource,
        /// The assertion's signature algorithm.
        algorithm: AssertionAlgorithm,
    },
    /// An Azure managed identity.
    ManagedIdentity {
        /// Which platform endpoint.
        kind: IdentityKind,
        /// Client id of a user-assigned identity (system-assigned when absent).
        client_id: Option<String>,
        /// The endpoint URL, when not the platform's default.
        endpoint: Option<String>,
    },
    /// Workload identity federation: the file holding the external token (re-read each time).
    Federated {
        /// The token file.
        token_file: PathBuf,
    },
}

/// Where a certificate credential's certificate and key are.
#[derive(Debug, Clone)]
pub enum CertificateSource {
    /// A PEM certificate and a PEM key file.
    Pem {
        /// The certificate.
        certificate: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
    /// One PKCS#12 (`.pfx`) file.
    Pkcs12 {
        /// The archive.
        file: PathBuf,
        /// Its password (empty when `None`).
        password: Option<SecretSource>,
    },
}

/// Client assertion signature algorithms Entra accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionAlgorithm {
    /// RSASSA-PSS with SHA-256, thumbprint in `x5t#S256` (the default).
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, SHA-1 thumbprint in `x5t`.
    Rs256,
}

/// Managed identity endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// The Instance Metadata Service (VM, VM scale set, AKS node).
    Imds,
    /// App Service, Functions, Container Apps (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`).
    AppService,
}

impl CredentialConfig {
    /// Parses this `[[tenant.credential]]` into its one kind, or lists what is wrong with it.
    pub fn parse(&self) -> Result<CredentialSpec, Vec<String>> {
        let mut problems = Vec::new();
        let pem = self.certificate_file.is_some() || self.key_file.is_some();
        let certificate = pem || self.pkcs12_file.is_some();
        let secret =
            self.secret_file.is_some() || self.secret_env.is_some() || self.secret.is_some();
        let identity = self.managed_identity.is_some();
        let federated = self.federated_token_file.is_some();
        if [certificate, secret, identity, federated]
            .iter()
            .filter(|k| **k)
            .count()
            != 1
        {
            return Err(vec![
                "must be exactly one of: certificate_file + key_file or pkcs12_file, secret_file or secret_env or secret, managed_identity, federated_token_file".to_owned(),
            ]);
        }
        // Keys of another kind are refused rather than silently ignored.
        let stray = |keys: &[(&str, bool)], kind: &str, problems: &mut Vec<String>| {
            for (key, set) in keys {
                if *set {
                    problems.push(format!("{key} applies only to a {kind} credential"));
                }
            }
        };
        let password_set = self.pkcs12_password_file.is_some()
            || self.pkcs12_password_env.is_some()
            || self.pkcs12_password.is_some();
        if !certificate {
            stray(
                &[("algorithm", self.algorithm.is_some())],
                "certificate",
                &mut problems,
            );
        }
        if self.pkcs12_file.is_none() {
            stray(
                &[("pkcs12_password*", password_set)],
                "pkcs12_file",
                &mut problems,
            );
        }
        if !identity {
            stray(
                &[
                    ("identity_client_id", self.identity_client_id.is_some()),
                    ("identity_endpoint", self.identity_endpoint.is_some()),
                ],
                "managed_identity",
                &mut problems,
            );
        }
        let spec = if certificate {
            let algorithm = match self.algorithm.as_deref() {
                None | Some("PS256") => AssertionAlgorithm::Ps256,
                Some("RS256") => AssertionAlgorithm::Rs256,
                Some(other) => {
                    problems.push(format!("algorithm {other} must be PS256 or RS256"));
                    AssertionAlgorithm::Ps256
                }
            };
            let source = match (&self.certificate_file, &self.key_file, &self.pkcs12_file) {
                (Some(certificate), Some(key), None) => {
                    problems.extend(not_a_file("certificate_file", certificate));
                    problems.extend(not_a_file("key_file", key));
                    Some(CertificateSource::Pem {
                        certificate: certificate.clone(),
                        key: key.clone(),
                    })
                }
                (None, None, Some(file)) => {
                    problems.extend(not_a_file("pkcs12_file", file));
                    let password = match SecretSource::pick(
                        [
                            "pkcs12_password_file",
                            "pkcs12_password_env",
                            "pkcs12_password",
                        ],
                        self.pkcs12_password_file.as_deref(),
                        self.pkcs12_password_env.as_deref(),
                        self.pkcs12_password.clone(),
                    ) {
                        Ok(password) => password,
                        Err(p) => {
                            problems.push(p);
                            None
                        }
                    };
                    problems.extend(password.as_ref().and_then(SecretSource::problem));
                    Some(CertificateSource::Pkcs12 {
                        file: file.clone(),
                        password,
                    })
                }
                (_, _, Some(_)) => {
                    problems.push("sets both PEM files and pkcs12_file".to_owned());
                    None
                }
                _ => {
                    problems.push("needs both certificate_file and key_file".to_owned());
                    None
                }
            };
            source.map(|source| CredentialSpec::Certificate { source, algorithm })
        } else if secret {
            match SecretSource::pick(
                ["secret_file", "secret_env", "secret"],
                self.secret_file.as_deref(),
                self.secret_env.as_deref(),
                self.secret.clone(),
            ) {
                Ok(Some(source)) => {
                    problems.extend(source.problem());
                    Some(CredentialSpec::Secret(source))
                }
                Ok(None) => None,
                Err(p) => {
                    problems.push(p);
                    None
                }
            }
        } else if let Some(kind) = &self.managed_identity {
            let kind = match kind.as_str() {
                "imds" => Some(IdentityKind::Imds),
                "app-service" => Some(IdentityKind::AppService),
                other => {
                    problems.push(format!(
                        "managed_identity {other} must be imds or app-service"
                    ));
                    None
                }
            };
            if kind == Some(IdentityKind::AppService) {
                if self.identity_endpoint.is_none()
                    && std::env::var_os("IDENTITY_ENDPOINT").is_none()
                {
                    problems.push("app-service managed identity needs IDENTITY_ENDPOINT (or identity_endpoint)".to_owned());
                }
                if std::env::var_os("IDENTITY_HEADER").is_none() {
                    problems.push("app-service managed identity needs the IDENTITY_HEADER environment variable".to_owned());
                }
            }
            if let Some(url) = &self.identity_endpoint
                && let Err(e) = url_parts(url)
            {
                problems.push(format!("identity_endpoint: {e}"));
            }
            kind.map(|kind| CredentialSpec::ManagedIdentity {
                kind,
                client_id: self.identity_client_id.clone(),
                endpoint: self.identity_endpoint.clone(),
            })
        } else {
            self.federated_token_file
                .as_ref()
                .map(|token_file| CredentialSpec::Federated {
                    token_file: token_file.clone(),
                })
        };
        match spec {
            Some(spec) if problems.is_empty() => Ok(spec),
            _ => Err(problems),
        }
    }
}

/// Scheme, host and port of an `http(s)://` URL, or why it is not one.
pub fn url_parts(url: &str) -> Result<(String, String, u16), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url} is not a URL ({e})"))?;
    let scheme = uri.scheme_str().unwrap_or_default().to_owned();
    let port = match scheme.as_str() {
        "https" => uri.port_u16().unwrap_or(443),
        "http" => uri.port_u16().unwrap_or(80),
        _ => return Err(format!("{url} must start with https:// or http://")),
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("{url} has no host"))?
        .to_owned();
    Ok((scheme, host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(users: &Path) -> String {
        format!(
            r#"
[listen]
address = "127.0.0.1:8080"
[auth]
users_file = "{}"
[upstream]
ews_url = "https://outlook.office365.com/EWS/Exchange.asmx"
[[tenant]]
tenant_id = "contoso.example"
client_id = "11111111-2222-4333-8444-555555555555"
client_secret = "x"
"#,
            users.display()
        )
    }

    #[test]
    fn minimal_config_is_valid_with_defaults() {
        let users = tempfile::NamedTempFile::new().unwrap();
        let c = Config::parse(&minimal(users.path()), "t").unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.tenants[0].scope(),
            "https://outlook.office365.com/.default"
        );
        assert_eq!(
            c.tenants[0].authority(),
            "https://login.microsoftonline.com"
        );
        assert_eq!(c.tenants[0].ews_url_override(), None);
        assert_eq!(c.limits.max_envelope_head_bytes, 64 * 1024);
    }

    #[test]
    fn cloud_presets_set_authority_scope_and_ews_url() {
        let users = tempfile::NamedTempFile::new().unwrap();
        let text = minimal(users.path()).replace(
            "client_secret = \"x\"",
            "client_secret = \"x\"\ncloud = \"gcc-high\"",
        );
        let c = Config::parse(&text, "t").unwrap();
        let t = &c.tenants[0];
        assert_eq!(t.authority(), "https://login.microsoftonline.us");
        assert_eq!(t.scope(), "https://outlook.office365.us/.default");
        assert_eq!(
            t.ews_url_override().as_deref(),
            Some("https://outlook.office365.us/EWS/Exchange.asmx")
        );
        let dod = Config::parse(
            &minimal(users.path()).replace(
                "client_secret = \"x\"",
                "client_secret = \"x\"\ncloud = \"dod\"",
            ),
            "t",
        )
        .unwrap();
        assert_eq!(
            dod.tenants[0].scope(),
            "https://outlook-dod.office365.us/.default"
        );
        let china = Config::parse(
            &minimal(users.path()).replace(
                "client_secret = \"x\"",
                "client_secret = \"x\"\ncloud = \"china\"",
            ),
            "t",
        )
        .unwrap();
        assert_eq!(
            china.tenants[0].authority(),
            "https://login.partner.microsoftonline.cn"
        );
        let onprem = Config::parse(&minimal(users.path()).replace("client_secret = \"x\"", "client_secret = \"x\"\news_url = \"https://mail.contoso.example/EWS/Exchange.asmx\"\nscope = \"https://mail.contoso.example/.default\""), "t").unwrap();
        assert_eq!(
            onprem.tenants[0].ews_url_override().as_deref(),
            Some("https://mail.contoso.example/EWS/Exchange.asmx")
        );
        assert_eq!(
            onprem.tenants[0].scope(),
            "https://mail.contoso.example/.default"
        );
        assert!(
            Config::parse(
                &minimal(users.path()).replace(
                    "client_secret = \"x\"",
                    "client_secret = \"x\"\ncloud = \"mars\""
                ),
                "t"
            )
            .is_err()
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let users = tempfile::NamedTempFile::new().unwrap();
        let text = minimal(users.path()).replace("[auth]", "[auth]\nrelm = \"x\"");
        let err = Config::parse(&text, "t").unwrap_err();
        assert!(err.to_string().contains("relm"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
[listen]
address = "0.0.0.0:8080"
[auth]
users_file = "/nonexistent/users.toml"
[upstream]
ews_url = "ftp://x"
[[tenant]]
tenant_id = "a"
client_id = ""
scope = "https://outlook.office365.com"
"#;
        let c = Config::parse(text, "t").unwrap();
        let ConfigError::Invalid(problems) = c.validate().unwrap_err() else {
            panic!("expected Invalid");
        };
        let all = problems.join("\n");
        for needle in [
            "clear text",
            "users_file",
            "ews_url",
            "client_id is empty",
            "no credential",
            "/.default",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in {all}");
        }
    }

    #[test]
    fn a_credential_parses_into_exactly_one_kind_with_every_problem_listed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "hunter2\r\n").unwrap();
        let secret = CredentialConfig {
            secret_file: Some(file.clone()),
            ..Default::default()
        };
        let Ok(CredentialSpec::Secret(source)) = secret.parse() else {
            panic!("a secret credential");
        };
        assert_eq!(source.resolve().unwrap().expose(), "hunter2");

        let two_kinds = CredentialConfig {
            secret_file: Some(file.clone()),
            federated_token_file: Some(file.clone()),
            ..Default::default()
        };
        assert!(two_kinds.parse().unwrap_err()[0].contains("exactly one of"));

        // Keys of another kind, a bad algorithm and missing files: all reported at once.
        let bad = CredentialConfig {
            certificate_file: Some("/nonexistent/app.crt".into()),
            key_file: Some("/nonexistent/app.key".into()),
            algorithm: Some("ES256".into()),
            identity_client_id: Some("x".into()),
            pkcs12_password_env: Some("PATH".into()),
            ..Default::default()
        };
        let all = bad.parse().unwrap_err().join("\n");
        for needle in [
            "identity_client_id applies only to a managed_identity credential",
            "pkcs12_password* applies only to a pkcs12_file credential",
            "algorithm ES256 must be PS256 or RS256",
            "certificate_file: /nonexistent/app.crt is not a readable file",
            "key_file: /nonexistent/app.key is not a readable file",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in {all}");
        }

        let pfx = |env: Option<&str>, inline: Option<&str>| CredentialConfig {
            pkcs12_file: Some(file.clone()),
            pkcs12_password_env: env.map(str::to_owned),
            pkcs12_password: inline.map(|s| Secret::new(s.to_owned())),
            ..Default::default()
        };
        assert!(
            pfx(Some("PATH"), Some("x")).parse().unwrap_err()[0].contains(
                "at most one of pkcs12_password_file, pkcs12_password_env, pkcs12_password"
            )
        );
        assert!(
            pfx(Some("EWS_GATEWAY_TEST_UNSET_PFX"), None)
                .parse()
                .unwrap_err()[0]
                .contains("environment variable EWS_GATEWAY_TEST_UNSET_PFX is not set")
        );
        let Ok(CredentialSpec::Certificate {
            source: CertificateSource::Pkcs12 {
                password: Some(p), ..
            },
            algorithm: AssertionAlgorithm::Ps256,
        }) = pfx(None, Some("pw")).parse()
        else {
            panic!("a PKCS#12 credential with an inline password");
        };
        assert!(p.is_inline());
        assert_eq!(format!("{p:?}"), "SecretSource::Inline(..)");
    }

    #[test]
    fn tenant_secret_sources_are_one_of_three_and_never_shown() {
        let users = tempfile::NamedTempFile::new().unwrap();
        let text = minimal(users.path()).replace(
            "client_secret = \"x\"",
            "client_secret = \"hunter2\"\nclient_secret_env = \"PATH\"",
        );
        let c = Config::parse(&text, "t").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let ConfigError::Invalid(problems) = c.validate().unwrap_err() else {
            panic!("expected Invalid");
        };
        assert!(
            problems.join("\n").contains(
                "set at most one of client_secret_file, client_secret_env, client_secret"
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn secret_debug_does_not_reveal() {
        assert_eq!(format!("{:?}", Secret::new("hunter2".into())), "Secret(..)");
    }
}
