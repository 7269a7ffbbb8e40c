//! warden's domain model. No IO happens here: configuration is parsed from a string, params are
//! checked against a job type, states are checked against the state machine.

pub mod config;
pub mod id;
pub mod params;
pub mod repo;
pub mod state;

pub use config::{Config, ConfigError, GitConfig, JobType, Limits, RepoConfig};
pub use id::JobId;
pub use params::{ParamError, validate_params};
pub use warden_api::JobStatus;
