//! Adversarial SOAP envelopes through the running gateway (issue 6): DTDs and entities,
//! namespace tricks, misplaced and duplicated impersonation, comments/CDATA/PIs, encodings,
//! truncated and endless heads, privileged headers. Each case asserts the answer and, through
//! the simulator's request log, exactly what reached Exchange (nothing for a refusal).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "adversarial/harness.rs"]
mod harness;

use common::*;
use harness::*;

const INV: &str = "ErrorInvalidRequest";
const SCHEMA: &str = "ErrorSchemaValidation";
const IMPH: &str = "ErrorInvalidExchangeImpersonationHeaderData";
const DENIED: &str = "ErrorImpersonateUserDenied";
const ACCESS: &str = "ErrorAccessDenied";

fn c(name: &'static str, request: Vec<u8>, expect: Expect) -> Case {
    Case {
        name,
        request,
        expect,
    }
}

fn doc(prolog: &str, header: &str) -> String {
    format!(
        "{prolog}<s:Envelope xmlns:s=\"{SOAP}\" xmlns:m=\"{M}\" xmlns:t=\"{T}\"><s:Header>{header}</s:Header><s:Body>{}</s:Body></s:Envelope>",
        find_inbox()
    )
}

fn utf16(text: &str, big_endian: bool, bom: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if bom {
        out.extend_from_slice(if big_endian {
            &[0xFE, 0xFF]
        } else {
            &[0xFF, 0xFE]
        });
    }
    for unit in text.encode_utf16() {
        let b = if big_endian {
            unit.to_be_bytes()
        } else {
            unit.to_le_bytes()
        };
        out.extend_from_slice(&b);
    }
    out
}

fn dtd_cases() -> Vec<Case> {
    let laughs = "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\"><!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\"><!ENTITY lol9 \"&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;\">]>";
    vec![
        c(
            "billion_laughs",
            as_alice(doc(laughs, "<t:X>&lol9;</t:X>")),
            Expect::Fault(INV, "DOCTYPE"),
        ),
        c(
            "external_entity_file",
            as_alice(doc(
                "<?xml version=\"1.0\"?><!DOCTYPE s:Envelope [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>",
                "<t:X>&xxe;</t:X>",
            )),
            Expect::Fault(INV, "DOCTYPE"),
        ),
        c(
            "external_entity_http",
            as_alice(doc(
                "<!DOCTYPE s:Envelope [<!ENTITY xxe SYSTEM \"http://127.0.0.1:1/x\">]>",
                "<t:X>&xxe;</t:X>",
            )),
            Expect::Fault(INV, "DOCTYPE"),
        ),
        c(
            "parameter_entity",
            as_alice(doc(
                "<!DOCTYPE s:Envelope [<!ENTITY % p SYSTEM \"http://127.0.0.1:1/p.dtd\"> %p;]>",
                "",
            )),
            Expect::Fault(INV, "DOCTYPE"),
        ),
        c(
            "entity_naming_another_mailbox",
            as_alice(doc(
                "<!DOCTYPE s:Envelope [<!ENTITY who \"bob@contoso.example\">]>",
                &imp("SmtpAddress", "&who;"),
            )),
            Expect::Fault(INV, "DOCTYPE"),
        ),
        c(
            "doctype_without_subset",
            as_alice(doc("<!DOCTYPE s:Envelope>", "")),
            Expect::Fault(INV, "DOCTYPE"),
        ),
        c(
            "doctype_public_external",
            as_alice(doc(
                "<!DOCTYPE s:Envelope PUBLIC \"-//X//EN\" \"http://127.0.0.1:1/x.dtd\">",
                "",
            )),
            Expect::Fault(INV, "DOCTYPE"),
        ),
        c(
            "undefined_entity_in_header",
            as_alice(doc("", "<t:X>&xxe;</t:X>")),
            Expect::Fault(INV, "undefined entity &apos;&amp;xxe;"),
        ),
        c(
            "undefined_entity_in_impersonation",
            as_alice(doc("", &imp("SmtpAddress", "&bob;"))),
            Expect::Fault(INV, "undefined entity"),
        ),
        c(
            "char_reference_spelling_own_mailbox",
            as_alice(doc("", &imp("SmtpAddress", "alice&#64;contoso.example"))),
            Expect::Forwarded(|r| {
                as_alice_check(r)?;
                if body_text(r).contains("&#64;") {
                    return Err("the client's impersonation was not replaced".into());
                }
                Ok(())
            }),
        ),
        c(
            "char_reference_spelling_another_mailbox",
            as_alice(doc(
                "",
                &imp("SmtpAddress", "b&#111;b&#x40;contoso.example"),
            )),
            Expect::Fault(DENIED, "bob@contoso.example"),
        ),
    ]
}

