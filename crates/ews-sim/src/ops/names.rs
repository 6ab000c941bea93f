//! ConvertId (the clients' probe) and ResolveNames (against the tenant's mailboxes).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::OpContext;
use super::common::{
    M, OpError, OpResult, T, error, message, ok, parse_bool, required, response, schema_fault,
    warning,
};
use crate::directory::Mailbox as DirMailbox;
use crate::xml::Element;
use ews_gateway_core::soap::escape;

const FORMATS: &[&str] = &[
    "EwsLegacyId",
    "EwsId",
    "EntryId",
    "HexEntryId",
    "StoreId",
    "OwaId",
];

fn valid_smtp(address: &str) -> bool {
    let Some((local, domain)) = address.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !address
            .chars()
            .any(|c| c.is_whitespace() || c == '<' || c == '>')
}

/// Re-encodes an id between formats: hex for `HexEntryId`, base64 otherwise. An id that
/// decodes in neither is passed through (clients probe with dummies).
fn convert(id: &str, from: &str, to: &str) -> String {
    let bytes = if from == "HexEntryId" {
        (0..id.len() / 2)
            .map(|i| u8::from_str_radix(id.get(2 * i..2 * i + 2).unwrap_or(""), 16))
            .collect::<Result<Vec<u8>, _>>()
            .ok()
    } else {
        STANDARD.decode(id).ok()
    };
    match (bytes, to) {
        (Some(b), "HexEntryId") => hex::encode_upper(&b),
        (Some(b), _) => STANDARD.encode(b),
        (None, _) => id.to_owned(),
    }
}

pub(super) fn convert_id(ctx: &OpContext, op: &Element) -> OpResult {
    let dest = op.attr("DestinationFormat").unwrap_or("");
    if !FORMATS.contains(&dest) {
        return Err(super::common::bad_attr(op, "DestinationFormat", dest));
    }
    let sources: Vec<&Element> = required(op, M, "SourceIds")?
        .elements()
        .filter(|e| e.ns.as_deref() == Some(T))
        .collect();
    if sources.is_empty() {
        return Err(schema_fault(
            "The element 'SourceIds' has incomplete content. List of possible elements expected: 'AlternateId, AlternatePublicFolderId, AlternatePublicFolderItemId'.",
        ));
    }
    let messages: Vec<String> = sources
        .iter()
        .map(|src| {
            let r = (|| {
                if !src.is(T, "AlternateId") {
                    return Err(OpError::new(
                        "ErrorInvalidOperation",
                        "Only AlternateId is simulated.",
                    ));
                }
                let mailbox = src.attr("Mailbox").unwrap_or("");
                if !valid_smtp(mailbox) {
                    return Err(OpError::new(
                        "ErrorInvalidSmtpAddress",
                        "The SMTP address format is invalid.",
                    ));
                }
                let id = src.attr("Id").unwrap_or("");
                let from = src.attr("Format").unwrap_or("EwsId");
                // DavMail learns the user's address from this attribute: answer with the
                // acting mailbox, as Exchange does for the authenticated user.
                Ok(format!(
                    "<m:AlternateId xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"t:AlternateIdType\" Format=\"{dest}\" Id=\"{}\" Mailbox=\"{}\"/>",
                    escape(&convert(id, from, dest)),
                    escape(&ctx.acting.smtp)
                ))
            })();
            message("ConvertId", r)
        })
        .collect();
    Ok(response("ConvertId", &messages))
}

fn matches(m: &DirMailbox, entry: &str) -> bool {
    let e = entry.to_lowercase();
    let starts = |s: &str| s.to_lowercase().starts_with(&e);
    starts(&m.smtp)
        || m.aliases.iter().any(|a| starts(a))
        || starts(&m.display_name)
        || m.display_name.split_whitespace().any(starts)
}

fn resolution(m: &DirMailbox, full: bool) -> String {
    let contact = if full {
        format!(
            "<t:Contact><t:DisplayName>{}</t:DisplayName><t:EmailAddresses><t:Entry Key=\"EmailAddress1\">SMTP:{}</t:Entry></t:EmailAddresses><t:ContactSource>ActiveDirectory</t:ContactSource></t:Contact>",
            escape(&m.display_name),
            escape(&m.smtp)
        )
    } else {
        String::new()
    };
    format!(
        "<t:Resolution><t:Mailbox><t:Name>{}</t:Name><t:EmailAddress>{}</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType><t:MailboxType>Mailbox</t:MailboxType></t:Mailbox>{contact}</t:Resolution>",
        escape(&m.display_name),
        escape(&m.smtp)
    )
}

pub(super) fn resolve_names(ctx: &OpContext, op: &Element) -> OpResult {
    let entry = required(op, M, "UnresolvedEntry")?.text();
    let full = op
        .attr("ReturnFullContactData")
        .and_then(parse_bool)
        .unwrap_or(false);
    let trimmed = entry
        .strip_prefix("SMTP:")
        .or_else(|| entry.strip_prefix("smtp:"))
        .unwrap_or(&entry)
        .trim();
    let found: Vec<&DirMailbox> = if trimmed.is_empty() {
        Vec::new()
    } else {
        // An exact address or name wins over prefix matches, as in the address book.
        let exact: Vec<&DirMailbox> = ctx
            .tenant
            .mailboxes
            .iter()
            .filter(|m| {
                m.smtp.eq_ignore_ascii_case(trimmed)
                    || m.aliases.iter().any(|a| a.eq_ignore_ascii_case(trimmed))
                    || m.display_name.eq_ignore_ascii_case(trimmed)
            })
            .collect();
        if exact.is_empty() {
            ctx.tenant
                .mailboxes
                .iter()
                .filter(|m| matches(m, trimmed))
                .take(100)
                .collect()
        } else {
            exact
        }
    };
    let set = |list: &[&DirMailbox]| {
        format!(
            "<m:ResolutionSet TotalItemsInView=\"{}\" IncludesLastItemInRange=\"true\">{}</m:ResolutionSet>",
            list.len(),
            list.iter().map(|m| resolution(m, full)).collect::<String>()
        )
    };
    let msg = match found.len() {
        0 => error(
            "ResolveNames",
            &OpError::new("ErrorNameResolutionNoResults", "No results were found."),
        ),
        1 => ok("ResolveNames", &set(&found)),
        _ => warning(
            "ResolveNames",
            &OpError::new(
                "ErrorNameResolutionMultipleResults",
                "Multiple results were found.",
            ),
            &set(&found),
        ),
    };
    Ok(response("ResolveNames", &[msg]))
}
