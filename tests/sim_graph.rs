//! The simulator's Microsoft Graph face, through HTTP on 127.0.0.1:0: tokens for the Graph
//! audience and roles, users, mail folders, messages, attachments, sendMail (JSON and MIME),
//! drafts and `/send`, move/copy, upload sessions, Graph's limits as errors, the request log and
//! in-flight accounting, the cross-face property (one store behind EWS and Graph) and the
//! "EWS retired" switch. Each test pins rules; loosening one in `sim::graph` makes it fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ews_gateway::sim::faults::Faults;
use ews_gateway::sim::mailbox::{decode_id, from_graph_id, mailbox_guid, user_object_id};
use ews_gateway::sim::{self, SimConfig, SimHandle};
use ews_gateway::soap::{NS_MESSAGES as M, NS_SOAP as S, NS_TYPES as T};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const GATEWAY_APP: &str = "11111111-2222-4333-8444-555555555555";
const GATEWAY_SECRET: &str = "sim-secret-gateway-app-0001";
const SEND_ONLY_APP: &str = "12121212-2222-4333-8444-555555555555";
const SEND_ONLY_SECRET: &str = "sim-secret-graph-send-only-0009";
const ALICE: &str = "alice@contoso.example";
const BOB: &str = "bob@contoso.example";
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
const EXO_SCOPE: &str = "https://outlook.office365.com/.default";

async fn start_with(config: SimConfig) -> SimHandle {
    ews_gateway::tls::install_crypto_provider();
    sim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

async fn start() -> SimHandle {
    start_with(SimConfig::builtin().unwrap()).await
}

async fn token_for(sim: &SimHandle, app: &str, secret: &str, scope: &str) -> String {
    let resp = reqwest::Client::new()
        .post(sim.token_url("contoso.example"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", app),
            ("client_secret", secret),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        if self.body.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    #[track_caller]
    fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()
    }

    #[track_caller]
    fn error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code().as_str()),
            (status, code),
            "{}",
            String::from_utf8_lossy(&self.body)
        );
    }
}

/// A Graph client with one bearer token.
struct Graph {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl Graph {
    async fn new(sim: &SimHandle) -> Self {
        Self::with_app(sim, GATEWAY_APP, GATEWAY_SECRET).await
    }

