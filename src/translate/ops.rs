//! The translated operations: each reads its typed request, polices every mailbox reference,
//! calls Graph through the [`GraphPort`] and writes the EWS response.
//!
//! ConvertId, GetFolder, CreateItem (messages: SaveOnly, SendOnly, SendAndSaveCopy; JSON or
//! MimeContent; file attachments inline or through upload sessions), CreateAttachment, SendItem
//! and ResolveNames for the call's own address. Everything else is a fault naming what is not
//! translated. All checks that need no Graph call run before the first one; the only call that
//! may precede an id check is the read of the call's own Inbox id that teaches its mailbox GUID
//! (cached in [`MailboxFacts`]).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use uuid::Uuid;

use super::errors::{Channel, EwsFailure, graph_to_ews};
use super::ids;
use super::mime;
use super::police::{self, Scope};
use super::request::{
    AlternateId, BodyType, Disposition, FileAttachment, FolderRef, ItemRef, MessageSpec, Operation,
    Recipient,
};
use super::writer::EwsWriter;
use crate::graph::{
    GraphBody, GraphError, GraphPort, GraphRequest, GraphResponse, Method, UploadChunk,
};
use crate::soap;

/// Largest attachment sent inside a JSON request (Graph: "under 3 MB").
pub const INLINE_MAX: u64 = 3 * 1024 * 1024;
/// Largest request body the translator sends (Graph refuses over 4 MB, 4,194,304 bytes).
pub const REQUEST_BUDGET: usize = 4_194_304 - 64 * 1024;
/// Upload session chunk: 10 × 320 KiB (Graph: a multiple of 320 KiB, at most 4 MiB).
pub const UPLOAD_CHUNK: u64 = 10 * 320 * 1024;
/// Largest attachment Graph accepts through an upload session.
pub const UPLOAD_MAX: u64 = 150 * 1024 * 1024;
/// Largest MIME sent as it is (its base64 must stay under the request limit).
pub const MIME_DIRECT_MAX: u64 = (REQUEST_BUDGET as u64) / 4 * 3;

/// The folder change key the translator hands out: Graph folders have none, and clients only
/// echo it back.
const FOLDER_CHANGE_KEY: &str = "AQAAAA==";

/// Well-known folder names the translator passes to Graph (EWS and Graph spell them alike).
const WELL_KNOWN: &[&str] = &[
    "archive",
    "clutter",
    "conflicts",
    "conversationhistory",
    "deleteditems",
    "drafts",
    "inbox",
    "junkemail",
    "localfailures",
    "msgfolderroot",
    "outbox",
    "recoverableitemsdeletions",
    "scheduled",
    "searchfolders",
    "sentitems",
    "serverfailures",
    "syncissues",
];

/// Per-mailbox facts learnt from Graph: the mailbox GUID and the Sent Items id.
pub struct MailboxFacts {
    guids: moka::future::Cache<String, Uuid>,
    sent_items: moka::future::Cache<String, String>,
}

impl Default for MailboxFacts {
    fn default() -> Self {
        Self {
            guids: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            sent_items: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }
}

/// What a translation produced, for the HTTP answer, metrics and the audit line.
#[derive(Debug)]
pub struct Translated {
    /// HTTP status: 200, or 500 for a fault.
    pub status: u16,
    /// The SOAP document.
    pub body: Vec<u8>,
    /// `Retry-After` for `ErrorServerBusy`.
    pub retry_after: Option<Duration>,
    /// The EWS operation.
    pub operation: String,
    /// Graph calls made (the amplification of this EWS call).
    pub graph_calls: u32,
    /// Graph 429 answers seen.
    pub throttled: u32,
    /// Whether the operation (or a part of it) is not translated.
    pub untranslated: Option<String>,
    /// The fault code, if the answer is a fault.
    pub fault: Option<&'static str>,
}

/// The port, bound to the call's mailbox and counting calls.
struct Graph<'a, P> {
    port: &'a P,
    mailbox: &'a str,
    calls: AtomicU32,
    throttled: AtomicU32,
}

impl<P: GraphPort> Graph<'_, P> {
    fn count(&self, r: &Result<GraphResponse, GraphError>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Err(GraphError::Api { status: 429, .. }) = r {
            self.throttled.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn call(&self, req: GraphRequest) -> Result<GraphResponse, EwsFailure> {
        let r = self.port.call(self.mailbox, req).await;
        self.count(&r);
        r.map_err(|e| graph_to_ews(&e))
    }

    async fn upload(&self, url: &str, chunk: UploadChunk) -> Result<GraphResponse, EwsFailure> {
        let r = self.port.upload(self.mailbox, url, chunk).await;
        self.count(&r);
        r.map_err(|e| graph_to_ews(&e))
    }
}

fn json_str<'v>(v: &'v Option<Value>, key: &str) -> Option<&'v str> {
    v.as_ref().and_then(|j| j.get(key)).and_then(Value::as_str)
}

