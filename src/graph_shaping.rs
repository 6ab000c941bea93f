//! Shaping of the gateway's Microsoft Graph traffic per mailbox, to Graph's Outlook limits.
//!
//! Graph allows an app 4 concurrent requests per mailbox, 10,000 requests per 10 minutes and
//! 150 MB of upload per 5 minutes, and answers 429 beyond them (reference notes §5). EWS clients
//! expect none of that, so every Graph call the translation backend makes first takes a
//! [`Permit`] from the [`Shaper`]:
//!
//! - at most `max_in_flight` permits per app and mailbox (or per app, see [`ShapingScope`]),
//!   granted in arrival order;
//! - a request budget and an upload-byte budget per sliding window (two fixed windows weighted,
//!   as Graph does not document its own algorithm);
//! - a pause of the whole queue after Graph answered 429 ([`Shaper::throttled`]).
//!
//! A caller that cannot get its permit before its deadline is told so at once ([`Busy`], which
//! becomes the `ErrorServerBusy` fault with `BackOffMilliseconds`), instead of waiting in vain or
//! letting Graph refuse it. Permits are released on drop, which includes a cancelled request.
//!
//! With Redis (the one `[auth.lockout]` names) the semaphore, the queue, the budgets and the
//! pause live in Redis, shared by every replica: each change is one Lua script on the server's
//! clock, permits are leases renewed while held (a crashed replica's lease runs out), and waiters
//! that stop polling leave the queue. When Redis fails the shaper falls back to shaping in this
//! process (logged once per outage, counted in a metric) and retries Redis with a back-off.
//! Time is tokio's, so the local shaper is tested with paused time.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::error::GatewayError;

/// Queue waits of granted permits (histogram, seconds).
pub const QUEUE_WAIT: &str = "ews_gateway_graph_queue_wait_seconds";
/// Calls answered `ErrorServerBusy` by the shaper, by reason.
pub const BUSY: &str = "ews_gateway_graph_busy_total";
/// Graph 429 answers reported to the shaper.
pub const GRAPH_THROTTLED: &str = "ews_gateway_graph_throttled_total";
/// Shaper operations that fell back to this process because Redis failed.
pub const REDIS_FALLBACKS: &str = "ews_gateway_graph_shaper_redis_fallbacks_total";
/// Graph permits held by this process.
pub const IN_FLIGHT: &str = "ews_gateway_graph_in_flight";

/// Describes the shaper's metrics to the recorder.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time Graph calls waited in their mailbox's queue."
    );
    describe_counter!(
        BUSY,
        "Graph calls answered ErrorServerBusy by the shaper, by reason."
    );
    describe_counter!(GRAPH_THROTTLED, "HTTP 429 answers from Microsoft Graph.");
    describe_counter!(
        REDIS_FALLBACKS,
        "Graph shaper operations done per process because Redis failed."
    );
    describe_gauge!(IN_FLIGHT, "Graph calls in flight from this process.");
}

/// What the concurrency limit counts: Graph's throttling page says per app and mailbox, one
/// revision says per app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShapingScope {
    /// Each mailbox has its own queue (the default).
    Mailbox,
    /// One queue per app for all its mailboxes.
    App,
}

/// `[graph.shaping]`: how Graph traffic is shaped.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShapingPolicy {
    /// Concurrent Graph requests per app and mailbox, 1 to 4 (Graph refuses a fifth).
    pub max_in_flight: u32,
    /// What `max_in_flight` counts.
    pub scope: ShapingScope,
    /// Requests per window per app and mailbox.
    pub requests_per_window: u64,
    /// The request window, seconds.
    pub request_window_seconds: u64,
    /// Upload bytes (request bodies of uploads) per window per app and mailbox.
    pub upload_bytes_per_window: u64,
    /// The upload window, seconds.
    pub upload_window_seconds: u64,
    /// How long an EWS request may wait for Graph in all, seconds; a queue that cannot serve it
    /// within this is answered `ErrorServerBusy` at once.
    pub deadline_seconds: u64,
    /// Share the queue through the Redis of `[auth.lockout]` when one is set.
    pub shared: bool,
    /// Prefix of every Redis key the shaper writes.
    pub redis_key_prefix: String,
    /// Longest wait for one Redis connection or command, milliseconds; past it the call is
    /// shaped in this process.
    pub redis_timeout_ms: u64,
    /// Lease of a permit in Redis, milliseconds; renewed while held, so it only runs out when
    /// the replica holding it died.
    pub redis_lease_ms: u64,
}

impl Default for ShapingPolicy {
    fn default() -> Self {
        Self {
            max_in_flight: 4,
            scope: ShapingScope::Mailbox,
            requests_per_window: 10_000,
            request_window_seconds: 600,
            // Graph says "150 MB"; the decimal reading is the smaller one.
            upload_bytes_per_window: 150_000_000,
            upload_window_seconds: 300,
            deadline_seconds: 25,
            shared: true,
            redis_key_prefix: "ews-gateway:graph:".to_owned(),
            redis_timeout_ms: 250,
            redis_lease_ms: 15_000,
        }
    }
}

impl ShapingPolicy {
    /// Problems with these settings, for `Config::validate`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=4).contains(&self.max_in_flight) {
            problems.push(
                "graph.shaping.max_in_flight: 1 to 4 (Graph allows 4 concurrent requests per mailbox)"
                    .to_owned(),
            );
        }
        for (key, value) in [
            ("requests_per_window", self.requests_per_window),
            ("request_window_seconds", self.request_window_seconds),
            ("upload_bytes_per_window", self.upload_bytes_per_window),
            ("upload_window_seconds", self.upload_window_seconds),
            ("deadline_seconds", self.deadline_seconds),
            ("redis_timeout_ms", self.redis_timeout_ms),
        ] {
            if value == 0 {
                problems.push(format!("graph.shaping.{key}: at least 1"));
            }
        }
        if self.redis_lease_ms < 1000 {
            problems.push("graph.shaping.redis_lease_ms: at least 1000".to_owned());
        }
        problems
    }

    /// The deadline of a request that starts now.
    pub fn deadline_from_now(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.deadline_seconds)
    }
}