    async fn with_app(sim: &SimHandle, app: &str, secret: &str) -> Self {
        Self {
            base: sim.graph_url(),
            token: Some(token_for(sim, app, secret, GRAPH_SCOPE).await),
            client: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}/v1.0{path}", self.base)
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.unwrap();
        Reply {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.bytes().await.unwrap().to_vec(),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.send(self.client.delete(self.url(path))).await
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: &Value) -> Reply {
        self.send(
            self.client
                .request(method, self.url(path))
                .header("Content-Type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    async fn post(&self, path: &str, body: &Value) -> Reply {
        self.json(reqwest::Method::POST, path, body).await
    }

    async fn raw(&self, method: reqwest::Method, path: &str, ct: &str, body: Vec<u8>) -> Reply {
        self.send(
            self.client
                .request(method, self.url(path))
                .header("Content-Type", ct)
                .body(body),
        )
        .await
    }

    /// The id of a well-known folder of `who`.
    async fn folder_id(&self, who: &str, name: &str) -> String {
        let v = self
            .get(&format!("/users/{who}/mailFolders/{name}"))
            .await
            .expect(200);
        v["id"].as_str().unwrap().to_owned()
    }

    /// Messages of a folder (up to 1000).
    async fn messages(&self, who: &str, folder: &str) -> Vec<Value> {
        let v = self
            .get(&format!(
                "/users/{who}/mailFolders/{folder}/messages?$top=1000"
            ))
            .await
            .expect(200);
        v["value"].as_array().unwrap().clone()
    }
}

fn subjects(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|m| m["subject"].as_str().unwrap().to_owned())
        .collect()
}

fn draft(subject: &str, to: &str) -> Value {
    json!({
        "subject": subject,
        "body": {"contentType": "text", "content": "body of ".to_owned() + subject},
        "toRecipients": [{"emailAddress": {"address": to}}],
    })
}

// --- EWS through HTTP, for the cross-face tests ---

async fn ews(sim: &SimHandle, token: &str, who: &str, body: &str) -> String {
    let env = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope xmlns:s=\"{S}\" xmlns:m=\"{M}\" xmlns:t=\"{T}\"><s:Header><t:RequestServerVersion Version=\"Exchange2016\"/><t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>{who}</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    );
    let resp = reqwest::Client::new()
        .post(sim.ews_url())
        .header("Content-Type", "text/xml; charset=utf-8")
        .header("X-AnchorMailbox", who)
        .bearer_auth(token)
        .body(env)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    text
}

/// Every `Id` attribute of elements named `element` in an EWS answer.
fn ews_ids(xml_text: &str, element: &str) -> Vec<String> {
    let root = ews_gateway::sim::xml::parse(xml_text.as_bytes()).unwrap();
    let mut out = Vec::new();
    fn walk(el: &ews_gateway::sim::xml::Element, name: &str, out: &mut Vec<String>) {
        if el.local == name
            && let Some(id) = el.attr("Id")
        {
            out.push(id.to_owned());
        }
        for c in el.elements() {
            walk(c, name, out);
        }
    }
    walk(&root, element, &mut out);
    out
}

/// The text of the first element named `element` in an EWS answer.
fn ews_text(xml_text: &str, element: &str) -> Option<String> {
    fn walk(el: &ews_gateway::sim::xml::Element, name: &str) -> Option<String> {
        if el.local == name {
            return Some(el.text());
        }
        el.elements().find_map(|c| walk(c, name))
    }
    walk(
        &ews_gateway::sim::xml::parse(xml_text.as_bytes()).unwrap(),
        element,
    )
}

fn find_in(folder: &str) -> String {
    format!(
        "<m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:ParentFolderIds><t:DistinguishedFolderId Id=\"{folder}\"/></m:ParentFolderIds></m:FindItem>"
    )
}

// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn entra_issues_graph_tokens_with_graph_roles_and_each_face_refuses_the_other() {
    let sim = start().await;
    let graph = token_for(&sim, GATEWAY_APP, GATEWAY_SECRET, GRAPH_SCOPE).await;
    let c = claims(&graph);
    assert_eq!(c["aud"], "https://graph.microsoft.com");
    let roles: Vec<&str> = c["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(roles, ["Mail.Send", "Mail.ReadWrite", "User.Read.All"]);
    let send_only = token_for(&sim, SEND_ONLY_APP, SEND_ONLY_SECRET, GRAPH_SCOPE).await;
    assert_eq!(claims(&send_only)["roles"], json!(["Mail.Send"]));
    let exo = token_for(&sim, GATEWAY_APP, GATEWAY_SECRET, EXO_SCOPE).await;
    assert_eq!(claims(&exo)["roles"], json!(["full_access_as_app"]));

    // An EWS token at Graph: 401 InvalidAuthenticationToken.
    let mut g = Graph::new(&sim).await;
    g.token = Some(exo.clone());
    g.get(&format!("/users/{ALICE}/mailFolders/inbox"))
        .await
        .error(401, "InvalidAuthenticationToken");
    // No token, and a token that is not a JWT.
    g.token = None;
    let r = g.get(&format!("/users/{ALICE}/mailFolders/inbox")).await;
    r.error(401, "InvalidAuthenticationToken");
    assert!(r.headers.contains_key("www-authenticate"));
    g.token = Some("not-a-jwt".into());
    g.get(&format!("/users/{ALICE}/mailFolders/inbox"))
        .await
        .error(401, "InvalidAuthenticationToken");
    // A Graph token at EWS: 401 with the audience diagnostic; nothing of it is served.
    let resp = reqwest::Client::new()
        .post(sim.ews_url())
        .header("Content-Type", "text/xml; charset=utf-8")
        .bearer_auth(&graph)
        .body("<x/>")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        resp.headers()["x-ms-diagnostics"]
            .to_str()
            .unwrap()
            .starts_with("2000003;")
    );
}

#[tokio::test]
async fn users_are_addressed_by_upn_smtp_alias_or_object_id() {
    let sim = start().await;
    let g = Graph::new(&sim).await;
    let oid = user_object_id(ALICE);
    for who in [
        ALICE,
        "Alice@Contoso.example",
        "alice@contoso.onmicrosoft.example",
        "alice.anders@contoso.example",
        oid.as_str(),
        "alice%40contoso.example",
    ] {
        let v = g.get(&format!("/users/{who}")).await.expect(200);
        assert_eq!(v["id"], oid.as_str(), "{who}");
        assert_eq!(v["mail"], ALICE);
        assert_eq!(v["displayName"], "Alice Anders");
        assert_eq!(v["userPrincipalName"], "alice@contoso.onmicrosoft.example");
    }
    let v = g
        .get(&format!("/users/{ALICE}?$select=displayName"))
        .await
        .expect(200);
    assert_eq!(v["displayName"], "Alice Anders");
    assert!(v.get("mail").is_none());
    g.get("/users/nobody@contoso.example")
        .await
        .error(404, "Request_ResourceNotFound");
    g.get("/users/nobody@contoso.example/mailFolders/inbox")
        .await
        .error(404, "ErrorInvalidUser");
    // Another tenant's mailbox is unknown here too.
    g.get("/users/dana@fabrikam.example/mailFolders/inbox")
        .await
        .error(404, "ErrorInvalidUser");
    g.get("/me/mailFolders/inbox")
        .await
        .error(400, "BadRequest");
}

#[tokio::test]
async fn an_app_without_mail_readwrite_gets_403_but_may_send() {
    let sim = start().await;
    let g = Graph::with_app(&sim, SEND_ONLY_APP, SEND_ONLY_SECRET).await;
    g.get(&format!("/users/{ALICE}/mailFolders/inbox"))
        .await
        .error(403, "ErrorAccessDenied");
    g.get(&format!("/users/{ALICE}/messages"))
        .await
        .error(403, "ErrorAccessDenied");
    g.post(&format!("/users/{ALICE}/messages"), &draft("d", BOB))
        .await
        .error(403, "ErrorAccessDenied");
    g.get(&format!("/users/{ALICE}"))
        .await
        .error(403, "Authorization_RequestDenied");
    let body = json!({"message": draft("sent by a send-only app", BOB)});
    g.post(&format!("/users/{ALICE}/sendMail"), &body)
        .await
        .expect(202);
    let full = Graph::new(&sim).await;
    assert!(
        subjects(&full.messages(BOB, "inbox").await).contains(&"sent by a send-only app".into())
    );
}

#[tokio::test]
async fn folders_by_well_known_name_and_id_with_children_and_paging() {
    let sim = start().await;
    let g = Graph::new(&sim).await;
    let inbox = g
        .get(&format!("/users/{ALICE}/mailFolders/Inbox"))
        .await
        .expect(200);
    let id = inbox["id"].as_str().unwrap();
    // EwsId bytes in the URL-safe alphabet; the gateway learns the mailbox GUID from it.
    assert!(id.starts_with("AAMk"), "{id}");
    let (ews, decoded) = from_graph_id(id).unwrap();
    assert_eq!(decoded.guid, mailbox_guid(ALICE));
    assert_eq!(decode_id(&ews).unwrap(), decoded);
    assert_eq!(inbox["displayName"], "Inbox");
    assert_eq!(inbox["totalItemCount"], 3);
    assert_eq!(inbox["unreadItemCount"], 2);
    assert_eq!(inbox["childFolderCount"], 0);
    let root_id = g.folder_id(ALICE, "msgfolderroot").await;
    assert_eq!(inbox["parentFolderId"], root_id.as_str());
    // By id, the same folder.
    let again = g
        .get(&format!(
            "/users/{ALICE}/mailFolders/{id}?$select=displayName"
        ))
        .await
        .expect(200);
    assert_eq!(again["id"], id);
    assert!(again.get("totalItemCount").is_none());
    for name in ["drafts", "sentitems", "deleteditems", "junkemail", "outbox"] {
        g.get(&format!("/users/{ALICE}/mailFolders/{name}"))
            .await
            .expect(200);
    }
    // Children of the root: mail folders only (no calendar/contacts), "Projects" among them.
    let kids = g
        .get(&format!(
            "/users/{ALICE}/mailFolders/msgfolderroot/childFolders?$top=100"
        ))
        .await
        .expect(200);
    let names: Vec<&str> = kids["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["displayName"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"Projects") && names.contains(&"Inbox"),
        "{names:?}"
    );
    assert!(!names.contains(&"Calendar"), "{names:?}");
    // Paging: $top=2 gives a nextLink that continues where the page ended.
    let page = g
        .get(&format!(
            "/users/{ALICE}/mailFolders/msgfolderroot/childFolders?$top=2"
        ))
        .await
        .expect(200);
    assert_eq!(page["value"].as_array().unwrap().len(), 2);
    let next = page["@odata.nextLink"].as_str().unwrap();
    let page2 = g.get(next).await.expect(200);
    assert_eq!(page2["value"][0]["displayName"], names[2]);
    // Strict query options.
    for q in [
        "$top=0",
        "$top=1001",
        "$top=x",
        "$foo=1",
        "$filter=x",
        "$top=1&$top=2",
    ] {
        let r = g
            .get(&format!(
                "/users/{ALICE}/mailFolders/msgfolderroot/childFolders?{q}"
            ))
            .await;
        assert_eq!(r.status, 400, "{q}: {}", String::from_utf8_lossy(&r.body));
    }
    g.get(&format!("/users/{ALICE}/mailFolders/inbox?$select=nope"))
        .await
        .error(400, "RequestBroker--ParseUri");
    // Methods a resource does not have.
    let r = g
        .post(&format!("/users/{ALICE}/mailFolders/inbox"), &json!({}))
        .await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn ids_malformed_400_missing_404_and_foreign_mailbox_ids_are_served_permissively() {
    let sim = start().await;
    let g = Graph::new(&sim).await;
    for bad in ["garbage", "AAMkADk=", "AAMk%2BAAA"] {
        g.get(&format!("/users/{ALICE}/messages/{bad}"))
            .await
            .error(400, "ErrorInvalidIdMalformed");
    }
    let inbox = g.messages(ALICE, "inbox").await;
    let id = inbox[0]["id"].as_str().unwrap().to_owned();
    // A folder id where a message id belongs is malformed too.
    let folder = g.folder_id(ALICE, "inbox").await;
    g.get(&format!("/users/{ALICE}/messages/{folder}"))
        .await
        .error(400, "ErrorInvalidIdMalformed");
    // The standard alphabet is not Graph's: find an id that differs and present it.
    let (ews, decoded) = from_graph_id(&id).unwrap();
    let missing = ews_gateway::sim::mailbox::to_graph_id(&ews_gateway::sim::mailbox::encode_id(
        ews_gateway::sim::mailbox::IdKind::Item,
        decoded.serial + 900_000,
        ALICE,
    ));
    g.get(&format!("/users/{ALICE}/messages/{missing}"))
        .await
        .error(404, "ErrorItemNotFound");
    if ews != id {
        g.get(&format!(
            "/users/{ALICE}/messages/{}",
            ews.replace('/', "%2F").replace('+', "%2B")
        ))
        .await
        .error(400, "ErrorInvalidIdMalformed");
    }
    // Bob's message under /users/alice: served from Bob's mailbox (the permissive side, so the
    // gateway must check the GUID itself).
    let bobs = g.messages(BOB, "inbox").await;
    let bob_id = bobs[0]["id"].as_str().unwrap();
    let v = g
        .get(&format!("/users/{ALICE}/messages/{bob_id}"))
        .await
        .expect(200);
    assert_eq!(v["subject"], "Welcome, Bob");
    assert_eq!(
        from_graph_id(bob_id).unwrap().1.guid,
        mailbox_guid(BOB),
        "the id names Bob's mailbox"
    );
}

#[tokio::test]
async fn drafts_create_get_select_patch_delete_and_strict_bodies() {
    let sim = start().await;
    let g = Graph::new(&sim).await;
    let d = g
        .post(
            &format!("/users/{ALICE}/messages"),
            &draft("Draft one", BOB),
        )
        .await
        .expect(201);
    assert_eq!(d["isDraft"], true);
    assert_eq!(
        d["parentFolderId"],
        g.folder_id(ALICE, "drafts").await.as_str()
    );
    assert_eq!(d["from"]["emailAddress"]["address"], ALICE);
    let id = d["id"].as_str().unwrap().to_owned();
    let ck = d["changeKey"].as_str().unwrap().to_owned();
    assert_eq!(d["@odata.etag"], format!("W/\"{ck}\""));
    let sel = g
        .get(&format!(
            "/users/{ALICE}/messages/{id}?$select=id,changeKey,subject,isDraft,parentFolderId"
        ))
        .await
        .expect(200);
    let mut keys: Vec<&str> = sel
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|k| !k.starts_with('@'))
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["changeKey", "id", "isDraft", "parentFolderId", "subject"]
    );
    g.get(&format!("/users/{ALICE}/messages/{id}?$select=nonsense"))
        .await
        .error(400, "RequestBroker--ParseUri");
    // In a named folder.
    let in_folder = g
        .post(
            &format!("/users/{ALICE}/mailFolders/inbox/messages"),
            &draft("Filed draft", BOB),
        )
        .await
        .expect(201);
    assert_eq!(
        in_folder["parentFolderId"],
        g.folder_id(ALICE, "inbox").await.as_str()
    );
    // PATCH changes the change key; read-only and unknown properties are refused.
    let p = g
        .json(
            reqwest::Method::PATCH,
            &format!("/users/{ALICE}/messages/{id}"),
            &json!({"subject": "Draft one (edited)", "importance": "high"}),
        )
        .await
        .expect(200);
    assert_eq!(p["subject"], "Draft one (edited)");
    assert_eq!(p["importance"], "high");
    assert_ne!(p["changeKey"], ck.as_str());
    let r = g
        .json(
            reqwest::Method::PATCH,
            &format!("/users/{ALICE}/messages/{id}"),
            &json!({"isDraft": false}),
        )
        .await;
    assert_eq!(r.status, 400);
    g.json(
        reqwest::Method::PATCH,
        &format!("/users/{ALICE}/messages/{id}"),
        &json!({"subjekt": "x"}),
    )
    .await
    .error(400, "RequestBodyRead");
    // Malformed JSON, a wrong content type, recipients without an address.
    let r = g
        .raw(
            reqwest::Method::POST,
            &format!("/users/{ALICE}/messages"),
            "application/json",
            b"{\"subject\": ".to_vec(),
        )
        .await;
    r.error(400, "BadRequest");
    let r = g
        .raw(
            reqwest::Method::POST,
            &format!("/users/{ALICE}/messages"),
            "application/xml",
            b"<x/>".to_vec(),
        )
        .await;
    r.error(415, "UnsupportedMediaType");
    let r = g
        .post(
            &format!("/users/{ALICE}/messages"),
            &json!({"toRecipients": [{"emailAddress": {"name": "no address"}}]}),
        )
        .await;
    r.error(400, "ErrorInvalidRecipients");
    // DELETE, then it is gone.
    g.delete(&format!("/users/{ALICE}/messages/{id}"))
        .await
        .expect(204);
    g.get(&format!("/users/{ALICE}/messages/{id}"))
        .await
        .error(404, "ErrorItemNotFound");
}

#[tokio::test]
async fn send_mail_json_is_visible_through_ews_with_byte_exact_attachments_and_sent_copy() {
    let sim = start().await;
    let g = Graph::new(&sim).await;
    let payload: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let body = json!({
        "message": {
            "subject": "Graph to EWS",
            "body": {"contentType": "html", "content": "<p>Hello Bob</p>"},
            "toRecipients": [{"emailAddress": {"address": BOB, "name": "Bob"}}],
            "ccRecipients": [],
            "bccRecipients": [{"emailAddress": {"address": "carol@contoso.example"}}],
            "replyTo": [{"emailAddress": {"address": ALICE}}],
            "importance": "high",
            "attachments": [{
                "@odata.type": "#microsoft.graph.fileAttachment",
                "name": "blob.bin",
                "contentType": "application/octet-stream",
                "contentBytes": STANDARD.encode(&payload),
                "isInline": false,
            }],
        },
        "saveToSentItems": true,
    });
    let r = g.post(&format!("/users/{ALICE}/sendMail"), &body).await;
    assert_eq!(r.status, 202);
    assert!(r.body.is_empty());
    // Through EWS: Bob's inbox has it, the attachment is byte-exact.
    let ews_token = token_for(&sim, GATEWAY_APP, GATEWAY_SECRET, EXO_SCOPE).await;
    let found = ews(&sim, &ews_token, BOB, &find_in("inbox")).await;
    assert!(found.contains("Graph to EWS"), "{found}");
    let ids = ews_ids(&found, "ItemId");
    let mut att_ids = Vec::new();
    for id in &ids {
        let got = ews(&sim, &ews_token, BOB, &format!("<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id=\"{id}\"/></m:ItemIds></m:GetItem>")).await;
        if got.contains("Graph to EWS") {
            att_ids = ews_ids(&got, "AttachmentId");
        }
    }
    assert_eq!(att_ids.len(), 1);
    let att = ews(&sim, &ews_token, BOB, &format!("<m:GetAttachment><m:AttachmentIds><t:AttachmentId Id=\"{}\"/></m:AttachmentIds></m:GetAttachment>", att_ids[0])).await;
    let content = ews_text(&att, "Content").unwrap();
    assert_eq!(STANDARD.decode(content).unwrap(), payload);
    // Bcc recipients get their copy; the Sent Items copy is in Alice's mailbox (through Graph).
    assert!(
        subjects(&g.messages("carol@contoso.example", "inbox").await)
            .contains(&"Graph to EWS".into())
    );
    let sent = g.messages(ALICE, "sentitems").await;
    let copy = sent
        .iter()
        .find(|m| m["subject"] == "Graph to EWS")
        .unwrap();
    assert_eq!(copy["isDraft"], false);
    assert_eq!(copy["hasAttachments"], true);
    // saveToSentItems=false files no copy.
    let body = json!({"message": draft("no copy", BOB), "saveToSentItems": false});
    g.post(&format!("/users/{ALICE}/sendMail"), &body)
        .await
        .expect(202);
    assert!(!subjects(&g.messages(ALICE, "sentitems").await).contains(&"no copy".into()));
    assert!(subjects(&g.messages(BOB, "inbox").await).contains(&"no copy".into()));
    // Strict: no recipients, unknown keys, no message, a from the mailbox may not send as.
    g.post(
        &format!("/users/{ALICE}/sendMail"),
        &json!({"message": {"subject": "nobody"}}),
    )
    .await
    .error(400, "ErrorInvalidRecipients");
    g.post(
        &format!("/users/{ALICE}/sendMail"),
        &json!({"message": draft("x", BOB), "extra": 1}),
    )
    .await
    .error(400, "RequestBodyRead");
    let r = g
        .post(&format!("/users/{ALICE}/sendMail"), &json!({}))
        .await;
    assert_eq!(r.status, 400);
    let mut spoof = draft("spoof", BOB);
    spoof["from"] = json!({"emailAddress": {"address": "carol@contoso.example"}});
    g.post(
        &format!("/users/{ALICE}/sendMail"),
        &json!({"message": spoof}),
    )
    .await
    .error(403, "ErrorSendAsDenied");
}

#[tokio::test]
async fn send_mail_and_drafts_from_base64_mime() {
    let sim = start().await;
    let g = Graph::new(&sim).await;
    let mime = format!(
        "From: Alice Anders <{ALICE}>\r\nTo: Bob Berg <{BOB}>\r\nSubject: MIME via Graph\r\nMessage-ID: <mime-1@contoso.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello from MIME.\r\n"
    );
    let r = g
        .raw(
            reqwest::Method::POST,
            &format!("/users/{ALICE}/sendMail"),
            "text/plain",
            STANDARD.encode(mime.as_bytes()).into_bytes(),
        )
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let inbox = g.messages(BOB, "inbox").await;
    let got = inbox
        .iter()
        .find(|m| m["subject"] == "MIME via Graph")
        .unwrap();
    assert_eq!(got["internetMessageId"], "<mime-1@contoso.example>");
    // `$value` serves the MIME as submitted.
    let id = got["id"].as_str().unwrap();
    let v = g.get(&format!("/users/{BOB}/messages/{id}/$value")).await;
    assert_eq!(v.status, 200);
    assert_eq!(v.body, mime.as_bytes());
    // A MIME draft.
    let d = g
        .raw(
            reqwest::Method::POST,
            &format!("/users/{ALICE}/messages"),
            "text/plain",
            STANDARD.encode(mime.as_bytes()).into_bytes(),
        )
        .await
        .expect(201);
    assert_eq!(d["isDraft"], true);
    assert_eq!(d["subject"], "MIME via Graph");
    // Not base64.
    g.raw(
        reqwest::Method::POST,
        &format!("/users/{ALICE}/sendMail"),
        "text/plain",
        b"this is not base64!".to_vec(),
    )
    .await
    .error(400, "ErrorMimeContentInvalidBase64String");
}

#[tokio::test]
async fn ews_sent_mail_is_visible_through_graph_by_swapped_id() {
    let sim = start().await;
    let g = Graph::new(&sim).await;
    let ews_token = token_for(&sim, GATEWAY_APP, GATEWAY_SECRET, EXO_SCOPE).await;
    let content = STANDARD.encode(b"%PDF-1.4 from EWS \x00\x01\x02\xff");
    let create = format!(
        "<m:CreateItem MessageDisposition=\"SendAndSaveCopy\"><m:SavedItemFolderId><t:DistinguishedFolderId Id=\"sentitems\"/></m:SavedItemFolderId><m:Items><t:Message><t:Subject>EWS to Graph</t:Subject><t:Body BodyType=\"Text\">hi</t:Body><t:Attachments><t:FileAttachment><t:Name>doc.pdf</t:Name><t:ContentType>application/pdf</t:ContentType><t:Content>{content}</t:Content></t:FileAttachment></t:Attachments><t:ToRecipients><t:Mailbox><t:EmailAddress>{BOB}</t:EmailAddress></t:Mailbox></t:ToRecipients></t:Message></m:Items></m:CreateItem>"
    );
    let reply = ews(&sim, &ews_token, ALICE, &create).await;
    assert!(reply.contains("NoError"), "{reply}");
    // Bob's inbox through Graph.
    let inbox = g.messages(BOB, "inbox").await;
    let m = inbox
        .iter()
        .find(|m| m["subject"] == "EWS to Graph")
        .unwrap();
    let gid = m["id"].as_str().unwrap();
    let atts = g
        .get(&format!("/users/{BOB}/messages/{gid}/attachments"))
        .await
        .expect(200);
    let att = &atts["value"][0];
    assert_eq!(att["name"], "doc.pdf");
    assert_eq!(att["contentBytes"], content.as_str());
    let aid = att["id"].as_str().unwrap();
    let raw = g
        .get(&format!(
            "/users/{BOB}/messages/{gid}/attachments/{aid}/$value"
        ))
        .await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.body, b"%PDF-1.4 from EWS \x00\x01\x02\xff");
    // The EWS id of the same item is the Graph id in the other alphabet.
    let found = ews(&sim, &ews_token, BOB, &find_in("inbox")).await;
    let ews_id = ews_ids(&found, "ItemId")
        .into_iter()
        .find(|i| from_graph_id(gid).unwrap().0 == *i)
        .expect("the Graph id is an EWS id of Bob's inbox");
    assert_eq!(ews_gateway::sim::mailbox::to_graph_id(&ews_id), gid);
    // Alice's Sent Items copy, through Graph.
    assert!(subjects(&g.messages(ALICE, "sentitems").await).contains(&"EWS to Graph".into()));
}

