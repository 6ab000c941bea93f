//! The simulator's EWS operations, called through `ops::dispatch` with parsed envelopes. Every
//! response is re-parsed with `sim::xml::parse` to prove it is well-formed and namespaced.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ews_gateway::sim::ops::{self, OpContext, OpOutcome};
use ews_gateway::sim::xml::{self, Element};
use ews_gateway::sim::{self, SimConfig, SimHandle, SimState};
use ews_gateway::soap::{NS_MESSAGES as M, NS_SOAP as S, NS_TYPES as T};
use futures_util::StreamExt as _;

const ALICE: &str = "alice@contoso.example";
const BOB: &str = "bob@contoso.example";
const SALES: &str = "sales@contoso.example";

async fn start_with(config: SimConfig) -> SimHandle {
    sim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

async fn start() -> SimHandle {
    start_with(SimConfig::builtin().unwrap()).await
}

fn ctx(state: &SimState, who: &str) -> OpContext {
    let dir = state.directory.read().unwrap();
    let tenant = dir.tenant("contoso.example").unwrap().clone();
    let acting = tenant.mailbox_by_primary(who).unwrap().clone();
    OpContext {
        tenant,
        acting,
        server_version: "Exchange2016".to_owned(),
        app_id: "11111111-2222-4333-8444-555555555555".to_owned(),
    }
}

fn op_of(body: &str) -> Element {
    let env = format!(
        r#"<s:Envelope xmlns:s="{S}" xmlns:m="{M}" xmlns:t="{T}"><s:Header><t:RequestServerVersion Version="Exchange2016"/></s:Header><s:Body>{body}</s:Body></s:Envelope>"#
    );
    let root = xml::parse(env.as_bytes()).unwrap();
    root.child(S, "Body")
        .unwrap()
        .elements()
        .next()
        .unwrap()
        .clone()
}

async fn outcome(state: &Arc<SimState>, who: &str, body: &str) -> OpOutcome {
    ops::dispatch(state, ctx(state, who), &op_of(body)).await
}

/// Calls an operation and returns the parsed response element (asserting its name).
async fn call(state: &Arc<SimState>, who: &str, body: &str) -> Element {
    let op = op_of(body);
    match ops::dispatch(state, ctx(state, who), &op).await {
        OpOutcome::Body(b) => {
            let el = xml::parse(b.as_bytes()).unwrap_or_else(|e| panic!("{e}: {b}"));
            assert!(el.is(M, &format!("{}Response", op.local)), "{b}");
            el
        }
        other => panic!("expected a body, got {other:?}"),
    }
}

async fn fault_code(state: &Arc<SimState>, who: &str, body: &str) -> String {
    match outcome(state, who, body).await {
        OpOutcome::Fault { code, .. } => code,
        other => panic!("expected a fault, got {other:?}"),
    }
}

fn messages(resp: &Element) -> Vec<&Element> {
    resp.child(M, "ResponseMessages")
        .unwrap()
        .elements()
        .collect()
}

fn code(msg: &Element) -> String {
    msg.child(M, "ResponseCode").unwrap().text()
}

fn single(resp: &Element) -> &Element {
    let msgs = messages(resp);
    assert_eq!(msgs.len(), 1);
    msgs[0]
}

fn descendants<'a>(el: &'a Element, local: &str, out: &mut Vec<&'a Element>) {
    for c in el.elements() {
        if c.local == local {
            out.push(c);
        }
        descendants(c, local, out);
    }
}

fn all<'a>(el: &'a Element, local: &str) -> Vec<&'a Element> {
    let mut out = Vec::new();
    descendants(el, local, &mut out);
    out
}

fn first<'a>(el: &'a Element, local: &str) -> &'a Element {
    all(el, local)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no {local} in {el:?}"))
}

fn text(el: &Element, local: &str) -> String {
    first(el, local).text()
}

