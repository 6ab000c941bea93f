//! ews-gateway: keeps Basic-auth EWS clients working against Exchange with app-only OAuth.
//!
//! This crate is the gateway's I/O: the server, the request pipeline (authenticate -> authorise
//! -> token -> rewrite -> forward -> respond -> audit), configuration, tokens and telemetry. Its
//! decisions live in `ews-gateway-core` (re-exported here as `soap`, `rewrite`, `policy`,
//! `limits`), shared HTTP/TLS plumbing in `ews-http`, and, behind the default `sim` feature, the
//! simulated Exchange Online (`ews-sim`, re-exported as `sim`) that tests and `demo` run against.
#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod autodiscover;
pub mod backend;
pub mod check;
pub mod config;
pub mod credential;
#[cfg(feature = "sim")]
pub mod demo;
pub mod error;
pub mod graph;
pub mod graph_shaping;
pub mod local;
pub mod lockout;
pub mod proxy;
pub mod report;
pub mod server;
pub mod telemetry;
pub mod token;
pub mod tracked;
pub mod translate;

pub use ews_gateway_core::{canonical, limits, policy, rewrite, soap, wellformed};
pub use ews_http::{http_util, tls};
#[cfg(feature = "sim")]
pub use ews_sim as sim;
