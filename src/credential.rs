//! Client credentials for the Entra client-credentials grant: a certificate (client assertion)
//! or a client secret, loaded from files or the environment.
//!
//! Microsoft recommends certificate credentials; the assertion is a JWT signed PS256 with the
//! certificate's SHA-256 thumbprint in `x5t#S256` (or RS256 with the SHA-1 `x5t`), `aud` the token
//! endpoint, `iss` = `sub` = the client id, a fresh `jti` and a 10-minute lifetime. Keys are RSA
//! of at least 2048 bits and must match the certificate; both are checked at load.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha1::Digest as _;

use crate::config::{
    AssertionAlgorithm, CertificateSource, CredentialSpec, IdentityKind, Secret, SecretSource,
    TenantConfig,
};

/// Why a credential cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The certificate or key is unusable.
    #[error("{0}")]
    Invalid(String),
    /// A secret's source is missing.
    #[error("{0}")]
    Secret(String),
}

/// One credential, ready to authenticate the app.
#[derive(Clone)]
pub enum Credential {
    /// A client secret.
    Secret(Secret),
    /// A certificate and its key.
    Certificate(Box<CertificateCredential>),
    /// An Azure managed identity (no secret held by the gateway).
    ManagedIdentity(ManagedIdentity),
    /// Workload identity federation: the file with the external token to present.
    Federated(std::path::PathBuf),
}

/// Where an Azure managed identity's tokens come from.
#[derive(Clone)]
pub struct ManagedIdentity {
    /// The identity endpoint URL.
    pub endpoint: String,
    /// `Some(header)` for App Service / Container Apps (`X-IDENTITY-HEADER`), `None` for IMDS.
    pub identity_header: Option<Secret>,
    /// Client id of a user-assigned identity.
    pub client_id: Option<String>,
}

/// The Azure Instance Metadata Service token endpoint.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Credential::Secret(..)"),
            Self::Certificate(c) => write!(f, "Credential::Certificate({})", c.x5t_s256),
            Self::ManagedIdentity(m) => write!(f, "Credential::ManagedIdentity({})", m.endpoint),
            Self::Federated(p) => write!(f, "Credential::Federated({})", p.display()),
        }
    }
}

/// A certificate credential.
#[derive(Clone)]
pub struct CertificateCredential {
    key: EncodingKey,
    algorithm: Algorithm,
    /// Base64url SHA-1 thumbprint.
    pub x5t: String,
    /// Base64url SHA-256 thumbprint.
    pub x5t_s256: String,
}

