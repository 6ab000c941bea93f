//! Access tokens the simulated Entra ID issues and the simulated Exchange validates.
//!
//! RS256 JWTs signed by a key generated at start and published as a JWKS, with the claims of a
//! real Exchange Online app-only token. The same service validates them for the EWS endpoint and
//! explains failures as Exchange does, in `x-ms-diagnostics` form.

use std::sync::RwLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha1::Digest as _;

use super::SimConfig;
use super::directory::{App, Tenant};

/// Audiences Exchange Online accepts in a bearer token.
pub const EXCHANGE_AUDIENCES: [&str; 3] = [
    "https://outlook.office365.com",
    "https://outlook.office365.com/",
    "https://outlook.office.com",
];

/// Errors while creating the token service.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Key generation failed.
    #[error("{0}")]
    Generate(String),
}

/// The claims the simulator puts in (and reads from) an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Audience.
    pub aud: String,
    /// Issuer.
    pub iss: String,
    /// Identity provider.
    pub idp: String,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expiry.
    pub exp: i64,
    /// App id.
    pub appid: String,
    /// App display name.
    pub app_displayname: String,
    /// "1" for a client secret, "2" for a certificate.
    pub appidacr: String,
    /// Service principal object id.
    pub oid: String,
    /// Subject (the service principal).
    pub sub: String,
    /// Application roles; absent without consent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    /// Tenant id.
    pub tid: String,
    /// Unique token id.
    pub uti: String,
    /// Token version.
    pub ver: String,
    /// Token type.
    pub idtyp: String,
}

/// What the EWS endpoint needs from a validated token.
#[derive(Debug, Clone)]
pub struct AccessClaims {
    /// Audience.
    pub aud: String,
    /// Tenant id.
    pub tid: String,
    /// App id.
    pub appid: String,
    /// Authentication method of the app.
    pub appidacr: String,
    /// Roles (empty without consent).
    pub roles: Vec<String>,
    /// Expiry.
    pub exp: i64,
    /// Not before.
    pub nbf: i64,
    /// Service principal object id.
    pub oid: String,
}

/// Why a bearer token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    /// Not a JWT.
    #[error("token cannot be parsed")]
    Malformed,
    /// Signed by another key, or tampered with.
    #[error("token signature is invalid")]
    BadSignature,
    /// For another resource.
    #[error("wrong audience {actual}")]
    WrongAudience {
        /// The `aud` claim.
        actual: String,
    },
    /// Expired.
    #[error("token expired")]
    Expired,
    /// Not yet valid.
    #[error("token not yet valid")]
    NotYetValid,
}

impl BearerError {
    /// The `x-ms-diagnostics` header value Exchange sends for this failure.
    pub fn diagnostics(&self) -> String {
        match self {
            Self::Malformed | Self::BadSignature => {
                "2000001;reason=\"OAuth token submitted with the request cannot be parsed.\";error_category=\"invalid_token\"".to_owned()
            }
            Self::WrongAudience { .. } => {
                "2000003;reason=\"The audience claim value is invalid 'aud'.\";error_category=\"invalid_resource\"".to_owned()
            }
            // A simulator choice: Exchange's exact text for expiry is not published.
            Self::Expired => {
                "2000001;reason=\"The token has expired.\";error_category=\"invalid_token\"".to_owned()
            }
            Self::NotYetValid => {
                "2000001;reason=\"The token is not yet valid.\";error_category=\"invalid_token\"".to_owned()
            }
        }
    }
}

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: serde_json::Value,
}