fn namespace_cases() -> Vec<Case> {
    let bob = imp("SmtpAddress", "bob@contoso.example");
    vec![
        c(
            "impersonation_in_foreign_namespace",
            as_alice(doc(
                "",
                "<x:ExchangeImpersonation xmlns:x=\"urn:evil\"><x:ConnectingSID><x:SmtpAddress>bob@contoso.example</x:SmtpAddress></x:ConnectingSID></x:ExchangeImpersonation>",
            )),
            Expect::Fault(IMPH, "wrong namespace"),
        ),
        c(
            "impersonation_in_no_namespace",
            as_alice(doc(
                "",
                "<ExchangeImpersonation xmlns=\"\"><ConnectingSID><SmtpAddress>bob@contoso.example</SmtpAddress></ConnectingSID></ExchangeImpersonation>",
            )),
            Expect::Fault(IMPH, "wrong namespace"),
        ),
        c(
            "impersonation_in_messages_namespace",
            as_alice(doc(
                "",
                "<m:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>bob@contoso.example</t:SmtpAddress></t:ConnectingSID></m:ExchangeImpersonation>",
            )),
            Expect::Fault(IMPH, "wrong namespace"),
        ),
        c(
            "impersonation_misspelt_case",
            as_alice(doc(
                "",
                "<t:exchangeimpersonation><t:ConnectingSID><t:SmtpAddress>bob@contoso.example</t:SmtpAddress></t:ConnectingSID></t:exchangeimpersonation>",
            )),
            Expect::Fault(IMPH, "spelling"),
        ),
        c(
            "types_prefix_rebound_on_header",
            as_alice(format!(
                "<s:Envelope xmlns:s=\"{SOAP}\" xmlns:m=\"{M}\" xmlns:t=\"{T}\"><s:Header xmlns:t=\"urn:evil\">{bob}</s:Header><s:Body>{}</s:Body></s:Envelope>",
                find_inbox()
            )),
            Expect::Fault(IMPH, "wrong namespace"),
        ),
        c(
            "types_prefix_rebound_on_the_element",
            as_alice(doc(
                "",
                "<t:ExchangeImpersonation xmlns:t=\"urn:evil\"><t:ConnectingSID><t:SmtpAddress>bob@contoso.example</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>",
            )),
            Expect::Fault(IMPH, "wrong namespace"),
        ),
        c(
            "other_prefix_bound_to_types_namespace_is_the_real_header",
            as_alice(doc(
                "",
                &format!(
                    "<x:ExchangeImpersonation xmlns:x=\"{T}\"><x:ConnectingSID><x:SmtpAddress>bob@contoso.example</x:SmtpAddress></x:ConnectingSID></x:ExchangeImpersonation>"
                ),
            )),
            Expect::Fault(DENIED, "bob@contoso.example"),
        ),
        c(
            "default_namespace_impersonation_is_the_real_header",
            as_alice(doc(
                "",
                &format!(
                    "<ExchangeImpersonation xmlns=\"{T}\"><ConnectingSID><SmtpAddress>bob@contoso.example</SmtpAddress></ConnectingSID></ExchangeImpersonation>"
                ),
            )),
            Expect::Fault(DENIED, "bob@contoso.example"),
        ),
        c(
            "default_namespace_envelope_own_mailbox",
            as_alice(format!(
                "<Envelope xmlns=\"{SOAP}\"><Header><RequestServerVersion xmlns=\"{T}\" Version=\"Exchange2016\"/></Header><Body><FindItem xmlns=\"{M}\" Traversal=\"Shallow\"><ItemShape><BaseShape xmlns=\"{T}\">Default</BaseShape></ItemShape><ParentFolderIds><DistinguishedFolderId xmlns=\"{T}\" Id=\"inbox\"/></ParentFolderIds></FindItem></Body></Envelope>"
            )),
            Expect::Forwarded(as_alice_check),
        ),
        c(
            "soap_namespace_bound_twice",
            as_alice(format!(
                "<s:Envelope xmlns:s=\"{SOAP}\" xmlns:soap=\"{SOAP}\" xmlns:m=\"{M}\" xmlns:t=\"{T}\"><soap:Header>{}</soap:Header><s:Body>{}</s:Body></s:Envelope>",
                version_header(),
                find_inbox()
            )),
            Expect::Forwarded(as_alice_check),
        ),
        c(
            "soap_namespace_bound_twice_two_headers",
            as_alice(format!(
                "<s:Envelope xmlns:s=\"{SOAP}\" xmlns:soap=\"{SOAP}\" xmlns:m=\"{M}\" xmlns:t=\"{T}\"><s:Header/><soap:Header>{bob}</soap:Header><s:Body>{}</s:Body></s:Envelope>",
                find_inbox()
            )),
            Expect::Fault(SCHEMA, "more than one Header"),
        ),
        c(
            "soap_prefix_rebound_on_header",
            as_alice(format!(
                "<s:Envelope xmlns:s=\"{SOAP}\" xmlns:m=\"{M}\" xmlns:t=\"{T}\"><s:Header xmlns:s=\"urn:evil\">{bob}</s:Header><s:Body>{}</s:Body></s:Envelope>",
                find_inbox()
            )),
            Expect::Fault(SCHEMA, "unexpected element"),
        ),
        c(
            "soap_prefix_rebound_inside_header_fake_body",
            as_alice(doc(
                "",
                &format!("<x:W xmlns:x=\"urn:x\" xmlns:s=\"urn:evil\"><s:Body/></x:W>{bob}"),
            )),
            Expect::Fault(DENIED, "bob@contoso.example"),
        ),
        c(
            "soap12_namespace_in_a_soap11_envelope_header",
            as_alice(format!(
                "<s:Envelope xmlns:s=\"{SOAP}\" xmlns:e=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:m=\"{M}\" xmlns:t=\"{T}\"><e:Header>{bob}</e:Header><s:Body>{}</s:Body></s:Envelope>",
                find_inbox()
            )),
            Expect::Fault(SCHEMA, "unexpected element"),
        ),
        c(
            "soap12_envelope_sent_as_text_xml",
            as_alice(format!(
                "<e:Envelope xmlns:e=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:m=\"{M}\" xmlns:t=\"{T}\"><e:Header>{}</e:Header><e:Body>{}</e:Body></e:Envelope>",
                version_header(),
                find_inbox()
            )),
            Expect::Fault(
                INV,
                "SOAP 1.2 envelope must be sent as application/soap+xml",
            ),
        ),
        c(
            "unbound_prefix_in_header",
            as_alice(doc("", "<z:Foo/>")),
            Expect::Fault(INV, "well-formed"),
        ),
        c(
            "root_without_soap_namespace",
            as_alice(format!(
                "<Envelope><Header/><Body>{}</Body></Envelope>",
                find_inbox()
            )),
            Expect::Fault(INV, "not a SOAP Envelope"),
        ),
        c(
            "root_in_foreign_namespace_named_envelope",
            as_alice(format!(
                "<s:Envelope xmlns:s=\"urn:evil\" xmlns:m=\"{M}\" xmlns:t=\"{T}\"><s:Body>{}</s:Body></s:Envelope>",
                find_inbox()
            )),
            Expect::Fault(INV, "not a SOAP Envelope"),
        ),
    ]
}

