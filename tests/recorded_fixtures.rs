//! Replays what real clients sent (fixtures/recorded/<client>/, recorded by
//! tests/interop/record-fixtures.sh) through the gateway of an in-process demo, without the
//! clients: no Python, Node or Java needed.
//!
//! State: each client's recording is replayed in recorded order into a fresh demo. The recorder
//! serialised the requests, and the simulator's ids are counters, so the same order from the same
//! seed produces the same ids the client saw and sent back. The test checks that assumption too:
//! every id a response carries must equal the recorded one, so a drift fails at its first
//! request instead of as a confusing error later. Items created during a run get "now" as their
//! received time and the seed's messages are from 2026-11, so the machine's clock must be later
//! than that for paged listings to hold the same items as when recorded.
//!
//! For every request it asserts the recorded outcome (HTTP status, Content-Type of SOAP answers,
//! ResponseClass/ResponseCode of every response message, the fault's ResponseCode) and what
//! reached the simulator: the recorded number of EWS requests, each with one `Authorization`
//! that is the Bearer token (never Basic), exactly one `ExchangeImpersonation` for the recorded
//! mailbox and the matching `X-AnchorMailbox`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ews_gateway::demo::DEMO_USERS;
use ews_gateway::sim::xml::{self, Element};
use serde::Deserialize;

const S11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const M: &str = common::M;
const T: &str = common::T;
/// Elements whose `Id` the recorder lists (see record_proxy.py).
const ID_ELEMENTS: &[&str] = &[
    "ItemId",
    "FolderId",
    "AttachmentId",
    "RootItemId",
    "ParentFolderId",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Recorded {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    auth: Option<Login>,
    operation: Option<String>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    login: String,
    /// `demo` (the demo user's password) or `wrong`.
    password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    status: u16,
    content_type: String,
    messages: Vec<Message>,
    fault: Option<String>,
    ids: Vec<String>,
    upstream: Vec<Upstream>,
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone)]
#[serde(deny_unknown_fields)]
struct Message {
    class: String,
    code: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Upstream {
    operation: Option<String>,
    acting_as: Vec<Option<String>>,
}

fn recorded_dir(client: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/recorded")
        .join(client)
}

/// The recorded requests of `client`, in recorded order: (name, metadata, body).
fn load(client: &str) -> Vec<(String, Recorded, Vec<u8>)> {
    let dir = recorded_dir(client);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (re-record: see its README)", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".json").map(str::to_owned))
        .collect();
    names.sort();
    assert!(
        names.len() > 10,
        "{}: too few recorded requests ({})",
        dir.display(),
        names.len()
    );
    names
        .into_iter()
        .map(|name| {
            let meta = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
            let meta: Recorded =
                serde_json::from_str(&meta).unwrap_or_else(|e| panic!("{client}/{name}.json: {e}"));
            let body = std::fs::read(dir.join(format!("{name}.request.xml"))).unwrap();
            (name, meta, body)
        })
        .collect()
}

fn walk<'a>(el: &'a Element, out: &mut Vec<&'a Element>) {
    out.push(el);
    for child in el.elements() {
        walk(child, out);
    }
}

