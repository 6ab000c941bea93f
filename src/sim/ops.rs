//! EWS operations over the mailbox store.
//!
//! Contract with the EWS endpoint (`ews.rs`): the endpoint authenticates the bearer, resolves the
//! impersonated mailbox, checks policy and routing headers, parses the envelope, and then calls
//! [`dispatch`] with the first element of `s:Body`. What comes back is placed in a response
//! envelope (with `ServerVersionInfo`) by the endpoint, turned into a SOAP fault, or streamed.
//! Per-item problems are `ResponseClass="Error"` messages (HTTP 200), as in Exchange.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures_util::stream::BoxStream;

use super::SimState;
use super::directory::{IdKind, Mailbox, Tenant};
use super::mailbox::{
    self, Address, Attachment, ChangeKind, Folder, IdType, Item, MailboxData, StoreError,
    Subscription, make_id, now_rfc3339, parse_id, record,
};
use super::xml::Element;
use crate::soap::{NS_MESSAGES as M, NS_SOAP, NS_TYPES as T, escape};

/// Who is acting, as established by the endpoint.
#[derive(Debug, Clone)]
pub struct OpContext {
    /// The tenant of the token and the mailbox.
    pub tenant: Tenant,
    /// The impersonated mailbox: its own rights apply.
    pub acting: Mailbox,
    /// `RequestServerVersion/@Version` as sent (already validated), `Exchange2013_SP1` when absent.
    pub server_version: String,
}

/// What an operation produced.
pub enum OpOutcome {
    /// Serialized content of `s:Body`: one element (e.g. `m:GetFolderResponse`) that declares
    /// the namespace prefixes it uses (`xmlns:m`, `xmlns:t`).
    Body(String),
    /// A SOAP fault (HTTP 500), e.g. for operations that are not simulated.
    Fault {
        /// EWS response code, e.g. `ErrorInvalidOperation`.
        code: String,
        /// Human text.
        message: String,
        /// `t:MessageXml/t:Value` pairs.
        message_xml: Vec<(String, String)>,
    },
    /// A streaming response (GetStreamingEvents): complete, unprefixed `<Envelope>` documents
    /// one after another, each yielded (and flushed) as it occurs; ends after `ConnectionStatus`
    /// `Closed`.
    Stream(BoxStream<'static, Bytes>),
}

impl std::fmt::Debug for OpOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Body(b) => f.debug_tuple("Body").field(b).finish(),
            Self::Fault { code, message, .. } => f
                .debug_struct("Fault")
                .field("code", code)
                .field("message", message)
                .finish(),
            Self::Stream(_) => f.write_str("Stream"),
        }
    }
}

fn fault(code: &str, message: impl Into<String>) -> OpOutcome {
    OpOutcome::Fault {
        code: code.to_owned(),
        message: message.into(),
        message_xml: Vec::new(),
    }
}

/// Runs the operation `op` (the first child of `s:Body`) as `ctx.acting`.
pub async fn dispatch(state: &Arc<SimState>, ctx: OpContext, op: &Element) -> OpOutcome {
    if op.ns.as_deref() != Some(M) {
        return fault(
            "ErrorSchemaValidation",
            format!("The element {} is not an EWS operation.", op.local),
        );
    }
    let ops = Ops { state, ctx: &ctx };
    let name = op.local.as_str();
    let messages = match name {
        "ConvertId" => ops.convert_id(op),
        "GetFolder" => ops.get_folder(op),
        "FindFolder" => ops.find_folder(op),
        "FindItem" => ops.find_item(op),
        "GetItem" => ops.get_item(op),
        "CreateItem" => ops.create_item(op),
        "UpdateItem" => ops.update_item(op),
        "DeleteItem" => ops.delete_item(op),
        "MoveItem" => ops.move_or_copy(op, true),
        "CopyItem" => ops.move_or_copy(op, false),
        "SendItem" => ops.send_item(op),
        "CreateAttachment" => ops.create_attachment(op),
        "GetAttachment" => ops.get_attachment(op),
        "DeleteAttachment" => ops.delete_attachment(op),
        "ResolveNames" => ops.resolve_names(op),
        "SyncFolderItems" => ops.sync_folder_items(op),
        "Subscribe" => ops.subscribe(op),
        "Unsubscribe" => ops.unsubscribe(op),
        "GetStreamingEvents" => return ops.get_streaming_events(op),
        other => {
            return fault(
                "ErrorInvalidOperation",
                format!("The operation {other} is not simulated."),
            );
        }
    };
    match messages {
        Ok(messages) => OpOutcome::Body(wrap(name, &messages)),
        Err(e) => fault(e.code, e.message),
    }
}

fn wrap(op: &str, messages: &[String]) -> String {
    format!(
        "<m:{op}Response xmlns:m=\"{M}\" xmlns:t=\"{T}\"><m:ResponseMessages>{}</m:ResponseMessages></m:{op}Response>",
        messages.concat()
    )
}

fn ok_msg(op: &str, inner: &str) -> String {
    format!(
        "<m:{op}ResponseMessage ResponseClass=\"Success\"><m:ResponseCode>NoError</m:ResponseCode>{inner}</m:{op}ResponseMessage>"
    )
}

fn err_msg(op: &str, e: &StoreError) -> String {
    format!(
        "<m:{op}ResponseMessage ResponseClass=\"Error\"><m:MessageText>{}</m:MessageText><m:ResponseCode>{}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey></m:{op}ResponseMessage>",
        escape(&e.message),
        e.code
    )
}

fn invalid(message: &str) -> StoreError {
    StoreError::new("ErrorInvalidRequest", message)
}

fn access_denied() -> StoreError {
    StoreError::new(
        "ErrorAccessDenied",
        "Access is denied. Check credentials and try again.",
    )
}

fn item_not_found() -> StoreError {
    StoreError::new(
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
    )
}

fn folder_not_found() -> StoreError {
    StoreError::new(
        "ErrorFolderNotFound",
        "The specified folder could not be found in the store.",
    )
}

fn malformed_id() -> StoreError {
    StoreError::new("ErrorInvalidIdMalformed", "Id is malformed.")
}

/// How much of an item or folder to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    IdOnly,
    Default,
    All,
}

struct ShapeSpec {
    base: Shape,
    mime: bool,
    fields: Vec<String>,
}