#[tokio::test]
async fn draft_send_always_files_in_sent_items_and_move_copy_work() {
    let sim = start().await;
    let g = Graph::new(&sim).await;
    let d = g
        .post(
            &format!("/users/{ALICE}/messages"),
            &draft("Via draft", BOB),
        )
        .await
        .expect(201);
    let id = d["id"].as_str().unwrap();
    let r = g
        .send(
            g.client
                .post(g.url(&format!("/users/{ALICE}/messages/{id}/send"))),
        )
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert!(!subjects(&g.messages(ALICE, "drafts").await).contains(&"Via draft".into()));
    let sent = g.messages(ALICE, "sentitems").await;
    let s = sent.iter().find(|m| m["subject"] == "Via draft").unwrap();
    assert_eq!(s["isDraft"], false);
    assert!(subjects(&g.messages(BOB, "inbox").await).contains(&"Via draft".into()));
    // A sent message cannot be sent again.
    let sid = s["id"].as_str().unwrap().to_owned();
    let r = g
        .send(
            g.client
                .post(g.url(&format!("/users/{ALICE}/messages/{sid}/send"))),
        )
        .await;
    assert_eq!(r.status, 400);
    // Move (new id, new parent) and copy (both stay).
    let deleted = g.folder_id(ALICE, "deleteditems").await;
    let moved = g
        .post(
            &format!("/users/{ALICE}/messages/{sid}/move"),
            &json!({"destinationId": "deleteditems"}),
        )
        .await
        .expect(201);
    assert_eq!(moved["parentFolderId"], deleted.as_str());
    assert_ne!(moved["id"], sid.as_str());
    g.get(&format!("/users/{ALICE}/messages/{sid}"))
        .await
        .error(404, "ErrorItemNotFound");
    let mid = moved["id"].as_str().unwrap();
    let inbox = g.folder_id(ALICE, "inbox").await;
    let copied = g
        .post(
            &format!("/users/{ALICE}/messages/{mid}/copy"),
            &json!({"destinationId": inbox}),
        )
        .await
        .expect(201);
    assert_eq!(copied["parentFolderId"], inbox.as_str());
    g.get(&format!("/users/{ALICE}/messages/{mid}"))
        .await
        .expect(200);
    g.post(
        &format!("/users/{ALICE}/messages/{mid}/move"),
        &json!({"destinationId": "not-an-id"}),
    )
    .await
    .error(400, "ErrorInvalidIdMalformed");
    g.post(&format!("/users/{ALICE}/messages/{mid}/move"), &json!({}))
        .await
        .error(400, "ErrorInvalidParameter");
}

