//! regate: a single-binary, Gitee-signed-in Docker/OCI registry and token gateway.
//!
//! `main.rs` only calls [`cli::main`]. The rooms, from the ground floor up (each may import only
//! the rooms below it; `tests/architecture.rs` checks it):
//!
//! - [`types`]: names, digests, references, scopes and actions, byte streams. Imports nothing.
//! - `util`, `live`, `ratelimit`: small helpers.
//! - `config`: the configuration as plain data, parsed and checked; builds nothing.
//! - `http`: bodies, the one error type (`http::ApiError`) and the one HTML layout.
//! - `storage`: the backends (fs, memory, S3/OSS/COS, Git LFS) behind one interface.
//! - `metrics`, `mirror`, `registry`: the registry API over storage.
//! - `auth`: credentials, the identity-source interface, policy, tokens, the token endpoint.
//! - `gitee`: Gitee as an identity source (implements auth's interface).
//! - `notify`, `gc`, `proxy`, `trust`, `replicate`: features beside the registry.
//! - `api`, `web`: the JSON API for CLI passwords, the browser pages.
//! - `server`: listeners, TLS, connection limits; calls a `server::Handler`.
//! - `gateway`: the request pipeline (client address, hygiene, route, authenticate, authorise,
//!   dispatch, respond and log); implements `server::Handler`.
//! - `bootstrap`: turns the config into running parts and starts the loops.
//! - [`cli`]: the commands.

mod api;
mod auth;
mod bootstrap;
pub mod cli;
mod config;
mod gateway;
mod gc;
mod gitee;
mod http;
mod live;
mod metrics;
mod mirror;
/// Public for webhook receivers: [`notify::sign`] is the delivery signature (nothing else in it is
/// dead: checked with the module private).
pub mod notify;
mod proxy;
mod ratelimit;
mod registry;
mod replicate;
mod server;
mod storage;
mod trust;
pub mod types;
mod util;
mod web;

/// The `/v2/` path classifier, for the fuzz target.
pub use registry::{classify, Route};