impl ShapeSpec {
    fn parse(el: Option<&Element>) -> Self {
        let Some(el) = el else {
            return Self {
                base: Shape::Default,
                mime: false,
                fields: Vec::new(),
            };
        };
        let base = match el.child(T, "BaseShape").map(|b| b.text()).as_deref() {
            Some("IdOnly") => Shape::IdOnly,
            Some("AllProperties") => Shape::All,
            _ => Shape::Default,
        };
        let mime = el
            .child(T, "IncludeMimeContent")
            .is_some_and(|m| xs_bool(&m.text()));
        let fields = el
            .child(T, "AdditionalProperties")
            .map(|a| {
                a.elements()
                    .filter_map(|f| f.attr("FieldURI").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Self { base, mime, fields }
    }

    fn wants_body(&self) -> bool {
        self.base == Shape::All
            || self
                .fields
                .iter()
                .any(|f| f == "item:Body" || f == "item:TextBody")
    }

    fn wants_mime(&self) -> bool {
        self.mime || self.fields.iter().any(|f| f == "item:MimeContent")
    }

    fn full(&self) -> bool {
        self.base != Shape::IdOnly || !self.fields.is_empty()
    }
}

fn change_key(change: u64) -> String {
    STANDARD.encode(format!("CQAAABYAAA{change:08}"))
}

fn render_mailbox(a: &Address) -> String {
    format!(
        "<t:Mailbox><t:Name>{}</t:Name><t:EmailAddress>{}</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType><t:MailboxType>Mailbox</t:MailboxType></t:Mailbox>",
        escape(&a.name),
        escape(&a.email)
    )
}

/// RFC 5322 rendering of an item (for MimeContent).
fn render_mime(item: &Item) -> Vec<u8> {
    if let Some(mime) = &item.mime {
        return mime.clone();
    }
    let mut out = String::new();
    if let Some(f) = &item.from {
        let _ = write!(out, "From: {} <{}>\r\n", f.name, f.email);
    }
    let to: Vec<String> = item
        .to
        .iter()
        .map(|a| format!("{} <{}>", a.name, a.email))
        .collect();
    if !to.is_empty() {
        let _ = write!(out, "To: {}\r\n", to.join(", "));
    }
    let _ = write!(
        out,
        "Subject: {}\r\nDate: {}\r\nMessage-ID: {}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n\r\n{}\r\n",
        item.subject, item.sent, item.internet_message_id, item.body
    );
    out.into_bytes()
}

fn render_item(item: &Item, shape: &ShapeSpec) -> String {
    let mut x = String::from("<t:Message>");
    if shape.wants_mime() {
        let _ = write!(
            x,
            "<t:MimeContent CharacterSet=\"UTF-8\">{}</t:MimeContent>",
            STANDARD.encode(render_mime(item))
        );
    }
    let _ = write!(
        x,
        "<t:ItemId Id=\"{}\" ChangeKey=\"{}\"/>",
        item.id,
        change_key(item.change)
    );
    if !shape.full() {
        x.push_str("</t:Message>");
        return x;
    }
    let _ = write!(
        x,
        "<t:ParentFolderId Id=\"{}\" ChangeKey=\"{}\"/>",
        item.folder,
        change_key(1)
    );
    let _ = write!(
        x,
        "<t:ItemClass>IPM.Note</t:ItemClass><t:Subject>{}</t:Subject><t:Sensitivity>Normal</t:Sensitivity>",
        escape(&item.subject)
    );
    if shape.wants_body() {
        let kind = if item.body_html { "HTML" } else { "Text" };
        let _ = write!(
            x,
            "<t:Body BodyType=\"{kind}\">{}</t:Body>",
            escape(&item.body)
        );
    }
    if !item.attachments.is_empty() {
        x.push_str("<t:Attachments>");
        for a in &item.attachments {
            let _ = write!(
                x,
                "<t:FileAttachment><t:AttachmentId Id=\"{}\"/><t:Name>{}</t:Name><t:ContentType>{}</t:ContentType><t:Size>{}</t:Size><t:IsInline>false</t:IsInline><t:IsContactPhoto>false</t:IsContactPhoto></t:FileAttachment>",
                a.id,
                escape(&a.name),
                escape(&a.content_type),
                a.content.len()
            );
        }
        x.push_str("</t:Attachments>");
    }
    let _ = write!(
        x,
        "<t:DateTimeReceived>{}</t:DateTimeReceived><t:Size>{}</t:Size><t:Importance>Normal</t:Importance><t:IsSubmitted>false</t:IsSubmitted><t:IsDraft>{}</t:IsDraft><t:IsFromMe>false</t:IsFromMe><t:IsResend>false</t:IsResend><t:IsUnmodified>{}</t:IsUnmodified><t:DateTimeSent>{}</t:DateTimeSent><t:DateTimeCreated>{}</t:DateTimeCreated><t:HasAttachments>{}</t:HasAttachments>",
        item.received,
        item.size(),
        item.is_draft,
        item.change == 1,
        item.sent,
        item.received,
        !item.attachments.is_empty()
    );
    for (tag, value) in &item.extended {
        let _ = write!(
            x,
            "<t:ExtendedProperty><t:ExtendedFieldURI PropertyTag=\"{}\" PropertyType=\"String\"/><t:Value>{}</t:Value></t:ExtendedProperty>",
            escape(tag),
            escape(value)
        );
    }
    x.push_str("<t:Culture>en-US</t:Culture>");
    if let Some(f) = &item.from {
        let _ = write!(x, "<t:Sender>{}</t:Sender>", render_mailbox(f));
    }
    if !item.to.is_empty() {
        x.push_str("<t:ToRecipients>");
        for a in &item.to {
            x.push_str(&render_mailbox(a));
        }
        x.push_str("</t:ToRecipients>");
    }
    if !item.cc.is_empty() {
        x.push_str("<t:CcRecipients>");
        for a in &item.cc {
            x.push_str(&render_mailbox(a));
        }
        x.push_str("</t:CcRecipients>");
    }
    let _ = write!(
        x,
        "<t:IsReadReceiptRequested>false</t:IsReadReceiptRequested><t:IsDeliveryReceiptRequested>false</t:IsDeliveryReceiptRequested><t:ConversationTopic>{}</t:ConversationTopic>",
        escape(&item.subject)
    );
    if let Some(f) = &item.from {
        let _ = write!(x, "<t:From>{}</t:From>", render_mailbox(f));
    }
    let _ = write!(
        x,
        "<t:InternetMessageId>{}</t:InternetMessageId><t:IsRead>{}</t:IsRead>",
        escape(&item.internet_message_id),
        item.is_read
    );
    x.push_str("</t:Message>");
    x
}

fn folder_tag(f: &Folder) -> &'static str {
    match f.class.as_str() {
        "IPF.Appointment" => "CalendarFolder",
        "IPF.Contact" => "ContactsFolder",
        "IPF.Task" => "TasksFolder",
        _ => "Folder",
    }
}

fn render_folder(data: &MailboxData, f: &Folder, shape: Shape) -> String {
    let tag = folder_tag(f);
    let mut x = format!(
        "<t:{tag}><t:FolderId Id=\"{}\" ChangeKey=\"{}\"/>",
        f.id,
        change_key(f.change)
    );
    if shape == Shape::IdOnly {
        let _ = write!(x, "</t:{tag}>");
        return x;
    }
    if let Some(p) = &f.parent {
        let _ = write!(
            x,
            "<t:ParentFolderId Id=\"{p}\" ChangeKey=\"{}\"/>",
            change_key(1)
        );
    }
    let total = data.items.values().filter(|i| i.folder == f.id).count();
    let unread = data
        .items
        .values()
        .filter(|i| i.folder == f.id && !i.is_read)
        .count();
    let children = data
        .folders
        .values()
        .filter(|c| c.parent.as_deref() == Some(&f.id))
        .count();
    let _ = write!(
        x,
        "<t:FolderClass>{}</t:FolderClass><t:DisplayName>{}</t:DisplayName><t:TotalCount>{total}</t:TotalCount><t:ChildFolderCount>{children}</t:ChildFolderCount>",
        escape(&f.class),
        escape(&f.name)
    );
    if tag == "Folder" {
        let _ = write!(x, "<t:UnreadCount>{unread}</t:UnreadCount>");
    }
    let _ = write!(x, "</t:{tag}>");
    x
}

/// Where a folder reference points.
enum FolderRef {
    Id(String),
    Distinguished(String),
}

struct Ops<'a> {
    state: &'a Arc<SimState>,
    ctx: &'a OpContext,
}

impl Ops<'_> {
    fn acting(&self) -> String {
        self.ctx.acting.smtp.to_lowercase()
    }

    /// Checks that the acting mailbox may open `mailbox` (owner or delegate).
    fn check_access(&self, mailbox: &str) -> Result<String, StoreError> {
        let mailbox = mailbox.trim().to_lowercase();
        if mailbox == self.acting() {
            return Ok(mailbox);
        }
        let target = self
            .ctx
            .tenant
            .resolve(IdKind::SmtpAddress, &mailbox)
            .ok_or_else(|| {
                StoreError::new(
                    "ErrorNonExistentMailbox",
                    "The SMTP address has no mailbox associated with it.",
                )
            })?;
        if target.grants_access_to(&self.ctx.acting.smtp) {
            Ok(target.smtp.to_lowercase())
        } else {
            Err(access_denied())
        }
    }