#[tokio::test]
async fn attachments_inline_add_list_get_delete_and_the_3_mb_rule() {
    let mut config = SimConfig::builtin().unwrap();
    // Let a body carry a 3 MB+ attachment so that the 3 MB rule is seen apart from the 4 MB one.
    config.graph.max_request_bytes = 6 * 1024 * 1024;
    let sim = start_with(config).await;
    let g = Graph::new(&sim).await;
    let d = g
        .post(
            &format!("/users/{ALICE}/messages"),
            &draft("With files", BOB),
        )
        .await
        .expect(201);
    let id = d["id"].as_str().unwrap();
    let small = b"small file \x00\xff".to_vec();
    let a = g
        .post(
            &format!("/users/{ALICE}/messages/{id}/attachments"),
            &json!({
                "@odata.type": "#microsoft.graph.fileAttachment",
                "name": "small.bin",
                "contentBytes": STANDARD.encode(&small),
                "contentType": "application/x-test",
            }),
        )
        .await
        .expect(201);
    let aid = a["id"].as_str().unwrap();
    assert_eq!(a["size"], small.len());
    let v = g
        .get(&format!(
            "/users/{ALICE}/messages/{id}/attachments/{aid}/$value"
        ))
        .await;
    assert_eq!(v.body, small);
    assert_eq!(v.headers["content-type"], "application/x-test");
    let one = g
        .get(&format!("/users/{ALICE}/messages/{id}/attachments/{aid}"))
        .await
        .expect(200);
    assert_eq!(one["contentBytes"], STANDARD.encode(&small).as_str());
    let too_big = vec![7u8; 3 * 1024 * 1024 + 1];
    g.post(
        &format!("/users/{ALICE}/messages/{id}/attachments"),
        &json!({
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": "big.bin",
            "contentBytes": STANDARD.encode(&too_big),
        }),
    )
    .await
    .error(400, "ErrorAttachmentSizeLimitExceeded");
    g.post(
        &format!("/users/{ALICE}/messages/{id}/attachments"),
        &json!({"@odata.type": "#microsoft.graph.itemAttachment", "name": "x"}),
    )
    .await
    .error(400, "ErrorInvalidParameter");
    let list = g
        .get(&format!("/users/{ALICE}/messages/{id}/attachments"))
        .await
        .expect(200);
    assert_eq!(list["value"].as_array().unwrap().len(), 1);
    g.delete(&format!("/users/{ALICE}/messages/{id}/attachments/{aid}"))
        .await
        .expect(204);
    g.get(&format!("/users/{ALICE}/messages/{id}/attachments/{aid}"))
        .await
        .error(404, "ErrorItemNotFound");
}

