//! HTTP-level tests of the simulated EWS endpoint: each rule Exchange Online enforces, and the
//! operations clients rely on. Each test fails if its rule is loosened.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use ews_gateway::sim::tokens::{ClientAuth, TokenClaims, now_unix};
use ews_gateway::sim::{self, SimConfig, SimHandle};

const S: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const M: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
const T: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
const GATEWAY_APP: &str = "11111111-2222-4333-8444-555555555555";

async fn start() -> SimHandle {
    start_with(SimConfig::builtin().unwrap()).await
}

async fn start_with(config: SimConfig) -> SimHandle {
    ews_gateway::tls::install_crypto_provider();
    sim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn token_with(sim: &SimHandle, app_id: &str, edit: impl FnOnce(&mut TokenClaims)) -> String {
    let dir = sim.state.directory.read().unwrap();
    let tenant = dir.tenant("contoso.example").unwrap();
    let app = tenant.app(app_id).unwrap();
    let mut claims = TokenClaims::app_only(
        &tenant.id,
        app,
        "https://outlook.office365.com",
        ClientAuth::Secret,
        now_unix(),
        Duration::from_secs(3600),
    );
    edit(&mut claims);
    sim.state.tokens.issue(&claims).unwrap()
}

fn token(sim: &SimHandle) -> String {
    token_with(sim, GATEWAY_APP, |_| {})
}

fn imp(kind: &str, value: &str) -> String {
    format!(
        "<t:ExchangeImpersonation><t:ConnectingSID><t:{kind}>{value}</t:{kind}></t:ConnectingSID></t:ExchangeImpersonation>"
    )
}

fn env(header: &str, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope xmlns:s=\"{S}\" xmlns:m=\"{M}\" xmlns:t=\"{T}\"><s:Header><t:RequestServerVersion Version=\"Exchange2016\"/>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )
}

fn as_alice(body: &str) -> String {
    env(&imp("SmtpAddress", "alice@contoso.example"), body)
}

const GET_INBOX: &str = "<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id=\"inbox\"/></m:FolderIds></m:GetFolder>";

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn call(sim: &SimHandle, bearer: Option<&str>, anchor: Option<&str>, body: String) -> Reply {
    let mut req = reqwest::Client::new()
        .post(sim.ews_url())
        .header("Content-Type", "text/xml; charset=utf-8")
        .body(body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(a) = anchor {
        req = req.header("X-AnchorMailbox", a);
    }
    let resp = req.send().await.unwrap();
    Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.text().await.unwrap(),
    }
}

async fn alice(sim: &SimHandle, body: &str) -> Reply {
    call(
        sim,
        Some(&token(sim)),
        Some("alice@contoso.example"),
        as_alice(body),
    )
    .await
}

fn assert_fault(reply: &Reply, code: &str) {
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(
        reply.body.contains(&format!("a:{code}</faultcode>")),
        "expected {code}: {}",
        reply.body
    );
    assert!(reply.body.contains(&format!("<e:ResponseCode xmlns:e=\"http://schemas.microsoft.com/exchange/services/2006/errors\">{code}</e:ResponseCode>")));
}

#[tokio::test]
async fn no_bearer_or_basic_gets_the_exchange_online_challenge() {
    let sim = start().await;
    for auth in [None, Some("Basic YWxpY2U6cGFzcw==")] {
        let mut req = reqwest::Client::new()
            .post(sim.ews_url())
            .body(as_alice(GET_INBOX));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        let challenge = resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.starts_with("Bearer client_id=\"00000002-0000-0ff1-ce00-000000000000\""),
            "{challenge}"
        );
        assert!(challenge.ends_with("Basic Realm=\"\""), "{challenge}");
        assert!(!challenge.contains("error="));
        assert_eq!(resp.text().await.unwrap(), "");
    }
}