    /// Resolves a `t:FolderId` / `t:DistinguishedFolderId` element to (mailbox, folder ref).
    fn folder_target(&self, el: &Element) -> Result<(String, FolderRef), StoreError> {
        if el.is(T, "DistinguishedFolderId") {
            let name = el
                .attr("Id")
                .ok_or_else(|| invalid("DistinguishedFolderId has no Id."))?;
            let mailbox = el
                .path(&[(T, "Mailbox"), (T, "EmailAddress")])
                .map(Element::text)
                .unwrap_or_else(|| self.acting());
            let mailbox = self.check_access(&mailbox)?;
            return Ok((mailbox, FolderRef::Distinguished(name.to_owned())));
        }
        if el.is(T, "FolderId") {
            let id = el.attr("Id").ok_or_else(malformed_id)?;
            let (kind, owner) = parse_id(id).ok_or_else(malformed_id)?;
            if kind != IdType::Folder {
                return Err(malformed_id());
            }
            let mailbox = self.check_access(&owner)?;
            return Ok((mailbox, FolderRef::Id(id.to_owned())));
        }
        Err(invalid("Expected a FolderId or DistinguishedFolderId."))
    }

    fn item_owner(&self, id: &str) -> Result<String, StoreError> {
        let (kind, owner) = parse_id(id).ok_or_else(malformed_id)?;
        if kind != IdType::Item {
            return Err(malformed_id());
        }
        self.check_access(&owner)
    }

    fn with<R>(
        &self,
        mailbox: &str,
        f: impl FnOnce(&mut MailboxData, &mut dyn FnMut() -> u64) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.state.mailboxes.with_mailbox(mailbox, f)
    }

    fn convert_id(&self, op: &Element) -> Result<Vec<String>, StoreError> {
        let dest = op.attr("DestinationFormat").unwrap_or("EwsId");
        let ids = op
            .child(M, "SourceIds")
            .ok_or_else(|| invalid("ConvertId needs SourceIds."))?;
        Ok(ids
            .elements()
            .map(|alt| {
                let id = alt.attr("Id").unwrap_or_default();
                ok_msg(
                    "ConvertId",
                    &format!(
                        "<m:AlternateId xsi:type=\"t:AlternateIdType\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" Format=\"{dest}\" Id=\"{}\" Mailbox=\"{}\"/>",
                        escape(id),
                        escape(&self.ctx.acting.smtp)
                    ),
                )
            })
            .collect())
    }

    fn get_folder(&self, op: &Element) -> Result<Vec<String>, StoreError> {
        let shape = ShapeSpec::parse(op.child(M, "FolderShape")).base;
        let ids = op
            .child(M, "FolderIds")
            .ok_or_else(|| invalid("GetFolder needs FolderIds."))?;
        Ok(ids
            .elements()
            .map(|el| {
                let result = self.folder_target(el).and_then(|(mailbox, r)| {
                    self.with(&mailbox, |data, _| {
                        let f = lookup_folder(data, &r)?;
                        Ok(render_folder(data, f, shape))
                    })
                });
                match result {
                    Ok(x) => ok_msg("GetFolder", &format!("<m:Folders>{x}</m:Folders>")),
                    Err(e) => err_msg("GetFolder", &e),
                }
            })
            .collect())
    }

    fn find_folder(&self, op: &Element) -> Result<Vec<String>, StoreError> {
        let shape = ShapeSpec::parse(op.child(M, "FolderShape")).base;
        let deep = op.attr("Traversal") == Some("Deep");
        let (offset, max) = paging(op.child(M, "IndexedPageFolderView"))?;
        let parents = op
            .child(M, "ParentFolderIds")
            .ok_or_else(|| invalid("FindFolder needs ParentFolderIds."))?;
        Ok(parents
            .elements()
            .map(|el| {
                let result = self.folder_target(el).and_then(|(mailbox, r)| {
                    self.with(&mailbox, |data, _| {
                        let parent = lookup_folder(data, &r)?.id.clone();
                        let mut found = Vec::new();
                        let mut frontier = vec![parent];
                        while let Some(p) = frontier.pop() {
                            for f in data.folders.values().filter(|f| f.parent.as_deref() == Some(&p)) {
                                found.push(f.clone());
                                if deep {
                                    frontier.push(f.id.clone());
                                }
                            }
                        }
                        let total = found.len();
                        let page: Vec<String> = found.iter().skip(offset).take(max).map(|f| render_folder(data, f, shape)).collect();
                        let end = (offset + page.len()).min(total);
                        Ok(format!(
                            "<m:RootFolder IndexedPagingOffset=\"{end}\" TotalItemsInView=\"{total}\" IncludesLastItemInRange=\"{}\"><t:Folders>{}</t:Folders></m:RootFolder>",
                            end >= total,
                            page.concat()
                        ))
                    })
                });
                match result {
                    Ok(x) => ok_msg("FindFolder", &x),
                    Err(e) => err_msg("FindFolder", &e),
                }
            })
            .collect())
    }

    fn find_item(&self, op: &Element) -> Result<Vec<String>, StoreError> {
        let shape = ShapeSpec::parse(op.child(M, "ItemShape"));
        if op.child(M, "ItemShape").is_none() {
            return Err(StoreError::new(
                "ErrorSchemaValidation",
                "The element 'FindItem' is missing its 'ItemShape' child element.",
            ));
        }
        let (offset, max) = match op.child(M, "FractionalPageItemView") {
            Some(_) => (0, usize::MAX),
            None => paging(op.child(M, "IndexedPageItemView"))?,
        };
        let restriction = op
            .child(M, "Restriction")
            .and_then(|r| r.elements().next())
            .cloned();
        let ascending = op
            .path(&[(M, "SortOrder"), (T, "FieldOrder")])
            .is_some_and(|f| f.attr("Order") == Some("Ascending"));
        let parents = op
            .child(M, "ParentFolderIds")
            .ok_or_else(|| invalid("FindItem needs ParentFolderIds."))?;
        Ok(parents
            .elements()
            .map(|el| {
                let result = self.folder_target(el).and_then(|(mailbox, r)| {
                    self.with(&mailbox, |data, _| {
                        let folder = lookup_folder(data, &r)?.id.clone();
                        let mut items: Vec<&Item> = data
                            .items
                            .values()
                            .filter(|i| i.folder == folder)
                            .filter(|i| restriction.as_ref().is_none_or(|r| matches(r, i)))
                            .collect();
                        items.sort_by(|a, b| a.received.cmp(&b.received).then(a.id.cmp(&b.id)));
                        if !ascending {
                            items.reverse();
                        }
                        let total = items.len();
                        let page: Vec<String> = items.iter().skip(offset).take(max).map(|i| render_item(i, &shape)).collect();
                        let end = (offset.min(total) + page.len()).min(total);
                        Ok(format!(
                            "<m:RootFolder IndexedPagingOffset=\"{end}\" TotalItemsInView=\"{total}\" IncludesLastItemInRange=\"{}\"><t:Items>{}</t:Items></m:RootFolder>",
                            end >= total,
                            page.concat()
                        ))
                    })
                });
                match result {
                    Ok(x) => ok_msg("FindItem", &x),
                    Err(e) => err_msg("FindItem", &e),
                }
            })
            .collect())
    }

    fn get_item(&self, op: &Element) -> Result<Vec<String>, StoreError> {
        let shape = ShapeSpec::parse(op.child(M, "ItemShape"));
        let ids = op
            .child(M, "ItemIds")
            .ok_or_else(|| invalid("GetItem needs ItemIds."))?;
        Ok(ids
            .elements()
            .map(|el| {
                let id = el.attr("Id").unwrap_or_default();
                let result = self.item_owner(id).and_then(|mailbox| {
                    self.with(&mailbox, |data, _| {
                        let item = data.items.get(id).ok_or_else(item_not_found)?;
                        Ok(render_item(item, &shape))
                    })
                });
                match result {
                    Ok(x) => ok_msg("GetItem", &format!("<m:Items>{x}</m:Items>")),
                    Err(e) => err_msg("GetItem", &e),
                }
            })
            .collect())
    }

