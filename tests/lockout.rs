//! Guessing is slowed down without revealing anything (issue 6, lockout part): a user locked
//! after repeated failures is refused even with the right password, exactly like a wrong one;
//! unknown users lock the same way; requests without credentials never count.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

fn body() -> String {
    envelope(Some(version_header()), find_inbox())
}

#[tokio::test]
async fn five_failures_lock_the_user_and_the_right_password_is_then_refused_identically() {
    let demo = start_demo().await;
    let url = demo.gateway.ews_url();
    let mut wrong = Vec::new();
    for _ in 0..5 {
        wrong.push(post(&url, Some(("alice@contoso.example", "guess")), body()).await);
    }
    let locked = post(&url, Some(ALICE), body()).await;
    assert_eq!(locked.status, 401, "locked: the right password is refused");
    assert_eq!(locked.body, wrong[0].body);
    assert_eq!(
        locked.headers["www-authenticate"],
        wrong[0].headers["www-authenticate"]
    );
    assert!(
        demo.sim.ews_requests().is_empty(),
        "nothing reached Exchange"
    );
    // Another user from the same address is not affected (the source limit is higher).
    assert_eq!(post(&url, Some(BOB), body()).await.status, 200);
    demo.stop().await;
}

#[tokio::test]
async fn an_unknown_user_locks_exactly_like_a_real_one() {
    let demo = start_demo().await;
    let url = demo.gateway.ews_url();
    let mut replies = Vec::new();
    for user in ["mallory@contoso.example", "alice@contoso.example"] {
        for _ in 0..6 {
            replies.push(post(&url, Some((user, "guess")), body()).await);
        }
    }
    let first = &replies[0];
    for r in &replies {
        assert_eq!(r.status, first.status);
        assert_eq!(r.body, first.body);
        assert_eq!(
            r.headers["www-authenticate"],
            first.headers["www-authenticate"]
        );
    }
    demo.stop().await;
}

#[tokio::test]
async fn requests_without_credentials_never_count() {
    let demo = start_demo().await;
    let url = demo.gateway.ews_url();
    for _ in 0..40 {
        assert_eq!(post(&url, None, body()).await.status, 401);
    }
    assert_eq!(
        post(&url, Some(ALICE), body()).await.status,
        200,
        "challenges are not failures"
    );
    demo.stop().await;
}

#[tokio::test]
async fn a_spraying_source_is_locked_across_users() {
    let demo = start_demo().await;
    let url = demo.gateway.ews_url();
    // 30 failures from one address over many user names (each below the per-user limit).
    for i in 0..30 {
        post(
            &url,
            Some((&format!("user{i}@contoso.example"), "guess")),
            body(),
        )
        .await;
    }
    let after = post(&url, Some(BOB), body()).await;
    assert_eq!(
        after.status, 401,
        "the source is locked, even for a valid login"
    );
    demo.stop().await;
}
