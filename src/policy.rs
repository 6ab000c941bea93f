//! Mailbox and operation policy: which mailbox a principal may act as.
