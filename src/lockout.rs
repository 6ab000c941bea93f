//! Slowing down password guessing: failure tracking per user and per source address, with
//! temporary lockouts that double with each repeat.
//!
//! A locked user or source is answered exactly like a wrong password (the proxy still spends a
//! dummy hash, so timing matches), and unknown users are tracked like real ones, so nothing
//! reveals whether an account exists or is locked. Requests without credentials are challenges,
//! not failures (DavMail sends every call unauthenticated first). Free of hyper types; time is
//! tokio's, so tests can pause it. The counting rules themselves live in
//! `ews_gateway_core::lockout`.
//!
//! Two stores sit behind [`Lockout`]: the in-process [`LocalStore`], always present, and, when
//! `[auth.lockout] redis_url` is set, a [`RedisStore`] shared by every replica. Each Redis
//! operation is one Lua script (atomic on the server, using the server's clock, with an expiry
//! on every key). When Redis cannot be reached the gateway fails open to local tracking: it
//! counts and locks per process, logs the outage once, counts each fallback
//! ([`Lockout::shared_store_fallbacks`]) and retries Redis with a back-off; it never refuses
//! logins because Redis is down.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{Secret, SecretSource};
use tokio::time::Instant;

/// Lockout settings (`[auth.lockout]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockoutPolicy {
    /// Failures of one user within the window that start a lockout.
    pub max_failures: u32,
    /// Failures from one source address within the window that start a lockout of the source.
    pub max_failures_per_source: u32,
    /// Window in which failures are counted, seconds.
    pub window_seconds: u64,
    /// First lockout, seconds; each further lockout doubles it.
    pub lockout_seconds: u64,
    /// Longest lockout, seconds.
    pub max_lockout_seconds: u64,
    /// Redis shared by all replicas (`redis://[:password@]host:port/db`, `redis+unix:///path`,
    /// `unix:///path`), inline (a warning is logged when it carries a password).
    pub redis_url: Option<RedisUrl>,
    /// The Redis URL read from this file (trailing newline ignored).
    pub redis_url_file: Option<PathBuf>,
    /// The Redis URL read from this environment variable.
    pub redis_url_env: Option<String>,
    /// Prefix of every Redis key the gateway writes.
    pub redis_key_prefix: String,
    /// Longest wait for one Redis connection or command, milliseconds; past it the login is
    /// tracked locally.
    pub redis_timeout_ms: u64,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        Self {
            max_failures: 5,
            max_failures_per_source: 30,
            window_seconds: 300,
            lockout_seconds: 60,
            max_lockout_seconds: 3600,
            redis_url: None,
            redis_url_file: None,
            redis_url_env: None,
            redis_key_prefix: "ews-gateway:lockout:".to_owned(),
            redis_timeout_ms: 250,
        }
    }
}

/// A Redis URL as written in the configuration; its `Debug` hides it (it may hold a password).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Wraps a URL.
    pub fn new(url: String) -> Self {
        Self(url)
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisUrl(..)")
    }
}

/// Errors while setting up the shared store.
#[derive(Debug, thiserror::Error)]
pub enum LockoutSetupError {
    /// The URL could not be read from its file or environment variable.
    #[error("auth.lockout.{key}: {source}")]
    Secret {
        /// The key naming the source.
        key: &'static str,
        /// Why it could not be read.
        source: crate::config::SecretError,
    },
    /// The URL is not usable (the URL itself is never repeated: it may hold a password).
    #[error("auth.lockout: the Redis URL is not usable: {0}")]
    Url(String),
}

