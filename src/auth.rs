//! Verifying callers: the users table (from `ews-gateway-core`) behind a cache and a cap.
//!
//! Passwords are checked on a blocking thread, at most one per core at a time (argon2id takes
//! 19 MiB each). A verified credential is remembered briefly under a keyed hash (HMAC-SHA256 with
//! a per-process random key), never under the password itself. An unknown or disabled user is
//! checked against the dummy hash, so every failure costs the same.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub use ews_gateway_core::auth::*;

use crate::config::AuthConfig;

/// The options the `[auth]` section sets.
pub fn store_options(auth: &AuthConfig) -> StoreOptions {
    StoreOptions {
        names: NameOptions {
            default_domain: auth.default_domain.as_ref().map(|d| d.to_lowercase()),
            netbios_domains: auth
                .netbios_domains
                .iter()
                .map(|(k, v)| (k.to_ascii_uppercase(), v.to_lowercase()))
                .collect(),
        },
        cache_ttl: Duration::from_secs(auth.cache_ttl_seconds),
    }
}

/// The users and their password hashes, with a short-lived cache of verified credentials.
pub struct CredentialStore {
    table: UserTable,
    /// HMAC-SHA256 keyed with a per-process random secret, its key schedule done once (cloned
    /// per request instead of re-keyed).
    cache_mac: Hmac<Sha256>,
    cache: moka::sync::Cache<[u8; 32], Arc<Principal>>,
    hash_checks: AtomicU64,
    /// Caps concurrent hash verifications: argon2id with default parameters takes 19 MiB each,
    /// so an unbounded burst of wrong passwords would exhaust memory.
    hashing: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialStore")
            .field("users", &self.table.len())
            .finish_non_exhaustive()
    }
}

impl CredentialStore {
    /// Reads a users file.
    pub fn from_path(path: &Path, options: StoreOptions) -> Result<Self, UsersError> {
        let ttl = options.cache_ttl;
        Self::with_table(UserTable::from_path(path, options)?, ttl)
    }

    /// Parses a users file; every problem is reported together.
    pub fn from_toml(text: &str, options: StoreOptions) -> Result<Self, UsersError> {
        let ttl = options.cache_ttl;
        Self::with_table(UserTable::from_toml(text, options)?, ttl)
    }

    fn with_table(table: UserTable, cache_ttl: Duration) -> Result<Self, UsersError> {
        Ok(Self {
            table,
            cache_mac: Hmac::<Sha256>::new_from_slice(&rand::random::<[u8; 32]>())
                .map_err(|e| UsersError(vec![e.to_string()]))?,
            cache: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(cache_ttl.max(Duration::from_millis(1)))
                .build(),
            hash_checks: AtomicU64::new(0),
            hashing: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
        })
    }

    /// How many users the file defines.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the file defines no user.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The canonical name of a login, as this store maps it.
    pub fn canonical_name(&self, raw: &str) -> Option<String> {
        self.table.canonical_name(raw)
    }

    /// The mailbox of the user whose UPN is `upn`, if the users file says.
    pub fn mailbox_for_upn(&self, upn: &str) -> Option<String> {
        self.table.mailbox_for_upn(upn)
    }

    /// Spends one dummy hash verification: a refused-before-checking login (locked user or
    /// source) costs the same as a wrong password.
    pub async fn spend_dummy_check(&self) {
        let _ = self.check(self.table.dummy(), "-").await;
    }

    /// How many password hashes were computed (cache misses), for tests and metrics.
    pub fn hash_checks(&self) -> u64 {
        self.hash_checks.load(Ordering::Relaxed)
    }

    fn cache_key(&self, name: &str, password: &str) -> [u8; 32] {
        let mut mac = self.cache_mac.clone();
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Verifies credentials; unknown, disabled and wrong all return `InvalidCredentials`.
    pub async fn verify(&self, creds: &BasicCredentials) -> Result<Arc<Principal>, AuthError> {
        let Some(name) = self.table.canonical_name(&creds.username) else {
            // Same cost as a real check, so a malformed name reveals nothing either.
            self.check(self.table.dummy(), &creds.password).await?;
            return Err(AuthError::InvalidCredentials);
        };
        let key = self.cache_key(&name, &creds.password);
        if let Some(principal) = self.cache.get(&key) {
            return Ok(principal);
        }
        let candidate = self.table.candidate(&name);
        let ok = self.check(candidate.hash, &creds.password).await?;
        match candidate.principal {
            Some(p) if ok => {
                self.cache.insert(key, Arc::clone(p));
                Ok(Arc::clone(p))
            }
            _ => Err(AuthError::InvalidCredentials),
        }
    }

    async fn check(&self, hash: &StoredHash, password: &str) -> Result<bool, AuthError> {
        self.hash_checks.fetch_add(1, Ordering::Relaxed);
        // The permit moves into the blocking task: a client that goes away cannot free it early.
        let permit = Arc::clone(&self.hashing)
            .acquire_owned()
            .await
            .map_err(|e| AuthError::Hash(e.to_string()))?;
        let hash = hash.clone();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || {
            let ok = hash.verify(&password);
            drop(permit);
            ok
        })
        .await
        .map_err(|e| AuthError::Hash(e.to_string()))
    }

