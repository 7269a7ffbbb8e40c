//! warden's git side.
//!
//! - [`mirror`]: one bare mirror per repository URL, push URL `DISABLED`, fetched with a clean
//!   environment, a deadline and a size cap, one fetch at a time per mirror.
//! - [`cache`]: one read-only checkout per commit, shared by every job at that commit, evicted
//!   least-recently-used within a size budget, never while in use.
//! - [`proof`]: after each job, the exact clean-tree proof of the tree it saw.
//!
//! Everything here runs git as a separate process ([`git`]): warden links no git library, so a
//! hostile repository meets the same git the operator already trusts, with hooks off.

pub mod cache;
pub mod git;
pub mod mirror;
pub mod proof;
mod size;
mod tree_fs;
mod unused;

use std::path::Path;
use std::time::Duration;

pub use cache::{CacheStats, Checkout, CheckoutCache};
pub use git::Git;
pub use mirror::{MirrorCommit, Mirrors, PUSH_DISABLED, Remote, mirror_id, remote_mirror_id};
pub use proof::TreeProof;
pub use unused::{UnusedMirror, dir_bytes};

/// Why a repository could not be made ready. The `Display` form starts with the reason code a
/// job records (`invalid_ref: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoError {
    /// The commit or ref is not in the repository.
    #[error("invalid_ref: {0}")]
    InvalidRef(String),
    #[error("fetch_failed: {0}")]
    FetchFailed(String),
    #[error("fetch_timeout: fetching took longer than {0} s (git.fetch_timeout_s)")]
    FetchTimeout(u64),
    #[error("fetch_too_large: the fetch exceeded {0} MiB (git.fetch_max_mb)")]
    FetchTooLarge(u64),
    #[error("checkout_failed: {0}")]
    CheckoutFailed(String),
    /// The commit's tree is bigger than the whole checkout cache may hold.
    #[error(
        "checkout_too_large: the tree is {size_mb} MiB in {files} files, over the {budget_mb} MiB \
         the checkout cache may hold (git.checkout_cache_mb)"
    )]
    CheckoutTooLarge {
        size_mb: u64,
        files: u64,
        budget_mb: u64,
    },
    #[error("clean_tree_proof_failed: {0}")]
    ProofFailed(String),
    #[error("repo_io: {0}")]
    Io(String),
}

impl RepoError {
    /// The reason code alone (`invalid_ref`).
    pub fn code(&self) -> &'static str {
        match self {
            RepoError::InvalidRef(_) => "invalid_ref",
            RepoError::FetchFailed(_) => "fetch_failed",
            RepoError::FetchTimeout(_) => "fetch_timeout",
            RepoError::FetchTooLarge(_) => "fetch_too_large",
            RepoError::CheckoutFailed(_) => "checkout_failed",
            RepoError::CheckoutTooLarge { .. } => "checkout_too_large",
            RepoError::ProofFailed(_) => "clean_tree_proof_failed",
            RepoError::Io(_) => "repo_io",
        }
    }
}

/// Mirrors and the checkout cache of one data directory.
pub struct Repos {
    pub mirrors: Mirrors,
    pub cache: CheckoutCache,
}

impl Repos {
    /// Opens `<dir>/mirrors`, `<dir>/trees` and the empty `HOME` git runs with at `<dir>/home`.
    pub fn open(dir: &Path, git: &warden_core::GitConfig) -> std::io::Result<Repos> {
        let g = Git::new(dir.join("home"))?;
        Ok(Repos {
            mirrors: Mirrors::new(
                dir.join("mirrors"),
                g.clone(),
                Duration::from_secs(git.fetch_timeout_s.get()),
                git.fetch_max_mb.get().saturating_mul(1 << 20),
            )?,
            cache: CheckoutCache::open(
                dir.join("trees"),
                g,
                git.checkout_cache_mb.get().saturating_mul(1 << 20),
            )?,
        })
    }

    /// Gets the tree of `sha` ready: fetched into the mirror if needed, then from the cache.
    pub async fn checkout(&self, remote: &Remote, sha: &str) -> Result<Checkout, RepoError> {
        // A cached commit needs nothing from the mirror: no git process on the warm path.
        if let Some(co) = self.cache.cached(&remote_mirror_id(remote), sha) {
            return Ok(co);
        }
        let commit = self.mirrors.ensure_commit(remote, sha).await?;
        self.cache.checkout(&commit).await
    }
}
