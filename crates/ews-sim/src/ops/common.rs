//! Shared by all operations: response-message framing, errors, faults, id resolution and the
//! delegate rule (another mailbox is reachable only if it lists the acting mailbox as delegate).

use time::OffsetDateTime;

use super::{OpContext, OpOutcome};
use crate::directory::Mailbox as DirMailbox;
use crate::mailbox::{Data, IdKind, decode_id};
use crate::xml::Element;
use ews_gateway_core::soap::{NS_MESSAGES, NS_TYPES, escape};

/// Messages namespace.
pub(super) const M: &str = NS_MESSAGES;
/// Types namespace.
pub(super) const T: &str = NS_TYPES;

/// An operation's body, or a fault for the whole request.
pub(super) type OpResult = Result<String, OpOutcome>;

/// A per-item error, rendered as a ResponseMessage with `ResponseClass="Error"`.
#[derive(Debug, Clone)]
pub(super) struct OpError {
    pub code: &'static str,
    pub text: String,
    pub xml: Vec<(String, String)>,
}

impl OpError {
    pub(crate) fn new(code: &'static str, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
            xml: Vec::new(),
        }
    }

    pub(crate) fn item_not_found() -> Self {
        Self::new(
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        )
    }

    pub(crate) fn folder_not_found() -> Self {
        Self::new(
            "ErrorFolderNotFound",
            "The specified folder could not be found in the store.",
        )
    }

    pub(crate) fn malformed() -> Self {
        Self::new("ErrorInvalidIdMalformed", "Id is malformed.")
    }

    pub(crate) fn access_denied() -> Self {
        Self::new(
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        )
    }

    pub(crate) fn no_mailbox(address: &str) -> Self {
        let mut e = Self::new(
            "ErrorNonExistentMailbox",
            "The SMTP address has no mailbox associated with it.",
        );
        e.xml.push(("SmtpAddress".to_owned(), address.to_owned()));
        e
    }

    pub(crate) fn invalid_request(text: impl Into<String>) -> Self {
        Self::new("ErrorInvalidRequest", text)
    }
}

/// The `ErrorSchemaValidation` fault Exchange sends for requests its XSD refuses.
pub(super) fn schema_fault(violation: &str) -> OpOutcome {
    OpOutcome::Fault {
        code: "ErrorSchemaValidation".to_owned(),
        message: format!("The request failed schema validation: {violation}"),
        message_xml: vec![("Violation".to_owned(), violation.to_owned())],
    }
}

/// The child `{ns}local` of `el`, or the schema fault for its absence.
pub(super) fn required<'a>(
    el: &'a Element,
    ns: &str,
    local: &str,
) -> Result<&'a Element, OpOutcome> {
    el.child(ns, local).ok_or_else(|| {
        schema_fault(&format!(
            "The element '{}' in namespace '{}' has incomplete content. List of possible elements expected: '{local}' in namespace '{ns}'.",
            el.local,
            el.ns.as_deref().unwrap_or("")
        ))
    })
}

/// An attribute value outside its enumeration.
pub(super) fn bad_attr(el: &Element, attr: &str, value: &str) -> OpOutcome {
    schema_fault(&format!(
        "The '{attr}' attribute is invalid - The value '{value}' is invalid according to its datatype (element '{}').",
        el.local
    ))
}

/// `m:{op}Response` around its response messages.
pub(super) fn response(op: &str, messages: &[String]) -> String {
    format!(
        "<m:{op}Response xmlns:m=\"{M}\" xmlns:t=\"{T}\"><m:ResponseMessages>{}</m:ResponseMessages></m:{op}Response>",
        messages.concat()
    )
}

/// A successful response message with `inner` after the response code.
pub(super) fn ok(op: &str, inner: &str) -> String {
    format!(
        "<m:{op}ResponseMessage ResponseClass=\"Success\"><m:ResponseCode>NoError</m:ResponseCode>{inner}</m:{op}ResponseMessage>"
    )
}

