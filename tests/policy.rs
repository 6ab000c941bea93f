//! Per-user operation policy, per-principal rate and per-mailbox concurrency caps (issue 6),
//! end to end through the gateway and the simulator's request log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

const SCANNER: (&str, &str) = ("scanner@contoso.example", "scanner-demo-pass");

fn send_to_bob(subject: &str) -> String {
    format!(
        "<m:CreateItem MessageDisposition=\"SendAndSaveCopy\"><m:Items><t:Message><t:Subject>{subject}</t:Subject><t:Body BodyType=\"Text\">scan attached</t:Body><t:ToRecipients><t:Mailbox><t:EmailAddress>bob@contoso.example</t:EmailAddress></t:Mailbox></t:ToRecipients></t:Message></m:Items></m:CreateItem>"
    )
}

fn fault_code(body: &str) -> Option<String> {
    let start = body.find("<e:ResponseCode")?;
    let rest = &body[start..];
    let open_end = rest.find('>')? + 1;
    let close = rest.find("</e:ResponseCode>")?;
    Some(rest[open_end..close].to_owned())
}

#[tokio::test]
async fn scanner_may_send_but_not_read_and_nothing_denied_goes_upstream() {
    let demo = start_demo().await;
    let url = demo.gateway.ews_url();

    let sent = post(
        &url,
        Some(SCANNER),
        envelope(Some(version_header()), &send_to_bob("Scan 0042")),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert!(
        sent.body.contains("ResponseClass=\"Success\""),
        "{}",
        sent.body
    );
    assert_eq!(
        demo.sim.ews_requests().len(),
        1,
        "the allowed call went upstream"
    );

    demo.sim.clear_requests();
    for body in [
        find_inbox().to_owned(),
        find_inbox_of("bob@contoso.example"),
    ] {
        let denied = post(&url, Some(SCANNER), envelope(Some(version_header()), &body)).await;
        assert_eq!(denied.status, 500, "{}", denied.body);
        assert_eq!(
            fault_code(&denied.body).as_deref(),
            Some("ErrorAccessDenied")
        );
        assert!(
            denied.body.contains(
                "scanner@contoso.example may not call FindItem (allowed: CreateItem, SendItem)"
            ),
            "{}",
            denied.body
        );
    }
    assert!(
        demo.sim.requests().is_empty(),
        "a denied operation reaches nothing upstream"
    );

    // Users without an operation list keep every operation.
    let alice = post(
        &url,
        Some(ALICE),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(alice.status, 200, "{}", alice.body);

    // Bob received the scan.
    let bob = post(
        &url,
        Some(BOB),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert!(bob.body.contains("Scan 0042"), "{}", bob.body);
    demo.stop().await;
}

#[tokio::test]
async fn concurrency_per_mailbox_is_capped_while_streams_hold_their_slots() {
    let s = start_demo_tuned(|c| c.limits.max_concurrent_requests_per_mailbox = 2, "").await;
    let url = s.gateway.ews_url();
    let first = open_stream(&url, ALICE, version_header(), 5).await;
    let as_alice = format!(
        "{}{}",
        version_header(),
        impersonation("SmtpAddress", "alice@contoso.example")
    );
    let second = open_stream(&url, ARCHIVER, &as_alice, 5).await;

    s.sim.clear_requests();
    for (who, header) in [
        (ALICE, version_header().to_owned()),
        (ARCHIVER, as_alice.clone()),
    ] {
        let busy = post(&url, Some(who), envelope(Some(&header), find_inbox())).await;
        assert_eq!(busy.status, 500, "{}", busy.body);
        assert_eq!(fault_code(&busy.body).as_deref(), Some("ErrorServerBusy"));
        assert!(
            busy.body
                .contains("alice@contoso.example already has 2 requests in flight"),
            "{}",
            busy.body
        );
        assert!(
            busy.body
                .contains("<t:Value Name=\"BackOffMilliseconds\">1000</t:Value>"),
            "{}",
            busy.body
        );
        assert_eq!(busy.headers["retry-after"], "1");
    }
    assert!(
        s.sim.ews_requests().is_empty(),
        "throttled calls reach nothing upstream"
    );
    let bob = post(
        &url,
        Some(BOB),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(
        bob.status, 200,
        "other mailboxes are not affected: {}",
        bob.body
    );

    // Closing one stream gives its slot back.
    drop(first);
    let mut freed = false;
    for _ in 0..100 {
        let reply = post(
            &url,
            Some(ALICE),
            envelope(Some(version_header()), find_inbox()),
        )
        .await;
        if reply.status == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(freed, "the slot of a closed stream is released");
    drop(second);
    s.stop().await;
}

#[tokio::test]
async fn a_principal_over_its_rate_is_told_to_back_off_and_nothing_goes_upstream() {
    let s = start_demo_tuned(
        |c| {
            c.limits.requests_per_second_per_principal = 1;
            c.limits.request_burst_per_principal = 3;
        },
        "",
    )
    .await;
    let url = s.gateway.ews_url();
    let replies = futures_util::future::join_all((0..10).map(|_| {
        post(
            &url,
            Some(ALICE),
            envelope(Some(version_header()), find_inbox()),
        )
    }))
    .await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let busy: Vec<_> = replies
        .iter()
        .filter(|r| fault_code(&r.body).as_deref() == Some("ErrorServerBusy"))
        .collect();
    assert_eq!(ok + busy.len(), 10);
    assert!(ok >= 3, "the burst passes: {ok}");
    assert!(busy.len() >= 5, "the rest is throttled: {}", busy.len());
    assert!(
        busy[0]
            .body
            .contains("alice@contoso.example is sending requests faster than the gateway allows"),
        "{}",
        busy[0].body
    );
    assert_eq!(
        s.sim.ews_requests().len(),
        ok,
        "only the allowed ones went upstream"
    );
    let bob = post(
        &url,
        Some(BOB),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(
        bob.status, 200,
        "principals are limited apart: {}",
        bob.body
    );
    s.stop().await;
}