    #[cfg(test)]
    fn cached_keys(&self) -> Vec<[u8; 32]> {
        self.cache.run_pending_tasks();
        self.cache.iter().map(|(k, _)| *k).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn options() -> StoreOptions {
        StoreOptions {
            names: NameOptions {
                default_domain: Some("contoso.example".into()),
                netbios_domains: HashMap::new(),
            },
            cache_ttl: Duration::from_secs(60),
        }
    }

    fn store() -> CredentialStore {
        let argon = hash_password("alice-pass").unwrap();
        let bcrypt = bcrypt::hash_with_result("scan-pass", 4)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        assert!(bcrypt.starts_with("$2y$"));
        let text = format!(
            r#"
[[user]]
name = "alice@contoso.example"
password_hash = "{argon}"
[[user]]
name = "scanner@contoso.example"
password_hash = "{bcrypt}"
mailbox = "Scans@contoso.example"
[[user]]
name = "gone@contoso.example"
password_hash = "{argon}"
disabled = true
"#
        );
        CredentialStore::from_toml(&text, options()).unwrap()
    }

    fn creds(u: &str, p: &str) -> BasicCredentials {
        BasicCredentials {
            username: u.into(),
            password: p.into(),
        }
    }

    #[tokio::test]
    async fn argon2_and_bcrypt_verify_and_failures_are_identical() {
        let s = store();
        let alice = s.verify(&creds("alice", "alice-pass")).await.unwrap();
        assert_eq!(alice.mailbox, "alice@contoso.example");
        let scanner = s
            .verify(&creds("scanner@contoso.example", "scan-pass"))
            .await
            .unwrap();
        assert_eq!(scanner.mailbox, "scans@contoso.example");
        for (u, p) in [
            ("alice", "wrong"),
            ("nobody", "alice-pass"),
            ("gone", "alice-pass"),
            ("X\\y", "z"),
        ] {
            let before = s.hash_checks();
            let err = s.verify(&creds(u, p)).await.unwrap_err();
            assert!(matches!(err, AuthError::InvalidCredentials), "{u}: {err}");
            assert_eq!(
                s.hash_checks(),
                before + 1,
                "{u}: a failure costs one hash check"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_verifications_are_capped() {
        let s = Arc::new(store());
        let cap = s.hashing.available_permits();
        let mut tasks = Vec::new();
        for i in 0..(cap * 4) {
            let s = Arc::clone(&s);
            tasks.push(tokio::spawn(async move {
                s.verify(&creds("alice", &format!("wrong-{i}"))).await
            }));
        }
        let mut least = cap;
        while !tasks.iter().all(|t| t.is_finished()) {
            least = least.min(s.hashing.available_permits());
            tokio::task::yield_now().await;
        }
        for t in tasks {
            assert!(t.await.unwrap().is_err());
        }
        assert_eq!(s.hashing.available_permits(), cap, "all permits come back");
        assert!(least < cap, "verifications did take permits");
    }

    #[tokio::test]
    async fn verified_credentials_are_cached_under_a_keyed_hash() {
        let s = store();
        s.verify(&creds("alice", "alice-pass")).await.unwrap();
        let after_first = s.hash_checks();
        for _ in 0..5 {
            s.verify(&creds("alice@contoso.example", "alice-pass"))
                .await
                .unwrap();
        }
        assert_eq!(s.hash_checks(), after_first, "cache hits skip the hash");
        // A wrong password is never served from the cache.
        assert!(s.verify(&creds("alice", "alice-pass2")).await.is_err());
        for key in s.cached_keys() {
            assert!(!key.windows(10).any(|w| w == b"alice-pass"));
            assert_ne!(&key[..], &[0u8; 32][..]);
        }
    }
}
