//! In-memory mailbox contents: folders, items, attachments, change log and event feed.
//!
//! Ids are opaque base64 strings that encode the owning mailbox, so an operation can tell when
//! a caller reaches into another mailbox (which needs a delegate grant). Every change bumps the
//! item's change key, is appended to a per-mailbox change log (for SyncFolderItems) and is
//! broadcast (for streaming subscriptions).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::sync::broadcast;

use super::directory::{Directory, MessageSeed};

/// Folders every mailbox has, with their display names and parents.
pub const DISTINGUISHED: &[(&str, &str, Option<&str>)] = &[
    ("root", "Root", None),
    ("msgfolderroot", "Top of Information Store", Some("root")),
    ("inbox", "Inbox", Some("msgfolderroot")),
    ("sentitems", "Sent Items", Some("msgfolderroot")),
    ("drafts", "Drafts", Some("msgfolderroot")),
    ("deleteditems", "Deleted Items", Some("msgfolderroot")),
    ("junkemail", "Junk Email", Some("msgfolderroot")),
    ("outbox", "Outbox", Some("msgfolderroot")),
    ("calendar", "Calendar", Some("msgfolderroot")),
    ("contacts", "Contacts", Some("msgfolderroot")),
    ("tasks", "Tasks", Some("msgfolderroot")),
    ("notes", "Notes", Some("msgfolderroot")),
    ("archive", "Archive", Some("msgfolderroot")),
    ("searchfolders", "Finder", Some("root")),
];

/// A folder.
#[derive(Debug, Clone)]
pub struct Folder {
    /// Opaque id.
    pub id: String,
    /// Distinguished name, for distinguished folders.
    pub distinguished: Option<String>,
    /// Parent folder id (None for root).
    pub parent: Option<String>,
    /// Display name.
    pub name: String,
    /// Folder class.
    pub class: String,
    /// Change key counter.
    pub change: u64,
}

/// A recipient or sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Display name.
    pub name: String,
    /// SMTP address.
    pub email: String,
}

/// A file attachment.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// Opaque id.
    pub id: String,
    /// File name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Content.
    pub content: Vec<u8>,
}

/// A message.
#[derive(Debug, Clone)]
pub struct Item {
    /// Opaque id.
    pub id: String,
    /// Change key counter.
    pub change: u64,
    /// Folder id.
    pub folder: String,
    /// Subject.
    pub subject: String,
    /// Sender.
    pub from: Option<Address>,
    /// To recipients.
    pub to: Vec<Address>,
    /// Cc recipients.
    pub cc: Vec<Address>,
    /// Body text.
    pub body: String,
    /// Whether the body is HTML.
    pub body_html: bool,
    /// Read flag.
    pub is_read: bool,
    /// Received time (RFC 3339, UTC, seconds).
    pub received: String,
    /// Sent time.
    pub sent: String,
    /// Attachments.
    pub attachments: Vec<Attachment>,
    /// `Message-ID`.
    pub internet_message_id: String,
    /// Whether this is an unsent draft.
    pub is_draft: bool,
    /// Raw MIME when created from MIME.
    pub mime: Option<Vec<u8>>,
    /// Extended properties set by clients (tag -> value), e.g. DavMail's IMAP UID.
    pub extended: BTreeMap<String, String>,
}

impl Item {
    /// Approximate size in bytes.
    pub fn size(&self) -> usize {
        self.subject.len()
            + self.body.len()
            + self
                .attachments
                .iter()
                .map(|a| a.content.len())
                .sum::<usize>()
            + 512
    }
}

/// What changed, for sync and streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created (or moved in).
    Created,
    /// Modified.
    Modified,
    /// Deleted (or moved out).
    Deleted,
    /// New mail delivered.
    NewMail,
}

/// One change in a mailbox.
#[derive(Debug, Clone)]
pub struct Change {
    /// Sequence number within the mailbox.
    pub seq: u64,
    /// Mailbox (primary address, lower-case).
    pub mailbox: String,
    /// Folder id.
    pub folder: String,
    /// Item id.
    pub item: String,
    /// Kind.
    pub kind: ChangeKind,
    /// When (RFC 3339).
    pub at: String,
}

/// One mailbox's contents.
#[derive(Debug, Default)]
pub struct MailboxData {
    /// Folders by id.
    pub folders: BTreeMap<String, Folder>,
    /// Items by id.
    pub items: BTreeMap<String, Item>,
    /// Change log.
    pub changes: Vec<Change>,
}

