//! Autodiscover answered by the gateway (issue 5): clients that discover their EWS URL are kept
//! on the gateway; POX and SOAP answer only for mailboxes the caller may act as; v2 JSON reveals
//! nothing about which mailboxes exist; nothing goes upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

const POX_REQ: &str =
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006";

fn pox_request(email: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Autodiscover xmlns=\"{POX_REQ}\"><Request><EMailAddress>{email}</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>"
    )
}

fn soap_request(mailboxes: &[&str]) -> String {
    let users: String = mailboxes
        .iter()
        .map(|m| format!("<a:User><a:Mailbox>{m}</a:Mailbox></a:User>"))
        .collect();
    format!(
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:a=\"http://schemas.microsoft.com/exchange/2010/Autodiscover\" xmlns:wsa=\"http://www.w3.org/2005/08/addressing\"><s:Header><a:RequestedServerVersion>Exchange2013</a:RequestedServerVersion><wsa:Action>http://schemas.microsoft.com/exchange/2010/Autodiscover/Autodiscover/GetUserSettings</wsa:Action></s:Header><s:Body><a:GetUserSettingsRequestMessage><a:Request><a:Users>{users}</a:Users><a:RequestedSettings><a:Setting>ExternalEwsUrl</a:Setting><a:Setting>AutoDiscoverSMTPAddress</a:Setting><a:Setting>GroupingInformation</a:Setting></a:RequestedSettings></a:Request></a:GetUserSettingsRequestMessage></s:Body></s:Envelope>"
    )
}

#[tokio::test]
async fn pox_points_the_caller_at_the_gateway_only_for_its_own_mailboxes() {
    let demo = start_demo().await;
    let base = format!("http://{}", demo.gateway.addr);
    let url = format!("{base}/Autodiscover/Autodiscover.xml");
    let ews = demo.gateway.ews_url();
    let own = post(&url, Some(ALICE), pox_request("alice@contoso.example")).await;
    assert_eq!(own.status, 200);
    assert!(
        own.body.contains(&format!("<EwsUrl>{ews}</EwsUrl>")),
        "{}",
        own.body
    );
    let other = post(&url, Some(ALICE), pox_request("bob@contoso.example")).await;
    assert!(!other.body.contains("EwsUrl"), "{}", other.body);
    let service = post(&url, Some(ARCHIVER), pox_request("bob@contoso.example")).await;
    assert!(service.body.contains("<EwsUrl>"));
    assert_eq!(
        post(&url, None, pox_request("alice@contoso.example"))
            .await
            .status,
        401
    );
    assert!(
        demo.sim.requests().is_empty(),
        "Autodiscover never goes upstream"
    );
    demo.stop().await;
}

#[tokio::test]
async fn soap_get_user_settings_answers_per_user() {
    let demo = start_demo().await;
    let url = format!("http://{}/autodiscover/autodiscover.svc", demo.gateway.addr);
    let reply = post(
        &url,
        Some(ALICE),
        soap_request(&["alice@contoso.example", "bob@contoso.example"]),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let root = ews_gateway::sim::xml::parse(reply.body.as_bytes()).unwrap();
    const A: &str = "http://schemas.microsoft.com/exchange/2010/Autodiscover";
    let responses: Vec<_> = root
        .path(&[
            ("http://schemas.xmlsoap.org/soap/envelope/", "Body"),
            (A, "GetUserSettingsResponseMessage"),
            (A, "Response"),
            (A, "UserResponses"),
        ])
        .unwrap()
        .children_named(A, "UserResponse")
        .cloned()
        .collect();
    assert_eq!(responses.len(), 2);
    assert_eq!(
        responses[0].child(A, "ErrorCode").unwrap().text(),
        "NoError"
    );
    assert!(reply.body.contains(&format!(
        "<Name>ExternalEwsUrl</Name><Value>{}</Value>",
        demo.gateway.ews_url()
    )));
    assert!(
        reply
            .body
            .contains("<SettingName>GroupingInformation</SettingName>"),
        "unknown settings are reported"
    );
    assert_eq!(
        responses[1].child(A, "ErrorCode").unwrap().text(),
        "InvalidUser"
    );
    demo.stop().await;
}

#[tokio::test]
async fn v2_json_is_the_same_for_every_address_and_needs_no_credentials() {
    let demo = start_demo().await;
    let base = format!("http://{}", demo.gateway.addr);
    let http = client();
    let mut bodies = Vec::new();
    for address in [
        "alice@contoso.example",
        "nobody@contoso.example",
        "x@elsewhere.example",
    ] {
        let resp = http
            .get(format!(
                "{base}/autodiscover/autodiscover.json/v1.0/{address}?Protocol=EWS"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        bodies.push(resp.text().await.unwrap());
    }
    assert!(bodies.iter().all(|b| b == &bodies[0]), "{bodies:?}");
    let json: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(json["Url"], demo.gateway.ews_url());
    let bad = http
        .get(format!(
            "{base}/autodiscover/autodiscover.json/v1.0/a@contoso.example?Protocol=ActiveSync"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    assert!(bad.text().await.unwrap().contains("InvalidProtocol"));
    assert!(demo.sim.requests().is_empty());
    demo.stop().await;
}
