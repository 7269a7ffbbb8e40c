//! Where things are inside the sandbox, as the job sees them. The worker uses the same names
//! when it writes the job's environment, so that each is spelt once.

/// The worktree (read-only) and the job's working directory.
pub const WORK: &str = "/work";
/// The job's artifact directory, writable, its `ARTIFACT_DIR`.
pub const ARTIFACTS: &str = "/artifacts";
/// The job's private, size-capped scratch space, its `TMPDIR`.
pub const TMP: &str = "/tmp";
/// The job's `HOME`, inside [`TMP`].
pub const HOME: &str = "/tmp/home";
/// The job's hostname (its own UTS namespace).
pub const HOSTNAME: &str = "warden";
/// The job's uid and gid inside its user namespace.
pub const JOB_UID: u32 = 1000;
/// The `PATH` every job starts with.
pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
