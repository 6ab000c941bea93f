//! Builds a running gateway from its configuration: listener, TLS, users, tokens, upstream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::CredentialStore;
use crate::config::{Config, ConfigError};
use crate::http_util::{self, ServeOptions};
use crate::proxy::{self, Gateway};
use crate::token::{TenantTokens, TokenSource};
use crate::upstream::EwsPassthrough;

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
    Upstream(#[from] crate::upstream::UpstreamSetupError),
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
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl GatewayHandle {
    /// The EWS URL clients use.
    pub fn ews_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/EWS/Exchange.asmx", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish, and returns when all are done.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
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
    CredentialStore::from_toml(&text, crate::auth::StoreOptions::from_config(&config.auth)).map_err(
        |e| StartError::Users {
            path: path.display().to_string(),
            message: e.to_string(),
        },
    )
}

/// Builds the request-path state from a validated configuration.
pub fn build_gateway(config: &Config) -> Result<Gateway<EwsPassthrough>, StartError> {
    let users = load_users(config)?;
    let upstream_ca = config.upstream.ca_file.as_deref().map(read).transpose()?;
    let upstream = EwsPassthrough::new(
        &config.upstream.ews_url,
        upstream_ca.as_deref(),
        Duration::from_secs(config.upstream.connect_timeout_seconds),
        Duration::from_secs(config.upstream.response_timeout_seconds),
        config.limits.max_body_bytes,
    )?;
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
            Arc::new(TenantTokens::new(t, credentials, http)),
        ));
    }
    Ok(Gateway {
        realm: config.auth.realm.clone(),
        users: ArcSwap::from_pointee(users),
        lockout: crate::lockout::Lockout::new(config.auth.lockout.clone()),
        public_url: config.listen.public_url.clone(),
        tokens: TokenSource::new(tenants),
        upstream,
        max_body_bytes: config.limits.max_body_bytes,
        max_envelope_head_bytes: config.limits.max_envelope_head_bytes,
    })
}

/// Validates the configuration, builds everything, binds and starts serving.
pub async fn start(config: &Config) -> Result<GatewayHandle, StartError> {
    config.validate()?;
    let gateway = Arc::new(build_gateway(config)?);
    let tls = match (&config.listen.tls_cert, &config.listen.tls_key) {
        (Some(cert), Some(key)) => {
            let certs = crate::tls::certs_from_pem(&read(cert)?, &cert.display().to_string())?;
            let key = crate::tls::key_from_pem(&read(key)?, &key.display().to_string())?;
            Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
                certs, key,
            )?))
        }
        _ => None,
    };
    let addr = config.listen.address;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let options = ServeOptions {
        header_read_timeout: Duration::from_secs(config.limits.header_read_timeout_seconds),
        idle_timeout: Duration::from_secs(config.limits.idle_timeout_seconds),
        max_header_bytes: config.limits.max_header_bytes,
        max_header_count: config.limits.max_header_count,
        max_connections: config.limits.max_connections,
    };
    let shutdown = CancellationToken::new();
    let is_tls = tls.is_some();
    let task = tokio::spawn(http_util::serve(
        listener,
        tls,
        options,
        shutdown.clone(),
        move |req, conn| proxy::handle(Arc::clone(&gateway), req, conn),
    ));
    tracing::info!(%addr, tls = is_tls, "ews-gateway listening");
    Ok(GatewayHandle {
        addr,
        tls: is_tls,
        shutdown,
        task,
    })
}
