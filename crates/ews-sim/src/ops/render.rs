//! Property shapes (`ItemShape`/`FolderShape`) and rendering of folders and items as `t:` XML.
//!
//! Element order follows types.xsd (the EWS Managed API reads some types in schema order).
//! Extended MAPI properties are answered for the few tags DavMail and exchangelib rely on
//! (IMAP UID, flags, size, subject, container class, counts); others are omitted, which is what
//! Exchange does for properties that are not set.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::OpContext;
use super::common::{T, bad_attr, bool_text, fmt_time, required};
use crate::mailbox::{Address, BodyType, Folder, FolderKind, Item, MailboxData, mime};
use crate::xml::Element;
use ews_gateway_core::soap::escape;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Base {
    IdOnly,
    Default,
    All,
}

/// A requested extended property.
#[derive(Debug, Clone)]
pub(super) struct ExtRequest {
    pub attrs: Vec<(String, String)>,
    pub tag: Option<u32>,
}

/// A parsed `ItemShape` / `FolderShape`.
#[derive(Debug, Clone)]
pub(super) struct Shape {
    pub base: Base,
    pub fields: Vec<String>,
    pub ext: Vec<ExtRequest>,
    pub mime: bool,
    pub body_type: Option<String>,
}

impl Shape {
    fn has(&self, uri: &str) -> bool {
        self.fields.iter().any(|f| f.eq_ignore_ascii_case(uri))
    }

    fn want(&self, uri: &str, default: bool, all: bool) -> bool {
        self.has(uri)
            || match self.base {
                Base::IdOnly => false,
                Base::Default => default,
                Base::All => all,
            }
    }
}

/// Parses the shape element `name` (`ItemShape`, `FolderShape`) under `op`; required.
pub(super) fn parse_shape(op: &Element, ns: &str, name: &str) -> Result<Shape, super::OpOutcome> {
    let el = required(op, ns, name)?;
    let base_el = required(el, T, "BaseShape")?;
    let base = match base_el.text().as_str() {
        "IdOnly" => Base::IdOnly,
        "Default" => Base::Default,
        "AllProperties" => Base::All,
        other => return Err(bad_attr(base_el, "BaseShape", other)),
    };
    let mut shape = Shape {
        base,
        fields: Vec::new(),
        ext: Vec::new(),
        mime: el
            .child(T, "IncludeMimeContent")
            .is_some_and(|e| e.text() == "true" || e.text() == "1"),
        body_type: el.child(T, "BodyType").map(Element::text),
    };
    if let Some(add) = el.child(T, "AdditionalProperties") {
        for p in add.elements() {
            match p.local.as_str() {
                "FieldURI" => {
                    if let Some(uri) = p.attr("FieldURI") {
                        shape.fields.push(uri.to_owned());
                    }
                }
                "ExtendedFieldURI" => shape.ext.push(ext_request(p)),
                _ => {}
            }
        }
    }
    Ok(shape)
}

/// The attributes and property tag of an `ExtendedFieldURI`.
pub(super) fn ext_request(p: &Element) -> ExtRequest {
    ExtRequest {
        attrs: p
            .attrs
            .iter()
            .filter(|a| a.ns.is_none())
            .map(|a| (a.local.clone(), a.value.clone()))
            .collect(),
        tag: p.attr("PropertyTag").and_then(parse_tag),
    }
}

