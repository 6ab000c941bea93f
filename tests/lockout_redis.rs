//! Lockouts shared through Redis (issue 7): failures on one gateway lock the user on another,
//! the counters live in Redis with an expiry, and a Redis outage falls back to per-process
//! tracking instead of refusing logins.
//!
//! Needs `redis-server` (Debian package `redis-server`; `.ci/run` installs it). Without it these
//! tests fail, they do not skip. Each test starts its own server on a unix socket in a temporary
//! directory (`--port 0`: no TCP port, nothing persisted).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use ews_gateway::lockout::{FailureOutcome, Lockout, LockoutPolicy, RedisUrl};

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

    fn stop(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let _ = std::fs::remove_file(&self.socket);
    }

    /// A fresh (empty) server on the same socket.
    fn restart(&mut self) {
        self.child = spawn_redis(self._dir.path(), &self.socket);
    }

    fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

fn policy(url: &str, prefix: &str) -> LockoutPolicy {
    LockoutPolicy {
        max_failures: 3,
        max_failures_per_source: 10,
        window_seconds: 60,
        lockout_seconds: 1,
        max_lockout_seconds: 2,
        redis_url: Some(RedisUrl::new(url.to_owned())),
        redis_key_prefix: prefix.to_owned(),
        ..LockoutPolicy::default()
    }
}

#[tokio::test]
async fn two_trackers_share_counters_lockouts_and_their_end_through_redis() {
    let redis = RedisServer::start();
    let a = Lockout::from_policy(policy(&redis.url(), "t1:")).unwrap();
    let b = Lockout::from_policy(policy(&redis.url(), "t1:")).unwrap();
    let k = Lockout::user_key("Alice@contoso.example");
    assert_eq!(a.record_failure(&k, 3).await, FailureOutcome::Counted);
    assert_eq!(b.record_failure(&k, 3).await, FailureOutcome::Counted);
    assert!(!a.is_locked(&[&k]).await);
    assert_eq!(
        a.record_failure(&k, 3).await,
        FailureOutcome::LockedFor(Duration::from_secs(1)),
        "the third failure, counted across both, starts the lockout"
    );
    assert!(b.is_locked(&[&k]).await, "B sees A's lockout");

    // The counters are in Redis under the prefix, with an expiry (idle keys disappear).
    let mut conn = redis.connection().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg("t1:user:alice@contoso.example")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 61_000 + 1_000,
        "key expires after window/lockout: {ttl}"
    );

    // The lockout ends by itself (server clock), then doubles, capped at 2 s.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!b.is_locked(&[&k]).await, "ended");
    assert!(!a.is_locked(&[&k]).await);
    for _ in 0..2 {
        b.record_failure(&k, 3).await;
    }
    assert_eq!(
        a.record_failure(&k, 3).await,
        FailureOutcome::LockedFor(Duration::from_secs(2)),
        "the second lockout doubles"
    );
    // Success clears the failures, not the lockout.
    a.record_success(&k).await;
    assert!(b.is_locked(&[&k]).await);
    assert_eq!(a.shared_store_fallbacks(), 0);
    assert_eq!(b.shared_store_fallbacks(), 0);

    // Another prefix is another namespace.
    let c = Lockout::from_policy(policy(&redis.url(), "other:")).unwrap();
    assert!(!c.is_locked(&[&k]).await);
}

#[tokio::test]
async fn a_redis_outage_falls_back_to_local_tracking_without_refusing_logins() {
    let mut redis = RedisServer::start();
    let mut p = policy(&redis.url(), "t2:");
    p.lockout_seconds = 30;
    p.max_lockout_seconds = 60;
    let a = Lockout::from_policy(p).unwrap();
    let k = Lockout::user_key("bob@contoso.example");
    assert_eq!(a.record_failure(&k, 3).await, FailureOutcome::Counted);
    assert_eq!(a.shared_store_fallbacks(), 0);
    redis.stop();

    // Fail open: nothing is locked because Redis is gone, and failures still lock locally.
    assert!(!a.is_locked(&[&k]).await);
    let other = Lockout::user_key("carol@contoso.example");
    assert!(!a.is_locked(&[&other]).await);
    assert_eq!(a.record_failure(&k, 3).await, FailureOutcome::Counted);
    assert_eq!(a.record_failure(&k, 3).await, FailureOutcome::Counted);
    assert_eq!(
        a.record_failure(&k, 3).await,
        FailureOutcome::LockedFor(Duration::from_secs(30)),
        "three local failures lock locally"
    );
    assert!(a.is_locked(&[&k]).await);
    assert!(!a.is_locked(&[&other]).await, "other users still log in");
    let fallbacks = a.shared_store_fallbacks();
    assert!(fallbacks >= 5, "fallbacks are counted: {fallbacks}");

    // Redis is back: after the retry pause the counters go to Redis again; the local lockout
    // from the outage still holds meanwhile.
    redis.restart();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        a.is_locked(&[&k]).await,
        "the outage's local lockout still counts"
    );
    let carol = a.record_failure(&other, 3).await;
    assert_eq!(carol, FailureOutcome::Counted);
    let after = a.shared_store_fallbacks();
    assert!(!a.is_locked(&[&other]).await);
    assert_eq!(
        after,
        a.shared_store_fallbacks(),
        "no more fallbacks once Redis is back"
    );
    let mut conn = redis.connection().await;
    let failures: i64 = redis::cmd("HGET")
        .arg("t2:user:carol@contoso.example")
        .arg("f")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(failures, 1, "the failure was counted in Redis");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A gateway configuration against the simulator, lockout shared through Redis as `lockout`
