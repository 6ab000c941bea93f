//! Access tokens the simulated Entra ID issues and the simulated Exchange validates.

use super::SimConfig;

/// Errors while creating the token service.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Key generation failed.
    #[error("{0}")]
    Generate(String),
}

/// Issues and validates RS256 access tokens.
#[derive(Debug)]
pub struct TokenService {}

impl TokenService {
    /// Creates a service with a fresh signing key.
    pub fn new(_config: &SimConfig) -> Result<Self, KeyError> {
        Ok(Self {})
    }

    /// The published signing keys (JWKS).
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [] })
    }
}
