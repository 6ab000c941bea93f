//! The typed model of the EWS requests the translator handles, read from the element tree.
//!
//! Every decision is taken on (namespace URI, local name); a scalar that appears twice, an
//! unknown disposition or a missing required element is refused as ambiguous
//! (`ErrorSchemaValidation`) rather than guessed. Operations not translated yet come back as
//! [`Operation::Untranslated`] so the caller can answer with a fault naming them.

use super::errors::EwsFailure;
use super::spool::SpoolData;
use super::xml::Element;
use crate::soap::{NS_MESSAGES, NS_SOAP, NS_TYPES};

const M: &str = NS_MESSAGES;
const T: &str = NS_TYPES;

/// A folder reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderRef {
    /// `t:DistinguishedFolderId Id=…` with an optional `t:Mailbox/t:EmailAddress`.
    Distinguished {
        /// The well-known name (`inbox`, `sentitems`, …).
        id: String,
        /// The mailbox named inside, if any.
        mailbox: Option<String>,
    },
    /// `t:FolderId Id=…`.
    Id {
        /// The EWS id.
        id: String,
    },
}

/// An item reference (`t:ItemId`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRef {
    /// The EWS id.
    pub id: String,
    /// The change key the client holds.
    pub change_key: Option<String>,
}

/// A recipient (`t:Mailbox`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// Display name.
    pub name: Option<String>,
    /// SMTP address.
    pub address: String,
}

/// A `t:FileAttachment` to create.
#[derive(Debug, Clone, PartialEq)]
pub struct FileAttachment {
    /// File name.
    pub name: String,
    /// MIME type.
    pub content_type: Option<String>,
    /// Content-ID for inline parts.
    pub content_id: Option<String>,
    /// Whether it is inline.
    pub is_inline: bool,
    /// The decoded content.
    pub content: SpoolData,
}

/// Body type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    /// `Text`.
    Text,
    /// `HTML`.
    Html,
}

/// A message to create.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MessageSpec {
    /// Subject.
    pub subject: Option<String>,
    /// Body and its type.
    pub body: Option<(BodyType, String)>,
    /// To.
    pub to: Vec<Recipient>,
    /// Cc.
    pub cc: Vec<Recipient>,
    /// Bcc.
    pub bcc: Vec<Recipient>,
    /// Reply-To.
    pub reply_to: Vec<Recipient>,
    /// From.
    pub from: Option<Recipient>,
    /// Sender.
    pub sender: Option<Recipient>,
    /// Importance (`Low`, `Normal`, `High`).
    pub importance: Option<String>,
    /// Read receipt.
    pub read_receipt: Option<bool>,
    /// Delivery receipt.
    pub delivery_receipt: Option<bool>,
    /// File attachments.
    pub attachments: Vec<FileAttachment>,
    /// `t:MimeContent`, decoded.
    pub mime: Option<SpoolData>,
}

/// `MessageDisposition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Save a draft.
    SaveOnly,
    /// Send without a copy.
    SendOnly,
    /// Send and save a copy.
    SendAndSaveCopy,
}

/// `ConvertId`'s `t:AlternateId`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlternateId {
    /// Source format.
    pub format: String,
    /// The id.
    pub id: String,
    /// The mailbox attribute.
    pub mailbox: String,
}

/// A translated operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// ConvertId.
    ConvertId {
        /// `DestinationFormat`.
        destination: String,
        /// The ids.
        ids: Vec<AlternateId>,
    },
    /// GetFolder.
    GetFolder {
        /// The folders.
        folders: Vec<FolderRef>,
    },
    /// CreateItem (messages).
    CreateItem {
        /// `MessageDisposition`.
        disposition: Disposition,
        /// `SavedItemFolderId`.
        saved_folder: Option<FolderRef>,
        /// The messages.
        items: Vec<MessageSpec>,
    },
    /// CreateAttachment.
    CreateAttachment {
        /// `ParentItemId`.
        parent: ItemRef,
        /// The file attachments.
        attachments: Vec<FileAttachment>,
    },
    /// SendItem.
    SendItem {
        /// `SaveItemToFolder`.
        save_copy: bool,
        /// `SavedItemFolderId`.
        saved_folder: Option<FolderRef>,
        /// The items.
        items: Vec<ItemRef>,
    },
    /// ResolveNames.
    ResolveNames {
        /// `UnresolvedEntry`.
        entry: String,
    },
    /// An operation (or a variant of one) not translated yet, with what is missing.
    Untranslated {
        /// The operation.
        operation: String,
        /// What is not translated.
        what: String,
    },
}