impl SigningKey {
    fn generate() -> Result<Self, KeyError> {
        let identity =
            crate::tls::generate_rsa_identity("ews-gateway simulator token signing", 2048)
                .map_err(|e| KeyError::Generate(e.to_string()))?;
        let (n, e) = rsa_components(&identity.cert_der).map_err(KeyError::Generate)?;
        let kid = URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&identity.cert_der));
        let encoding = EncodingKey::from_rsa_pem(identity.key_pem.as_bytes())
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        let decoding = DecodingKey::from_rsa_raw_components(&n, &e);
        let jwk = serde_json::json!({
            "kty": "RSA",
            "use": "sig",
            "kid": kid,
            "x5t": kid,
            "n": URL_SAFE_NO_PAD.encode(&n),
            "e": URL_SAFE_NO_PAD.encode(&e),
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&identity.cert_der)],
        });
        Ok(Self {
            kid,
            encoding,
            decoding,
            jwk,
        })
    }
}

/// RSA modulus and exponent (big-endian) of a certificate's public key.
pub fn rsa_components(cert_der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| e.to_string())?;
    match cert.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => Ok((
            strip_zeros(rsa.modulus).to_vec(),
            strip_zeros(rsa.exponent).to_vec(),
        )),
        Ok(_) => Err("not an RSA key".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// Issues and validates RS256 access tokens.
pub struct TokenService {
    key: RwLock<SigningKey>,
    lifetime: Duration,
    header_nonce: bool,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl TokenService {
    /// Creates a service with a fresh signing key.
    pub fn new(config: &SimConfig) -> Result<Self, KeyError> {
        Ok(Self {
            key: RwLock::new(SigningKey::generate()?),
            lifetime: config.token_lifetime,
            header_nonce: config.token_header_nonce,
        })
    }

    /// The published signing keys (JWKS).
    pub fn jwks(&self) -> serde_json::Value {
        let jwk = self.key.read().map(|k| k.jwk.clone()).unwrap_or_default();
        serde_json::json!({ "keys": [jwk] })
    }

    /// Rolls the signing key over: every token issued before stops validating (as after an
    /// Entra key rollover, or when a token is revoked).
    pub fn rotate_key(&self) -> Result<(), KeyError> {
        let fresh = SigningKey::generate()?;
        if let Ok(mut key) = self.key.write() {
            *key = fresh;
        }
        Ok(())
    }

    /// The claims a token for `app` in `tenant` carries, issued now.
    pub fn claims_for(
        &self,
        tenant: &Tenant,
        app: &App,
        audience: &str,
        appidacr: &str,
    ) -> TokenClaims {
        let now = now_unix();
        let roles: Vec<String> = app
            .roles
            .iter()
            .filter(|r| *r == "full_access_as_app")
            .cloned()
            .collect();
        TokenClaims {
            aud: audience.to_owned(),
            iss: format!("https://sts.windows.net/{}/", tenant.id),
            idp: format!("https://sts.windows.net/{}/", tenant.id),
            iat: now - 300,
            nbf: now - 300,
            exp: now + self.lifetime.as_secs() as i64,
            appid: app.client_id.clone(),
            app_displayname: app.display_name.clone(),
            appidacr: appidacr.to_owned(),
            oid: app.object_id.clone(),
            sub: app.object_id.clone(),
            roles: if roles.is_empty() { None } else { Some(roles) },
            tid: tenant.id.clone(),
            uti: uuid::Uuid::new_v4().simple().to_string(),
            ver: "1.0".to_owned(),
            idtyp: "app".to_owned(),
        }
    }

    /// Signs arbitrary claims with the current key (tests use it for expired or foreign tokens).
    pub fn sign(&self, claims: &TokenClaims) -> Result<String, KeyError> {
        let key = self
            .key
            .read()
            .map_err(|_| KeyError::Generate("signing key lock poisoned".into()))?;
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("JWT".to_owned());
        header.kid = Some(key.kid.clone());
        header.x5t = Some(key.kid.clone());
        if self.header_nonce {
            header.extras.insert(
                "nonce".to_owned(),
                URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes()),
            );
        }
        jsonwebtoken::encode(&header, claims, &key.encoding)
            .map_err(|e| KeyError::Generate(e.to_string()))
    }

    /// The configured token lifetime.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Validates a bearer token as Exchange Online does: signature, audience, time.
    pub fn validate(&self, bearer: &str, now_unix: i64) -> Result<AccessClaims, BearerError> {
        let header = jsonwebtoken::decode_header(bearer).map_err(|_| BearerError::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(BearerError::BadSignature);
        }
        let key = self.key.read().map_err(|_| BearerError::BadSignature)?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<TokenClaims>(bearer, &key.decoding, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => BearerError::BadSignature,
                _ => BearerError::Malformed,
            })?;
        let c = data.claims;
        if !EXCHANGE_AUDIENCES.contains(&c.aud.as_str()) {
            return Err(BearerError::WrongAudience { actual: c.aud });
        }
        if now_unix >= c.exp {
            return Err(BearerError::Expired);
        }
        if now_unix + 300 < c.nbf {
            return Err(BearerError::NotYetValid);
        }
        Ok(AccessClaims {
            aud: c.aud,
            tid: c.tid,
            appid: c.appid,
            appidacr: c.appidacr,
            roles: c.roles.unwrap_or_default(),
            exp: c.exp,
            nbf: c.nbf,
            oid: c.oid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::directory::Directory;

    fn service() -> (TokenService, Directory) {
        let config = SimConfig::builtin().unwrap();
        (TokenService::new(&config).unwrap(), config.directory)
    }

    #[test]
    fn issued_tokens_validate_and_carry_roles() {
        let (svc, dir) = service();
        let tenant = dir.tenant("contoso.example").unwrap();
        let app = &tenant.apps[0];
        let token = svc
            .sign(&svc.claims_for(tenant, app, "https://outlook.office365.com", "1"))
            .unwrap();
        let claims = svc.validate(&token, now_unix()).unwrap();
        assert_eq!(claims.roles, vec!["full_access_as_app".to_owned()]);
        assert_eq!(claims.tid, tenant.id);
        let no_consent = tenant.app("33333333-2222-4333-8444-555555555555").unwrap();
        let token = svc
            .sign(&svc.claims_for(tenant, no_consent, "https://outlook.office365.com", "1"))
            .unwrap();
        assert!(svc.validate(&token, now_unix()).unwrap().roles.is_empty());
        let payload = token.split('.').nth(1).unwrap();
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert!(
            !json.contains("roles"),
            "no roles claim without consent: {json}"
        );
    }

    #[test]
    fn refusals_and_diagnostics() {
        let (svc, dir) = service();
        let tenant = dir.tenant("contoso.example").unwrap();
        let app = &tenant.apps[0];
        let mut claims = svc.claims_for(tenant, app, "https://graph.microsoft.com", "1");
        let wrong_aud = svc.sign(&claims).unwrap();
        let err = svc.validate(&wrong_aud, now_unix()).unwrap_err();
        assert!(
            err.diagnostics().starts_with("2000003;"),
            "{}",
            err.diagnostics()
        );
        claims.aud = "https://outlook.office365.com".into();
        claims.exp = now_unix() - 10;
        assert_eq!(
            svc.validate(&svc.sign(&claims).unwrap(), now_unix())
                .unwrap_err(),
            BearerError::Expired
        );
        assert_eq!(
            svc.validate("not-a-jwt", now_unix()).unwrap_err(),
            BearerError::Malformed
        );
        // Tampered payload.
        claims.exp = now_unix() + 100;
        let good = svc.sign(&claims).unwrap();
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut forged = claims.clone();
        forged.tid = "another-tenant".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        parts[1] = &forged_payload;
        assert_eq!(
            svc.validate(&parts.join("."), now_unix()).unwrap_err(),
            BearerError::BadSignature
        );
        // A key rollover invalidates earlier tokens.
        svc.rotate_key().unwrap();
        assert_eq!(
            svc.validate(&good, now_unix()).unwrap_err(),
            BearerError::BadSignature
        );
    }
}