fn bad_reply(what: &str) -> EwsFailure {
    EwsFailure::fault(
        "ErrorInternalServerError",
        format!("ews-gateway: Microsoft Graph answered {what} without the expected fields."),
    )
}

impl MailboxFacts {
    async fn guid<P: GraphPort>(&self, g: &Graph<'_, P>) -> Result<Uuid, EwsFailure> {
        let key = g.mailbox.to_ascii_lowercase();
        self.guids
            .try_get_with(key, async {
                let r = g
                    .call(GraphRequest::get("/mailFolders/inbox?$select=id"))
                    .await?;
                let id = json_str(&r.json, "id").ok_or_else(|| bad_reply("the Inbox"))?;
                ids::guid_of_rest(id).map_err(|_| bad_reply("an Inbox id that does not parse"))
            })
            .await
            .map_err(|e| (*e).clone())
    }

    async fn sent_items<P: GraphPort>(&self, g: &Graph<'_, P>) -> Result<String, EwsFailure> {
        let key = g.mailbox.to_ascii_lowercase();
        self.sent_items
            .try_get_with(key, async {
                let r = g
                    .call(GraphRequest::get("/mailFolders/sentitems?$select=id"))
                    .await?;
                json_str(&r.json, "id")
                    .map(ids::rest_to_ews)
                    .ok_or_else(|| bad_reply("Sent Items"))
            })
            .await
            .map_err(|e| (*e).clone())
    }
}

fn fault_doc(f: &EwsFailure) -> Vec<u8> {
    let backoff = f.backoff.map(|d| d.as_millis().to_string());
    let xml: Vec<(&str, &str)> = match &backoff {
        Some(ms) => vec![("BackOffMilliseconds", ms.as_str())],
        None => Vec::new(),
    };
    soap::fault_envelope(f.code, &f.message, &xml).into_bytes()
}

/// Translates one parsed request for `scope` through `port`.
pub async fn translate<P: GraphPort>(
    port: &P,
    facts: &MailboxFacts,
    scope: Scope<'_>,
    operation: &str,
    parsed: Result<Operation, EwsFailure>,
) -> Translated {
    let g = Graph {
        port,
        mailbox: scope.mailbox,
        calls: AtomicU32::new(0),
        throttled: AtomicU32::new(0),
    };
    let mut untranslated = None;
    let result = match parsed {
        Err(f) if f.channel == Channel::PerItem => Ok(single_failure(operation, &f)),
        Err(f) => Err(f),
        Ok(Operation::Untranslated { operation, what }) => {
            let text = if what == "the operation" {
                format!(
                    "ews-gateway: the Microsoft Graph backend does not translate {operation} yet."
                )
            } else {
                format!(
                    "ews-gateway: the Microsoft Graph backend does not translate {what} in {operation} yet."
                )
            };
            untranslated = Some(what);
            Err(EwsFailure::fault("ErrorInvalidOperation", text))
        }
        Ok(Operation::ConvertId { destination, ids }) => Ok(convert_id(&scope, &destination, &ids)),
        Ok(Operation::GetFolder { folders }) => get_folder(&g, facts, &scope, &folders).await,
        Ok(Operation::CreateItem {
            disposition,
            saved_folder,
            items,
        }) => {
            create_item(
                &g,
                facts,
                &scope,
                disposition,
                saved_folder.as_ref(),
                &items,
            )
            .await
        }
        Ok(Operation::CreateAttachment {
            parent,
            attachments,
        }) => create_attachment(&g, facts, &scope, &parent, &attachments).await,
        Ok(Operation::SendItem {
            save_copy,
            saved_folder,
            items,
        }) => send_item(&g, facts, &scope, save_copy, saved_folder.as_ref(), &items).await,
        Ok(Operation::ResolveNames { entry }) => resolve_names(&g, &scope, &entry).await,
    };
    let (status, body, retry_after, fault) = match result {
        Ok(body) => (200, body, None, None),
        Err(f) => (500, fault_doc(&f), f.backoff, Some(f.code)),
    };
    Translated {
        status,
        body,
        retry_after,
        operation: operation.to_owned(),
        graph_calls: g.calls.load(Ordering::Relaxed),
        throttled: g.throttled.load(Ordering::Relaxed),
        untranslated,
        fault,
    }
}

fn single_failure(operation: &str, f: &EwsFailure) -> Vec<u8> {
    let mut w = EwsWriter::new();
    w.open_response(operation);
    w.failure(&format!("{operation}ResponseMessage"), f);
    w.close_response(operation);
    w.finish()
}