    fn create_item(&self, op: &Element) -> Result<Vec<String>, StoreError> {
        let disposition = op
            .attr("MessageDisposition")
            .unwrap_or("SaveOnly")
            .to_owned();
        let saved = op
            .child(M, "SavedItemFolderId")
            .and_then(|s| s.elements().next());
        let items = op
            .child(M, "Items")
            .ok_or_else(|| invalid("CreateItem needs Items."))?;
        let acting = self.acting();
        let mut out = Vec::new();
        for el in items.elements() {
            let result = (|| {
                if !el.is(T, "Message") {
                    return Err(StoreError::new(
                        "ErrorInvalidOperation",
                        format!("Creating a {} is not simulated.", el.local),
                    ));
                }
                let mut draft = parse_message(el)?;
                if draft.from.is_none() {
                    draft.from = Some(Address {
                        name: self.ctx.acting.display_name.clone(),
                        email: self.ctx.acting.smtp.clone(),
                    });
                }
                let (save_mailbox, save_ref) = match saved {
                    Some(s) => self.folder_target(s)?,
                    None => {
                        let default = if disposition == "SaveOnly" {
                            "drafts"
                        } else {
                            "sentitems"
                        };
                        (acting.clone(), FolderRef::Distinguished(default.to_owned()))
                    }
                };
                match disposition.as_str() {
                    "SaveOnly" => {
                        let created = self.with(&save_mailbox, |data, next| {
                            let folder = lookup_folder(data, &save_ref)?.clone();
                            let mut item = draft.clone();
                            item.id = make_id(IdType::Item, &save_mailbox, next());
                            item.folder = folder.id.clone();
                            item.is_draft = folder.distinguished.as_deref() == Some("drafts");
                            item.is_read = item.is_read || item.is_draft;
                            assign_attachment_ids(&mut item, &save_mailbox, next);
                            record(
                                data,
                                &save_mailbox,
                                &folder.id,
                                &item.id,
                                ChangeKind::Created,
                            );
                            let rendered = format!(
                                "<t:Message><t:ItemId Id=\"{}\" ChangeKey=\"{}\"/></t:Message>",
                                item.id,
                                change_key(item.change)
                            );
                            data.items.insert(item.id.clone(), item);
                            Ok(rendered)
                        })?;
                        Ok(format!("<m:Items>{created}</m:Items>"))
                    }
                    "SendOnly" | "SendAndSaveCopy" => {
                        if draft.to.is_empty() && draft.cc.is_empty() {
                            return Err(StoreError::new(
                                "ErrorInvalidRecipients",
                                "At least one recipient isn't valid.",
                            ));
                        }
                        self.deliver(&draft)?;
                        if disposition == "SendAndSaveCopy" {
                            self.with(&save_mailbox, |data, next| {
                                let folder = lookup_folder(data, &save_ref)?.id.clone();
                                let mut item = draft.clone();
                                item.id = make_id(IdType::Item, &save_mailbox, next());
                                item.folder = folder.clone();
                                item.is_read = true;
                                assign_attachment_ids(&mut item, &save_mailbox, next);
                                record(data, &save_mailbox, &folder, &item.id, ChangeKind::Created);
                                data.items.insert(item.id.clone(), item);
                                Ok(())
                            })?;
                        }
                        Ok("<m:Items/>".to_owned())
                    }
                    other => Err(invalid(&format!(
                        "MessageDisposition {other} is not valid."
                    ))),
                }
            })();
            out.push(match result {
                Ok(inner) => ok_msg("CreateItem", &inner),
                Err(e) => err_msg("CreateItem", &e),
            });
        }
        Ok(out)
    }

