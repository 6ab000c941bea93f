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

/// The gateway's Graph traffic shaper (`[graph.shaping]`, shared through Redis when configured)
/// for one app: Graph's limits count per app and mailbox.
pub struct ConfiguredShaper {
    shaper: Arc<crate::graph_shaping::Shaper>,
    app: String,
}

impl ConfiguredShaper {
    /// `shaper` acting for the app with client id `app`.
    pub fn new(shaper: Arc<crate::graph_shaping::Shaper>, app: impl Into<String>) -> Self {
        Self {
            shaper,
            app: app.into(),
        }
    }
}

impl Shaper for ConfiguredShaper {
    async fn acquire(
        &self,
        mailbox: &str,
        kind: CallKind,
        deadline: Instant,
    ) -> Result<Permit, GraphError> {
        let kind = match kind {
            CallKind::Request => crate::graph_shaping::Kind::Call,
            CallKind::Upload(bytes) => crate::graph_shaping::Kind::Upload { bytes },
        };
        match self
            .shaper
            .acquire(&self.app, mailbox, kind, deadline)
            .await
        {
            Ok(permit) => Ok(Box::new(permit)),
            Err(busy) => Err(GraphError::Busy {
                retry_after: busy.back_off,
            }),
        }
    }

    fn throttled(&self, mailbox: &str, retry_after: Duration) {
        // Synchronous seam: the shaper records the pause (and shares it) on its own task.
        self.shaper
            .throttled_in_background(&self.app, mailbox, retry_after);
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
    async fn the_configured_shaper_maps_kinds_busy_and_throttles() {
        let policy = crate::graph_shaping::ShapingPolicy {
            max_in_flight: 1,
            upload_bytes_per_window: 1000,
            ..Default::default()
        };
        let s = ConfiguredShaper::new(Arc::new(crate::graph_shaping::Shaper::local(policy)), "app");
        let soon = Instant::now() + Duration::from_millis(50);
        // Upload bytes are charged to the upload budget: past it the call is refused as Busy.
        let p = s.acquire("a@x", CallKind::Upload(900), soon).await.unwrap();
        drop(p);
        assert!(matches!(
            s.acquire("a@x", CallKind::Upload(900), soon).await,
            Err(GraphError::Busy { .. })
        ));
        // One in flight: a second call waits past its deadline and is answered Busy.
        let held = s.acquire("b@x", CallKind::Request, soon).await.unwrap();
        let busy = s.acquire("b@x", CallKind::Request, soon).await;
        assert!(matches!(busy, Err(GraphError::Busy { retry_after }) if !retry_after.is_zero()));
        drop(held);
        // A 429 pauses the mailbox: a call with a short deadline is refused.
        s.throttled("c@x", Duration::from_secs(30));
        tokio::task::yield_now().await;
        let later = Instant::now() + Duration::from_secs(1);
        assert!(matches!(
            s.acquire("c@x", CallKind::Request, later).await,
            Err(GraphError::Busy { .. })
        ));
    }

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