/// A per-item failure is rendered; a fault aborts the whole request.
fn per_item<T>(r: Result<T, EwsFailure>) -> Result<Result<T, EwsFailure>, EwsFailure> {
    match r {
        Err(f) if f.channel == Channel::Fault => Err(f),
        other => Ok(other),
    }
}

// ---------------------------------------------------------------------------------- ConvertId

fn convert_id(scope: &Scope<'_>, destination: &str, alts: &[AlternateId]) -> Vec<u8> {
    let mut w = EwsWriter::new();
    w.open_response("ConvertId");
    for alt in alts {
        let result = police::parse_id(&alt.id).and_then(|parsed| {
            if alt.format != "EwsId" || destination != "EwsId" {
                return Err(EwsFailure::item(
                    "ErrorUnsupportedTypeForConversion",
                    format!(
                        "ews-gateway: the Microsoft Graph backend converts EwsId to EwsId only, not {} to {destination}.",
                        alt.format
                    ),
                ));
            }
            scope.mailbox_ref(&alt.mailbox)?;
            Ok(parsed)
        });
        match result {
            Ok(parsed) => w.success("ConvertIdResponseMessage", |w| {
                w.empty(
                    "m:AlternateId",
                    &[
                        ("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"),
                        ("xsi:type", "t:AlternateIdType"),
                        ("Format", "EwsId"),
                        ("Id", &parsed.ews),
                        ("Mailbox", &alt.mailbox),
                    ],
                )
            }),
            Err(f) => w.failure("ConvertIdResponseMessage", &f),
        }
    }
    w.close_response("ConvertId");
    w.finish()
}

// ---------------------------------------------------------------------------------- GetFolder

fn well_known(name: &str) -> Result<&'static str, EwsFailure> {
    WELL_KNOWN
        .iter()
        .find(|w| **w == name)
        .copied()
        .ok_or_else(|| {
            EwsFailure::item(
                "ErrorFolderNotFound",
                format!("ews-gateway: the Microsoft Graph backend does not translate the folder '{name}'."),
            )
        })
}

async fn folder_path<P: GraphPort>(
    g: &Graph<'_, P>,
    facts: &MailboxFacts,
    scope: &Scope<'_>,
    folder: &FolderRef,
) -> Result<String, EwsFailure> {
    match folder {
        FolderRef::Distinguished { id, mailbox } => {
            if let Some(mbx) = mailbox
                && !scope.mailbox_ref(mbx)?
            {
                return Err(EwsFailure::item(
                    "ErrorInvalidOperation",
                    format!(
                        "ews-gateway: the Microsoft Graph backend acts on {} only in this call; address {mbx} as its own call (ExchangeImpersonation).",
                        scope.mailbox
                    ),
                ));
            }
            Ok(format!("/mailFolders/{}", well_known(id)?))
        }
        FolderRef::Id { id } => {
            let parsed = police::parse_id(id)?;
            let guid = facts.guid(g).await?;
            police::id_in_mailbox(&parsed, guid, scope)?;
            Ok(format!("/mailFolders/{}", parsed.rest()))
        }
    }
}

async fn get_folder<P: GraphPort>(
    g: &Graph<'_, P>,
    facts: &MailboxFacts,
    scope: &Scope<'_>,
    folders: &[FolderRef],
) -> Result<Vec<u8>, EwsFailure> {
    let mut results = Vec::new();
    for f in folders {
        let r = async {
            if matches!(f, FolderRef::Distinguished { id, .. } if id == "root") {
                let root = g
                    .call(GraphRequest::get(
                        "/mailFolders/msgfolderroot?$select=parentFolderId",
                    ))
                    .await?;
                let parent = json_str(&root.json, "parentFolderId")
                    .ok_or_else(|| bad_reply("the root folder"))?;
                let parent = police::parse_id(parent)?;
                return g
                    .call(GraphRequest::get(format!("/mailFolders/{}", parent.rest())))
                    .await;
            }
            let path = folder_path(g, facts, scope, f).await?;
            g.call(GraphRequest::get(path)).await
        }
        .await;
        results.push(per_item(r)?);
    }
    let mut w = EwsWriter::new();
    w.open_response("GetFolder");
    for r in results {
        match r {
            Ok(resp) => w.success("GetFolderResponseMessage", |w| {
                w.start("m:Folders", &[]);
                folder_xml(w, &resp.json);
                w.end("m:Folders");
            }),
            Err(f) => w.failure("GetFolderResponseMessage", &f),
        }
    }
    w.close_response("GetFolder");
    Ok(w.finish())
}

