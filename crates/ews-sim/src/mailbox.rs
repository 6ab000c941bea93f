//! In-memory mailbox contents: folders, items, attachments, change tracking and subscriptions.
//!
//! This module owns the data model and its invariants: opaque ids that name their mailbox, change
//! keys that change on every update, a global change sequence (for SyncFolderItems) and the
//! per-subscription event queues (for streaming notifications). The EWS operations in `ops`
//! translate requests into calls on [`Data`] through [`Store::with`]. One std mutex guards
//! everything: the simulator is small, and nothing awaits while holding it.

pub mod mime;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::directory::{Directory, MessageSeed};

/// Events kept per subscription while no stream drains them (oldest dropped first).
const MAX_QUEUED_EVENTS: usize = 5000;

/// A distinguished folder: (id, parent, display name, class, kind).
type DistinguishedSpec = (
    &'static str,
    Option<&'static str>,
    &'static str,
    Option<&'static str>,
    FolderKind,
);

/// The distinguished folders every mailbox has, parents first.
const DISTINGUISHED: &[DistinguishedSpec] = &[
    ("root", None, "Root", None, FolderKind::Generic),
    (
        "msgfolderroot",
        Some("root"),
        "Top of Information Store",
        None,
        FolderKind::Generic,
    ),
    (
        "inbox",
        Some("msgfolderroot"),
        "Inbox",
        Some("IPF.Note"),
        FolderKind::Generic,
    ),
    (
        "sentitems",
        Some("msgfolderroot"),
        "Sent Items",
        Some("IPF.Note"),
        FolderKind::Generic,
    ),
    (
        "drafts",
        Some("msgfolderroot"),
        "Drafts",
        Some("IPF.Note"),
        FolderKind::Generic,
    ),
    (
        "deleteditems",
        Some("msgfolderroot"),
        "Deleted Items",
        Some("IPF.Note"),
        FolderKind::Generic,
    ),
    (
        "junkemail",
        Some("msgfolderroot"),
        "Junk Email",
        Some("IPF.Note"),
        FolderKind::Generic,
    ),
    (
        "outbox",
        Some("msgfolderroot"),
        "Outbox",
        Some("IPF.Note"),
        FolderKind::Generic,
    ),
    (
        "calendar",
        Some("msgfolderroot"),
        "Calendar",
        Some("IPF.Appointment"),
        FolderKind::Calendar,
    ),
    (
        "contacts",
        Some("msgfolderroot"),
        "Contacts",
        Some("IPF.Contact"),
        FolderKind::Contacts,
    ),
    (
        "tasks",
        Some("msgfolderroot"),
        "Tasks",
        Some("IPF.Task"),
        FolderKind::Tasks,
    ),
    (
        "notes",
        Some("msgfolderroot"),
        "Notes",
        Some("IPF.StickyNote"),
        FolderKind::Generic,
    ),
    (
        "journal",
        Some("msgfolderroot"),
        "Journal",
        Some("IPF.Journal"),
        FolderKind::Generic,
    ),
    (
        "conversationhistory",
        Some("msgfolderroot"),
        "Conversation History",
        Some("IPF.Note"),
        FolderKind::Generic,
    ),
    (
        "searchfolders",
        Some("root"),
        "Finder",
        None,
        FolderKind::Generic,
    ),
];

/// What an opaque id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// A folder.
    Folder,
    /// An item.
    Item,
    /// A file attachment.
    Attachment,
}

impl IdKind {
    fn tag(self) -> u8 {
        match self {
            Self::Folder => b'F',
            Self::Item => b'I',
            Self::Attachment => b'A',
        }
    }
}

/// The header every Exchange Online EwsId of a mailbox object starts with (`AAMk` in base64).
pub const EWS_ID_HEADER: [u8; 4] = [0x00, 0x03, 0x24, 0x00];

/// A mailbox's Exchange GUID. The simulator derives it from the primary address (name-based,
/// so a seed needs no GUIDs and every run gives the same ids); lower case, 36 characters.
pub fn mailbox_guid(smtp: &str) -> String {
    name_based_uuid("exchange-guid", smtp)
}

/// A user's Entra object id (what Graph calls `id`), derived like [`mailbox_guid`] but distinct.
pub fn user_object_id(smtp: &str) -> String {
    name_based_uuid("entra-object-id", smtp)
}

