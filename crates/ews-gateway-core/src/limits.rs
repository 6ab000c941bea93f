//! Caps that protect the tenant from one runaway client: concurrent requests per acted-as
//! mailbox (Exchange Online allows 27 concurrent connections per mailbox and throttles the whole
//! app beyond that) and a request rate per principal (a client retrying errors in a tight loop).
//!
//! Both answer at once, without queueing, with `ErrorServerBusy` and a back-off the client
//! libraries honour. Free of hyper types.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// In-flight requests per mailbox, counted until each response body ends (a streaming
/// subscription holds its slot for as long as it streams, as it does in Exchange).
#[derive(Debug)]
pub struct MailboxSlots {
    max: usize,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

/// One in-flight request's slot; released when dropped.
#[derive(Debug)]
pub struct MailboxSlot {
    mailbox: String,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

impl MailboxSlots {
    /// At most `max` concurrent requests per mailbox; 0 means no cap.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            in_flight: Arc::default(),
        }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes a slot for `mailbox`, or `None` when it already has `max` requests in flight.
    pub fn try_acquire(&self, mailbox: &str) -> Option<MailboxSlot> {
        let key = mailbox.to_ascii_lowercase();
        let mut map = self.in_flight.lock().ok()?;
        let count = map.entry(key.clone()).or_insert(0);
        if self.max != 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(MailboxSlot {
            mailbox: key,
            in_flight: Arc::clone(&self.in_flight),
        })
    }

    /// Requests in flight for `mailbox`.
    pub fn in_flight(&self, mailbox: &str) -> usize {
        self.in_flight
            .lock()
            .ok()
            .and_then(|m| m.get(&mailbox.to_ascii_lowercase()).copied())
            .unwrap_or(0)
    }

    /// Mailboxes with a request in flight (the map never holds idle mailboxes).
    pub fn tracked(&self) -> usize {
        self.in_flight.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl Drop for MailboxSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.in_flight.lock()
            && let Some(count) = map.get_mut(&self.mailbox)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.mailbox);
            }
        }
    }
}

/// Requests per second per principal, with a burst.
pub struct PrincipalRate {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for PrincipalRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrincipalRate")
            .field("enabled", &self.limiter.is_some())
            .finish()
    }
}

impl PrincipalRate {
    /// `per_second` requests per second with bursts of `burst`; `per_second == 0` disables it.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self { limiter }
    }

    /// A quota counted per minute (tests and very slow clients).
    pub fn per_minute(per_minute: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_minute).map(|rate| {
            let burst = NonZeroU32::new(burst.max(1)).unwrap_or(rate);
            DefaultKeyedRateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst))
        });
        Self { limiter }
    }

    /// Counts one request of `principal`; `Err(wait)` when it is over its rate.
    pub fn check(&self, principal: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&principal.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets principals whose bucket is full again, so the map stays bounded by the active ones.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_slots_cap_and_release() {
        let slots = MailboxSlots::new(2);
        let a = slots.try_acquire("Alice@x.example").unwrap();
        let b = slots.try_acquire("alice@x.example").unwrap();
        assert!(
            slots.try_acquire("ALICE@x.example").is_none(),
            "case-insensitive key"
        );
        let other = slots.try_acquire("bob@x.example");
        assert!(other.is_some(), "another mailbox has its own slots");
        drop(a);
        assert_eq!(slots.in_flight("alice@x.example"), 1);
        let c = slots.try_acquire("alice@x.example");
        assert!(c.is_some());
        drop((b, c, other));
        assert_eq!(slots.tracked(), 0, "idle mailboxes leave the map");
    }

    #[test]
    fn zero_means_unlimited() {
        let slots = MailboxSlots::new(0);
        let held: Vec<_> = (0..100).map(|_| slots.try_acquire("a@x.example")).collect();
        assert!(held.iter().all(Option::is_some));
        assert!(PrincipalRate::new(0, 0).check("a").is_ok());
    }

    #[test]
    fn principal_rate_allows_the_burst_then_says_how_long_to_wait() {
        let rate = PrincipalRate::per_minute(3, 3);
        for _ in 0..3 {
            assert!(rate.check("alice").is_ok());
        }
        let wait = rate.check("alice").unwrap_err();
        assert!(
            wait > Duration::from_secs(1) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(rate.check("bob").is_ok(), "principals are counted apart");
    }
}