fn schema(text: impl Into<String>) -> EwsFailure {
    EwsFailure::fault("ErrorSchemaValidation", text)
}

fn untranslated(operation: &str, what: impl Into<String>) -> Operation {
    Operation::Untranslated {
        operation: operation.to_owned(),
        what: what.into(),
    }
}

/// At most one `{ns}local` child.
fn one<'a>(el: &'a Element, ns: &str, local: &str) -> Result<Option<&'a Element>, EwsFailure> {
    match el.count(ns, local) {
        0 => Ok(None),
        1 => Ok(el.child(ns, local)),
        _ => Err(schema(format!(
            "The request is ambiguous: {} has more than one {local}.",
            el.local
        ))),
    }
}

fn one_text(el: &Element, ns: &str, local: &str) -> Result<Option<String>, EwsFailure> {
    Ok(one(el, ns, local)?.map(|e| e.text().trim().to_owned()))
}

fn required<'a>(el: &'a Element, ns: &str, local: &str) -> Result<&'a Element, EwsFailure> {
    one(el, ns, local)?.ok_or_else(|| schema(format!("{} requires {local}.", el.local)))
}

fn boolean(text: &str) -> Result<bool, EwsFailure> {
    match text {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(schema(format!("'{other}' is not a boolean."))),
    }
}

/// The operation element (the single child of `s:Body`) of an envelope.
pub fn body_operation(root: &Element) -> Result<&Element, EwsFailure> {
    if !root.is(NS_SOAP, "Envelope") {
        return Err(schema(
            "The request is not a SOAP 1.1 envelope (the Graph backend reads SOAP 1.1 only).",
        ));
    }
    let body = required(root, NS_SOAP, "Body")?;
    let mut ops = body.elements();
    let op = ops
        .next()
        .ok_or_else(|| schema("The SOAP Body is empty."))?;
    if ops.next().is_some() {
        return Err(schema("The SOAP Body has more than one operation."));
    }
    Ok(op)
}

/// Reads the typed operation from the operation element.
pub fn parse_operation(op: &Element) -> Result<Operation, EwsFailure> {
    if op.ns.as_deref() != Some(M) {
        return Err(schema(format!(
            "{} is not in the EWS messages namespace.",
            op.local
        )));
    }
    match op.local.as_str() {
        "ConvertId" => convert_id(op),
        "GetFolder" => get_folder(op),
        "CreateItem" => create_item(op),
        "CreateAttachment" => create_attachment(op),
        "SendItem" => send_item(op),
        "ResolveNames" => resolve_names(op),
        other => Ok(untranslated(other, "the operation")),
    }
}

fn convert_id(op: &Element) -> Result<Operation, EwsFailure> {
    let destination = op
        .attr("DestinationFormat")
        .ok_or_else(|| schema("ConvertId requires DestinationFormat."))?
        .to_owned();
    let source = required(op, M, "SourceIds")?;
    let mut ids = Vec::new();
    for alt in source.elements() {
        if !alt.is(T, "AlternateId") {
            return Ok(untranslated(
                "ConvertId",
                format!("SourceIds/{}", alt.local),
            ));
        }
        ids.push(AlternateId {
            format: alt.attr("Format").unwrap_or_default().to_owned(),
            id: alt.attr("Id").unwrap_or_default().to_owned(),
            mailbox: alt.attr("Mailbox").unwrap_or_default().to_owned(),
        });
    }
    Ok(Operation::ConvertId { destination, ids })
}

/// Reads a `t:FolderId` / `t:DistinguishedFolderId`.
fn folder_ref(el: &Element) -> Result<FolderRef, EwsFailure> {
    let id = el
        .attr("Id")
        .ok_or_else(|| schema(format!("{} requires Id.", el.local)))?
        .to_owned();
    if el.is(T, "DistinguishedFolderId") {
        let mailbox = match one(el, T, "Mailbox")? {
            Some(mbx) => Some(
                one_text(mbx, T, "EmailAddress")?
                    .ok_or_else(|| schema("Mailbox requires EmailAddress."))?,
            ),
            None => None,
        };
        Ok(FolderRef::Distinguished { id, mailbox })
    } else if el.is(T, "FolderId") {
        Ok(FolderRef::Id { id })
    } else {
        Err(schema(format!("{} is not a folder id.", el.local)))
    }
}

