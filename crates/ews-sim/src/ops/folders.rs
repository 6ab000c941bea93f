//! GetFolder, FindFolder, SyncFolderHierarchy, CreateFolder and DeleteFolder.
//!
//! FindFolder restrictions are evaluated on the display name and the folder class (DavMail
//! finds a folder by name and lists only mail folders that way); SoftDeleted traversal finds
//! nothing, as deleted folders are not kept.

use std::sync::Arc;

use super::OpContext;
use super::common::{
    FolderTarget, M, OpError, OpResult, T, Which, bad_attr, decode_state, encode_state,
    folder_id_elements, folder_target, message, page, parse_view, required, resolve_folder,
    response, schema_fault,
};
use super::render::{folder_xml, parse_shape};
use super::restrict::matches_folder;
use crate::SimState;
use crate::mailbox::FolderKind;
use crate::xml::Element;

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
    let restriction = op.child(M, "Restriction");
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
                    let found: Vec<_> = match traversal {
                        "Shallow" => mbx.children(&fid).collect(),
                        "Deep" => mbx.descendants(&fid),
                        _ => Vec::new(),
                    };
                    let found: Vec<_> = found
                        .into_iter()
                        .filter(|f| restriction.is_none_or(|r| matches_folder(r, f)))
                        .collect();
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

/// The folder elements CreateFolder accepts, with the flavour each creates.
const FOLDER_ELEMENTS: &[(&str, FolderKind)] = &[
    ("Folder", FolderKind::Generic),
    ("CalendarFolder", FolderKind::Calendar),
    ("ContactsFolder", FolderKind::Contacts),
    ("TasksFolder", FolderKind::Tasks),
];

pub(super) fn create_folder(state: &Arc<SimState>, ctx: &OpContext, op: &Element) -> OpResult {
    let parent = folder_id_elements(required(op, M, "ParentFolderId")?)
        .first()
        .copied()
        .ok_or_else(|| {
            schema_fault(
                "The element 'ParentFolderId' has incomplete content. List of possible elements expected: 'FolderId, DistinguishedFolderId'.",
            )
        })?;
    let folders: Vec<&Element> = required(op, M, "Folders")?
        .elements()
        .filter(|e| e.ns.as_deref() == Some(T))
        .collect();
    if folders.is_empty() {
        return Err(schema_fault(
            "The element 'Folders' has incomplete content. List of possible elements expected: 'Folder, CalendarFolder, ContactsFolder, SearchFolder, TasksFolder'.",
        ));
    }
    let messages = state.mailboxes.with(|data| {
        folders
            .iter()
            .map(|el| {
                let r = (|| {
                    let kind = FOLDER_ELEMENTS
                        .iter()
                        .find(|(name, _)| *name == el.local)
                        .map(|(_, kind)| *kind)
                        .ok_or_else(|| {
                            OpError::invalid_request(format!(
                                "Creating a {} is not simulated.",
                                el.local
                            ))
                        })?;
                    let name = el.child(T, "DisplayName").map(Element::text);
                    let name = name
                        .map(|n| n.trim().to_owned())
                        .filter(|n| !n.is_empty())
                        .ok_or_else(|| {
                            OpError::new(
                                "ErrorInvalidFolderName",
                                "The folder name is not valid.",
                            )
                        })?;
                    let t = folder_target(ctx, parent)?;
                    let parent_id = resolve_folder(data, &t)?;
                    let mbx = data
                        .mailbox_ref(&t.mailbox)
                        .ok_or_else(OpError::folder_not_found)?;
                    // Exchange compares sibling names without regard to case.
                    if mbx
                        .children(&parent_id)
                        .any(|f| f.display_name.eq_ignore_ascii_case(&name))
                    {
                        return Err(OpError::new(
                            "ErrorFolderExists",
                            "A folder with the specified name already exists.",
                        ));
                    }
                    let class = el.child(T, "FolderClass").map(Element::text).or_else(|| {
                        (kind == FolderKind::Generic).then(|| "IPF.Note".to_owned())
                    });
                    let (id, ck) = data
                        .add_folder(&t.mailbox, &parent_id, &name, class, kind)
                        .ok_or_else(OpError::folder_not_found)?;
                    let el = kind.element();
                    Ok(format!(
                        "<m:Folders><t:{el}><t:FolderId Id=\"{id}\" ChangeKey=\"{ck}\"/></t:{el}></m:Folders>"
                    ))
                })();
                message("CreateFolder", r)
            })
            .collect::<Vec<_>>()
    });
    Ok(response("CreateFolder", &messages))
}

pub(super) fn delete_folder(state: &Arc<SimState>, ctx: &OpContext, op: &Element) -> OpResult {
    let kind = op.attr("DeleteType").unwrap_or("");
    if !matches!(kind, "HardDelete" | "SoftDelete" | "MoveToDeletedItems") {
        return Err(bad_attr(op, "DeleteType", kind));
    }
    let ids = folder_id_elements(required(op, M, "FolderIds")?);
    if ids.is_empty() {
        return Err(schema_fault(
            "The element 'FolderIds' has incomplete content. List of possible elements expected: 'FolderId, DistinguishedFolderId'.",
        ));
    }
    let messages = state.mailboxes.with(|data| {
        ids.iter()
            .map(|el| {
                let r = (|| {
                    let t = folder_target(ctx, el)?;
                    let fid = resolve_folder(data, &t)?;
                    let mbx = data
                        .mailbox_ref(&t.mailbox)
                        .ok_or_else(OpError::folder_not_found)?;
                    let folder = mbx.folder(&fid).ok_or_else(OpError::folder_not_found)?;
                    if folder.distinguished.is_some() {
                        return Err(OpError::new(
                            "ErrorDeleteDistinguishedFolder",
                            "Distinguished folders cannot be deleted.",
                        ));
                    }
                    let deleted = mbx.distinguished("deleteditems").map(str::to_owned);
                    let in_deleted = deleted
                        .as_deref()
                        .is_some_and(|d| mbx.descendants(d).iter().any(|f| f.id == fid));
                    match deleted {
                        Some(d) if kind == "MoveToDeletedItems" && !in_deleted => {
                            data.move_folder(&t.mailbox, &fid, &d)
                        }
                        // Soft-deleted folders go to Recoverable Items, which no client lists.
                        _ => data.remove_folder(&t.mailbox, &fid),
                    }
                    .ok_or_else(OpError::folder_not_found)?;
                    Ok(String::new())
                })();
                message("DeleteFolder", r)
            })
            .collect::<Vec<_>>()
    });
    Ok(response("DeleteFolder", &messages))
}
