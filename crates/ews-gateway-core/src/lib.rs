//! The I/O-free core of ews-gateway: everything the gateway decides, nothing it does.
//!
//! - [`soap`]: the EWS SOAP model (namespaces, operations, faults, impersonation targets);
//! - [`rewrite`]: the bounded, namespace-aware scanner and rewriter of an envelope's head;
//! - [`auth`]: Basic credentials, login names, the users file and its password hashes;
//! - [`policy`]: which mailbox a principal may act as and which operations it may call;
//! - [`lockout`]: when failures start a lockout and how long it lasts;
//! - [`limits`]: per-principal rates and per-mailbox concurrency;
//! - [`xml`]: a small DOM for the few small documents read whole;
//! - [`wellformed`]: the XML 1.0 well-formedness rules the head scan enforces beyond quick-xml;
//! - [`canonical`]: the client's HTTP framing (Content-Type, SOAPAction) checked against the
//!   envelope, and the canonical framing sent upstream.
//!
//! No network, no async runtime: the compiler keeps hyper, tokio and reqwest out of this crate.
#![forbid(unsafe_code)]

pub mod auth;
pub mod canonical;
pub mod limits;
pub mod lockout;
pub mod policy;
pub mod rewrite;
pub mod soap;
pub mod wellformed;
pub mod xml;