#[tokio::test]
async fn request_bodies_over_4_mb_get_413() {
    let sim = start().await;
    let g = Graph::new(&sim).await;
    let big = "x".repeat(4 * 1024 * 1024);
    let r = g
        .post(
            &format!("/users/{ALICE}/messages"),
            &json!({"subject": big}),
        )
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.code(), "RequestEntityTooLarge");
    // Just under the limit is fine.
    let fits = "x".repeat(4 * 1024 * 1024 - 200);
    g.post(
        &format!("/users/{ALICE}/messages"),
        &json!({"subject": fits}),
    )
    .await
    .expect(201);
}

/// Creates a draft of Alice's and an upload session for `size` bytes on it.
async fn upload_session(g: &Graph, size: usize) -> (String, String) {
    let d = g
        .post(&format!("/users/{ALICE}/messages"), &draft("Large", BOB))
        .await
        .expect(201);
    let id = d["id"].as_str().unwrap().to_owned();
    let s = g
        .post(
            &format!("/users/{ALICE}/messages/{id}/attachments/createUploadSession"),
            &json!({"AttachmentItem": {
                "attachmentType": "file",
                "name": "large.bin",
                "size": size,
                "contentType": "application/octet-stream",
            }}),
        )
        .await
        .expect(201);
    assert_eq!(s["nextExpectedRanges"], json!(["0-"]));
    assert!(s["expirationDateTime"].as_str().is_some());
    (id, s["uploadUrl"].as_str().unwrap().to_owned())
}

