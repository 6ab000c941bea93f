//! HTTP and TLS plumbing shared by the gateway and the simulator: the body type, the connection
//! loop with its limits and graceful shutdown, and certificates (loading, reloading, generating).
//!
//! A crate of its own because both `ews-gateway` and `ews-sim` serve HTTP the same way, and the
//! simulator must not depend on the gateway (nor the gateway on the simulator).
#![forbid(unsafe_code)]

pub mod http_util;
pub mod tls;