    /// Delivers a copy of `draft` into the inbox of each recipient that is a mailbox here.
    fn deliver(&self, draft: &Item) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let recipients: Vec<String> = draft
            .to
            .iter()
            .chain(draft.cc.iter())
            .filter_map(|a| self.ctx.tenant.resolve(IdKind::SmtpAddress, &a.email))
            .map(|m| m.smtp.to_lowercase())
            .collect();
        for rcpt in recipients {
            self.with(&rcpt, |data, next| {
                let inbox = data
                    .distinguished("inbox")
                    .map(|f| f.id.clone())
                    .ok_or_else(folder_not_found)?;
                let mut item = draft.clone();
                item.id = make_id(IdType::Item, &rcpt, next());
                item.folder = inbox.clone();
                item.is_read = false;
                item.is_draft = false;
                item.received = now.clone();
                item.sent = now.clone();
                item.change = 1;
                assign_attachment_ids(&mut item, &rcpt, next);
                record(data, &rcpt, &inbox, &item.id, ChangeKind::NewMail);
                record(data, &rcpt, &inbox, &item.id, ChangeKind::Created);
                data.items.insert(item.id.clone(), item);
                Ok(())
            })?;
        }
        Ok(())
    }

    fn update_item(&self, op: &Element) -> Result<Vec<String>, StoreError> {
        let changes = op
            .child(M, "ItemChanges")
            .ok_or_else(|| invalid("UpdateItem needs ItemChanges."))?;
        Ok(changes
            .children_named(T, "ItemChange")
            .map(|change| {
                let id = change.child(T, "ItemId").and_then(|i| i.attr("Id")).unwrap_or_default().to_owned();
                let result = self.item_owner(&id).and_then(|mailbox| {
                    self.with(&mailbox, |data, _| {
                        let item = data.items.get_mut(&id).ok_or_else(item_not_found)?;
                        for update in change.child(T, "Updates").into_iter().flat_map(Element::elements) {
                            apply_update(item, update);
                        }
                        item.change += 1;
                        let rendered = format!("<t:Message><t:ItemId Id=\"{}\" ChangeKey=\"{}\"/></t:Message>", item.id, change_key(item.change));
                        let folder = item.folder.clone();
                        record(data, &mailbox, &folder, &id, ChangeKind::Modified);
                        Ok(rendered)
                    })
                });
                match result {
                    Ok(x) => ok_msg("UpdateItem", &format!("<m:Items>{x}</m:Items><m:ConflictResults><t:Count>0</t:Count></m:ConflictResults>")),
                    Err(e) => err_msg("UpdateItem", &e),
                }
            })
            .collect())
    }

    fn delete_item(&self, op: &Element) -> Result<Vec<String>, StoreError> {
        let delete_type = op
            .attr("DeleteType")
            .unwrap_or("MoveToDeletedItems")
            .to_owned();
        let ids = op
            .child(M, "ItemIds")
            .ok_or_else(|| invalid("DeleteItem needs ItemIds."))?;
        Ok(ids
            .elements()
            .map(|el| {
                let id = el.attr("Id").unwrap_or_default().to_owned();
                let result = self.item_owner(&id).and_then(|mailbox| {
                    self.with(&mailbox, |data, next| {
                        let item = data.items.remove(&id).ok_or_else(item_not_found)?;
                        record(data, &mailbox, &item.folder, &id, ChangeKind::Deleted);
                        if delete_type == "MoveToDeletedItems" {
                            let deleted = data
                                .distinguished("deleteditems")
                                .map(|f| f.id.clone())
                                .ok_or_else(folder_not_found)?;
                            let mut moved = item;
                            moved.id = make_id(IdType::Item, &mailbox, next());
                            moved.folder = deleted.clone();
                            record(data, &mailbox, &deleted, &moved.id, ChangeKind::Created);
                            data.items.insert(moved.id.clone(), moved);
                        }
                        Ok(())
                    })
                });
                match result {
                    Ok(()) => ok_msg("DeleteItem", ""),
                    Err(e) => err_msg("DeleteItem", &e),
                }
            })
            .collect())
    }

    fn move_or_copy(&self, op: &Element, is_move: bool) -> Result<Vec<String>, StoreError> {
        let name = if is_move { "MoveItem" } else { "CopyItem" };
        let to = op
            .child(M, "ToFolderId")
            .and_then(|t| t.elements().next())
            .ok_or_else(|| invalid("ToFolderId is required."))?;
        let (to_mailbox, to_ref) = self.folder_target(to)?;
        let ids = op
            .child(M, "ItemIds")
            .ok_or_else(|| invalid("ItemIds is required."))?;
        Ok(ids
            .elements()
            .map(|el| {
                let id = el.attr("Id").unwrap_or_default().to_owned();
                let result = self.item_owner(&id).and_then(|mailbox| {
                    if mailbox != to_mailbox {
                        return Err(StoreError::new(
                            "ErrorCrossMailboxMoveCopy",
                            "Cross-mailbox moves and copies are not simulated.",
                        ));
                    }
                    self.with(&mailbox, |data, next| {
                        let target = lookup_folder(data, &to_ref)?.id.clone();
                        let source = if is_move {
                            data.items.remove(&id)
                        } else {
                            data.items.get(&id).cloned()
                        };
                        let mut item = source.ok_or_else(item_not_found)?;
                        if is_move {
                            record(data, &mailbox, &item.folder, &id, ChangeKind::Deleted);
                        }
                        item.id = make_id(IdType::Item, &mailbox, next());
                        item.folder = target.clone();
                        record(data, &mailbox, &target, &item.id, ChangeKind::Created);
                        let rendered = format!(
                            "<t:Message><t:ItemId Id=\"{}\" ChangeKey=\"{}\"/></t:Message>",
                            item.id,
                            change_key(item.change)
                        );
                        data.items.insert(item.id.clone(), item);
                        Ok(rendered)
                    })
                });
                match result {
                    Ok(x) => ok_msg(name, &format!("<m:Items>{x}</m:Items>")),
                    Err(e) => err_msg(name, &e),
                }
            })
            .collect())
    }

    fn send_item(&self, op: &Element) -> Result<Vec<String>, StoreError> {
        let save = op.attr("SaveItemToFolder").is_none_or(xs_bool);
        let saved = op
            .child(M, "SavedItemFolderId")
            .and_then(|s| s.elements().next());
        let ids = op
            .child(M, "ItemIds")
            .ok_or_else(|| invalid("SendItem needs ItemIds."))?;
        Ok(ids
            .elements()
            .map(|el| {
                let id = el.attr("Id").unwrap_or_default().to_owned();
                let result = self.item_owner(&id).and_then(|mailbox| {
                    let draft = self.with(&mailbox, |data, _| {
                        let item = data.items.remove(&id).ok_or_else(item_not_found)?;
                        record(data, &mailbox, &item.folder, &id, ChangeKind::Deleted);
                        Ok(item)
                    })?;
                    self.deliver(&draft)?;
                    if save {
                        let (m, r) = match saved {
                            Some(s) => self.folder_target(s)?,
                            None => (
                                mailbox.clone(),
                                FolderRef::Distinguished("sentitems".to_owned()),
                            ),
                        };
                        self.with(&m, |data, next| {
                            let folder = lookup_folder(data, &r)?.id.clone();
                            let mut item = draft;
                            item.id = make_id(IdType::Item, &m, next());
                            item.folder = folder.clone();
                            item.is_draft = false;
                            record(data, &m, &folder, &item.id, ChangeKind::Created);
                            data.items.insert(item.id.clone(), item);
                            Ok(())
                        })?;
                    }
                    Ok(())
                });
                match result {
                    Ok(()) => ok_msg("SendItem", ""),
                    Err(e) => err_msg("SendItem", &e),
                }
            })
            .collect())
    }

    fn create_attachment(&self, op: &Element) -> Result<Vec<String>, StoreError> {
        let parent = op
            .child(M, "ParentItemId")
            .and_then(|p| p.attr("Id"))
            .unwrap_or_default()
            .to_owned();
        let list = op
            .child(M, "Attachments")
            .ok_or_else(|| invalid("CreateAttachment needs Attachments."))?;
        let mailbox = match self.item_owner(&parent) {
            Ok(m) => m,
            Err(e) => return Ok(vec![err_msg("CreateAttachment", &e)]),
        };
        Ok(list
            .elements()
            .map(|a| {
                let result = (|| {
                    if !a.is(T, "FileAttachment") {
                        return Err(StoreError::new("ErrorInvalidOperation", "Only file attachments are simulated."));
                    }
                    let content = STANDARD
                        .decode(a.child(T, "Content").map(Element::text).unwrap_or_default().replace(['\r', '\n', ' '], ""))
                        .map_err(|_| StoreError::new("ErrorInvalidRequest", "The attachment content is not valid base64."))?;
                    self.with(&mailbox, |data, next| {
                        let item = data.items.get_mut(&parent).ok_or_else(item_not_found)?;
                        let att = Attachment {
                            id: make_id(IdType::Attachment, &mailbox, next()),
                            name: a.child(T, "Name").map(Element::text).unwrap_or_default(),
                            content_type: a.child(T, "ContentType").map(Element::text).unwrap_or_else(|| "application/octet-stream".to_owned()),
                            content,
                        };
                        item.change += 1;
                        let rendered = format!(
                            "<t:FileAttachment><t:AttachmentId Id=\"{}\" RootItemId=\"{}\" RootItemChangeKey=\"{}\"/></t:FileAttachment>",
                            att.id,
                            item.id,
                            change_key(item.change)
                        );
                        item.attachments.push(att);
                        let folder = item.folder.clone();
                        record(data, &mailbox, &folder, &parent, ChangeKind::Modified);
                        Ok(rendered)
                    })
                })();
                match result {
                    Ok(x) => ok_msg("CreateAttachment", &format!("<m:Attachments>{x}</m:Attachments>")),
                    Err(e) => err_msg("CreateAttachment", &e),
                }
            })
            .collect())
    }

    fn find_attachment(&self, id: &str) -> Result<(String, String), StoreError> {
        let (kind, owner) = parse_id(id).ok_or_else(malformed_id)?;
        if kind != IdType::Attachment {
            return Err(malformed_id());
        }
        let mailbox = self.check_access(&owner)?;
        let item = self.with(&mailbox, |data, _| {
            data.items
                .values()
                .find(|i| i.attachments.iter().any(|a| a.id == id))
                .map(|i| i.id.clone())
                .ok_or_else(|| {
                    StoreError::new(
                        "ErrorAttachmentNotFound",
                        "The attachment could not be found.",
                    )
                })
        })?;
        Ok((mailbox, item))
    }

    fn get_attachment(&self, op: &Element) -> Result<Vec<String>, StoreError> {
        let ids = op
            .child(M, "AttachmentIds")
            .ok_or_else(|| invalid("GetAttachment needs AttachmentIds."))?;
        Ok(ids
            .elements()
            .map(|el| {
                let id = el.attr("Id").unwrap_or_default().to_owned();
                let result = self.find_attachment(&id).and_then(|(mailbox, item_id)| {
                    self.with(&mailbox, |data, _| {
                        let a = data
                            .items
                            .get(&item_id)
                            .and_then(|i| i.attachments.iter().find(|a| a.id == id))
                            .ok_or_else(|| StoreError::new("ErrorAttachmentNotFound", "The attachment could not be found."))?;
                        Ok(format!(
                            "<t:FileAttachment><t:AttachmentId Id=\"{}\"/><t:Name>{}</t:Name><t:ContentType>{}</t:ContentType><t:Size>{}</t:Size><t:IsInline>false</t:IsInline><t:IsContactPhoto>false</t:IsContactPhoto><t:Content>{}</t:Content></t:FileAttachment>",
                            a.id,
                            escape(&a.name),
                            escape(&a.content_type),
                            a.content.len(),
                            STANDARD.encode(&a.content)
                        ))
                    })
                });
                match result {
                    Ok(x) => ok_msg("GetAttachment", &format!("<m:Attachments>{x}</m:Attachments>")),
                    Err(e) => err_msg("GetAttachment", &e),
                }
            })
            .collect())
    }

    fn delete_attachment(&self, op: &Element) -> Result<Vec<String>, StoreError> {
        let ids = op
            .child(M, "AttachmentIds")
            .ok_or_else(|| invalid("DeleteAttachment needs AttachmentIds."))?;
        Ok(ids
            .elements()
            .map(|el| {
                let id = el.attr("Id").unwrap_or_default().to_owned();
                let result = self.find_attachment(&id).and_then(|(mailbox, item_id)| {
                    self.with(&mailbox, |data, _| {
                        let item = data.items.get_mut(&item_id).ok_or_else(item_not_found)?;
                        item.attachments.retain(|a| a.id != id);
                        item.change += 1;
                        Ok(format!(
                            "<m:RootItemId RootItemId=\"{}\" RootItemChangeKey=\"{}\"/>",
                            item.id,
                            change_key(item.change)
                        ))
                    })
                });
                match result {
                    Ok(x) => ok_msg("DeleteAttachment", &x),
                    Err(e) => err_msg("DeleteAttachment", &e),
                }
            })
            .collect())
    }

    fn resolve_names(&self, op: &Element) -> Result<Vec<String>, StoreError> {
        let entry = op
            .child(M, "UnresolvedEntry")
            .map(Element::text)
            .unwrap_or_default();
        let needle = entry
            .trim()
            .trim_start_matches("smtp:")
            .trim_start_matches("SMTP:")
            .to_lowercase();
        if needle.is_empty() {
            return Err(invalid("UnresolvedEntry is empty."));
        }
        let found: Vec<&Mailbox> = self
            .ctx
            .tenant
            .mailboxes
            .iter()
            .filter(|m| {
                m.smtp.to_lowercase().starts_with(&needle)
                    || m.display_name.to_lowercase().starts_with(&needle)
                    || m.display_name
                        .to_lowercase()
                        .split(' ')
                        .any(|w| w.starts_with(&needle))
            })
            .collect();
        if found.is_empty() {
            return Ok(vec![err_msg(
                "ResolveNames",
                &StoreError::new("ErrorNameResolutionNoResults", "No results were found."),
            )]);
        }
        let resolutions: String = found
            .iter()
            .map(|m| {
                format!(
                    "<t:Resolution>{}</t:Resolution>",
                    render_mailbox(&Address {
                        name: m.display_name.clone(),
                        email: m.smtp.clone()
                    })
                )
            })
            .collect();
        let set = format!(
            "<m:ResolutionSet TotalItemsInView=\"{}\" IncludesLastItemInRange=\"true\">{resolutions}</m:ResolutionSet>",
            found.len()
        );
        if found.len() == 1 {
            Ok(vec![ok_msg("ResolveNames", &set)])
        } else {
            Ok(vec![format!(
                "<m:ResolveNamesResponseMessage ResponseClass=\"Warning\"><m:MessageText>Multiple results were found.</m:MessageText><m:ResponseCode>ErrorNameResolutionMultipleResults</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{set}</m:ResolveNamesResponseMessage>"
            )])
        }
    }

    fn sync_folder_items(&self, op: &Element) -> Result<Vec<String>, StoreError> {
        let shape = ShapeSpec::parse(op.child(M, "ItemShape"));
        let folder_el = op
            .child(M, "SyncFolderId")
            .and_then(|s| s.elements().next())
            .ok_or_else(|| invalid("SyncFolderItems needs SyncFolderId."))?;
        let max: usize = op
            .child(M, "MaxChangesReturned")
            .and_then(|m| m.text().parse().ok())
            .filter(|m| *m > 0 && *m <= 512)
            .ok_or_else(|| invalid("MaxChangesReturned must be between 1 and 512."))?;
        let state_token = op
            .child(M, "SyncState")
            .map(Element::text)
            .unwrap_or_default();
        let since: Option<u64> = if state_token.is_empty() {
            None
        } else {
            let raw = STANDARD.decode(&state_token).map_err(|_| {
                StoreError::new(
                    "ErrorInvalidSyncStateData",
                    "Invalid synchronization state data.",
                )
            })?;
            Some(
                String::from_utf8_lossy(&raw)
                    .strip_prefix("sim-sync:")
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        StoreError::new(
                            "ErrorInvalidSyncStateData",
                            "Invalid synchronization state data.",
                        )
                    })?,
            )
        };
        let (mailbox, r) = self.folder_target(folder_el)?;
        let body = self.with(&mailbox, |data, _| {
            let folder = lookup_folder(data, &r)?.id.clone();
            let mut changes = Vec::new();
            let mut last_seq = since.unwrap_or(0);
            match since {
                None => {
                    last_seq = data.changes.last().map_or(0, |c| c.seq);
                    let mut items: Vec<&Item> = data.items.values().filter(|i| i.folder == folder).collect();
                    items.sort_by(|a, b| a.received.cmp(&b.received));
                    for i in items {
                        changes.push(format!("<t:Create>{}</t:Create>", render_item(i, &shape)));
                    }
                }
                Some(seq) => {
                    for c in data.changes.iter().filter(|c| c.seq > seq && c.folder == folder) {
                        if changes.len() >= max {
                            break;
                        }
                        last_seq = c.seq;
                        let rendered = match c.kind {
                            ChangeKind::Created => data.items.get(&c.item).map(|i| format!("<t:Create>{}</t:Create>", render_item(i, &shape))),
                            ChangeKind::Modified => data.items.get(&c.item).map(|i| format!("<t:Update>{}</t:Update>", render_item(i, &shape))),
                            ChangeKind::Deleted => Some(format!("<t:Delete><t:ItemId Id=\"{}\"/></t:Delete>", c.item)),
                            ChangeKind::NewMail => None,
                        };
                        changes.extend(rendered);
                    }
                    if changes.len() < max {
                        last_seq = data.changes.last().map_or(last_seq, |c| c.seq.max(last_seq));
                    }
                }
            }
            let includes_last = changes.len() < max || since.is_none();
            let token = STANDARD.encode(format!("sim-sync:{last_seq}"));
            Ok(format!(
                "<m:SyncState>{token}</m:SyncState><m:IncludesLastItemInRange>{includes_last}</m:IncludesLastItemInRange><m:Changes>{}</m:Changes>",
                changes.concat()
            ))
        })?;
        Ok(vec![ok_msg("SyncFolderItems", &body)])
    }

    fn subscribe(&self, op: &Element) -> Result<Vec<String>, StoreError> {
        let Some(req) = op.child(M, "StreamingSubscriptionRequest") else {
            return Err(StoreError::new(
                "ErrorInvalidOperation",
                "Only streaming subscriptions are simulated.",
            ));
        };
        let mut folders = Vec::new();
        let mut mailbox = self.acting();
        if req.attr("SubscribeToAllFolders") != Some("true") {
            for el in req
                .child(T, "FolderIds")
                .into_iter()
                .flat_map(Element::elements)
            {
                let (m, r) = self.folder_target(el)?;
                mailbox = m.clone();
                folders.push(self.with(&m, |data, _| Ok(lookup_folder(data, &r)?.id.clone()))?);
            }
        }
        let event_types = req
            .child(T, "EventTypes")
            .map(|e| e.elements().map(Element::text).collect())
            .unwrap_or_default();
        let id = STANDARD.encode(format!("sub|{}|{}", mailbox, uuid::Uuid::new_v4().simple()));
        if let Ok(mut subs) = self.state.mailboxes.subscriptions.lock() {
            subs.insert(
                id.clone(),
                Subscription {
                    mailbox,
                    folders,
                    event_types,
                },
            );
        }
        Ok(vec![ok_msg(
            "Subscribe",
            &format!("<m:SubscriptionId>{id}</m:SubscriptionId>"),
        )])
    }

    fn unsubscribe(&self, op: &Element) -> Result<Vec<String>, StoreError> {
        let id = op
            .child(M, "SubscriptionId")
            .map(Element::text)
            .unwrap_or_default();
        let removed = self
            .state
            .mailboxes
            .subscriptions
            .lock()
            .map(|mut s| s.remove(&id).is_some())
            .unwrap_or(false);
        Ok(vec![if removed {
            ok_msg("Unsubscribe", "")
        } else {
            err_msg(
                "Unsubscribe",
                &StoreError::new(
                    "ErrorSubscriptionNotFound",
                    "The specified subscription was not found.",
                ),
            )
        }])
    }

    fn get_streaming_events(&self, op: &Element) -> OpOutcome {
        let ids: Vec<String> = op
            .child(M, "SubscriptionIds")
            .map(|s| s.elements().map(Element::text).collect())
            .unwrap_or_default();
        let minutes: u64 = op
            .child(M, "ConnectionTimeout")
            .and_then(|c| c.text().parse().ok())
            .unwrap_or(0);
        if !(1..=30).contains(&minutes) {
            return OpOutcome::Body(wrap(
                "GetStreamingEvents",
                &[err_msg(
                    "GetStreamingEvents",
                    &StoreError::new(
                        "ErrorInvalidArgument",
                        "ConnectionTimeout must be between 1 and 30 minutes.",
                    ),
                )],
            ));
        }
        let subs = self
            .state
            .mailboxes
            .subscriptions
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let acting = self.acting();
        let mut watched = Vec::new();
        for id in &ids {
            match subs.get(id) {
                Some(s) if s.mailbox == acting || self.check_access(&s.mailbox).is_ok() => {
                    watched.push((id.clone(), s.clone()))
                }
                _ => {
                    let env = stream_envelope(&format!(
                        "<m:GetStreamingEventsResponseMessage ResponseClass=\"Error\"><m:MessageText>The specified subscription is invalid.</m:MessageText><m:ResponseCode>ErrorInvalidSubscription</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:ErrorSubscriptionIds><m:SubscriptionId>{}</m:SubscriptionId></m:ErrorSubscriptionIds><m:ConnectionStatus>Closed</m:ConnectionStatus></m:GetStreamingEventsResponseMessage>",
                        escape(id)
                    ));
                    return OpOutcome::Stream(Box::pin(futures_util::stream::iter(vec![
                        Bytes::from(env),
                    ])));
                }
            }
        }
        let rx = self.state.mailboxes.subscribe();
        let heartbeat = self.state.config.streaming_heartbeat;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(minutes * 60);
        let first = tokio::time::Instant::now() + heartbeat;
        let state = (rx, watched, deadline, first, false);
        let stream = futures_util::stream::unfold(
            state,
            move |(mut rx, watched, deadline, mut next_beat, done)| async move {
                if done {
                    return None;
                }
                loop {
                    let wake = next_beat.min(deadline);
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake) => {
                            if tokio::time::Instant::now() >= deadline {
                                let env = stream_envelope(&ok_msg("GetStreamingEvents", "<m:ConnectionStatus>Closed</m:ConnectionStatus>"));
                                return Some((Bytes::from(env), (rx, watched, deadline, next_beat, true)));
                            }
                            next_beat += heartbeat;
                            let env = stream_envelope(&ok_msg("GetStreamingEvents", "<m:ConnectionStatus>OK</m:ConnectionStatus>"));
                            return Some((Bytes::from(env), (rx, watched, deadline, next_beat, false)));
                        }
                        change = rx.recv() => {
                            let Ok(change) = change else { continue };
                            let notes: String = watched
                                .iter()
                                .filter(|(_, s)| s.mailbox == change.mailbox && (s.folders.is_empty() || s.folders.contains(&change.folder)))
                                .filter_map(|(id, s)| {
                                    let event = match change.kind {
                                        ChangeKind::NewMail => "NewMailEvent",
                                        ChangeKind::Created => "CreatedEvent",
                                        ChangeKind::Modified => "ModifiedEvent",
                                        ChangeKind::Deleted => "DeletedEvent",
                                    };
                                    if !s.event_types.is_empty() && !s.event_types.iter().any(|t| format!("{t}Event") == event || t == event) {
                                        return None;
                                    }
                                    Some(format!(
                                        "<m:Notification><t:SubscriptionId>{id}</t:SubscriptionId><t:{event}><t:TimeStamp>{}</t:TimeStamp><t:ItemId Id=\"{}\" ChangeKey=\"{}\"/><t:ParentFolderId Id=\"{}\" ChangeKey=\"{}\"/></t:{event}></m:Notification>",
                                        change.at, change.item, change_key(1), change.folder, change_key(1)
                                    ))
                                })
                                .collect();
                            if notes.is_empty() {
                                continue;
                            }
                            let env = stream_envelope(&ok_msg("GetStreamingEvents", &format!("<m:Notifications>{notes}</m:Notifications><m:ConnectionStatus>OK</m:ConnectionStatus>")));
                            return Some((Bytes::from(env), (rx, watched, deadline, next_beat, false)));
                        }
                    }
                }
            },
        );
        OpOutcome::Stream(Box::pin(stream))
    }
}

