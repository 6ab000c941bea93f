//! Adversarial HTTP through the running gateway (issue 6): request smuggling shapes, invalid
//! header bytes, absolute-form and tricky paths, oversized heads, client-supplied routing and
//! credential headers, malformed Basic credentials. Requests are written byte for byte on a TCP
//! stream; each case asserts the answer and what reached Exchange (nothing for a refusal).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "adversarial/harness.rs"]
mod harness;

use base64::Engine;
use common::*;
use ews_gateway::sim::LoggedRequest;
use harness::*;

/// A service account whose password contains colons, acting as alice's mailbox.
const COLON_USER: &str = "svc-colon@contoso.example";
const COLON_PASS: &str = "pa:ss:wo:rd";

fn c(name: &'static str, request: Vec<u8>, expect: Expect) -> Case {
    Case {
        name,
        request,
        expect,
    }
}

fn ews() -> Vec<u8> {
    with_header(version_header()).into_bytes()
}

/// A request with a hand-written head (`head` without the final blank line) and body.
fn raw(head: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{head}\r\n\r\n").into_bytes();
    out.extend_from_slice(body);
    out
}

fn auth_line() -> String {
    format!("Authorization: {}", alice())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

const SMUGGLED: &str = "GET /owa/ HTTP/1.1\r\nHost: gw\r\n\r\n";

fn framing_cases() -> Vec<Case> {
    let body = ews();
    let n = body.len();
    let a = auth_line();
    vec![
        c(
            "content_length_with_transfer_encoding",
            raw(
                &format!(
                    "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n{a}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close"
                ),
                format!("{n:x}\r\n{}\r\n0\r\n\r\n", String::from_utf8_lossy(&body)).as_bytes(),
            ),
            // hyper frames by Transfer-Encoding alone (RFC 9112 6.1), drops the Content-Length
            // and closes the connection after the answer; upstream gets the whole envelope,
            // framed anew by the gateway.
            Expect::Forwarded(|r| {
                as_alice_check(r)?;
                if !body_text(r).ends_with("</s:Envelope>") {
                    return Err(format!("upstream body: {}", body_text(r)));
                }
                Ok(())
            }),
        ),
        c(
            "conflicting_content_lengths",
            raw(
                &format!(
                    "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n{a}\r\nContent-Length: {n}\r\nContent-Length: 5\r\nConnection: close"
                ),
                &body,
            ),
            Expect::Status(400),
        ),
        c(
            "content_length_list",
            raw(
                &format!(
                    "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n{a}\r\nContent-Length: {n}, 5\r\nConnection: close"
                ),
                &body,
            ),
            Expect::Status(400),
        ),
        c(
            "content_length_with_plus_sign",
            raw(
                &format!(
                    "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n{a}\r\nContent-Length: +{n}\r\nConnection: close"
                ),
                &body,
            ),
            Expect::Status(400),
        ),
        c(
            "transfer_encoding_not_chunked",
            raw(
                &format!(
                    "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n{a}\r\nTransfer-Encoding: gzip\r\nConnection: close"
                ),
                &body,
            ),
            Expect::Status(400),
        ),
        c(
            "duplicate_equal_content_lengths_served",
            raw(
                &format!(
                    "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n{a}\r\nContent-Length: {n}\r\nContent-Length: {n}\r\nConnection: close"
                ),
                &body,
            ),
            Expect::Forwarded(as_alice_check),
        ),
        c(
            "smuggled_second_request_in_body_is_not_a_request",
            raw(
                &format!(
                    "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n{a}\r\nContent-Length: {}\r\nConnection: close",
                    n + SMUGGLED.len()
                ),
                format!("{}{SMUGGLED}", String::from_utf8_lossy(&body)).as_bytes(),
            ),
            // The bytes stay body bytes (Exchange refuses the trailing junk); no GET is made.
            Expect::ForwardedAny(|r| {
                as_alice_check(r)?;
                if !body_text(r).ends_with(SMUGGLED) {
                    return Err(format!("upstream body: {}", body_text(r)));
                }
                Ok(())
            }),
        ),
        c(
            "nul_in_header_value",
            raw(
                &format!(
                    "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n{a}\r\nX-Evil: a\0b\r\nContent-Length: {n}\r\nConnection: close"
                ),
                &body,
            ),
            Expect::Status(400),
        ),
        c(
            "bare_cr_in_header_value",
            raw(
                &format!(
                    "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n{a}\r\nX-Evil: a\rX-AnchorMailbox: bob@contoso.example\r\nContent-Length: {n}\r\nConnection: close"
                ),
                &body,
            ),
            Expect::Status(400),
        ),
        c(
            "space_before_colon",
            raw(
                &format!(
                    "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n{a}\r\nContent-Length : {n}\r\nConnection: close"
                ),
                &body,
            ),
            Expect::Status(400),
        ),
        c(
            "obs_fold_continuation_line",
            raw(
                &format!(
                    "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n{a}\r\nX-Long: a\r\n b\r\nContent-Length: {n}\r\nConnection: close"
                ),
                &body,
            ),
            Expect::Status(400),
        ),
        c(
            "header_name_with_invalid_byte",
            raw(
                &format!(
                    "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n{a}\r\nX(Evil): 1\r\nContent-Length: {n}\r\nConnection: close"
                ),
                &body,
            ),
            Expect::Status(400),
        ),
        c(
            "bogus_http_version",
            raw(
                &format!(
                    "POST /EWS/Exchange.asmx HTTP/9.9\r\nHost: gw\r\n{a}\r\nContent-Length: {n}"
                ),
                &body,
            ),
            Expect::Status(400),
        ),
        c(
            "http2_preface_on_http1",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            Expect::Status(0),
        ),
        c(
            "overlong_header_value",
            raw(
                &format!(
                    "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n{a}\r\nX-Big: {}\r\nContent-Length: {n}\r\nConnection: close",
                    "a".repeat(70_000)
                ),
                &body,
            ),
            Expect::Status(431),
        ),
        c(
            "overlong_request_target",
            raw(
                &format!(
                    "POST /EWS/Exchange.asmx?{} HTTP/1.1\r\nHost: gw\r\n{a}\r\nContent-Length: {n}\r\nConnection: close",
                    "q".repeat(70_000)
                ),
                &body,
            ),
            Expect::Status(431),
        ),
        c(
            "too_many_headers",
            raw(
                &format!(
                    "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n{a}\r\n{}Content-Length: {n}\r\nConnection: close",
                    (0..150)
                        .map(|i| format!("X-H{i}: v\r\n"))
                        .collect::<String>()
                ),
                &body,
            ),
            Expect::Status(431),
        ),
    ]
}

fn path_cases() -> Vec<Case> {
    let body = ews();
    let a = alice();
    let p = |target: &str| http_post(target, Some(&a), "", &body);
    vec![
        c(
            "absolute_form_other_host_goes_to_configured_exchange_only",
            p("http://other.example/EWS/Exchange.asmx"),
            Expect::Forwarded(|r| {
                as_alice_check(r)?;
                if r.path != "/EWS/Exchange.asmx" {
                    return Err(format!("path {}", r.path));
                }
                Ok(())
            }),
        ),
        c(
            "absolute_form_other_path",
            p("http://other.example/owa/"),
            Expect::Status(404),
        ),
        c("dot_dot_segment", p("/EWS/../owa"), Expect::Status(404)),
        c(
            "dot_dot_back_to_ews",
            p("/EWS/../EWS/Exchange.asmx"),
            Expect::Status(404),
        ),
        c(
            "dot_segment",
            p("/EWS/./Exchange.asmx"),
            Expect::Status(404),
        ),
        c(
            "percent_encoded_dot",
            p("/EWS/Exchange%2Easmx"),
            Expect::Status(404),
        ),
        c(
            "percent_encoded_slash",
            p("/EWS%2FExchange.asmx"),
            Expect::Status(404),
        ),
        c(
            "percent_encoded_letter",
            p("/%45WS/Exchange.asmx"),
            Expect::Status(404),
        ),
        c(
            "double_slash_start",
            p("//EWS/Exchange.asmx"),
            Expect::Status(404),
        ),
        c(
            "double_slash_inside",
            p("/EWS//Exchange.asmx"),
            Expect::Status(404),
        ),
        c(
            "trailing_slash",
            p("/EWS/Exchange.asmx/"),
            Expect::Status(404),
        ),
        c(
            "path_info_suffix",
            p("/EWS/Exchange.asmx/extra"),
            Expect::Status(404),
        ),
        c(
            "semicolon_parameter",
            p("/EWS/Exchange.asmx;jsessionid=1"),
            Expect::Status(404),
        ),
        c("backslash", p("/EWS\\Exchange.asmx"), Expect::Status(404)),
        c(
            "encoded_nul",
            p("/EWS/Exchange.asmx%00"),
            Expect::Status(404),
        ),
        c(
            "other_ews_endpoint",
            p("/EWS/mrsproxy.svc"),
            Expect::Status(404),
        ),
        c(
            "powershell_endpoint",
            p("/PowerShell/"),
            Expect::Status(404),
        ),
        c("asterisk_target", p("*"), Expect::Status(404)),
        c(
            "case_folded_path_is_served_on_the_canonical_path",
            p("/ews/EXCHANGE.ASMX"),
            Expect::Forwarded(|r| {
                as_alice_check(r)?;
                if r.path != "/EWS/Exchange.asmx" {
                    return Err(format!("path {}", r.path));
                }
                Ok(())
            }),
        ),
        c(
            "query_string_is_not_forwarded",
            p("/EWS/Exchange.asmx?X-AnchorMailbox=bob@contoso.example&email=bob@contoso.example"),
            Expect::Forwarded(|r| {
                as_alice_check(r)?;
                if r.path != "/EWS/Exchange.asmx" {
                    return Err(format!("path {}", r.path));
                }
                Ok(())
            }),
        ),
        c(
            "put_method",
            raw(
                &format!(
                    "PUT /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n{}\r\nContent-Length: 0\r\nConnection: close",
                    auth_line()
                ),
                b"",
            ),
            Expect::Status(405),
        ),
        c(
            "options_method",
            raw(
                "OPTIONS /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\nConnection: close",
                b"",
            ),
            Expect::Status(405),
        ),
        c(
            "connect_method",
            raw(
                "CONNECT outlook.office365.com:443 HTTP/1.1\r\nHost: outlook.office365.com:443\r\nConnection: close",
                b"",
            ),
            Expect::Status(404),
        ),
        c(
            "unauthenticated_get_of_wsdl",
            raw(
                "GET /EWS/Services.wsdl HTTP/1.1\r\nHost: gw\r\nConnection: close",
                b"",
            ),
            Expect::Challenge,
        ),
    ]
}

fn header_cases() -> Vec<Case> {
    let body = ews();
    let a = alice();
    let with = |extra: &str| http_post("/EWS/Exchange.asmx", Some(&a), extra, &body);
    vec![
        c(
            "client_bearer_token_is_not_credentials",
            http_post(
                "/EWS/Exchange.asmx",
                Some("Bearer eyJhbGciOiJub25lIn0.eyJyb2xlcyI6WyJmdWxsX2FjY2Vzc19hc19hcHAiXX0."),
                "",
                &body,
            ),
            Expect::Challenge,
        ),
        c(
            "client_bearer_after_basic_is_not_forwarded",
            with("Authorization: Bearer client-token\r\n"),
            Expect::Forwarded(|r| {
                as_alice_check(r)?;
                if r.header_all("authorization").len() != 1
                    || r.headers.iter().any(|(_, v)| v.contains("client-token"))
                {
                    return Err(format!("{:?}", r.header_all("authorization")));
                }
                Ok(())
            }),
        ),
        c(
            "anchor_mailbox_for_another_mailbox_is_replaced",
            with("X-AnchorMailbox: bob@contoso.example\r\n"),
            Expect::Forwarded(as_alice_check),
        ),
        c(
            "anchor_mailbox_with_affinity_for_another_mailbox_is_replaced",
            with("X-AnchorMailbox: bob@contoso.example\r\nX-PreferServerAffinity: true\r\n"),
            Expect::Forwarded(as_alice_check),
        ),
        c(
            "two_anchor_headers",
            with(
                "X-AnchorMailbox: alice@contoso.example\r\nX-AnchorMailbox: bob@contoso.example\r\n",
            ),
            Expect::Forwarded(|r| {
                as_alice_check(r)?;
                if r.header_all("x-anchormailbox").len() != 1 {
                    return Err(format!("{:?}", r.header_all("x-anchormailbox")));
                }
                Ok(())
            }),
        ),
        c(
            "public_folder_mailbox_of_another_is_dropped",
            with("X-PublicFolderMailbox: bob@contoso.example\r\n"),
            Expect::Forwarded(|r| {
                as_alice_check(r)?;
                no_header(r, "x-publicfoldermailbox")
            }),
        ),
        c(
            "public_folder_mailbox_of_own_passes",
            with("X-PublicFolderMailbox: alice@contoso.example\r\n"),
            Expect::Forwarded(|r| {
                as_alice_check(r)?;
                match r.header("x-publicfoldermailbox") {
                    Some("alice@contoso.example") => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }),
        ),
        c(
            "spoofed_forwarded_headers_are_dropped",
            with(
                "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Host: outlook.office365.com\r\nX-Forwarded-Proto: https\r\nForwarded: for=10.0.0.1\r\nX-Real-IP: 10.0.0.1\r\nX-MS-Exchange-Organization-AuthAs: Internal\r\nX-IsFromCafe: 1\r\nX-CommonAccessToken: AAAA\r\nProxy-Authorization: Basic eDp5\r\nCookie: X-BackEndCookie=bob\r\n",
            ),
            Expect::Forwarded(|r| {
                as_alice_check(r)?;
                for h in [
                    "x-forwarded-for",
                    "x-forwarded-host",
                    "x-forwarded-proto",
                    "forwarded",
                    "x-real-ip",
                    "x-ms-exchange-organization-authas",
                    "x-isfromcafe",
                    "x-commonaccesstoken",
                    "proxy-authorization",
                ] {
                    no_header(r, h)?;
                }
                Ok(())
            }),
        ),
        c(
            "client_request_id_passes",
            with("client-request-id: 11111111-2222-3333-4444-555555555555\r\n"),
            Expect::Forwarded(|r| {
                as_alice_check(r)?;
                match r.header("client-request-id") {
                    Some("11111111-2222-3333-4444-555555555555") => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }),
        ),
    ]
}

/// What reached Exchange is framed canonically: one `Content-Type: text/xml; charset=utf-8`
/// and no SOAPAction, whatever the client sent.
fn canonical_framing(r: &LoggedRequest) -> Result<(), String> {
    as_alice_check(r)?;
    let ct = r.header_all("content-type");
    if ct != ["text/xml; charset=utf-8"] {
        return Err(format!("content-type upstream: {ct:?}"));
    }
    no_header(r, "soapaction")
}

/// Issue 12: the client's Content-Type, Content-Encoding and SOAPAction must agree with the
/// envelope the gateway read, and are replaced by the canonical framing.
fn content_type_cases() -> Vec<Case> {
    let body = ews();
    let a = auth_line();
    // `headers`: every header line after Host and Authorization (Content-Type included or not).
    let post = |headers: &str| {
        raw(
            &format!(
                "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n{a}\r\n{headers}Content-Length: {}\r\nConnection: close",
                body.len()
            ),
            &body,
        )
    };
    let action = |op: &str| {
        format!(
            "SOAPAction: \"http://schemas.microsoft.com/exchange/services/2006/messages/{op}\"\r\n"
        )
    };
    const INV: &str = "ErrorInvalidRequest";
    let soap12 = format!(
        "<e:Envelope xmlns:e=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:m=\"{M}\" xmlns:t=\"{T}\"><e:Header>{}</e:Header><e:Body>{}</e:Body></e:Envelope>",
        version_header(),
        find_inbox()
    );
    vec![
        c(
            "charset_utf7",
            post("Content-Type: text/xml; charset=utf-7\r\n"),
            Expect::Fault(INV, "utf-7"),
        ),
        c(
            "charset_latin1",
            post("Content-Type: text/xml; charset=iso-8859-1\r\n"),
            Expect::Fault(INV, "only utf-8"),
        ),
        c(
            "charset_utf16_label_on_utf8_body",
            post("Content-Type: text/xml; charset=utf-16\r\n"),
            Expect::Fault(INV, "only utf-8"),
        ),
        c(
            "two_content_type_headers",
            post(
                "Content-Type: text/xml; charset=utf-8\r\nContent-Type: text/xml; charset=utf-7\r\n",
            ),
            Expect::Fault(INV, "more than one Content-Type"),
        ),
        c(
            "two_charset_parameters",
            post("Content-Type: text/xml; charset=utf-8; charset=utf-7\r\n"),
            Expect::Fault(INV, "charset"),
        ),
        c(
            "mtom_multipart_related",
            post(
                "Content-Type: multipart/related; type=\"application/xop+xml\"; boundary=\"b\"; start-info=\"text/xml\"\r\n",
            ),
            Expect::Fault(INV, "MTOM"),
        ),
        c(
            "soap12_media_type_on_soap11_envelope",
            post("Content-Type: application/soap+xml; charset=utf-8\r\n"),
            Expect::Fault(INV, "media type"),
        ),
        c(
            "text_plain",
            post("Content-Type: text/plain; charset=utf-8\r\n"),
            Expect::Fault(INV, "media type"),
        ),
        c(
            "unknown_parameter",
            post("Content-Type: text/xml; charset=utf-8; boundary=x\r\n"),
            Expect::Fault(INV, "boundary"),
        ),
        c(
            "gzip_request_body",
            post("Content-Type: text/xml; charset=utf-8\r\nContent-Encoding: gzip\r\n"),
            Expect::Fault(INV, "Content-Encoding"),
        ),
        c(
            "no_content_type_is_labelled_utf8",
            post(""),
            Expect::Forwarded(canonical_framing),
        ),
        c(
            "upper_case_quoted_charset_is_canonicalised",
            post("Content-Type: TEXT/XML;charset=\"UTF-8\"\r\n"),
            Expect::Forwarded(canonical_framing),
        ),
        c(
            "soap_action_naming_another_operation",
            post(&format!(
                "Content-Type: text/xml; charset=utf-8\r\n{}",
                action("DeleteItem")
            )),
            Expect::Fault(INV, "does not match its operation FindItem"),
        ),
        c(
            "soap_action_bare_operation_name",
            post("Content-Type: text/xml; charset=utf-8\r\nSOAPAction: FindItem\r\n"),
            Expect::Fault(INV, "does not match"),
        ),
        c(
            "two_soap_actions",
            post(&format!(
                "Content-Type: text/xml; charset=utf-8\r\n{}{}",
                action("FindItem"),
                action("DeleteItem")
            )),
            Expect::Fault(INV, "more than one SOAPAction"),
        ),
        c(
            "matching_soap_action_is_checked_and_dropped",
            post(&format!(
                "Content-Type: text/xml; charset=utf-8\r\n{}",
                action("FindItem")
            )),
            Expect::Forwarded(canonical_framing),
        ),
        c(
            "soap12_envelope_as_soap12_media_type",
            raw(
                &format!(
                    "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n{a}\r\nContent-Type: application/soap+xml; charset=utf-8; action=\"http://schemas.microsoft.com/exchange/services/2006/messages/FindItem\"\r\nContent-Length: {}\r\nConnection: close",
                    soap12.len()
                ),
                soap12.as_bytes(),
            ),
            Expect::ForwardedAny(|r| {
                as_alice_check(r)?;
                match r.header_all("content-type")[..] {
                    ["application/soap+xml; charset=utf-8"] => Ok(()),
                    ref other => Err(format!("{other:?}")),
                }
            }),
        ),
        c(
            "empty_soap_action_is_dropped",
            post("Content-Type: text/xml; charset=utf-8\r\nSOAPAction: \"\"\r\n"),
            Expect::Forwarded(canonical_framing),
        ),
    ]
}

fn basic_cases() -> Vec<Case> {
    let body = ews();
    let with_auth = |value: &str| http_post("/EWS/Exchange.asmx", Some(value), "", &body);
    let alice_b64 = b64(b"alice@contoso.example:alice-demo-pass");
    vec![
        c(
            "basic_bad_base64",
            with_auth("Basic !!!notbase64!!!"),
            Expect::Challenge,
        ),
        c(
            "basic_base64_without_padding",
            with_auth(&format!("Basic {}", alice_b64.trim_end_matches('='))),
            Expect::Challenge,
        ),
        c(
            "basic_not_utf8",
            with_auth(&format!(
                "Basic {}",
                b64(b"alice@contoso.example:\xff\xfe-demo-pass")
            )),
            Expect::Challenge,
        ),
        c(
            "basic_latin1_password_is_not_the_utf8_one",
            with_auth(&format!(
                "Basic {}",
                b64(b"alice@contoso.example:alice-demo-pass\xe9")
            )),
            Expect::Challenge,
        ),
        c(
            "basic_no_colon",
            with_auth(&format!(
                "Basic {}",
                b64(b"alice@contoso.examplealice-demo-pass")
            )),
            Expect::Challenge,
        ),
        c(
            "basic_empty_user",
            with_auth(&format!("Basic {}", b64(b":alice-demo-pass"))),
            Expect::Challenge,
        ),
        c(
            "basic_empty_password",
            with_auth(&format!("Basic {}", b64(b"alice@contoso.example:"))),
            Expect::Challenge,
        ),
        c("basic_scheme_only", with_auth("Basic"), Expect::Challenge),
        c(
            "basic_scheme_and_space",
            with_auth("Basic "),
            Expect::Challenge,
        ),
        c(
            "basic_huge_value",
            with_auth(&format!(
                "Basic {}",
                b64(format!("alice@contoso.example:{}", "p".repeat(20_000)).as_bytes())
            )),
            Expect::Challenge,
        ),
        c(
            "colon_in_password_works",
            with_auth(&basic(COLON_USER, COLON_PASS)),
            Expect::Forwarded(as_alice_check),
        ),
        c(
            "colon_in_password_split_elsewhere_fails",
            with_auth(&format!("Basic {}", b64(b"svc-colon@contoso.example:pa"))),
            Expect::Challenge,
        ),
        c(
            "basic_lowercase_scheme",
            with_auth(&format!("basic {alice_b64}")),
            Expect::Forwarded(as_alice_check),
        ),
        c(
            "basic_uppercase_scheme",
            with_auth(&format!("BASIC {alice_b64}")),
            Expect::Forwarded(as_alice_check),
        ),
        c(
            "basic_extra_spaces",
            with_auth(&format!("Basic    {alice_b64}   ")),
            Expect::Forwarded(as_alice_check),
        ),
        c(
            "basic_tab_separator",
            with_auth(&format!("Basic\t{alice_b64}")),
            Expect::Challenge,
        ),
        c(
            "basic_trailing_garbage_token",
            with_auth(&format!("Basic {alice_b64} extra")),
            Expect::Challenge,
        ),
        c(
            "basic_wrong_password",
            with_auth(&basic("alice@contoso.example", "alice-demo-pass ")),
            Expect::Challenge,
        ),
        c(
            "basic_user_upper_case_is_the_same_user",
            with_auth(&basic("ALICE@Contoso.Example", "alice-demo-pass")),
            Expect::Forwarded(as_alice_check),
        ),
        c(
            "basic_netbios_form",
            with_auth(&basic("CONTOSO\\alice", "alice-demo-pass")),
            Expect::Forwarded(as_alice_check),
        ),
        c(
            "basic_unknown_netbios_domain",
            with_auth(&basic("EVIL\\alice", "alice-demo-pass")),
            Expect::Challenge,
        ),
        c(
            "basic_nul_in_user",
            with_auth(&basic("alice@contoso.example\0bob", "alice-demo-pass")),
            Expect::Challenge,
        ),
        c(
            "ntlm_token",
            with_auth("NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAGAbEdAAAADw=="),
            Expect::Challenge,
        ),
        c(
            "negotiate_token",
            with_auth("Negotiate YIIGhgYGKwYBBQUCoIIGejCCBnagMDAu"),
            Expect::Challenge,
        ),
        c(
            "digest_scheme",
            with_auth("Digest username=\"alice\""),
            Expect::Challenge,
        ),
        c(
            "no_authorization_at_all",
            http_post("/EWS/Exchange.asmx", None, "", &body),
            Expect::Challenge,
        ),
    ]
}

#[tokio::test]
async fn adversarial_http_requests() {
    let extra = format!(
        "{}mailbox = \"alice@contoso.example\"\n",
        user_entry(COLON_USER, COLON_PASS)
    );
    // Dozens of deliberate failures come from one address; the lockout is not under test here.
    let demo = start_demo_tuned(
        |c| {
            c.auth.lockout.max_failures = 1000;
            c.auth.lockout.max_failures_per_source = 1000;
        },
        &extra,
    )
    .await;
    let mut cases = Vec::new();
    cases.extend(framing_cases());
    cases.extend(path_cases());
    cases.extend(header_cases());
    cases.extend(basic_cases());
    cases.extend(content_type_cases());
    assert!(cases.len() >= 70, "{} cases", cases.len());
    run(&demo, cases).await;
    demo.stop().await;
}
