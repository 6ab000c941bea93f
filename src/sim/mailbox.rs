//! In-memory mailbox contents: folders, items, attachments, subscriptions.

use super::directory::Directory;

/// All mailboxes' contents.
#[derive(Debug, Default)]
pub struct Store {}

impl Store {
    /// Builds the store from the seed's folders and messages.
    pub fn from_directory(_directory: &Directory) -> Self {
        Self {}
    }
}
