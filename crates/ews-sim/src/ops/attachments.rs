//! CreateAttachment, GetAttachment and DeleteAttachment (file attachments only).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::OpContext;
use super::common::{
    M, OpError, OpResult, T, bool_text, fmt_time, item_id_elements, item_target, message, required,
    response, schema_fault,
};
use super::items::parse_file_attachment;
use crate::SimState;
use crate::mailbox::IdKind;
use crate::xml::Element;
use ews_gateway_core::soap::escape;

pub(super) fn create_attachment(state: &Arc<SimState>, ctx: &OpContext, op: &Element) -> OpResult {
    let parent = required(op, M, "ParentItemId")?;
    let attachments: Vec<&Element> = required(op, M, "Attachments")?
        .elements()
        .filter(|e| e.ns.as_deref() == Some(T))
        .collect();
    if attachments.is_empty() {
        return Err(schema_fault(
            "The element 'Attachments' has incomplete content. List of possible elements expected: 'ItemAttachment, FileAttachment'.",
        ));
    }
    let messages = state.mailboxes.with(|data| {
        attachments
            .iter()
            .map(|el| {
                let r = (|| {
                    let t = item_target(ctx, parent, IdKind::Item)?;
                    if !el.is(T, "FileAttachment") {
                        return Err(OpError::new(
                            "ErrorInvalidOperation",
                            format!("Creating {} is not simulated.", el.local),
                        ));
                    }
                    let att = parse_file_attachment(el)?;
                    let (att_id, ck) = data
                        .add_attachment(&t.mailbox, &t.id, att)
                        .ok_or_else(OpError::item_not_found)?;
                    // The parent's id is stable within its folder; report it with the new key.
                    Ok(format!(
                        "<m:Attachments><t:FileAttachment><t:AttachmentId Id=\"{}\" RootItemId=\"{}\" RootItemChangeKey=\"{}\"/></t:FileAttachment></m:Attachments>",
                        escape(&att_id),
                        escape(&t.id),
                        escape(&ck)
                    ))
                })();
                message("CreateAttachment", r)
            })
            .collect::<Vec<_>>()
    });
    Ok(response("CreateAttachment", &messages))
}

fn attachment_ids(op: &Element) -> Result<Vec<Element>, super::OpOutcome> {
    let ids = item_id_elements(required(op, M, "AttachmentIds")?);
    if ids.is_empty() {
        return Err(schema_fault(
            "The element 'AttachmentIds' has incomplete content. List of possible elements expected: 'AttachmentId'.",
        ));
    }
    Ok(ids.into_iter().cloned().collect())
}

pub(super) fn get_attachment(state: &Arc<SimState>, ctx: &OpContext, op: &Element) -> OpResult {
    let ids = attachment_ids(op)?;
    let messages = state.mailboxes.with(|data| {
        ids.iter()
            .map(|el| {
                let r = (|| {
                    let t = item_target(ctx, el, IdKind::Attachment)?;
                    let (_, a) = data
                        .mailbox_ref(&t.mailbox)
                        .and_then(|m| m.attachment(&t.id))
                        .ok_or_else(OpError::item_not_found)?;
                    let content_id = a
                        .content_id
                        .as_ref()
                        .map(|c| format!("<t:ContentId>{}</t:ContentId>", escape(c)))
                        .unwrap_or_default();
                    Ok(format!(
                        "<m:Attachments><t:FileAttachment><t:AttachmentId Id=\"{}\"/><t:Name>{}</t:Name><t:ContentType>{}</t:ContentType>{content_id}<t:Size>{}</t:Size><t:LastModifiedTime>{}</t:LastModifiedTime><t:IsInline>{}</t:IsInline><t:IsContactPhoto>false</t:IsContactPhoto><t:Content>{}</t:Content></t:FileAttachment></m:Attachments>",
                        escape(&a.id),
                        escape(&a.name),
                        escape(&a.content_type),
                        a.content.len(),
                        fmt_time(a.modified),
                        bool_text(a.is_inline),
                        STANDARD.encode(&a.content)
                    ))
                })();
                message("GetAttachment", r)
            })
            .collect::<Vec<_>>()
    });
    Ok(response("GetAttachment", &messages))
}

pub(super) fn delete_attachment(state: &Arc<SimState>, ctx: &OpContext, op: &Element) -> OpResult {
    let ids = attachment_ids(op)?;
    let messages = state.mailboxes.with(|data| {
        ids.iter()
            .map(|el| {
                let r = (|| {
                    let t = item_target(ctx, el, IdKind::Attachment)?;
                    let (item_id, ck) = data
                        .remove_attachment(&t.mailbox, &t.id)
                        .ok_or_else(OpError::item_not_found)?;
                    Ok(format!(
                        "<m:RootItemId RootItemId=\"{}\" RootItemChangeKey=\"{}\"/>",
                        escape(&item_id),
                        escape(&ck)
                    ))
                })();
                message("DeleteAttachment", r)
            })
            .collect::<Vec<_>>()
    });
    Ok(response("DeleteAttachment", &messages))
}