impl LockoutPolicy {
    /// Problems with these settings, for `Config::validate` (reads the URL file or variable).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match self.redis_source() {
            Err(problem) => problems.push(format!("auth.lockout: {problem}")),
            Ok(source) => match Self::resolve_redis_url(source.as_ref()) {
                Ok(Some(url)) => {
                    if let Err(e) = open_client(url.expose()) {
                        problems.push(e.to_string());
                    }
                }
                Ok(None) => {}
                Err(e) => problems.push(e.to_string()),
            },
        }
        if self.redis_timeout_ms == 0 {
            problems.push("auth.lockout.redis_timeout_ms: must be at least 1".to_owned());
        }
        if self.max_lockout_seconds < self.lockout_seconds {
            problems.push(
                "auth.lockout: max_lockout_seconds must be at least lockout_seconds".to_owned(),
            );
        }
        problems
    }

    /// Where the Redis URL is: `redis_url_file`, `redis_url_env` or `redis_url` (at most one).
    fn redis_source(&self) -> Result<Option<SecretSource>, String> {
        SecretSource::pick(
            ["redis_url_file", "redis_url_env", "redis_url"],
            self.redis_url_file.as_deref(),
            self.redis_url_env.as_deref(),
            self.redis_url.as_ref().map(|u| Secret::new(u.0.clone())),
        )
    }

    /// The Redis URL read from `source`; `None` without Redis.
    fn resolve_redis_url(
        source: Option<&SecretSource>,
    ) -> Result<Option<Secret>, LockoutSetupError> {
        let Some(source) = source else {
            return Ok(None);
        };
        let key = match source {
            SecretSource::File(_) => "redis_url_file",
            SecretSource::Env(_) => "redis_url_env",
            SecretSource::Inline(_) => "redis_url",
        };
        source
            .resolve()
            .map(Some)
            .map_err(|source| LockoutSetupError::Secret { key, source })
    }

    /// A client of the configured Redis (URL read from its file or variable now); `None`
    /// without Redis. Other shared state (the Graph shaper) uses the same Redis.
    pub fn redis_client(&self) -> Result<Option<redis::Client>, LockoutSetupError> {
        let source = self.redis_source().map_err(LockoutSetupError::Url)?;
        Self::resolve_redis_url(source.as_ref())?
            .map(|url| open_client(url.expose()))
            .transpose()
    }
}

/// Parses a Redis URL into a client; errors never quote the URL.
fn open_client(url: &str) -> Result<redis::Client, LockoutSetupError> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or_default();
    match scheme {
        "redis" | "redis+unix" | "unix" => {}
        "rediss" => {
            return Err(LockoutSetupError::Url(
                "rediss:// (TLS) is not supported by this build; use a unix socket or a local TLS tunnel"
                    .to_owned(),
            ));
        }
        _ => {
            return Err(LockoutSetupError::Url(
                "the scheme must be redis://, redis+unix:// or unix://".to_owned(),
            ));
        }
    }
    redis::Client::open(url).map_err(|e| LockoutSetupError::Url(format!("{:?}", e.kind())))
}

pub use ews_gateway_core::lockout::FailureOutcome;
use ews_gateway_core::lockout::{Counter, LockState, Rules};

/// Entries kept before stale ones are pruned (bounds memory under a spray of user names).
const PRUNE_AT: usize = 100_000;

fn audit_started(key: &str, length: Duration) {
    tracing::warn!(target: "audit", %key, seconds = length.as_secs(), "lockout started");
}

fn audit_ended(key: &str) {
    tracing::warn!(target: "audit", %key, "lockout ended");
}

impl LockoutPolicy {
    /// The rules the in-process counters follow.
    fn rules(&self) -> Rules {
        Rules {
            window: Duration::from_secs(self.window_seconds),
            lockout: Duration::from_secs(self.lockout_seconds),
            max_lockout: Duration::from_secs(self.max_lockout_seconds),
        }
    }
}

/// The decisions' clock: tokio's, so paused-time tests drive it.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Failure counters and lockouts of this process.
#[derive(Debug, Default)]
pub struct LocalStore {
    entries: Mutex<HashMap<String, Counter>>,
}

