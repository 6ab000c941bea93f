//! Builds a running gateway from its configuration (listener, TLS, users, tokens, upstream),
//! keeps it current (reload on SIGHUP or when its files change: validated first, the old set
//! keeps serving when the new one is refused), serves the admin listener (`/live`, `/ready`,
//! `/metrics`) and drains it on shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Response, StatusCode};
use sha2::{Digest, Sha256};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::auth::CredentialStore;
use crate::config::{Config, ConfigError};
use crate::http_util::{self, Body, ServeOptions};
use crate::limits::{MailboxSlots, PrincipalRate};
use crate::proxy::{self, Gateway};
use crate::token::{Tenant, TokenSource};

/// Errors while starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The users file is invalid.
    #[error("users file {path}: {message}")]
    Users {
        /// The file.
        path: String,
        /// Every problem found.
        message: String,
    },
    /// TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The upstream client could not be built.
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendSetupError),
    /// A token endpoint client could not be built.
    #[error("tenant {tenant}: {message}")]
    TokenClient {
        /// Tenant id.
        tenant: String,
        /// Why.
        message: String,
    },
    /// A file named in the configuration could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The audit file cannot be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// A reload changed something only a restart can apply, or had no file to read.
    #[error("reload: {0}")]
    Reload(String),
    /// The shared lockout store is misconfigured.
    #[error(transparent)]
    Lockout(#[from] crate::lockout::LockoutSetupError),
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A running gateway.
#[derive(Debug)]
pub struct GatewayHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether the listener is TLS.
    pub tls: bool,
    /// Where the admin listener listens, if configured.
    pub admin_addr: Option<SocketAddr>,
    runtime: Arc<Runtime>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    admin_task: Option<tokio::task::JoinHandle<()>>,
}