fn folder_xml(w: &mut EwsWriter, json: &Option<Value>) {
    let id = json_str(json, "id")
        .map(ids::rest_to_ews)
        .unwrap_or_default();
    let parent = json_str(json, "parentFolderId").map(ids::rest_to_ews);
    let count = |k: &str| {
        json.as_ref()
            .and_then(|j| j.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .to_string()
    };
    w.start("t:Folder", &[]);
    w.empty(
        "t:FolderId",
        &[("Id", &id), ("ChangeKey", FOLDER_CHANGE_KEY)],
    );
    if let Some(parent) = parent {
        w.empty(
            "t:ParentFolderId",
            &[("Id", &parent), ("ChangeKey", FOLDER_CHANGE_KEY)],
        );
    }
    w.text_element("t:FolderClass", "IPF.Note");
    w.text_element(
        "t:DisplayName",
        json_str(json, "displayName").unwrap_or_default(),
    );
    w.text_element("t:TotalCount", &count("totalItemCount"));
    w.text_element("t:ChildFolderCount", &count("childFolderCount"));
    w.text_element("t:UnreadCount", &count("unreadItemCount"));
    w.end("t:Folder");
}

// --------------------------------------------------------------------------------- CreateItem

fn recipient_json(r: &Recipient) -> Value {
    let mut email = json!({ "address": r.address });
    if let Some(name) = &r.name {
        email["name"] = json!(name);
    }
    json!({ "emailAddress": email })
}

fn attachment_json(a: &FileAttachment) -> Result<Value, EwsFailure> {
    let bytes = a
        .content
        .to_base64()
        .map_err(|e| EwsFailure::fault("ErrorInternalServerError", format!("spool: {e}")))?;
    let mut v = json!({
        "@odata.type": "#microsoft.graph.fileAttachment",
        "name": a.name,
        "contentType": a.content_type.as_deref().unwrap_or("application/octet-stream"),
        "contentBytes": bytes,
        "isInline": a.is_inline,
    });
    if let Some(cid) = &a.content_id {
        v["contentId"] = json!(cid);
    }
    Ok(v)
}

fn message_json(m: &MessageSpec) -> Value {
    let mut v = json!({});
    if let Some(s) = &m.subject {
        v["subject"] = json!(s);
    }
    if let Some((kind, content)) = &m.body {
        let kind = match kind {
            BodyType::Text => "text",
            BodyType::Html => "html",
        };
        v["body"] = json!({ "contentType": kind, "content": content });
    }
    for (key, list) in [
        ("toRecipients", &m.to),
        ("ccRecipients", &m.cc),
        ("bccRecipients", &m.bcc),
        ("replyTo", &m.reply_to),
    ] {
        if !list.is_empty() {
            v[key] = Value::Array(list.iter().map(recipient_json).collect());
        }
    }
    if let Some(from) = &m.from {
        v["from"] = recipient_json(from);
    }
    if let Some(sender) = &m.sender {
        v["sender"] = recipient_json(sender);
    }
    if let Some(imp) = &m.importance {
        v["importance"] = json!(imp.to_ascii_lowercase());
    }
    if let Some(b) = m.read_receipt {
        v["isReadReceiptRequested"] = json!(b);
    }
    if let Some(b) = m.delivery_receipt {
        v["isDeliveryReceiptRequested"] = json!(b);
    }
    v
}

fn b64_len(n: u64) -> u64 {
    n.div_ceil(3) * 4
}

/// Where each attachment goes: inside the message JSON, one POST each, or an upload session.
struct AttachmentPlan<'a> {
    inline: Vec<&'a FileAttachment>,
    post: Vec<&'a FileAttachment>,
    upload: Vec<&'a FileAttachment>,
}

fn plan_attachments(m: &MessageSpec) -> Result<AttachmentPlan<'_>, EwsFailure> {
    let base = GraphBody::Json(json!({ "message": message_json(m), "saveToSentItems": true }))
        .wire_len() as u64;
    if base > REQUEST_BUDGET as u64 {
        return Err(EwsFailure::item(
            "ErrorMessageSizeExceeded",
            "ews-gateway: the message without its attachments exceeds Microsoft Graph's 4 MB request limit.",
        ));
    }
    let mut plan = AttachmentPlan {
        inline: Vec::new(),
        post: Vec::new(),
        upload: Vec::new(),
    };
    let mut total = base;
    for a in &m.attachments {
        let len = a.content.len();
        if len > UPLOAD_MAX {
            return Err(EwsFailure::item(
                "ErrorMessageSizeExceeded",
                format!(
                    "The attachment {} exceeds the 150 MB limit of Microsoft Graph.",
                    a.name
                ),
            ));
        }
        let est = b64_len(len) + a.name.len() as u64 + 512;
        if len <= INLINE_MAX && est <= REQUEST_BUDGET as u64 {
            if total + est <= REQUEST_BUDGET as u64 {
                total += est;
                plan.inline.push(a);
            } else {
                plan.post.push(a);
            }
        } else {
            plan.upload.push(a);
        }
    }
    Ok(plan)
}

