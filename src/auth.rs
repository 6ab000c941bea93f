//! Inbound credentials: Basic header parsing, the users file, verification.
