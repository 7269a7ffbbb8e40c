//! warden's control plane.
//!
//! [`service::JobService`] holds every rule about jobs; [`http::app`] exposes it over HTTP/JSON
//! (and the gRPC server will call the same service). [`serve::run`] wires the embedded default
//! together: SQLite store, in-process worker pool, lease reaper, HTTP listener.

pub mod error;
pub mod grpc;
pub mod http;
pub mod serve;
pub mod service;

pub use error::ApiError;
pub use http::app;
pub use service::JobService;