/// What a Graph call costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A call without an upload body (GET, DELETE, small JSON POST/PATCH).
    Call,
    /// A call that uploads `bytes` (a MIME or JSON message, an attachment, an upload chunk).
    Upload {
        /// Request body size.
        bytes: u64,
    },
}

impl Kind {
    fn bytes(self) -> u64 {
        match self {
            Self::Call => 0,
            Self::Upload { bytes } => bytes,
        }
    }
}

/// Why the shaper refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyReason {
    /// The mailbox's queue cannot reach this call before its deadline.
    Queue,
    /// Graph answered 429 and the mailbox is paused for longer than the deadline allows.
    Paused,
    /// The request budget is spent for longer than the deadline allows.
    RequestBudget,
    /// The upload budget is spent for longer than the deadline allows.
    UploadBudget,
}

impl BusyReason {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::Paused => "paused",
            Self::RequestBudget => "request_budget",
            Self::UploadBudget => "upload_budget",
        }
    }
}

/// The call cannot be served before its deadline; the client should retry after `back_off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Microsoft Graph limits for this mailbox: {} (retry after {} ms)", .reason.label(), .back_off.as_millis())]
pub struct Busy {
    /// What the client is told to wait.
    pub back_off: Duration,
    /// Which limit.
    pub reason: BusyReason,
}

impl From<Busy> for GatewayError {
    fn from(busy: Busy) -> Self {
        let message = match busy.reason {
            BusyReason::Queue => {
                "the mailbox has too many Microsoft Graph requests queued to serve this one in time"
            }
            BusyReason::Paused => "Microsoft Graph is throttling this mailbox",
            BusyReason::RequestBudget => {
                "the mailbox has used its Microsoft Graph request budget for now"
            }
            BusyReason::UploadBudget => {
                "the mailbox has used its Microsoft Graph upload budget for now"
            }
        };
        GatewayError::Throttled {
            message: message.to_owned(),
            retry_after: busy.back_off,
        }
    }
}

/// Shortest back-off given to a client (Retry-After counts whole seconds).
const MIN_BACK_OFF: Duration = Duration::from_secs(1);
/// A call's expected hold time before any was measured.
const DEFAULT_HOLD: Duration = Duration::from_millis(500);
/// Shortest and longest hold time a measurement counts as (a long download says little about
/// the queue; a floor keeps waiters from polling in a tight loop).
const MIN_HOLD_SAMPLE: Duration = Duration::from_millis(10);
const MAX_HOLD_SAMPLE: Duration = Duration::from_secs(30);
/// Longest pause a Graph `Retry-After` can impose.
const MAX_PAUSE: Duration = Duration::from_secs(600);
/// First and longest pause between polls of Redis while queued.
const POLL_FIRST: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(100);
/// A Redis waiter that has not polled for this long leaves the queue.
const WAITER_LIVENESS: Duration = Duration::from_secs(3);
/// Local entries kept before idle ones are pruned.
const PRUNE_AT: usize = 10_000;

/// The answer of one attempt to take a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Granted,
    Paused(Duration),
    RequestBudget(Duration),
    UploadBudget(Duration),
    /// `turns` permits must be released before this waiter's turn.
    Queued {
        turns: u64,
    },
}

/// A sliding window approximated by two fixed ones: the previous window's count weighted by
/// how much of it still overlaps, plus the current one's.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    index: u64,
    current: u64,
    previous: u64,
}

impl Window {
    fn roll(&mut self, now_ms: u64, window_ms: u64) -> u64 {
        let index = now_ms / window_ms;
        if index == self.index + 1 {
            self.previous = self.current;
            self.current = 0;
        } else if index != self.index {
            self.previous = 0;
            self.current = 0;
        }
        self.index = index;
        now_ms - index * window_ms
    }

    /// Zero when `cost` fits now, else the milliseconds until it does.
    fn wait_ms(&mut self, now_ms: u64, window_ms: u64, limit: u64, cost: u64) -> u64 {
        let elapsed = self.roll(now_ms, window_ms);
        budget_wait_ms(self.previous, self.current, elapsed, window_ms, limit, cost)
    }
}

/// The arithmetic of [`Window::wait_ms`], mirrored by `ACQUIRE_SCRIPT` for Redis.
fn budget_wait_ms(
    previous: u64,
    current: u64,
    elapsed: u64,
    window: u64,
    limit: u64,
    cost: u64,
) -> u64 {
    let (p, c, e, w, l) = (
        previous as f64,
        current as f64,
        elapsed as f64,
        window as f64,
        limit as f64,
    );
    // A single cost above the limit could never pass; it waits for an empty window instead.
    let cost = cost.min(limit) as f64;
    if p * (w - e) / w + c + cost <= l {
        return 0;
    }
    let wait = if c + cost <= l {
        // The previous window's weight must fall far enough.
        w - w * (l - c - cost) / p - e
    } else {
        // The current window must roll over and then fade far enough.
        (w - e) + (w - w * (l - cost) / c).max(0.0)
    };
    (wait.ceil() as u64).max(1)
}

/// Which queue a call belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    app: String,
    /// Lower-case mailbox, or `*` with per-app scope.
    mailbox: String,
}

#[derive(Debug)]
struct Entry {
    in_flight: u32,
    queue: VecDeque<u64>,
    paused_until: Option<Instant>,
    requests: Window,
    uploads: Window,
    avg_hold: Duration,
    /// When a permit was last granted (milliseconds since the epoch), to prune idle entries.
    last_grant_ms: u64,
    /// Woken when a permit of this key is released or a waiter leaves.
    notify: Arc<Notify>,
}