async fn upload_attachment<P: GraphPort>(
    g: &Graph<'_, P>,
    message: &str,
    a: &FileAttachment,
) -> Result<GraphResponse, EwsFailure> {
    let total = a.content.len();
    let mut item = json!({
        "attachmentType": "file",
        "name": a.name,
        "size": total,
        "contentType": a.content_type.as_deref().unwrap_or("application/octet-stream"),
        "isInline": a.is_inline,
    });
    if let Some(cid) = &a.content_id {
        item["contentId"] = json!(cid);
    }
    let session = g
        .call(GraphRequest::post_json(
            format!("/messages/{message}/attachments/createUploadSession"),
            json!({ "AttachmentItem": item }),
        ))
        .await?;
    let url = json_str(&session.json, "uploadUrl")
        .ok_or_else(|| bad_reply("an upload session"))?
        .to_owned();
    let mut offset = 0;
    let mut last = GraphResponse::default();
    while offset < total {
        let n = UPLOAD_CHUNK.min(total - offset);
        let bytes = a
            .content
            .read_chunk(offset, n as usize)
            .await
            .map_err(|e| EwsFailure::fault("ErrorInternalServerError", format!("spool: {e}")))?;
        last = g
            .upload(
                &url,
                UploadChunk {
                    start: offset,
                    total,
                    bytes,
                },
            )
            .await?;
        offset += n;
    }
    Ok(last)
}

/// Adds the attachments a plan puts outside the message JSON to draft `message` (REST id).
async fn add_attachments<P: GraphPort>(
    g: &Graph<'_, P>,
    message: &str,
    post: &[&FileAttachment],
    upload: &[&FileAttachment],
) -> Result<(), EwsFailure> {
    for a in post {
        g.call(GraphRequest::post_json(
            format!("/messages/{message}/attachments"),
            attachment_json(a)?,
        ))
        .await?;
    }
    for a in upload {
        upload_attachment(g, message, a).await?;
    }
    Ok(())
}

/// Where SaveOnly puts the draft, or whether SendAndSaveCopy's copy goes to Sent Items.
enum SaveTarget {
    /// `/messages` (Drafts).
    Drafts,
    /// `/mailFolders/{x}/messages`.
    Folder(String),
    /// Sent Items.
    SentItems,
}

async fn saved_target<P: GraphPort>(
    g: &Graph<'_, P>,
    facts: &MailboxFacts,
    scope: &Scope<'_>,
    disposition: Disposition,
    saved: Option<&FolderRef>,
) -> Result<SaveTarget, EwsFailure> {
    let Some(folder) = saved else {
        return Ok(match disposition {
            Disposition::SaveOnly => SaveTarget::Drafts,
            _ => SaveTarget::SentItems,
        });
    };
    let path = folder_path(g, facts, scope, folder).await?;
    let is_sent = match folder {
        FolderRef::Distinguished { id, .. } => id == "sentitems",
        FolderRef::Id { id } => facts.sent_items(g).await? == ids::rest_to_ews(id),
    };
    match disposition {
        Disposition::SaveOnly => Ok(SaveTarget::Folder(path)),
        Disposition::SendOnly => Ok(SaveTarget::SentItems),
        Disposition::SendAndSaveCopy if is_sent => Ok(SaveTarget::SentItems),
        Disposition::SendAndSaveCopy => Err(EwsFailure::item(
            "ErrorInvalidOperation",
            "ews-gateway: the Microsoft Graph backend saves sent copies in Sent Items only.",
        )),
    }
}

fn police_message(scope: &Scope<'_>, m: &MessageSpec) -> Result<(), EwsFailure> {
    for r in m.from.iter().chain(m.sender.iter()) {
        scope.sender(&r.address)?;
    }
    if let Some(mime) = &m.mime {
        if mime.len() > mime::MAX_SPLIT_MIME {
            return Err(EwsFailure::item(
                "ErrorMessageSizeExceeded",
                format!(
                    "ews-gateway: MIME messages over {} bytes are not translated.",
                    mime::MAX_SPLIT_MIME
                ),
            ));
        }
        let raw = mime
            .read_all_blocking()
            .map_err(|e| EwsFailure::fault("ErrorInternalServerError", format!("spool: {e}")))?;
        for address in mime::senders(&raw)? {
            scope.sender(&address)?;
        }
    }
    Ok(())
}

