#![allow(unreachable_pub)] // shared by several test crates, each using a part
//! The adversarial suites' harness: each case is a request written byte for byte on a TCP
//! stream, the answer it must get, and what must (or must not) have reached the simulated
//! Exchange because of it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use ews_gateway::demo::Demo;
use ews_gateway::sim::LoggedRequest;

use crate::common::*;

/// What a case must produce.
pub enum Expect {
    /// A SOAP fault (HTTP 500) with this ResponseCode whose message contains the text
    /// (case-insensitive); nothing reaches Exchange.
    Fault(&'static str, &'static str),
    /// A 401 Basic challenge; nothing reaches Exchange.
    Challenge,
    /// This HTTP status (or, with 0, a closed connection without an answer); nothing reaches
    /// Exchange.
    Status(u16),
    /// HTTP 200 and exactly one EWS request at Exchange, which `check` inspects.
    Forwarded(fn(&LoggedRequest) -> Result<(), String>),
    /// Exactly one EWS request at Exchange, which `check` inspects, whatever Exchange answered
    /// (the simulator validates the schema as Exchange does, e.g. refusing unknown headers).
    ForwardedAny(fn(&LoggedRequest) -> Result<(), String>),
}

pub struct Case {
    pub name: &'static str,
    pub request: Vec<u8>,
    pub expect: Expect,
}

pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

pub fn alice() -> String {
    basic(ALICE.0, ALICE.1)
}

