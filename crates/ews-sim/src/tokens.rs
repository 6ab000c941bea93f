//! Access tokens the simulated Entra ID issues and the simulated Exchange validates.
//!
//! Owns the simulator's RS256 signing key (RSA 2048, generated at start, with a self-signed
//! certificate so the JWKS carries `x5t`/`x5c` like Entra's), the claim set of an app-only Exchange
//! Online token (reference D5), and the checks EWS makes on a bearer token before it looks at
//! tenants and roles (B3: signature, audience, lifetime). Tenant and role checks belong to the EWS
//! endpoint.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, KeyPair as _, RsaKeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::SimConfig;
use super::directory::App;

/// Audiences Exchange Online accepts in an access token (reference D1/J2).
pub const EXCHANGE_AUDIENCES: [&str; 3] = [
    "https://outlook.office365.com",
    "https://outlook.office365.com/",
    "https://outlook.office.com",
];

/// Audiences Microsoft Graph accepts in an access token (the resource URI with or without the
/// trailing slash, and Graph's application id).
pub const GRAPH_AUDIENCES: [&str; 3] = [
    "https://graph.microsoft.com",
    "https://graph.microsoft.com/",
    "00000003-0000-0000-c000-000000000000",
];

/// Clock skew EWS tolerates on `nbf`/`exp`, in seconds (Microsoft.IdentityModel's default of
/// five minutes). A token is expired once `exp + CLOCK_SKEW_SECS <= now`.
pub const CLOCK_SKEW_SECS: i64 = 300;

/// How far `iat`/`nbf` are back-dated, as Entra does (exp - iat = lifetime + 300 s).
pub const BACKDATE_SECS: i64 = 300;

/// The current time as Unix seconds.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Errors while creating the token service.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Key or certificate generation failed.
    #[error("{0}")]
    Generate(String),
}

/// Errors while signing a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The claims could not be serialised.
    #[error("token claims: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The signature could not be made.
    #[error("token signature failed")]
    Sign,
}

/// How the client authenticated at the token endpoint (`appidacr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Client secret: `appidacr` "1".
    Secret,
    /// Certificate (client assertion): `appidacr` "2".
    Certificate,
}

impl ClientAuth {
    /// The `appidacr` claim value.
    pub fn appidacr(self) -> &'static str {
        match self {
            Self::Secret => "1",
            Self::Certificate => "2",
        }
    }
}

/// The payload of an access token, field for field. Public so tests can issue tokens with the
/// times, audience or roles they need (`TokenClaims::app_only` then edit, then `TokenService::issue`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Resource the token is for.
    pub aud: String,
    /// `https://sts.windows.net/{tid}/`.
    pub iss: String,
    /// Issued at (back-dated).
    pub iat: i64,
    /// Not before (back-dated).
    pub nbf: i64,
    /// Expiry.
    pub exp: i64,
    /// App display name.
    pub app_displayname: String,
    /// Client id.
    pub appid: String,
    /// "1" secret, "2" certificate.
    pub appidacr: String,
    /// Identity provider, same as `iss`.
    pub idp: String,
    /// "app" for app-only tokens.
    pub idtyp: String,
    /// Service principal object id.
    pub oid: String,
    /// Consented application roles; absent from the token when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Same as `oid` for app-only tokens.
    pub sub: String,
    /// Tenant id.
    pub tid: String,
    /// Unique token id.
    pub uti: String,
    /// "1.0".
    pub ver: String,
}

impl TokenClaims {
    /// The claims Entra puts in an app-only token for `app` in tenant `tenant_id`, issued `now`.
    pub fn app_only(
        tenant_id: &str,
        app: &App,
        aud: &str,
        auth: ClientAuth,
        now: i64,
        lifetime: Duration,
    ) -> Self {
        let issuer = format!("https://sts.windows.net/{tenant_id}/");
        let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2);
        Self {
            aud: aud.to_owned(),
            iss: issuer.clone(),
            iat: now - BACKDATE_SECS,
            nbf: now - BACKDATE_SECS,
            exp: now.saturating_add(lifetime),
            app_displayname: app.display_name.clone(),
            appid: app.client_id.clone(),
            appidacr: auth.appidacr().to_owned(),
            idp: issuer,
            idtyp: "app".to_owned(),
            oid: app.object_id.clone(),
            roles: app.roles.clone(),
            sub: app.object_id.clone(),
            tid: tenant_id.to_owned(),
            uti: URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes()),
            ver: "1.0".to_owned(),
        }
    }
}