/// Parses a `PropertyTag` (`0x0e23` or decimal).
pub(super) fn parse_tag(text: &str) -> Option<u32> {
    let t = text.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

fn ext_xml(req: &ExtRequest, value: &str) -> String {
    let attrs: String = req
        .attrs
        .iter()
        .map(|(k, v)| format!(" {}=\"{}\"", escape(k), escape(v)))
        .collect();
    format!(
        "<t:ExtendedProperty><t:ExtendedFieldURI{attrs}/><t:Value>{}</t:Value></t:ExtendedProperty>",
        escape(value)
    )
}

/// `t:FolderId`.
pub(super) fn folder_id_xml(local: &str, f: &Folder) -> String {
    format!(
        "<t:{local} Id=\"{}\" ChangeKey=\"{}\"/>",
        escape(&f.id),
        crate::mailbox::change_key(f.version)
    )
}

/// A folder in the requested shape.
pub(super) fn folder_xml(mbx: &MailboxData, f: &Folder, shape: &Shape) -> String {
    let el = f.kind.element();
    let total = mbx.items_in(&f.id).count();
    let unread = mbx.items_in(&f.id).filter(|i| !i.msg.is_read).count();
    let children = mbx.children(&f.id).count();
    let mut out = format!("<t:{el}>{}", folder_id_xml("FolderId", f));
    if shape.want("folder:ParentFolderId", false, true)
        && let Some(parent) = f.parent.as_deref().and_then(|p| mbx.folder(p))
    {
        out.push_str(&folder_id_xml("ParentFolderId", parent));
    }
    if shape.want("folder:FolderClass", false, true)
        && let Some(class) = &f.class
    {
        out.push_str(&format!("<t:FolderClass>{}</t:FolderClass>", escape(class)));
    }
    if shape.want("folder:DisplayName", true, true) {
        out.push_str(&format!(
            "<t:DisplayName>{}</t:DisplayName>",
            escape(&f.display_name)
        ));
    }
    if shape.want("folder:TotalCount", true, true) {
        out.push_str(&format!("<t:TotalCount>{total}</t:TotalCount>"));
    }
    if shape.want("folder:ChildFolderCount", true, true) {
        out.push_str(&format!(
            "<t:ChildFolderCount>{children}</t:ChildFolderCount>"
        ));
    }
    for req in &shape.ext {
        let value = match req.tag {
            Some(0x3613) => f.class.clone(),
            Some(0x3001) => Some(f.display_name.clone()),
            Some(0x3602) => Some(total.to_string()),
            Some(0x3603) => Some(unread.to_string()),
            Some(0x360a) => Some(bool_text(children > 0).to_owned()),
            _ => None,
        };
        if let Some(v) = value {
            out.push_str(&ext_xml(req, &v));
        }
    }
    let has_unread = matches!(f.kind, FolderKind::Generic | FolderKind::Tasks);
    if has_unread && shape.want("folder:UnreadCount", true, true) {
        out.push_str(&format!("<t:UnreadCount>{unread}</t:UnreadCount>"));
    }
    out.push_str(&format!("</t:{el}>"));
    out
}

/// `t:Mailbox` of an address.
pub(super) fn mailbox_xml(ctx: &OpContext, a: &Address) -> String {
    let kind = if super::common::tenant_mailbox(ctx, &a.email).is_some() {
        "Mailbox"
    } else {
        "OneOff"
    };
    format!(
        "<t:Mailbox><t:Name>{}</t:Name><t:EmailAddress>{}</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType><t:MailboxType>{kind}</t:MailboxType></t:Mailbox>",
        escape(&a.name),
        escape(&a.email)
    )
}

fn recipients(ctx: &OpContext, local: &str, list: &[Address]) -> String {
    let inner: String = list.iter().map(|a| mailbox_xml(ctx, a)).collect();
    format!("<t:{local}>{inner}</t:{local}>")
}

fn display_list(list: &[Address]) -> String {
    list.iter()
        .map(|a| a.name.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// `t:ItemId`.
pub(super) fn item_id_xml(item: &Item) -> String {
    format!(
        "<t:ItemId Id=\"{}\" ChangeKey=\"{}\"/>",
        escape(&item.id),
        item.change_key()
    )
}

/// PR_MESSAGE_FLAGS as MAPI defines it: read, unsent, has attachments.
pub(super) fn message_flags(item: &Item) -> u32 {
    let mut flags = 0;
    if item.msg.is_read {
        flags |= 0x1;
    }
    if item.msg.is_draft {
        flags |= 0x8;
    }
    if !item.msg.attachments.is_empty() {
        flags |= 0x10;
    }
    flags
}

/// The body converted to the requested `BodyType` (`Best` keeps the stored one).
fn body_as(item: &Item, wanted: Option<&str>) -> (String, &'static str) {
    match (item.msg.body_type, wanted) {
        (BodyType::Html, Some("Text")) => (strip_tags(&item.msg.body), "Text"),
        (BodyType::Text, Some("HTML")) => (
            format!(
                "<html><body>{}</body></html>",
                escape(&item.msg.body).replace('\n', "<br>")
            ),
            "HTML",
        ),
        (BodyType::Html, _) => (item.msg.body.clone(), "HTML"),
        (BodyType::Text, _) => (item.msg.body.clone(), "Text"),
    }
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
}

/// `t:Attachments` without content (content comes from GetAttachment).
pub(super) fn attachments_summary(item: &Item) -> String {
    let mut out = String::from("<t:Attachments>");
    for a in &item.msg.attachments {
        out.push_str(&format!(
            "<t:FileAttachment><t:AttachmentId Id=\"{}\"/><t:Name>{}</t:Name><t:ContentType>{}</t:ContentType><t:Size>{}</t:Size><t:LastModifiedTime>{}</t:LastModifiedTime><t:IsInline>{}</t:IsInline><t:IsContactPhoto>false</t:IsContactPhoto></t:FileAttachment>",
            escape(&a.id),
            escape(&a.name),
            escape(&a.content_type),
            a.content.len(),
            fmt_time(a.modified),
            bool_text(a.is_inline)
        ));
    }
    out.push_str("</t:Attachments>");
    out
}

/// An item as `t:Message` in the requested shape; `find` applies FindItem's limits (no
/// MIME, body or attachments unless named).
pub(super) fn item_xml(
    ctx: &OpContext,
    mbx: &MailboxData,
    item: &Item,
    shape: &Shape,
    find: bool,
) -> String {
    let m = &item.msg;
    let get = !find;
    let mut o = String::from("<t:Message>");
    if get && (shape.mime || shape.has("item:MimeContent")) {
        o.push_str(&format!(
            "<t:MimeContent CharacterSet=\"UTF-8\">{}</t:MimeContent>",
            STANDARD.encode(mime::render(m))
        ));
    }
    o.push_str(&item_id_xml(item));
    if shape.want("item:ParentFolderId", true, true)
        && let Some(f) = mbx.folder(&item.folder)
    {
        o.push_str(&folder_id_xml("ParentFolderId", f));
    }
    if shape.want("item:ItemClass", true, true) {
        o.push_str(&format!(
            "<t:ItemClass>{}</t:ItemClass>",
            escape(&m.item_class)
        ));
    }
    if shape.want("item:Subject", true, true) {
        o.push_str(&format!("<t:Subject>{}</t:Subject>", escape(&m.subject)));
    }
    if shape.want("item:Sensitivity", false, true) {
        o.push_str("<t:Sensitivity>Normal</t:Sensitivity>");
    }
    if shape.want("item:Body", get, get) {
        let (body, kind) = body_as(item, shape.body_type.as_deref());
        o.push_str(&format!(
            "<t:Body BodyType=\"{kind}\" IsTruncated=\"false\">{}</t:Body>",
            escape(&body)
        ));
    }
    if shape.want("item:Attachments", get, get) && !m.attachments.is_empty() {
        o.push_str(&attachments_summary(item));
    }
    if shape.want("item:DateTimeReceived", true, true) {
        o.push_str(&format!(
            "<t:DateTimeReceived>{}</t:DateTimeReceived>",
            fmt_time(m.received)
        ));
    }
    let size = mime::render(m).len();
    if shape.want("item:Size", true, true) {
        o.push_str(&format!("<t:Size>{size}</t:Size>"));
    }
    if shape.want("item:Categories", false, true) && !m.categories.is_empty() {
        o.push_str("<t:Categories>");
        for c in &m.categories {
            o.push_str(&format!("<t:String>{}</t:String>", escape(c)));
        }
        o.push_str("</t:Categories>");
    }
    if shape.want("item:Importance", true, true) {
        o.push_str(&format!(
            "<t:Importance>{}</t:Importance>",
            escape(&m.importance)
        ));
    }
    if shape.want("item:IsSubmitted", false, true) {
        o.push_str("<t:IsSubmitted>false</t:IsSubmitted>");
    }
    if shape.want("item:IsDraft", true, true) {
        o.push_str(&format!("<t:IsDraft>{}</t:IsDraft>", bool_text(m.is_draft)));
    }
    if shape.want("item:IsFromMe", false, true) {
        let me = m
            .from
            .as_ref()
            .is_some_and(|f| f.email.eq_ignore_ascii_case(&mbx.smtp));
        o.push_str(&format!("<t:IsFromMe>{}</t:IsFromMe>", bool_text(me)));
    }
    if shape.want("item:DateTimeSent", true, true)
        && let Some(sent) = m.sent
    {
        o.push_str(&format!(
            "<t:DateTimeSent>{}</t:DateTimeSent>",
            fmt_time(sent)
        ));
    }
    if shape.want("item:DateTimeCreated", false, true) {
        o.push_str(&format!(
            "<t:DateTimeCreated>{}</t:DateTimeCreated>",
            fmt_time(item.created)
        ));
    }
    if shape.want("item:DisplayCc", true, true) {
        o.push_str(&format!(
            "<t:DisplayCc>{}</t:DisplayCc>",
            escape(&display_list(&m.cc))
        ));
    }
    if shape.want("item:DisplayTo", true, true) {
        o.push_str(&format!(
            "<t:DisplayTo>{}</t:DisplayTo>",
            escape(&display_list(&m.to))
        ));
    }
    if shape.want("item:HasAttachments", true, true) {
        o.push_str(&format!(
            "<t:HasAttachments>{}</t:HasAttachments>",
            bool_text(!m.attachments.is_empty())
        ));
    }
    for req in &shape.ext {
        let value = match req.tag {
            Some(0x0037) => Some(m.subject.clone()),
            Some(0x0e07) => Some(message_flags(item).to_string()),
            Some(0x0e08) => Some(size.to_string()),
            Some(0x0e1b) => Some(bool_text(!m.attachments.is_empty()).to_owned()),
            Some(0x0e23) => Some(item.article.to_string()),
            Some(0x0e06) => Some(fmt_time(m.received)),
            Some(0x1035) => Some(m.internet_message_id.clone()),
            Some(0x3007) => Some(fmt_time(item.created)),
            Some(0x3008) => Some(fmt_time(item.modified)),
            _ => None,
        };
        if let Some(v) = value {
            o.push_str(&ext_xml(req, &v));
        }
    }
    if shape.want("item:LastModifiedTime", false, true) {
        o.push_str(&format!(
            "<t:LastModifiedTime>{}</t:LastModifiedTime>",
            fmt_time(item.modified)
        ));
    }
    if shape.want("item:ConversationId", true, true) {
        o.push_str(&format!(
            "<t:ConversationId Id=\"{}\"/>",
            escape(&m.conversation_id())
        ));
    }
    if shape.want("message:Sender", get, true)
        && let Some(s) = &m.sender
    {
        o.push_str(&format!("<t:Sender>{}</t:Sender>", mailbox_xml(ctx, s)));
    }
    if shape.want("message:ToRecipients", get, true) && !m.to.is_empty() {
        o.push_str(&recipients(ctx, "ToRecipients", &m.to));
    }
    if shape.want("message:CcRecipients", get, true) && !m.cc.is_empty() {
        o.push_str(&recipients(ctx, "CcRecipients", &m.cc));
    }
    if shape.want("message:BccRecipients", get, true) && !m.bcc.is_empty() {
        o.push_str(&recipients(ctx, "BccRecipients", &m.bcc));
    }
    if shape.want("message:IsReadReceiptRequested", false, true) {
        o.push_str("<t:IsReadReceiptRequested>false</t:IsReadReceiptRequested>");
    }
    if shape.want("message:IsDeliveryReceiptRequested", false, true) {
        o.push_str("<t:IsDeliveryReceiptRequested>false</t:IsDeliveryReceiptRequested>");
    }
    if shape.want("message:ConversationTopic", false, true) {
        o.push_str(&format!(
            "<t:ConversationTopic>{}</t:ConversationTopic>",
            escape(m.topic())
        ));
    }
    if shape.want("message:From", true, true)
        && let Some(f) = &m.from
    {
        o.push_str(&format!("<t:From>{}</t:From>", mailbox_xml(ctx, f)));
    }
    if shape.want("message:InternetMessageId", get, true) && !m.internet_message_id.is_empty() {
        o.push_str(&format!(
            "<t:InternetMessageId>{}</t:InternetMessageId>",
            escape(&m.internet_message_id)
        ));
    }
    if shape.want("message:IsRead", true, true) {
        o.push_str(&format!("<t:IsRead>{}</t:IsRead>", bool_text(m.is_read)));
    }
    o.push_str("</t:Message>");
    o
}