/// A POST to `target` with `auth` (full header value) and `extra` header lines, body `body`.
pub fn http_post(target: &str, auth: Option<&str>, extra: &str, body: &[u8]) -> Vec<u8> {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let mut out = format!(
        "POST {target} HTTP/1.1\r\nHost: gw.example\r\nContent-Type: text/xml; charset=utf-8\r\n{auth}{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// An EWS POST as alice with this body.
pub fn as_alice(body: impl AsRef<[u8]>) -> Vec<u8> {
    http_post("/EWS/Exchange.asmx", Some(&alice()), "", body.as_ref())
}

/// An EWS POST as archiver with this body.
pub fn as_archiver(body: impl AsRef<[u8]>) -> Vec<u8> {
    http_post(
        "/EWS/Exchange.asmx",
        Some(&basic(ARCHIVER.0, ARCHIVER.1)),
        "",
        body.as_ref(),
    )
}

/// An envelope (s/m/t prefixes) with this Header content and a FindItem on the inbox.
pub fn with_header(header: &str) -> String {
    envelope(Some(header), find_inbox())
}

pub fn imp(kind: &str, value: &str) -> String {
    impersonation(kind, value)
}

struct Answer {
    status: Option<u16>,
    head: String,
    body: String,
}

async fn exchange(addr: SocketAddr, request: &[u8]) -> Answer {
    let (raw, _closed) = raw_exchange(addr, request, Duration::from_secs(20)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .unwrap_or((text.clone(), String::new()));
    Answer {
        status: raw_status(&raw),
        head,
        body,
    }
}

fn judge(case: &Case, answer: &Answer, new: &[LoggedRequest]) -> Result<(), String> {
    let nothing_upstream = || {
        if new.is_empty() {
            Ok(())
        } else {
            Err(format!("{} EWS request(s) reached Exchange", new.len()))
        }
    };
    match &case.expect {
        Expect::Fault(code, text) => {
            if answer.status != Some(500) {
                return Err(format!(
                    "status {:?}, want 500 fault: {}",
                    answer.status, answer.body
                ));
            }
            let want = format!(
                "<e:ResponseCode xmlns:e=\"http://schemas.microsoft.com/exchange/services/2006/errors\">{code}</e:ResponseCode>"
            );
            if !answer.body.contains(&want) {
                return Err(format!("fault is not {code}: {}", answer.body));
            }
            if !answer.body.to_lowercase().contains(&text.to_lowercase()) {
                return Err(format!("fault message lacks {text:?}: {}", answer.body));
            }
            nothing_upstream()
        }
        Expect::Challenge => {
            if answer.status != Some(401) {
                return Err(format!(
                    "status {:?}, want 401: {}",
                    answer.status, answer.head
                ));
            }
            let head = answer.head.to_lowercase();
            if !head.contains("www-authenticate: basic realm=") || head.contains("ntlm") {
                return Err(format!("not a Basic challenge: {}", answer.head));
            }
            nothing_upstream()
        }
        Expect::Status(want) => {
            let got = answer.status.unwrap_or(0);
            if got != *want {
                return Err(format!("status {got}, want {want}: {}", answer.head));
            }
            nothing_upstream()
        }
        Expect::Forwarded(check) => {
            if answer.status != Some(200) {
                return Err(format!(
                    "status {:?}, want 200: {}",
                    answer.status, answer.body
                ));
            }
            if new.len() != 1 {
                return Err(format!(
                    "{} EWS requests reached Exchange, want 1",
                    new.len()
                ));
            }
            check(&new[0])
        }
        Expect::ForwardedAny(check) => {
            if new.len() != 1 {
                return Err(format!(
                    "{} EWS requests reached Exchange, want 1",
                    new.len()
                ));
            }
            check(&new[0])
        }
    }
}

/// Runs every case against `demo`, one after the other, and fails naming each failed case.
pub async fn run(demo: &Demo, cases: Vec<Case>) {
    let mut names = std::collections::HashSet::new();
    let mut failures = Vec::new();
    let count = cases.len();
    for case in cases {
        assert!(names.insert(case.name), "duplicate case name {}", case.name);
        let before = demo.sim.ews_requests().len();
        let answer = exchange(demo.gateway.addr, &case.request).await;
        // Give a forwarded body that is still streaming a moment to be logged completely.
        let mut new = demo.sim.ews_requests().split_off(before);
        if matches!(case.expect, Expect::Forwarded(_) | Expect::ForwardedAny(_)) && new.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            new = demo.sim.ews_requests().split_off(before);
        }
        if let Err(why) = judge(&case, &answer, &new) {
            failures.push(format!("{}: {why}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{count} cases passed");
}

// Checks on what reached Exchange.

pub fn body_text(r: &LoggedRequest) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The gateway's own impersonation for `mailbox` is there exactly once and no other one is.
pub fn acts_as(r: &LoggedRequest, mailbox: &str) -> Result<(), String> {
    let body = body_text(r);
    // Issue 12: the one canonical form, whatever the client sent.
    let ours = ews_gateway::soap::ConnectingSid {
        kind: ews_gateway::soap::ConnectingSidKind::PrimarySmtpAddress,
        value: mailbox.to_owned(),
    }
    .to_header_xml();
    let n = body.matches(&ours).count();
    // Exactly one impersonation in the canonical form: the client's own element (any form)
    // was replaced, so a different form cannot have survived outside comments/CDATA/the Body.
    if n != 1 {
        return Err(format!("{n} gateway impersonations for {mailbox}: {body}"));
    }
    if r.header("x-anchormailbox") != Some(mailbox) {
        return Err(format!(
            "anchor {:?}, want {mailbox}",
            r.header("x-anchormailbox")
        ));
    }
    let auth = r.header("authorization").unwrap_or_default();
    if !auth.starts_with("Bearer ey") {
        return Err("upstream authorization is not the gateway's bearer token".to_owned());
    }
    if r.headers.iter().any(|(_, v)| v.contains("demo-pass")) {
        return Err("a password reached Exchange".to_owned());
    }
    Ok(())
}

pub fn as_alice_check(r: &LoggedRequest) -> Result<(), String> {
    acts_as(r, "alice@contoso.example")
}

pub fn no_header(r: &LoggedRequest, name: &str) -> Result<(), String> {
    match r.header(name) {
        Some(v) => Err(format!("{name}: {v} reached Exchange")),
        None => Ok(()),
    }
}
