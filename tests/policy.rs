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
