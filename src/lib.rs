//! ews-gateway: keeps Basic-auth EWS clients working against Exchange with app-only OAuth.
//!
//! The crate holds two products that share plumbing:
//! - the gateway (authenticate -> authorise -> token -> rewrite -> forward -> respond -> audit);
//! - `sim`, a strict simulated Exchange Online (Entra token endpoint, EWS, mailboxes) that the
//!   tests and `demo` run against.
#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod autodiscover;
pub mod canonical;
pub mod check;
pub mod config;
pub mod credential;
pub mod demo;
pub mod error;
pub mod http_util;
pub mod limits;
pub mod lockout;
pub mod policy;
pub mod proxy;
pub mod report;
pub mod rewrite;
pub mod server;
pub mod sim;
pub mod soap;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod tracked;
pub mod upstream;
pub mod wellformed;