/// One envelope of a streaming response: unprefixed `Envelope`, no XML declaration.
fn stream_envelope(message: &str) -> String {
    format!(
        "<Envelope xmlns=\"{NS_SOAP}\"><Header>{}</Header><Body>{}</Body></Envelope>",
        super::ews::server_version_info(),
        wrap("GetStreamingEvents", &[message.to_owned()])
    )
}

fn lookup_folder<'d>(data: &'d MailboxData, r: &FolderRef) -> Result<&'d Folder, StoreError> {
    match r {
        FolderRef::Distinguished(name) => data.distinguished(name).ok_or_else(folder_not_found),
        FolderRef::Id(id) => data.folders.get(id).ok_or_else(folder_not_found),
    }
}

fn paging(view: Option<&Element>) -> Result<(usize, usize), StoreError> {
    let Some(view) = view else {
        return Ok((0, usize::MAX));
    };
    let max: i64 = view
        .attr("MaxEntriesReturned")
        .map_or(Ok(i64::MAX), str::parse)
        .map_err(|_| invalid("MaxEntriesReturned is not a number."))?;
    if max <= 0 {
        return Err(invalid("MaxEntriesReturned must be greater than zero."));
    }
    let offset: i64 = view
        .attr("Offset")
        .map_or(Ok(0), str::parse)
        .map_err(|_| invalid("Offset is not a number."))?;
    if offset < 0 {
        return Err(invalid("Offset must not be negative."));
    }
    Ok((offset as usize, usize::try_from(max).unwrap_or(usize::MAX)))
}