fn with_class(op: &str, class: &str, e: &OpError, inner: &str) -> String {
    let mut xml = String::new();
    if !e.xml.is_empty() {
        xml.push_str("<m:MessageXml>");
        for (name, value) in &e.xml {
            xml.push_str(&format!(
                "<t:Value Name=\"{}\">{}</t:Value>",
                escape(name),
                escape(value)
            ));
        }
        xml.push_str("</m:MessageXml>");
    }
    format!(
        "<m:{op}ResponseMessage ResponseClass=\"{class}\"><m:MessageText>{}</m:MessageText><m:ResponseCode>{}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{xml}{inner}</m:{op}ResponseMessage>",
        escape(&e.text),
        e.code
    )
}

/// An error response message.
pub(super) fn error(op: &str, e: &OpError) -> String {
    with_class(op, "Error", e, "")
}

/// A warning response message carrying results anyway.
pub(super) fn warning(op: &str, e: &OpError, inner: &str) -> String {
    with_class(op, "Warning", e, inner)
}

/// `ok` or `error`.
pub(super) fn message(op: &str, r: Result<String, OpError>) -> String {
    match r {
        Ok(inner) => ok(op, &inner),
        Err(e) => error(op, &e),
    }
}

/// xs:dateTime the way Exchange writes it (UTC, seconds).
pub(super) fn fmt_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&fmt).unwrap_or_default()
}

/// Parses an xs:dateTime as clients send it.
pub(super) fn parse_time(text: &str) -> Option<OffsetDateTime> {
    let text = text.trim();
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .or_else(|| {
            // exchangelib and others may omit the zone: xs:dateTime allows it; treat as UTC.
            OffsetDateTime::parse(
                &format!("{text}Z"),
                &time::format_description::well_known::Rfc3339,
            )
            .ok()
        })
}

pub(super) fn bool_text(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

pub(super) fn parse_bool(text: &str) -> Option<bool> {
    match text.trim() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Text of the child `t:{local}`.
pub(super) fn t_text(el: &Element, local: &str) -> Option<String> {
    el.child(T, local).map(Element::text)
}

/// The tenant mailbox an address (primary or alias) names, if it belongs to the tenant.
pub(super) fn tenant_mailbox<'a>(ctx: &'a OpContext, address: &str) -> Option<&'a DirMailbox> {
    let address = address.trim();
    let address = address
        .strip_prefix("SMTP:")
        .or_else(|| address.strip_prefix("smtp:"))
        .unwrap_or(address);
    ctx.tenant.mailboxes.iter().find(|m| {
        m.smtp.eq_ignore_ascii_case(address)
            || m.aliases.iter().any(|a| a.eq_ignore_ascii_case(address))
    })
}

/// The tenant's mailbox whose Exchange GUID an id carries.
pub(super) fn mailbox_by_guid<'a>(ctx: &'a OpContext, guid: &str) -> Option<&'a DirMailbox> {
    ctx.tenant
        .mailboxes
        .iter()
        .find(|m| crate::mailbox::mailbox_guid(&m.smtp) == guid)
}

/// The delegate rule for a mailbox named by address.
pub(super) fn reachable_by_address<'a>(
    ctx: &'a OpContext,
    address: &str,
) -> Result<&'a DirMailbox, OpError> {
    let mbx = tenant_mailbox(ctx, address).ok_or_else(|| OpError::no_mailbox(address))?;
    if mbx.grants_access_to(&ctx.acting.smtp) {
        Ok(mbx)
    } else {
        Err(OpError::access_denied())
    }
}

/// A folder as a request names it, access already checked.
#[derive(Debug, Clone)]
pub(super) struct FolderTarget {
    pub mailbox: String,
    pub display: String,
    pub which: Which,
}

#[derive(Debug, Clone)]
pub(super) enum Which {
    Id(String),
    Distinguished(String),
}