fn placement_cases() -> Vec<Case> {
    let bob = imp("SmtpAddress", "bob@contoso.example");
    let alice_imp = imp("SmtpAddress", "alice@contoso.example");
    vec![
        c(
            "impersonation_in_body_before_operation",
            as_alice(envelope(
                Some(version_header()),
                &format!("{bob}{}", find_inbox()),
            )),
            Expect::Fault(IMPH, "only allowed directly in the SOAP Header"),
        ),
        c(
            "impersonation_nested_in_another_header",
            as_alice(doc(
                "",
                &format!("<x:Wrap xmlns:x=\"urn:x\">{bob}</x:Wrap>"),
            )),
            Expect::Fault(IMPH, "only allowed directly in the SOAP Header"),
        ),
        c(
            "impersonation_nested_in_impersonation",
            as_alice(doc(
                "",
                &format!("<t:ExchangeImpersonation>{bob}</t:ExchangeImpersonation>"),
            )),
            Expect::Fault(IMPH, "ExchangeImpersonation"),
        ),
        c(
            "impersonation_directly_under_envelope",
            as_alice(format!(
                "<s:Envelope xmlns:s=\"{SOAP}\" xmlns:m=\"{M}\" xmlns:t=\"{T}\">{bob}<s:Body>{}</s:Body></s:Envelope>",
                find_inbox()
            )),
            Expect::Fault(SCHEMA, "unexpected element"),
        ),
        c(
            "impersonation_inside_the_operation_is_not_a_header",
            as_alice(envelope(
                Some(version_header()),
                &find_inbox().replacen("<m:ItemShape>", &format!("{bob}<m:ItemShape>"), 1),
            )),
            // After the head nothing is parsed; Exchange only reads headers. The Header holds
            // exactly the gateway's one impersonation, for alice.
            Expect::Forwarded(|r| {
                as_alice_check(r)?;
                let body = body_text(r);
                let header = body.split("</s:Header>").next().unwrap_or_default();
                if header.contains("bob@") {
                    return Err(format!("bob in the Header: {header}"));
                }
                Ok(())
            }),
        ),
        c(
            "two_headers",
            as_alice(format!(
                "<s:Envelope xmlns:s=\"{SOAP}\" xmlns:m=\"{M}\" xmlns:t=\"{T}\"><s:Header>{alice_imp}</s:Header><s:Header>{bob}</s:Header><s:Body>{}</s:Body></s:Envelope>",
                find_inbox()
            )),
            Expect::Fault(SCHEMA, "more than one Header"),
        ),
        c(
            "header_after_empty_body",
            as_alice(format!(
                "<s:Envelope xmlns:s=\"{SOAP}\" xmlns:t=\"{T}\"><s:Body/><s:Header>{bob}</s:Header></s:Envelope>"
            )),
            Expect::Fault(SCHEMA, "before the Body"),
        ),
        c(
            "two_bodies_empty_first",
            as_alice(format!(
                "<s:Envelope xmlns:s=\"{SOAP}\" xmlns:m=\"{M}\" xmlns:t=\"{T}\"><s:Body/><s:Body>{}</s:Body></s:Envelope>",
                find_inbox()
            )),
            Expect::Fault(SCHEMA, "more than one Body"),
        ),
        c(
            "two_impersonations_same_mailbox",
            as_alice(doc("", &format!("{alice_imp}{alice_imp}"))),
            Expect::Fault(IMPH, "more than one ExchangeImpersonation"),
        ),
        c(
            "two_impersonations_own_then_other",
            as_alice(doc("", &format!("{alice_imp}{bob}"))),
            Expect::Fault(IMPH, "more than one ExchangeImpersonation"),
        ),
        c(
            "two_impersonations_other_prefix",
            as_alice(doc(
                "",
                &format!(
                    "{alice_imp}<x:ExchangeImpersonation xmlns:x=\"{T}\"><x:ConnectingSID><x:SmtpAddress>bob@contoso.example</x:SmtpAddress></x:ConnectingSID></x:ExchangeImpersonation>"
                ),
            )),
            Expect::Fault(IMPH, "more than one ExchangeImpersonation"),
        ),
        c(
            "impersonation_of_another_mailbox_denied",
            as_alice(doc("", &bob)),
            Expect::Fault(DENIED, "bob@contoso.example"),
        ),
        c(
            "impersonation_by_sid_refused",
            as_archiver(doc("", &imp("SID", "S-1-5-21-1-2-3-1001"))),
            Expect::Fault(DENIED, "SID"),
        ),
        c(
            "connecting_sid_two_identities",
            as_alice(doc(
                "",
                "<t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>alice@contoso.example</t:SmtpAddress><t:SmtpAddress>bob@contoso.example</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>",
            )),
            Expect::Fault(IMPH, "ExchangeImpersonation header is invalid"),
        ),
        c(
            "connecting_sid_empty",
            as_alice(doc(
                "",
                "<t:ExchangeImpersonation><t:ConnectingSID/></t:ExchangeImpersonation>",
            )),
            Expect::Fault(IMPH, "ExchangeImpersonation header is invalid"),
        ),
        c(
            "connecting_sid_blank_address",
            as_alice(doc("", &imp("SmtpAddress", "   "))),
            Expect::Fault(IMPH, "ExchangeImpersonation header is invalid"),
        ),
        c(
            "archiver_impersonates_alice",
            as_archiver(doc("", &imp("PrimarySmtpAddress", "alice@contoso.example"))),
            Expect::Forwarded(|r| acts_as(r, "alice@contoso.example")),
        ),
        c(
            "archiver_impersonates_outside_its_domain",
            as_archiver(doc("", &imp("SmtpAddress", "dana@fabrikam.example"))),
            Expect::Fault(DENIED, "dana@fabrikam.example"),
        ),
        c(
            "unknown_element_under_envelope",
            as_alice(format!(
                "<s:Envelope xmlns:s=\"{SOAP}\" xmlns:m=\"{M}\"><s:Trailer/><s:Body>{}</s:Body></s:Envelope>",
                find_inbox()
            )),
            Expect::Fault(SCHEMA, "unexpected element"),
        ),
        c(
            "text_in_header",
            as_alice(doc("", "bob@contoso.example")),
            Expect::Fault(SCHEMA, "contains text"),
        ),
        c(
            "body_operation_not_ews",
            as_alice(envelope(
                Some(version_header()),
                "<x:FindItem xmlns:x=\"urn:evil\"/>",
            )),
            Expect::Fault(SCHEMA, "not an Exchange Web Services operation"),
        ),
        c(
            "empty_body_names_no_operation",
            as_alice(envelope(Some(version_header()), "")),
            Expect::Fault(INV, "no EWS operation"),
        ),
        c(
            "missing_body",
            as_alice(format!(
                "<s:Envelope xmlns:s=\"{SOAP}\"><s:Header/></s:Envelope>"
            )),
            Expect::Fault(SCHEMA, "no Body"),
        ),
        c(
            "content_before_envelope",
            as_alice(format!("junk{}", with_header(""))),
            Expect::Fault(INV, "before the SOAP Envelope"),
        ),
    ]
}