impl Entry {
    fn new() -> Self {
        Self {
            in_flight: 0,
            queue: VecDeque::new(),
            paused_until: None,
            requests: Window::default(),
            uploads: Window::default(),
            avg_hold: DEFAULT_HOLD,
            last_grant_ms: 0,
            notify: Arc::new(Notify::new()),
        }
    }

    /// Nothing held, queued or paused, and both budget windows forgotten.
    fn idle(&self, now: Instant, now_ms: u64, forget_after_ms: u64) -> bool {
        self.in_flight == 0
            && self.queue.is_empty()
            && self.paused_until.is_none_or(|u| u <= now)
            && now_ms.saturating_sub(self.last_grant_ms) > forget_after_ms
    }
}

/// The queues of this process (all of them without Redis; with Redis only hold-time estimates
/// and wake-ups, and the fallback during an outage).
#[derive(Debug)]
struct Local {
    epoch: Instant,
    /// Two of the longest budget window: past it an entry's budgets are empty again.
    forget_after_ms: u64,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl Local {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn with_entry<T>(&self, key: &Key, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        let mut entries = self.entries.lock().ok()?;
        if entries.len() >= PRUNE_AT && !entries.contains_key(key) {
            let now = Instant::now();
            let now_ms = self.now_ms();
            entries.retain(|_, e| !e.idle(now, now_ms, self.forget_after_ms));
        }
        Some(f(entries.entry(key.clone()).or_insert_with(Entry::new)))
    }

    fn notify(&self, key: &Key) -> Arc<Notify> {
        self.with_entry(key, |e| Arc::clone(&e.notify))
            .unwrap_or_else(|| Arc::new(Notify::new()))
    }

    fn avg_hold(&self, key: &Key) -> Duration {
        self.with_entry(key, |e| e.avg_hold).unwrap_or(DEFAULT_HOLD)
    }

    fn record_hold(&self, key: &Key, held: Duration) {
        let sample = held.clamp(MIN_HOLD_SAMPLE, MAX_HOLD_SAMPLE);
        self.with_entry(key, |e| e.avg_hold = (e.avg_hold * 4 + sample) / 5);
    }

    fn try_acquire(&self, policy: &ShapingPolicy, key: &Key, waiter: u64, kind: Kind) -> Verdict {
        let now = Instant::now();
        let now_ms = self.now_ms();
        self.with_entry(key, |e| {
            if let Some(until) = e.paused_until {
                if until > now {
                    if !e.queue.contains(&waiter) {
                        e.queue.push_back(waiter);
                    }
                    return Verdict::Paused(until - now);
                }
                e.paused_until = None;
            }
            // A spent budget keeps the caller out of the queue (no head-of-line blocking of
            // calls the budget would let through); nobody is woken, as nobody else could go.
            let request_wait = e.requests.wait_ms(
                now_ms,
                policy.request_window_seconds.max(1) * 1000,
                policy.requests_per_window,
                1,
            );
            let bytes = kind.bytes();
            let upload_wait = if bytes > 0 {
                e.uploads.wait_ms(
                    now_ms,
                    policy.upload_window_seconds.max(1) * 1000,
                    policy.upload_bytes_per_window,
                    bytes,
                )
            } else {
                0
            };
            if request_wait > 0 || upload_wait > 0 {
                e.queue.retain(|w| *w != waiter);
                return if request_wait > 0 {
                    Verdict::RequestBudget(Duration::from_millis(request_wait))
                } else {
                    Verdict::UploadBudget(Duration::from_millis(upload_wait))
                };
            }
            if !e.queue.contains(&waiter) {
                e.queue.push_back(waiter);
            }
            let rank = e.queue.iter().position(|w| *w == waiter).unwrap_or(0) as u64;
            let free = u64::from(policy.max_in_flight.saturating_sub(e.in_flight));
            if rank >= free {
                return Verdict::Queued {
                    turns: rank - free + 1,
                };
            }
            e.queue.retain(|w| *w != waiter);
            e.requests.current += 1;
            e.uploads.current += bytes;
            e.in_flight += 1;
            e.last_grant_ms = now_ms;
            Verdict::Granted
        })
        // A poisoned lock shapes nothing rather than wedging every mailbox.
        .unwrap_or(Verdict::Granted)
    }

    fn abandon(&self, key: &Key, waiter: u64) {
        self.with_entry(key, |e| {
            let before = e.queue.len();
            e.queue.retain(|w| *w != waiter);
            if e.queue.len() != before {
                e.notify.notify_waiters();
            }
        });
    }

    fn release(&self, key: &Key) {
        self.with_entry(key, |e| {
            e.in_flight = e.in_flight.saturating_sub(1);
            e.notify.notify_waiters();
        });
    }

    fn pause(&self, key: &Key, until: Instant) {
        self.with_entry(key, |e| {
            if e.paused_until.is_none_or(|u| u < until) {
                e.paused_until = Some(until);
            }
        });
    }
}

// Takes a permit, or says why not. KEYS: 1 leases (zset id -> expiry), 2 queue (zset id ->
// ticket), 3 waiter liveness (zset id -> expiry), 4 ticket counter, 5 pause (until, ms),
// 6 budgets (hash). ARGV: id, max in flight, lease ms, liveness ms, request limit, request
// window ms, upload limit, upload window ms, upload bytes, budget key lifetime ms.
// Returns {0} granted, {1, ms} paused, {2, ms} request budget, {3, ms} upload budget,
// {4, turns} queued. Times are the server's, in milliseconds. The budget arithmetic mirrors
// `budget_wait_ms`.
const ACQUIRE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local max = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local live = tonumber(ARGV[4])
local keep = tonumber(ARGV[10])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, w in ipairs(gone) do
  redis.call('ZREM', KEYS[2], w)
  redis.call('ZREM', KEYS[3], w)
end
if not redis.call('ZSCORE', KEYS[2], id) then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), id)
end
redis.call('PEXPIRE', KEYS[4], keep)
redis.call('ZADD', KEYS[3], now + live, id)
redis.call('PEXPIRE', KEYS[2], live * 2)
redis.call('PEXPIRE', KEYS[3], live * 2)
local pause = tonumber(redis.call('GET', KEYS[5])) or 0
if pause > now then
  return {1, pause - now}