impl LocalStore {
    fn is_locked(&self, keys: &[&str]) -> bool {
        let now = now();
        let Ok(mut entries) = self.entries.lock() else {
            return false;
        };
        let mut locked = false;
        for key in keys {
            if let Some(counter) = entries.get_mut(*key) {
                match counter.check(now) {
                    LockState::Locked => locked = true,
                    LockState::Ended => audit_ended(key),
                    LockState::Free => {}
                }
            }
        }
        locked
    }

    fn record_failure(&self, policy: &LockoutPolicy, key: &str, limit: u32) -> FailureOutcome {
        let now = now();
        let rules = policy.rules();
        let Ok(mut entries) = self.entries.lock() else {
            return FailureOutcome::Counted;
        };
        if entries.len() >= PRUNE_AT {
            entries.retain(|_, c| !c.is_stale(&rules, now));
        }
        let counter = entries
            .entry(key.to_owned())
            .or_insert_with(|| Counter::new(now));
        let outcome = counter.record_failure(&rules, now, limit);
        if let FailureOutcome::LockedFor(length) = outcome {
            audit_started(key, length);
        }
        outcome
    }

    fn record_success(&self, key: &str) {
        if let Ok(mut entries) = self.entries.lock()
            && let Some(counter) = entries.get_mut(key)
        {
            counter.record_success();
        }
    }
}

// The Redis hash of a key: f = failures in the window, ws = window start, lu = locked until
// (0: not locked), n = lockouts so far; times are the server's clock in milliseconds. Every
// write sets an expiry covering the lockout plus the longer of the window and the longest
// lockout, the same horizon the local store prunes at, so idle keys disappear.
const FAILURE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local base = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'f', 'ws', 'lu', 'n')
local f = tonumber(h[1]) or 0
local ws = tonumber(h[2]) or now
local lu = tonumber(h[3]) or 0
local n = tonumber(h[4]) or 0
if now - ws > window then
  f = 0
  ws = now
end
f = f + 1
local length = 0
if f >= limit and lu <= now then
  length = math.floor(math.min(base * (2 ^ math.min(n, 16)), cap))
  n = n + 1
  lu = now + length
  f = 0
end
redis.call('HSET', KEYS[1], 'f', f, 'ws', ws, 'lu', lu, 'n', n)
local keep = math.max(window, cap)
if lu > now then
  keep = keep + (lu - now)
end
redis.call('PEXPIRE', KEYS[1], keep)
return length
";

// Per key: 0 = not locked, 1 = locked, 2 = its lockout ran out and is ended now (exactly one
// replica sees 2, so the end is audited once).
const CHECK_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, k in ipairs(KEYS) do
  local lu = tonumber(redis.call('HGET', k, 'lu')) or 0
  if lu > now then
    out[i] = 1
  elseif lu > 0 then
    redis.call('HSET', k, 'lu', 0, 'f', 0, 'ws', now)
    out[i] = 2
  else
    out[i] = 0
  end
end
return out
";

const SUCCESS_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'f', 0)
end
return 0
";

/// First and longest pause before Redis is tried again after a failure.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

enum Link {
    Up(redis::aio::MultiplexedConnection),
    Down {
        retry_at: Instant,
        pause: Duration,
        /// Whether this outage was logged already.
        reported: bool,
    },
}