/// says (one of the redis_url forms).
fn gateway_config(
    dir: &Path,
    name: &str,
    users: &Path,
    sim: &ews_gateway::sim::SimHandle,
    lockout: &str,
) -> PathBuf {
    write(
        dir,
        name,
        &format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[auth]\nusers_file = \"{}\"\n[auth.lockout]\n{lockout}\n[upstream]\news_url = \"{}\"\n[[tenant]]\ntenant_id = \"contoso.example\"\nclient_id = \"11111111-2222-4333-8444-555555555555\"\nclient_secret_env = \"LOCKOUT_REDIS_TEST_SECRET\"\nauthority = \"{}\"\n",
            users.display(),
            sim.ews_url(),
            sim.authority_url()
        ),
    )
}

#[tokio::test]
async fn failures_on_gateway_a_lock_the_user_on_gateway_b() {
    let redis = RedisServer::start();
    ews_gateway::tls::install_crypto_provider();
    let sim = ews_gateway::sim::start(
        ews_gateway::sim::SimConfig::builtin().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = write(
        dir.path(),
        "users.toml",
        &ews_gateway::demo::demo_users_toml().unwrap(),
    );
    // A reads the URL from a variable, B from a file: both forms of a secret URL.
    let url_file = write(dir.path(), "redis-url", &format!("{}\n", redis.url()));
    let config_a = gateway_config(
        dir.path(),
        "a.toml",
        &users,
        &sim,
        "redis_url_env = \"LOCKOUT_REDIS_URL\"",
    );
    let config_b = gateway_config(
        dir.path(),
        "b.toml",
        &users,
        &sim,
        &format!("redis_url_file = \"{}\"", url_file.display()),
    );
    let secret = ("LOCKOUT_REDIS_TEST_SECRET", "sim-secret-gateway-app-0001");
    let redis_url = redis.url();
    let a = spawn_serve(&config_a, &[secret, ("LOCKOUT_REDIS_URL", &redis_url)]);
    let b = spawn_serve(&config_b, &[secret]);
    let url_a = format!("http://{}/EWS/Exchange.asmx", a.addr);
    let url_b = format!("http://{}/EWS/Exchange.asmx", b.addr);
    let body = || envelope(Some(version_header()), find_inbox());

    assert_eq!(post(&url_b, Some(ALICE), body()).await.status, 200);
    let mut wrong = Vec::new();
    for _ in 0..5 {
        wrong.push(post(&url_a, Some(("alice@contoso.example", "guess")), body()).await);
    }
    assert!(wrong.iter().all(|r| r.status == 401));

    let locked = post(&url_b, Some(ALICE), body()).await;
    assert_eq!(
        locked.status, 401,
        "B refuses the right password: locked on A"
    );
    assert_eq!(
        locked.body, wrong[0].body,
        "answered exactly like a wrong password"
    );
    assert_eq!(
        locked.headers["www-authenticate"],
        wrong[0].headers["www-authenticate"]
    );
    assert_eq!(
        post(&url_a, Some(ALICE), body()).await.status,
        401,
        "and A too"
    );
    assert_eq!(
        post(&url_b, Some(BOB), body()).await.status,
        200,
        "another user is not affected"
    );

    // The lockout is in Redis under the default prefix.
    let mut conn = redis.connection().await;
    let until: i64 = redis::cmd("HGET")
        .arg("ews-gateway:lockout:user:alice@contoso.example")
        .arg("lu")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(until > 0, "locked until {until}");
    drop(a);
    drop(b);
    sim.stop().await;
}