/// What EWS learns from a valid bearer token.
#[derive(Debug, Clone)]
pub struct AccessClaims {
    /// Audience.
    pub aud: String,
    /// Tenant id.
    pub tid: String,
    /// Client id.
    pub appid: String,
    /// "1" secret, "2" certificate.
    pub appidacr: String,
    /// Application roles (empty when the token has no `roles` claim).
    pub roles: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Not before, Unix seconds.
    pub nbf: i64,
    /// Service principal object id.
    pub oid: String,
}

/// Why EWS refuses a bearer token (HTTP 401 with `x-ms-diagnostics`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    /// Not a JWT, or its parts or claims do not decode.
    #[error("the token cannot be parsed")]
    Malformed,
    /// Not signed by the simulator's key (wrong key, unknown `kid`, tampered, other `alg`).
    #[error("the token has an invalid signature")]
    BadSignature,
    /// `aud` is not the resource the token is presented to.
    #[error("the audience {actual:?} is not this resource")]
    WrongAudience {
        /// The `aud` the token carries.
        actual: String,
    },
    /// Past `exp` (plus skew).
    #[error("the token has expired")]
    Expired,
    /// Before `nbf` (minus skew).
    #[error("the token is not yet valid")]
    NotYetValid,
}

impl BearerError {
    /// The full `x-ms-diagnostics` header value EWS sends with its 401.
    pub fn diagnostics(&self) -> String {
        let (code, reason, category) = match self {
            Self::Malformed => (
                2_000_001,
                "OAuth token submitted with the request cannot be parsed.",
                "invalid_token",
            ),
            // Text observed from Exchange (Microsoft free/busy troubleshooting doc, on-premises
            // EWS behind the same OAuth stack).
            Self::BadSignature => (
                2_000_000,
                "The token has an invalid signature.",
                "invalid_signature",
            ),
            Self::WrongAudience { .. } => (
                2_000_003,
                "The audience claim value is invalid 'aud'.",
                "invalid_resource",
            ),
            // Simulator choices: the real code/text for these are unverified (reference B3).
            Self::Expired => (2_000_001, "The token has expired.", "invalid_token"),
            Self::NotYetValid => (2_000_001, "The token is not yet valid.", "invalid_token"),
        };
        format!("{code};reason=\"{reason}\";error_category=\"{category}\"")
    }
}

/// The JOSE header of issued tokens. Field order is fixed because the signature covers the
/// serialised header (and, with a nonce, a re-serialised one).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JwtHeader {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x5t: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

/// Issues and validates RS256 access tokens.
pub struct TokenService {
    key: RsaKeyPair,
    rng: SystemRandom,
    /// `kid` and `x5t`: base64url SHA-1 of the signing certificate, as Entra does.
    kid: String,
    cert_der: Vec<u8>,
    lifetime: Duration,
    header_nonce: bool,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("kid", &self.kid)
            .field("lifetime", &self.lifetime)
            .field("header_nonce", &self.header_nonce)
            .finish_non_exhaustive()
    }
}

impl TokenService {
    /// Creates a service with a fresh signing key.
    pub fn new(config: &SimConfig) -> Result<Self, KeyError> {
        let key = RsaKeyPair::generate(KeySize::Rsa2048)
            .map_err(|e| KeyError::Generate(format!("RSA key generation: {e}")))?;
        let pkcs8 = key
            .as_der()
            .map_err(|e| KeyError::Generate(format!("RSA key export: {e}")))?;
        let cert_der = self_signed_cert(pkcs8.as_ref())?;
        let kid = URL_SAFE_NO_PAD.encode(Sha1::digest(&cert_der));
        Ok(Self {
            key,
            rng: SystemRandom::new(),
            kid,
            cert_der,
            lifetime: config.token_lifetime,
            header_nonce: config.token_header_nonce,
        })
    }