/// Failure counters and lockouts in Redis, shared by every replica.
pub struct RedisStore {
    client: redis::Client,
    /// Where Redis is, without credentials, for logs.
    target: String,
    prefix: String,
    timeout: Duration,
    link: tokio::sync::Mutex<Link>,
    fallbacks: AtomicU64,
    failure: redis::Script,
    check: redis::Script,
    success: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.target)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    fn new(client: redis::Client, prefix: String, timeout: Duration) -> Self {
        let info = client.get_connection_info();
        let target = format!("{} db {}", info.addr(), info.redis_settings().db());
        Self {
            client,
            target,
            prefix,
            timeout,
            // Connect on first use: the gateway starts (tracking locally) while Redis is down.
            link: tokio::sync::Mutex::new(Link::Down {
                retry_at: Instant::now(),
                pause: RETRY_FIRST,
                reported: false,
            }),
            fallbacks: AtomicU64::new(0),
            failure: redis::Script::new(FAILURE_SCRIPT),
            check: redis::Script::new(CHECK_SCRIPT),
            success: redis::Script::new(SUCCESS_SCRIPT),
        }
    }

    /// A connection, unless Redis failed recently (then the caller tracks locally at once).
    async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let mut link = self.link.lock().await;
        match &*link {
            Link::Up(conn) => return Some(conn.clone()),
            Link::Down { retry_at, .. } if Instant::now() < *retry_at => return None,
            Link::Down { .. } => {}
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let attempt = tokio::time::timeout(
            self.timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        match attempt {
            Ok(Ok(conn)) => {
                tracing::info!(target = %self.target, "lockout store: connected to Redis");
                *link = Link::Up(conn.clone());
                Some(conn)
            }
            Ok(Err(err)) => {
                self.mark_down(&mut link, &err.to_string());
                None
            }
            Err(_) => {
                self.mark_down(&mut link, "connection timed out");
                None
            }
        }
    }

    /// Records a failure; the first one of an outage is logged, later ones retry with back-off.
    fn mark_down(&self, link: &mut Link, why: &str) {
        let (pause, reported) = match link {
            Link::Up(_) => (RETRY_FIRST, false),
            Link::Down {
                pause, reported, ..
            } => (*pause, *reported),
        };
        if !reported {
            tracing::warn!(
                target = %self.target,
                reason = why,
                "lockout store: Redis unreachable; failed logins are tracked per process until it is back"
            );
        }
        *link = Link::Down {
            retry_at: Instant::now() + pause,
            pause: (pause * 2).min(RETRY_MAX),
            reported: true,
        };
    }

    /// Runs a script; `None` (and the connection dropped) when Redis failed.
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[&str],
        args: &[u64],
    ) -> Option<T> {
        let Some(mut conn) = self.connection().await else {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(format!("{}{key}", self.prefix));
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let result =
            tokio::time::timeout(self.timeout, invocation.invoke_async::<T>(&mut conn)).await;
        let why = match result {
            Ok(Ok(value)) => return Some(value),
            Ok(Err(err)) => err.to_string(),
            Err(_) => "command timed out".to_owned(),
        };
        let mut link = self.link.lock().await;
        if matches!(&*link, Link::Up(_)) {
            self.mark_down(&mut link, &why);
        }
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        None
    }

    async fn is_locked(&self, keys: &[&str]) -> Option<bool> {
        let states: Vec<u8> = self.run(&self.check, keys, &[]).await?;
        let mut locked = false;
        for (key, state) in keys.iter().zip(states) {
            match state {
                1 => locked = true,
                2 => audit_ended(key),
                _ => {}
            }
        }
        Some(locked)
    }

    async fn record_failure(
        &self,
        policy: &LockoutPolicy,
        key: &str,
        limit: u32,
    ) -> Option<FailureOutcome> {
        let ms = |s: u64| s.saturating_mul(1000);
        let length: u64 = self
            .run(
                &self.failure,
                &[key],
                &[
                    u64::from(limit.max(1)),
                    ms(policy.window_seconds),
                    ms(policy.lockout_seconds),
                    ms(policy.max_lockout_seconds),
                ],
            )
            .await?;
        if length == 0 {
            return Some(FailureOutcome::Counted);
        }
        let length = Duration::from_millis(length);
        audit_started(key, length);
        Some(FailureOutcome::LockedFor(length))
    }

    async fn record_success(&self, key: &str) {
        let _: Option<u8> = self.run(&self.success, &[key], &[]).await;
    }
}

/// Failure counters and lockouts: local, or shared through Redis with local as the fallback.
#[derive(Debug)]
pub struct Lockout {
    policy: LockoutPolicy,
    local: LocalStore,
    shared: Option<RedisStore>,
}

