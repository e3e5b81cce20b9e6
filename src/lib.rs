//! regate: a single-binary, Gitee-signed-in Docker/OCI registry and token gateway.
//!
//! `main.rs` only calls [`cli::main`]. The request pipeline is in [`app`]; the registry API in
//! [`registry`]; storage backends in [`storage`]; authentication and the token service in [`auth`].

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod gc;
pub mod gitee;
pub mod http;
pub mod import;
pub mod live;
pub mod metrics;
pub mod mirror;
pub mod notify;
pub mod proxy;
pub mod ratelimit;
pub mod registry;
pub mod replicate;
pub mod server;
pub mod storage;
pub mod trust;
pub mod util;