/// Resolves a `t:FolderId` or `t:DistinguishedFolderId` element.
pub(super) fn folder_target(ctx: &OpContext, el: &Element) -> Result<FolderTarget, OpError> {
    match el.local.as_str() {
        "DistinguishedFolderId" => {
            let name = el.attr("Id").unwrap_or_default().to_owned();
            let mbx = match el
                .child(T, "Mailbox")
                .and_then(|m| m.child(T, "EmailAddress"))
            {
                Some(addr) => reachable_by_address(ctx, &addr.text())?,
                None => &ctx.acting,
            };
            Ok(FolderTarget {
                mailbox: mbx.smtp.to_ascii_lowercase(),
                display: mbx.display_name.clone(),
                which: Which::Distinguished(name),
            })
        }
        "FolderId" => {
            let id = el.attr("Id").unwrap_or_default();
            let decoded = decode_id(id).ok_or_else(OpError::malformed)?;
            if decoded.kind != IdKind::Folder {
                return Err(OpError::malformed());
            }
            let mbx = mailbox_by_guid(ctx, &decoded.guid).ok_or_else(OpError::folder_not_found)?;
            if !mbx.grants_access_to(&ctx.acting.smtp) {
                return Err(OpError::access_denied());
            }
            Ok(FolderTarget {
                mailbox: mbx.smtp.to_ascii_lowercase(),
                display: mbx.display_name.clone(),
                which: Which::Id(id.trim().to_owned()),
            })
        }
        _ => Err(OpError::folder_not_found()),
    }
}

/// The folder-id children of a container (`m:ParentFolderIds`, `m:FolderIds`, ...).
pub(super) fn folder_id_elements(container: &Element) -> Vec<&Element> {
    container
        .elements()
        .filter(|e| {
            e.ns.as_deref() == Some(T)
                && (e.local == "FolderId" || e.local == "DistinguishedFolderId")
        })
        .collect()
}

/// The store id of a target folder.
pub(super) fn resolve_folder(data: &mut Data, t: &FolderTarget) -> Result<String, OpError> {
    data.ensure_mailbox(&t.mailbox, &t.display);
    let mbx = data
        .mailbox_ref(&t.mailbox)
        .ok_or_else(OpError::folder_not_found)?;
    match &t.which {
        Which::Distinguished(name) => mbx.distinguished(name).map(str::to_owned),
        Which::Id(id) => mbx.folder(id).map(|f| f.id.clone()),
    }
    .ok_or_else(OpError::folder_not_found)
}

/// An item (or attachment) as a request names it, access already checked.
#[derive(Debug, Clone)]
pub(super) struct ItemTarget {
    pub mailbox: String,
    pub id: String,
    pub change_key: Option<String>,
}

/// Resolves the `Id` attribute of an `t:ItemId`-like element naming an object of `kind`.
pub(super) fn item_target(
    ctx: &OpContext,
    el: &Element,
    kind: IdKind,
) -> Result<ItemTarget, OpError> {
    let id = el.attr("Id").unwrap_or_default();
    let decoded = decode_id(id).ok_or_else(OpError::malformed)?;
    if decoded.kind != kind {
        return Err(OpError::malformed());
    }
    let mbx = mailbox_by_guid(ctx, &decoded.guid).ok_or_else(OpError::item_not_found)?;
    if !mbx.grants_access_to(&ctx.acting.smtp) {
        return Err(OpError::access_denied());
    }
    Ok(ItemTarget {
        mailbox: mbx.smtp.to_ascii_lowercase(),
        id: id.trim().to_owned(),
        change_key: el.attr("ChangeKey").map(str::to_owned),
    })
}

/// The `t:ItemId` children of a container.
pub(super) fn item_id_elements(container: &Element) -> Vec<&Element> {
    container
        .elements()
        .filter(|e| e.ns.as_deref() == Some(T))
        .collect()
}

/// A paging view of FindItem / FindFolder.
#[derive(Debug, Clone, Copy)]
pub(super) enum View {
    All,
    Indexed {
        max: Option<usize>,
        offset: usize,
        from_end: bool,
    },
    Fractional {
        max: Option<usize>,
        numerator: usize,
        denominator: usize,
    },
}

fn max_entries(el: &Element) -> Result<Option<usize>, OpError> {
    match el.attr("MaxEntriesReturned") {
        None => Ok(None),
        Some(text) => match text.trim().parse::<i64>() {
            Ok(n) if n > 0 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
            _ => Err(OpError::new(
                "ErrorInvalidPagingMaxRows",
                "The specified value for MaxEntriesReturned is invalid; it must be greater than zero.",
            )),
        },
    }
}

fn int_attr(el: &Element, name: &str) -> Result<i64, OpOutcome> {
    let text = el.attr(name).ok_or_else(|| {
        schema_fault(&format!(
            "The required attribute '{name}' is missing (element '{}').",
            el.local
        ))
    })?;
    text.trim().parse().map_err(|_| bad_attr(el, name, text))
}

