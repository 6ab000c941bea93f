//! Item operations: FindItem, GetItem, CreateItem, UpdateItem, DeleteItem, MoveItem, CopyItem,
//! SendItem and SyncFolderItems, plus mail delivery inside the tenant.
//!
//! Only `t:Message` items are simulated. Sending delivers a copy into the inbox of every
//! recipient that is a mailbox of the acting tenant (raising NewMailEvent); other recipients
//! are accepted and dropped, as a relay would.

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use time::OffsetDateTime;

use super::OpContext;
use super::common::{
    FolderTarget, M, OpError, OpResult, T, Which, bad_attr, decode_state, encode_state,
    folder_id_elements, folder_target, item_id_elements, item_target, message, page, parse_bool,
    parse_time, parse_view, required, resolve_folder, response, schema_fault, t_text,
    tenant_mailbox,
};
use super::render::{item_xml, parse_shape, parse_tag};
use super::restrict;
use crate::SimState;
use crate::mailbox::{Address, Attachment, BodyType, Data, IdKind, Message, SyncChange, mime};
use crate::xml::Element;
use ews_gateway_core::soap::escape;

fn acting_address(ctx: &OpContext) -> Address {
    Address {
        name: ctx.acting.display_name.clone(),
        email: ctx.acting.smtp.clone(),
    }
}

fn acting_target(ctx: &OpContext, name: &str) -> FolderTarget {
    FolderTarget {
        mailbox: ctx.acting.smtp.to_ascii_lowercase(),
        display: ctx.acting.display_name.clone(),
        which: Which::Distinguished(name.to_owned()),
    }
}

/// The first folder id inside an optional container, or a default distinguished folder of
/// the acting mailbox.
fn folder_or_default(
    ctx: &OpContext,
    container: Option<&Element>,
    default: &str,
) -> Result<FolderTarget, OpError> {
    match container.and_then(|c| folder_id_elements(c).into_iter().next()) {
        Some(el) => folder_target(ctx, el),
        None => Ok(acting_target(ctx, default)),
    }
}