end
local function budget(wf, cf, pf, window, limit, cost)
  local idx = math.floor(now / window)
  local h = redis.call('HMGET', KEYS[6], wf, cf, pf)
  local w = tonumber(h[1]) or -2
  local cur = tonumber(h[2]) or 0
  local prev = tonumber(h[3]) or 0
  if w == idx - 1 then
    prev = cur
    cur = 0
  elseif w ~= idx then
    prev = 0
    cur = 0
  end
  local e = now - idx * window
  if cost > limit then cost = limit end
  local wait = 0
  if prev * (window - e) / window + cur + cost > limit then
    if cur + cost <= limit then
      wait = window - window * (limit - cur - cost) / prev - e
    else
      wait = (window - e) + math.max(0, window - window * (limit - cost) / cur)
    end
    wait = math.max(1, math.ceil(wait))
  end
  return idx, cur, prev, wait
end
local ri, rc, rp, rwait = budget('rw', 'rc', 'rp', tonumber(ARGV[6]), tonumber(ARGV[5]), 1)
local bytes = tonumber(ARGV[9])
local ui, uc, up, uwait = 0, 0, 0, 0
if bytes > 0 then
  ui, uc, up, uwait = budget('uw', 'uc', 'up', tonumber(ARGV[8]), tonumber(ARGV[7]), bytes)
end
if rwait > 0 or uwait > 0 then
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  if rwait > 0 then
    return {2, rwait}
  end
  return {3, uwait}
end
local rank = redis.call('ZRANK', KEYS[2], id)
local free = max - redis.call('ZCARD', KEYS[1])
if rank >= free then
  return {4, rank - free + 1}
end
redis.call('ZREM', KEYS[2], id)
redis.call('ZREM', KEYS[3], id)
redis.call('HSET', KEYS[6], 'rw', ri, 'rc', rc + 1, 'rp', rp)
if bytes > 0 then
  redis.call('HSET', KEYS[6], 'uw', ui, 'uc', uc + bytes, 'up', up)
end
redis.call('PEXPIRE', KEYS[6], keep)
redis.call('ZADD', KEYS[1], now + lease, id)
redis.call('PEXPIRE', KEYS[1], lease * 2)
return {0, 0}
";

// Extends a held lease; 0 when it ran out already (and its slot may be someone else's).
const RENEW_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
";

const RELEASE_SCRIPT: &str = r"
return redis.call('ZREM', KEYS[1], ARGV[1])
";

const ABANDON_SCRIPT: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 0
";

// Pauses the queue until now + ARGV[1] ms unless it is paused longer already.
const PAUSE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1])) or 0
if now + ms > current then
  redis.call('SET', KEYS[1], now + ms, 'PX', ms)
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
        reported: bool,
    },
}

/// The queues in Redis, shared by every replica.
struct Shared {
    client: redis::Client,
    target: String,
    prefix: String,
    timeout: Duration,
    /// Distinguishes this process's waiters and leases from other replicas'.
    instance: String,
    link: tokio::sync::Mutex<Link>,
    acquire: redis::Script,
    renew: redis::Script,
    release: redis::Script,
    abandon: redis::Script,
    pause: redis::Script,
}

impl Shared {
    fn new(client: redis::Client, prefix: String, timeout: Duration) -> Self {
        let info = client.get_connection_info();
        let target = format!("{} db {}", info.addr(), info.redis_settings().db());
        Self {
            client,
            target,
            prefix,
            timeout,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            link: tokio::sync::Mutex::new(Link::Down {
                retry_at: Instant::now(),
                pause: RETRY_FIRST,
                reported: false,
            }),
            acquire: redis::Script::new(ACQUIRE_SCRIPT),
            renew: redis::Script::new(RENEW_SCRIPT),
            release: redis::Script::new(RELEASE_SCRIPT),
            abandon: redis::Script::new(ABANDON_SCRIPT),
            pause: redis::Script::new(PAUSE_SCRIPT),
        }
    }