fn assign_attachment_ids(item: &mut Item, mailbox: &str, next: &mut dyn FnMut() -> u64) {
    for a in &mut item.attachments {
        a.id = make_id(IdType::Attachment, mailbox, next());
    }
}

fn addresses(el: Option<&Element>) -> Vec<Address> {
    el.into_iter()
        .flat_map(|list| list.children_named(T, "Mailbox"))
        .filter_map(|m| {
            let email = m.child(T, "EmailAddress")?.text();
            let name = m
                .child(T, "Name")
                .map(Element::text)
                .unwrap_or_else(|| mailbox::address_for(&email).name);
            Some(Address { name, email })
        })
        .collect()
}

/// A new item from a `t:Message` element (fields or MimeContent).
fn parse_message(el: &Element) -> Result<Item, StoreError> {
    let now = now_rfc3339();
    let mut item = Item {
        id: String::new(),
        change: 1,
        folder: String::new(),
        subject: el
            .child(T, "Subject")
            .map(Element::text)
            .unwrap_or_default(),
        from: el
            .child(T, "From")
            .and_then(|f| addresses(Some(f)).into_iter().next()),
        to: addresses(el.child(T, "ToRecipients")),
        cc: addresses(el.child(T, "CcRecipients")),
        body: el.child(T, "Body").map(Element::text).unwrap_or_default(),
        body_html: el.child(T, "Body").and_then(|b| b.attr("BodyType")) == Some("HTML"),
        is_read: el.child(T, "IsRead").is_some_and(|r| xs_bool(&r.text())),
        received: now.clone(),
        sent: now,
        attachments: Vec::new(),
        internet_message_id: format!("<{}@sim.example>", uuid::Uuid::new_v4().simple()),
        is_draft: true,
        mime: None,
        extended: Default::default(),
    };
    for a in el
        .child(T, "Attachments")
        .into_iter()
        .flat_map(|a| a.children_named(T, "FileAttachment"))
    {
        let content = STANDARD
            .decode(a.child(T, "Content").map(Element::text).unwrap_or_default())
            .map_err(|_| {
                StoreError::new(
                    "ErrorInvalidRequest",
                    "The attachment content is not valid base64.",
                )
            })?;
        item.attachments.push(Attachment {
            id: String::new(),
            name: a.child(T, "Name").map(Element::text).unwrap_or_default(),
            content_type: a
                .child(T, "ContentType")
                .map(Element::text)
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
            content,
        });
    }
    for p in el.children_named(T, "ExtendedProperty") {
        if let (Some(tag), Some(value)) = (
            p.child(T, "ExtendedFieldURI")
                .and_then(|u| u.attr("PropertyTag").or(u.attr("PropertyName"))),
            p.child(T, "Value"),
        ) {
            item.extended.insert(tag.to_owned(), value.text());
        }
    }
    if let Some(mime) = el.child(T, "MimeContent") {
        let raw = STANDARD
            .decode(mime.text().replace(['\r', '\n', ' '], ""))
            .map_err(|_| {
                StoreError::new(
                    "ErrorMimeContentInvalidBase64String",
                    "The MIME content is not a valid base64 string.",
                )
            })?;
        apply_mime(&mut item, &raw);
        item.mime = Some(raw);
    }
    Ok(item)
}