/// The single folder id inside a `SavedItemFolderId`-like container.
fn single_folder(container: &Element) -> Result<FolderRef, EwsFailure> {
    let mut it = container.elements();
    let first = it
        .next()
        .ok_or_else(|| schema(format!("{} is empty.", container.local)))?;
    if it.next().is_some() {
        return Err(schema(format!(
            "{} names more than one folder.",
            container.local
        )));
    }
    folder_ref(first)
}

fn get_folder(op: &Element) -> Result<Operation, EwsFailure> {
    let ids = required(op, M, "FolderIds")?;
    let folders = ids
        .elements()
        .map(folder_ref)
        .collect::<Result<Vec<_>, _>>()?;
    if folders.is_empty() {
        return Err(schema("FolderIds is empty."));
    }
    Ok(Operation::GetFolder { folders })
}

fn recipient(mailbox: &Element) -> Result<Recipient, EwsFailure> {
    let address = one_text(mailbox, T, "EmailAddress")?
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            EwsFailure::item(
                "ErrorMissingEmailAddress",
                "A recipient has no EmailAddress.",
            )
        })?;
    if let Some(rt) = one_text(mailbox, T, "RoutingType")?
        && !rt.eq_ignore_ascii_case("SMTP")
    {
        return Err(EwsFailure::item(
            "ErrorInvalidRecipients",
            format!("Routing type {rt} is not translated; only SMTP addresses are."),
        ));
    }
    Ok(Recipient {
        name: one_text(mailbox, T, "Name")?.filter(|n| !n.is_empty()),
        address,
    })
}

fn recipients(el: &Element, local: &str) -> Result<Vec<Recipient>, EwsFailure> {
    match one(el, T, local)? {
        None => Ok(Vec::new()),
        Some(list) => list
            .elements()
            .map(|m| {
                if m.is(T, "Mailbox") {
                    recipient(m)
                } else {
                    Err(schema(format!("{local} may hold only Mailbox elements.")))
                }
            })
            .collect(),
    }
}

fn single_mailbox(el: &Element, local: &str) -> Result<Option<Recipient>, EwsFailure> {
    match one(el, T, local)? {
        None => Ok(None),
        Some(wrapper) => Ok(Some(recipient(required(wrapper, T, "Mailbox")?)?)),
    }
}

/// Reads `t:Attachments`; anything but `t:FileAttachment` is untranslated (`Err(Some(what))`).
fn file_attachments(list: &Element) -> Result<Result<Vec<FileAttachment>, String>, EwsFailure> {
    let mut out = Vec::new();
    for att in list.elements() {
        if !att.is(T, "FileAttachment") {
            return Ok(Err(format!("Attachments/{}", att.local)));
        }
        let content = required(att, T, "Content")?
            .spooled()
            .cloned()
            .ok_or_else(|| schema("FileAttachment Content is missing."))?;
        out.push(FileAttachment {
            name: one_text(att, T, "Name")?.unwrap_or_default(),
            content_type: one_text(att, T, "ContentType")?.filter(|c| !c.is_empty()),
            content_id: one_text(att, T, "ContentId")?.filter(|c| !c.is_empty()),
            is_inline: one_text(att, T, "IsInline")?
                .map(|b| boolean(&b))
                .transpose()?
                .unwrap_or(false),
            content,
        });
    }
    Ok(Ok(out))
}

/// Message children read by the translator; others are ignored (display-only or defaults).
fn message(el: &Element) -> Result<Result<MessageSpec, String>, EwsFailure> {
    if let Some(class) = one_text(el, T, "ItemClass")?
        && !class.eq_ignore_ascii_case("IPM.Note")
    {
        return Ok(Err(format!("ItemClass {class}")));
    }
    for refused in ["ExtendedProperty", "ReferenceItemId"] {
        if el.child(T, refused).is_some() {
            return Ok(Err(format!("Message/{refused}")));
        }
    }
    let body = match one(el, T, "Body")? {
        None => None,
        Some(b) => {
            let kind = match b.attr("BodyType") {
                Some("HTML") => BodyType::Html,
                Some("Text") | None => BodyType::Text,
                Some(other) => return Err(schema(format!("BodyType {other} is not valid."))),
            };
            Some((kind, b.text()))
        }
    };
    let attachments = match one(el, T, "Attachments")? {
        None => Vec::new(),
        Some(list) => match file_attachments(list)? {
            Ok(a) => a,
            Err(what) => return Ok(Err(what)),
        },
    };
    let mime = match one(el, T, "MimeContent")? {
        None => None,
        Some(m) => Some(
            m.spooled()
                .cloned()
                .ok_or_else(|| schema("MimeContent is missing."))?,
        ),
    };
    Ok(Ok(MessageSpec {
        subject: one(el, T, "Subject")?.map(|s| s.text()),
        body,
        to: recipients(el, "ToRecipients")?,
        cc: recipients(el, "CcRecipients")?,
        bcc: recipients(el, "BccRecipients")?,
        reply_to: recipients(el, "ReplyTo")?,
        from: single_mailbox(el, "From")?,
        sender: single_mailbox(el, "Sender")?,
        importance: one_text(el, T, "Importance")?,
        read_receipt: one_text(el, T, "IsReadReceiptRequested")?
            .map(|b| boolean(&b))
            .transpose()?,
        delivery_receipt: one_text(el, T, "IsDeliveryReceiptRequested")?
            .map(|b| boolean(&b))
            .transpose()?,
        attachments,
        mime,
    }))
}