    /// `{prefix}{app|mailbox}:name`; the braces keep one queue's keys in one cluster slot.
    fn key(&self, key: &Key, name: &str) -> String {
        format!("{}{{{}|{}}}:{name}", self.prefix, key.app, key.mailbox)
    }

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
                tracing::info!(target = %self.target, "Graph shaper: connected to Redis");
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
                "Graph shaper: Redis unreachable; Graph traffic is shaped per process until it is back"
            );
        }
        *link = Link::Down {
            retry_at: Instant::now() + pause,
            pause: (pause * 2).min(RETRY_MAX),
            reported: true,
        };
    }

    /// Runs a script; `None` (counted, and the connection dropped) when Redis failed.
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[String],
        args: &[String],
    ) -> Option<T> {
        let Some(mut conn) = self.connection().await else {
            metrics::counter!(REDIS_FALLBACKS).increment(1);
            return None;
        };
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
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
        metrics::counter!(REDIS_FALLBACKS).increment(1);
        None
    }

    fn waiter_id(&self, waiter: u64) -> String {
        format!("{}:{waiter}", self.instance)
    }

    async fn try_acquire(
        &self,
        policy: &ShapingPolicy,
        key: &Key,
        waiter: u64,
        kind: Kind,
    ) -> Option<Verdict> {
        let longest = policy
            .request_window_seconds
            .max(policy.upload_window_seconds)
            .saturating_mul(2000);
        let keys = [
            self.key(key, "leases"),
            self.key(key, "queue"),
            self.key(key, "alive"),
            self.key(key, "ticket"),
            self.key(key, "pause"),
            self.key(key, "budget"),
        ];
        let args = [
            self.waiter_id(waiter),
            policy.max_in_flight.to_string(),
            policy.redis_lease_ms.to_string(),
            millis(WAITER_LIVENESS).to_string(),
            policy.requests_per_window.to_string(),
            policy
                .request_window_seconds
                .max(1)
                .saturating_mul(1000)
                .to_string(),
            policy.upload_bytes_per_window.to_string(),
            policy
                .upload_window_seconds
                .max(1)
                .saturating_mul(1000)
                .to_string(),
            kind.bytes().to_string(),
            longest.to_string(),
        ];
        let reply: Vec<u64> = self.run(&self.acquire, &keys, &args).await?;
        let code = reply.first().copied().unwrap_or(u64::MAX);
        let value = reply.get(1).copied().unwrap_or(0);
        let ms = Duration::from_millis(value);
        Some(match code {
            0 => Verdict::Granted,
            1 => Verdict::Paused(ms),
            2 => Verdict::RequestBudget(ms),
            3 => Verdict::UploadBudget(ms),
            4 => Verdict::Queued { turns: value },
            _ => return None,
        })
    }

    async fn renew(&self, key: &Key, waiter: u64, lease: Duration) -> Option<bool> {
        let renewed: u8 = self
            .run(
                &self.renew,
                &[self.key(key, "leases")],
                &[self.waiter_id(waiter), millis(lease).to_string()],
            )
            .await?;
        Some(renewed == 1)
    }

    async fn release(&self, key: &Key, waiter: u64) {
        let _: Option<u8> = self
            .run(
                &self.release,
                &[self.key(key, "leases")],
                &[self.waiter_id(waiter)],
            )
            .await;
    }

    async fn abandon(&self, key: &Key, waiter: u64) {
        let _: Option<u8> = self
            .run(
                &self.abandon,
                &[self.key(key, "queue"), self.key(key, "alive")],
                &[self.waiter_id(waiter)],
            )
            .await;
    }

    async fn pause(&self, key: &Key, length: Duration) {
        let _: Option<u8> = self
            .run(
                &self.pause,
                &[self.key(key, "pause")],
                &[millis(length).max(1).to_string()],
            )
            .await;
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

struct Inner {
    policy: ShapingPolicy,
    local: Local,
    shared: Option<Shared>,
    next_waiter: AtomicU64,
}

/// Per-mailbox shaping of Graph calls (cheap to clone; clones share the queues).
#[derive(Clone)]
pub struct Shaper {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Shaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shaper")
            .field("policy", &self.inner.policy)
            .field(
                "redis",
                &self.inner.shared.as_ref().map(|s| s.target.as_str()),
            )
            .finish_non_exhaustive()
    }
}

impl Shaper {
    /// The shaper of a configuration: `[graph.shaping]`, shared through the Redis of
    /// `[auth.lockout]` when one is set (read from its file or variable now).
    pub fn from_config(
        config: &crate::config::Config,
    ) -> Result<Self, crate::lockout::LockoutSetupError> {
        let redis = config.auth.lockout.redis_client()?;
        Ok(Self::new(config.graph.shaping.clone(), redis))
    }

    /// Shaping in this process only.
    pub fn local(policy: ShapingPolicy) -> Self {
        Self::build(policy, None)
    }

    /// Shaping shared through Redis (contacted on first use), with this process as the
    /// fallback; `redis = None` or `policy.shared == false` shapes locally.
    pub fn new(policy: ShapingPolicy, redis: Option<redis::Client>) -> Self {
        let redis = redis.filter(|_| policy.shared);
        Self::build(policy, redis)
    }

