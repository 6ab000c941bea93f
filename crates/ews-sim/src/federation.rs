//! An emulated external OIDC issuer (a Kubernetes cluster's service account issuer) for
//! workload identity federation: it mints the tokens a pod would find in its projected token
//! file, and Entra (the simulated token endpoint) verifies them against this issuer's key.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::tokens::now_unix;

/// The emulated cluster's issuer URL (what federated credentials in the seed trust).
pub const ISSUER: &str = "https://oidc.cluster.sim.example";

/// Errors of the emulated issuer.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// Key generation or signing failed.
    #[error("{0}")]
    Key(String),
}

/// The issuer's signing key.
pub struct FederationIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for FederationIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FederationIssuer")
    }
}

impl FederationIssuer {
    /// A fresh RSA key.
    pub fn new() -> Result<Self, FederationError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .map_err(|e| FederationError::Key(e.to_string()))?;
        let encoding = EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes())
            .map_err(|e| FederationError::Key(e.to_string()))?;
        let decoding = DecodingKey::from_rsa_pem(key.public_key_pem().as_bytes())
            .map_err(|e| FederationError::Key(e.to_string()))?;
        Ok(Self { encoding, decoding })
    }

    /// A service account token for `subject` with `audience`, valid for an hour.
    pub fn token(&self, subject: &str, audience: &str) -> Result<String, FederationError> {
        let now = now_unix();
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": [audience],
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
        });
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.encoding)
            .map_err(|e| FederationError::Key(e.to_string()))
    }

    /// Verifies a token's signature and times; returns its claims.
    pub fn verify(&self, token: &str) -> Option<serde_json::Value> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_aud = false;
        validation.leeway = 300;
        jsonwebtoken::decode::<serde_json::Value>(token, &self.decoding, &validation)
            .ok()
            .map(|d| d.claims)
    }
}
