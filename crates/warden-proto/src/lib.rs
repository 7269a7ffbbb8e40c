//! warden's gRPC contract. The types and service stubs are generated at build time from
//! `proto/warden/v1/*.proto` (the system of record); this crate adds the conversions between them
//! and warden's own types, so that neither side of the wire hand-writes a field mapping.

#![allow(clippy::all, unreachable_pub)]

pub mod pb {
    tonic::include_proto!("warden.v1");
}

mod convert;

pub use convert::*;

/// Largest log chunk or artifact piece one message may carry.
pub const MAX_CHUNK: usize = 1 << 20;

/// Every gRPC error from warden carries the same machine-readable code as the HTTP body, in
/// this metadata key (`job_not_found`, `lease_lost`, ...).
pub const ERROR_CODE_KEY: &str = "warden-error-code";

/// Largest message either side accepts: a chunk plus its envelope.
pub const MAX_MESSAGE: usize = MAX_CHUNK + 64 * 1024;
