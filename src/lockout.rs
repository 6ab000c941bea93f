//! Slowing down password guessing: failure tracking per user and per source address, with
//! temporary lockouts that double with each repeat.
//!
//! A locked user or source is answered exactly like a wrong password (the proxy still spends a
//! dummy hash, so timing matches), and unknown users are tracked like real ones, so nothing
//! reveals whether an account exists or is locked. Requests without credentials are challenges,
//! not failures (DavMail sends every call unauthenticated first). Free of hyper types; time is
//! tokio's, so tests can pause it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// Lockout settings (`[auth.lockout]`).
#[derive(Debug, Clone, Deserialize)]
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
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        Self {
            max_failures: 5,
            max_failures_per_source: 30,
            window_seconds: 300,
            lockout_seconds: 60,
            max_lockout_seconds: 3600,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
    lockouts: u32,
}

/// What a failure led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Counted; no lockout yet.
    Counted,
    /// A lockout of this length started now.
    LockedFor(Duration),
}

/// Failure counters and lockouts.
#[derive(Debug)]
pub struct Lockout {
    policy: LockoutPolicy,
    entries: Mutex<HashMap<String, Entry>>,
    /// Whether any failure was ever recorded: until then the map is empty and the hot path of a
    /// successful login takes no lock.
    any: AtomicBool,
}

/// Entries kept before stale ones are pruned (bounds memory under a spray of user names).
const PRUNE_AT: usize = 100_000;

impl Lockout {
    /// Tracking under `policy`.
    pub fn new(policy: LockoutPolicy) -> Self {
        Self {
            policy,
            entries: Mutex::new(HashMap::new()),
            any: AtomicBool::new(false),
        }
    }

    /// The key of a user (canonical name).
    pub fn user_key(name: &str) -> String {
        format!("user:{}", name.to_lowercase())
    }

    /// The key of a source address.
    pub fn source_key(ip: std::net::IpAddr) -> String {
        format!("ip:{ip}")
    }

    /// Whether any failure was ever recorded; until then no key is locked and there is nothing
    /// to reset, so callers may skip building keys.
    pub fn is_tracking(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// Whether any of `keys` is locked now. A lockout that has run out is ended (and audited).
    pub fn is_locked(&self, keys: &[&str]) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let now = Instant::now();
        let Ok(mut entries) = self.entries.lock() else {
            return false;
        };
        let mut locked = false;
        for key in keys {
            if let Some(e) = entries.get_mut(*key)
                && let Some(until) = e.locked_until
            {
                if now < until {
                    locked = true;
                } else {
                    e.locked_until = None;
                    e.failures = 0;
                    e.window_start = now;
                    tracing::warn!(target: "audit", %key, "lockout ended");
                }
            }
        }
        locked
    }

    /// Counts a failed login for `key` against `limit` failures per window.
    pub fn record_failure(&self, key: &str, limit: u32) -> FailureOutcome {
        let now = Instant::now();
        let window = Duration::from_secs(self.policy.window_seconds);
        let Ok(mut entries) = self.entries.lock() else {
            return FailureOutcome::Counted;
        };
        if entries.len() >= PRUNE_AT {
            let max_lock = Duration::from_secs(self.policy.max_lockout_seconds);
            entries.retain(|_, e| {
                e.locked_until.is_some_and(|u| u > now)
                    || now.duration_since(e.window_start) < window.max(max_lock)
            });
        }
        // Set under the lock, before the entry can be seen: entries are never all removed again
        // (pruning is followed by this insert).
        self.any.store(true, Ordering::Release);
        let e = entries.entry(key.to_owned()).or_insert(Entry {
            failures: 0,
            window_start: now,
            locked_until: None,
            lockouts: 0,
        });
        if now.duration_since(e.window_start) > window {
            e.failures = 0;
            e.window_start = now;
        }
        e.failures += 1;
        if e.failures >= limit.max(1) && e.locked_until.is_none_or(|u| u <= now) {
            let factor = 1u64 << e.lockouts.min(16);
            let length = Duration::from_secs(
                self.policy
                    .lockout_seconds
                    .saturating_mul(factor)
                    .min(self.policy.max_lockout_seconds),
            );
            e.lockouts += 1;
            e.locked_until = Some(now + length);
            e.failures = 0;
            tracing::warn!(target: "audit", %key, seconds = length.as_secs(), "lockout started");
            return FailureOutcome::LockedFor(length);
        }
        FailureOutcome::Counted
    }

    /// A successful login clears the user's failures (not its lockout history).
    pub fn record_success(&self, key: &str) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut entries) = self.entries.lock()
            && let Some(e) = entries.get_mut(key)
        {
            e.failures = 0;
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &LockoutPolicy {
        &self.policy
    }
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
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lockout_starts_at_the_limit_ends_by_itself_and_doubles() {
        let l = Lockout::new(policy());
        let k = Lockout::user_key("Alice@contoso.example");
        assert_eq!(l.record_failure(&k, 3), FailureOutcome::Counted);
        assert_eq!(l.record_failure(&k, 3), FailureOutcome::Counted);
        assert_eq!(
            l.record_failure(&k, 3),
            FailureOutcome::LockedFor(Duration::from_secs(30))
        );
        assert!(l.is_locked(&[&k]));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(l.is_locked(&[&k]));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!l.is_locked(&[&k]), "the lockout ends by itself");
        for _ in 0..2 {
            l.record_failure(&k, 3);
        }
        assert_eq!(
            l.record_failure(&k, 3),
            FailureOutcome::LockedFor(Duration::from_secs(60)),
            "doubles"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        for _ in 0..2 {
            l.record_failure(&k, 3);
        }
        assert_eq!(
            l.record_failure(&k, 3),
            FailureOutcome::LockedFor(Duration::from_secs(100)),
            "capped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_are_forgotten_and_success_clears() {
        let l = Lockout::new(policy());
        let k = Lockout::user_key("bob@contoso.example");
        l.record_failure(&k, 3);
        l.record_failure(&k, 3);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(l.record_failure(&k, 3), FailureOutcome::Counted);
        l.record_success(&k);
        assert_eq!(l.record_failure(&k, 3), FailureOutcome::Counted);
        assert_eq!(l.record_failure(&k, 3), FailureOutcome::Counted);
        assert!(!l.is_locked(&[&k]));
    }
}