/// The outcome of one created message: its id for SaveOnly.
type Created = Option<(String, String)>;

async fn create_message<P: GraphPort>(
    g: &Graph<'_, P>,
    disposition: Disposition,
    target: &SaveTarget,
    m: &MessageSpec,
) -> Result<Created, EwsFailure> {
    if let Some(mime) = &m.mime
        && mime.len() <= MIME_DIRECT_MAX
    {
        let body =
            GraphBody::MimeBase64(mime.to_base64().map_err(|e| {
                EwsFailure::fault("ErrorInternalServerError", format!("spool: {e}"))
            })?);
        return match disposition {
            Disposition::SaveOnly => {
                let path = match target {
                    SaveTarget::Folder(f) => format!("{f}/messages"),
                    _ => "/messages".to_owned(),
                };
                let r = g
                    .call(GraphRequest {
                        method: Method::Post,
                        path,
                        body,
                    })
                    .await?;
                created_id(&r).map(Some)
            }
            _ => {
                g.call(GraphRequest {
                    method: Method::Post,
                    path: "/sendMail".into(),
                    body,
                })
                .await?;
                Ok(None)
            }
        };
    }
    let split;
    let m = match &m.mime {
        Some(mime) => {
            let raw = mime.read_all_blocking().map_err(|e| {
                EwsFailure::fault("ErrorInternalServerError", format!("spool: {e}"))
            })?;
            split = mime::split(&raw)?;
            &split
        }
        None => m,
    };
    let plan = plan_attachments(m)?;
    let mut message = message_json(m);
    if !plan.inline.is_empty() {
        message["attachments"] = Value::Array(
            plan.inline
                .iter()
                .map(|a| attachment_json(a))
                .collect::<Result<_, _>>()?,
        );
    }
    let direct = plan.post.is_empty() && plan.upload.is_empty();
    match disposition {
        Disposition::SendOnly | Disposition::SendAndSaveCopy if direct => {
            g.call(GraphRequest::post_json(
                "/sendMail",
                json!({
                    "message": message,
                    "saveToSentItems": disposition == Disposition::SendAndSaveCopy,
                }),
            ))
            .await?;
            Ok(None)
        }
        _ => {
            let path = match target {
                SaveTarget::Folder(f) => format!("{f}/messages"),
                _ => "/messages".to_owned(),
            };
            let draft = g.call(GraphRequest::post_json(path, message)).await?;
            let (id, change_key) = created_id(&draft)?;
            let rest = ids::ews_to_rest(&id);
            add_attachments(g, &rest, &plan.post, &plan.upload).await?;
            if disposition == Disposition::SaveOnly {
                if direct {
                    return Ok(Some((id, change_key)));
                }
                let fresh = g
                    .call(GraphRequest::get(format!(
                        "/messages/{rest}?$select=id,changeKey"
                    )))
                    .await?;
                return created_id(&fresh).map(Some);
            }
            // Graph's /send always files a copy in Sent Items (SendOnly's copy is a known gap).
            g.call(GraphRequest {
                method: Method::Post,
                path: format!("/messages/{rest}/send"),
                body: GraphBody::Empty,
            })
            .await?;
            Ok(None)
        }
    }
}

fn created_id(r: &GraphResponse) -> Result<(String, String), EwsFailure> {
    let id = json_str(&r.json, "id").ok_or_else(|| bad_reply("a created message"))?;
    let ck = json_str(&r.json, "changeKey").unwrap_or_default();
    Ok((ids::rest_to_ews(id), ck.to_owned()))
}

async fn create_item<P: GraphPort>(
    g: &Graph<'_, P>,
    facts: &MailboxFacts,
    scope: &Scope<'_>,
    disposition: Disposition,
    saved: Option<&FolderRef>,
    items: &[MessageSpec],
) -> Result<Vec<u8>, EwsFailure> {
    // Checks without Graph first: senders and mailbox references.
    let policed: Vec<Result<(), EwsFailure>> = items
        .iter()
        .map(|m| per_item(police_message(scope, m)))
        .collect::<Result<_, _>>()?;
    if let Some(FolderRef::Distinguished {
        mailbox: Some(mbx), ..
    }) = saved
        && let Err(f) = scope.mailbox_ref(mbx)
    {
        return Ok(repeat_failure("CreateItem", items.len(), &f));
    }
    let target = match per_item(saved_target(g, facts, scope, disposition, saved).await)? {
        Ok(t) => t,
        Err(f) => return Ok(repeat_failure("CreateItem", items.len(), &f)),
    };
    let mut results = Vec::new();
    for (m, ok) in items.iter().zip(policed) {
        let r = match ok {
            Ok(()) => per_item(create_message(g, disposition, &target, m).await)?,
            Err(f) => Err(f),
        };
        results.push(r);
    }
    let mut w = EwsWriter::new();
    w.open_response("CreateItem");
    for r in results {
        match r {
            Ok(created) => w.success("CreateItemResponseMessage", |w| match created {
                Some((id, ck)) => {
                    w.start("m:Items", &[]);
                    w.start("t:Message", &[]);
                    w.empty("t:ItemId", &[("Id", &id), ("ChangeKey", &ck)]);
                    w.end("t:Message");
                    w.end("m:Items");
                }
                None => w.empty("m:Items", &[]),
            }),
            Err(f) => w.failure("CreateItemResponseMessage", &f),
        }
    }
    w.close_response("CreateItem");
    Ok(w.finish())
}

