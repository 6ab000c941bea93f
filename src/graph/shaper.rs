//! The one point where a Graph call waits for a per-mailbox permit.
//!
//! Graph allows 4 concurrent requests per app and mailbox; a call over it is answered 429. The
//! [`Shaper`] trait is the seam for the shared (Redis-backed) shaper; [`LocalShaper`] is the
//! in-process default: a semaphore of 4 per mailbox and a pause after a 429.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::GraphError;

/// A held permit; dropping it releases the slot.
pub type Permit = Box<dyn Send + Sync>;

/// What kind of call asks for a permit (uploads also spend the upload byte budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// A request without a large body.
    Request,
    /// An upload chunk of this many bytes.
    Upload(u64),
}

/// Per-mailbox traffic shaping in front of Graph.
pub trait Shaper: Send + Sync {
    /// Waits for a permit for one call to `mailbox`, at most until `deadline`.
    fn acquire(
        &self,
        mailbox: &str,
        kind: CallKind,
        deadline: Instant,
    ) -> impl std::future::Future<Output = Result<Permit, GraphError>> + Send;

    /// Graph answered 429 for `mailbox`: pause its queue for `retry_after`.
    fn throttled(&self, mailbox: &str, retry_after: Duration);
}

impl<S: Shaper> Shaper for Arc<S> {
    fn acquire(
        &self,
        mailbox: &str,
        kind: CallKind,
        deadline: Instant,
    ) -> impl std::future::Future<Output = Result<Permit, GraphError>> + Send {
        (**self).acquire(mailbox, kind, deadline)
    }

    fn throttled(&self, mailbox: &str, retry_after: Duration) {
        (**self).throttled(mailbox, retry_after);
    }
}

/// The in-process default: at most `per_mailbox` calls in flight per mailbox.
pub struct LocalShaper {
    per_mailbox: usize,
    slots: moka::sync::Cache<String, Arc<Semaphore>>,
    paused: moka::sync::Cache<String, Instant>,
}

impl LocalShaper {
    /// A shaper allowing `per_mailbox` concurrent calls (Graph's limit is 4).
    pub fn new(per_mailbox: usize) -> Self {
        Self {
            per_mailbox: per_mailbox.max(1),
            slots: moka::sync::Cache::builder()
                .time_to_idle(Duration::from_secs(600))
                .build(),
            paused: moka::sync::Cache::builder()
                .time_to_live(Duration::from_secs(600))
                .build(),
        }
    }
}

impl Default for LocalShaper {
    fn default() -> Self {
        Self::new(4)
    }
}

struct Held(#[allow(dead_code)] OwnedSemaphorePermit);

impl Shaper for LocalShaper {
    async fn acquire(
        &self,
        mailbox: &str,
        _kind: CallKind,
        deadline: Instant,
    ) -> Result<Permit, GraphError> {
        let key = mailbox.to_ascii_lowercase();
        if let Some(until) = self.paused.get(&key)
            && until > Instant::now()
        {
            if until > deadline {
                return Err(GraphError::Busy {
                    retry_after: until - Instant::now(),
                });
            }
            tokio::time::sleep_until(until).await;
        }
        let sem = self
            .slots
            .get_with(key, || Arc::new(Semaphore::new(self.per_mailbox)));
        match tokio::time::timeout_at(deadline, sem.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Box::new(Held(permit))),
            _ => Err(GraphError::Busy {
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    fn throttled(&self, mailbox: &str, retry_after: Duration) {
        self.paused
            .insert(mailbox.to_ascii_lowercase(), Instant::now() + retry_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn four_in_flight_per_mailbox_then_wait_until_deadline() {
        let s = LocalShaper::default();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(s.acquire("a@x", CallKind::Request, deadline).await.unwrap());
        }
        // Another mailbox is not affected.
        let _other = s.acquire("b@x", CallKind::Request, deadline).await.unwrap();
        let fifth = s.acquire("A@x", CallKind::Request, deadline).await;
        assert!(matches!(fifth, Err(GraphError::Busy { .. })));
        held.pop();
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(s.acquire("a@x", CallKind::Request, deadline).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_the_mailbox() {
        let s = LocalShaper::default();
        s.throttled("a@x", Duration::from_secs(30));
        let soon = Instant::now() + Duration::from_secs(5);
        assert!(matches!(
            s.acquire("a@x", CallKind::Request, soon).await,
            Err(GraphError::Busy { .. })
        ));
        let later = Instant::now() + Duration::from_secs(60);
        let start = Instant::now();
        assert!(s.acquire("a@x", CallKind::Request, later).await.is_ok());
        assert!(Instant::now() - start >= Duration::from_secs(29));
    }
}
