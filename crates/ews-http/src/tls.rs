//! TLS material: loading PEM certificates and keys for listeners, and the simulator's own CA.
//!
//! One TLS stack for everything: rustls with the aws-lc-rs provider.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Errors while building TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate PEM held no certificate or could not be read.
    #[error("certificate {path}: {reason}")]
    Certificate {
        /// Where the certificate came from.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// The key PEM held no private key or could not be read.
    #[error("private key {path}: {reason}")]
    Key {
        /// Where the key came from.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// rustls refused the pair.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Installs aws-lc-rs as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Parses all certificates in a PEM buffer.
pub fn certs_from_pem(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| TlsError::Certificate {
        path: origin.to_owned(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Certificate {
            path: origin.to_owned(),
            reason: "no CERTIFICATE block found".to_owned(),
        });
    }
    Ok(certs)
}

/// Parses the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM buffer.
pub fn key_from_pem(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Key {
        path: origin.to_owned(),
        reason: e.to_string(),
    })
}

/// A server configuration for HTTP/1.1 with TLS 1.2 and 1.3 only.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    install_crypto_provider();
    let mut config = ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The listener's certificate, replaceable while serving (reload after a rotation): new
/// handshakes get the new one, established connections keep theirs.
#[derive(Debug)]
pub struct ReloadableCert(arc_swap::ArcSwap<rustls::sign::CertifiedKey>);

impl ReloadableCert {
    /// Loads a PEM certificate chain and its key, checking that they belong together.
    pub fn load(
        cert_pem: &[u8],
        cert_origin: &str,
        key_pem: &[u8],
        key_origin: &str,
    ) -> Result<Self, TlsError> {
        Ok(Self(arc_swap::ArcSwap::from_pointee(certified_key(
            cert_pem,
            cert_origin,
            key_pem,
            key_origin,
        )?)))
    }

    /// Replaces the certificate (validated first; on error the old one stays).
    pub fn replace(
        &self,
        cert_pem: &[u8],
        cert_origin: &str,
        key_pem: &[u8],
        key_origin: &str,
    ) -> Result<(), TlsError> {
        let key = certified_key(cert_pem, cert_origin, key_pem, key_origin)?;
        self.0.store(Arc::new(key));
        Ok(())
    }

    /// The current certificate chain's leaf (DER), for tests and logs.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.0.load().cert.first().cloned()
    }
}

impl rustls::server::ResolvesServerCert for ReloadableCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.load_full())
    }
}

fn certified_key(
    cert_pem: &[u8],
    cert_origin: &str,
    key_pem: &[u8],
    key_origin: &str,
) -> Result<rustls::sign::CertifiedKey, TlsError> {
    install_crypto_provider();
    let certs = certs_from_pem(cert_pem, cert_origin)?;
    let key = key_from_pem(key_pem, key_origin)?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: key_origin.to_owned(),
            reason: e.to_string(),
        })?;
    let certified = rustls::sign::CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| TlsError::Key {
        path: key_origin.to_owned(),
        reason: format!("does not match the certificate {cert_origin}: {e}"),
    })?;
    Ok(certified)
}

/// A listener configuration serving whatever certificate `cert` holds at each handshake.
pub fn reloadable_server_config(cert: Arc<ReloadableCert>) -> Arc<ServerConfig> {
    install_crypto_provider();
    let mut config = ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_no_client_auth()
    .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A generated CA and a server certificate it signed, all PEM.
#[derive(Debug, Clone)]
pub struct GeneratedPki {
    /// The CA certificate clients must trust.
    pub ca_cert_pem: String,
    /// The server certificate chain (leaf).
    pub server_cert_pem: String,
    /// The server private key (PKCS#8).
    pub server_key_pem: String,
}

/// Generates a CA and a certificate for `names` (DNS names or IP addresses) signed by it.
pub fn generate_pki(names: &[String]) -> Result<GeneratedPki, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ews-gateway simulator CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "ews-gateway simulator");
    let server_cert = params.signed_by(&server_key, &issuer)?;
    Ok(GeneratedPki {
        ca_cert_pem: ca_cert.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pki_loads_into_rustls() {
        let pki = generate_pki(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let certs = certs_from_pem(pki.server_cert_pem.as_bytes(), "gen").unwrap();
        let key = key_from_pem(pki.server_key_pem.as_bytes(), "gen").unwrap();
        server_config(certs, key).unwrap();
    }

    /// rustls has no TLS 1.0/1.1, CBC, RC4, 3DES or static-RSA code; this pins what the listener
    /// offers: TLS 1.3 and TLS 1.2 ECDHE suites with AES-GCM or ChaCha20-Poly1305 only.
    #[test]
    fn listener_offers_only_tls12_and_tls13_with_forward_secret_aead_suites() {
        let pki = generate_pki(&["localhost".into()]).unwrap();
        let certs = certs_from_pem(pki.server_cert_pem.as_bytes(), "gen").unwrap();
        let key = key_from_pem(pki.server_key_pem.as_bytes(), "gen").unwrap();
        let config = server_config(certs, key).unwrap();
        let suites = &config.crypto_provider().cipher_suites;
        assert!(!suites.is_empty());
        let mut versions = std::collections::BTreeSet::new();
        for suite in suites {
            let version = suite.version().version;
            versions.insert(format!("{version:?}"));
            let name = format!("{:?}", suite.suite());
            assert!(
                version == rustls::ProtocolVersion::TLSv1_3
                    || version == rustls::ProtocolVersion::TLSv1_2,
                "{name}"
            );
            assert!(
                name.contains("GCM") || name.contains("CHACHA20_POLY1305"),
                "{name}"
            );
            if version == rustls::ProtocolVersion::TLSv1_2 {
                assert!(
                    name.starts_with("TLS_ECDHE_"),
                    "{name} is not forward secret"
                );
            }
        }
        assert_eq!(
            versions.into_iter().collect::<Vec<_>>(),
            ["TLSv1_2", "TLSv1_3"]
        );
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn empty_pem_is_refused_with_origin() {
        let err = certs_from_pem(b"", "/etc/x.pem").unwrap_err();
        assert!(err.to_string().contains("/etc/x.pem"));
    }
}