fn markup_cases() -> Vec<Case> {
    vec![
        c(
            "comment_hiding_a_fake_impersonation",
            as_alice(doc(
                "",
                &format!("<!-- {} -->", imp("SmtpAddress", "bob@contoso.example")),
            )),
            Expect::Forwarded(as_alice_check),
        ),
        c(
            "cdata_holding_a_fake_impersonation",
            as_alice(doc(
                "",
                &format!(
                    "<x:Trace xmlns:x=\"urn:x\"><![CDATA[{}]]></x:Trace>",
                    imp("SmtpAddress", "bob@contoso.example")
                ),
            )),
            Expect::ForwardedAny(as_alice_check),
        ),
        c(
            "processing_instruction_in_header",
            as_alice(doc(
                "",
                &format!("<?ews {}?>{}", "impersonate bob", version_header()),
            )),
            Expect::Forwarded(as_alice_check),
        ),
        c(
            "comment_splitting_the_address",
            as_alice(doc("", &imp("SmtpAddress", "bo<!-- -->b@contoso.example"))),
            Expect::Fault(DENIED, "bob@contoso.example"),
        ),
        c(
            "cdata_holding_the_address",
            as_alice(doc(
                "",
                &imp("SmtpAddress", "<![CDATA[bob@contoso.example]]>"),
            )),
            Expect::Fault(DENIED, "bob@contoso.example"),
        ),
        c(
            "pi_inside_the_address",
            as_alice(doc("", &imp("SmtpAddress", "alice<?x y?>@contoso.example"))),
            Expect::Forwarded(as_alice_check),
        ),
        c(
            "whitespace_around_own_address",
            as_alice(doc("", &imp("SmtpAddress", "\n  alice@contoso.example\t "))),
            Expect::Forwarded(as_alice_check),
        ),
        c(
            "mismatched_end_tag",
            as_alice(doc("", "<t:A></t:B>")),
            Expect::Fault(INV, "well-formed"),
        ),
        c(
            "duplicate_attribute",
            as_alice(doc(
                "",
                "<t:RequestServerVersion Version=\"Exchange2016\" Version=\"Exchange2010\"/>",
            )),
            Expect::Fault(INV, "well-formed"),
        ),
        c(
            "cdata_directly_in_header",
            as_alice(doc("", "<![CDATA[x]]>")),
            Expect::Fault(SCHEMA, "contains text"),
        ),
    ]
}