impl MailboxData {
    /// The folder id of a distinguished folder.
    pub fn distinguished(&self, name: &str) -> Option<&Folder> {
        self.folders.values().find(|f| {
            f.distinguished
                .as_deref()
                .is_some_and(|d| d.eq_ignore_ascii_case(name))
        })
    }
}

/// The kind of object an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdType {
    /// A folder.
    Folder,
    /// An item.
    Item,
    /// An attachment.
    Attachment,
}

/// Encodes an opaque id: the owning mailbox and a serial.
pub fn make_id(kind: IdType, mailbox: &str, serial: u64) -> String {
    let tag = match kind {
        IdType::Folder => "F",
        IdType::Item => "I",
        IdType::Attachment => "A",
    };
    format!(
        "AAMk{}",
        STANDARD.encode(format!("{tag}|{}|{serial}", mailbox.to_lowercase()))
    )
}

/// Decodes an id into its kind and owning mailbox; None when malformed.
pub fn parse_id(id: &str) -> Option<(IdType, String)> {
    let raw = STANDARD.decode(id.strip_prefix("AAMk")?).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let mut parts = text.splitn(3, '|');
    let kind = match parts.next()? {
        "F" => IdType::Folder,
        "I" => IdType::Item,
        "A" => IdType::Attachment,
        _ => return None,
    };
    let mailbox = parts.next()?.to_owned();
    parts.next()?.parse::<u64>().ok()?;
    Some((kind, mailbox))
}

/// The current time as EWS writes it.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        ))
        .unwrap_or_default()
}

/// A streaming subscription.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Mailbox that created it (primary address, lower-case).
    pub mailbox: String,
    /// Folder ids watched; empty means all folders.
    pub folders: Vec<String>,
    /// Event types (`NewMailEvent`, `CreatedEvent`, ...).
    pub event_types: Vec<String>,
}

/// All mailboxes' contents.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Change>,
    /// Streaming subscriptions by id.
    pub subscriptions: Mutex<HashMap<String, Subscription>>,
}

#[derive(Debug, Default)]
struct Inner {
    mailboxes: HashMap<String, MailboxData>,
    serial: u64,
}

impl Inner {
    fn next(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }
}

impl Default for Store {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            events: broadcast::channel(1024).0,
            subscriptions: Mutex::new(HashMap::new()),
        }
    }
}

/// An error from the store, as an EWS response code and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    /// EWS response code.
    pub code: &'static str,
    /// Text.
    pub message: String,
}

impl StoreError {
    /// An error with a code and text.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl Store {
    /// Builds the store from the seed's folders and messages.
    pub fn from_directory(directory: &Directory) -> Self {
        let store = Self::default();
        if let Ok(mut inner) = store.inner.lock() {
            for tenant in &directory.tenants {
                for mbx in &tenant.mailboxes {
                    let owner = mbx.smtp.to_lowercase();
                    let mut data = MailboxData::default();
                    let mut ids: HashMap<&str, String> = HashMap::new();
                    for (name, display, parent) in DISTINGUISHED {
                        let serial = inner.next();
                        let id = make_id(IdType::Folder, &owner, serial);
                        ids.insert(name, id.clone());
                        let class = match *name {
                            "calendar" => "IPF.Appointment",
                            "contacts" => "IPF.Contact",
                            "tasks" => "IPF.Task",
                            "notes" => "IPF.StickyNote",
                            _ => "IPF.Note",
                        };
                        data.folders.insert(
                            id.clone(),
                            Folder {
                                id,
                                distinguished: Some((*name).to_owned()),
                                parent: parent.and_then(|p| ids.get(p).cloned()),
                                name: (*display).to_owned(),
                                class: class.to_owned(),
                                change: 1,
                            },
                        );
                    }
                    for seed in &mbx.folders {
                        let folder_id = match data.distinguished(&seed.name) {
                            Some(f) => f.id.clone(),
                            None => {
                                let serial = inner.next();
                                let id = make_id(IdType::Folder, &owner, serial);
                                data.folders.insert(
                                    id.clone(),
                                    Folder {
                                        id: id.clone(),
                                        distinguished: None,
                                        parent: ids.get("msgfolderroot").cloned(),
                                        name: seed.name.clone(),
                                        class: "IPF.Note".to_owned(),
                                        change: 1,
                                    },
                                );
                                id
                            }
                        };
                        for m in &seed.messages {
                            let serial = inner.next();
                            let item = seed_item(&owner, &folder_id, serial, m, &mut inner);
                            data.items.insert(item.id.clone(), item);
                        }
                    }
                    inner.mailboxes.insert(owner, data);
                }
            }
        }
        store
    }