    fn build(policy: ShapingPolicy, redis: Option<redis::Client>) -> Self {
        let shared = redis.map(|client| {
            let shared = Shared::new(
                client,
                policy.redis_key_prefix.clone(),
                Duration::from_millis(policy.redis_timeout_ms.max(1)),
            );
            tracing::info!(target = %shared.target, "Graph traffic shaped through Redis");
            shared
        });
        let forget_after_ms = policy
            .request_window_seconds
            .max(policy.upload_window_seconds)
            .saturating_mul(2000);
        Self {
            inner: Arc::new(Inner {
                policy,
                local: Local {
                    epoch: Instant::now(),
                    forget_after_ms,
                    entries: Mutex::new(HashMap::new()),
                },
                shared,
                next_waiter: AtomicU64::new(1),
            }),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &ShapingPolicy {
        &self.inner.policy
    }

    /// Whether the queues are shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.inner.shared.is_some()
    }

    fn key(&self, app: &str, mailbox: &str) -> Key {
        Key {
            app: app.to_ascii_lowercase(),
            mailbox: match self.inner.policy.scope {
                ShapingScope::Mailbox => mailbox.to_ascii_lowercase(),
                ShapingScope::App => "*".to_owned(),
            },
        }
    }

    /// Waits for a permit to call Graph for `mailbox` as `app` (the app's client id), or answers
    /// [`Busy`] at once when the queue, a budget or a 429 pause keeps it past `deadline`. The
    /// call's request (and upload bytes) are counted when the permit is granted. Dropping the
    /// future leaves the queue; dropping the permit frees its slot.
    pub async fn acquire(
        &self,
        app: &str,
        mailbox: &str,
        kind: Kind,
        deadline: Instant,
    ) -> Result<Permit, Busy> {
        let inner = &self.inner;
        let key = self.key(app, mailbox);
        let started = Instant::now();
        let mut waiter = Waiter {
            inner: Arc::clone(inner),
            key: key.clone(),
            id: inner.next_waiter.fetch_add(1, Ordering::Relaxed),
            in_redis: false,
            armed: true,
        };
        let mut use_redis = inner.shared.is_some();
        let mut poll = POLL_FIRST;
        loop {
            // Registered before the attempt, so a release between the two still wakes us.
            let notify = inner.local.notify(&key);
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let mut verdict = None;
            if use_redis && let Some(shared) = &inner.shared {
                waiter.in_redis = true;
                verdict = shared
                    .try_acquire(&inner.policy, &key, waiter.id, kind)
                    .await;
                if verdict.is_none() {
                    use_redis = false;
                }
            }
            let via_redis = verdict.is_some();
            let verdict = verdict.unwrap_or_else(|| {
                inner
                    .local
                    .try_acquire(&inner.policy, &key, waiter.id, kind)
            });

            let (wait, reason) = match verdict {
                Verdict::Granted => {
                    waiter.armed = false;
                    metrics::histogram!(QUEUE_WAIT).record(started.elapsed().as_secs_f64());
                    return Ok(Permit::new(inner, key, waiter.id, via_redis));
                }
                Verdict::Paused(d) => (d, BusyReason::Paused),
                Verdict::RequestBudget(d) => (d, BusyReason::RequestBudget),
                Verdict::UploadBudget(d) => (d, BusyReason::UploadBudget),
                Verdict::Queued { turns } => {
                    let max = u64::from(inner.policy.max_in_flight.max(1));
                    let rounds = u32::try_from(turns.div_ceil(max)).unwrap_or(u32::MAX);
                    (
                        inner.local.avg_hold(&key).saturating_mul(rounds),
                        BusyReason::Queue,
                    )
                }
            };
            let now = Instant::now();
            if now + wait > deadline {
                metrics::counter!(BUSY, "reason" => reason.label()).increment(1);
                // Dropping the armed waiter takes it out of the queue.
                drop(waiter);
                return Err(Busy {
                    back_off: round_back_off(wait),
                    reason,
                });
            }
            let nap = if via_redis {
                // Other replicas release without waking us: poll, and stay alive in the queue.
                let nap = wait.min(poll).min(WAITER_LIVENESS / 3);
                poll = (poll * 2).min(POLL_MAX);
                nap
            } else {
                wait
            }
            .max(Duration::from_millis(1));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
    }

    /// Reports a Graph 429 for `mailbox`: its whole queue (on every replica) waits `retry_after`
    /// (capped at 10 minutes) before the next call.
    pub async fn throttled(&self, app: &str, mailbox: &str, retry_after: Duration) {
        let key = self.key(app, mailbox);
        let length = retry_after.min(MAX_PAUSE);
        metrics::counter!(GRAPH_THROTTLED).increment(1);
        tracing::info!(
            retry_after_ms = millis(length),
            "Microsoft Graph throttled a mailbox; its queue is paused"
        );
        // Locally as well, so a Redis outage right after still honours it.
        self.inner.local.pause(&key, Instant::now() + length);
        if let Some(shared) = &self.inner.shared {
            shared.pause(&key, length).await;
        }
    }

    /// [`Shaper::throttled`] for callers that cannot wait: the pause applies in this process at
    /// once and reaches Redis (the other replicas) in the background.
    pub fn throttled_in_background(&self, app: &str, mailbox: &str, retry_after: Duration) {
        let key = self.key(app, mailbox);
        let length = retry_after.min(MAX_PAUSE);
        self.inner.local.pause(&key, Instant::now() + length);
        let shaper = self.clone();
        let (app, mailbox) = (app.to_owned(), mailbox.to_owned());
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move { shaper.throttled(&app, &mailbox, length).await });
            }
            Err(_) => metrics::counter!(GRAPH_THROTTLED).increment(1),
        }
    }
}

/// Rounds a back-off up to a whole 100 ms, at least [`MIN_BACK_OFF`].
fn round_back_off(wait: Duration) -> Duration {
    let ms = millis(wait).div_ceil(100).saturating_mul(100);
    Duration::from_millis(ms).max(MIN_BACK_OFF)
}

/// A caller in a queue; leaves it when dropped while still armed (deadline, cancellation).
struct Waiter {
    inner: Arc<Inner>,
    key: Key,
    id: u64,
    in_redis: bool,
    armed: bool,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.inner.local.abandon(&self.key, self.id);
        if self.in_redis
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            // Without a runtime the waiter's liveness runs out instead.
            let inner = Arc::clone(&self.inner);
            let key = self.key.clone();
            let id = self.id;
            handle.spawn(async move {
                if let Some(shared) = &inner.shared {
                    shared.abandon(&key, id).await;
                }
            });
        }
    }
}

/// Leave to call Graph for one mailbox; the slot is freed when this is dropped.
#[must_use = "the slot is released when the permit is dropped"]
pub struct Permit {
    inner: Arc<Inner>,
    key: Key,
    id: u64,
    granted_at: Instant,
    /// Set when the lease is in Redis; renews it until dropped.
    renewal: Option<AbortOnDropHandle<()>>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("shared", &self.renewal.is_some())
            .finish_non_exhaustive()
    }
}