/// Issue 12: every XML 1.0 well-formedness rule the head scan reads is enforced, so a strict
/// parser (Exchange's) never reads the head differently from the gateway.
fn wellformedness_cases() -> Vec<Case> {
    let rsv = version_header();
    let wf = |name, header: String| {
        c(
            name,
            as_alice(doc("", &header)),
            Expect::Fault(INV, "well-formed"),
        )
    };
    vec![
        wf("control_character_in_header_text", format!("{rsv}<x:T xmlns:x=\"urn:x\">a\u{1}b</x:T>")),
        wf("control_character_in_address", imp("SmtpAddress", "alice@contoso.example\u{8}")),
        wf("character_reference_to_a_control", format!("{rsv}<x:T xmlns:x=\"urn:x\">&#1;</x:T>")),
        wf("u_fffe_in_header_text", format!("{rsv}<x:T xmlns:x=\"urn:x\">\u{FFFE}</x:T>")),
        wf("u_ffff_reference_in_attribute", format!("{rsv}<x:T xmlns:x=\"urn:x\" a=\"&#xFFFF;\"/>")),
        wf("lt_in_attribute_value", "<t:RequestServerVersion Version=\"Exchange2016\" x=\"a<b\"/>".to_owned()),
        wf("cdata_end_in_text", format!("{rsv}<x:T xmlns:x=\"urn:x\">a]]>b</x:T>")),
        wf(
            "duplicate_expanded_attribute_names",
            "<t:RequestServerVersion xmlns:a=\"urn:x\" xmlns:b=\"urn:x\" a:v=\"1\" b:v=\"2\" Version=\"Exchange2016\"/>".to_owned(),
        ),
        wf("empty_prefixed_namespace_declaration", format!("{rsv}<x:T xmlns:x=\"urn:x\"><x:U xmlns:x=\"\"/></x:T>")),
        wf("xml_prefix_rebound", format!("{rsv}<x:T xmlns:x=\"urn:x\" xmlns:xml=\"urn:y\"/>")),
        wf("upper_case_xml_pi", format!("<?XML version=\"1.0\"?>{rsv}")),
        wf("character_reference_inside_an_element_name", format!("{rsv}<x&#x3A;T xmlns:x=\"urn:x\"/>")),
        wf("attributes_without_whitespace", "<t:RequestServerVersion Version=\"Exchange2016\"x=\"1\"/>".to_owned()),
        wf("qname_with_two_colons", format!("{rsv}<x:y:T xmlns:x=\"urn:x\"/>")),
        c(
            "declaration_with_encoding_before_version",
            as_alice(doc("<?xml encoding=\"utf-8\" version=\"1.0\"?>", rsv)),
            Expect::Fault(INV, "XML declaration"),
        ),
        c(
            "control_character_in_a_comment_before_the_envelope",
            as_alice(doc("<!-- \u{1b}[2J -->", rsv)),
            Expect::Fault(INV, "U+001B"),
        ),
    ]
}

