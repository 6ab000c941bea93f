//! EWS operations over the mailbox store.