fn dist(name: &str) -> String {
    format!(r#"<t:DistinguishedFolderId Id="{name}"/>"#)
}

fn dist_of(name: &str, mailbox: &str) -> String {
    format!(
        r#"<t:DistinguishedFolderId Id="{name}"><t:Mailbox><t:EmailAddress>{mailbox}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>"#
    )
}

fn find_items(folder: &str, extra: &str) -> String {
    format!(
        r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape>{extra}<m:ParentFolderIds>{folder}</m:ParentFolderIds></m:FindItem>"#
    )
}

/// Subjects found in a folder (newest first).
async fn subjects(state: &Arc<SimState>, who: &str, folder: &str) -> Vec<String> {
    let resp = call(state, who, &find_items(folder, "")).await;
    let msg = single(&resp);
    assert_eq!(code(msg), "NoError");
    all(msg, "Subject").iter().map(|s| s.text()).collect()
}

/// (Id, ChangeKey) of the first item with this subject.
async fn item_id(
    state: &Arc<SimState>,
    who: &str,
    folder: &str,
    subject: &str,
) -> (String, String) {
    let resp = call(state, who, &find_items(folder, "")).await;
    for m in all(&resp, "Message") {
        if m.child(T, "Subject").map(Element::text).as_deref() == Some(subject) {
            let id = m.child(T, "ItemId").unwrap();
            return (
                id.attr("Id").unwrap().to_owned(),
                id.attr("ChangeKey").unwrap().to_owned(),
            );
        }
    }
    panic!("no item {subject:?} in {folder}");
}

fn get_item(id: &str, shape: &str) -> String {
    format!(
        r#"<m:GetItem><m:ItemShape><t:BaseShape>{shape}</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{id}"/></m:ItemIds></m:GetItem>"#
    )
}

fn send_mail(disposition: &str, subject: &str, to: &str) -> String {
    format!(
        r#"<m:CreateItem MessageDisposition="{disposition}"><m:Items><t:Message><t:Subject>{subject}</t:Subject><t:Body BodyType="Text">Hello &amp; welcome</t:Body><t:ToRecipients><t:Mailbox><t:EmailAddress>{to}</t:EmailAddress></t:Mailbox><t:Mailbox><t:EmailAddress>someone@external.example</t:EmailAddress></t:Mailbox></t:ToRecipients></t:Message></m:Items></m:CreateItem>"#
    )
}

#[tokio::test]
async fn convert_id_answers_probes() {
    let h = start().await;
    let s = &h.state;
    // exchangelib's version probe: an error message is fine, but it must be a proper one.
    let resp = call(s, ALICE, r#"<m:ConvertId DestinationFormat="EntryId"><m:SourceIds><t:AlternateId Format="EwsId" Id="DUMMY" Mailbox="DUMMY"/></m:SourceIds></m:ConvertId>"#).await;
    let msg = single(&resp);
    assert_eq!(msg.attr("ResponseClass"), Some("Error"));
    let order: Vec<&str> = msg.elements().map(|e| e.local.as_str()).collect();
    assert_eq!(order, ["MessageText", "ResponseCode", "DescriptiveLinkKey"]);
    assert_eq!(code(msg), "ErrorInvalidSmtpAddress");
    // DavMail learns the user's address from the Mailbox attribute.
    let resp = call(s, BOB, r#"<m:ConvertId DestinationFormat="EwsId"><m:SourceIds><t:AlternateId Format="EwsId" Id="AQAbAGJsYWhAYmxhaC5jb20AAA==" Mailbox="blah@blah.com"/></m:SourceIds></m:ConvertId>"#).await;
    let msg = single(&resp);
    assert_eq!(code(msg), "NoError");
    let alt = msg.child(M, "AlternateId").unwrap();
    assert_eq!(alt.attr("Mailbox"), Some(BOB));
    assert_eq!(alt.attr("Format"), Some("EwsId"));
}

#[tokio::test]
async fn get_folder_shapes_and_errors() {
    let h = start().await;
    let s = &h.state;
    let body = |shape: &str, ids: &str| {
        format!(
            r#"<m:GetFolder><m:FolderShape><t:BaseShape>{shape}</t:BaseShape></m:FolderShape><m:FolderIds>{ids}</m:FolderIds></m:GetFolder>"#
        )
    };
    let resp = call(s, ALICE, &body("Default", &dist("inbox"))).await;
    let msg = single(&resp);
    assert_eq!(code(msg), "NoError");
    let folder = first(msg, "Folder");
    assert_eq!(text(folder, "DisplayName"), "Inbox");
    assert_eq!(text(folder, "TotalCount"), "3");
    assert_eq!(text(folder, "UnreadCount"), "2");
    assert_eq!(text(folder, "ChildFolderCount"), "0");
    let id = first(folder, "FolderId").attr("Id").unwrap().to_owned();

    // IdOnly by id, with an extra property and an extended one.
    let resp = call(
        s,
        ALICE,
        &format!(
            r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="folder:DisplayName"/><t:ExtendedFieldURI PropertyTag="0x3613" PropertyType="String"/></t:AdditionalProperties></m:FolderShape><m:FolderIds><t:FolderId Id="{id}"/></m:FolderIds></m:GetFolder>"#
        ),
    )
    .await;
    let folder = first(&resp, "Folder");
    assert_eq!(text(folder, "DisplayName"), "Inbox");
    assert!(all(folder, "TotalCount").is_empty());
    assert_eq!(text(folder, "Value"), "IPF.Note");

    let resp = call(
        s,
        ALICE,
        &body(
            "AllProperties",
            &format!("{}{}", dist("calendar"), dist("root")),
        ),
    )
    .await;
    let msgs = messages(&resp);
    assert_eq!(msgs.len(), 2);
    let cal = first(msgs[0], "CalendarFolder");
    assert_eq!(text(cal, "FolderClass"), "IPF.Appointment");
    assert_eq!(text(msgs[1], "ChildFolderCount"), "2");

    // Malformed, unknown, and another mailbox's folder id.
    let resp = call(s, ALICE, &body("IdOnly", r#"<t:FolderId Id="not-an-id"/>"#)).await;
    assert_eq!(code(single(&resp)), "ErrorInvalidIdMalformed");
    let unknown = ews_gateway::sim::mailbox::encode_id(
        ews_gateway::sim::mailbox::IdKind::Folder,
        999_999,
        ALICE,
    );
    let resp = call(
        s,
        ALICE,
        &body("IdOnly", &format!(r#"<t:FolderId Id="{unknown}"/>"#)),
    )
    .await;
    assert_eq!(code(single(&resp)), "ErrorFolderNotFound");
    let resp = call(
        s,
        BOB,
        &body("IdOnly", &format!(r#"<t:FolderId Id="{id}"/>"#)),
    )
    .await;
    assert_eq!(code(single(&resp)), "ErrorAccessDenied");
    let resp = call(s, ALICE, &body("IdOnly", &dist("nosuchfolder"))).await;
    assert_eq!(code(single(&resp)), "ErrorFolderNotFound");
}

#[tokio::test]
async fn delegate_rule_for_other_mailboxes() {
    let h = start().await;
    let s = &h.state;
    // alice is a delegate of sales; bob is not.
    assert_eq!(
        subjects(s, ALICE, &dist_of("inbox", SALES)).await,
        ["Order 7731"]
    );
    let resp = call(s, BOB, &find_items(&dist_of("inbox", SALES), "")).await;
    let msg = single(&resp);
    assert_eq!(code(msg), "ErrorAccessDenied");
    assert_eq!(
        msg.child(M, "MessageText").unwrap().text(),
        "Access is denied. Check credentials and try again."
    );
    // bob cannot reach alice's mailbox, nor use an item id from it.
    let resp = call(s, BOB, &find_items(&dist_of("inbox", ALICE), "")).await;
    assert_eq!(code(single(&resp)), "ErrorAccessDenied");
    let (id, _) = item_id(s, ALICE, &dist("inbox"), "Quarterly report").await;
    let resp = call(s, BOB, &get_item(&id, "IdOnly")).await;
    assert_eq!(code(single(&resp)), "ErrorAccessDenied");
    // A delegate may move an item out of the shared mailbox into her own; bob may not.
    let (order, _) = item_id(s, ALICE, &dist_of("inbox", SALES), "Order 7731").await;
    let mv = format!(
        r#"<m:MoveItem><m:ToFolderId>{}</m:ToFolderId><m:ItemIds><t:ItemId Id="{order}"/></m:ItemIds></m:MoveItem>"#,
        dist("inbox")
    );
    assert_eq!(code(single(&call(s, BOB, &mv).await)), "ErrorAccessDenied");
    assert_eq!(code(single(&call(s, ALICE, &mv).await)), "NoError");
    assert!(
        subjects(s, ALICE, &dist_of("inbox", SALES))
            .await
            .is_empty()
    );
    assert!(
        subjects(s, ALICE, &dist("inbox"))
            .await
            .contains(&"Order 7731".to_owned())
    );
    // An address outside the tenant.
    let resp = call(
        s,
        ALICE,
        &find_items(&dist_of("inbox", "nobody@contoso.example"), ""),
    )
    .await;
    let msg = single(&resp);
    assert_eq!(code(msg), "ErrorNonExistentMailbox");
    assert_eq!(text(msg, "Value"), "nobody@contoso.example");
    // The alias names the same mailbox as the primary address.
    let resp = call(
        s,
        ALICE,
        &find_items(&dist_of("inbox", "alice.anders@contoso.example"), ""),
    )
    .await;
    assert_eq!(code(single(&resp)), "NoError");
}

#[tokio::test]
async fn find_folder_shallow_deep_and_paging() {
    let h = start().await;
    let s = &h.state;
    let body = |traversal: &str, view: &str, parent: &str| {
        format!(
            r#"<m:FindFolder Traversal="{traversal}"><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>{view}<m:ParentFolderIds>{parent}</m:ParentFolderIds></m:FindFolder>"#
        )
    };
    let resp = call(s, ALICE, &body("Shallow", "", &dist("msgfolderroot"))).await;
    let names: Vec<String> = all(&resp, "DisplayName").iter().map(|e| e.text()).collect();
    assert!(names.contains(&"Inbox".to_owned()) && names.contains(&"Projects".to_owned()));
    assert!(!names.contains(&"Top of Information Store".to_owned()));
    let root = first(&resp, "RootFolder");
    assert_eq!(
        root.attr("TotalItemsInView"),
        Some(names.len().to_string().as_str())
    );

    let resp = call(s, ALICE, &body("Deep", "", &dist("root"))).await;
    let deep: Vec<String> = all(&resp, "DisplayName").iter().map(|e| e.text()).collect();
    assert!(
        deep.contains(&"Projects".to_owned())
            && deep.contains(&"Top of Information Store".to_owned())
    );

    let resp = call(
        s,
        ALICE,
        &body(
            "Shallow",
            r#"<m:IndexedPageFolderView MaxEntriesReturned="4" Offset="2" BasePoint="Beginning"/>"#,
            &dist("msgfolderroot"),
        ),
    )
    .await;
    let root = first(&resp, "RootFolder");
    assert_eq!(root.attr("IndexedPagingOffset"), Some("6"));
    assert_eq!(root.attr("IncludesLastItemInRange"), Some("false"));
    assert_eq!(all(&resp, "DisplayName").len(), 4);
    assert_eq!(
        fault_code(s, ALICE, &body("Sideways", "", &dist("root"))).await,
        "ErrorSchemaValidation"
    );
}

/// FindFolder as DavMail sends it: mail folders only (class restriction), and a folder by name.
#[tokio::test]
async fn find_folder_restrictions_on_class_and_name() {
    let h = start().await;
    let s = &h.state;
    let find = |restriction: &str| {
        format!(
            r#"<m:FindFolder Traversal="Shallow"><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="folder:DisplayName"/></t:AdditionalProperties></m:FolderShape><m:Restriction>{restriction}</m:Restriction><m:ParentFolderIds><t:DistinguishedFolderId Id="msgfolderroot"/></m:ParentFolderIds></m:FindFolder>"#
        )
    };
    let mail_only = r#"<t:Or><t:IsEqualTo><t:ExtendedFieldURI PropertyTag="0x3613" PropertyType="String"/><t:FieldURIOrConstant><t:Constant Value="IPF.Note"/></t:FieldURIOrConstant></t:IsEqualTo><t:Not><t:Exists><t:ExtendedFieldURI PropertyTag="0x3613" PropertyType="String"/></t:Exists></t:Not></t:Or>"#;
    let resp = call(s, ALICE, &find(mail_only)).await;
    let names: Vec<String> = all(&resp, "DisplayName").iter().map(|e| e.text()).collect();
    assert!(names.contains(&"Inbox".to_owned()) && names.contains(&"Projects".to_owned()));
    assert!(!names.contains(&"Calendar".to_owned()), "{names:?}");
    assert!(!names.contains(&"Contacts".to_owned()), "{names:?}");

    let by_name = |name: &str| {
        format!(
            r#"<t:IsEqualTo><t:FieldURI FieldURI="folder:DisplayName"/><t:FieldURIOrConstant><t:Constant Value="{name}"/></t:FieldURIOrConstant></t:IsEqualTo>"#
        )
    };
    let resp = call(s, ALICE, &find(&by_name("Projects"))).await;
    let names: Vec<String> = all(&resp, "DisplayName").iter().map(|e| e.text()).collect();
    assert_eq!(names, ["Projects"]);
    assert_eq!(
        first(&resp, "RootFolder").attr("TotalItemsInView"),
        Some("1")
    );
    let resp = call(s, ALICE, &find(&by_name("No such folder"))).await;
    assert!(all(&resp, "Folder").is_empty());
    assert_eq!(
        first(&resp, "RootFolder").attr("TotalItemsInView"),
        Some("0")
    );
}

fn create_folder(parent: &str, name: &str) -> String {
    format!(
        r#"<m:CreateFolder><m:ParentFolderId>{parent}</m:ParentFolderId><m:Folders><t:Folder><t:FolderClass>IPF.Note</t:FolderClass><t:DisplayName>{name}</t:DisplayName></t:Folder></m:Folders></m:CreateFolder>"#
    )
}

fn delete_folder(kind: &str, folder: &str) -> String {
    format!(
        r#"<m:DeleteFolder DeleteType="{kind}"><m:FolderIds>{folder}</m:FolderIds></m:DeleteFolder>"#
    )
}

async fn child_names(s: &Arc<SimState>, parent: &str) -> Vec<String> {
    let resp = call(
        s,
        ALICE,
        &format!(
            r#"<m:FindFolder Traversal="Shallow"><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:ParentFolderIds>{parent}</m:ParentFolderIds></m:FindFolder>"#
        ),
    )
    .await;
    all(&resp, "DisplayName").iter().map(|e| e.text()).collect()
}

#[tokio::test]
async fn create_folder_then_use_and_delete_it() {
    let h = start().await;
    let s = &h.state;
    let resp = call(
        s,
        ALICE,
        &create_folder(&dist("msgfolderroot"), "Archive 2026"),
    )
    .await;
    let msg = single(&resp);
    assert_eq!(code(msg), "NoError");
    let id = first(msg, "FolderId").attr("Id").unwrap().to_owned();
    assert!(first(msg, "FolderId").attr("ChangeKey").is_some());
    assert!(
        child_names(s, &dist("msgfolderroot"))
            .await
            .contains(&"Archive 2026".to_owned())
    );
    let folder = format!(r#"<t:FolderId Id="{id}"/>"#);
    let r = call(s, ALICE, &format!(r#"<m:GetFolder><m:FolderShape><t:BaseShape>AllProperties</t:BaseShape></m:FolderShape><m:FolderIds>{folder}</m:FolderIds></m:GetFolder>"#)).await;
    assert_eq!(text(&r, "DisplayName"), "Archive 2026");
    assert_eq!(text(&r, "FolderClass"), "IPF.Note");

    // Same name under the same parent, in any letter case: refused.
    let r = call(
        s,
        ALICE,
        &create_folder(&dist("msgfolderroot"), "archive 2026"),
    )
    .await;
    assert_eq!(code(single(&r)), "ErrorFolderExists");
    // A subfolder, and an item inside it.
    let r = call(s, ALICE, &create_folder(&folder, "Q1")).await;
    assert_eq!(code(single(&r)), "NoError");
    let sub = first(&r, "FolderId").attr("Id").unwrap().to_owned();
    let sub_folder = format!(r#"<t:FolderId Id="{sub}"/>"#);
    let (item, _) = item_id(s, ALICE, &dist("inbox"), "Quarterly report").await;
    let r = call(s, ALICE, &format!(r#"<m:MoveItem><m:ToFolderId>{sub_folder}</m:ToFolderId><m:ItemIds><t:ItemId Id="{item}"/></m:ItemIds></m:MoveItem>"#)).await;
    assert_eq!(code(single(&r)), "NoError");
    let moved = first(&r, "ItemId").attr("Id").unwrap().to_owned();
    assert_eq!(subjects(s, ALICE, &sub_folder).await, ["Quarterly report"]);

    // Distinguished folders cannot be deleted; bad delete types are schema errors.
    let r = call(s, ALICE, &delete_folder("HardDelete", &dist("inbox"))).await;
    assert_eq!(code(single(&r)), "ErrorDeleteDistinguishedFolder");
    assert_eq!(
        fault_code(s, ALICE, &delete_folder("Shred", &folder)).await,
        "ErrorSchemaValidation"
    );

    // MoveToDeletedItems keeps the folder (under Deleted Items); HardDelete removes it with its
    // subfolders and their items.
    let r = call(s, ALICE, &delete_folder("MoveToDeletedItems", &folder)).await;
    assert_eq!(code(single(&r)), "NoError");
    assert!(
        !child_names(s, &dist("msgfolderroot"))
            .await
            .contains(&"Archive 2026".to_owned())
    );
    assert_eq!(
        child_names(s, &dist("deleteditems")).await,
        ["Archive 2026"]
    );
    let r = call(s, ALICE, &delete_folder("HardDelete", &folder)).await;
    assert_eq!(code(single(&r)), "NoError");
    assert!(child_names(s, &dist("deleteditems")).await.is_empty());
    let r = call(s, ALICE, &get_item(&moved, "IdOnly")).await;
    assert_eq!(code(single(&r)), "ErrorItemNotFound");
    let r = call(s, ALICE, &delete_folder("HardDelete", &sub_folder)).await;
    assert_eq!(code(single(&r)), "ErrorFolderNotFound");
    // Bob cannot create folders in alice's mailbox.
    let r = call(s, BOB, &create_folder(&dist_of("inbox", ALICE), "Mine now")).await;
    assert_ne!(code(single(&r)), "NoError");
}

#[tokio::test]
async fn find_item_pages_are_disjoint() {
    let h = start().await;
    let s = &h.state;
    let page = |offset: u32, max: i32| {
        find_items(
            &dist("inbox"),
            &format!(
                r#"<m:IndexedPageItemView MaxEntriesReturned="{max}" Offset="{offset}" BasePoint="Beginning"/>"#
            ),
        )
    };
    let r1 = call(s, ALICE, &page(0, 2)).await;
    let root1 = first(&r1, "RootFolder");
    assert_eq!(root1.attr("IndexedPagingOffset"), Some("2"));
    assert_eq!(root1.attr("TotalItemsInView"), Some("3"));
    assert_eq!(root1.attr("IncludesLastItemInRange"), Some("false"));
    let r2 = call(s, ALICE, &page(2, 2)).await;
    let root2 = first(&r2, "RootFolder");
    assert_eq!(root2.attr("IndexedPagingOffset"), Some("3"));
    assert_eq!(root2.attr("IncludesLastItemInRange"), Some("true"));
    let ids = |r: &Element| -> Vec<String> {
        all(r, "ItemId")
            .iter()
            .map(|i| i.attr("Id").unwrap().to_owned())
            .collect()
    };
    let (a, b) = (ids(&r1), ids(&r2));
    assert_eq!((a.len(), b.len()), (2, 1));
    assert!(a.iter().all(|x| !b.contains(x)));
    // Default order is newest first.
    assert_eq!(text(&r1, "Subject"), "Scanner: document 0042");

    let r = call(s, ALICE, &page(0, 0)).await;
    assert_eq!(code(single(&r)), "ErrorInvalidPagingMaxRows");
    let r = call(
        s,
        ALICE,
        &find_items(
            &dist("inbox"),
            r#"<m:FractionalPageItemView MaxEntriesReturned="5" Numerator="2" Denominator="3"/>"#,
        ),
    )
    .await;
    let root = first(&r, "RootFolder");
    assert_eq!(root.attr("NumeratorOffset"), Some("3"));
    assert_eq!(root.attr("AbsoluteDenominator"), Some("3"));
    assert_eq!(all(&r, "Message").len(), 1);
    // Missing required children fault with ErrorSchemaValidation.
    let missing_shape = r#"<m:FindItem Traversal="Shallow"><m:ParentFolderIds><t:DistinguishedFolderId Id="inbox"/></m:ParentFolderIds></m:FindItem>"#;
    assert_eq!(
        fault_code(s, ALICE, missing_shape).await,
        "ErrorSchemaValidation"
    );
    let missing_parent = r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape></m:FindItem>"#;
    assert_eq!(
        fault_code(s, ALICE, missing_parent).await,
        "ErrorSchemaValidation"
    );
}

#[tokio::test]
async fn find_item_restrictions_and_sort() {
    let h = start().await;
    let s = &h.state;
    let with = |restriction: &str, sort: &str| {
        find_items(
            &dist("inbox"),
            &format!("<m:Restriction>{restriction}</m:Restriction>{sort}"),
        )
    };
    let count = |r: &Element| all(r, "Message").len();
    let contains = r#"<t:Contains ContainmentMode="Substring" ContainmentComparison="IgnoreCase"><t:FieldURI FieldURI="item:Subject"/><t:Constant Value="REPORT"/></t:Contains>"#;
    let r = call(s, ALICE, &with(contains, "")).await;
    assert_eq!(count(&r), 1);
    assert_eq!(text(&r, "Subject"), "Quarterly report");
    let after = r#"<t:IsGreaterThan><t:FieldURI FieldURI="item:DateTimeReceived"/><t:FieldURIOrConstant><t:Constant Value="2026-11-03T00:00:00Z"/></t:FieldURIOrConstant></t:IsGreaterThan>"#;
    assert_eq!(count(&call(s, ALICE, &with(after, "")).await), 2);
    let before = after.replace("IsGreaterThan", "IsLessThan");
    assert_eq!(count(&call(s, ALICE, &with(&before, "")).await), 1);
    let and_not = format!("<t:And>{after}<t:Not>{contains}</t:Not></t:And>");
    assert_eq!(count(&call(s, ALICE, &with(&and_not, "")).await), 2);
    let or = format!(
        r#"<t:Or>{contains}<t:IsEqualTo><t:FieldURI FieldURI="message:IsRead"/><t:FieldURIOrConstant><t:Constant Value="true"/></t:FieldURIOrConstant></t:IsEqualTo></t:Or>"#
    );
    assert_eq!(count(&call(s, ALICE, &with(&or, "")).await), 2);
    // DavMail's SEARCH SUBJECT uses the MAPI subject tag.
    let mapi = r#"<t:Contains ContainmentMode="Substring" ContainmentComparison="IgnoreCase"><t:ExtendedFieldURI PropertyTag="0x0037" PropertyType="String"/><t:Constant Value="lunch"/></t:Contains>"#;
    assert_eq!(count(&call(s, ALICE, &with(mapi, "")).await), 1);
    // Unsupported restrictions are ignored, not refused.
    let odd = r#"<t:IsEqualTo><t:ExtendedFieldURI PropertyTag="0x7777" PropertyType="Integer"/><t:FieldURIOrConstant><t:Constant Value="1"/></t:FieldURIOrConstant></t:IsEqualTo>"#;
    assert_eq!(count(&call(s, ALICE, &with(odd, "")).await), 3);
    let asc = r#"<m:SortOrder><t:FieldOrder Order="Ascending"><t:FieldURI FieldURI="item:DateTimeReceived"/></t:FieldOrder></m:SortOrder>"#;
    let r = call(s, ALICE, &find_items(&dist("inbox"), asc)).await;
    assert_eq!(text(&r, "Subject"), "Quarterly report");
}

#[tokio::test]
async fn get_item_renders_message_properties() {
    let h = start().await;
    let s = &h.state;
    let (id, ck) = item_id(s, ALICE, &dist("inbox"), "Quarterly report").await;
    let r = call(s, ALICE, &get_item(&id, "Default")).await;
    let msg = single(&r);
    assert_eq!(code(msg), "NoError");
    let m = first(msg, "Message");
    assert_eq!(
        m.child(T, "ItemId").unwrap().attr("ChangeKey"),
        Some(ck.as_str())
    );
    assert_eq!(text(m, "ItemClass"), "IPM.Note");
    let body = m.child(T, "Body").unwrap();
    assert_eq!(body.attr("BodyType"), Some("Text"));
    assert_eq!(body.text(), "Hi Alice, the quarterly report is attached.");
    let from = m.child(T, "From").unwrap();
    assert_eq!(text(from, "Name"), "Bob Berg");
    assert_eq!(text(from, "EmailAddress"), BOB);
    assert_eq!(text(from, "RoutingType"), "SMTP");
    assert_eq!(
        text(m.child(T, "ToRecipients").unwrap(), "EmailAddress"),
        ALICE
    );
    assert_eq!(text(m, "HasAttachments"), "true");
    assert_eq!(text(m, "IsRead"), "false");
    assert_eq!(text(m, "DateTimeReceived"), "2026-11-02T09:15:00Z");
    assert!(first(m, "ConversationId").attr("Id").is_some());
    assert!(text(m, "InternetMessageId").starts_with('<'));
    assert!(text(m, "Size").parse::<u64>().unwrap() > 0);
    let att = first(m.child(T, "Attachments").unwrap(), "FileAttachment");
    assert_eq!(text(att, "Name"), "report.csv");
    assert!(att.child(T, "AttachmentId").unwrap().attr("Id").is_some());
    // Schema order: ItemId before Subject before Body before DateTimeReceived before From.
    let order: Vec<&str> = m.elements().map(|e| e.local.as_str()).collect();
    let pos = |n: &str| order.iter().position(|x| *x == n).unwrap();
    assert!(pos("ItemId") < pos("Subject") && pos("Subject") < pos("Body"));
    assert!(pos("Body") < pos("DateTimeReceived") && pos("HasAttachments") < pos("From"));
    assert!(pos("From") < pos("IsRead"));
    // IdOnly is only the id; HTML conversion on request.
    let r = call(s, ALICE, &get_item(&id, "IdOnly")).await;
    assert_eq!(first(&r, "Message").elements().count(), 1);
    let r = call(s, ALICE, &format!(r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:BodyType>HTML</t:BodyType><t:AdditionalProperties><t:FieldURI FieldURI="item:Body"/></t:AdditionalProperties></m:ItemShape><m:ItemIds><t:ItemId Id="{id}"/></m:ItemIds></m:GetItem>"#)).await;
    assert_eq!(first(&r, "Body").attr("BodyType"), Some("HTML"));
    // Unknown and malformed ids are per-item errors, next to successes.
    let unknown = ews_gateway::sim::mailbox::encode_id(
        ews_gateway::sim::mailbox::IdKind::Item,
        999_999,
        ALICE,
    );
    let r = call(s, ALICE, &format!(r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{unknown}"/><t:ItemId Id="%%%"/><t:ItemId Id="{id}"/></m:ItemIds></m:GetItem>"#)).await;
    let codes: Vec<String> = messages(&r).iter().map(|m| code(m)).collect();
    assert_eq!(
        codes,
        ["ErrorItemNotFound", "ErrorInvalidIdMalformed", "NoError"]
    );
}

#[tokio::test]
async fn send_delivers_to_recipient_and_saves_copy() {
    let h = start().await;
    let s = &h.state;
    let r = call(s, ALICE, &send_mail("SendAndSaveCopy", "Budget 2027", BOB)).await;
    let msg = single(&r);
    assert_eq!(code(msg), "NoError");
    assert!(
        subjects(s, BOB, &dist("inbox"))
            .await
            .contains(&"Budget 2027".to_owned())
    );
    assert_eq!(
        subjects(s, ALICE, &dist("sentitems")).await,
        ["Budget 2027"]
    );
    let (id, _) = item_id(s, BOB, &dist("inbox"), "Budget 2027").await;
    let r = call(s, BOB, &get_item(&id, "Default")).await;
    let m = first(&r, "Message");
    assert_eq!(text(m, "IsRead"), "false");
    assert_eq!(text(m.child(T, "From").unwrap(), "EmailAddress"), ALICE);
    assert_eq!(m.child(T, "Body").unwrap().text(), "Hello & welcome");
    // SendOnly keeps no copy.
    call(s, ALICE, &send_mail("SendOnly", "No copy", BOB)).await;
    assert!(
        subjects(s, BOB, &dist("inbox"))
            .await
            .contains(&"No copy".to_owned())
    );
    assert_eq!(subjects(s, ALICE, &dist("sentitems")).await.len(), 1);
    // No disposition for a message is a per-item error.
    let r = call(
        s,
        ALICE,
        &send_mail("SendOnly", "x", BOB).replace(r#" MessageDisposition="SendOnly""#, ""),
    )
    .await;
    assert_eq!(code(single(&r)), "ErrorMessageDispositionRequired");
    // Sending as someone who granted nothing is refused.
    let r = call(s, BOB, r#"<m:CreateItem MessageDisposition="SendOnly"><m:Items><t:Message><t:Subject>spoof</t:Subject><t:ToRecipients><t:Mailbox><t:EmailAddress>carol@contoso.example</t:EmailAddress></t:Mailbox></t:ToRecipients><t:From><t:Mailbox><t:EmailAddress>alice@contoso.example</t:EmailAddress></t:Mailbox></t:From></t:Message></m:Items></m:CreateItem>"#).await;
    assert_eq!(code(single(&r)), "ErrorSendAsDenied");
}

#[tokio::test]
async fn draft_then_send_item() {
    let h = start().await;
    let s = &h.state;
    let r = call(s, ALICE, &send_mail("SaveOnly", "Draft memo", BOB)).await;
    let msg = single(&r);
    let id = first(msg, "ItemId").attr("Id").unwrap().to_owned();
    assert_eq!(subjects(s, ALICE, &dist("drafts")).await, ["Draft memo"]);
    let r = call(s, ALICE, &get_item(&id, "AllProperties")).await;
    assert_eq!(text(&r, "IsDraft"), "true");
    assert!(
        !subjects(s, BOB, &dist("inbox"))
            .await
            .contains(&"Draft memo".to_owned())
    );
    let r = call(s, ALICE, &format!(r#"<m:SendItem SaveItemToFolder="true"><m:ItemIds><t:ItemId Id="{id}"/></m:ItemIds><m:SavedItemFolderId>{}</m:SavedItemFolderId></m:SendItem>"#, dist("sentitems"))).await;
    assert_eq!(code(single(&r)), "NoError");
    assert!(
        subjects(s, BOB, &dist("inbox"))
            .await
            .contains(&"Draft memo".to_owned())
    );
    assert!(subjects(s, ALICE, &dist("drafts")).await.is_empty());
    assert_eq!(subjects(s, ALICE, &dist("sentitems")).await, ["Draft memo"]);
    let (sent, _) = item_id(s, ALICE, &dist("sentitems"), "Draft memo").await;
    let r = call(s, ALICE, &get_item(&sent, "AllProperties")).await;
    assert_eq!(text(&r, "IsDraft"), "false");
    let bad = format!(
        r#"<m:SendItem SaveItemToFolder="maybe"><m:ItemIds><t:ItemId Id="{id}"/></m:ItemIds></m:SendItem>"#
    );
    assert_eq!(fault_code(s, ALICE, &bad).await, "ErrorSchemaValidation");
}

#[tokio::test]
async fn mime_content_round_trip() {
    let h = start().await;
    let s = &h.state;
    let raw = "From: \"Carol Chen\" <carol@contoso.example>\r\nTo: alice@contoso.example\r\nSubject: =?UTF-8?B?w4RwZmVs?= via IMAP\r\nDate: Tue, 03 Nov 2026 10:00:00 +0000\r\nMessage-ID: <imap-1@contoso.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nAppended body\r\n--b1\r\nContent-Type: text/plain; name=\"notes.txt\"\r\nContent-Disposition: attachment; filename=\"notes.txt\"\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b1--\r\n";
    let b64 = STANDARD.encode(raw);
    // DavMail's APPEND: SaveOnly into inbox with MimeContent and PR_MESSAGE_FLAGS (read).
    let r = call(s, ALICE, &format!(r#"<m:CreateItem MessageDisposition="SaveOnly"><m:SavedItemFolderId>{}</m:SavedItemFolderId><m:Items><t:Message><t:MimeContent>{b64}</t:MimeContent><t:ExtendedProperty><t:ExtendedFieldURI PropertyTag="0x0e07" PropertyType="Integer"/><t:Value>1</t:Value></t:ExtendedProperty></t:Message></m:Items></m:CreateItem>"#, dist("inbox"))).await;
    let msg = single(&r);
    assert_eq!(code(msg), "NoError");
    let id = first(msg, "ItemId").attr("Id").unwrap().to_owned();
    let r = call(s, ALICE, &format!(r#"<m:GetItem><m:ItemShape><t:BaseShape>Default</t:BaseShape><t:IncludeMimeContent>true</t:IncludeMimeContent><t:AdditionalProperties><t:ExtendedFieldURI PropertyTag="0x0e23" PropertyType="Integer"/></t:AdditionalProperties></m:ItemShape><m:ItemIds><t:ItemId Id="{id}"/></m:ItemIds></m:GetItem>"#)).await;
    let m = first(&r, "Message");
    let mc = m.child(T, "MimeContent").unwrap();
    assert_eq!(mc.attr("CharacterSet"), Some("UTF-8"));
    assert_eq!(STANDARD.decode(mc.text()).unwrap(), raw.as_bytes());
    assert_eq!(text(m, "Subject"), "Äpfel via IMAP");
    assert_eq!(text(m.child(T, "From").unwrap(), "Name"), "Carol Chen");
    assert_eq!(text(m, "IsRead"), "true");
    assert_eq!(text(m, "IsDraft"), "false");
    assert_eq!(text(m, "HasAttachments"), "true");
    assert_eq!(m.child(T, "Body").unwrap().text(), "Appended body");
    assert_eq!(text(m, "InternetMessageId"), "<imap-1@contoso.example>");
    assert!(text(m, "Value").parse::<u64>().unwrap() > 0);
    // A rendered message (not created from MIME) parses back to its properties.
    let (seeded, _) = item_id(s, ALICE, &dist("inbox"), "Quarterly report").await;
    let r = call(s, ALICE, &format!(r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:IncludeMimeContent>true</t:IncludeMimeContent></m:ItemShape><m:ItemIds><t:ItemId Id="{seeded}"/></m:ItemIds></m:GetItem>"#)).await;
    let mime = String::from_utf8(STANDARD.decode(text(&r, "MimeContent")).unwrap()).unwrap();
    assert!(mime.contains("Subject: Quarterly report\r\n"));
    assert!(mime.contains("From: \"Bob Berg\" <bob@contoso.example>"));
    assert!(mime.contains("filename=\"report.csv\""));
    // Garbage base64 is a per-item error.
    let r = call(s, ALICE, r#"<m:CreateItem MessageDisposition="SaveOnly"><m:Items><t:Message><t:MimeContent>!!!</t:MimeContent></t:Message></m:Items></m:CreateItem>"#).await;
    assert_eq!(code(single(&r)), "ErrorMimeContentConversionFailed");
}

#[tokio::test]
async fn update_item_changes_key_and_detects_conflicts() {
    let h = start().await;
    let s = &h.state;
    let (id, ck) = item_id(s, ALICE, &dist("inbox"), "Quarterly report").await;
    let update = |mode: &str, ck: &str, field: &str, value: &str| {
        format!(
            r#"<m:UpdateItem ConflictResolution="{mode}" MessageDisposition="SaveOnly"><m:ItemChanges><t:ItemChange><t:ItemId Id="{id}" ChangeKey="{ck}"/><t:Updates><t:SetItemField><t:FieldURI FieldURI="{field}"/><t:Message>{value}</t:Message></t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"#
        )
    };
    let r = call(
        s,
        ALICE,
        &update(
            "AutoResolve",
            &ck,
            "message:IsRead",
            "<t:IsRead>true</t:IsRead>",
        ),
    )
    .await;
    let msg = single(&r);
    assert_eq!(code(msg), "NoError");
    let new_ck = first(msg, "ItemId").attr("ChangeKey").unwrap().to_owned();
    assert_ne!(new_ck, ck);
    assert_eq!(text(msg, "Count"), "0");
    let r = call(s, ALICE, &get_item(&id, "Default")).await;
    assert_eq!(text(&r, "IsRead"), "true");
    // The old change key is stale now.
    let r = call(
        s,
        ALICE,
        &update(
            "NeverOverwrite",
            &ck,
            "item:Subject",
            "<t:Subject>Renamed</t:Subject>",
        ),
    )
    .await;
    assert_eq!(code(single(&r)), "ErrorIrresolvableConflict");
    let r = call(
        s,
        ALICE,
        &update(
            "NeverOverwrite",
            &new_ck,
            "item:Subject",
            "<t:Subject>Renamed</t:Subject>",
        ),
    )
    .await;
    assert_eq!(code(single(&r)), "NoError");
    let r = call(s, ALICE, &get_item(&id, "Default")).await;
    assert_eq!(text(&r, "Subject"), "Renamed");
    assert_eq!(
        fault_code(s, ALICE, &update("Sometimes", &ck, "item:Subject", "")).await,
        "ErrorSchemaValidation"
    );
}

#[tokio::test]
async fn delete_move_and_copy() {
    let h = start().await;
    let s = &h.state;
    let delete = |kind: &str, id: &str| {
        format!(
            r#"<m:DeleteItem DeleteType="{kind}"><m:ItemIds><t:ItemId Id="{id}"/></m:ItemIds></m:DeleteItem>"#
        )
    };
    let (id, _) = item_id(s, ALICE, &dist("inbox"), "Lunch on Friday?").await;
    let r = call(s, ALICE, &delete("MoveToDeletedItems", &id)).await;
    assert_eq!(code(single(&r)), "NoError");
    assert_eq!(
        subjects(s, ALICE, &dist("deleteditems")).await,
        ["Lunch on Friday?"]
    );
    assert_eq!(subjects(s, ALICE, &dist("inbox")).await.len(), 2);
    let (id, _) = item_id(s, ALICE, &dist("deleteditems"), "Lunch on Friday?").await;
    call(s, ALICE, &delete("HardDelete", &id)).await;
    assert!(subjects(s, ALICE, &dist("deleteditems")).await.is_empty());
    let r = call(s, ALICE, &get_item(&id, "IdOnly")).await;
    assert_eq!(code(single(&r)), "ErrorItemNotFound");
    assert_eq!(
        fault_code(s, ALICE, &delete("Shred", &id)).await,
        "ErrorSchemaValidation"
    );

    // Move into the custom folder: the item gets a new id, the old one is gone.
    let resp = call(s, ALICE, r#"<m:FindFolder Traversal="Shallow"><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:ParentFolderIds><t:DistinguishedFolderId Id="msgfolderroot"/></m:ParentFolderIds></m:FindFolder>"#).await;
    let projects = all(&resp, "Folder")
        .into_iter()
        .find(|f| text(f, "DisplayName") == "Projects")
        .map(|f| first(f, "FolderId").attr("Id").unwrap().to_owned())
        .unwrap();
    let (id, _) = item_id(s, ALICE, &dist("inbox"), "Quarterly report").await;
    let mv = |op: &str, id: &str| {
        format!(
            r#"<m:{op}><m:ToFolderId><t:FolderId Id="{projects}"/></m:ToFolderId><m:ItemIds><t:ItemId Id="{id}"/></m:ItemIds></m:{op}>"#
        )
    };
    let r = call(s, ALICE, &mv("MoveItem", &id)).await;
    let new_id = first(single(&r), "ItemId").attr("Id").unwrap().to_owned();
    assert_ne!(new_id, id);
    assert_eq!(
        code(single(&call(s, ALICE, &get_item(&id, "IdOnly")).await)),
        "ErrorItemNotFound"
    );
    let folder = format!(r#"<t:FolderId Id="{projects}"/>"#);
    assert_eq!(subjects(s, ALICE, &folder).await.len(), 2);
    // Attachments travel with the item.
    let r = call(s, ALICE, &get_item(&new_id, "Default")).await;
    assert_eq!(text(&r, "Name"), "report.csv");
    let (id, _) = item_id(s, ALICE, &dist("inbox"), "Scanner: document 0042").await;
    let r = call(s, ALICE, &mv("CopyItem", &id)).await;
    assert_eq!(code(single(&r)), "NoError");
    assert_eq!(subjects(s, ALICE, &folder).await.len(), 3);
    assert_eq!(subjects(s, ALICE, &dist("inbox")).await.len(), 1);
}

#[tokio::test]
async fn attachments_create_get_delete() {
    let h = start().await;
    let s = &h.state;
    // A seeded attachment.
    let (id, _) = item_id(s, ALICE, &dist("inbox"), "Quarterly report").await;
    let r = call(s, ALICE, &get_item(&id, "Default")).await;
    let att_id = first(&r, "AttachmentId").attr("Id").unwrap().to_owned();
    let get = |att: &str| {
        format!(
            r#"<m:GetAttachment><m:AttachmentIds><t:AttachmentId Id="{att}"/></m:AttachmentIds></m:GetAttachment>"#
        )
    };
    let r = call(s, ALICE, &get(&att_id)).await;
    let fa = first(single(&r), "FileAttachment");
    assert_eq!(text(fa, "Name"), "report.csv");
    assert_eq!(text(fa, "ContentType"), "text/csv");
    assert_eq!(
        STANDARD.decode(text(fa, "Content")).unwrap(),
        b"quarter,revenue\nQ3,1200\n"
    );
    assert_eq!(text(fa, "Size"), "24");
    // Another mailbox's attachment is refused.
    assert_eq!(
        code(single(&call(s, BOB, &get(&att_id)).await)),
        "ErrorAccessDenied"
    );

    // Create on a draft.
    let r = call(s, ALICE, &send_mail("SaveOnly", "With file", BOB)).await;
    let draft = first(&r, "ItemId").attr("Id").unwrap().to_owned();
    let content = STANDARD.encode([0u8, 159, 146, 150]);
    let r = call(s, ALICE, &format!(r#"<m:CreateAttachment><m:ParentItemId Id="{draft}"/><m:Attachments><t:FileAttachment><t:Name>blob.bin</t:Name><t:ContentType>application/octet-stream</t:ContentType><t:Content>{content}</t:Content></t:FileAttachment></m:Attachments></m:CreateAttachment>"#)).await;
    let msg = single(&r);
    assert_eq!(code(msg), "NoError");
    let aid = first(msg, "AttachmentId");
    assert_eq!(aid.attr("RootItemId"), Some(draft.as_str()));
    let new_att = aid.attr("Id").unwrap().to_owned();
    let r = call(s, ALICE, &get(&new_att)).await;
    assert_eq!(
        STANDARD.decode(text(&r, "Content")).unwrap(),
        [0u8, 159, 146, 150]
    );
    let r = call(s, ALICE, &get_item(&draft, "Default")).await;
    assert_eq!(text(&r, "HasAttachments"), "true");
    let r = call(s, ALICE, &format!(r#"<m:DeleteAttachment><m:AttachmentIds><t:AttachmentId Id="{new_att}"/></m:AttachmentIds></m:DeleteAttachment>"#)).await;
    let msg = single(&r);
    assert_eq!(code(msg), "NoError");
    assert_eq!(
        msg.child(M, "RootItemId").unwrap().attr("RootItemId"),
        Some(draft.as_str())
    );
    assert_eq!(
        code(single(&call(s, ALICE, &get(&new_att)).await)),
        "ErrorItemNotFound"
    );
    let r = call(s, ALICE, &get_item(&draft, "Default")).await;
    assert_eq!(text(&r, "HasAttachments"), "false");
}

#[tokio::test]
async fn resolve_names_against_the_tenant() {
    let h = start().await;
    let s = &h.state;
    let resolve = |entry: &str| {
        format!(
            r#"<m:ResolveNames ReturnFullContactData="true" SearchScope="ActiveDirectory"><m:UnresolvedEntry>{entry}</m:UnresolvedEntry></m:ResolveNames>"#
        )
    };
    let r = call(s, ALICE, &resolve("bob")).await;
    let msg = single(&r);
    assert_eq!(code(msg), "NoError");
    let set = msg.child(M, "ResolutionSet").unwrap();
    assert_eq!(set.attr("TotalItemsInView"), Some("1"));
    let mbx = first(set, "Mailbox");
    assert_eq!(text(mbx, "EmailAddress"), BOB);
    assert_eq!(text(mbx, "Name"), "Bob Berg");
    assert_eq!(text(mbx, "RoutingType"), "SMTP");
    let r = call(s, ALICE, &resolve("SMTP:alice.anders@contoso.example")).await;
    assert_eq!(text(&r, "EmailAddress"), ALICE);
    let r = call(s, ALICE, &resolve("a")).await;
    let msg = single(&r);
    assert_eq!(msg.attr("ResponseClass"), Some("Warning"));
    assert_eq!(code(msg), "ErrorNameResolutionMultipleResults");
    assert!(all(msg, "Resolution").len() >= 2);
    let r = call(s, ALICE, &resolve("zebra")).await;
    let msg = single(&r);
    assert_eq!(msg.attr("ResponseClass"), Some("Error"));
    assert_eq!(code(msg), "ErrorNameResolutionNoResults");
}

#[tokio::test]
async fn sync_folder_items_reports_only_changes() {
    let h = start().await;
    let s = &h.state;
    let sync = |state: &str, max: u32| {
        let state = if state.is_empty() {
            String::new()
        } else {
            format!("<m:SyncState>{state}</m:SyncState>")
        };
        format!(
            r#"<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="item:Subject"/></t:AdditionalProperties></m:ItemShape><m:SyncFolderId><t:DistinguishedFolderId Id="inbox"/></m:SyncFolderId>{state}<m:MaxChangesReturned>{max}</m:MaxChangesReturned></m:SyncFolderItems>"#
        )
    };
    let kinds = |r: &Element| -> Vec<String> {
        first(r, "Changes")
            .elements()
            .map(|e| e.local.clone())
            .collect()
    };
    let r = call(s, BOB, &sync("", 512)).await;
    let msg = single(&r);
    assert_eq!(code(msg), "NoError");
    assert_eq!(kinds(msg), ["Create"]);
    assert_eq!(text(msg, "IncludesLastItemInRange"), "true");
    let state1 = text(msg, "SyncState");
    // Nothing changed: nothing reported.
    let r = call(s, BOB, &sync(&state1, 512)).await;
    assert!(kinds(single(&r)).is_empty());
    // A delivery, a read flag change and a deletion.
    call(s, ALICE, &send_mail("SendOnly", "Sync me", BOB)).await;
    let (welcome, ck) = item_id(s, BOB, &dist("inbox"), "Welcome, Bob").await;
    call(s, BOB, &format!(r#"<m:UpdateItem ConflictResolution="AlwaysOverwrite"><m:ItemChanges><t:ItemChange><t:ItemId Id="{welcome}" ChangeKey="{ck}"/><t:Updates><t:SetItemField><t:FieldURI FieldURI="message:IsRead"/><t:Message><t:IsRead>true</t:IsRead></t:Message></t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"#)).await;
    let r = call(s, BOB, &sync(&state1, 512)).await;
    let msg = single(&r);
    let mut got = kinds(msg);
    got.sort();
    assert_eq!(got, ["Create", "Update"]);
    let state2 = text(msg, "SyncState");
    call(s, BOB, &format!(r#"<m:DeleteItem DeleteType="HardDelete"><m:ItemIds><t:ItemId Id="{welcome}"/></m:ItemIds></m:DeleteItem>"#)).await;
    let r = call(s, BOB, &sync(&state2, 512)).await;
    let msg = single(&r);
    assert_eq!(kinds(msg), ["Delete"]);
    assert_eq!(first(msg, "ItemId").attr("Id"), Some(welcome.as_str()));
    // Paging through a full sync one change at a time.
    let r = call(s, ALICE, &sync("", 1)).await;
    let msg = single(&r);
    assert_eq!(kinds(msg).len(), 1);
    assert_eq!(text(msg, "IncludesLastItemInRange"), "false");
    let mut state = text(msg, "SyncState");
    let mut seen = 1;
    loop {
        let r = call(s, ALICE, &sync(&state, 1)).await;
        let msg = single(&r);
        seen += kinds(msg).len();
        state = text(msg, "SyncState");
        if text(msg, "IncludesLastItemInRange") == "true" {
            break;
        }
    }
    assert_eq!(seen, 3);
    // A state from another folder, or garbage, is refused.
    let r = call(s, BOB, &sync("Z2FyYmFnZQ==", 512)).await;
    assert_eq!(code(single(&r)), "ErrorInvalidSyncStateData");
    assert_eq!(
        fault_code(s, BOB, &sync("", 0)).await,
        "ErrorSchemaValidation"
    );
}

/// Exchange reports a deletion only to a client that could have seen the item: a first sync (no
/// state) lists what is there, and an item created and removed between two syncs is not reported.
#[tokio::test]
async fn sync_folder_items_reports_deletions_only_of_items_seen() {
    let h = start().await;
    let s = &h.state;
    let sync = |state: &str| {
        let state = if state.is_empty() {
            String::new()
        } else {
            format!("<m:SyncState>{state}</m:SyncState>")
        };
        format!(
            r#"<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:SyncFolderId><t:DistinguishedFolderId Id="inbox"/></m:SyncFolderId>{state}<m:MaxChangesReturned>512</m:MaxChangesReturned></m:SyncFolderItems>"#
        )
    };
    let kinds = |r: &Element| -> Vec<String> {
        first(r, "Changes")
            .elements()
            .map(|e| e.local.clone())
            .collect()
    };
    let r = call(s, BOB, &sync("")).await;
    let state1 = text(single(&r), "SyncState");
    // Welcome moves out of the inbox; a new delivery arrives and is deleted again.
    let (welcome, _) = item_id(s, BOB, &dist("inbox"), "Welcome, Bob").await;
    call(s, BOB, &format!(r#"<m:MoveItem><m:ToFolderId><t:DistinguishedFolderId Id="junkemail"/></m:ToFolderId><m:ItemIds><t:ItemId Id="{welcome}"/></m:ItemIds></m:MoveItem>"#)).await;
    call(s, ALICE, &send_mail("SendOnly", "Short-lived", BOB)).await;
    let (short, _) = item_id(s, BOB, &dist("inbox"), "Short-lived").await;
    call(s, BOB, &format!(r#"<m:DeleteItem DeleteType="HardDelete"><m:ItemIds><t:ItemId Id="{short}"/></m:ItemIds></m:DeleteItem>"#)).await;
    // The earlier client sees Welcome deleted, and nothing of the short-lived item.
    let r = call(s, BOB, &sync(&state1)).await;
    let msg = single(&r);
    assert_eq!(kinds(msg), ["Delete"]);
    assert_eq!(first(msg, "ItemId").attr("Id"), Some(welcome.as_str()));
    // A new client's first sync lists no deletions at all: the inbox is empty now.
    let r = call(s, BOB, &sync("")).await;
    let msg = single(&r);
    assert_eq!(code(msg), "NoError");
    assert!(kinds(msg).is_empty(), "{:?}", kinds(msg));
}

#[tokio::test]
async fn sync_folder_hierarchy_lists_folders_once() {
    let h = start().await;
    let s = &h.state;
    let body = |state: &str| {
        format!(
            r#"<m:SyncFolderHierarchy><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>{state}</m:SyncFolderHierarchy>"#
        )
    };
    let r = call(s, ALICE, &body("")).await;
    let msg = single(&r);
    let names: Vec<String> = all(msg, "DisplayName").iter().map(|e| e.text()).collect();
    assert!(names.contains(&"Projects".to_owned()) && names.contains(&"Inbox".to_owned()));
    let state = text(msg, "SyncState");
    let r = call(
        s,
        ALICE,
        &body(&format!("<m:SyncState>{state}</m:SyncState>")),
    )
    .await;
    assert!(first(&r, "Changes").elements().next().is_none());
}

fn frames_text(frames: &[bytes::Bytes]) -> Vec<String> {
    frames
        .iter()
        .map(|f| String::from_utf8(f.to_vec()).unwrap())
        .collect()
}

fn parse_frame(frame: &str) -> Element {
    assert!(
        frame.starts_with("<Envelope xmlns=\"http://schemas.xmlsoap.org/soap/envelope/\">"),
        "{frame}"
    );
    assert!(!frame.contains("<?xml"));
    let env = xml::parse(frame.as_bytes()).unwrap();
    assert!(
        env.path(&[(S, "Header"), (T, "ServerVersionInfo")])
            .is_some()
    );
    env.path(&[(S, "Body"), (M, "GetStreamingEventsResponse")])
        .unwrap()
        .clone()
}

#[tokio::test(start_paused = true)]
async fn streaming_delivers_new_mail_heartbeats_and_closes() {
    let mut config = SimConfig::builtin().unwrap();
    config.streaming_heartbeat = Duration::from_secs(20);
    let h = start_with(config).await;
    let s = &h.state;
    let r = call(s, BOB, &format!(r#"<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds>{}</t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType><t:EventType>CreatedEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#, dist("inbox"))).await;
    let msg = single(&r);
    assert_eq!(code(msg), "NoError");
    let sub = text(msg, "SubscriptionId");
    let OpOutcome::Stream(mut stream) = outcome(s, BOB, &format!(r#"<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{sub}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>1</m:ConnectionTimeout></m:GetStreamingEvents>"#)).await else {
        panic!("expected a stream");
    };
    // Deliver while the stream is open; the frame must come before any heartbeat.
    let started = tokio::time::Instant::now();
    let waiter = tokio::spawn(async move {
        let first = stream.next().await;
        (first, stream)
    });
    tokio::task::yield_now().await;
    call(s, ALICE, &send_mail("SendOnly", "Ping", BOB)).await;
    let (first_frame, stream) = waiter.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    let frame = String::from_utf8(first_frame.unwrap().to_vec()).unwrap();
    let resp = parse_frame(&frame);
    let msg = single(&resp);
    assert_eq!(code(msg), "NoError");
    assert_eq!(text(msg, "SubscriptionId"), sub);
    let new_mail = first(msg, "NewMailEvent");
    assert!(new_mail.child(T, "TimeStamp").is_some());
    let item = new_mail
        .child(T, "ItemId")
        .unwrap()
        .attr("Id")
        .unwrap()
        .to_owned();
    assert!(new_mail.child(T, "ParentFolderId").is_some());
    assert_eq!(all(msg, "CreatedEvent").len(), 1);
    assert_eq!(text(msg, "ConnectionStatus"), "OK");
    let r = call(s, BOB, &get_item(&item, "Default")).await;
    assert_eq!(text(&r, "Subject"), "Ping");
    // The rest: heartbeats, then Closed at one minute.
    let rest: Vec<bytes::Bytes> = stream.collect().await;
    let rest = frames_text(&rest);
    assert!(started.elapsed() >= Duration::from_secs(60));
    assert!(started.elapsed() < Duration::from_secs(61));
    let (last, beats) = rest.split_last().unwrap();
    assert!(beats.len() >= 2, "{beats:?}");
    for b in beats {
        let resp = parse_frame(b);
        assert!(!all(&resp, "StatusEvent").is_empty());
        assert_eq!(text(&resp, "ConnectionStatus"), "OK");
    }
    let resp = parse_frame(last);
    assert_eq!(text(&resp, "ConnectionStatus"), "Closed");
}

#[tokio::test(start_paused = true)]
async fn streaming_refuses_unknown_foreign_and_bad_timeouts() {
    let h = start().await;
    let s = &h.state;
    let gse = |sub: &str, timeout: &str| {
        format!(
            r#"<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{sub}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>{timeout}</m:ConnectionTimeout></m:GetStreamingEvents>"#
        )
    };
    let OpOutcome::Stream(stream) = outcome(s, BOB, &gse("bm9wZQ==", "5")).await else {
        panic!("expected a stream");
    };
    let frames = frames_text(&stream.collect::<Vec<_>>().await);
    assert_eq!(frames.len(), 1);
    let resp = parse_frame(&frames[0]);
    let msg = single(&resp);
    assert_eq!(msg.attr("ResponseClass"), Some("Error"));
    assert_eq!(code(msg), "ErrorInvalidSubscription");
    assert_eq!(text(msg, "ConnectionStatus"), "Closed");
    // A subscription belongs to the app that created it, as in Exchange: another app is
    // refused, another mailbox through the same app is not (the gateway's binding is what
    // keeps principals apart).
    let subscribe = r#"<m:Subscribe><m:StreamingSubscriptionRequest SubscribeToAllFolders="true"><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#;
    let r = call(s, ALICE, subscribe).await;
    let sub = text(&r, "SubscriptionId");
    let other_app = OpContext {
        app_id: "44444444-2222-4333-8444-555555555555".to_owned(),
        ..ctx(s, ALICE)
    };
    let OpOutcome::Stream(stream) = ops::dispatch(s, other_app, &op_of(&gse(&sub, "5"))).await
    else {
        panic!("expected a stream");
    };
    let frames = frames_text(&stream.collect::<Vec<_>>().await);
    assert_eq!(
        code(single(&parse_frame(&frames[0]))),
        "ErrorSubscriptionAccessDenied"
    );
    let second = text(&call(s, ALICE, subscribe).await, "SubscriptionId");
    let unsub_second =
        format!(r#"<m:Unsubscribe><m:SubscriptionId>{second}</m:SubscriptionId></m:Unsubscribe>"#);
    assert_eq!(code(single(&call(s, BOB, &unsub_second).await)), "NoError");
    for bad in ["0", "31", "x"] {
        assert_eq!(
            fault_code(s, ALICE, &gse(&sub, bad)).await,
            "ErrorSchemaValidation"
        );
    }
    // Unsubscribing ends an open stream and the subscription.
    let OpOutcome::Stream(stream) = outcome(s, ALICE, &gse(&sub, "30")).await else {
        panic!("expected a stream");
    };
    let unsub =
        format!(r#"<m:Unsubscribe><m:SubscriptionId>{sub}</m:SubscriptionId></m:Unsubscribe>"#);
    let other_app = OpContext {
        app_id: "44444444-2222-4333-8444-555555555555".to_owned(),
        ..ctx(s, ALICE)
    };
    let OpOutcome::Body(denied) = ops::dispatch(s, other_app, &op_of(&unsub)).await else {
        panic!("expected a body");
    };
    assert!(denied.contains("ErrorSubscriptionAccessDenied"), "{denied}");
    assert_eq!(code(single(&call(s, ALICE, &unsub).await)), "NoError");
    assert_eq!(
        code(single(&call(s, ALICE, &unsub).await)),
        "ErrorSubscriptionNotFound"
    );
    let frames = frames_text(&stream.collect::<Vec<_>>().await);
    assert_eq!(
        text(&parse_frame(frames.last().unwrap()), "ConnectionStatus"),
        "Closed"
    );
    // Pull subscriptions are not simulated.
    let pull = r#"<m:Subscribe><m:PullSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes><t:Timeout>10</t:Timeout></m:PullSubscriptionRequest></m:Subscribe>"#;
    assert_eq!(fault_code(s, ALICE, pull).await, "ErrorInvalidOperation");
}

#[tokio::test]
async fn unknown_operations_fault() {
    let h = start().await;
    let s = &h.state;
    match outcome(s, ALICE, "<m:GetUserOofSettingsRequest/>").await {
        OpOutcome::Fault { code, message, .. } => {
            assert_eq!(code, "ErrorInvalidOperation");
            assert_eq!(
                message,
                "The operation GetUserOofSettingsRequest is not simulated."
            );
        }
        other => panic!("{other:?}"),
    }
}