/// Issue 12: the identity Exchange acts on is the one policy checked. Whatever ConnectingSID
/// form the client used, one `PrimarySmtpAddress` of the decided mailbox goes upstream
/// (`acts_as` refuses any other form); a real UPN maps through the users file.
fn identity_form_cases() -> Vec<Case> {
    vec![
        c(
            "smtp_address_form_becomes_primary",
            as_archiver(doc("", &imp("SmtpAddress", "alice@contoso.example"))),
            Expect::Forwarded(|r| acts_as(r, "alice@contoso.example")),
        ),
        c(
            "principal_name_in_address_form_becomes_primary",
            as_archiver(doc("", &imp("PrincipalName", "bob@contoso.example"))),
            Expect::Forwarded(|r| acts_as(r, "bob@contoso.example")),
        ),
        c(
            "own_real_upn_is_mapped_to_own_mailbox",
            as_alice(doc(
                "",
                &imp("PrincipalName", "alice@contoso.onmicrosoft.example"),
            )),
            Expect::Forwarded(as_alice_check),
        ),
        c(
            "archiver_by_alices_upn_acts_as_alice",
            as_archiver(doc(
                "",
                &imp("PrincipalName", "alice@contoso.onmicrosoft.example"),
            )),
            Expect::Forwarded(|r| acts_as(r, "alice@contoso.example")),
        ),
        c(
            "bob_by_alices_upn_is_denied_naming_the_mailbox",
            http_post(
                "/EWS/Exchange.asmx",
                Some(&basic(BOB.0, BOB.1)),
                "",
                doc(
                    "",
                    &imp("PrincipalName", "alice@contoso.onmicrosoft.example"),
                )
                .as_bytes(),
            ),
            Expect::Fault(DENIED, "mailbox alice@contoso.example"),
        ),
        c(
            "login_with_the_real_upn",
            http_post(
                "/EWS/Exchange.asmx",
                Some(&basic("alice@contoso.onmicrosoft.example", ALICE.1)),
                "",
                doc("", version_header()).as_bytes(),
            ),
            Expect::Forwarded(as_alice_check),
        ),
    ]
}

