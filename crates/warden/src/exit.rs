//! Exit codes of the `warden` binary. Documented in the README; tests hold them fixed.

use warden_api::JobStatus;

pub const OK: i32 = 0;
/// The job ended `failed`.
pub const JOB_FAILED: i32 = 1;
/// Bad flags, a bad config file, or a request the server refused as the caller's mistake (4xx).
pub const USAGE: i32 = 2;
/// The server could not be reached or failed on its side (5xx).
pub const UNAVAILABLE: i32 = 8;

/// `--wait` exit code for a job's final status (see [`JobStatus::exit_code`]).
pub fn for_status(status: JobStatus) -> i32 {
    status.exit_code()
}