impl CertificateCredential {
    /// Loads a certificate and its RSA key (PEM), checking size and that they belong together.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        algorithm: Algorithm,
    ) -> Result<Self, CredentialError> {
        let certs = crate::tls::certs_from_pem(cert_pem, "certificate")
            .map_err(|e| CredentialError::Invalid(e.to_string()))?;
        let der = certs
            .first()
            .ok_or_else(|| CredentialError::Invalid("no certificate".into()))?
            .as_ref()
            .to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| CredentialError::Invalid(format!("certificate does not parse: {e}")))?;
        let (modulus, exponent) = match cert.public_key().parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                (rsa.modulus.to_vec(), rsa.exponent.to_vec())
            }
            _ => {
                return Err(CredentialError::Invalid(
                    "the certificate key is not RSA (Entra accepts only RSA certificates)".into(),
                ));
            }
        };
        let bits = modulus.iter().skip_while(|b| **b == 0).count() * 8;
        if bits < 2048 {
            return Err(CredentialError::Invalid(format!(
                "the RSA key has {bits} bits; at least 2048 are required"
            )));
        }
        let key = EncodingKey::from_rsa_pem(key_pem).map_err(|e| {
            CredentialError::Invalid(format!("the private key is not an RSA PEM key: {e}"))
        })?;
        let credential = Self {
            key,
            algorithm,
            x5t: URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&der)),
            x5t_s256: URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&der)),
        };
        // Sign once and verify with the certificate: a key that does not match fails here, at
        // start, not as AADSTS700027 on the first request.
        let probe = credential.assertion("probe", "https://probe.invalid/token")?;
        let decoding = jsonwebtoken::DecodingKey::from_rsa_raw_components(
            strip_zeros(&modulus),
            strip_zeros(&exponent),
        );
        let mut validation = jsonwebtoken::Validation::new(algorithm);
        validation.set_audience(&["https://probe.invalid/token"]);
        jsonwebtoken::decode::<serde_json::Value>(&probe, &decoding, &validation).map_err(
            |_| CredentialError::Invalid("the private key does not match the certificate".into()),
        )?;
        Ok(credential)
    }

    /// Loads the first key and its certificate from a PKCS#12 (`.pfx`) archive.
    pub fn from_pkcs12(
        data: &[u8],
        password: &str,
        algorithm: Algorithm,
    ) -> Result<Self, CredentialError> {
        use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12ImportPolicy};
        let store =
            KeyStore::from_pkcs12(data, password, Pkcs12ImportPolicy::Strict).map_err(|e| {
                CredentialError::Invalid(format!("the PKCS#12 file cannot be opened: {e}"))
            })?;
        let chain = store
            .entries()
            .find_map(|(_, entry)| match entry {
                KeyStoreEntry::PrivateKeyChain(chain) => Some(chain.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                CredentialError::Invalid(
                    "the PKCS#12 file holds no private key with a certificate".into(),
                )
            })?;
        let cert = chain
            .certs()
            .first()
            .ok_or_else(|| CredentialError::Invalid("the PKCS#12 key has no certificate".into()))?;
        let cert_pem = pem_block("CERTIFICATE", cert.as_der());
        let key_pem = pem_block("PRIVATE KEY", chain.key().as_der());
        Self::from_pem(cert_pem.as_bytes(), key_pem.as_bytes(), algorithm)
    }

    /// A client assertion for `client_id` at the token endpoint `audience`.
    pub fn assertion(&self, client_id: &str, audience: &str) -> Result<String, CredentialError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let mut header = Header::new(self.algorithm);
        header.typ = Some("JWT".to_owned());
        match self.algorithm {
            Algorithm::RS256 => header.x5t = Some(self.x5t.clone()),
            _ => header.x5t_s256 = Some(self.x5t_s256.clone()),
        }
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now,
            "iat": now,
            "exp": now + 600,
        });
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
            CredentialError::Invalid(format!("signing the client assertion failed: {e}"))
        })
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, CredentialError> {
    std::fs::read(path).map_err(|source| CredentialError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Reads a secret from its source; an inline one is accepted with a warning naming `what`.
fn secret(source: &SecretSource, tenant: &str, what: &str) -> Result<Secret, CredentialError> {
    if source.is_inline() {
        tracing::warn!(
            tenant,
            "{what} is inline in the configuration file; prefer its _file or _env form"
        );
    }
    source
        .resolve()
        .map_err(|e| CredentialError::Secret(e.to_string()))
}

/// Loads one parsed credential: reads its files and environment now.
fn load(spec: &CredentialSpec, tenant: &str) -> Result<Credential, CredentialError> {
    match spec {
        CredentialSpec::Secret(source) => {
            secret(source, tenant, "a client secret").map(Credential::Secret)
        }
        CredentialSpec::Certificate { source, algorithm } => {
            let algorithm = match algorithm {
                AssertionAlgorithm::Ps256 => Algorithm::PS256,
                AssertionAlgorithm::Rs256 => Algorithm::RS256,
            };
            let credential = match source {
                CertificateSource::Pem { certificate, key } => {
                    CertificateCredential::from_pem(&read(certificate)?, &read(key)?, algorithm)?
                }
                CertificateSource::Pkcs12 { file, password } => {
                    let password = match password {
                        Some(source) => secret(source, tenant, "a PKCS#12 password")?,
                        None => Secret::new(String::new()),
                    };
                    CertificateCredential::from_pkcs12(&read(file)?, password.expose(), algorithm)?
                }
            };
            Ok(Credential::Certificate(Box::new(credential)))
        }
        CredentialSpec::Federated { token_file } => Ok(Credential::Federated(token_file.clone())),
        CredentialSpec::ManagedIdentity {
            kind,
            client_id,
            endpoint,
        } => {
            let (endpoint, identity_header) = match kind {
                IdentityKind::AppService => {
                    let endpoint = endpoint
                        .clone()
                        .or_else(|| std::env::var("IDENTITY_ENDPOINT").ok())
                        .ok_or_else(|| {
                            CredentialError::Secret("IDENTITY_ENDPOINT is not set".into())
                        })?;
                    let header = std::env::var("IDENTITY_HEADER").map_err(|_| {
                        CredentialError::Secret("IDENTITY_HEADER is not set".into())
                    })?;
                    (endpoint, Some(Secret::new(header)))
                }
                IdentityKind::Imds => (
                    endpoint.clone().unwrap_or_else(|| IMDS_ENDPOINT.to_owned()),
                    None,
                ),
            };
            Ok(Credential::ManagedIdentity(ManagedIdentity {
                endpoint,
                identity_header,
                client_id: client_id.clone(),
            }))
        }
    }
}

/// Every credential of a tenant, in the order they are tried: the `client_secret*` shorthand
/// first, then each `[[tenant.credential]]`. Parsing is [`TenantConfig::credential_specs`]'s.
pub fn tenant_credentials(tenant: &TenantConfig) -> Result<Vec<Credential>, CredentialError> {
    let specs = tenant
        .credential_specs(&format!("tenant {}", tenant.tenant_id))
        .map_err(|problems| CredentialError::Invalid(problems.join("; ")))?;
    specs
        .iter()
        .map(|spec| load(spec, &tenant.tenant_id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/fixtures/credentials/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn pkcs8_and_pkcs1_keys_load_and_sign() {
        let cert = fixture("rsa2048.crt");
        for key in ["rsa2048.pkcs8.key", "rsa2048.pkcs1.key"] {
            let c =
                CertificateCredential::from_pem(&cert, &fixture(key), Algorithm::PS256).unwrap();
            let jwt = c
                .assertion("client", "https://login.example/token")
                .unwrap();
            let header = jsonwebtoken::decode_header(&jwt).unwrap();
            assert_eq!(header.alg, Algorithm::PS256);
            assert_eq!(header.x5t_s256.as_deref(), Some(c.x5t_s256.as_str()));
        }
        let rs =
            CertificateCredential::from_pem(&cert, &fixture("rsa2048.pkcs1.key"), Algorithm::RS256)
                .unwrap();
        let header = jsonwebtoken::decode_header(rs.assertion("c", "a").unwrap()).unwrap();
        assert_eq!(header.x5t.as_deref(), Some(rs.x5t.as_str()));
    }

    #[test]
    fn keys_under_2048_bits_are_refused() {
        let err = CertificateCredential::from_pem(
            &fixture("rsa1024.crt"),
            &fixture("rsa1024.key"),
            Algorithm::PS256,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("at least 2048"), "{err}");
    }
}