async fn put_chunk(
    url: &str,
    data: &[u8],
    start: usize,
    total: usize,
    auth: Option<&str>,
) -> Reply {
    let mut req = reqwest::Client::new()
        .put(url)
        .header(
            "Content-Range",
            format!("bytes {start}-{}/{total}", start + data.len() - 1),
        )
        .body(data[..].to_vec());
    if let Some(a) = auth {
        req = req.bearer_auth(a);
    }
    let resp = req.send().await.unwrap();
    Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.bytes().await.unwrap().to_vec(),
    }
}

#[tokio::test]
async fn upload_sessions_take_ordered_chunks_without_authorization() {
    let sim = start().await;
    let g = Graph::new(&sim).await;
    const CHUNK: usize = 12 * 320 * 1024; // the largest multiple of 320 KiB within 4 MB
    let size = 2 * CHUNK + 123_457;
    let payload: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let (id, url) = upload_session(&g, size).await;
    assert!(url.starts_with(&sim.graph_url()));
    let token = g.token.clone().unwrap();
    // An Authorization header is refused; so are a wrong token, gaps, odd chunk sizes, a total
    // that differs from the declared size and a chunk over 4 MB.
    put_chunk(&url, &payload[..CHUNK], 0, size, Some(&token))
        .await
        .error(401, "InvalidAuthenticationToken");
    let forged = format!("{}x", url);
    assert_eq!(
        put_chunk(&forged, &payload[..CHUNK], 0, size, None)
            .await
            .status,
        404
    );
    put_chunk(&url, &payload[CHUNK..2 * CHUNK], CHUNK, size, None)
        .await
        .error(416, "ErrorInvalidRange");
    put_chunk(&url, &payload[..CHUNK - 1], 0, size, None)
        .await
        .error(400, "ErrorInvalidRange");
    put_chunk(&url, &payload[..CHUNK], 0, size + 1, None)
        .await
        .error(400, "ErrorInvalidRange");
    let r = reqwest::Client::new()
        .put(&url)
        .header("Content-Range", format!("bytes 0-99/{size}"))
        .body(vec![0u8; 50])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // In order: 200 with the next expected range, then 201 at the end.
    let r = put_chunk(&url, &payload[..CHUNK], 0, size, None).await;
    assert_eq!(
        r.expect(200)["nextExpectedRanges"],
        json!([format!("{CHUNK}-")])
    );
    put_chunk(&url, &payload[CHUNK..2 * CHUNK], CHUNK, size, None)
        .await
        .expect(200);
    // The same range again is out of order now.
    put_chunk(&url, &payload[CHUNK..2 * CHUNK], CHUNK, size, None)
        .await
        .error(416, "ErrorInvalidRange");
    let last = put_chunk(&url, &payload[2 * CHUNK..], 2 * CHUNK, size, None).await;
    assert_eq!(last.status, 201, "{}", String::from_utf8_lossy(&last.body));
    assert!(last.headers.contains_key("location"));
    // The session is gone; the attachment is on the draft, byte-exact.
    assert_eq!(
        put_chunk(&url, &payload[..10], 0, size, None).await.status,
        404
    );
    let list = g
        .get(&format!(
            "/users/{ALICE}/messages/{id}/attachments?$select=name,size"
        ))
        .await
        .expect(200);
    assert_eq!(list["value"][0]["size"], size);
    let aid = list["value"][0]["id"].as_str().unwrap();
    let got = g
        .get(&format!(
            "/users/{ALICE}/messages/{id}/attachments/{aid}/$value"
        ))
        .await;
    assert!(
        got.body == payload,
        "attachment differs from what was uploaded"
    );
    // Sessions are for 3 MB to 150 MB.
    g.post(
        &format!("/users/{ALICE}/messages/{id}/attachments/createUploadSession"),
        &json!({"AttachmentItem": {"attachmentType": "file", "name": "s", "size": 1000}}),
    )
    .await
    .error(400, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize");
    g.post(
        &format!("/users/{ALICE}/messages/{id}/attachments/createUploadSession"),
        &json!({"AttachmentItem": {"attachmentType": "file", "name": "s", "size": 151 * 1024 * 1024}}),
    )
    .await
    .error(400, "ErrorAttachmentSizeLimitExceeded");
    g.post(
        &format!("/users/{ALICE}/messages/{id}/attachments/createUploadSession"),
        &json!({"AttachmentItem": {"attachmentType": "file", "size": 4_000_000}}),
    )
    .await
    .error(400, "ErrorInvalidParameter");
    // The sent message carries it to Bob, byte-exact, through EWS as well.
    let r = g
        .send(
            g.client
                .post(g.url(&format!("/users/{ALICE}/messages/{id}/send"))),
        )
        .await;
    assert_eq!(r.status, 202);
    let bob = g.messages(BOB, "inbox").await;
    let m = bob.iter().find(|m| m["subject"] == "Large").unwrap();
    let mid = m["id"].as_str().unwrap();
    let atts = g
        .get(&format!(
            "/users/{BOB}/messages/{mid}/attachments?$select=id"
        ))
        .await
        .expect(200);
    let baid = atts["value"][0]["id"].as_str().unwrap();
    let got = g
        .get(&format!(
            "/users/{BOB}/messages/{mid}/attachments/{baid}/$value"
        ))
        .await;
    assert!(got.body == payload);
}

#[tokio::test]
async fn a_large_upload_is_held_once_and_the_log_keeps_no_chunk_bytes() {
    let sim = start().await;
    let g = Graph::new(&sim).await;
    const CHUNK: usize = 12 * 320 * 1024;
    let size = 6 * CHUNK + 1000; // ~23.5 MB
    let payload: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
    let (id, url) = upload_session(&g, size).await;
    let mut at = 0;
    while at < size {
        let end = (at + CHUNK).min(size);
        let r = put_chunk(&url, &payload[at..end], at, size, None).await;
        assert!(r.status == 200 || r.status == 201, "{}", r.status);
        at = end;
    }
    // The store holds the attachment in the one buffer the chunks went into (no growth copies).
    let (ews, _) = from_graph_id(&id).unwrap();
    sim.state.mailboxes.with(|d| {
        let item = d.mailbox_ref(ALICE).unwrap().item(&ews).unwrap();
        let att = &item.msg.attachments[0];
        assert_eq!(att.content.len(), size);
        assert_eq!(att.content.capacity(), size);
    });
    // Chunk requests are logged with length and hash but without their bytes.
    let puts: Vec<_> = sim
        .graph_requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 7);
    assert!(puts.iter().all(|p| p.body.is_empty() && p.body_len > 0));
    assert!(puts.iter().all(|p| p.mailbox.as_deref() == Some(ALICE)));
    assert!(
        puts.iter()
            .all(|p| p.app_id.as_deref() == Some(GATEWAY_APP))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_concurrent_requests_per_app_and_mailbox_then_429_with_retry_after() {
    let sim = start().await;
    // Every admitted request stays in flight this long, so all ten below overlap.
    sim.set_faults(Faults {
        graph_latency_ms: 1500,
        ..Faults::default()
    });
    let g = std::sync::Arc::new(Graph::new(&sim).await);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let g = std::sync::Arc::clone(&g);
        let who = if i < 6 { ALICE } else { BOB };
        tasks.push(tokio::spawn(async move {
            let r = g.get(&format!("/users/{who}/mailFolders/inbox")).await;
            (who, r)
        }));
    }
    let mut ok = std::collections::HashMap::<&str, usize>::new();
    let mut throttled = 0;
    for t in tasks {
        let (who, r) = t.await.unwrap();
        match r.status {
            200 => *ok.entry(who).or_default() += 1,
            429 => {
                assert_eq!(who, ALICE, "Bob's four fit in his own lane");
                assert_eq!(r.code(), "ApplicationThrottled");
                assert_eq!(
                    r.json()["error"]["message"],
                    "Application is over its MailboxConcurrency limit."
                );
                let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(secs >= 1);
                throttled += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok.get(ALICE), Some(&4));
    assert_eq!(ok.get(BOB), Some(&4));
    assert_eq!(throttled, 2);
    let stats = sim.graph_stats(GATEWAY_APP, ALICE);
    assert_eq!(
        (stats.high_water, stats.throttled, stats.in_flight),
        (4, 2, 0)
    );
    assert_eq!(sim.graph_high_water(GATEWAY_APP, BOB), 4);
    // Another app has its own lane for the same mailbox.
    assert_eq!(sim.graph_high_water(SEND_ONLY_APP, ALICE), 0);
}

#[tokio::test]
async fn request_and_upload_budgets_per_window_give_429() {
    let mut config = SimConfig::builtin().unwrap();
    config.graph.requests_per_window = 5;
    config.graph.upload_bytes_per_window = 2000;
    let sim = start_with(config).await;
    let g = Graph::new(&sim).await;
    for _ in 0..5 {
        g.get(&format!("/users/{ALICE}/mailFolders/inbox"))
            .await
            .expect(200);
    }
    let r = g.get(&format!("/users/{ALICE}/mailFolders/inbox")).await;
    r.error(429, "ApplicationThrottled");
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=600).contains(&secs), "{secs}");
    // Bob's budget is his own.
    g.get(&format!("/users/{BOB}/mailFolders/inbox"))
        .await
        .expect(200);
    // Upload volume: 2,000 bytes per window for Bob; the second 1,500-byte draft is over it.
    let body = json!({"subject": "x".repeat(1400)});
    g.post(&format!("/users/{BOB}/messages"), &body)
        .await
        .expect(201);
    g.post(&format!("/users/{BOB}/messages"), &body)
        .await
        .error(429, "ApplicationThrottled");
    sim.reset_graph_stats();
    g.get(&format!("/users/{ALICE}/mailFolders/inbox"))
        .await
        .expect(200);
}

#[tokio::test]
async fn the_request_log_names_mailbox_and_app_of_graph_requests() {
    let sim = start().await;
    let g = Graph::new(&sim).await;
    sim.clear_requests();
    g.get("/users/alice@contoso.onmicrosoft.example/mailFolders/inbox?$select=id")
        .await
        .expect(200);
    g.get("/users/nobody@contoso.example/messages")
        .await
        .error(404, "ErrorInvalidUser");
    let log = sim.graph_requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].method, "GET");
    assert_eq!(
        log[0].path,
        "/v1.0/users/alice@contoso.onmicrosoft.example/mailFolders/inbox?$select=id"
    );
    assert_eq!(log[0].mailbox.as_deref(), Some(ALICE));
    assert_eq!(log[0].app_id.as_deref(), Some(GATEWAY_APP));
    assert!(
        log[0]
            .header("authorization")
            .unwrap()
            .starts_with("Bearer ")
    );
    // Unresolved mailbox: logged, but with no mailbox.
    assert_eq!(log[1].mailbox, None);
    assert!(sim.ews_requests().is_empty());
}