fn name_based_uuid(namespace: &str, smtp: &str) -> String {
    let digest = Sha256::digest(format!("{namespace}|{}", smtp.to_ascii_lowercase()));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// Encodes an id in Exchange's EwsId form: standard base64 of `00 03 24 00`, the mailbox's
/// Exchange GUID as 36 ASCII characters, a zero byte, the kind and the store serial. So ids start
/// `AAMk` and name their mailbox as real ones do; Graph uses the same bytes in the URL-safe
/// alphabet ([`to_graph_id`]).
pub fn encode_id(kind: IdKind, serial: u64, mailbox: &str) -> String {
    encode_id_for_guid(kind, serial, &mailbox_guid(mailbox))
}

/// [`encode_id`] for a known mailbox GUID.
pub fn encode_id_for_guid(kind: IdKind, serial: u64, guid: &str) -> String {
    let mut bytes = EWS_ID_HEADER.to_vec();
    bytes.extend_from_slice(guid.as_bytes());
    bytes.push(0);
    bytes.push(kind.tag());
    bytes.extend_from_slice(&serial.to_be_bytes());
    STANDARD.encode(bytes)
}

/// A decoded id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedId {
    /// What it names.
    pub kind: IdKind,
    /// Store serial.
    pub serial: u64,
    /// Exchange GUID (lower case) of the mailbox it belongs to.
    pub guid: String,
}

/// Decodes an EwsId (standard base64); `None` means malformed (not one of ours).
pub fn decode_id(id: &str) -> Option<DecodedId> {
    decode_bytes(&STANDARD.decode(id.trim()).ok()?)
}

fn decode_bytes(bytes: &[u8]) -> Option<DecodedId> {
    if bytes.len() != 4 + 36 + 1 + 1 + 8 || bytes[..4] != EWS_ID_HEADER || bytes[40] != 0 {
        return None;
    }
    let guid = std::str::from_utf8(&bytes[4..40]).ok()?;
    let parsed = uuid::Uuid::parse_str(guid).ok()?;
    let kind = match bytes[41] {
        b'F' => IdKind::Folder,
        b'I' => IdKind::Item,
        b'A' => IdKind::Attachment,
        _ => return None,
    };
    let mut serial = [0u8; 8];
    serial.copy_from_slice(&bytes[42..50]);
    Some(DecodedId {
        kind,
        serial: u64::from_be_bytes(serial),
        guid: parsed.hyphenated().to_string(),
    })
}

/// The Graph (restId) form of an EwsId: the same bytes in the URL-safe alphabet (`+`→`-`,
/// `/`→`_`, padding kept as Graph does).
pub fn to_graph_id(ews_id: &str) -> String {
    ews_id.replace('+', "-").replace('/', "_")
}

/// The EwsId of a Graph id; `None` unless it decodes to one of ours. Only the URL-safe alphabet
/// is accepted, as Graph parses ids in URLs.
pub fn from_graph_id(graph_id: &str) -> Option<(String, DecodedId)> {
    use base64::engine::general_purpose::URL_SAFE;
    let bytes = URL_SAFE.decode(graph_id).ok()?;
    let decoded = decode_bytes(&bytes)?;
    Some((STANDARD.encode(&bytes), decoded))
}

/// The change key of an object at `version` (a store sequence number).
pub fn change_key(version: u64) -> String {
    let mut bytes = vec![0x43, 0x51, 0x00, 0x00, 0x00, 0x16];
    bytes.extend_from_slice(&version.to_be_bytes());
    STANDARD.encode(bytes)
}

/// Folder flavour, which decides the element name (`t:Folder`, `t:CalendarFolder`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderKind {
    /// `t:Folder`.
    Generic,
    /// `t:CalendarFolder`.
    Calendar,
    /// `t:ContactsFolder`.
    Contacts,
    /// `t:TasksFolder`.
    Tasks,
}

impl FolderKind {
    /// Element local name.
    pub fn element(self) -> &'static str {
        match self {
            Self::Generic => "Folder",
            Self::Calendar => "CalendarFolder",
            Self::Contacts => "ContactsFolder",
            Self::Tasks => "TasksFolder",
        }
    }
}

/// A folder.
#[derive(Debug, Clone)]
pub struct Folder {
    /// Opaque id.
    pub id: String,
    /// Parent folder id (`None` for root).
    pub parent: Option<String>,
    /// Distinguished name, if any.
    pub distinguished: Option<&'static str>,
    /// Display name.
    pub display_name: String,
    /// Folder class (`IPF.Note`, ...).
    pub class: Option<String>,
    /// Flavour.
    pub kind: FolderKind,
    /// Sequence of the last change (the change key derives from it).
    pub version: u64,
    /// Sequence at creation.
    pub created_seq: u64,
}

/// A mailbox address with display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Display name.
    pub name: String,
    /// SMTP address.
    pub email: String,
}

/// Body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    /// Plain text.
    Text,
    /// HTML.
    Html,
}

