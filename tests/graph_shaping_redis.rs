//! The Graph shaper shared through Redis (issue 14): two shapers are two replicas sharing one
//! real redis-server. Under a burst they never hold more than 4 permits for one mailbox between
//! them, another mailbox is unaffected, a 429 pause and the budgets are shared, and the lease of
//! a replica that died runs out so its mailbox is not wedged.
//!
//! Needs `redis-server` (Debian package `redis-server`; `.ci/run` installs it). Without it these
//! tests fail, they do not skip. Each test starts its own server on a unix socket in a temporary
//! directory (`--port 0`: no TCP port, nothing persisted).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ews_gateway::graph_shaping::{BusyReason, Kind, Shaper, ShapingPolicy};
use tokio::time::Instant;

const APP: &str = "11111111-2222-4333-8444-555555555555";

/// A `redis-server` on a unix socket, killed when dropped.
struct RedisServer {
    child: std::process::Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_redis(dir: &Path, socket: &Path) -> std::process::Child {
    let mut child = std::process::Command::new("redis-server")
        .args(["--port", "0", "--unixsocket"])
        .arg(socket)
        .args(["--unixsocketperm", "700", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start redis-server ({e}): these tests need it; install it with `apt-get install -y redis-server`"
            )
        });
    for _ in 0..200 {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("redis-server did not open {}", socket.display());
}

impl RedisServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("redis.sock");
        let child = spawn_redis(dir.path(), &socket);
        Self {
            child,
            socket,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

fn policy(prefix: &str) -> ShapingPolicy {
    ShapingPolicy {
        redis_key_prefix: prefix.to_owned(),
        redis_lease_ms: 1500,
        // Generous: the test machine may be loaded; a timeout would fall back to local shaping.
        redis_timeout_ms: 5000,
        ..ShapingPolicy::default()
    }
}

/// Counts calls in flight and remembers the most seen at once.
#[derive(Default)]
struct HighWater {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl HighWater {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_exceed_four_in_flight_for_one_mailbox() {
    let redis = RedisServer::start();
    let a = Shaper::new(policy("t1:"), Some(redis.client()));
    let b = Shaper::new(policy("t1:"), Some(redis.client()));
    assert!(a.is_shared() && b.is_shared());
    let alice = Arc::new(HighWater::default());
    let bob = Arc::new(HighWater::default());
    let deadline = Instant::now() + Duration::from_secs(25);

    // A burst of 40 calls on one mailbox, half through each replica, each holding its permit
    // for 20-40 ms (a Graph call), alongside 8 calls on another mailbox.
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let shaper = if i % 2 == 0 { a.clone() } else { b.clone() };
        let hw = Arc::clone(&alice);
        tasks.push(tokio::spawn(async move {
            let permit = shaper
                .acquire(APP, "Alice@contoso.example", Kind::Call, deadline)
                .await?;
            assert!(permit.is_shared(), "granted through Redis");
            hw.enter();
            tokio::time::sleep(Duration::from_millis(20 + (i % 3) * 10)).await;
            hw.leave();
            drop(permit);
            Ok::<_, ews_gateway::graph_shaping::Busy>(())
        }));
    }
    let started = Instant::now();
    let mut bob_tasks = Vec::new();
    for i in 0..4u64 {
        let shaper = if i % 2 == 0 { a.clone() } else { b.clone() };
        let hw = Arc::clone(&bob);
        bob_tasks.push(tokio::spawn(async move {
            let permit = shaper
                .acquire(APP, "bob@contoso.example", Kind::Call, deadline)
                .await
                .unwrap();
            hw.enter();
            tokio::time::sleep(Duration::from_millis(20)).await;
            hw.leave();
            drop(permit);
            started.elapsed()
        }));
    }
    for t in bob_tasks {
        let took = t.await.unwrap();
        assert!(
            took < Duration::from_secs(2),
            "another mailbox does not wait behind alice's queue: {took:?}"
        );
    }
    for t in tasks {
        t.await.unwrap().expect("every call fits the 25 s deadline");
    }
    let max = alice.max.load(Ordering::SeqCst);
    assert_eq!(max, 4, "never more than 4 in flight, and the 4 are used");
    assert_eq!(bob.max.load(Ordering::SeqCst), 4);

    // Everything was released: no lease, no waiter left in Redis.
    let mut conn = redis.connection().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for name in ["leases", "queue", "alive"] {
        let n: u64 = redis::cmd("ZCARD")
            .arg(format!("t1:{{{APP}|alice@contoso.example}}:{name}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 0, "{name}");
    }
    // The request budget was counted in Redis for both replicas' calls.
    let counted: u64 = redis::cmd("HGET")
        .arg(format!("t1:{{{APP}|alice@contoso.example}}:budget"))
        .arg("rc")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(counted, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_replicas_lease_runs_out_and_the_mailbox_is_not_wedged() {
    let redis = RedisServer::start();
    let b = Shaper::new(policy("t2:"), Some(redis.client()));
    // B holds one permit throughout (its renewals keep the Redis key alive, so only the expiry
    // of each lease can free A's).
    let b_held = b
        .acquire(
            APP,
            "carol@x",
            Kind::Call,
            Instant::now() + Duration::from_secs(5),
        )
        .await
        .unwrap();
    // Replica A takes the other 3 permits and then "crashes": its runtime stops, so its leases
    // are neither renewed nor released.
    let url = redis.url();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let a = Shaper::new(policy("t2:"), Some(redis::Client::open(url).unwrap()));
            let far = Instant::now() + Duration::from_secs(25);
            let mut held = Vec::new();
            for _ in 0..3 {
                held.push(a.acquire(APP, "carol@x", Kind::Call, far).await.unwrap());
            }
            // Dropping the runtime with the permits still held is the crash.
            std::mem::forget(held);
        });
        drop(rt);
    })
    .join()
    .unwrap();

    let start = Instant::now();
    let busy = b
        .acquire(
            APP,
            "carol@x",
            Kind::Call,
            start + Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    assert_eq!(
        busy.reason,
        BusyReason::Queue,
        "the four leases still count"
    );
    let p = b
        .acquire(APP, "carol@x", Kind::Call, start + Duration::from_secs(10))
        .await
        .expect("the dead replica's leases ran out");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1000) && waited < Duration::from_secs(4),
        "waited about the 1.5 s lease: {waited:?}"
    );
    assert!(p.is_shared());
    drop(b_held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_permit_is_renewed_past_its_lease() {
    let redis = RedisServer::start();
    let a = Shaper::new(policy("t3:"), Some(redis.client()));
    let b = Shaper::new(policy("t3:"), Some(redis.client()));
    let far = Instant::now() + Duration::from_secs(25);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(a.acquire(APP, "dave@x", Kind::Call, far).await.unwrap());
    }
    // Three leases long: still held (renewed), so B still finds the mailbox full.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let busy = b
        .acquire(APP, "dave@x", Kind::Call, Instant::now())
        .await
        .unwrap_err();
    assert_eq!(busy.reason, BusyReason::Queue);
    drop(held.pop());
    // Released through Redis: B gets the slot promptly.
    let p = b
        .acquire(
            APP,
            "dave@x",
            Kind::Call,
            Instant::now() + Duration::from_secs(1),
        )
        .await
        .unwrap();
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_one_replica_pauses_the_mailbox_on_the_other_and_budgets_are_shared() {
    let redis = RedisServer::start();
    let p = ShapingPolicy {
        requests_per_window: 5,
        request_window_seconds: 60,
        ..policy("t4:")
    };
    let a = Shaper::new(p.clone(), Some(redis.client()));
    let b = Shaper::new(p, Some(redis.client()));
    let soon = || Instant::now() + Duration::from_secs(1);

    a.throttled(APP, "erin@x", Duration::from_secs(30)).await;
    let busy = b
        .acquire(APP, "erin@x", Kind::Call, soon())
        .await
        .unwrap_err();
    assert_eq!(busy.reason, BusyReason::Paused);
    assert!(
        busy.back_off > Duration::from_secs(28) && busy.back_off <= Duration::from_secs(30),
        "{busy:?}"
    );
    let mut conn = redis.connection().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("t4:{{{APP}|erin@x}}:pause"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 28_000 && ttl <= 30_000, "the pause expires: {ttl}");

    // Five calls in the window between both replicas; the sixth waits for the window to slide
    // (about a minute, at least 12 s should the calls straddle two fixed windows).
    for i in 0..5 {
        let s = if i % 2 == 0 { &a } else { &b };
        drop(s.acquire(APP, "frank@x", Kind::Call, soon()).await.unwrap());
    }
    let busy = a
        .acquire(APP, "frank@x", Kind::Call, soon())
        .await
        .unwrap_err();
    assert_eq!(busy.reason, BusyReason::RequestBudget);
    assert!(busy.back_off >= Duration::from_secs(12), "{busy:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_to_local_shaping() {
    let mut redis = RedisServer::start();
    let a = Shaper::new(policy("t5:"), Some(redis.client()));
    let far = || Instant::now() + Duration::from_secs(25);
    let p = a.acquire(APP, "gina@x", Kind::Call, far()).await.unwrap();
    assert!(p.is_shared());
    drop(p);
    redis.child.kill().unwrap();
    redis.child.wait().unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        let p = a.acquire(APP, "gina@x", Kind::Call, far()).await.unwrap();
        assert!(!p.is_shared(), "granted by this process");
        held.push(p);
    }
    let busy = a
        .acquire(APP, "gina@x", Kind::Call, Instant::now())
        .await
        .unwrap_err();
    assert_eq!(busy.reason, BusyReason::Queue, "still shaped, locally");
}