pub(super) fn find_item(state: &Arc<SimState>, ctx: &OpContext, op: &Element) -> OpResult {
    let traversal = op.attr("Traversal").unwrap_or("");
    if !matches!(traversal, "Shallow" | "Deep" | "SoftDeleted" | "Associated") {
        return Err(bad_attr(op, "Traversal", traversal));
    }
    let shape = parse_shape(op, M, "ItemShape")?;
    let view = parse_view(op, "Item")?;
    let parents = folder_id_elements(required(op, M, "ParentFolderIds")?);
    if parents.is_empty() {
        return Err(schema_fault(
            "The element 'ParentFolderIds' has incomplete content. List of possible elements expected: 'FolderId, DistinguishedFolderId'.",
        ));
    }
    let restriction = op.child(M, "Restriction");
    let sort = op.child(M, "SortOrder");
    let messages = state.mailboxes.with(|data| {
        parents
            .iter()
            .map(|el| {
                let r = view.clone().and_then(|view| {
                    let t = folder_target(ctx, el)?;
                    let fid = resolve_folder(data, &t)?;
                    let mbx = data
                        .mailbox_ref(&t.mailbox)
                        .ok_or_else(OpError::folder_not_found)?;
                    // Soft-deleted and associated items are not kept.
                    let mut found: Vec<_> = if matches!(traversal, "Shallow" | "Deep") {
                        mbx.items_in(&fid)
                            .filter(|i| restriction.is_none_or(|r| restrict::matches(r, i)))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    restrict::sort(&mut found, sort);
                    let (start, end, attrs) = page(view, found.len());
                    let items: String = found[start..end]
                        .iter()
                        .map(|i| item_xml(ctx, mbx, i, &shape, true))
                        .collect();
                    Ok(format!(
                        "<m:RootFolder {attrs}><t:Items>{items}</t:Items></m:RootFolder>"
                    ))
                });
                message("FindItem", r)
            })
            .collect::<Vec<_>>()
    });
    Ok(response("FindItem", &messages))
}

fn item_ids(op: &Element, container: &str) -> Result<Vec<Element>, super::OpOutcome> {
    let ids = item_id_elements(required(op, M, container)?);
    if ids.is_empty() {
        return Err(schema_fault(&format!(
            "The element '{container}' has incomplete content. List of possible elements expected: 'ItemId'."
        )));
    }
    Ok(ids.into_iter().cloned().collect())
}

pub(super) fn get_item(state: &Arc<SimState>, ctx: &OpContext, op: &Element) -> OpResult {
    let shape = parse_shape(op, M, "ItemShape")?;
    let ids = item_ids(op, "ItemIds")?;
    let messages = state.mailboxes.with(|data| {
        ids.iter()
            .map(|el| {
                let r = item_target(ctx, el, IdKind::Item).and_then(|t| {
                    let mbx = data
                        .mailbox_ref(&t.mailbox)
                        .ok_or_else(OpError::item_not_found)?;
                    let item = mbx.item(&t.id).ok_or_else(OpError::item_not_found)?;
                    Ok(format!(
                        "<m:Items>{}</m:Items>",
                        item_xml(ctx, mbx, item, &shape, false)
                    ))
                });
                message("GetItem", r)
            })
            .collect::<Vec<_>>()
    });
    Ok(response("GetItem", &messages))
}

fn parse_mailbox(ctx: &OpContext, el: &Element) -> Option<Address> {
    let mbx = if el.is(T, "Mailbox") {
        el
    } else {
        el.child(T, "Mailbox")?
    };
    let email = t_text(mbx, "EmailAddress").filter(|e| !e.is_empty())?;
    let name = t_text(mbx, "Name")
        .filter(|n| !n.is_empty())
        .or_else(|| tenant_mailbox(ctx, &email).map(|m| m.display_name.clone()))
        .unwrap_or_else(|| email.clone());
    Some(Address { name, email })
}

fn parse_mailboxes(ctx: &OpContext, el: &Element) -> Vec<Address> {
    el.children_named(T, "Mailbox")
        .filter_map(|m| parse_mailbox(ctx, m))
        .collect()
}

fn decode_b64(text: &str) -> Option<Vec<u8>> {
    let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(clean).ok()
}

/// A file attachment from a request's `t:FileAttachment`.
pub(super) fn parse_file_attachment(el: &Element) -> Result<Attachment, OpError> {
    let content = t_text(el, "Content")
        .map(|c| decode_b64(&c))
        .unwrap_or(Some(Vec::new()))
        .ok_or_else(|| OpError::invalid_request("The attachment content is not valid base64."))?;
    Ok(Attachment {
        id: String::new(),
        name: t_text(el, "Name").unwrap_or_default(),
        content_type: t_text(el, "ContentType")
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "application/octet-stream".to_owned()),
        content_id: t_text(el, "ContentId").filter(|c| !c.is_empty()),
        is_inline: t_text(el, "IsInline").and_then(|b| parse_bool(&b)) == Some(true),
        content,
        modified: OffsetDateTime::now_utc(),
    })
}