/// Parses the paging view among `op`'s children (`{prefix}IndexedPage{kind}View` or
/// `{prefix}FractionalPage{kind}View`). Schema problems fault; bad values are per-message errors.
pub(super) fn parse_view(op: &Element, kind: &str) -> Result<Result<View, OpError>, OpOutcome> {
    if let Some(el) = op.child(M, &format!("IndexedPage{kind}View")) {
        let offset = int_attr(el, "Offset")?;
        let base = el.attr("BasePoint").unwrap_or("Beginning");
        if base != "Beginning" && base != "End" {
            return Err(bad_attr(el, "BasePoint", base));
        }
        let max = match max_entries(el) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        if offset < 0 {
            return Ok(Err(OpError::new(
                "ErrorInvalidIndexedPagingParameters",
                "The indexed paging parameters are invalid.",
            )));
        }
        return Ok(Ok(View::Indexed {
            max,
            offset: usize::try_from(offset).unwrap_or(usize::MAX),
            from_end: base == "End",
        }));
    }
    if let Some(el) = op.child(M, &format!("FractionalPage{kind}View")) {
        let numerator = int_attr(el, "Numerator")?;
        let denominator = int_attr(el, "Denominator")?;
        let max = match max_entries(el) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        if denominator <= 0 || numerator < 0 || numerator > denominator {
            return Ok(Err(OpError::new(
                "ErrorInvalidFractionalPagingParameters",
                "The fractional paging parameters are invalid.",
            )));
        }
        return Ok(Ok(View::Fractional {
            max,
            numerator: usize::try_from(numerator).unwrap_or(0),
            denominator: usize::try_from(denominator).unwrap_or(1),
        }));
    }
    Ok(Ok(View::All))
}

/// The window `[start, end)` of `total` results and the `RootFolder` paging attributes.
pub(super) fn page(view: View, total: usize) -> (usize, usize, String) {
    match view {
        View::All => (
            0,
            total,
            format!(
                "IndexedPagingOffset=\"{total}\" TotalItemsInView=\"{total}\" IncludesLastItemInRange=\"true\""
            ),
        ),
        View::Indexed {
            max,
            offset,
            from_end: false,
        } => {
            let start = offset.min(total);
            let end = max.map_or(total, |m| start.saturating_add(m).min(total));
            (
                start,
                end,
                format!(
                    "IndexedPagingOffset=\"{end}\" TotalItemsInView=\"{total}\" IncludesLastItemInRange=\"{}\"",
                    bool_text(end >= total)
                ),
            )
        }
        View::Indexed {
            max,
            offset,
            from_end: true,
        } => {
            let end = total.saturating_sub(offset);
            let start = max.map_or(0, |m| end.saturating_sub(m));
            (
                start,
                end,
                format!(
                    "IndexedPagingOffset=\"{}\" TotalItemsInView=\"{total}\" IncludesLastItemInRange=\"{}\"",
                    offset.saturating_add(end - start),
                    bool_text(start == 0)
                ),
            )
        }
        View::Fractional {
            max,
            numerator,
            denominator,
        } => {
            let start = (total.saturating_mul(numerator) / denominator.max(1)).min(total);
            let end = max.map_or(total, |m| start.saturating_add(m).min(total));
            (
                start,
                end,
                format!(
                    "NumeratorOffset=\"{end}\" AbsoluteDenominator=\"{total}\" TotalItemsInView=\"{total}\" IncludesLastItemInRange=\"{}\"",
                    bool_text(end >= total)
                ),
            )
        }
    }
}

/// An opaque sync state naming the folder and the change sequence it reflects.
pub(super) fn encode_state(kind: &str, folder: &str, seq: u64) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{kind}|{folder}|{seq}"))
}

/// Decodes a sync state for `folder`; `Err` if it is not one of ours or names another folder.
pub(super) fn decode_state(kind: &str, folder: &str, state: &str) -> Result<u64, OpError> {
    use base64::Engine as _;
    let invalid = || {
        OpError::new(
            "ErrorInvalidSyncStateData",
            "Synchronization state data is corrupt or otherwise invalid.",
        )
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(state.trim())
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.split('|');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(k), Some(f), Some(seq)) if k == kind && f == folder => {
            seq.parse().map_err(|_| invalid())
        }
        _ => Err(invalid()),
    }
}