#[tokio::test]
async fn ews_retired_refuses_every_ews_request_while_graph_works() {
    let mut config = SimConfig::builtin().unwrap();
    config.ews_retired = true;
    let sim = start_with(config).await;
    let ews_token = token_for(&sim, GATEWAY_APP, GATEWAY_SECRET, EXO_SCOPE).await;
    for (method, path) in [
        (reqwest::Method::POST, "/EWS/Exchange.asmx"),
        (reqwest::Method::GET, "/EWS/Exchange.asmx"),
        (reqwest::Method::GET, "/EWS/Services.wsdl"),
    ] {
        let resp = reqwest::Client::new()
            .request(method, format!("{}{path}", sim.base_url()))
            .bearer_auth(&ews_token)
            .header("Content-Type", "text/xml; charset=utf-8")
            .body("<x/>")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()["x-ews-policy-reason"], "EwsRetired");
        assert_eq!(
            resp.text().await.unwrap(),
            ews_gateway::sim::ews::RETIRED_BODY
        );
    }
    let g = Graph::new(&sim).await;
    g.get(&format!("/users/{ALICE}/mailFolders/inbox"))
        .await
        .expect(200);
}

#[tokio::test]
async fn patch_is_seen_through_ews_and_ews_updates_through_graph() {
    let sim = start().await;
    let g = Graph::new(&sim).await;
    let inbox = g.messages(ALICE, "inbox").await;
    let m = inbox
        .iter()
        .find(|m| m["subject"] == "Quarterly report")
        .unwrap();
    assert_eq!(m["isRead"], false);
    let id = m["id"].as_str().unwrap();
    g.json(
        reqwest::Method::PATCH,
        &format!("/users/{ALICE}/messages/{id}"),
        &json!({"isRead": true, "categories": ["Red"]}),
    )
    .await
    .expect(200);
    let ews_token = token_for(&sim, GATEWAY_APP, GATEWAY_SECRET, EXO_SCOPE).await;
    let (ews_id, _) = from_graph_id(id).unwrap();
    let got = ews(&sim, &ews_token, ALICE, &format!("<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id=\"{ews_id}\"/></m:ItemIds></m:GetItem>")).await;
    assert!(got.contains("<t:IsRead>true</t:IsRead>"), "{got}");
    // A draft created through EWS shows in Graph's Drafts with isDraft.
    let create = format!(
        "<m:CreateItem MessageDisposition=\"SaveOnly\"><m:SavedItemFolderId><t:DistinguishedFolderId Id=\"drafts\"/></m:SavedItemFolderId><m:Items><t:Message><t:Subject>EWS draft</t:Subject><t:ToRecipients><t:Mailbox><t:EmailAddress>{BOB}</t:EmailAddress></t:Mailbox></t:ToRecipients></t:Message></m:Items></m:CreateItem>"
    );
    let reply = ews(&sim, &ews_token, ALICE, &create).await;
    let eid = ews_ids(&reply, "ItemId").remove(0);
    let gid = ews_gateway::sim::mailbox::to_graph_id(&eid);
    let v = g
        .get(&format!(
            "/users/{ALICE}/messages/{gid}?$select=subject,isDraft"
        ))
        .await
        .expect(200);
    assert_eq!(
        (v["subject"].as_str(), v["isDraft"].as_bool()),
        (Some("EWS draft"), Some(true))
    );
}