/// Applies the property elements of a request's `t:Message` to `msg`. `append` adds to
/// multi-valued properties instead of replacing them (AppendToItemField).
fn apply_fields(
    ctx: &OpContext,
    msg: &mut Message,
    el: &Element,
    append: bool,
) -> Result<(), OpError> {
    if let Some(mc) = el.child(T, "MimeContent") {
        let raw = decode_b64(&mc.text()).ok_or_else(|| {
            OpError::new(
                "ErrorMimeContentConversionFailed",
                "The MIME content is not valid base64.",
            )
        })?;
        let p = mime::parse(&raw);
        msg.subject = p.subject;
        msg.from = p.from;
        msg.sender = msg.from.clone();
        msg.to = p.to;
        msg.cc = p.cc;
        msg.bcc = p.bcc;
        msg.sent = p.date;
        msg.internet_message_id = p.message_id.unwrap_or_default();
        if let Some((body, kind)) = p.body {
            msg.body = body;
            msg.body_type = kind;
        }
        msg.attachments = p.attachments;
        msg.mime = Some(raw);
    }
    for child in el.elements().filter(|e| e.ns.as_deref() == Some(T)) {
        let text = child.text();
        match child.local.as_str() {
            "ItemClass" => msg.item_class = text,
            "Subject" => {
                msg.subject = text;
                msg.mime = None;
            }
            "Body" => {
                msg.body_type = if child.attr("BodyType") == Some("HTML") {
                    BodyType::Html
                } else {
                    BodyType::Text
                };
                if append {
                    msg.body.push_str(&text);
                } else {
                    msg.body = text;
                }
                msg.mime = None;
            }
            "Importance" => msg.importance = text,
            "Categories" => {
                let values = child.children_named(T, "String").map(Element::text);
                if !append {
                    msg.categories.clear();
                }
                msg.categories.extend(values);
            }
            "ToRecipients" | "CcRecipients" | "BccRecipients" => {
                let list = parse_mailboxes(ctx, child);
                let target = match child.local.as_str() {
                    "ToRecipients" => &mut msg.to,
                    "CcRecipients" => &mut msg.cc,
                    _ => &mut msg.bcc,
                };
                if !append {
                    target.clear();
                }
                target.extend(list);
                msg.mime = None;
            }
            "From" => {
                msg.from = parse_mailbox(ctx, child);
                msg.mime = None;
            }
            "Sender" => msg.sender = parse_mailbox(ctx, child),
            "IsRead" => {
                if let Some(b) = parse_bool(&text) {
                    msg.is_read = b;
                }
            }
            "InternetMessageId" => msg.internet_message_id = text,
            "DateTimeSent" => msg.sent = parse_time(&text).or(msg.sent),
            "ExtendedProperty" => {
                let tag = child
                    .child(T, "ExtendedFieldURI")
                    .and_then(|u| u.attr("PropertyTag"))
                    .and_then(parse_tag);
                let value = t_text(child, "Value").unwrap_or_default();
                match tag {
                    // PR_MESSAGE_FLAGS: DavMail marks appended mail read / not draft with it.
                    Some(0x0e07) => {
                        if let Ok(flags) = value.parse::<u32>() {
                            msg.is_read = flags & 0x1 != 0;
                            msg.is_draft = flags & 0x8 != 0;
                        }
                    }
                    // PR_MESSAGE_DELIVERY_TIME: the IMAP internal date of an APPEND.
                    Some(0x0e06) => {
                        if let Some(t) = parse_time(&value) {
                            msg.received = t;
                        }
                    }
                    _ => {}
                }
            }
            "Attachments" => {
                for a in child.children_named(T, "FileAttachment") {
                    msg.attachments.push(parse_file_attachment(a)?);
                }
                msg.mime = None;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Fills what a submission sets and checks send-as rights.
fn prepare_send(ctx: &OpContext, msg: &mut Message) -> Result<(), OpError> {
    match &msg.from {
        None => msg.from = Some(acting_address(ctx)),
        Some(from) => {
            let allowed = from.email.eq_ignore_ascii_case(&ctx.acting.smtp)
                || tenant_mailbox(ctx, &from.email)
                    .is_some_and(|m| m.grants_access_to(&ctx.acting.smtp));
            if !allowed {
                return Err(OpError::new(
                    "ErrorSendAsDenied",
                    "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account.",
                ));
            }
        }
    }
    if msg.to.is_empty() && msg.cc.is_empty() && msg.bcc.is_empty() {
        return Err(OpError::new(
            "ErrorInvalidRecipients",
            "At least one recipient is required, but none were found.",
        ));
    }
    let now = OffsetDateTime::now_utc();
    msg.sender = msg.from.clone();
    msg.sent = Some(now);
    msg.received = now;
    msg.is_draft = false;
    if msg.internet_message_id.is_empty() {
        let domain = ctx
            .acting
            .smtp
            .rsplit_once('@')
            .map(|(_, d)| d.to_owned())
            .unwrap_or_default();
        msg.internet_message_id = format!("<{}@{domain}>", uuid::Uuid::new_v4().simple());
    }
    Ok(())
}

/// Delivers a copy into the inbox of each recipient that is a mailbox of the tenant.
fn deliver(data: &mut Data, ctx: &OpContext, msg: &Message) {
    let mut seen = HashSet::new();
    for a in msg.to.iter().chain(&msg.cc).chain(&msg.bcc) {
        let Some(mbx) = tenant_mailbox(ctx, &a.email) else {
            continue;
        };
        let key = mbx.smtp.to_ascii_lowercase();
        if !seen.insert(key.clone()) {
            continue;
        }
        data.ensure_mailbox(&key, &mbx.display_name);
        let Some(inbox) = data
            .mailbox_ref(&key)
            .and_then(|m| m.distinguished("inbox"))
            .map(str::to_owned)
        else {
            continue;
        };
        let mut copy = msg.clone();
        copy.is_read = false;
        copy.is_draft = false;
        copy.bcc.clear();
        data.insert_item(&key, &inbox, copy, true);
    }
}

fn id_only_message(id: &str, ck: &str) -> String {
    format!(
        "<t:Message><t:ItemId Id=\"{}\" ChangeKey=\"{}\"/></t:Message>",
        escape(id),
        escape(ck)
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    SaveOnly,
    SendOnly,
    SendAndSaveCopy,
}

fn disposition(op: &Element) -> Result<Option<Disposition>, super::OpOutcome> {
    match op.attr("MessageDisposition") {
        None => Ok(None),
        Some("SaveOnly") => Ok(Some(Disposition::SaveOnly)),
        Some("SendOnly") => Ok(Some(Disposition::SendOnly)),
        Some("SendAndSaveCopy") => Ok(Some(Disposition::SendAndSaveCopy)),
        Some(other) => Err(bad_attr(op, "MessageDisposition", other)),
    }
}

pub(super) fn create_item(state: &Arc<SimState>, ctx: &OpContext, op: &Element) -> OpResult {
    let disposition = disposition(op)?;
    let items = required(op, M, "Items")?;
    let saved = op.child(M, "SavedItemFolderId");
    let messages = state.mailboxes.with(|data| {
        items
            .elements()
            .map(|el| {
                let r = (|| {
                    if !el.is(T, "Message") {
                        return Err(OpError::new(
                            "ErrorInvalidOperation",
                            format!("Creating {} items is not simulated.", el.local),
                        ));
                    }
                    let disposition = disposition.ok_or_else(|| {
                        OpError::new(
                            "ErrorMessageDispositionRequired",
                            "MessageDisposition attribute is required.",
                        )
                    })?;
                    let mut msg = Message::new(OffsetDateTime::now_utc());
                    // Exchange saves new messages as drafts unless PR_MESSAGE_FLAGS says otherwise.
                    msg.is_draft = true;
                    apply_fields(ctx, &mut msg, el, false)?;
                    match disposition {
                        Disposition::SaveOnly => {
                            let t = folder_or_default(ctx, saved, "drafts")?;
                            let fid = resolve_folder(data, &t)?;
                            let (id, ck) = data.insert_item(&t.mailbox, &fid, msg, false);
                            Ok(format!("<m:Items>{}</m:Items>", id_only_message(&id, &ck)))
                        }
                        Disposition::SendOnly | Disposition::SendAndSaveCopy => {
                            let copy_to = if disposition == Disposition::SendAndSaveCopy {
                                let t = folder_or_default(ctx, saved, "sentitems")?;
                                Some((resolve_folder(data, &t)?, t.mailbox))
                            } else {
                                None
                            };
                            prepare_send(ctx, &mut msg)?;
                            deliver(data, ctx, &msg);
                            if let Some((fid, mailbox)) = copy_to {
                                let mut copy = msg;
                                copy.is_read = true;
                                data.insert_item(&mailbox, &fid, copy, false);
                            }
                            Ok("<m:Items/>".to_owned())
                        }
                    }
                })();
                message("CreateItem", r)
            })
            .collect::<Vec<_>>()
    });
    if messages.is_empty() {
        return Err(schema_fault(
            "The element 'Items' has incomplete content. List of possible elements expected: 'Item, Message, CalendarItem, Contact, ...'.",
        ));
    }
    Ok(response("CreateItem", &messages))
}

/// Sends a stored draft: delivers it, then moves it to `saved` (or sentitems of its mailbox)
/// or removes it.
fn send_stored(
    data: &mut Data,
    ctx: &OpContext,
    mailbox: &str,
    id: &str,
    save: Option<Option<&FolderTarget>>,
) -> Result<(), OpError> {
    let mut msg = data
        .mailbox_ref(mailbox)
        .and_then(|m| m.item(id))
        .ok_or_else(OpError::item_not_found)?
        .msg
        .clone();
    let target = match save {
        Some(Some(t)) => Some(resolve_folder(data, t).map(|f| (f, t.mailbox.clone()))?),
        Some(None) => {
            let sent = data
                .mailbox_ref(mailbox)
                .and_then(|m| m.distinguished("sentitems"))
                .map(str::to_owned)
                .ok_or_else(OpError::folder_not_found)?;
            Some((sent, mailbox.to_owned()))
        }
        None => None,
    };
    prepare_send(ctx, &mut msg)?;
    deliver(data, ctx, &msg);
    match target {
        Some((fid, target_mailbox)) if target_mailbox == mailbox => {
            msg.is_read = true;
            let new_id = data
                .move_item(mailbox, id, &fid)
                .map(|(i, _)| i)
                .ok_or_else(OpError::item_not_found)?;
            data.update_item(mailbox, &new_id, |m| *m = msg);
        }
        Some((fid, target_mailbox)) => {
            msg.is_read = true;
            data.remove_item(mailbox, id);
            data.insert_item(&target_mailbox, &fid, msg, false);
        }
        None => {
            data.remove_item(mailbox, id);
        }
    }
    Ok(())
}

pub(super) fn send_item(state: &Arc<SimState>, ctx: &OpContext, op: &Element) -> OpResult {
    let save_text = op.attr("SaveItemToFolder").unwrap_or("");
    let Some(save) = parse_bool(save_text) else {
        return Err(bad_attr(op, "SaveItemToFolder", save_text));
    };
    let ids = item_ids(op, "ItemIds")?;
    let saved = op
        .child(M, "SavedItemFolderId")
        .and_then(|c| folder_id_elements(c).into_iter().next());
    let messages = state.mailboxes.with(|data| {
        ids.iter()
            .map(|el| {
                let r = (|| {
                    let t = item_target(ctx, el, IdKind::Item)?;
                    let saved_target = saved.map(|s| folder_target(ctx, s)).transpose()?;
                    let save = save.then_some(saved_target.as_ref());
                    send_stored(data, ctx, &t.mailbox, &t.id, save)?;
                    Ok(String::new())
                })();
                message("SendItem", r)
            })
            .collect::<Vec<_>>()
    });
    Ok(response("SendItem", &messages))
}

pub(super) fn update_item(state: &Arc<SimState>, ctx: &OpContext, op: &Element) -> OpResult {
    let conflict = op.attr("ConflictResolution").unwrap_or("AutoResolve");
    if !matches!(
        conflict,
        "NeverOverwrite" | "AutoResolve" | "AlwaysOverwrite"
    ) {
        return Err(bad_attr(op, "ConflictResolution", conflict));
    }
    let disposition = disposition(op)?;
    let changes: Vec<Element> = required(op, M, "ItemChanges")?
        .children_named(T, "ItemChange")
        .cloned()
        .collect();
    let saved = op
        .child(M, "SavedItemFolderId")
        .and_then(|c| folder_id_elements(c).into_iter().next());
    let messages = state.mailboxes.with(|data| {
        changes
            .iter()
            .map(|change| {
                let r = (|| {
                    let id_el = change
                        .child(T, "ItemId")
                        .ok_or_else(OpError::malformed)?;
                    let t = item_target(ctx, id_el, IdKind::Item)?;
                    let item = data
                        .mailbox_ref(&t.mailbox)
                        .and_then(|m| m.item(&t.id))
                        .ok_or_else(OpError::item_not_found)?;
                    if conflict == "NeverOverwrite"
                        && t.change_key.as_deref().is_some_and(|ck| ck != item.change_key())
                    {
                        return Err(OpError::new(
                            "ErrorIrresolvableConflict",
                            "The send or update operation could not be performed because the change key passed in the request does not match the current change key for the item.",
                        ));
                    }
                    let mut updated = item.msg.clone();
                    if let Some(updates) = change.child(T, "Updates") {
                        for u in updates.elements() {
                            let target = u.child(T, "Message").or_else(|| u.child(T, "Item"));
                            match (u.local.as_str(), target) {
                                ("SetItemField", Some(m)) => apply_fields(ctx, &mut updated, m, false)?,
                                ("AppendToItemField", Some(m)) => apply_fields(ctx, &mut updated, m, true)?,
                                ("DeleteItemField", _) => delete_field(&mut updated, u),
                                _ => {}
                            }
                        }
                    }
                    let (id, ck) = data
                        .update_item(&t.mailbox, &t.id, |m| *m = updated)
                        .ok_or_else(OpError::item_not_found)?;
                    match disposition {
                        Some(Disposition::SendOnly) => {
                            send_stored(data, ctx, &t.mailbox, &id, None)?;
                            Ok("<m:Items/><m:ConflictResults><t:Count>0</t:Count></m:ConflictResults>".to_owned())
                        }
                        Some(Disposition::SendAndSaveCopy) => {
                            let saved_target = saved.map(|s| folder_target(ctx, s)).transpose()?;
                            send_stored(data, ctx, &t.mailbox, &id, Some(saved_target.as_ref()))?;
                            Ok("<m:Items/><m:ConflictResults><t:Count>0</t:Count></m:ConflictResults>".to_owned())
                        }
                        _ => Ok(format!(
                            "<m:Items>{}</m:Items><m:ConflictResults><t:Count>0</t:Count></m:ConflictResults>",
                            id_only_message(&id, &ck)
                        )),
                    }
                })();
                message("UpdateItem", r)
            })
            .collect::<Vec<_>>()
    });
    if messages.is_empty() {
        return Err(schema_fault(
            "The element 'ItemChanges' has incomplete content. List of possible elements expected: 'ItemChange'.",
        ));
    }
    Ok(response("UpdateItem", &messages))
}

fn delete_field(msg: &mut Message, u: &Element) {
    let Some(uri) = u.child(T, "FieldURI").and_then(|f| f.attr("FieldURI")) else {
        return;
    };
    match uri {
        "item:Categories" => msg.categories.clear(),
        "message:ToRecipients" => msg.to.clear(),
        "message:CcRecipients" => msg.cc.clear(),
        "message:BccRecipients" => msg.bcc.clear(),
        "item:Body" => msg.body.clear(),
        _ => {}
    }
    msg.mime = None;
}

pub(super) fn delete_item(state: &Arc<SimState>, ctx: &OpContext, op: &Element) -> OpResult {
    let kind = op.attr("DeleteType").unwrap_or("");
    if !matches!(kind, "HardDelete" | "SoftDelete" | "MoveToDeletedItems") {
        return Err(bad_attr(op, "DeleteType", kind));
    }
    let ids = item_ids(op, "ItemIds")?;
    let messages = state.mailboxes.with(|data| {
        ids.iter()
            .map(|el| {
                let r = (|| {
                    let t = item_target(ctx, el, IdKind::Item)?;
                    let mbx = data
                        .mailbox_ref(&t.mailbox)
                        .ok_or_else(OpError::item_not_found)?;
                    let item = mbx.item(&t.id).ok_or_else(OpError::item_not_found)?;
                    let deleted = mbx.distinguished("deleteditems").map(str::to_owned);
                    match deleted {
                        Some(d) if kind == "MoveToDeletedItems" && item.folder != d => {
                            data.move_item(&t.mailbox, &t.id, &d);
                        }
                        // Soft-deleted items go to Recoverable Items, which no client lists.
                        _ => {
                            data.remove_item(&t.mailbox, &t.id);
                        }
                    }
                    Ok(String::new())
                })();
                message("DeleteItem", r)
            })
            .collect::<Vec<_>>()
    });
    Ok(response("DeleteItem", &messages))
}

pub(super) fn move_or_copy(
    state: &Arc<SimState>,
    ctx: &OpContext,
    op: &Element,
    copy: bool,
) -> OpResult {
    let name = if copy { "CopyItem" } else { "MoveItem" };
    let to = required(op, M, "ToFolderId")?;
    let Some(to_el) = folder_id_elements(to).into_iter().next() else {
        return Err(schema_fault(
            "The element 'ToFolderId' has incomplete content. List of possible elements expected: 'FolderId, DistinguishedFolderId'.",
        ));
    };
    let ids = item_ids(op, "ItemIds")?;
    let return_ids = op
        .attr("ReturnNewItemIds")
        .and_then(parse_bool)
        .unwrap_or(true);
    let messages = state.mailboxes.with(|data| {
        ids.iter()
            .map(|el| {
                let r = (|| {
                    let dest = folder_target(ctx, to_el)?;
                    let fid = resolve_folder(data, &dest)?;
                    let t = item_target(ctx, el, IdKind::Item)?;
                    let msg = data
                        .mailbox_ref(&t.mailbox)
                        .and_then(|m| m.item(&t.id))
                        .ok_or_else(OpError::item_not_found)?
                        .msg
                        .clone();
                    let (id, ck) = if copy {
                        data.insert_item(&dest.mailbox, &fid, msg, false)
                    } else if dest.mailbox == t.mailbox {
                        data.move_item(&t.mailbox, &t.id, &fid)
                            .ok_or_else(OpError::item_not_found)?
                    } else {
                        data.remove_item(&t.mailbox, &t.id);
                        data.insert_item(&dest.mailbox, &fid, msg, false)
                    };
                    Ok(if return_ids {
                        format!("<m:Items>{}</m:Items>", id_only_message(&id, &ck))
                    } else {
                        "<m:Items/>".to_owned()
                    })
                })();
                message(name, r)
            })
            .collect::<Vec<_>>()
    });
    Ok(response(name, &messages))
}

pub(super) fn sync_folder_items(state: &Arc<SimState>, ctx: &OpContext, op: &Element) -> OpResult {
    let shape = parse_shape(op, M, "ItemShape")?;
    let folder_container = required(op, M, "SyncFolderId")?;
    let Some(folder_el) = folder_id_elements(folder_container).into_iter().next() else {
        return Err(schema_fault(
            "The element 'SyncFolderId' has incomplete content. List of possible elements expected: 'FolderId, DistinguishedFolderId'.",
        ));
    };
    let max_el = required(op, M, "MaxChangesReturned")?;
    let max = match max_el.text().parse::<i64>() {
        Ok(n) if (1..=512).contains(&n) => usize::try_from(n).unwrap_or(512),
        _ => {
            return Err(schema_fault(&format!(
                "The 'MaxChangesReturned' element is invalid - The value '{}' is invalid according to its datatype (1 to 512).",
                max_el.text()
            )));
        }
    };
    let sync_state = op
        .child(M, "SyncState")
        .map(Element::text)
        .filter(|s| !s.is_empty());
    let msg = state.mailboxes.with(|data| {
        let r = (|| {
            let t = folder_target(ctx, folder_el)?;
            let fid = resolve_folder(data, &t)?;
            let since = match &sync_state {
                Some(s) => decode_state("I", &fid, s)?,
                None => 0,
            };
            let mbx = data
                .mailbox_ref(&t.mailbox)
                .ok_or_else(OpError::folder_not_found)?;
            let (changes, next, complete) = data.sync_items(&t.mailbox, &fid, since, max);
            let mut out = String::new();
            for c in changes {
                match c {
                    SyncChange::Create(i) => out.push_str(&format!(
                        "<t:Create>{}</t:Create>",
                        item_xml(ctx, mbx, i, &shape, false)
                    )),
                    SyncChange::Update(i) => out.push_str(&format!(
                        "<t:Update>{}</t:Update>",
                        item_xml(ctx, mbx, i, &shape, false)
                    )),
                    SyncChange::Delete(id) => out.push_str(&format!(
                        "<t:Delete><t:ItemId Id=\"{}\"/></t:Delete>",
                        escape(&id)
                    )),
                }
            }
            Ok(format!(
                "<m:SyncState>{}</m:SyncState><m:IncludesLastItemInRange>{}</m:IncludesLastItemInRange><m:Changes>{out}</m:Changes>",
                encode_state("I", &fid, next),
                super::common::bool_text(complete)
            ))
        })();
        message("SyncFolderItems", r)
    });
    Ok(response("SyncFolderItems", &[msg]))
}