fn repeat_failure(operation: &str, n: usize, f: &EwsFailure) -> Vec<u8> {
    let mut w = EwsWriter::new();
    w.open_response(operation);
    for _ in 0..n.max(1) {
        w.failure(&format!("{operation}ResponseMessage"), f);
    }
    w.close_response(operation);
    w.finish()
}

// --------------------------------------------------------------------------- CreateAttachment

async fn create_attachment<P: GraphPort>(
    g: &Graph<'_, P>,
    facts: &MailboxFacts,
    scope: &Scope<'_>,
    parent: &ItemRef,
    attachments: &[FileAttachment],
) -> Result<Vec<u8>, EwsFailure> {
    let checked = async {
        let parsed = police::parse_id(&parent.id)?;
        let guid = facts.guid(g).await?;
        police::id_in_mailbox(&parsed, guid, scope)?;
        Ok(parsed)
    }
    .await;
    let parsed = match per_item(checked)? {
        Ok(p) => p,
        Err(f) => return Ok(repeat_failure("CreateAttachment", attachments.len(), &f)),
    };
    let rest = parsed.rest();
    let mut results = Vec::new();
    for a in attachments {
        let r = async {
            if a.content.len() > UPLOAD_MAX {
                return Err(EwsFailure::item(
                    "ErrorMessageSizeExceeded",
                    format!(
                        "The attachment {} exceeds the 150 MB limit of Microsoft Graph.",
                        a.name
                    ),
                ));
            }
            let est = b64_len(a.content.len()) + a.name.len() as u64 + 512;
            if a.content.len() <= INLINE_MAX && est <= REQUEST_BUDGET as u64 {
                let r = g
                    .call(GraphRequest::post_json(
                        format!("/messages/{rest}/attachments"),
                        attachment_json(a)?,
                    ))
                    .await?;
                Ok(json_str(&r.json, "id").map(str::to_owned))
            } else {
                let r = upload_attachment(g, &rest, a).await?;
                Ok(json_str(&r.json, "id").map(str::to_owned))
            }
        }
        .await;
        results.push(per_item(r)?);
    }
    // Attachments from upload sessions come back without an id: look them up by name and size.
    let mut listed: Option<Vec<Value>> = None;
    let mut ids_out = Vec::new();
    for (a, r) in attachments.iter().zip(results) {
        let r = match r {
            Ok(Some(id)) => Ok(id),
            Ok(None) => {
                if listed.is_none() {
                    let l = g
                        .call(GraphRequest::get(format!(
                            "/messages/{rest}/attachments?$select=id,name,size"
                        )))
                        .await?;
                    listed = Some(
                        l.json
                            .as_ref()
                            .and_then(|j| j.get("value"))
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default(),
                    );
                }
                listed
                    .iter()
                    .flatten()
                    .rev()
                    .find(|v| {
                        v.get("name").and_then(Value::as_str) == Some(a.name.as_str())
                            && v.get("size")
                                .and_then(Value::as_u64)
                                .is_none_or(|s| s >= a.content.len())
                    })
                    .and_then(|v| v.get("id").and_then(Value::as_str))
                    .map(str::to_owned)
                    .ok_or_else(|| bad_reply("the attachment list"))
            }
            Err(f) => Err(f),
        };
        ids_out.push(r);
    }
    let parent_now = g
        .call(GraphRequest::get(format!(
            "/messages/{rest}?$select=changeKey"
        )))
        .await;
    let change_key = match per_item(parent_now)? {
        Ok(r) => json_str(&r.json, "changeKey")
            .unwrap_or_default()
            .to_owned(),
        Err(_) => parent.change_key.clone().unwrap_or_default(),
    };
    let mut w = EwsWriter::new();
    w.open_response("CreateAttachment");
    for r in ids_out {
        match r {
            Ok(id) => w.success("CreateAttachmentResponseMessage", |w| {
                w.start("m:Attachments", &[]);
                w.start("t:FileAttachment", &[]);
                w.empty(
                    "t:AttachmentId",
                    &[
                        ("Id", &ids::rest_to_ews(&id)),
                        ("RootItemId", &parsed.ews),
                        ("RootItemChangeKey", &change_key),
                    ],
                );
                w.end("t:FileAttachment");
                w.end("m:Attachments");
            }),
            Err(f) => w.failure("CreateAttachmentResponseMessage", &f),
        }
    }
    w.close_response("CreateAttachment");
    Ok(w.finish())
}