/// A file attachment.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// Opaque id (assigned by the store).
    pub id: String,
    /// File name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Content-ID for inline parts.
    pub content_id: Option<String>,
    /// Inline flag.
    pub is_inline: bool,
    /// Raw content.
    pub content: Vec<u8>,
    /// Last modification.
    pub modified: OffsetDateTime,
}

/// The content of a message, independent of where it is stored.
#[derive(Debug, Clone)]
pub struct Message {
    /// `IPM.Note` and friends.
    pub item_class: String,
    /// Subject.
    pub subject: String,
    /// Body text.
    pub body: String,
    /// Body format.
    pub body_type: BodyType,
    /// Author.
    pub from: Option<Address>,
    /// Sender (usually the author).
    pub sender: Option<Address>,
    /// To recipients.
    pub to: Vec<Address>,
    /// Cc recipients.
    pub cc: Vec<Address>,
    /// Bcc recipients.
    pub bcc: Vec<Address>,
    /// Read flag.
    pub is_read: bool,
    /// Unsent draft.
    pub is_draft: bool,
    /// Received time.
    pub received: OffsetDateTime,
    /// Sent time.
    pub sent: Option<OffsetDateTime>,
    /// `Message-ID`, with angle brackets.
    pub internet_message_id: String,
    /// Categories.
    pub categories: Vec<String>,
    /// `Low`, `Normal` or `High`.
    pub importance: String,
    /// File attachments.
    pub attachments: Vec<Attachment>,
    /// The MIME the item was created from, served as is while the content is unchanged so that
    /// an IMAP APPEND followed by FETCH returns the same bytes (as Exchange nearly does).
    pub mime: Option<Vec<u8>>,
}

impl Message {
    /// An empty message with the defaults Exchange applies.
    pub fn new(now: OffsetDateTime) -> Self {
        Self {
            item_class: "IPM.Note".to_owned(),
            subject: String::new(),
            body: String::new(),
            body_type: BodyType::Text,
            from: None,
            sender: None,
            to: Vec::new(),
            cc: Vec::new(),
            bcc: Vec::new(),
            is_read: false,
            is_draft: false,
            received: now,
            sent: None,
            internet_message_id: String::new(),
            categories: Vec::new(),
            importance: "Normal".to_owned(),
            attachments: Vec::new(),
            mime: None,
        }
    }

    /// The conversation topic: the subject without reply/forward prefixes.
    pub fn topic(&self) -> &str {
        let mut s = self.subject.trim();
        loop {
            let lower = s.to_ascii_lowercase();
            let cut = ["re:", "fw:", "fwd:", "aw:", "wg:"]
                .iter()
                .find(|p| lower.starts_with(*p))
                .map(|p| p.len());
            match cut {
                Some(n) => s = s[n..].trim_start(),
                None => return s,
            }
        }
    }

    /// A conversation id derived from the topic, so that replies share it.
    pub fn conversation_id(&self) -> String {
        let digest = Sha256::digest(self.topic().to_lowercase().as_bytes());
        let mut bytes = vec![0x43, 0x56];
        bytes.extend_from_slice(&digest[..16]);
        STANDARD.encode(bytes)
    }
}

/// A stored item.
#[derive(Debug, Clone)]
pub struct Item {
    /// Opaque id (changes when the item moves, as in Exchange).
    pub id: String,
    /// Id of the folder holding it.
    pub folder: String,
    /// Sequence of the last change (the change key derives from it).
    pub version: u64,
    /// Per-mailbox ascending number (exposed as PR_INTERNET_ARTICLE_NUMBER, DavMail's IMAP UID).
    pub article: u64,
    /// Sequence when it entered its current folder.
    pub entered_seq: u64,
    /// Sequence of its last content change.
    pub changed_seq: u64,
    /// Creation time.
    pub created: OffsetDateTime,
    /// Last modification time.
    pub modified: OffsetDateTime,
    /// The content.
    pub msg: Message,
}

impl Item {
    /// Current change key.
    pub fn change_key(&self) -> String {
        change_key(self.version)
    }
}

/// A record that an item left a folder, for SyncFolderItems.
#[derive(Debug, Clone)]
pub struct Tombstone {
    /// Folder it left.
    pub folder: String,
    /// Its id there.
    pub item_id: String,
    /// Sequence at which it had entered that folder.
    pub entered_seq: u64,
    /// Sequence of the removal.
    pub seq: u64,
}