    /// Lifetime of issued tokens (`expires_in`).
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The key id (`kid` and `x5t`) of the signing key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The published signing keys (JWKS), shaped like Entra's `discovery/keys`.
    pub fn jwks(&self) -> serde_json::Value {
        let public = self.key.public_key();
        let n = public.modulus().big_endian_without_leading_zero();
        let e = public.exponent().big_endian_without_leading_zero();
        serde_json::json!({
            "keys": [{
                "kty": "RSA",
                "use": "sig",
                "kid": self.kid,
                "x5t": self.kid,
                "n": URL_SAFE_NO_PAD.encode(n),
                "e": URL_SAFE_NO_PAD.encode(e),
                "x5c": [STANDARD.encode(&self.cert_der)],
            }]
        })
    }

    /// Signs `claims` as an access token (with a header `nonce` when so configured).
    pub fn issue(&self, claims: &TokenClaims) -> Result<String, TokenError> {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?);
        let nonce = self
            .header_nonce
            .then(|| URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes()));
        let header = JwtHeader {
            typ: Some("JWT".to_owned()),
            nonce: nonce.clone(),
            alg: "RS256".to_owned(),
            x5t: Some(self.kid.clone()),
            kid: Some(self.kid.clone()),
        };
        let sent_header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?);
        // Entra signs over the header with the nonce replaced by its SHA-256 and sends the raw
        // nonce, so stock JWT libraries cannot verify such tokens; only the resource can.
        let signed_header = match nonce {
            Some(raw) => signed_header_for_nonce(&header, &raw)?,
            None => sent_header.clone(),
        };
        let signing_input = format!("{signed_header}.{payload}");
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &self.rng,
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| TokenError::Sign)?;
        Ok(format!(
            "{sent_header}.{payload}.{}",
            URL_SAFE_NO_PAD.encode(sig)
        ))
    }

    /// Validates a bearer token as EWS does: parse, signature by this service's key, audience,
    /// lifetime. Tenant and roles are left to the caller.
    pub fn validate(&self, bearer: &str, now_unix: i64) -> Result<AccessClaims, BearerError> {
        self.validate_for(bearer, now_unix, &EXCHANGE_AUDIENCES)
    }

    /// [`Self::validate`] for a resource whose token audiences are `audiences` (Graph's face
    /// passes [`GRAPH_AUDIENCES`]).
    pub fn validate_for(
        &self,
        bearer: &str,
        now_unix: i64,
        audiences: &[&str],
    ) -> Result<AccessClaims, BearerError> {
        let mut parts = bearer.trim().split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(BearerError::Malformed);
        };
        let header: JwtHeader = URL_SAFE_NO_PAD
            .decode(h64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(BearerError::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(p64)
            .map_err(|_| BearerError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(s64)
            .map_err(|_| BearerError::Malformed)?;

        if header.alg != "RS256" {
            return Err(BearerError::BadSignature);
        }
        let names_our_key = header.kid.as_deref().or(header.x5t.as_deref()) == Some(&self.kid);
        if !names_our_key {
            return Err(BearerError::BadSignature);
        }
        let signed_header = match &header.nonce {
            Some(raw) => {
                signed_header_for_nonce(&header, raw).map_err(|_| BearerError::Malformed)?
            }
            None => h64.to_owned(),
        };
        let signing_input = format!("{signed_header}.{p64}");
        UnparsedPublicKey::new(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            self.key.public_key().as_ref(),
        )
        .verify(signing_input.as_bytes(), &sig)
        .map_err(|_| BearerError::BadSignature)?;

        let claims: TokenClaims =
            serde_json::from_slice(&payload).map_err(|_| BearerError::Malformed)?;
        if !audiences.contains(&claims.aud.as_str()) {
            return Err(BearerError::WrongAudience { actual: claims.aud });
        }
        if claims.exp.saturating_add(CLOCK_SKEW_SECS) <= now_unix {
            return Err(BearerError::Expired);
        }
        if claims.nbf.saturating_sub(CLOCK_SKEW_SECS) > now_unix {
            return Err(BearerError::NotYetValid);
        }
        Ok(AccessClaims {
            aud: claims.aud,
            tid: claims.tid,
            appid: claims.appid,
            appidacr: claims.appidacr,
            roles: claims.roles,
            exp: claims.exp,
            nbf: claims.nbf,
            oid: claims.oid,
        })
    }
}

/// The base64url header that was signed when the sent header carries nonce `raw`.
fn signed_header_for_nonce(header: &JwtHeader, raw: &str) -> Result<String, serde_json::Error> {
    let mut hashed = header.clone();
    hashed.nonce = Some(URL_SAFE_NO_PAD.encode(Sha256::digest(raw.as_bytes())));
    Ok(URL_SAFE_NO_PAD.encode(serde_json::to_vec(&hashed)?))
}

/// A self-signed certificate for the signing key, so the JWKS can carry `x5t` and `x5c`.
fn self_signed_cert(pkcs8: &[u8]) -> Result<Vec<u8>, KeyError> {
    use rcgen::{CertificateParams, DnType, KeyPair, PKCS_RSA_SHA256};
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8);
    let key = KeyPair::from_pkcs8_der_and_sign_algo(&der, &PKCS_RSA_SHA256)
        .map_err(|e| KeyError::Generate(format!("certificate key: {e}")))?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| KeyError::Generate(format!("certificate params: {e}")))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "accounts.accesscontrol.windows.net");
    let cert = params
        .self_signed(&key)
        .map_err(|e| KeyError::Generate(format!("certificate: {e}")))?;
    Ok(cert.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(nonce: bool) -> TokenService {
        let mut config = SimConfig::builtin().unwrap();
        config.token_header_nonce = nonce;
        TokenService::new(&config).unwrap()
    }

    fn gateway_app() -> App {
        let dir = super::super::directory::Directory::builtin().unwrap();
        let tenant = dir.tenant("contoso.example").unwrap();
        tenant
            .app("11111111-2222-4333-8444-555555555555")
            .unwrap()
            .clone()
    }

    fn claims(aud: &str, now: i64) -> TokenClaims {
        TokenClaims::app_only(
            "tid-1",
            &gateway_app(),
            aud,
            ClientAuth::Secret,
            now,
            Duration::from_secs(3599),
        )
    }

    #[test]
    fn issued_token_validates_and_carries_claims() {
        let svc = service(false);
        let now = 1_800_000_000;
        let token = svc
            .issue(&claims("https://outlook.office365.com", now))
            .unwrap();
        let c = svc.validate(&token, now).unwrap();
        assert_eq!(c.aud, "https://outlook.office365.com");
        assert_eq!(c.tid, "tid-1");
        assert_eq!(c.appidacr, "1");
        assert_eq!(c.roles, vec!["full_access_as_app".to_owned()]);
        assert_eq!(c.nbf, now - 300);
        assert_eq!(c.exp, now + 3599);
    }

    #[test]
    fn nonce_tokens_validate_here_but_not_as_plain_jws() {
        let svc = service(true);
        let now = 1_800_000_000;
        let token = svc
            .issue(&claims("https://outlook.office.com", now))
            .unwrap();
        let header = token.split('.').next().unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert!(header["nonce"].is_string());
        assert!(svc.validate(&token, now).is_ok());
        // A stock verifier (signature over the header as sent) must fail.
        let (input, sig) = token.rsplit_once('.').unwrap();
        let plain = UnparsedPublicKey::new(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            svc.key.public_key().as_ref(),
        )
        .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap());
        assert!(plain.is_err());
    }

    #[test]
    fn every_exchange_audience_is_accepted_and_others_refused() {
        let svc = service(false);
        let now = 1_800_000_000;
        for aud in EXCHANGE_AUDIENCES {
            let token = svc.issue(&claims(aud, now)).unwrap();
            assert_eq!(svc.validate(&token, now).unwrap().aud, aud);
        }
        for aud in [
            "https://graph.microsoft.com",
            "https://outlook.office365.com/EWS/Exchange.asmx",
            "https://OUTLOOK.office365.com",
            "00000002-0000-0ff1-ce00-000000000000",
        ] {
            let token = svc.issue(&claims(aud, now)).unwrap();
            assert_eq!(
                svc.validate(&token, now).unwrap_err(),
                BearerError::WrongAudience {
                    actual: aud.to_owned()
                }
            );
        }
    }

    #[test]
    fn lifetime_edges_respect_the_skew() {
        let svc = service(false);
        let now = 1_800_000_000;
        let mut c = claims("https://outlook.office365.com", now);
        c.exp = now - CLOCK_SKEW_SECS + 1;
        assert!(svc.validate(&svc.issue(&c).unwrap(), now).is_ok());
        c.exp = now - CLOCK_SKEW_SECS;
        assert_eq!(
            svc.validate(&svc.issue(&c).unwrap(), now).unwrap_err(),
            BearerError::Expired
        );
        let mut c = claims("https://outlook.office365.com", now);
        c.nbf = now + CLOCK_SKEW_SECS + 1;
        assert_eq!(
            svc.validate(&svc.issue(&c).unwrap(), now).unwrap_err(),
            BearerError::NotYetValid
        );
    }

    #[test]
    fn garbage_tampering_and_foreign_keys_are_refused() {
        let svc = service(false);
        let other = service(false);
        let now = 1_800_000_000;
        let c = claims("https://outlook.office365.com", now);
        for junk in ["", "abc", "a.b", "a.b.c.d", "!!.??.**"] {
            assert_eq!(svc.validate(junk, now).unwrap_err(), BearerError::Malformed);
        }
        let token = svc.issue(&c).unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut evil = c.clone();
        evil.roles = vec!["full_access_as_app".into(), "Mail.Send".into()];
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&evil).unwrap());
        parts[1] = &forged;
        assert_eq!(
            svc.validate(&parts.join("."), now).unwrap_err(),
            BearerError::BadSignature
        );
        // Signed by another key that names our kid: still refused.
        let foreign = other.issue(&c).unwrap();
        assert_eq!(
            svc.validate(&foreign, now).unwrap_err(),
            BearerError::BadSignature
        );
        let (h, rest) = foreign.split_once('.').unwrap();
        let mut header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap();
        header["kid"] = svc.kid().into();
        header["x5t"] = svc.kid().into();
        let relabelled = format!(
            "{}.{rest}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap())
        );
        assert_eq!(
            svc.validate(&relabelled, now).unwrap_err(),
            BearerError::BadSignature
        );
        // alg=none with our kid.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, svc.kid())),
            parts[1]
        );
        assert_eq!(
            svc.validate(&none, now).unwrap_err(),
            BearerError::BadSignature
        );
    }

    #[test]
    fn no_roles_claim_without_consent() {
        let svc = service(false);
        let now = 1_800_000_000;
        let mut c = claims("https://outlook.office365.com", now);
        c.roles.clear();
        let token = svc.issue(&c).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert!(json.get("roles").is_none());
        assert!(svc.validate(&token, now).unwrap().roles.is_empty());
    }

    #[test]
    fn diagnostics_values() {
        assert_eq!(
            BearerError::WrongAudience { actual: "x".into() }.diagnostics(),
            r#"2000003;reason="The audience claim value is invalid 'aud'.";error_category="invalid_resource""#
        );
        assert_eq!(
            BearerError::Expired.diagnostics(),
            r#"2000001;reason="The token has expired.";error_category="invalid_token""#
        );
        assert_eq!(
            BearerError::Malformed.diagnostics(),
            r#"2000001;reason="OAuth token submitted with the request cannot be parsed.";error_category="invalid_token""#
        );
    }
}