impl Permit {
    fn new(inner: &Arc<Inner>, key: Key, id: u64, in_redis: bool) -> Self {
        metrics::gauge!(IN_FLIGHT).increment(1.0);
        let renewal = in_redis.then(|| {
            let inner = Arc::clone(inner);
            let key = key.clone();
            let lease = Duration::from_millis(inner.policy.redis_lease_ms.max(1000));
            AbortOnDropHandle::new(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    let Some(shared) = &inner.shared else { return };
                    if shared.renew(&key, id, lease).await == Some(false) {
                        tracing::warn!(
                            "Graph shaper: a held permit's lease ran out in Redis (the call outlived a Redis outage); the mailbox may briefly see one more call in flight"
                        );
                        return;
                    }
                }
            }))
        });
        Self {
            inner: Arc::clone(inner),
            key,
            id,
            granted_at: Instant::now(),
            renewal,
        }
    }

    /// Whether the permit is a lease in Redis (else it was granted by this process).
    pub fn is_shared(&self) -> bool {
        self.renewal.is_some()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        metrics::gauge!(IN_FLIGHT).decrement(1.0);
        let local = &self.inner.local;
        local.record_hold(&self.key, self.granted_at.elapsed());
        if self.renewal.take().is_none() {
            local.release(&self.key);
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let inner = Arc::clone(&self.inner);
                let key = self.key.clone();
                let id = self.id;
                handle.spawn(async move {
                    if let Some(shared) = &inner.shared {
                        shared.release(&key, id).await;
                    }
                    // Local waiters poll Redis again now rather than at their next poll.
                    inner.local.notify(&key).notify_waiters();
                });
            }
            // Without a runtime the lease runs out by itself.
            Err(_) => local.notify(&self.key).notify_waiters(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn policy() -> ShapingPolicy {
        ShapingPolicy::default()
    }

    const APP: &str = "11111111-2222-4333-8444-555555555555";

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn budget_arithmetic() {
        // Fits.
        assert_eq!(budget_wait_ms(0, 9, 0, 1000, 10, 1), 0);
        // Current window full: wait for the rollover, then for the old window to fade.
        assert_eq!(budget_wait_ms(0, 10, 0, 1000, 10, 1), 1000 + 100);
        // Previous window full, half over: 5 weighted; 5 + 5 + 1 > 10 -> wait until it weighs 4.
        assert_eq!(budget_wait_ms(10, 5, 500, 1000, 10, 1), 100);
        // A cost above the limit is clamped (it waits for an empty window, not forever).
        assert_eq!(budget_wait_ms(0, 0, 0, 1000, 10, 50), 0);
        assert!(budget_wait_ms(0, 1, 0, 1000, 10, 50) <= 2000);
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_in_flight_and_a_release_lets_the_next_in() {
        let s = Shaper::local(policy());
        let far = Instant::now() + secs(25);
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(s.acquire(APP, "alice@x", Kind::Call, far).await.unwrap());
        }
        let s2 = s.clone();
        let fifth = tokio::spawn(async move { s2.acquire(APP, "ALICE@x", Kind::Call, far).await });
        tokio::task::yield_now().await;
        assert!(!fifth.is_finished(), "the fifth waits");
        // Another mailbox is not affected.
        let bob = s.acquire(APP, "bob@x", Kind::Call, far).await.unwrap();
        assert!(!bob.is_shared());
        tokio::time::advance(Duration::from_millis(200)).await;
        held.pop();
        let p = tokio::time::timeout(secs(1), fifth)
            .await
            .expect("woken by the release")
            .unwrap()
            .unwrap();
        drop(p);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_that_cannot_finish_before_the_deadline_answers_busy_at_once() {
        let s = Shaper::local(policy());
        let held: Vec<_> = futures_util::future::join_all(
            (0..4).map(|_| s.acquire(APP, "a@x", Kind::Call, Instant::now() + secs(25))),
        )
        .await;
        assert!(held.iter().all(Result::is_ok));
        // Calls take 2 s each from now on.
        for _ in 0..10 {
            s.inner.local.record_hold(&s.key(APP, "a@x"), secs(2));
        }
        // 12 waiters queue (3 rounds of ~2 s) within a 7 s deadline...
        let deadline = Instant::now() + secs(7);
        let mut waiting = Vec::new();
        for _ in 0..12 {
            let s = s.clone();
            waiting.push(tokio::spawn(async move {
                s.acquire(APP, "a@x", Kind::Call, deadline).await
            }));
        }
        tokio::task::yield_now().await;
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(waiting.iter().all(|w| !w.is_finished()));
        // ...the 13th would need a 4th round: refused without waiting, with a back-off of
        // about the queue's length.
        let before = Instant::now();
        let busy = s
            .acquire(APP, "a@x", Kind::Call, deadline)
            .await
            .unwrap_err();
        assert_eq!(before, Instant::now(), "answered at once");
        assert_eq!(busy.reason, BusyReason::Queue);
        assert!(
            busy.back_off >= secs(7) && busy.back_off <= secs(9),
            "{busy:?}"
        );
        drop(held);
        for w in waiting {
            drop(w.await.unwrap().unwrap());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_whose_deadline_passes_gives_up_and_leaves_the_queue() {
        let s = Shaper::local(policy());
        let far = Instant::now() + secs(25);
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(s.acquire(APP, "a@x", Kind::Call, far).await.unwrap());
        }
        // Estimated at 0.5 s, but nobody releases.
        let r = s
            .acquire(APP, "a@x", Kind::Call, Instant::now() + secs(2))
            .await;
        assert_eq!(r.unwrap_err().reason, BusyReason::Queue);
        assert!(
            s.inner
                .local
                .with_entry(&s.key(APP, "a@x"), |e| e.queue.is_empty())
                .unwrap()
        );
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn permits_are_released_on_drop_and_on_cancellation() {
        let s = Shaper::local(policy());
        let key = s.key(APP, "a@x");
        let far = Instant::now() + secs(25);
        let held: Vec<_> =
            futures_util::future::join_all((0..4).map(|_| s.acquire(APP, "a@x", Kind::Call, far)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        // A request cancelled while queued leaves the queue (it does not block those behind).
        let queued = {
            let s = s.clone();
            tokio::spawn(async move { s.acquire(APP, "a@x", Kind::Call, far).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(
            s.inner.local.with_entry(&key, |e| e.queue.len()).unwrap(),
            1
        );
        queued.abort();
        assert!(queued.await.unwrap_err().is_cancelled());
        assert_eq!(
            s.inner.local.with_entry(&key, |e| e.queue.len()).unwrap(),
            0
        );
        // A request cancelled while holding its permit frees the slot.
        let holder = {
            let s = s.clone();
            tokio::spawn(async move {
                drop(held);
                let _p = s.acquire(APP, "a@x", Kind::Call, far).await.unwrap();
                std::future::pending::<()>().await;
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(s.inner.local.with_entry(&key, |e| e.in_flight).unwrap(), 1);
        holder.abort();
        let _ = holder.await;
        assert_eq!(s.inner.local.with_entry(&key, |e| e.in_flight).unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_graph_429_pauses_the_whole_queue_for_retry_after() {
        let s = Shaper::local(policy());
        let start = Instant::now();
        s.throttled(APP, "A@x", secs(10)).await;
        // A deadline before the pause ends: busy at once, told to wait the pause out.
        let busy = s
            .acquire(APP, "a@x", Kind::Call, start + secs(5))
            .await
            .unwrap_err();
        assert_eq!(busy.reason, BusyReason::Paused);
        assert_eq!(busy.back_off, secs(10));
        assert_eq!(Instant::now(), start);
        // A deadline after it: waits, then goes.
        let p = s
            .acquire(APP, "a@x", Kind::Call, start + secs(25))
            .await
            .unwrap();
        assert!(Instant::now() >= start + secs(10), "waited the pause out");
        drop(p);
        // Other mailboxes were never paused; a shorter later 429 does not shorten a pause.
        let t = Instant::now();
        drop(s.acquire(APP, "b@x", Kind::Call, t).await.unwrap());
        s.throttled(APP, "c@x", secs(30)).await;
        s.throttled(APP, "c@x", secs(1)).await;
        let busy = s
            .acquire(APP, "c@x", Kind::Call, t + secs(25))
            .await
            .unwrap_err();
        assert_eq!(busy.back_off, secs(30));
        // The form for callers that cannot wait pauses at once too.
        s.throttled_in_background(APP, "d@x", secs(40));
        let busy = s.acquire(APP, "d@x", Kind::Call, t).await.unwrap_err();
        assert_eq!((busy.reason, busy.back_off), (BusyReason::Paused, secs(40)));
    }

    #[tokio::test(start_paused = true)]
    async fn request_and_upload_budgets() {
        let p = ShapingPolicy {
            requests_per_window: 10,
            request_window_seconds: 10,
            upload_bytes_per_window: 1000,
            upload_window_seconds: 10,
            ..policy()
        };
        let s = Shaper::local(p);
        let deadline = || Instant::now() + secs(5);
        for _ in 0..10 {
            drop(s.acquire(APP, "a@x", Kind::Call, deadline()).await.unwrap());
        }
        let busy = s
            .acquire(APP, "a@x", Kind::Call, deadline())
            .await
            .unwrap_err();
        assert_eq!(busy.reason, BusyReason::RequestBudget);
        assert!(
            busy.back_off > secs(10) && busy.back_off <= secs(12),
            "{busy:?}"
        );
        // Another mailbox has its own budget.
        drop(s.acquire(APP, "b@x", Kind::Call, deadline()).await.unwrap());
        // With a long enough deadline the call waits for the budget instead.
        let start = Instant::now();
        drop(
            s.acquire(APP, "a@x", Kind::Call, start + secs(25))
                .await
                .unwrap(),
        );
        assert!(Instant::now() - start >= secs(10));

        let s = Shaper::local(ShapingPolicy {
            upload_bytes_per_window: 1000,
            upload_window_seconds: 10,
            ..policy()
        });
        drop(
            s.acquire(APP, "u@x", Kind::Upload { bytes: 600 }, deadline())
                .await
                .unwrap(),
        );
        let busy = s
            .acquire(APP, "u@x", Kind::Upload { bytes: 600 }, deadline())
            .await
            .unwrap_err();
        assert_eq!(busy.reason, BusyReason::UploadBudget);
        // Plain calls still pass; small uploads that fit too.
        drop(s.acquire(APP, "u@x", Kind::Call, deadline()).await.unwrap());
        drop(
            s.acquire(APP, "u@x", Kind::Upload { bytes: 400 }, deadline())
                .await
                .unwrap(),
        );
    }

    #[tokio::test(start_paused = true)]
    async fn per_app_scope_shares_one_queue_between_mailboxes() {
        let s = Shaper::local(ShapingPolicy {
            scope: ShapingScope::App,
            max_in_flight: 2,
            ..policy()
        });
        let far = Instant::now() + secs(25);
        let _a = s.acquire(APP, "a@x", Kind::Call, far).await.unwrap();
        let _b = s.acquire(APP, "b@x", Kind::Call, far).await.unwrap();
        let busy = s
            .acquire(APP, "c@x", Kind::Call, Instant::now())
            .await
            .unwrap_err();
        assert_eq!(busy.reason, BusyReason::Queue);
        // Another app has its own.
        let _c = s
            .acquire("other-app", "c@x", Kind::Call, far)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_redis_falls_back_to_local_shaping() {
        let dir = tempfile::tempdir().unwrap();
        let client =
            redis::Client::open(format!("unix://{}", dir.path().join("none.sock").display()))
                .unwrap();
        let s = Shaper::new(policy(), Some(client));
        assert!(s.is_shared());
        let far = Instant::now() + secs(25);
        let mut held = Vec::new();
        for _ in 0..4 {
            let p = s.acquire(APP, "a@x", Kind::Call, far).await.unwrap();
            assert!(!p.is_shared());
            held.push(p);
        }
        let busy = s
            .acquire(APP, "a@x", Kind::Call, Instant::now())
            .await
            .unwrap_err();
        assert_eq!(busy.reason, BusyReason::Queue, "still shaped, locally");
    }

    #[test]
    fn policy_problems_and_busy_fault() {
        assert!(policy().problems().is_empty());
        let bad = ShapingPolicy {
            max_in_flight: 5,
            deadline_seconds: 0,
            redis_lease_ms: 10,
            ..policy()
        };
        let problems = bad.problems().join("\n");
        assert!(problems.contains("max_in_flight"), "{problems}");
        assert!(problems.contains("deadline_seconds"), "{problems}");
        assert!(problems.contains("redis_lease_ms"), "{problems}");
        let err = GatewayError::from(Busy {
            back_off: Duration::from_millis(2500),
            reason: BusyReason::Queue,
        });
        assert_eq!(err.fault_code(), Some("ErrorServerBusy"));
        assert_eq!(
            round_back_off(Duration::from_millis(2401)),
            Duration::from_millis(2500)
        );
        assert_eq!(round_back_off(Duration::from_millis(10)), MIN_BACK_OFF);
    }
}