fn all_elements(root: &Element) -> Vec<&Element> {
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

/// ResponseClass/ResponseCode per response message, the fault's code, the ids, in document order.
fn facts(body: &[u8]) -> (Vec<Message>, Option<String>, Vec<String>) {
    let root = xml::parse(body).unwrap_or_else(|e| {
        panic!(
            "unparseable answer ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    let mut messages = Vec::new();
    let mut fault = None;
    let mut ids = Vec::new();
    for el in all_elements(&root) {
        if el.ns.as_deref() == Some(M)
            && let Some(class) = el.attr("ResponseClass")
        {
            messages.push(Message {
                class: class.to_owned(),
                code: el.child(M, "ResponseCode").map(Element::text),
            });
        } else if el.is(S11, "Fault") {
            let codes: Vec<String> = all_elements(el)
                .into_iter()
                .filter(|c| c.local == "ResponseCode")
                .map(Element::text)
                .collect();
            fault = Some(match codes.first() {
                Some(code) => code.clone(),
                None => el
                    .child_local("faultcode")
                    .rsplit(':')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            });
        } else if el.ns.as_deref() == Some(T)
            && ID_ELEMENTS.contains(&el.local.as_str())
            && let Some(id) = el.attr("Id")
        {
            ids.push(id.to_owned());
        }
    }
    (messages, fault, ids)
}

trait ChildLocal {
    fn child_local(&self, local: &str) -> String;
}

impl ChildLocal for Element {
    /// Text of the first child named `local` in no namespace (SOAP 1.1 `faultcode`).
    fn child_local(&self, local: &str) -> String {
        self.elements()
            .find(|c| c.ns.is_none() && c.local == local)
            .map(Element::text)
            .unwrap_or_default()
    }
}

/// The operation (first child of `s:Body`) and the mailbox of each `ExchangeImpersonation`.
fn upstream_facts(body: &[u8]) -> (Option<String>, Vec<Option<String>>) {
    let root = xml::parse(body).unwrap();
    let op = root
        .child(S11, "Body")
        .and_then(|b| b.elements().next())
        .map(|e| e.local.clone());
    let acting = all_elements(&root)
        .into_iter()
        .filter(|e| e.is(T, "ExchangeImpersonation"))
        .map(|imp| {
            imp.child(T, "ConnectingSID")
                .and_then(|sid| sid.elements().next())
                .map(Element::text)
        })
        .collect();
    (op, acting)
}

fn password_for(login: &Login) -> String {
    match login.password.as_str() {
        "demo" => DEMO_USERS
            .iter()
            .find(|u| u.name.eq_ignore_ascii_case(&login.login))
            .unwrap_or_else(|| panic!("{} is not a demo user", login.login))
            .password
            .to_owned(),
        "wrong" => "not-the-password".to_owned(),
        other => panic!("unknown recorded password kind {other}"),
    }
}

async fn replay(client: &str) {
    let recorded = load(client);
    // The replay fires the recorded requests back to back, faster than the client did; the
    // per-principal rate cap (tested in tests/policy.rs) is not what this checks.
    ews_gateway::tls::install_crypto_provider();
    let demo = ews_gateway::demo::start_tweaked(
        "127.0.0.1:0".parse().unwrap(),
        ews_gateway::sim::SimConfig::builtin().unwrap(),
        None,
        |c| c.limits.requests_per_second_per_principal = 0,
    )
    .await
    .unwrap();
    let origin = format!("http://{}", demo.gateway.addr);
    let http = common::client();
    let mut upstream_seen = 0usize;
    for (name, rec, body) in &recorded {
        let at = format!("{client}/{name}");
        let before = demo.sim.requests().last().map_or(0, |r| r.seq);
        let method = reqwest::Method::from_bytes(rec.method.as_bytes()).unwrap();
        let mut req = http.request(method, format!("{origin}{}", rec.path));
        for (k, v) in &rec.headers {
            req = req.header(k, v);
        }
        if let Some(login) = &rec.auth {
            req = req.basic_auth(&login.login, Some(password_for(login)));
        }
        if !body.is_empty() {
            req = req.body(body.clone());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let answer = resp.bytes().await.unwrap();
        assert_eq!(
            status,
            rec.expect.status,
            "{at}: status; answer {}",
            String::from_utf8_lossy(&answer)
        );
        // DavMail reads a SOAP answer only under exactly this Content-Type.
        if rec.expect.content_type.starts_with("text/xml") {
            assert_eq!(content_type, rec.expect.content_type, "{at}: Content-Type");
        }
        if content_type.contains("xml") && !answer.is_empty() {
            let (messages, fault, ids) = facts(&answer);
            assert_eq!(messages, rec.expect.messages, "{at}: response messages");
            assert_eq!(fault, rec.expect.fault, "{at}: fault");
            // Compared as sets: the order is the simulator's sort (by received time, which for
            // new items is the clock's "now"), not something the gateway decides.
            let (mut ids, mut want) = (ids, rec.expect.ids.clone());
            ids.sort();
            want.sort();
            assert_eq!(
                ids, want,
                "{at}: ids differ from the recording (replay out of step?)"
            );
        } else {
            assert!(
                rec.expect.messages.is_empty() && rec.expect.fault.is_none(),
                "{at}: a SOAP answer was recorded, got {content_type:?}"
            );
        }

        let arrived: Vec<_> = demo
            .sim
            .requests()
            .into_iter()
            .filter(|r| r.seq > before && r.is_ews())
            .collect();
        assert_eq!(
            arrived.len(),
            rec.expect.upstream.len(),
            "{at}: requests that reached Exchange"
        );
        for (got, want) in arrived.iter().zip(&rec.expect.upstream) {
            let auth = got.header_all("authorization");
            assert_eq!(auth.len(), 1, "{at}: one Authorization upstream");
            assert!(auth[0].starts_with("Bearer "), "{at}: Bearer upstream");
            assert!(
                got.headers
                    .iter()
                    .all(|(_, v)| !v.to_ascii_lowercase().starts_with("basic ")),
                "{at}: the client's Basic header reached Exchange"
            );
            let (op, acting) = upstream_facts(&got.body);
            assert_eq!(op, want.operation, "{at}: operation upstream");
            assert_eq!(acting.len(), 1, "{at}: exactly one ExchangeImpersonation");
            assert_eq!(acting, want.acting_as, "{at}: impersonated mailbox");
            let mailbox = acting[0].clone().unwrap();
            assert_eq!(
                got.header("x-anchormailbox"),
                Some(mailbox.as_str()),
                "{at}: X-AnchorMailbox"
            );
        }
        if rec.method == "POST" && rec.expect.status == 200 {
            assert_eq!(
                rec.operation.as_deref(),
                rec.expect
                    .upstream
                    .first()
                    .and_then(|u| u.operation.as_deref()),
                "{at}: the recorded operation is what went upstream"
            );
        }
        upstream_seen += arrived.len();
    }
    assert!(upstream_seen > 0, "{client}: nothing reached Exchange");
    demo.stop().await;
}

#[tokio::test]
async fn exchangelib_recording_replays_through_the_gateway() {
    replay("exchangelib").await;
}

#[tokio::test]
async fn davmail_recording_replays_through_the_gateway() {
    replay("davmail").await;
}

/// The recordings hold no credentials: no Authorization or Cookie header, no demo password.
#[test]
fn recordings_hold_no_credentials() {
    for client in ["exchangelib", "davmail"] {
        for (name, rec, body) in load(client) {
            for key in rec.headers.keys() {
                assert!(
                    !matches!(
                        key.as_str(),
                        "authorization" | "cookie" | "proxy-authorization"
                    ),
                    "{client}/{name}: header {key} recorded"
                );
            }
            let meta =
                std::fs::read_to_string(recorded_dir(client).join(format!("{name}.json"))).unwrap();
            for user in DEMO_USERS {
                assert!(!meta.contains(user.password), "{client}/{name}: a password");
                assert!(
                    !String::from_utf8_lossy(&body).contains(user.password),
                    "{client}/{name}: a password in the body"
                );
            }
        }
    }
}
