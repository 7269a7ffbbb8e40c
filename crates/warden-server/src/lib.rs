//! warden's control plane.
//!
//! [`service::JobService`] holds every rule about jobs; [`http::app`] and [`grpc::routes`] expose
//! it over HTTP/JSON and gRPC (and [`ui`], the web UI, over the same HTTP API), each mapping the service's errors in one place. [`serve::run`]
//! wires a control plane together: the store (SQLite with an in-process worker pool, or
//! PostgreSQL), the lease reaper, retention's collector ([`gc`]), the listeners.

pub mod artifact_store;
pub mod auth;
pub mod events;
pub mod gc;
pub mod grpc;
pub mod http;
pub mod mcp;
mod memory;
pub mod metrics;
pub mod serve;
pub mod service;
pub mod tls;
pub mod ui;
pub mod webhooks;

pub use http::app;
pub use service::{JobService, ServiceError};