/// One mailbox's contents.
#[derive(Debug, Clone)]
pub struct MailboxData {
    /// Primary address, lower case.
    pub smtp: String,
    /// Display name.
    pub display_name: String,
    /// Folders, parents before children.
    pub folders: Vec<Folder>,
    /// Items.
    pub items: Vec<Item>,
    /// Removals, for synchronisation.
    pub tombstones: Vec<Tombstone>,
    next_article: u64,
}

impl MailboxData {
    /// The folder with this id.
    pub fn folder(&self, id: &str) -> Option<&Folder> {
        self.folders.iter().find(|f| f.id == id)
    }

    /// The id of a distinguished folder.
    pub fn distinguished(&self, name: &str) -> Option<&str> {
        self.folders
            .iter()
            .find(|f| {
                f.distinguished
                    .is_some_and(|d| d.eq_ignore_ascii_case(name))
            })
            .map(|f| f.id.as_str())
    }

    /// The item with this id.
    pub fn item(&self, id: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.id == id)
    }

    /// Items in a folder.
    pub fn items_in<'a>(&'a self, folder: &'a str) -> impl Iterator<Item = &'a Item> + 'a {
        self.items.iter().filter(move |i| i.folder == folder)
    }

    /// Direct children of a folder.
    pub fn children<'a>(&'a self, folder: &'a str) -> impl Iterator<Item = &'a Folder> + 'a {
        self.folders
            .iter()
            .filter(move |f| f.parent.as_deref() == Some(folder))
    }

    /// All descendants of a folder, depth first.
    pub fn descendants(&self, folder: &str) -> Vec<&Folder> {
        let mut out = Vec::new();
        for child in self
            .folders
            .iter()
            .filter(|f| f.parent.as_deref() == Some(folder))
        {
            out.push(child);
            out.extend(self.descendants(&child.id));
        }
        out
    }

    /// The item holding the attachment with this id.
    pub fn attachment(&self, id: &str) -> Option<(&Item, &Attachment)> {
        self.items.iter().find_map(|item| {
            item.msg
                .attachments
                .iter()
                .find(|a| a.id == id)
                .map(|a| (item, a))
        })
    }
}

/// Event kinds of streaming notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Mail delivered to an inbox.
    NewMail,
    /// Item created in a folder.
    Created,
    /// Item removed.
    Deleted,
    /// Item changed.
    Modified,
    /// Item moved.
    Moved,
    /// Item copied.
    Copied,
}

impl EventKind {
    /// Element name (`NewMailEvent`, ...).
    pub fn element(self) -> &'static str {
        match self {
            Self::NewMail => "NewMailEvent",
            Self::Created => "CreatedEvent",
            Self::Deleted => "DeletedEvent",
            Self::Modified => "ModifiedEvent",
            Self::Moved => "MovedEvent",
            Self::Copied => "CopiedEvent",
        }
    }

    /// The kind for an `EventType` value.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::NewMail,
            Self::Created,
            Self::Deleted,
            Self::Modified,
            Self::Moved,
            Self::Copied,
        ]
        .into_iter()
        .find(|k| k.element() == name)
    }
}

/// One notification event.
#[derive(Debug, Clone)]
pub struct Event {
    /// Kind.
    pub kind: EventKind,
    /// Store sequence (the watermark derives from it).
    pub seq: u64,
    /// When it happened.
    pub timestamp: OffsetDateTime,
    /// Item id and change key.
    pub item: (String, String),
    /// Folder holding the item (or that held it, for deletions).
    pub parent: String,
    /// Previous id and folder, for moves and copies.
    pub old: Option<(String, String)>,
}

/// A streaming subscription.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Primary address (lower case) of the mailbox it was created for (what it watches).
    pub owner: String,
    /// Client id (lower case) of the app that created it: as in Exchange, any caller with that
    /// app's token may use it, whichever mailbox it impersonates. The permissive side on
    /// purpose, so the gateway's own binding of subscriptions is what the tests prove.
    pub app: String,
    /// Watched folders as (mailbox, folder id); `None` watches all of the owner's folders.
    pub folders: Option<Vec<(String, String)>>,
    /// Event kinds wanted.
    pub kinds: Vec<EventKind>,
    /// Events not yet streamed.
    pub queue: VecDeque<Event>,
}

/// Everything the store holds; reached through [`Store::with`].
#[derive(Debug, Default)]
pub struct Data {
    mailboxes: HashMap<String, MailboxData>,
    seq: u64,
    serial: u64,
    /// Streaming subscriptions by id.
    pub subscriptions: HashMap<String, Subscription>,
    notify: bool,
}

/// All mailboxes' contents.
#[derive(Debug)]
pub struct Store {
    data: Mutex<Data>,
    changed: watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            data: Mutex::new(Data::default()),
            changed: watch::channel(0).0,
        }
    }
}