impl Lockout {
    /// Per-process tracking under `policy` (any Redis setting is ignored).
    pub fn new(policy: LockoutPolicy) -> Self {
        Self {
            policy,
            local: LocalStore::default(),
            shared: None,
        }
    }

    /// Tracking as configured: shared through Redis when a Redis URL is set (read from its file
    /// or variable now), else per process. Redis itself is contacted on first use.
    pub fn from_policy(policy: LockoutPolicy) -> Result<Self, LockoutSetupError> {
        let source = policy.redis_source().map_err(LockoutSetupError::Url)?;
        let shared = match LockoutPolicy::resolve_redis_url(source.as_ref())? {
            Some(url) => {
                let url = url.expose();
                if policy.redis_url.is_some() && url_has_password(url) {
                    tracing::warn!(
                        "auth.lockout.redis_url holds a password inline in the configuration file; prefer redis_url_file or redis_url_env"
                    );
                }
                let client = open_client(url)?;
                let store = RedisStore::new(
                    client,
                    policy.redis_key_prefix.clone(),
                    Duration::from_millis(policy.redis_timeout_ms.max(1)),
                );
                tracing::info!(target = %store.target, "lockout counters shared through Redis");
                Some(store)
            }
            None => None,
        };
        Ok(Self {
            policy,
            local: LocalStore::default(),
            shared,
        })
    }

    /// The key of a user (canonical name).
    pub fn user_key(name: &str) -> String {
        format!("user:{}", name.to_lowercase())
    }

    /// The key of a source address.
    pub fn source_key(ip: std::net::IpAddr) -> String {
        format!("ip:{ip}")
    }

    /// Whether any of `keys` is locked now. A lockout that has run out is ended (and audited).
    /// Local lockouts (from a Redis outage) still count while Redis is up.
    pub async fn is_locked(&self, keys: &[&str]) -> bool {
        let local = self.local.is_locked(keys);
        match &self.shared {
            Some(shared) => shared.is_locked(keys).await.unwrap_or(false) || local,
            None => local,
        }
    }

    /// Counts a failed login for `key` against `limit` failures per window.
    pub async fn record_failure(&self, key: &str, limit: u32) -> FailureOutcome {
        if let Some(shared) = &self.shared
            && let Some(outcome) = shared.record_failure(&self.policy, key, limit).await
        {
            return outcome;
        }
        self.local.record_failure(&self.policy, key, limit)
    }

    /// A successful login clears the user's failures (not its lockout history).
    pub async fn record_success(&self, key: &str) {
        if let Some(shared) = &self.shared {
            shared.record_success(key).await;
        }
        self.local.record_success(key);
    }

    /// The policy in force.
    pub fn policy(&self) -> &LockoutPolicy {
        &self.policy
    }

    /// Whether counters are shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Operations that fell back to local tracking because Redis failed (for metrics).
    pub fn shared_store_fallbacks(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.fallbacks.load(Ordering::Relaxed))
    }
}