    /// Subscribes to the change feed of all mailboxes.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.events.subscribe()
    }

    /// Runs `f` with exclusive access to `mailbox`'s data (lower-cased primary address).
    pub fn with_mailbox<T>(
        &self,
        mailbox: &str,
        f: impl FnOnce(&mut MailboxData, &mut dyn FnMut() -> u64) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut inner = self.inner.lock().map_err(|_| {
            StoreError::new(
                "ErrorInternalServerError",
                "The mailbox store is unavailable.",
            )
        })?;
        let inner = &mut *inner;
        let mut serial = inner.serial;
        let data = inner
            .mailboxes
            .get_mut(&mailbox.to_lowercase())
            .ok_or_else(|| {
                StoreError::new(
                    "ErrorNonExistentMailbox",
                    "The SMTP address has no mailbox associated with it.",
                )
            })?;
        let mut next = || {
            serial += 1;
            serial
        };
        let before = data.changes.len();
        let out = f(data, &mut next);
        let published: Vec<Change> = data.changes[before..].to_vec();
        inner.serial = serial;
        for change in published {
            let _ = self.events.send(change);
        }
        out
    }

    /// Whether the store knows `mailbox`.
    pub fn has_mailbox(&self, mailbox: &str) -> bool {
        self.inner
            .lock()
            .map(|i| i.mailboxes.contains_key(&mailbox.to_lowercase()))
            .unwrap_or(false)
    }
}

/// Records a change in a mailbox's log.
pub fn record(data: &mut MailboxData, mailbox: &str, folder: &str, item: &str, kind: ChangeKind) {
    let seq = data.changes.len() as u64 + 1;
    data.changes.push(Change {
        seq,
        mailbox: mailbox.to_lowercase(),
        folder: folder.to_owned(),
        item: item.to_owned(),
        kind,
        at: now_rfc3339(),
    });
}

fn address(email: &str) -> Address {
    let local = email.split('@').next().unwrap_or(email);
    let mut name = local.to_owned();
    if let Some(first) = name.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    Address {
        name,
        email: email.to_owned(),
    }
}

/// An address with a display name derived from the local part.
pub fn address_for(email: &str) -> Address {
    address(email)
}

fn seed_item(owner: &str, folder: &str, serial: u64, m: &MessageSeed, inner: &mut Inner) -> Item {
    let id = make_id(IdType::Item, owner, serial);
    let attachments = m
        .attachments
        .iter()
        .map(|a| {
            let s = inner.next();
            Attachment {
                id: make_id(IdType::Attachment, owner, s),
                name: a.name.clone(),
                content_type: a.content_type.clone(),
                content: a.content.as_bytes().to_vec(),
            }
        })
        .collect();
    Item {
        internet_message_id: format!("<{serial}.seed@sim.example>"),
        id,
        change: 1,
        folder: folder.to_owned(),
        subject: m.subject.clone(),
        from: Some(address(&m.from)),
        to: m.to.iter().map(|t| address(t)).collect(),
        cc: Vec::new(),
        body: m.body.clone(),
        body_html: false,
        is_read: m.is_read,
        received: m.received.clone(),
        sent: m.received.clone(),
        attachments,
        is_draft: false,
        mime: None,
        extended: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_name_their_mailbox() {
        let id = make_id(IdType::Item, "Alice@contoso.example", 42);
        assert_eq!(
            parse_id(&id),
            Some((IdType::Item, "alice@contoso.example".into()))
        );
        assert_eq!(parse_id("garbage"), None);
        assert_eq!(parse_id("AAMkZ2FyYmFnZQ=="), None);
    }

    #[test]
    fn seed_populates_folders_and_messages() {
        let dir = Directory::builtin().unwrap();
        let store = Store::from_directory(&dir);
        store
            .with_mailbox("alice@contoso.example", |data, _| {
                let inbox = data.distinguished("inbox").unwrap().id.clone();
                let n = data.items.values().filter(|i| i.folder == inbox).count();
                assert_eq!(n, 3);
                assert!(data.folders.values().any(|f| f.name == "Projects"));
                Ok(())
            })
            .unwrap();
        assert!(store.has_mailbox("SALES@contoso.example"));
    }
}