fn create_item(op: &Element) -> Result<Operation, EwsFailure> {
    if let Some(items) = op.child(M, "Items")
        && let Some(other) = items.elements().find(|i| !i.is(T, "Message"))
    {
        return Ok(untranslated("CreateItem", format!("Items/{}", other.local)));
    }
    let disposition = match op.attr("MessageDisposition") {
        Some("SaveOnly") => Disposition::SaveOnly,
        Some("SendOnly") => Disposition::SendOnly,
        Some("SendAndSaveCopy") => Disposition::SendAndSaveCopy,
        // EWS requires it for messages.
        None => {
            return Err(EwsFailure::item(
                "ErrorMessageDispositionRequired",
                "MessageDisposition is required for messages.",
            ));
        }
        Some(other) => return Err(schema(format!("MessageDisposition {other} is not valid."))),
    };
    let saved_folder = one(op, M, "SavedItemFolderId")?
        .map(single_folder)
        .transpose()?;
    let items_el = required(op, M, "Items")?;
    let mut items = Vec::new();
    for item in items_el.elements() {
        if !item.is(T, "Message") {
            return Ok(untranslated("CreateItem", format!("Items/{}", item.local)));
        }
        match message(item)? {
            Ok(m) => items.push(m),
            Err(what) => return Ok(untranslated("CreateItem", what)),
        }
    }
    if items.is_empty() {
        return Err(schema("Items is empty."));
    }
    Ok(Operation::CreateItem {
        disposition,
        saved_folder,
        items,
    })
}

fn item_ref(el: &Element) -> Result<ItemRef, EwsFailure> {
    Ok(ItemRef {
        id: el
            .attr("Id")
            .ok_or_else(|| schema(format!("{} requires Id.", el.local)))?
            .to_owned(),
        change_key: el.attr("ChangeKey").map(str::to_owned),
    })
}

fn create_attachment(op: &Element) -> Result<Operation, EwsFailure> {
    let parent = item_ref(required(op, M, "ParentItemId")?)?;
    let list = required(op, M, "Attachments")?;
    match file_attachments(list)? {
        Ok(attachments) if !attachments.is_empty() => Ok(Operation::CreateAttachment {
            parent,
            attachments,
        }),
        Ok(_) => Err(schema("Attachments is empty.")),
        Err(what) => Ok(untranslated("CreateAttachment", what)),
    }
}

fn send_item(op: &Element) -> Result<Operation, EwsFailure> {
    let save_copy = boolean(
        op.attr("SaveItemToFolder")
            .ok_or_else(|| schema("SendItem requires SaveItemToFolder."))?,
    )?;
    let ids = required(op, M, "ItemIds")?;
    let mut items = Vec::new();
    for el in ids.elements() {
        if !el.is(T, "ItemId") {
            return Ok(untranslated("SendItem", format!("ItemIds/{}", el.local)));
        }
        items.push(item_ref(el)?);
    }
    if items.is_empty() {
        return Err(schema("ItemIds is empty."));
    }
    let saved_folder = one(op, M, "SavedItemFolderId")?
        .map(single_folder)
        .transpose()?;
    Ok(Operation::SendItem {
        save_copy,
        saved_folder,
        items,
    })
}

fn resolve_names(op: &Element) -> Result<Operation, EwsFailure> {
    let entry = one_text(op, M, "UnresolvedEntry")?
        .ok_or_else(|| schema("ResolveNames requires UnresolvedEntry."))?;
    Ok(Operation::ResolveNames { entry })
}