#[tokio::test]
async fn bad_tokens_get_invalid_token_with_diagnostics() {
    let sim = start().await;
    let cases = [
        ("garbage".to_owned(), "2000001;"),
        (
            token_with(&sim, GATEWAY_APP, |c| {
                c.aud = "https://graph.microsoft.com".into()
            }),
            "2000003;",
        ),
        (
            token_with(&sim, GATEWAY_APP, |c| {
                c.exp = now_unix() - 7200;
                c.nbf = c.exp - 3600;
                c.iat = c.nbf;
            }),
            "2000001;",
        ),
    ];
    for (bearer, code) in cases {
        let reply = call(
            &sim,
            Some(&bearer),
            Some("alice@contoso.example"),
            as_alice(GET_INBOX),
        )
        .await;
        assert_eq!(reply.status, 401);
        assert!(
            reply.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("error=\"invalid_token\"")
        );
        let diag = reply.headers["x-ms-diagnostics"].to_str().unwrap();
        assert!(diag.starts_with(code), "{diag}");
    }
    // A token from another simulator (another key) does not validate.
    let other = start().await;
    let foreign = token(&other);
    let reply = call(
        &sim,
        Some(&foreign),
        Some("alice@contoso.example"),
        as_alice(GET_INBOX),
    )
    .await;
    assert_eq!(reply.status, 401);
}

#[tokio::test]
async fn token_without_roles_and_without_rbac_is_2000008() {
    let sim = start().await;
    let bearer = token_with(&sim, "33333333-2222-4333-8444-555555555555", |_| {});
    let reply = call(
        &sim,
        Some(&bearer),
        Some("alice@contoso.example"),
        as_alice(GET_INBOX),
    )
    .await;
    assert_eq!(reply.status, 401);
    assert!(
        reply.headers["x-ms-diagnostics"]
            .to_str()
            .unwrap()
            .starts_with("2000008;")
    );
}

#[tokio::test]
async fn app_only_token_needs_exactly_one_impersonation_header() {
    let sim = start().await;
    let bearer = token(&sim);
    let none = call(
        &sim,
        Some(&bearer),
        Some("alice@contoso.example"),
        env("", GET_INBOX),
    )
    .await;
    assert_fault(&none, "ErrorInvalidExchangeImpersonationHeaderData");
    assert!(none.body.contains(
        "ExchangeImpersonation SOAP header must be present for this type of OAuth token."
    ));
    let two = format!(
        "{}{}",
        imp("SmtpAddress", "alice@contoso.example"),
        imp("SmtpAddress", "alice@contoso.example")
    );
    let reply = call(
        &sim,
        Some(&bearer),
        Some("alice@contoso.example"),
        env(&two, GET_INBOX),
    )
    .await;
    assert_fault(&reply, "ErrorSchemaValidation");
}

#[tokio::test]
async fn all_four_connecting_sid_forms_resolve() {
    let sim = start().await;
    let bearer = token(&sim);
    for (kind, value) in [
        ("SmtpAddress", "alice.anders@contoso.example"),
        ("PrimarySmtpAddress", "alice@contoso.example"),
        ("PrincipalName", "alice@contoso.onmicrosoft.example"),
        ("SID", "S-1-5-21-1004336348-1177238915-682003330-1101"),
    ] {
        let reply = call(
            &sim,
            Some(&bearer),
            Some("alice@contoso.example"),
            env(&imp(kind, value), GET_INBOX),
        )
        .await;
        assert_eq!(reply.status, 200, "{kind}: {}", reply.body);
    }
    // An alias is not a primary address.
    let reply = call(
        &sim,
        Some(&bearer),
        Some("alice@contoso.example"),
        env(
            &imp("PrimarySmtpAddress", "alice.anders@contoso.example"),
            GET_INBOX,
        ),
    )
    .await;
    assert_fault(&reply, "ErrorNonExistentMailbox");
}