fn encoding_cases() -> Vec<Case> {
    let plain = with_header(version_header());
    let undeclared = plain.replacen("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n", "", 1);
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(plain.as_bytes());
    let mut invalid = plain.clone().into_bytes();
    let at = plain.find("Exchange2016").unwrap();
    invalid[at] = 0xC3;
    invalid[at + 1] = 0x28;
    vec![
        c(
            "utf16le_with_bom",
            as_alice(utf16(&undeclared, false, true)),
            Expect::Fault(INV, "UTF-8"),
        ),
        c(
            "utf16be_with_bom",
            as_alice(utf16(&undeclared, true, true)),
            Expect::Fault(INV, "UTF-8"),
        ),
        c(
            "utf16le_without_bom",
            as_alice(utf16(&undeclared, false, false)),
            Expect::Fault(INV, "UTF-8"),
        ),
        c(
            "utf32le_with_bom",
            as_alice({
                let mut v = vec![0xFF, 0xFE, 0, 0];
                for ch in undeclared.chars() {
                    v.extend_from_slice(&(ch as u32).to_le_bytes());
                }
                v
            }),
            Expect::Fault(INV, "UTF-8"),
        ),
        c(
            "utf8_bom_accepted_and_kept",
            as_alice(&bom),
            Expect::Forwarded(|r| {
                as_alice_check(r)?;
                if !r.body.starts_with(b"\xEF\xBB\xBF<?xml") {
                    return Err("the BOM was not forwarded as sent".into());
                }
                Ok(())
            }),
        ),
        c(
            "two_utf8_boms",
            as_alice({
                let mut v = b"\xEF\xBB\xBF".to_vec();
                v.extend_from_slice(&bom);
                v
            }),
            Expect::Fault(INV, "content before the SOAP Envelope"),
        ),
        c(
            "declared_latin1",
            as_alice(plain.replacen("encoding=\"utf-8\"", "encoding=\"ISO-8859-1\"", 1)),
            Expect::Fault(INV, "ISO-8859-1"),
        ),
        c(
            "declared_utf16_in_utf8_bytes",
            as_alice(plain.replacen("encoding=\"utf-8\"", "encoding=\"UTF-16\"", 1)),
            Expect::Fault(INV, "UTF-16"),
        ),
        c(
            "invalid_utf8_sequence",
            as_alice(&invalid),
            Expect::Fault(INV, "UTF-8"),
        ),
        c(
            "nul_byte_in_header",
            as_alice(doc("", "<t:A>\0</t:A>")),
            Expect::Fault(INV, "UTF-8"),
        ),
    ]
}

fn size_cases() -> Vec<Case> {
    let full = with_header(version_header());
    let cut = full.find("<s:Body>").unwrap();
    let many: String = (0..12_000).map(|_| "<t:X/>").collect();
    vec![
        c(
            "truncated_inside_header",
            as_alice(&full[..cut - 20]),
            Expect::Fault(INV, "ended before"),
        ),
        c(
            "truncated_inside_a_start_tag",
            as_alice(&full[..full.find("Version=").unwrap()]),
            Expect::Fault(INV, "ended before"),
        ),
        c(
            "empty_body",
            as_alice(""),
            Expect::Fault(INV, "ended before"),
        ),
        c(
            "head_over_the_limit_many_headers",
            as_alice(doc("", &many)),
            Expect::Fault(INV, "65536 bytes"),
        ),
        c(
            "head_over_the_limit_one_comment",
            as_alice(doc("", &format!("<!--{}-->", "c".repeat(70_000)))),
            Expect::Fault(INV, "65536 bytes"),
        ),
        c(
            "head_over_the_limit_whitespace",
            as_alice(doc("", &" ".repeat(70_000))),
            Expect::Fault(INV, "65536 bytes"),
        ),
    ]
}