impl GatewayHandle {
    /// The EWS URL clients use.
    pub fn ews_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/EWS/Exchange.asmx", self.addr)
    }

    /// Re-reads the configuration file, users file and TLS files; the new set serves only if
    /// it is valid.
    pub fn reload(&self) -> Result<(), StartError> {
        self.runtime.reload()
    }

    /// Whether the gateway is ready for traffic, and why not.
    pub fn readiness(&self) -> (bool, String) {
        self.runtime.readiness()
    }

    /// The gateway serving requests now.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.runtime.gateway.load_full()
    }

    /// Drains: stops accepting, closes streaming notifications cleanly, lets in-flight
    /// requests finish within the configured grace, then returns.
    pub async fn stop(self) {
        let grace = Duration::from_secs(self.runtime.config.load().runtime.shutdown_grace_seconds);
        self.runtime.draining.cancel();
        self.shutdown.cancel();
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            tracing::warn!(
                grace_seconds = grace.as_secs(),
                "shutdown grace expired; cutting the remaining connections"
            );
            task.abort();
        }
        if let Some(admin) = self.admin_task {
            admin.abort();
            let _ = admin.await;
        }
        tracing::info!("ews-gateway stopped");
    }

    /// Waits until the server ends (after `stop` from elsewhere or a fatal error).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, StartError> {
    std::fs::read(path).map_err(|source| StartError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Loads the users file named by the configuration.
pub fn load_users(config: &Config) -> Result<CredentialStore, StartError> {
    let path = &config.auth.users_file;
    let text = std::fs::read_to_string(path).map_err(|source| StartError::Read {
        path: path.display().to_string(),
        source,
    })?;
    CredentialStore::from_toml(&text, crate::auth::store_options(&config.auth)).map_err(|e| {
        StartError::Users {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    })
}

fn build_tokens(config: &Config) -> Result<TokenSource, StartError> {
    let mut tenants = Vec::new();
    for t in &config.tenants {
        let credentials =
            crate::credential::tenant_credentials(t).map_err(|e| StartError::TokenClient {
                tenant: t.tenant_id.clone(),
                message: e.to_string(),
            })?;
        let ca = t.ca_file.as_deref().map(read).transpose()?;
        let http = crate::token::http_client(ca.as_deref()).map_err(|message| {
            StartError::TokenClient {
                tenant: t.tenant_id.clone(),
                message,
            }
        })?;
        tenants.push((
            t.domains.clone(),
            Arc::new(Tenant::new(t, credentials, http)),
        ));
    }
    Ok(TokenSource::new(tenants))
}

/// Builds the request-path state from a validated configuration.
pub fn build_gateway(config: &Config) -> Result<Gateway, StartError> {
    build_gateway_after(config, None)
}

/// Builds the request-path state; after a reload (`previous` = the gateway serving until now
/// and its configuration), what did not change is carried over: lockout counters, requests in
/// flight per mailbox, rate buckets, cached tokens, the audit writer.
fn build_gateway_after(
    config: &Config,
    previous: Option<(&Gateway, &Config, bool)>,
) -> Result<Gateway, StartError> {
    let users = load_users(config)?;
    let upstream_ca = config.upstream.ca_file.as_deref().map(read).transpose()?;
    let limits = &config.limits;
    let same = |f: &dyn Fn(&Config) -> bool| previous.is_some_and(|(_, old, _)| f(old));
    let tokens = match previous {
        Some((gw, old, files_same)) if files_same && old.tenants == config.tenants => {
            Arc::clone(&gw.tokens)
        }
        _ => Arc::new(build_tokens(config)?),
    };
    let graph_shaper = Arc::new(crate::graph_shaping::Shaper::from_config(config)?);
    let backends = crate::backend::build(
        config,
        Arc::clone(&tokens),
        upstream_ca.as_deref(),
        &graph_shaper,
    )?;
    let mailbox_slots = match previous {
        Some((gw, _, _))
            if gw.mailbox_slots.max() == limits.max_concurrent_requests_per_mailbox =>
        {
            Arc::clone(&gw.mailbox_slots)
        }
        _ => Arc::new(MailboxSlots::new(
            limits.max_concurrent_requests_per_mailbox,
        )),
    };
    let principal_rate = match previous {
        Some((gw, _, _))
            if same(&|old: &Config| {
                old.limits.requests_per_second_per_principal
                    == limits.requests_per_second_per_principal
                    && old.limits.request_burst_per_principal == limits.request_burst_per_principal
            }) =>
        {
            Arc::clone(&gw.principal_rate)
        }
        _ => Arc::new(PrincipalRate::new(
            limits.requests_per_second_per_principal,
            limits.request_burst_per_principal,
        )),
    };
    let audit = match previous {
        Some((gw, _, _)) if gw.audit.config() == &config.audit => {
            gw.audit.reopen();
            Arc::clone(&gw.audit)
        }
        _ => Arc::new(AuditLog::open(&config.audit)?),
    };
    let lockout = match previous {
        Some((gw, old, _)) if old.auth.lockout == config.auth.lockout => Arc::clone(&gw.lockout),
        _ => Arc::new(crate::lockout::Lockout::from_policy(
            config.auth.lockout.clone(),
        )?),
    };
    Ok(Gateway {
        realm: config.auth.realm.clone(),
        users: ArcSwap::from_pointee(users),
        lockout,
        public_url: config.listen.public_url.clone(),
        tokens,
        backends,
        max_body_bytes: limits.max_body_bytes,
        max_envelope_head_bytes: limits.max_envelope_head_bytes,
        body_read_timeout: Duration::from_secs(limits.body_read_timeout_seconds),
        mailbox_slots,
        principal_rate,
        audit,
        draining: previous.map_or_else(CancellationToken::new, |(gw, _, _)| gw.draining.clone()),
    })
}

/// The content hash of every file a reload would read, to notice changes (including
/// Kubernetes' symlink swaps of mounted ConfigMaps and Secrets, which keep old mtimes).
fn fingerprint(config_path: Option<&Path>, config: &Config) -> Vec<u8> {
    let mut files: Vec<&Path> = config_path.into_iter().collect();
    files.push(&config.auth.users_file);
    files.extend(config.listen.tls_cert.as_deref());
    files.extend(config.listen.tls_key.as_deref());
    files.extend(credential_files(config));
    let mut hash = Sha256::new();
    for f in files {
        hash.update(f.as_os_str().as_encoded_bytes());
        match std::fs::read(f) {
            Ok(bytes) => hash.update(Sha256::digest(&bytes)),
            Err(_) => hash.update(b"(unreadable)"),
        }
    }
    hash.finalize().to_vec()
}

/// Secret and certificate files of the tenants (federated token files are re-read for every
/// token request anyway and rotate often, so they are not watched).
fn credential_files(config: &Config) -> Vec<&Path> {
    let mut out = Vec::new();
    for t in &config.tenants {
        out.extend(t.client_secret_file.as_deref());
        out.extend(t.ca_file.as_deref());
        for c in &t.credentials {
            out.extend(c.certificate_file.as_deref());
            out.extend(c.key_file.as_deref());
            out.extend(c.pkcs12_file.as_deref());
            out.extend(c.pkcs12_password_file.as_deref());
            out.extend(c.secret_file.as_deref());
        }
    }
    out
}

/// What a serving gateway keeps to reload and report on itself.
struct Runtime {
    config_path: Option<PathBuf>,
    config: ArcSwap<Config>,
    gateway: ArcSwap<Gateway>,
    tls: Option<Arc<crate::tls::ReloadableCert>>,
    /// Fingerprint of the files behind the current set, and of the credential files alone.
    fingerprint: Mutex<(Vec<u8>, Vec<u8>)>,
    draining: CancellationToken,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

fn credentials_fingerprint(config: &Config) -> Vec<u8> {
    let mut hash = Sha256::new();
    for f in credential_files(config) {
        hash.update(std::fs::read(f).unwrap_or_default());
    }
    hash.finalize().to_vec()
}

impl Runtime {
    fn reload(&self) -> Result<(), StartError> {
        let result = self.try_reload();
        match &result {
            Ok(()) => {
                metrics::counter!(crate::telemetry::RELOADS, "result" => "ok").increment(1);
                tracing::info!("configuration reloaded");
            }
            Err(err) => {
                metrics::counter!(crate::telemetry::RELOADS, "result" => "invalid").increment(1);
                tracing::error!(error = %err, "reload refused; the previous configuration keeps serving");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<(), StartError> {
        let path = self
            .config_path
            .as_deref()
            .ok_or_else(|| StartError::Reload("this gateway was not started from a file".into()))?;
        let config = Config::load(path)?;
        let old = self.config.load_full();
        for (what, changed) in [
            (
                "listen.address",
                config.listen.address != old.listen.address,
            ),
            ("admin.address", config.admin != old.admin),
            (
                "listen TLS on/off",
                config.listen.tls_cert.is_some() != old.listen.tls_cert.is_some(),
            ),
        ] {
            if changed {
                return Err(StartError::Reload(format!(
                    "{what} changed; that takes a restart (nothing was applied)"
                )));
            }
        }
        let new_print = fingerprint(Some(path), &config);
        let creds_print = credentials_fingerprint(&config);
        let creds_same = self
            .fingerprint
            .lock()
            .map(|f| f.1 == creds_print)
            .unwrap_or(false);
        let current = self.gateway.load_full();
        let gateway = build_gateway_after(&config, Some((&current, &old, creds_same)))?;
        if let (Some(cert), Some(cert_path), Some(key_path)) =
            (&self.tls, &config.listen.tls_cert, &config.listen.tls_key)
        {
            cert.replace(
                &read(cert_path)?,
                &cert_path.display().to_string(),
                &read(key_path)?,
                &key_path.display().to_string(),
            )?;
        }
        if let Err(err) = crate::telemetry::set_log_filter(&config.runtime.log_level) {
            tracing::warn!(error = %err, "log level not changed");
        }
        self.gateway.store(Arc::new(gateway));
        self.config.store(Arc::new(config));
        if let Ok(mut f) = self.fingerprint.lock() {
            *f = (new_print, creds_print);
        }
        Ok(())
    }

    /// Reloads when a watched file changed since the last reload (or refused attempt).
    fn reload_if_changed(&self) {
        let config = self.config.load_full();
        let now = fingerprint(self.config_path.as_deref(), &config);
        let changed = self
            .fingerprint
            .lock()
            .map(|mut f| {
                let changed = f.0 != now;
                f.0 = now;
                changed
            })
            .unwrap_or(false);
        if changed {
            tracing::info!("a configuration file changed; reloading");
            let _ = self.reload();
        }
    }

    fn readiness(&self) -> (bool, String) {
        if self.draining.is_cancelled() {
            return (false, "draining: shutting down\n".to_owned());
        }
        let gw = self.gateway.load();
        let mut ready = true;
        let mut text = String::new();
        for tenant in gw.tokens.tenants() {
            let ok = tenant.ews_tokens().cached().is_some();
            ready &= ok;
            text.push_str(&format!(
                "tenant {}: {}\n",
                tenant.tenant_id,
                if ok { "token valid" } else { "no valid token" }
            ));
        }
        text.insert_str(0, if ready { "ready\n" } else { "not ready\n" });
        (ready, text)
    }

    /// Token gauges are computed when scraped.
    fn record_token_gauges(&self) {
        let gw = self.gateway.load();
        let now = tokio::time::Instant::now();
        for tenant in gw.tokens.tenants() {
            let label = tenant.tenant_id.clone();
            match tenant.ews_tokens().cached() {
                Some(token) => {
                    metrics::gauge!(crate::telemetry::TOKEN_AGE, "tenant" => label.clone()).set(
                        now.saturating_duration_since(token.obtained_at)
                            .as_secs_f64(),
                    );
                    metrics::gauge!(crate::telemetry::TOKEN_REMAINING, "tenant" => label).set(
                        token
                            .expires_at
                            .saturating_duration_since(now)
                            .as_secs_f64(),
                    );
                }
                None => {
                    metrics::gauge!(crate::telemetry::TOKEN_REMAINING, "tenant" => label).set(0.0);
                }
            }
        }
    }
}

/// Keeps every tenant's token warm so `/ready` means what it says, and forgets idle rate
/// buckets, until the gateway stops.
async fn housekeeping(runtime: Arc<Runtime>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let gw = runtime.gateway.load_full();
        for tenant in gw.tokens.tenants() {
            // The Exchange token always (readiness means it), and every other resource in use.
            let _ = tenant.ews_tokens().get().await;
            for tokens in tenant.token_states() {
                let _ = tokens.get().await;
            }
        }
        ticks += 1;
        if ticks.is_multiple_of(12) {
            gw.principal_rate.forget_idle();
        }
    }
}

async fn watch_files(runtime: Arc<Runtime>, stop: CancellationToken) {
    loop {
        let every = runtime.config.load().runtime.watch_interval_seconds;
        let wait = Duration::from_secs(if every == 0 { 5 } else { every });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if every != 0 {
            let rt = Arc::clone(&runtime);
            // Reading files and hashing passwords' dummy are blocking work.
            let _ = tokio::task::spawn_blocking(move || rt.reload_if_changed()).await;
        }
    }
}

fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(http_util::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

/// The admin listener's answers: liveness, readiness, metrics.
fn admin_answer(runtime: &Runtime, method: &http::Method, path: &str) -> Response<Body> {
    if method != http::Method::GET && method != http::Method::HEAD {
        return text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET only\n".into(),
        );
    }
    match path {
        "/live" => text_response(StatusCode::OK, "text/plain; charset=utf-8", "live\n".into()),
        "/ready" => {
            let (ready, text) = runtime.readiness();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text_response(status, "text/plain; charset=utf-8", text)
        }
        "/metrics" => {
            runtime.record_token_gauges();
            text_response(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                crate::telemetry::render(),
            )
        }
        _ => text_response(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".into(),
        ),
    }
}

/// Validates the configuration, builds everything, binds and starts serving. Without a file,
/// reloads are refused.
pub async fn start(config: &Config) -> Result<GatewayHandle, StartError> {
    start_inner(config.clone(), None).await
}

/// Loads the configuration from `path` and starts serving; the gateway reloads on
/// [`GatewayHandle::reload`] (SIGHUP) and when its files change.
pub async fn start_from_file(path: &Path) -> Result<GatewayHandle, StartError> {
    let config = Config::load(path)?;
    start_inner(config, Some(path.to_owned())).await
}

async fn start_inner(
    config: Config,
    config_path: Option<PathBuf>,
) -> Result<GatewayHandle, StartError> {
    config.validate()?;
    crate::telemetry::install();
    if let Err(err) = crate::telemetry::set_log_filter(&config.runtime.log_level) {
        tracing::warn!(error = %err, "log level from the configuration not applied");
    }
    let gateway = Arc::new(build_gateway(&config)?);
    let draining = gateway.draining.clone();
    let cert = match (&config.listen.tls_cert, &config.listen.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(crate::tls::ReloadableCert::load(
            &read(cert)?,
            &cert.display().to_string(),
            &read(key)?,
            &key.display().to_string(),
        )?)),
        _ => None,
    };
    let tls = cert.as_ref().map(|c| {
        tokio_rustls::TlsAcceptor::from(crate::tls::reloadable_server_config(Arc::clone(c)))
    });
    let addr = config.listen.address;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let admin_listener = match config.admin.address {
        Some(admin) => {
            let l = TcpListener::bind(admin)
                .await
                .map_err(|source| StartError::Bind {
                    addr: admin,
                    source,
                })?;
            Some(l)
        }
        None => None,
    };
    let options = ServeOptions {
        header_read_timeout: Duration::from_secs(config.limits.header_read_timeout_seconds),
        idle_timeout: Duration::from_secs(config.limits.idle_timeout_seconds),
        max_header_bytes: config.limits.max_header_bytes,
        max_header_count: config.limits.max_header_count,
        max_connections: config.limits.max_connections,
    };
    let print = (
        fingerprint(config_path.as_deref(), &config),
        credentials_fingerprint(&config),
    );
    let runtime = Arc::new(Runtime {
        config_path,
        config: ArcSwap::from_pointee(config),
        gateway: ArcSwap::new(gateway),
        tls: cert,
        fingerprint: Mutex::new(print),
        draining,
    });
    let shutdown = CancellationToken::new();
    let is_tls = tls.is_some();
    let rt = Arc::clone(&runtime);
    let task = tokio::spawn(http_util::serve(
        listener,
        tls,
        options,
        shutdown.clone(),
        move |req, conn| proxy::handle(rt.gateway.load_full(), req, conn),
    ));
    if runtime.config_path.is_some() {
        tokio::spawn(watch_files(Arc::clone(&runtime), shutdown.clone()));
    }
    let mut admin_addr = None;
    let admin_task = match admin_listener {
        Some(listener) => {
            admin_addr = listener.local_addr().ok();
            tokio::spawn(housekeeping(Arc::clone(&runtime), shutdown.clone()));
            let rt = Arc::clone(&runtime);
            let admin_stop = CancellationToken::new();
            Some(tokio::spawn(http_util::serve(
                listener,
                None,
                ServeOptions::default(),
                admin_stop,
                move |req, _conn| {
                    let resp = admin_answer(&rt, req.method(), req.uri().path());
                    async move { resp }
                },
            )))
        }
        None => None,
    };
    if let Some(admin) = admin_addr {
        tracing::info!(%admin, "admin listener (/live, /ready, /metrics)");
    }
    tracing::info!(%addr, tls = is_tls, "ews-gateway listening");
    Ok(GatewayHandle {
        addr,
        tls: is_tls,
        admin_addr,
        runtime,
        shutdown,
        task,
        admin_task,
    })
}
