//! End-to-end tests of the gateway against the simulator (issue 3): what the client gets, and,
//! through the simulator's request log, exactly what reached "Exchange".

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use ews_gateway::soap::{ConnectingSid, ConnectingSidKind};

fn injected(kind: ConnectingSidKind, value: &str) -> String {
    ConnectingSid {
        kind,
        value: value.to_owned(),
    }
    .to_header_xml()
}

#[tokio::test]
async fn unauthenticated_request_is_challenged_and_nothing_goes_upstream() {
    let demo = start_demo().await;
    let reply = post(
        &demo.gateway.ews_url(),
        None,
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(reply.status, 401);
    let challenge = reply.headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Basic realm=\""), "{challenge}");
    assert!(!challenge.to_ascii_lowercase().contains("ntlm"));
    assert!(
        demo.sim.requests().is_empty(),
        "nothing may reach the simulator"
    );
    demo.stop().await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_challenge() {
    let demo = start_demo().await;
    let url = demo.gateway.ews_url();
    let wrong = post(
        &url,
        Some(("alice@contoso.example", "nope")),
        envelope(None, find_inbox()),
    )
    .await;
    let unknown = post(
        &url,
        Some(("mallory@contoso.example", "nope")),
        envelope(None, find_inbox()),
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(unknown.status, 401);
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(
        wrong.headers["www-authenticate"],
        unknown.headers["www-authenticate"]
    );
    assert!(demo.sim.requests().is_empty());
    demo.stop().await;
}

#[tokio::test]
async fn own_mailbox_request_reaches_exchange_with_bearer_anchor_and_injected_impersonation() {
    let demo = start_demo().await;
    let body = envelope(Some(version_header()), find_inbox());
    let reply = post(&demo.gateway.ews_url(), Some(ALICE), body.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("FindItemResponse"), "{}", reply.body);
    assert!(
        reply.body.contains("Quarterly report"),
        "alice's inbox: {}",
        reply.body
    );

    let ews = demo.sim.ews_requests();
    assert_eq!(ews.len(), 1);
    let seen = &ews[0];
    let auth = seen.header("authorization").unwrap();
    assert!(
        auth.starts_with("Bearer ey"),
        "bearer expected, got {auth:.12}"
    );
    assert!(
        !seen
            .headers
            .iter()
            .any(|(_, v)| v.contains("alice-demo-pass"))
    );
    assert_eq!(
        seen.header("x-anchormailbox"),
        Some("alice@contoso.example")
    );
    let upstream = String::from_utf8(seen.body.to_vec()).unwrap();
    let ours = injected(
        ConnectingSidKind::PrimarySmtpAddress,
        "alice@contoso.example",
    );
    assert_eq!(upstream.matches(&ours).count(), 1, "{upstream}");
    assert_eq!(
        upstream.replacen(&ours, "", 1),
        body,
        "client bytes must be preserved exactly"
    );
    demo.stop().await;
}

#[tokio::test]
async fn alice_asking_for_bobs_mailbox_is_refused_before_upstream() {
    let demo = start_demo().await;
    let header = format!(
        "{}{}",
        version_header(),
        impersonation("PrimarySmtpAddress", "bob@contoso.example")
    );
    let reply = post(
        &demo.gateway.ews_url(),
        Some(ALICE),
        envelope(Some(&header), find_inbox()),
    )
    .await;
    assert_eq!(reply.status, 500);
    assert!(
        reply.body.contains("ErrorImpersonateUserDenied"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("bob@contoso.example"),
        "the fault names the mailbox: {}",
        reply.body
    );
    assert!(demo.sim.requests().is_empty(), "nothing may reach Exchange");
    demo.stop().await;
}

#[tokio::test]
async fn alice_reaching_bobs_folder_through_mailbox_element_gets_exchanges_access_denied() {
    // The gateway impersonates alice, so Exchange applies alice's own rights.
    let demo = start_demo().await;
    let reply = post(
        &demo.gateway.ews_url(),
        Some(ALICE),
        envelope(
            Some(version_header()),
            &find_inbox_of("bob@contoso.example"),
        ),
    )
    .await;
    assert!(reply.body.contains("ErrorAccessDenied"), "{}", reply.body);
    assert!(!reply.body.contains("Welcome, Bob"));
    let ews = demo.sim.ews_requests();
    assert_eq!(ews.len(), 1);
    let upstream = String::from_utf8(ews[0].body.to_vec()).unwrap();
    assert!(upstream.contains(&injected(
        ConnectingSidKind::PrimarySmtpAddress,
        "alice@contoso.example"
    )));
    demo.stop().await;
}

#[tokio::test]
async fn archiver_may_impersonate_alice_as_one_primary_smtp_address() {
    let demo = start_demo().await;
    let header = format!(
        "{}{}",
        version_header(),
        impersonation("PrimarySmtpAddress", "alice@contoso.example")
    );
    let body = envelope(Some(&header), find_inbox());
    let reply = post(&demo.gateway.ews_url(), Some(ARCHIVER), body.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("Quarterly report"));
    let ews = demo.sim.ews_requests();
    let seen = &ews[0];
    assert_eq!(
        seen.header("x-anchormailbox"),
        Some("alice@contoso.example")
    );
    let upstream = String::from_utf8(seen.body.to_vec()).unwrap();
    assert_eq!(
        upstream.matches("<t:ExchangeImpersonation").count(),
        1,
        "exactly one: {upstream}"
    );
    assert!(upstream.contains(&injected(
        ConnectingSidKind::PrimarySmtpAddress,
        "alice@contoso.example"
    )));
    demo.stop().await;
}

#[tokio::test]
async fn envelope_without_header_gets_one() {
    let demo = start_demo().await;
    let reply = post(
        &demo.gateway.ews_url(),
        Some(BOB),
        envelope(None, find_inbox()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("Welcome, Bob"));
    let upstream = String::from_utf8(demo.sim.ews_requests()[0].body.to_vec()).unwrap();
    assert!(upstream.contains(&injected(
        ConnectingSidKind::PrimarySmtpAddress,
        "bob@contoso.example"
    )));
    demo.stop().await;
}

#[tokio::test]
async fn paths_outside_the_allow_list_are_404_and_never_forwarded() {
    let demo = start_demo().await;
    let base = format!("http://{}", demo.gateway.addr);
    for path in [
        "/owa/",
        "/EWS/mrsproxy.svc",
        "/ecp/",
        "/EWS/Exchange.asmx/x",
        "/PowerShell-LiveID",
    ] {
        let resp = client()
            .post(format!("{base}{path}"))
            .basic_auth(ALICE.0, Some(ALICE.1))
            .body(envelope(None, find_inbox()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{path}");
    }
    assert!(demo.sim.requests().is_empty());
    demo.stop().await;
}

#[tokio::test]
async fn lower_case_path_is_served() {
    let demo = start_demo().await;
    let url = format!("http://{}/ews/exchange.asmx", demo.gateway.addr);
    let reply = post(
        &url,
        Some(ALICE),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    demo.stop().await;
}

#[tokio::test]
async fn username_forms_map_to_the_same_user() {
    let demo = start_demo().await;
    let url = demo.gateway.ews_url();
    for user in ["alice", "CONTOSO\\alice", "Alice@Contoso.example"] {
        let reply = post(
            &url,
            Some((user, "alice-demo-pass")),
            envelope(Some(version_header()), find_inbox()),
        )
        .await;
        assert_eq!(reply.status, 200, "{user}: {}", reply.body);
    }
    demo.stop().await;
}

#[tokio::test]
async fn token_is_reused_across_requests() {
    let demo = start_demo().await;
    let url = demo.gateway.ews_url();
    for _ in 0..5 {
        let reply = post(
            &url,
            Some(ALICE),
            envelope(Some(version_header()), find_inbox()),
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    let token_calls = demo
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.contains("/oauth2/"))
        .count();
    assert_eq!(token_calls, 1, "one token for five requests");
    demo.stop().await;
}

#[tokio::test]
async fn token_endpoint_down_is_a_server_busy_fault_naming_entra() {
    let demo = start_demo().await;
    demo.sim.set_faults(ews_gateway::sim::faults::Faults {
        token_unavailable: true,
        ..Default::default()
    });
    let reply = post(
        &demo.gateway.ews_url(),
        Some(ALICE),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(reply.status, 500);
    assert!(reply.body.contains("ErrorServerBusy"), "{}", reply.body);
    assert!(reply.body.contains("Microsoft Entra ID"), "{}", reply.body);
    assert!(reply.body.contains("BackOffMilliseconds"));
    assert!(demo.sim.ews_requests().is_empty());
    demo.stop().await;
}

#[tokio::test]
async fn exchange_fault_passes_through_verbatim() {
    let demo = start_demo().await;
    demo.sim.set_faults(ews_gateway::sim::faults::Faults {
        ews_server_busy_backoff_ms: Some(1234),
        ..Default::default()
    });
    let reply = post(
        &demo.gateway.ews_url(),
        Some(ALICE),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(reply.status, 500);
    assert!(
        reply
            .body
            .contains("<t:Value Name=\"BackOffMilliseconds\">1234</t:Value>"),
        "{}",
        reply.body
    );
    demo.stop().await;
}

#[tokio::test]
async fn clients_own_authorization_and_forwarded_headers_are_not_forwarded() {
    let demo = start_demo().await;
    let resp = client()
        .post(demo.gateway.ews_url())
        .basic_auth(ALICE.0, Some(ALICE.1))
        .header("X-Forwarded-For", "10.9.9.9")
        .header("X-AnchorMailbox", "bob@contoso.example")
        .header("client-request-id", "4f6a1c2e-0000-4000-8000-000000000001")
        .header("Content-Type", "text/xml; charset=utf-8")
        .body(envelope(Some(version_header()), find_inbox()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let seen = &demo.sim.ews_requests()[0];
    assert!(seen.header("x-forwarded-for").is_none());
    assert_eq!(seen.header_all("authorization").len(), 1);
    assert!(seen.header("authorization").unwrap().starts_with("Bearer "));
    assert_eq!(
        seen.header("x-anchormailbox"),
        Some("alice@contoso.example"),
        "the client cannot steer the anchor"
    );
    assert_eq!(
        seen.header("client-request-id"),
        Some("4f6a1c2e-0000-4000-8000-000000000001")
    );
    demo.stop().await;
}

#[tokio::test]
async fn client_request_id_is_generated_when_absent() {
    let demo = start_demo().await;
    post(
        &demo.gateway.ews_url(),
        Some(ALICE),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    let seen = &demo.sim.ews_requests()[0];
    let id = seen.header("client-request-id").unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    demo.stop().await;
}

#[tokio::test]
async fn privileged_header_is_refused_before_upstream() {
    let demo = start_demo().await;
    let header = format!(
        "{}<t:SerializedSecurityContext><t:UserSid>S-1-5-18</t:UserSid></t:SerializedSecurityContext>",
        version_header()
    );
    let reply = post(
        &demo.gateway.ews_url(),
        Some(ARCHIVER),
        envelope(Some(&header), find_inbox()),
    )
    .await;
    assert_eq!(reply.status, 500);
    assert!(
        reply.body.contains("SerializedSecurityContext"),
        "{}",
        reply.body
    );
    assert!(demo.sim.requests().is_empty());
    demo.stop().await;
}

#[tokio::test]
async fn doctype_is_refused_before_upstream() {
    let demo = start_demo().await;
    let body = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"b\">]>{}",
        &envelope(None, find_inbox())[39..]
    );
    let reply = post(&demo.gateway.ews_url(), Some(ALICE), body).await;
    assert_eq!(reply.status, 500);
    assert!(
        reply.body.to_ascii_lowercase().contains("doctype") || reply.body.contains("DTD"),
        "{}",
        reply.body
    );
    assert!(demo.sim.requests().is_empty());
    demo.stop().await;
}