impl Store {
    /// Builds the store from the seed's folders and messages.
    pub fn from_directory(directory: &Directory) -> Self {
        let store = Self::default();
        store.with(|data| {
            for tenant in &directory.tenants {
                for mbx in &tenant.mailboxes {
                    data.ensure_mailbox(&mbx.smtp, &mbx.display_name);
                    for seed in &mbx.folders {
                        let folder = match data
                            .mailbox_ref(&mbx.smtp)
                            .and_then(|m| m.distinguished(&seed.name))
                        {
                            Some(id) => id.to_owned(),
                            None => data.create_folder(&mbx.smtp, "msgfolderroot", &seed.name),
                        };
                        for message in &seed.messages {
                            let msg = seed_message(tenant, message);
                            data.insert_item(&mbx.smtp, &folder, msg, false);
                        }
                    }
                }
            }
            // Seeding is not an event anyone can have subscribed to.
            data.notify = false;
        });
        store
    }

    /// Runs `f` with the data locked; wakes open notification streams if `f` queued events.
    pub fn with<R>(&self, f: impl FnOnce(&mut Data) -> R) -> R {
        let (result, notify) = {
            let mut data = self
                .data
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let result = f(&mut data);
            (result, std::mem::take(&mut data.notify))
        };
        if notify {
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
        result
    }

    /// A receiver that changes whenever events are queued.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339).ok()
}

fn seed_message(tenant: &super::directory::Tenant, seed: &MessageSeed) -> Message {
    let address = |smtp: &str| Address {
        name: tenant
            .mailboxes
            .iter()
            .find(|m| m.smtp.eq_ignore_ascii_case(smtp))
            .map(|m| m.display_name.clone())
            .unwrap_or_else(|| smtp.to_owned()),
        email: smtp.to_owned(),
    };
    let received = parse_time(&seed.received).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut msg = Message::new(received);
    msg.subject = seed.subject.clone();
    msg.body = seed.body.clone();
    msg.from = Some(address(&seed.from));
    msg.sender = msg.from.clone();
    msg.to = seed.to.iter().map(|t| address(t)).collect();
    msg.is_read = seed.is_read;
    msg.sent = Some(received);
    let digest = Sha256::digest(format!("{}|{}|{}", seed.from, seed.subject, seed.received));
    let domain = seed
        .from
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or("sim.example");
    msg.internet_message_id = format!("<{}@{domain}>", hex::encode(&digest[..12]));
    msg.attachments = seed
        .attachments
        .iter()
        .map(|a| Attachment {
            id: String::new(),
            name: a.name.clone(),
            content_type: a.content_type.clone(),
            content_id: None,
            is_inline: false,
            content: a.content.as_bytes().to_vec(),
            modified: received,
        })
        .collect();
    msg
}

/// A change reported by SyncFolderItems.
#[derive(Debug)]
pub enum SyncChange<'a> {
    /// The item is new to the folder.
    Create(&'a Item),
    /// The item changed.
    Update(&'a Item),
    /// The item left the folder.
    Delete(String),
}

impl Data {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    /// The current change sequence.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The mailbox whose Exchange GUID is `guid` (ids carry it).
    pub fn mailbox_by_guid(&self, guid: &str) -> Option<&MailboxData> {
        self.mailboxes
            .values()
            .find(|m| mailbox_guid(&m.smtp) == guid)
    }

    /// A mailbox's contents, if it exists.
    pub fn mailbox_ref(&self, smtp: &str) -> Option<&MailboxData> {
        self.mailboxes.get(&smtp.to_ascii_lowercase())
    }

    /// A mailbox's contents, created with its distinguished folders if new (the directory may
    /// gain mailboxes after start).
    pub fn ensure_mailbox(&mut self, smtp: &str, display_name: &str) {
        let key = smtp.to_ascii_lowercase();
        if !self.mailboxes.contains_key(&key) {
            let mut folders = Vec::new();
            for (name, parent, display, class, kind) in DISTINGUISHED {
                let serial = self.next_serial();
                let seq = self.next_seq();
                let parent = parent.and_then(|p| {
                    folders
                        .iter()
                        .find(|f: &&Folder| f.distinguished == Some(p))
                        .map(|f| f.id.clone())
                });
                folders.push(Folder {
                    id: encode_id(IdKind::Folder, serial, &key),
                    parent,
                    distinguished: Some(name),
                    display_name: (*display).to_owned(),
                    class: class.map(str::to_owned),
                    kind: *kind,
                    version: seq,
                    created_seq: seq,
                });
            }
            self.mailboxes.insert(
                key.clone(),
                MailboxData {
                    smtp: key.clone(),
                    display_name: display_name.to_owned(),
                    folders,
                    items: Vec::new(),
                    tombstones: Vec::new(),
                    next_article: 1,
                },
            );
        }
    }

    fn mailbox_mut(&mut self, smtp: &str) -> Option<&mut MailboxData> {
        self.mailboxes.get_mut(&smtp.to_ascii_lowercase())
    }

    /// Creates a generic mail folder under the distinguished folder `parent`.
    pub fn create_folder(&mut self, smtp: &str, parent: &str, name: &str) -> String {
        let serial = self.next_serial();
        let seq = self.next_seq();
        let key = smtp.to_ascii_lowercase();
        let id = encode_id(IdKind::Folder, serial, &key);
        if let Some(mbx) = self.mailbox_mut(&key) {
            let parent = mbx.distinguished(parent).map(str::to_owned);
            mbx.folders.push(Folder {
                id: id.clone(),
                parent,
                distinguished: None,
                display_name: name.to_owned(),
                class: Some("IPF.Note".to_owned()),
                kind: FolderKind::Generic,
                version: seq,
                created_seq: seq,
            });
        }
        id
    }

    /// Creates a folder under the folder with id `parent`; returns its (id, change key), or
    /// `None` when the mailbox or the parent does not exist.
    pub fn add_folder(
        &mut self,
        smtp: &str,
        parent: &str,
        name: &str,
        class: Option<String>,
        kind: FolderKind,
    ) -> Option<(String, String)> {
        let key = smtp.to_ascii_lowercase();
        self.mailbox_ref(&key)?.folder(parent)?;
        let serial = self.next_serial();
        let seq = self.next_seq();
        let id = encode_id(IdKind::Folder, serial, &key);
        let mbx = self.mailbox_mut(&key)?;
        mbx.folders.push(Folder {
            id: id.clone(),
            parent: Some(parent.to_owned()),
            distinguished: None,
            display_name: name.to_owned(),
            class,
            kind,
            version: seq,
            created_seq: seq,
        });
        Some((id, change_key(seq)))
    }

    /// Removes a folder with its subfolders and their items for good.
    pub fn remove_folder(&mut self, smtp: &str, id: &str) -> Option<()> {
        let key = smtp.to_ascii_lowercase();
        let mbx = self.mailbox_ref(&key)?;
        let mut doomed: Vec<String> = vec![mbx.folder(id)?.id.clone()];
        doomed.extend(mbx.descendants(id).into_iter().map(|f| f.id.clone()));
        let items: Vec<String> = mbx
            .items
            .iter()
            .filter(|i| doomed.contains(&i.folder))
            .map(|i| i.id.clone())
            .collect();
        for item in items {
            self.remove_item(&key, &item);
        }
        self.next_seq();
        let mbx = self.mailbox_mut(&key)?;
        mbx.folders.retain(|f| !doomed.contains(&f.id));
        Some(())
    }

    /// Moves a folder under another folder of the same mailbox (its id stays).
    pub fn move_folder(&mut self, smtp: &str, id: &str, to: &str) -> Option<()> {
        let mbx = self.mailbox_ref(smtp)?;
        mbx.folder(to)?;
        // Never under itself or one of its own subfolders.
        if to == id || mbx.descendants(id).iter().any(|f| f.id == to) {
            return None;
        }
        let seq = self.next_seq();
        let mbx = self.mailbox_mut(smtp)?;
        let folder = mbx.folders.iter_mut().find(|f| f.id == id)?;
        folder.parent = Some(to.to_owned());
        folder.version = seq;
        Some(())
    }

    /// Stores `msg` in a folder; returns (id, change key). `new_mail` also raises NewMailEvent.
    pub fn insert_item(
        &mut self,
        smtp: &str,
        folder: &str,
        mut msg: Message,
        new_mail: bool,
    ) -> (String, String) {
        let key = smtp.to_ascii_lowercase();
        let serial = self.next_serial();
        let id = encode_id(IdKind::Item, serial, &key);
        for att in &mut msg.attachments {
            let serial = self.next_serial();
            att.id = encode_id(IdKind::Attachment, serial, &key);
        }
        let seq = self.next_seq();
        let now = OffsetDateTime::now_utc();
        let ck = change_key(seq);
        let Some(mbx) = self.mailbox_mut(&key) else {
            return (id, ck);
        };
        let article = mbx.next_article;
        mbx.next_article += 1;
        mbx.items.push(Item {
            id: id.clone(),
            folder: folder.to_owned(),
            version: seq,
            article,
            entered_seq: seq,
            changed_seq: seq,
            created: now,
            modified: now,
            msg,
        });
        if new_mail {
            self.emit(
                &key,
                EventKind::NewMail,
                (id.clone(), ck.clone()),
                folder,
                None,
            );
        }
        self.emit(
            &key,
            EventKind::Created,
            (id.clone(), ck.clone()),
            folder,
            None,
        );
        (id, ck)
    }

    /// Applies `f` to an item, bumping its change key; returns the new (id, change key).
    pub fn update_item(
        &mut self,
        smtp: &str,
        id: &str,
        f: impl FnOnce(&mut Message),
    ) -> Option<(String, String)> {
        let seq = self.next_seq();
        let key = smtp.to_ascii_lowercase();
        let mbx = self.mailbox_mut(&key)?;
        let item = mbx.items.iter_mut().find(|i| i.id == id)?;
        f(&mut item.msg);
        item.version = seq;
        item.changed_seq = seq;
        item.modified = OffsetDateTime::now_utc();
        let out = (item.id.clone(), item.change_key());
        let folder = item.folder.clone();
        self.emit(&key, EventKind::Modified, out.clone(), &folder, None);
        Some(out)
    }

    /// Removes an item for good.
    pub fn remove_item(&mut self, smtp: &str, id: &str) -> Option<Item> {
        let seq = self.next_seq();
        let key = smtp.to_ascii_lowercase();
        let mbx = self.mailbox_mut(&key)?;
        let pos = mbx.items.iter().position(|i| i.id == id)?;
        let item = mbx.items.remove(pos);
        mbx.tombstones.push(Tombstone {
            folder: item.folder.clone(),
            item_id: item.id.clone(),
            entered_seq: item.entered_seq,
            seq,
        });
        let ck = item.change_key();
        self.emit(
            &key,
            EventKind::Deleted,
            (item.id.clone(), ck),
            &item.folder,
            None,
        );
        Some(item)
    }

    /// Moves an item to a folder of the same mailbox; it gets a new id. Returns (id, change key).
    pub fn move_item(&mut self, smtp: &str, id: &str, to: &str) -> Option<(String, String)> {
        let serial = self.next_serial();
        let seq = self.next_seq();
        let key = smtp.to_ascii_lowercase();
        let new_id = encode_id(IdKind::Item, serial, &key);
        let mbx = self.mailbox_mut(&key)?;
        let item = mbx.items.iter_mut().find(|i| i.id == id)?;
        let old = (item.id.clone(), item.folder.clone());
        let old_entered = item.entered_seq;
        item.id = new_id.clone();
        item.folder = to.to_owned();
        item.entered_seq = seq;
        item.version = seq;
        let ck = item.change_key();
        mbx.tombstones.push(Tombstone {
            folder: old.1.clone(),
            item_id: old.0.clone(),
            entered_seq: old_entered,
            seq,
        });
        self.emit(
            &key,
            EventKind::Moved,
            (new_id.clone(), ck.clone()),
            to,
            Some(old),
        );
        Some((new_id, ck))
    }

    /// Adds a file attachment to an item; returns (attachment id, item change key).
    pub fn add_attachment(
        &mut self,
        smtp: &str,
        item_id: &str,
        mut att: Attachment,
    ) -> Option<(String, String)> {
        let key = smtp.to_ascii_lowercase();
        let serial = self.next_serial();
        att.id = encode_id(IdKind::Attachment, serial, &key);
        let att_id = att.id.clone();
        self.mailbox_ref(&key)?.item(item_id)?;
        let (_, ck) = self.update_item(&key, item_id, |msg| {
            msg.attachments.push(att);
            msg.mime = None;
        })?;
        Some((att_id, ck))
    }

    /// Removes an attachment; returns (item id, item change key).
    pub fn remove_attachment(&mut self, smtp: &str, att_id: &str) -> Option<(String, String)> {
        let item_id = self.mailbox_ref(smtp)?.attachment(att_id)?.0.id.clone();
        self.update_item(smtp, &item_id, |msg| {
            msg.attachments.retain(|a| a.id != att_id);
            msg.mime = None;
        })
    }

    /// Changes in `folder` since sequence `since`, in order, at most `max`; also returns the
    /// sequence to resume from and whether nothing was left out.
    pub fn sync_items<'a>(
        &'a self,
        smtp: &str,
        folder: &str,
        since: u64,
        max: usize,
    ) -> (Vec<SyncChange<'a>>, u64, bool) {
        let Some(mbx) = self.mailbox_ref(smtp) else {
            return (Vec::new(), self.seq, true);
        };
        let mut changes: Vec<(u64, SyncChange<'a>)> = Vec::new();
        for item in mbx.items.iter().filter(|i| i.folder == folder) {
            if item.entered_seq > since {
                changes.push((
                    item.entered_seq.max(item.changed_seq),
                    SyncChange::Create(item),
                ));
            } else if item.changed_seq > since {
                changes.push((item.changed_seq, SyncChange::Update(item)));
            }
        }
        for tomb in &mbx.tombstones {
            // Only items the client could have seen (there at `since`) are reported deleted, as
            // Exchange does: a first sync (no state) never lists deletions.
            if tomb.folder == folder && tomb.seq > since && tomb.entered_seq <= since {
                changes.push((tomb.seq, SyncChange::Delete(tomb.item_id.clone())));
            }
        }
        changes.sort_by_key(|(seq, _)| *seq);
        if changes.len() > max {
            changes.truncate(max);
            let last = changes.last().map(|(s, _)| *s).unwrap_or(since);
            (changes.into_iter().map(|(_, c)| c).collect(), last, false)
        } else {
            (
                changes.into_iter().map(|(_, c)| c).collect(),
                self.seq,
                true,
            )
        }
    }

    /// Queues an event for every subscription that watches it.
    fn emit(
        &mut self,
        mailbox: &str,
        kind: EventKind,
        item: (String, String),
        parent: &str,
        old: Option<(String, String)>,
    ) {
        if self.subscriptions.is_empty() {
            return;
        }
        let seq = self.seq;
        let event = Event {
            kind,
            seq,
            timestamp: OffsetDateTime::now_utc(),
            item,
            parent: parent.to_owned(),
            old,
        };
        let old_parent = event.old.as_ref().map(|(_, f)| f.as_str());
        for sub in self.subscriptions.values_mut() {
            if !sub.kinds.contains(&kind) {
                continue;
            }
            let watched = match &sub.folders {
                None => sub.owner == mailbox,
                Some(list) => list
                    .iter()
                    .any(|(m, f)| m == mailbox && (f == parent || Some(f.as_str()) == old_parent)),
            };
            if watched {
                if sub.queue.len() >= MAX_QUEUED_EVENTS {
                    sub.queue.pop_front();
                }
                sub.queue.push_back(event.clone());
                self.notify = true;
            }
        }
    }

    /// Takes the queued events of the given subscriptions; `None` if one no longer exists.
    pub fn drain_events(&mut self, ids: &[String]) -> Option<Vec<(String, Vec<Event>)>> {
        let mut out = Vec::new();
        for id in ids {
            let sub = self.subscriptions.get_mut(id)?;
            let events: Vec<Event> = sub.queue.drain(..).collect();
            if !events.is_empty() {
                out.push((id.clone(), events));
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_foreign_base64() {
        let id = encode_id(IdKind::Item, 42, "Alice@Contoso.example");
        assert!(id.starts_with("AAMk"), "{id}");
        let d = decode_id(&id).unwrap();
        assert_eq!(d.kind, IdKind::Item);
        assert_eq!(d.serial, 42);
        assert_eq!(d.guid, mailbox_guid("alice@contoso.example"));
        assert_ne!(d.guid, mailbox_guid("bob@contoso.example"));
        assert!(decode_id("DUMMY").is_none());
        assert!(decode_id("AAMkADk=").is_none());
        // The Graph form is the same bytes in the URL-safe alphabet, and only that alphabet.
        let graph = to_graph_id(&id);
        let (back, d2) = from_graph_id(&graph).unwrap();
        assert_eq!((back.as_str(), &d2), (id.as_str(), &d));
        let mut differing = 0;
        for serial in 0..300u64 {
            let id = encode_id(IdKind::Item, serial * 977, "alice@contoso.example");
            if id.contains('+') || id.contains('/') {
                differing += 1;
                assert!(from_graph_id(&id).is_none());
                assert!(from_graph_id(&to_graph_id(&id)).is_some());
            }
        }
        assert!(differing > 0, "no id needed the alphabet swap");
        assert_ne!(change_key(1), change_key(2));
    }

    #[test]
    fn seed_builds_distinguished_and_custom_folders() {
        let dir = Directory::builtin().unwrap();
        let store = Store::from_directory(&dir);
        store.with(|d| {
            let alice = d.mailbox_ref("alice@contoso.example").unwrap();
            let inbox = alice.distinguished("inbox").unwrap();
            assert_eq!(alice.items_in(inbox).count(), 3);
            let root = alice.distinguished("msgfolderroot").unwrap();
            assert!(alice.children(root).any(|f| f.display_name == "Projects"));
            let carol = d.mailbox_ref("carol@contoso.example").unwrap();
            assert!(carol.distinguished("calendar").is_some());
        });
    }
}
