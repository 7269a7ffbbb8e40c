//! warden's domain model. No IO happens here: configuration is parsed from a string, params are
//! checked against a job type, repositories against the allowlist, states against the state
//! machine.

pub mod allowlist;
pub mod config;
pub mod id;
pub mod image;
pub mod params;
pub mod record;
pub mod repo;
pub mod state;

pub use allowlist::RepoRefused;
pub use config::{
    CgroupLimit, Config, ConfigError, GitConfig, GvisorConfig, InvalidConfig, IsolationTier,
    JobType, Limits, RepoConfig, RootMode, Stage,
};
pub use id::JobId;
pub use params::{ParamError, validate_params};
pub use warden_api::JobStatus;