fn privileged_cases() -> Vec<Case> {
    vec![
        c(
            "serialized_security_context",
            as_alice(doc(
                "",
                "<t:SerializedSecurityContext><t:UserSid>S-1-5-18</t:UserSid></t:SerializedSecurityContext>",
            )),
            Expect::Fault(ACCESS, "SerializedSecurityContext"),
        ),
        c(
            "open_as_admin_or_system_service",
            as_alice(doc(
                "",
                "<t:OpenAsAdminOrSystemService LogonType=\"SystemService\"><t:ConnectingSID><t:SmtpAddress>bob@contoso.example</t:SmtpAddress></t:ConnectingSID></t:OpenAsAdminOrSystemService>",
            )),
            Expect::Fault(ACCESS, "OpenAsAdminOrSystemService"),
        ),
        c(
            "proxy_security_context",
            as_alice(doc(
                "",
                "<t:ProxySecurityContext>AAAA</t:ProxySecurityContext>",
            )),
            Expect::Fault(ACCESS, "ProxySecurityContext"),
        ),
        c(
            "privileged_lower_case_foreign_namespace",
            as_alice(doc(
                "",
                "<x:serializedsecuritycontext xmlns:x=\"urn:other\"/>",
            )),
            Expect::Fault(ACCESS, "serializedsecuritycontext"),
        ),
        c(
            "privileged_upper_case_no_namespace",
            as_alice(doc("", "<OPENASADMINORSYSTEMSERVICE xmlns=\"\"/>")),
            Expect::Fault(ACCESS, "OPENASADMINORSYSTEMSERVICE"),
        ),
        c(
            "privileged_messages_namespace",
            as_alice(doc("", "<m:ProxySecurityContext/>")),
            Expect::Fault(ACCESS, "ProxySecurityContext"),
        ),
        c(
            "proxy_prefixed_name",
            as_alice(doc("", "<t:ProxySuggesterSid/>")),
            Expect::Fault(ACCESS, "ProxySuggesterSid"),
        ),
        c(
            "management_role",
            as_alice(doc(
                "",
                "<t:ManagementRole><t:UserRoles><t:Role><t:Name>MailboxSearch</t:Name></t:Role></t:UserRoles></t:ManagementRole>",
            )),
            Expect::Fault(ACCESS, "ManagementRole"),
        ),
        c(
            "privileged_nested_in_another_header",
            as_alice(doc(
                "",
                "<x:Wrap xmlns:x=\"urn:x\"><t:SerializedSecurityContext/></x:Wrap>",
            )),
            Expect::Fault(ACCESS, "SerializedSecurityContext"),
        ),
        c(
            "privileged_with_own_impersonation",
            as_alice(doc(
                "",
                &format!(
                    "{}<t:OpenAsAdminOrSystemService/>",
                    imp("SmtpAddress", "alice@contoso.example")
                ),
            )),
            Expect::Fault(ACCESS, "OpenAsAdminOrSystemService"),
        ),
    ]
}

#[tokio::test]
async fn adversarial_envelopes() {
    let demo = start_demo().await;
    let mut cases = Vec::new();
    cases.extend(dtd_cases());
    cases.extend(namespace_cases());
    cases.extend(placement_cases());
    cases.extend(markup_cases());
    cases.extend(encoding_cases());
    cases.extend(wellformedness_cases());
    cases.extend(identity_form_cases());
    cases.extend(size_cases());
    cases.extend(privileged_cases());
    assert!(cases.len() >= 80, "{} cases", cases.len());
    run(&demo, cases).await;
    demo.stop().await;
}

/// A head that never ends (chunked, the body never finishes) is refused once it passes
/// `max_envelope_head_bytes`, while the client is still sending, and nothing goes upstream.
#[tokio::test]
async fn an_endless_envelope_head_is_cut_at_max_envelope_head_bytes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let demo = start_demo().await;
    let mut stream = tokio::net::TcpStream::connect(demo.gateway.addr)
        .await
        .unwrap();
    let head = format!(
        "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n",
        alice()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let start = format!("<s:Envelope xmlns:s=\"{SOAP}\" xmlns:t=\"{T}\"><s:Header>");
    stream
        .write_all(format!("{:x}\r\n{start}\r\n", start.len()).as_bytes())
        .await
        .unwrap();
    let chunk = "<t:X/>".repeat(500);
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    // At most 2 MB are offered; the answer must come long before.
    for _ in 0..700 {
        if stream
            .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .await
            .is_err()
        {
            break;
        }
        if let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(2), stream.read(&mut buf)).await
        {
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&answer).contains("</s:Envelope>") {
                break;
            }
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&answer).contains("</s:Envelope>") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 500"), "{text}");
    assert!(text.contains("ErrorInvalidRequest"), "{text}");
    assert!(text.contains("65536 bytes"), "{text}");
    assert!(demo.sim.ews_requests().is_empty());
    demo.stop().await;
}
