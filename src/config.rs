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
    pub client_secret: Option<String>,
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

/// One client credential of a tenant's app: a certificate (key and certificate PEM) or a secret.
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
    /// Environment variable holding the PKCS#12 password (empty password when absent).
    #[serde(default)]
    pub pkcs12_password_env: Option<String>,
    /// Client assertion algorithm: `PS256` (with `x5t#S256`, the default) or `RS256` (with `x5t`).
    #[serde(default)]
    pub algorithm: Option<String>,
    /// Client secret from a file.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Client secret from an environment variable.
    #[serde(default)]
    pub secret_env: Option<String>,
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

/// Where a secret comes from, resolved.
#[derive(Clone)]
pub struct Secret(String);

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

    /// Checks everything that can be checked without the network; lists every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let l = &self.listen;
        match (&l.tls_cert, &l.tls_key) {
            (Some(_), None) | (None, Some(_)) => problems
                .push("listen: tls_cert and tls_key must be set together".to_owned()),
            (None, None) if !l.address.ip().is_loopback() && !l.allow_plain_http => {
                problems.push(format!(
                    "listen: {} is not loopback and no tls_cert/tls_key is set; Basic credentials would cross the network in clear text (set allow_plain_http = true only behind a TLS-terminating load balancer)",
                    l.address
                ))
            }
            _ => {}
        }
        for (key, path) in [
            ("listen.tls_cert", &l.tls_cert),
            ("listen.tls_key", &l.tls_key),
        ] {
            if let Some(p) = path
                && !p.is_file()
            {
                problems.push(format!("{key}: {} is not a readable file", p.display()));
            }
        }
        if !self.auth.users_file.is_file() {
            problems.push(format!(
                "auth.users_file: {} is not a readable file",
                self.auth.users_file.display()
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.runtime.log_level).is_err() {
            problems.push(format!(
                "runtime.log_level: {:?} is not a log filter (e.g. \"info\" or \"ews_gateway=debug,info\")",
                self.runtime.log_level
            ));
        }
        if self.runtime.shutdown_grace_seconds > 3600 {
            problems.push("runtime.shutdown_grace_seconds: at most 3600".to_owned());
        }
        if let Some(admin) = self.admin.address
            && admin.port() != 0
            && admin == self.listen.address
        {
            problems.push("admin.address must differ from listen.address".to_owned());
        }
        if self.auth.realm.contains('"') || self.auth.realm.is_empty() {
            problems.push("auth.realm: must be non-empty and contain no double quote".to_owned());
        }
        match url_parts(&self.upstream.ews_url) {
            Ok(_) => {}
            Err(e) => problems.push(format!("upstream.ews_url: {e}")),
        }
        if let Some(p) = &self.upstream.ca_file
            && !p.is_file()
        {
            problems.push(format!(
                "upstream.ca_file: {} is not a readable file",
                p.display()
            ));
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
            let at = format!("tenant[{i}] ({})", t.tenant_id);
            if t.tenant_id.trim().is_empty() {
                problems.push(format!("{at}: tenant_id is empty"));
            }
            if t.client_id.trim().is_empty() {
                problems.push(format!("{at}: client_id is empty"));
            }
            let sources = [
                t.client_secret_file.is_some(),
                t.client_secret_env.is_some(),
                t.client_secret.is_some(),
            ]
            .iter()
            .filter(|s| **s)
            .count();
            if sources > 1 {
                problems.push(format!(
                    "{at}: set at most one of client_secret_file, client_secret_env, client_secret"
                ));
            }
            if sources == 0 && t.credentials.is_empty() {
                problems.push(format!(
                    "{at}: no credential: set client_secret_file, client_secret_env or client_secret, or add a [[tenant.credential]]"
                ));
            }
            for (j, c) in t.credentials.iter().enumerate() {
                let pem = c.certificate_file.is_some() || c.key_file.is_some();
                let cert = pem || c.pkcs12_file.is_some();
                if pem && c.pkcs12_file.is_some() {
                    problems.push(format!(
                        "{at}: credential[{j}] sets both PEM files and pkcs12_file"
                    ));
                }
                let secret = c.secret_file.is_some() || c.secret_env.is_some();
                let identity = c.managed_identity.is_some();
                let federated = c.federated_token_file.is_some();
                if [cert, secret, identity, federated]
                    .iter()
                    .filter(|k| **k)
                    .count()
                    != 1
                {
                    problems.push(format!(
                        "{at}: credential[{j}] must be exactly one of: certificate_file + key_file or pkcs12_file, secret_file or secret_env, managed_identity, federated_token_file"
                    ));
                }
                if let Some(kind) = &c.managed_identity
                    && kind != "imds"
                    && kind != "app-service"
                {
                    problems.push(format!(
                        "{at}: credential[{j}] managed_identity {kind} must be imds or app-service"
                    ));
                }
                if c.managed_identity.as_deref() == Some("app-service")
                    && c.identity_endpoint.is_none()
                    && std::env::var_os("IDENTITY_ENDPOINT").is_none()
                {
                    problems.push(format!("{at}: credential[{j}] app-service managed identity needs IDENTITY_ENDPOINT (or identity_endpoint)"));
                }
                if c.managed_identity.as_deref() == Some("app-service")
                    && std::env::var_os("IDENTITY_HEADER").is_none()
                {
                    problems.push(format!("{at}: credential[{j}] app-service managed identity needs the IDENTITY_HEADER environment variable"));
                }
                if pem && (c.certificate_file.is_none() || c.key_file.is_none()) {
                    problems.push(format!(
                        "{at}: credential[{j}] needs both certificate_file and key_file"
                    ));
                }
                if c.secret_file.is_some() && c.secret_env.is_some() {
                    problems.push(format!(
                        "{at}: credential[{j}] sets both secret_file and secret_env"
                    ));
                }
                for p in [&c.certificate_file, &c.key_file, &c.secret_file]
                    .into_iter()
                    .flatten()
                {
                    if !p.is_file() {
                        problems.push(format!(
                            "{at}: credential[{j}] {} is not a readable file",
                            p.display()
                        ));
                    }
                }
                if let Some(var) = &c.secret_env
                    && std::env::var_os(var).is_none()
                {
                    problems.push(format!(
                        "{at}: credential[{j}] environment variable {var} is not set"
                    ));
                }
                if let Some(alg) = &c.algorithm
                    && alg != "PS256"
                    && alg != "RS256"
                {
                    problems.push(format!(
                        "{at}: credential[{j}] algorithm {alg} must be PS256 or RS256"
                    ));
                }
            }
            if let Some(p) = &t.client_secret_file
                && !p.is_file()
            {
                problems.push(format!(
                    "{at}: client_secret_file {} is not a readable file",
                    p.display()
                ));
            }
            if let Some(var) = &t.client_secret_env
                && std::env::var_os(var).is_none()
            {
                problems.push(format!("{at}: environment variable {var} is not set"));
            }
            if let Err(e) = url_parts(&t.authority()) {
                problems.push(format!("{at}: authority: {e}"));
            }
            if let Some(url) = &t.ews_url
                && let Err(e) = url_parts(url)
            {
                problems.push(format!("{at}: ews_url: {e}"));
            }
            if !t.scope().ends_with("/.default") {
                problems.push(format!(
                    "{at}: scope {} must end with /.default (client-credentials grant)",
                    t.scope()
                ));
            }
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
        problems.extend(self.auth.lockout.problems());
        problems.extend(self.graph.shaping.problems());
        if self.limits.max_envelope_head_bytes < 1024 {
            problems.push("limits.max_envelope_head_bytes: at least 1024".to_owned());
        }
        let l = &self.limits;
        for (key, value) in [
            ("header_read_timeout_seconds", l.header_read_timeout_seconds),
            ("idle_timeout_seconds", l.idle_timeout_seconds),
            ("max_header_count", l.max_header_count as u64),
            ("max_connections", l.max_connections as u64),
        ] {
            if value == 0 {
                problems.push(format!("limits.{key}: at least 1"));
            }
        }
        if l.max_header_bytes < 8192 {
            problems.push("limits.max_header_bytes: at least 8192".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

impl TenantConfig {
    /// Reads the client secret from where the config says it is.
    pub fn resolve_secret(&self) -> Result<Secret, ConfigError> {
        if let Some(path) = &self.client_secret_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            return Ok(Secret::new(text.trim_end_matches(['\r', '\n']).to_owned()));
        }
        if let Some(var) = &self.client_secret_env {
            return std::env::var(var).map(Secret::new).map_err(|_| {
                ConfigError::Invalid(vec![format!("environment variable {var} is not set")])
            });
        }
        if let Some(value) = &self.client_secret {
            tracing::warn!(
                tenant = %self.tenant_id,
                "client secret is inline in the configuration file; prefer client_secret_file or client_secret_env"
            );
            return Ok(Secret::new(value.clone()));
        }
        Err(ConfigError::Invalid(vec![format!(
            "tenant {}: no client secret configured",
            self.tenant_id
        )]))
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
    fn secret_debug_does_not_reveal() {
        assert_eq!(format!("{:?}", Secret::new("hunter2".into())), "Secret(..)");
    }
}