/// Whether a Redis URL carries a password (`redis://:pw@host`, `redis://user:pw@host`, or
/// `?password=` on unix sockets).
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    authority.contains('@') || url.contains("password=")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LockoutPolicy {
        LockoutPolicy {
            max_failures: 3,
            max_failures_per_source: 10,
            window_seconds: 60,
            lockout_seconds: 30,
            max_lockout_seconds: 100,
            ..LockoutPolicy::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lockout_starts_at_the_limit_ends_by_itself_and_doubles() {
        let l = Lockout::new(policy());
        let k = Lockout::user_key("Alice@contoso.example");
        assert_eq!(l.record_failure(&k, 3).await, FailureOutcome::Counted);
        assert_eq!(l.record_failure(&k, 3).await, FailureOutcome::Counted);
        assert_eq!(
            l.record_failure(&k, 3).await,
            FailureOutcome::LockedFor(Duration::from_secs(30))
        );
        assert!(l.is_locked(&[&k]).await);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(l.is_locked(&[&k]).await);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!l.is_locked(&[&k]).await, "the lockout ends by itself");
        for _ in 0..2 {
            l.record_failure(&k, 3).await;
        }
        assert_eq!(
            l.record_failure(&k, 3).await,
            FailureOutcome::LockedFor(Duration::from_secs(60)),
            "doubles"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        for _ in 0..2 {
            l.record_failure(&k, 3).await;
        }
        assert_eq!(
            l.record_failure(&k, 3).await,
            FailureOutcome::LockedFor(Duration::from_secs(100)),
            "capped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_are_forgotten_and_success_clears() {
        let l = Lockout::new(policy());
        let k = Lockout::user_key("bob@contoso.example");
        l.record_failure(&k, 3).await;
        l.record_failure(&k, 3).await;
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(l.record_failure(&k, 3).await, FailureOutcome::Counted);
        l.record_success(&k).await;
        assert_eq!(l.record_failure(&k, 3).await, FailureOutcome::Counted);
        assert_eq!(l.record_failure(&k, 3).await, FailureOutcome::Counted);
        assert!(!l.is_locked(&[&k]).await);
    }

    #[tokio::test]
    async fn an_unreachable_redis_falls_back_to_local_tracking_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-redis.sock");
        let mut p = policy();
        p.redis_url = Some(RedisUrl::new(format!("unix://{}", missing.display())));
        let l = Lockout::from_policy(p).unwrap();
        assert!(l.is_shared());
        let k = Lockout::user_key("carol@contoso.example");
        assert!(!l.is_locked(&[&k]).await, "fail open: not locked");
        assert_eq!(l.record_failure(&k, 3).await, FailureOutcome::Counted);
        assert_eq!(l.record_failure(&k, 3).await, FailureOutcome::Counted);
        assert_eq!(
            l.record_failure(&k, 3).await,
            FailureOutcome::LockedFor(Duration::from_secs(30)),
            "local tracking still locks"
        );
        assert!(l.is_locked(&[&k]).await);
        assert!(
            !l.is_locked(&[&Lockout::user_key("dave@contoso.example")])
                .await,
            "other users are not refused"
        );
        assert!(
            l.shared_store_fallbacks() >= 5,
            "{}",
            l.shared_store_fallbacks()
        );
    }

    #[test]
    fn redis_settings_are_validated_without_quoting_the_url() {
        let mut p = policy();
        p.redis_url = Some(RedisUrl::new("rediss://:hunter2@redis.example:6380".into()));
        let problems = p.problems().join("\n");
        assert!(problems.contains("TLS"), "{problems}");
        assert!(!problems.contains("hunter2"), "{problems}");
        p.redis_url = Some(RedisUrl::new("http://:hunter2@redis.example".into()));
        let problems = p.problems().join("\n");
        assert!(problems.contains("scheme"), "{problems}");
        assert!(!problems.contains("hunter2"), "{problems}");
        p.redis_url_env = Some("EWS_GATEWAY_TEST_UNSET_REDIS_URL".into());
        assert!(p.problems().join("\n").contains("at most one"));
        p.redis_url = None;
        assert!(p.problems().join("\n").contains("is not set"));
        p.redis_url_env = None;
        p.redis_url_file = Some("/nonexistent/redis-url".into());
        assert!(p.problems().join("\n").contains("redis_url_file"));
        p.redis_url_file = None;
        p.redis_url = Some(RedisUrl::new("redis://:pw@127.0.0.1:6379/2".into()));
        assert!(p.problems().is_empty(), "{:?}", p.problems());
        assert_eq!(format!("{:?}", p.redis_url), "Some(RedisUrl(..))");
        assert!(url_has_password("redis://:pw@127.0.0.1:6379/2"));
        assert!(url_has_password("unix:///run/redis.sock?password=pw"));
        assert!(!url_has_password("redis://127.0.0.1:6379/0"));
        assert!(!url_has_password("redis+unix:///run/redis/redis.sock?db=1"));
    }
}