// ----------------------------------------------------------------------------------- SendItem

async fn send_item<P: GraphPort>(
    g: &Graph<'_, P>,
    facts: &MailboxFacts,
    scope: &Scope<'_>,
    save_copy: bool,
    saved: Option<&FolderRef>,
    items: &[ItemRef],
) -> Result<Vec<u8>, EwsFailure> {
    if let Some(FolderRef::Distinguished {
        mailbox: Some(mbx), ..
    }) = saved
        && let Err(f) = scope.mailbox_ref(mbx)
    {
        return Ok(repeat_failure("SendItem", items.len(), &f));
    }
    let parsed: Vec<_> = items.iter().map(|i| police::parse_id(&i.id)).collect();
    let mut checked = Vec::new();
    if parsed.iter().any(Result::is_ok) {
        let guid = facts.guid(g).await?;
        for p in parsed {
            checked.push(p.and_then(|p| police::id_in_mailbox(&p, guid, scope).map(|_| p)));
        }
    } else {
        checked = parsed;
    }
    if save_copy
        && let Err(f) =
            per_item(saved_target(g, facts, scope, Disposition::SendAndSaveCopy, saved).await)?
    {
        return Ok(repeat_failure("SendItem", items.len(), &f));
    }
    let mut results = Vec::new();
    for p in checked {
        let r = match p {
            Ok(p) => per_item(
                g.call(GraphRequest {
                    method: Method::Post,
                    path: format!("/messages/{}/send", p.rest()),
                    body: GraphBody::Empty,
                })
                .await,
            )?
            .map(|_| ()),
            Err(f) => Err(f),
        };
        results.push(r);
    }
    let mut w = EwsWriter::new();
    w.open_response("SendItem");
    for r in results {
        match r {
            Ok(()) => w.success("SendItemResponseMessage", |_| {}),
            Err(f) => w.failure("SendItemResponseMessage", &f),
        }
    }
    w.close_response("SendItem");
    Ok(w.finish())
}

// ------------------------------------------------------------------------------- ResolveNames

async fn resolve_names<P: GraphPort>(
    g: &Graph<'_, P>,
    scope: &Scope<'_>,
    entry: &str,
) -> Result<Vec<u8>, EwsFailure> {
    let wanted = entry
        .strip_prefix("smtp:")
        .or_else(|| entry.strip_prefix("SMTP:"))
        .unwrap_or(entry)
        .trim();
    let result = if wanted.eq_ignore_ascii_case(scope.mailbox) {
        per_item(
            g.call(GraphRequest::get(
                "?$select=displayName,mail,userPrincipalName",
            ))
            .await,
        )?
    } else {
        Err(EwsFailure::item(
            "ErrorNameResolutionNoResults",
            "No results were found. ews-gateway: the Microsoft Graph backend resolves the caller's own address only.",
        ))
    };
    let mut w = EwsWriter::new();
    w.open_response("ResolveNames");
    match result {
        Ok(r) => w.success("ResolveNamesResponseMessage", |w| {
            let address = json_str(&r.json, "mail")
                .or_else(|| json_str(&r.json, "userPrincipalName"))
                .unwrap_or(scope.mailbox);
            let name = json_str(&r.json, "displayName").unwrap_or(address);
            w.start(
                "m:ResolutionSet",
                &[
                    ("TotalItemsInView", "1"),
                    ("IncludesLastItemInRange", "true"),
                ],
            );
            w.start("t:Resolution", &[]);
            w.start("t:Mailbox", &[]);
            w.text_element("t:Name", name);
            w.text_element("t:EmailAddress", address);
            w.text_element("t:RoutingType", "SMTP");
            w.text_element("t:MailboxType", "Mailbox");
            w.end("t:Mailbox");
            w.end("t:Resolution");
            w.end("m:ResolutionSet");
        }),
        Err(f) => w.failure("ResolveNamesResponseMessage", &f),
    }
    w.close_response("ResolveNames");
    Ok(w.finish())
}

/// Decodes base64 (standard) for tests and callers holding small payloads.
pub fn decode_b64(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}