/// Takes Subject, From, To and the text body from an RFC 5322 message.
fn apply_mime(item: &mut Item, raw: &[u8]) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .unwrap_or((&text, ""));
    let mut current: Option<(String, String)> = None;
    let mut headers = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = current.as_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some(h) = current.take() {
            headers.push(h);
        }
        if let Some((k, v)) = line.split_once(':') {
            current = Some((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    headers.extend(current);
    let parse_addrs = |v: &str| -> Vec<Address> {
        v.split(',')
            .filter_map(|part| {
                let part = part.trim();
                let email = match (part.find('<'), part.find('>')) {
                    (Some(a), Some(b)) if a < b => part[a + 1..b].to_owned(),
                    _ => part.to_owned(),
                };
                if !email.contains('@') {
                    return None;
                }
                let name = part
                    .split('<')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .trim_matches('"')
                    .to_owned();
                Some(Address {
                    name: if name.is_empty() {
                        mailbox::address_for(&email).name
                    } else {
                        name
                    },
                    email,
                })
            })
            .collect()
    };
    for (k, v) in headers {
        match k.as_str() {
            "subject" => item.subject = v,
            "from" => item.from = parse_addrs(&v).into_iter().next(),
            "to" => item.to = parse_addrs(&v),
            "cc" => item.cc = parse_addrs(&v),
            "message-id" => item.internet_message_id = v,
            _ => {}
        }
    }
    item.body = body.trim_end().to_owned();
}

/// An `xs:boolean`: `true`/`1` or `false`/`0` (exchangelib writes `1`).
fn xs_bool(text: &str) -> bool {
    matches!(text.trim(), "true" | "1")
}

fn apply_update(item: &mut Item, update: &Element) {
    let field = update
        .child(T, "FieldURI")
        .and_then(|f| f.attr("FieldURI"))
        .unwrap_or_default();
    let set = update.local == "SetItemField" || update.local == "AppendToItemField";
    let value_el = update
        .elements()
        .find(|e| e.local == "Message" || e.local == "Item");
    let value = |name: &str| value_el.and_then(|v| v.child(T, name)).map(Element::text);
    match (field, set) {
        ("message:IsRead", true) => item.is_read = value("IsRead").is_some_and(|v| xs_bool(&v)),
        ("item:Subject", true) => item.subject = value("Subject").unwrap_or_default(),
        ("item:Subject", false) => item.subject.clear(),
        ("item:Body", true) => item.body = value("Body").unwrap_or_default(),
        _ => {
            if let Some(uri) = update.child(T, "ExtendedFieldURI") {
                let tag = uri
                    .attr("PropertyTag")
                    .or(uri.attr("PropertyName"))
                    .unwrap_or_default()
                    .to_owned();
                let v = value_el
                    .and_then(|v| v.path(&[(T, "ExtendedProperty"), (T, "Value")]))
                    .map(Element::text);
                match (set, v) {
                    (true, Some(v)) => {
                        item.extended.insert(tag, v);
                    }
                    _ => {
                        item.extended.remove(&tag);
                    }
                }
            }
        }
    }
}

/// Evaluates a restriction on an item (a subset of EWS search expressions).
fn matches(r: &Element, item: &Item) -> bool {
    let operand = |r: &Element| -> (String, String) {
        let field = r
            .child(T, "FieldURI")
            .and_then(|f| f.attr("FieldURI"))
            .unwrap_or_default()
            .to_owned();
        let constant = r
            .path(&[(T, "FieldURIOrConstant"), (T, "Constant")])
            .or_else(|| r.child(T, "Constant"))
            .and_then(|c| c.attr("Value"))
            .unwrap_or_default()
            .to_owned();
        (field, constant)
    };
    let value_of = |field: &str| -> Option<String> {
        match field {
            "item:Subject" => Some(item.subject.clone()),
            "item:DateTimeReceived" => Some(item.received.clone()),
            "message:IsRead" => Some(item.is_read.to_string()),
            "item:HasAttachments" => Some((!item.attachments.is_empty()).to_string()),
            _ => None,
        }
    };
    match r.local.as_str() {
        "And" => r.elements().all(|c| matches(c, item)),
        "Or" => r.elements().any(|c| matches(c, item)),
        "Not" => r.elements().next().is_none_or(|c| !matches(c, item)),
        "Contains" => {
            let (field, constant) = operand(r);
            value_of(&field).is_none_or(|v| v.to_lowercase().contains(&constant.to_lowercase()))
        }
        "IsEqualTo"
        | "IsNotEqualTo"
        | "IsGreaterThan"
        | "IsGreaterThanOrEqualTo"
        | "IsLessThan"
        | "IsLessThanOrEqualTo" => {
            let (field, constant) = operand(r);
            let Some(v) = value_of(&field) else {
                return true;
            };
            let ord = v.as_str().cmp(constant.as_str());
            match r.local.as_str() {
                "IsEqualTo" => v.eq_ignore_ascii_case(&constant),
                "IsNotEqualTo" => !v.eq_ignore_ascii_case(&constant),
                "IsGreaterThan" => ord.is_gt(),
                "IsGreaterThanOrEqualTo" => ord.is_ge(),
                "IsLessThan" => ord.is_lt(),
                _ => ord.is_le(),
            }
        }
        _ => true,
    }
}