#[tokio::test]
async fn unknown_mailbox_is_error_non_existent_mailbox_naming_the_address() {
    let sim = start().await;
    let reply = call(
        &sim,
        Some(&token(&sim)),
        Some("ghost@contoso.example"),
        env(&imp("SmtpAddress", "ghost@contoso.example"), GET_INBOX),
    )
    .await;
    assert_fault(&reply, "ErrorNonExistentMailbox");
    assert!(
        reply
            .body
            .contains("The SMTP address has no mailbox associated with it.")
    );
    assert!(
        reply
            .body
            .contains("<t:Value Name=\"SmtpAddress\">ghost@contoso.example</t:Value>"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn app_outside_ews_allowed_app_ids_gets_403_with_reason() {
    let sim = start().await;
    let bearer = token_with(&sim, "22222222-2222-4333-8444-555555555555", |_| {});
    let reply = call(
        &sim,
        Some(&bearer),
        Some("alice@contoso.example"),
        as_alice(GET_INBOX),
    )
    .await;
    assert_eq!(reply.status, 403);
    assert!(
        reply.headers["x-ews-policy-reason"]
            .to_str()
            .unwrap()
            .contains("EWSAllowedAppIDs")
    );
}

#[tokio::test]
async fn rbac_scoped_app_reaches_only_its_scope() {
    let sim = start().await;
    let bearer = token_with(&sim, "44444444-2222-4333-8444-555555555555", |_| {});
    let ok = call(
        &sim,
        Some(&bearer),
        Some("alice@contoso.example"),
        as_alice(GET_INBOX),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let carol = call(
        &sim,
        Some(&bearer),
        Some("carol@contoso.example"),
        env(&imp("SmtpAddress", "carol@contoso.example"), GET_INBOX),
    )
    .await;
    assert_eq!(carol.status, 403);
    assert!(
        carol.headers["x-ews-policy-reason"]
            .to_str()
            .unwrap()
            .contains("RBAC")
    );
}

#[tokio::test]
async fn strict_anchor_refuses_missing_or_other_mailbox_and_lenient_accepts() {
    let sim = start().await;
    let bearer = token(&sim);
    for anchor in [None, Some("bob@contoso.example")] {
        let reply = call(&sim, Some(&bearer), anchor, as_alice(GET_INBOX)).await;
        assert_fault(&reply, "ErrorNoRespondingCASInDestinationSite");
    }
    for anchor in [
        "alice@contoso.example",
        "ALICE.ANDERS@contoso.example",
        "alice@contoso.onmicrosoft.example",
    ] {
        let reply = call(&sim, Some(&bearer), Some(anchor), as_alice(GET_INBOX)).await;
        assert_eq!(reply.status, 200, "{anchor}");
    }
    let mut config = SimConfig::builtin().unwrap();
    config.strict_anchor = false;
    let lenient = start_with(config).await;
    let reply = call(&lenient, Some(&token(&lenient)), None, as_alice(GET_INBOX)).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn success_carries_server_version_info_and_request_id() {
    let sim = start().await;
    let reply = alice(&sim, GET_INBOX).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "text/xml; charset=utf-8");
    assert!(uuid::Uuid::parse_str(reply.headers["request-id"].to_str().unwrap()).is_ok());
    let root = sim::xml::parse(reply.body.as_bytes()).unwrap();
    let svi = root
        .path(&[(S, "Header"), (T, "ServerVersionInfo")])
        .unwrap();
    assert_eq!(svi.attr("MajorVersion"), Some("15"));
    assert!(
        root.path(&[(S, "Body"), (M, "GetFolderResponse")])
            .is_some()
    );
}

#[tokio::test]
async fn malformed_and_schema_violations_get_the_real_faults() {
    let sim = start().await;
    let bearer = token(&sim);
    let a = Some("alice@contoso.example");
    for body in [
        "".to_owned(),
        "<s:Envelope".to_owned(),
        format!("<!DOCTYPE x [<!ENTITY e \"x\">]>{}", as_alice(GET_INBOX)),
    ] {
        assert_fault(
            &call(&sim, Some(&bearer), a, body).await,
            "ErrorInvalidRequest",
        );
    }
    let https_ns = as_alice(GET_INBOX).replace("xmlns:m=\"http://", "xmlns:m=\"https://");
    let reply = call(&sim, Some(&bearer), a, https_ns).await;
    assert_fault(&reply, "ErrorSchemaValidation");
    assert!(reply.body.contains("Violation"));
    let bad_version = as_alice(GET_INBOX).replace("Exchange2016", "Exchange2099");
    assert_fault(
        &call(&sim, Some(&bearer), a, bad_version).await,
        "ErrorInvalidRequest",
    );
    let empty_body = as_alice("");
    assert_fault(
        &call(&sim, Some(&bearer), a, empty_body).await,
        "ErrorSchemaValidation",
    );
    let unknown_header = env(
        &format!("{}<t:Bogus/>", imp("SmtpAddress", "alice@contoso.example")),
        GET_INBOX,
    );
    assert_fault(
        &call(&sim, Some(&bearer), a, unknown_header).await,
        "ErrorSchemaValidation",
    );
    let privileged = env(
        &format!(
            "{}<t:OpenAsAdminOrSystemService LogonType=\"Admin\"/>",
            imp("SmtpAddress", "alice@contoso.example")
        ),
        GET_INBOX,
    );
    assert_fault(
        &call(&sim, Some(&bearer), a, privileged).await,
        "ErrorAccessDenied",
    );
}

#[tokio::test]
async fn delegate_rights_apply_to_other_mailboxes() {
    let sim = start().await;
    let sales_inbox = "<m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:ParentFolderIds><t:DistinguishedFolderId Id=\"inbox\"><t:Mailbox><t:EmailAddress>sales@contoso.example</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId></m:ParentFolderIds></m:FindItem>";
    let reply = alice(&sim, sales_inbox).await;
    assert!(
        reply.body.contains("Order 7731"),
        "alice is a delegate of sales: {}",
        reply.body
    );
    let bob = call(
        &sim,
        Some(&token(&sim)),
        Some("bob@contoso.example"),
        env(&imp("SmtpAddress", "bob@contoso.example"), sales_inbox),
    )
    .await;
    assert!(bob.body.contains("ErrorAccessDenied"), "{}", bob.body);
    assert!(!bob.body.contains("Order 7731"));
}

#[tokio::test]
async fn unsupported_operation_is_a_clear_fault() {
    let sim = start().await;
    let reply = alice(&sim, "<m:GetUserOofSettingsRequest/>").await;
    assert_fault(&reply, "ErrorInvalidOperation");
    assert!(
        reply
            .body
            .contains("GetUserOofSettingsRequest is not simulated")
    );
}

#[tokio::test]
async fn https_with_the_generated_ca() {
    let mut config = SimConfig::builtin().unwrap();
    config.https = true;
    let sim = start_with(config).await;
    assert!(sim.ews_url().starts_with("https://"));
    let ca = reqwest::Certificate::from_pem(sim.ca_pem.as_ref().unwrap().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let resp = client
        .post(sim.ews_url())
        .bearer_auth(token(&sim))
        .header("X-AnchorMailbox", "alice@contoso.example")
        .body(as_alice(GET_INBOX))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // Without the CA the certificate is refused.
    assert!(
        reqwest::Client::new()
            .post(sim.ews_url())
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn injected_faults() {
    let sim = start().await;
    sim.set_faults(sim::faults::Faults {
        ews_server_busy_backoff_ms: Some(2500),
        ..Default::default()
    });
    let reply = alice(&sim, GET_INBOX).await;
    assert_fault(&reply, "ErrorServerBusy");
    assert!(
        reply
            .body
            .contains("<t:Value Name=\"BackOffMilliseconds\">2500</t:Value>")
    );
    sim.set_faults(sim::faults::Faults {
        ews_unavailable: true,
        ..Default::default()
    });
    assert_eq!(alice(&sim, GET_INBOX).await.status, 503);
    sim.set_faults(sim::faults::Faults {
        ews_drop_mid_response: true,
        ..Default::default()
    });
    let resp = reqwest::Client::new()
        .post(sim.ews_url())
        .bearer_auth(token(&sim))
        .header("X-AnchorMailbox", "alice@contoso.example")
        .body(as_alice(GET_INBOX))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.text().await.is_err(), "the body must break off");
    // Through the admin API too.
    let http = reqwest::Client::new();
    let put = http
        .put(format!("{}/_sim/faults", sim.base_url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 204);
    assert_eq!(alice(&sim, GET_INBOX).await.status, 200);
}

#[tokio::test]
async fn request_log_records_headers_and_bytes_and_can_be_cleared() {
    let sim = start().await;
    let body = as_alice(GET_INBOX);
    alice(&sim, GET_INBOX).await;
    let seen = sim.ews_requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, body.as_bytes());
    assert_eq!(
        seen[0].header("x-anchormailbox"),
        Some("alice@contoso.example")
    );
    let http = reqwest::Client::new();
    let json: serde_json::Value = http
        .get(format!("{}/_sim/requests", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    http.delete(format!("{}/_sim/requests", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert!(sim.requests().iter().all(|r| !r.is_ews()));
}

#[tokio::test]
async fn request_log_seq_keeps_counting_after_a_clear() {
    let sim = start().await;
    alice(&sim, GET_INBOX).await;
    let before = sim.ews_requests()[0].seq;
    reqwest::Client::new()
        .delete(format!("{}/_sim/requests", sim.base_url()))
        .send()
        .await
        .unwrap();
    alice(&sim, GET_INBOX).await;
    let after = sim.ews_requests();
    assert_eq!(after.len(), 1);
    assert!(
        after[0].seq > before,
        "{} must come after {before}: a recorder tells new entries by seq",
        after[0].seq
    );
}

// ---- operations ----

fn find(folder: &str, view: &str) -> String {
    format!(
        "<m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape>{view}<m:ParentFolderIds><t:DistinguishedFolderId Id=\"{folder}\"/></m:ParentFolderIds></m:FindItem>"
    )
}

fn ids(body: &str) -> Vec<String> {
    body.split("<t:ItemId Id=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn find_item_pages_are_disjoint_and_report_their_range() {
    let sim = start().await;
    let first = alice(&sim, &find("inbox", "<m:IndexedPageItemView MaxEntriesReturned=\"2\" Offset=\"0\" BasePoint=\"Beginning\"/>")).await;
    assert!(
        first.body.contains(
            "IndexedPagingOffset=\"2\" TotalItemsInView=\"3\" IncludesLastItemInRange=\"false\""
        ),
        "{}",
        first.body
    );
    let second = alice(&sim, &find("inbox", "<m:IndexedPageItemView MaxEntriesReturned=\"2\" Offset=\"2\" BasePoint=\"Beginning\"/>")).await;
    assert!(
        second.body.contains(
            "IndexedPagingOffset=\"3\" TotalItemsInView=\"3\" IncludesLastItemInRange=\"true\""
        ),
        "{}",
        second.body
    );
    let (a, b) = (ids(&first.body), ids(&second.body));
    assert_eq!(a.len(), 2);
    assert_eq!(b.len(), 1);
    assert!(!a.contains(&b[0]));
    let bad = alice(&sim, &find("inbox", "<m:IndexedPageItemView MaxEntriesReturned=\"0\" Offset=\"0\" BasePoint=\"Beginning\"/>")).await;
    assert!(
        bad.status == 500 || bad.body.contains("ResponseClass=\"Error\""),
        "{}",
        bad.body
    );
}

#[tokio::test]
async fn restriction_filters_by_subject() {
    let sim = start().await;
    let restriction = "<m:Restriction><t:Contains ContainmentMode=\"Substring\" ContainmentComparison=\"IgnoreCase\"><t:FieldURI FieldURI=\"item:Subject\"/><t:Constant Value=\"lunch\"/></t:Contains></m:Restriction>";
    let reply = alice(&sim, &find("inbox", restriction)).await;
    assert!(reply.body.contains("Lunch on Friday?"));
    assert!(!reply.body.contains("Quarterly report"));
}

#[tokio::test]
async fn send_and_save_copy_delivers_to_the_recipient() {
    let sim = start().await;
    let create = "<m:CreateItem MessageDisposition=\"SendAndSaveCopy\"><m:SavedItemFolderId><t:DistinguishedFolderId Id=\"sentitems\"/></m:SavedItemFolderId><m:Items><t:Message><t:Subject>Hello Bob</t:Subject><t:Body BodyType=\"Text\">Hi</t:Body><t:ToRecipients><t:Mailbox><t:EmailAddress>bob@contoso.example</t:EmailAddress></t:Mailbox></t:ToRecipients></t:Message></m:Items></m:CreateItem>";
    let reply = alice(&sim, create).await;
    assert!(
        reply.body.contains("ResponseClass=\"Success\""),
        "{}",
        reply.body
    );
    let sent = alice(&sim, &find("sentitems", "")).await;
    assert!(sent.body.contains("Hello Bob"));
    let bob = call(
        &sim,
        Some(&token(&sim)),
        Some("bob@contoso.example"),
        env(
            &imp("SmtpAddress", "bob@contoso.example"),
            &find("inbox", ""),
        ),
    )
    .await;
    assert!(bob.body.contains("Hello Bob"), "{}", bob.body);
    assert!(bob.body.contains("<t:IsRead>false</t:IsRead>"));
}

#[tokio::test]
async fn get_item_with_mime_and_attachment_round_trip() {
    let sim = start().await;
    let list = alice(&sim, &find("inbox", "<m:Restriction><t:IsEqualTo><t:FieldURI FieldURI=\"item:Subject\"/><t:FieldURIOrConstant><t:Constant Value=\"Quarterly report\"/></t:FieldURIOrConstant></t:IsEqualTo></m:Restriction>")).await;
    let id = ids(&list.body).pop().unwrap();
    let get = alice(&sim, &format!("<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape><t:IncludeMimeContent>true</t:IncludeMimeContent></m:ItemShape><m:ItemIds><t:ItemId Id=\"{id}\"/></m:ItemIds></m:GetItem>")).await;
    let root = sim::xml::parse(get.body.as_bytes()).unwrap();
    let msg = root
        .path(&[
            (S, "Body"),
            (M, "GetItemResponse"),
            (M, "ResponseMessages"),
            (M, "GetItemResponseMessage"),
            (M, "Items"),
            (T, "Message"),
        ])
        .unwrap();
    use base64::Engine;
    let mime = base64::engine::general_purpose::STANDARD
        .decode(msg.child(T, "MimeContent").unwrap().text())
        .unwrap();
    assert!(
        String::from_utf8(mime)
            .unwrap()
            .contains("Subject: Quarterly report")
    );
    let att = msg
        .path(&[
            (T, "Attachments"),
            (T, "FileAttachment"),
            (T, "AttachmentId"),
        ])
        .unwrap()
        .attr("Id")
        .unwrap()
        .to_owned();
    let got = alice(&sim, &format!("<m:GetAttachment><m:AttachmentIds><t:AttachmentId Id=\"{att}\"/></m:AttachmentIds></m:GetAttachment>")).await;
    let content = base64::engine::general_purpose::STANDARD.encode("quarter,revenue\nQ3,1200\n");
    assert!(
        got.body
            .contains(&format!("<t:Content>{content}</t:Content>")),
        "{}",
        got.body
    );
    // Create, then delete an attachment.
    let created = alice(&sim, &format!("<m:CreateAttachment><m:ParentItemId Id=\"{id}\"/><m:Attachments><t:FileAttachment><t:Name>x.txt</t:Name><t:Content>eHh4</t:Content></t:FileAttachment></m:Attachments></m:CreateAttachment>")).await;
    let new_att = created
        .body
        .split("AttachmentId Id=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let deleted = alice(&sim, &format!("<m:DeleteAttachment><m:AttachmentIds><t:AttachmentId Id=\"{new_att}\"/></m:AttachmentIds></m:DeleteAttachment>")).await;
    assert!(deleted.body.contains("ResponseClass=\"Success\""));
    let again = alice(&sim, &format!("<m:GetAttachment><m:AttachmentIds><t:AttachmentId Id=\"{new_att}\"/></m:AttachmentIds></m:GetAttachment>")).await;
    assert!(
        again.body.contains("ResponseClass=\"Error\"") && !again.body.contains("<t:Content>"),
        "a deleted attachment is gone: {}",
        again.body
    );
}

#[tokio::test]
async fn sync_folder_items_returns_only_changes_after_the_first_sync() {
    let sim = start().await;
    let sync = |state: &str| {
        format!(
            "<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:SyncFolderId><t:DistinguishedFolderId Id=\"inbox\"/></m:SyncFolderId>{state}<m:MaxChangesReturned>100</m:MaxChangesReturned></m:SyncFolderItems>"
        )
    };
    let first = alice(&sim, &sync("")).await;
    assert_eq!(
        first.body.matches("<t:Create>").count(),
        3,
        "{}",
        first.body
    );
    let state = first
        .body
        .split("<m:SyncState>")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_owned();
    let again = alice(&sim, &sync(&format!("<m:SyncState>{state}</m:SyncState>"))).await;
    assert_eq!(
        again.body.matches("<t:Create>").count(),
        0,
        "{}",
        again.body
    );
    let create = "<m:CreateItem MessageDisposition=\"SendOnly\"><m:Items><t:Message><t:Subject>New one</t:Subject><t:ToRecipients><t:Mailbox><t:EmailAddress>alice@contoso.example</t:EmailAddress></t:Mailbox></t:ToRecipients></t:Message></m:Items></m:CreateItem>";
    alice(&sim, create).await;
    let third = alice(&sim, &sync(&format!("<m:SyncState>{state}</m:SyncState>"))).await;
    assert_eq!(
        third.body.matches("<t:Create>").count(),
        1,
        "{}",
        third.body
    );
}

#[tokio::test]
async fn move_and_delete_items() {
    let sim = start().await;
    let id = ids(&alice(&sim, &find("inbox", "")).await.body).remove(0);
    let moved = alice(&sim, &format!("<m:MoveItem><m:ToFolderId><t:DistinguishedFolderId Id=\"junkemail\"/></m:ToFolderId><m:ItemIds><t:ItemId Id=\"{id}\"/></m:ItemIds></m:MoveItem>")).await;
    let new_id = ids(&moved.body).remove(0);
    assert_eq!(ids(&alice(&sim, &find("inbox", "")).await.body).len(), 2);
    let del = alice(&sim, &format!("<m:DeleteItem DeleteType=\"HardDelete\"><m:ItemIds><t:ItemId Id=\"{new_id}\"/></m:ItemIds></m:DeleteItem>")).await;
    assert!(del.body.contains("ResponseClass=\"Success\""));
    let gone = alice(&sim, &format!("<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id=\"{new_id}\"/></m:ItemIds></m:GetItem>")).await;
    assert!(gone.body.contains("ErrorItemNotFound"));
}

#[tokio::test]
async fn resolve_names_and_convert_id() {
    let sim = start().await;
    let r = alice(&sim, "<m:ResolveNames ReturnFullContactData=\"false\"><m:UnresolvedEntry>bob</m:UnresolvedEntry></m:ResolveNames>").await;
    assert!(
        r.body
            .contains("<t:EmailAddress>bob@contoso.example</t:EmailAddress>"),
        "{}",
        r.body
    );
    let none = alice(&sim, "<m:ResolveNames ReturnFullContactData=\"false\"><m:UnresolvedEntry>zzz</m:UnresolvedEntry></m:ResolveNames>").await;
    assert!(none.body.contains("ErrorNameResolutionNoResults"));
    let c = alice(&sim, "<m:ConvertId DestinationFormat=\"EwsId\"><m:SourceIds><t:AlternateId Format=\"EwsId\" Id=\"DUMMY\" Mailbox=\"blah@blah.com\"/></m:SourceIds></m:ConvertId>").await;
    assert!(
        c.body.contains("Mailbox=\"alice@contoso.example\""),
        "{}",
        c.body
    );
}

#[tokio::test]
async fn streaming_subscription_delivers_new_mail_as_separate_envelopes() {
    let mut config = SimConfig::builtin().unwrap();
    config.streaming_heartbeat = Duration::from_millis(200);
    let sim = start_with(config).await;
    let sub = alice(&sim, "<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id=\"inbox\"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>").await;
    let sub_id = sub
        .body
        .split("<m:SubscriptionId>")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_owned();
    let resp = reqwest::Client::new()
        .post(sim.ews_url())
        .bearer_auth(token(&sim))
        .header("X-AnchorMailbox", "alice@contoso.example")
        .body(as_alice(&format!("<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{sub_id}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>1</m:ConnectionTimeout></m:GetStreamingEvents>")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut resp = resp;
    // A heartbeat envelope arrives while the response is still open.
    let first = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8(first.to_vec()).unwrap();
    assert!(
        text.starts_with("<Envelope xmlns=\"http://schemas.xmlsoap.org/soap/envelope/\">"),
        "{text}"
    );
    assert!(text.contains("<m:ConnectionStatus>OK</m:ConnectionStatus>"));
    let send = "<m:CreateItem MessageDisposition=\"SendOnly\"><m:Items><t:Message><t:Subject>Ping</t:Subject><t:ToRecipients><t:Mailbox><t:EmailAddress>alice@contoso.example</t:EmailAddress></t:Mailbox></t:ToRecipients></t:Message></m:Items></m:CreateItem>";
    call(
        &sim,
        Some(&token(&sim)),
        Some("bob@contoso.example"),
        env(&imp("SmtpAddress", "bob@contoso.example"), send),
    )
    .await;
    let mut seen_new_mail = false;
    for _ in 0..20 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let text = String::from_utf8(chunk.to_vec()).unwrap();
        if text.contains("<t:NewMailEvent>") {
            assert!(text.contains(&sub_id));
            seen_new_mail = true;
            break;
        }
    }
    assert!(seen_new_mail);
}

#[tokio::test(start_paused = true)]
async fn streaming_ends_with_closed_at_the_connection_timeout() {
    use futures_util::StreamExt;
    let sim = start().await;
    let dir = sim.state.directory.read().unwrap().clone();
    let tenant = dir.tenant("contoso.example").unwrap().clone();
    let acting = tenant
        .mailbox_by_primary("alice@contoso.example")
        .unwrap()
        .clone();
    let ctx = sim::ops::OpContext {
        tenant,
        acting,
        server_version: "Exchange2016".into(),
        app_id: "11111111-2222-4333-8444-555555555555".into(),
    };
    let parse = |x: &str| {
        sim::xml::parse(format!("<m:X xmlns:m=\"{M}\" xmlns:t=\"{T}\">{x}</m:X>").as_bytes())
            .unwrap()
            .elements()
            .next()
            .unwrap()
            .clone()
    };
    let sub = sim::ops::dispatch(&sim.state, ctx.clone(), &parse("<m:Subscribe><m:StreamingSubscriptionRequest SubscribeToAllFolders=\"true\"><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>")).await;
    let sim::ops::OpOutcome::Body(body) = sub else {
        panic!("subscribe failed")
    };
    let sub_id = body
        .split("<m:SubscriptionId>")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_owned();
    let outcome = sim::ops::dispatch(&sim.state, ctx.clone(), &parse(&format!("<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{sub_id}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>1</m:ConnectionTimeout></m:GetStreamingEvents>"))).await;
    let sim::ops::OpOutcome::Stream(mut stream) = outcome else {
        panic!("expected a stream")
    };
    let started = tokio::time::Instant::now();
    let mut last = String::new();
    let mut envelopes = 0;
    while let Some(chunk) = stream.next().await {
        last = String::from_utf8(chunk.to_vec()).unwrap();
        envelopes += 1;
    }
    assert!(
        last.contains("<m:ConnectionStatus>Closed</m:ConnectionStatus>"),
        "{last}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(60));
    assert_eq!(envelopes, 2, "one heartbeat at 45 s, then Closed at 60 s");
    // Unknown subscription: one error envelope, closed.
    let bad = sim::ops::dispatch(&sim.state, ctx, &parse("<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>nope</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>1</m:ConnectionTimeout></m:GetStreamingEvents>")).await;
    let sim::ops::OpOutcome::Stream(mut bad) = bad else {
        panic!("expected a stream")
    };
    let only = String::from_utf8(bad.next().await.unwrap().to_vec()).unwrap();
    assert!(only.contains("ErrorInvalidSubscription") && only.contains("Closed"));
    assert!(bad.next().await.is_none());
}

#[tokio::test]
async fn update_item_reads_xs_boolean_as_exchangelib_writes_it() {
    let sim = start().await;
    let list = alice(&sim, &find("inbox", "<m:Restriction><t:IsEqualTo><t:FieldURI FieldURI=\"item:Subject\"/><t:FieldURIOrConstant><t:Constant Value=\"Scanner: document 0042\"/></t:FieldURIOrConstant></t:IsEqualTo></m:Restriction>")).await;
    let id = ids(&list.body).pop().unwrap();
    for (value, expected) in [("1", "true"), ("0", "false"), ("true", "true")] {
        let update = format!(
            "<m:UpdateItem ConflictResolution=\"AutoResolve\" MessageDisposition=\"SaveOnly\"><m:ItemChanges><t:ItemChange><t:ItemId Id=\"{id}\"/><t:Updates><t:SetItemField><t:FieldURI FieldURI=\"message:IsRead\"/><t:Message><t:IsRead>{value}</t:IsRead></t:Message></t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"
        );
        assert!(
            alice(&sim, &update)
                .await
                .body
                .contains("ResponseClass=\"Success\"")
        );
        let get = alice(&sim, &format!("<m:GetItem><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id=\"{id}\"/></m:ItemIds></m:GetItem>")).await;
        assert!(
            get.body
                .contains(&format!("<t:IsRead>{expected}</t:IsRead>")),
            "{value}: {}",
            get.body
        );
    }
}
