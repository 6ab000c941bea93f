//! Lockout decisions: failures of one key (a user or a source address) within a window start a
//! lockout, and each repeat doubles its length up to a ceiling.
//!
//! Pure state and arithmetic; the caller supplies the time (the gateway passes tokio's clock, so
//! tests can pause it) and keeps the counters (in process or in Redis, which runs the same rules
//! as a Lua script).

use std::time::{Duration, Instant};

/// The numbers a lockout follows (`[auth.lockout]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Failures count towards a lockout within this window.
    pub window: Duration,
    /// The first lockout's length.
    pub lockout: Duration,
    /// The longest lockout.
    pub max_lockout: Duration,
}

impl Rules {
    /// The length of the lockout that follows `lockouts` earlier ones.
    pub fn lockout_length(&self, lockouts: u32) -> Duration {
        let factor = 1u32 << lockouts.min(16);
        self.lockout.saturating_mul(factor).min(self.max_lockout)
    }
}

/// What a failure led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Counted; no lockout yet.
    Counted,
    /// A lockout of this length started now.
    LockedFor(Duration),
}

/// Whether a key is locked now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// Not locked.
    Free,
    /// Locked.
    Locked,
    /// Its lockout ran out just now (the caller audits the end); free again.
    Ended,
}

/// The failure counter and lockout state of one key.
#[derive(Debug, Clone)]
pub struct Counter {
    failures: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
    lockouts: u32,
}

impl Counter {
    /// A key seen for the first time at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            failures: 0,
            window_start: now,
            locked_until: None,
            lockouts: 0,
        }
    }

    /// Whether the key is locked at `now`; a lockout that has run out is ended here.
    pub fn check(&mut self, now: Instant) -> LockState {
        match self.locked_until {
            Some(until) if now < until => LockState::Locked,
            Some(_) => {
                self.locked_until = None;
                self.failures = 0;
                self.window_start = now;
                LockState::Ended
            }
            None => LockState::Free,
        }
    }

    /// Counts a failure at `now` against `limit` failures per window.
    pub fn record_failure(&mut self, rules: &Rules, now: Instant, limit: u32) -> FailureOutcome {
        if now.saturating_duration_since(self.window_start) > rules.window {
            self.failures = 0;
            self.window_start = now;
        }
        self.failures += 1;
        if self.failures >= limit.max(1) && self.locked_until.is_none_or(|u| u <= now) {
            let length = rules.lockout_length(self.lockouts);
            self.lockouts += 1;
            self.locked_until = Some(now + length);
            self.failures = 0;
            return FailureOutcome::LockedFor(length);
        }
        FailureOutcome::Counted
    }

    /// A success clears the failures (not the lockout history).
    pub fn record_success(&mut self) {
        self.failures = 0;
    }

    /// Whether the counter can be forgotten at `now` without changing any decision.
    pub fn is_stale(&self, rules: &Rules, now: Instant) -> bool {
        !(self.locked_until.is_some_and(|u| u > now)
            || now.saturating_duration_since(self.window_start)
                < rules.window.max(rules.max_lockout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(30),
            max_lockout: Duration::from_secs(100),
        }
    }

    #[test]
    fn lockouts_double_up_to_the_ceiling() {
        let r = rules();
        assert_eq!(r.lockout_length(0), Duration::from_secs(30));
        assert_eq!(r.lockout_length(1), Duration::from_secs(60));
        assert_eq!(r.lockout_length(2), Duration::from_secs(100));
        assert_eq!(r.lockout_length(40), Duration::from_secs(100));
    }

    #[test]
    fn the_limit_within_the_window_locks_and_the_lock_ends() {
        let r = rules();
        let t0 = Instant::now();
        let mut c = Counter::new(t0);
        assert_eq!(c.record_failure(&r, t0, 2), FailureOutcome::Counted);
        assert_eq!(
            c.record_failure(&r, t0, 2),
            FailureOutcome::LockedFor(Duration::from_secs(30))
        );
        assert_eq!(c.check(t0 + Duration::from_secs(29)), LockState::Locked);
        assert_eq!(c.check(t0 + Duration::from_secs(31)), LockState::Ended);
        assert_eq!(c.check(t0 + Duration::from_secs(31)), LockState::Free);
        // Failures outside the window start counting afresh.
        let t1 = t0 + Duration::from_secs(40);
        assert_eq!(c.record_failure(&r, t1, 2), FailureOutcome::Counted);
        assert_eq!(
            c.record_failure(&r, t1 + Duration::from_secs(61), 2),
            FailureOutcome::Counted
        );
    }
}
