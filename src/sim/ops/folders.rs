//! GetFolder, FindFolder and SyncFolderHierarchy.
//!
//! FindFolder restrictions are ignored (DavMail's 0x3613 filter only hides non-mail folders,
//! and listing them is harmless); SoftDeleted traversal finds nothing, as no folder is deleted.

use std::sync::Arc;

use super::OpContext;
use super::common::{
    FolderTarget, M, OpError, OpResult, Which, bad_attr, decode_state, encode_state,
    folder_id_elements, folder_target, message, page, parse_view, required, resolve_folder,
    response, schema_fault,
};
use super::render::{folder_xml, parse_shape};
use crate::sim::SimState;
use crate::sim::xml::Element;

pub(super) fn get_folder(state: &Arc<SimState>, ctx: &OpContext, op: &Element) -> OpResult {
    let shape = parse_shape(op, M, "FolderShape")?;
    let ids = folder_id_elements(required(op, M, "FolderIds")?);
    if ids.is_empty() {
        return Err(schema_fault(
            "The element 'FolderIds' has incomplete content. List of possible elements expected: 'FolderId, DistinguishedFolderId'.",
        ));
    }
    let messages = state.mailboxes.with(|data| {
        ids.iter()
            .map(|el| {
                let r = folder_target(ctx, el).and_then(|t| {
                    let fid = resolve_folder(data, &t)?;
                    let mbx = data
                        .mailbox_ref(&t.mailbox)
                        .ok_or_else(OpError::folder_not_found)?;
                    let f = mbx.folder(&fid).ok_or_else(OpError::folder_not_found)?;
                    Ok(format!(
                        "<m:Folders>{}</m:Folders>",
                        folder_xml(mbx, f, &shape)
                    ))
                });
                message("GetFolder", r)
            })
            .collect::<Vec<_>>()
    });
    Ok(response("GetFolder", &messages))
}

pub(super) fn find_folder(state: &Arc<SimState>, ctx: &OpContext, op: &Element) -> OpResult {
    let traversal = op.attr("Traversal").unwrap_or("");
    if !matches!(traversal, "Shallow" | "Deep" | "SoftDeleted") {
        return Err(bad_attr(op, "Traversal", traversal));
    }
    let shape = parse_shape(op, M, "FolderShape")?;
    let view = parse_view(op, "Folder")?;
    let parents = folder_id_elements(required(op, M, "ParentFolderIds")?);
    if parents.is_empty() {
        return Err(schema_fault(
            "The element 'ParentFolderIds' has incomplete content. List of possible elements expected: 'FolderId, DistinguishedFolderId'.",
        ));
    }
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
                    let found = match traversal {
                        "Shallow" => mbx.children(&fid).collect(),
                        "Deep" => mbx.descendants(&fid),
                        _ => Vec::new(),
                    };
                    let (start, end, attrs) = page(view, found.len());
                    let folders: String = found[start..end]
                        .iter()
                        .map(|f| folder_xml(mbx, f, &shape))
                        .collect();
                    Ok(format!(
                        "<m:RootFolder {attrs}><t:Folders>{folders}</t:Folders></m:RootFolder>"
                    ))
                });
                message("FindFolder", r)
            })
            .collect::<Vec<_>>()
    });
    Ok(response("FindFolder", &messages))
}

pub(super) fn sync_folder_hierarchy(
    state: &Arc<SimState>,
    ctx: &OpContext,
    op: &Element,
) -> OpResult {
    let shape = parse_shape(op, M, "FolderShape")?;
    let target = match op.child(M, "SyncFolderId") {
        Some(container) => match folder_id_elements(container).first() {
            Some(el) => folder_target(ctx, el),
            None => {
                return Err(schema_fault(
                    "The element 'SyncFolderId' has incomplete content.",
                ));
            }
        },
        None => Ok(FolderTarget {
            mailbox: ctx.acting.smtp.to_ascii_lowercase(),
            display: ctx.acting.display_name.clone(),
            which: Which::Distinguished("root".to_owned()),
        }),
    };
    let sync_state = op
        .child(M, "SyncState")
        .map(Element::text)
        .filter(|s| !s.is_empty());
    let msg = state.mailboxes.with(|data| {
        let r = target.and_then(|t| {
            let fid = resolve_folder(data, &t)?;
            let since = match &sync_state {
                Some(s) => decode_state("H", &fid, s)?,
                None => 0,
            };
            let mbx = data
                .mailbox_ref(&t.mailbox)
                .ok_or_else(OpError::folder_not_found)?;
            let changes: String = mbx
                .descendants(&fid)
                .into_iter()
                .filter(|f| f.created_seq > since)
                .map(|f| format!("<t:Create>{}</t:Create>", folder_xml(mbx, f, &shape)))
                .collect();
            Ok(format!(
                "<m:SyncState>{}</m:SyncState><m:IncludesLastFolderInRange>true</m:IncludesLastFolderInRange><m:Changes>{changes}</m:Changes>",
                encode_state("H", &fid, data.seq())
            ))
        });
        message("SyncFolderHierarchy", r)
    });
    Ok(response("SyncFolderHierarchy", &[msg]))
}
