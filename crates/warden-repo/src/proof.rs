//! The clean-tree proof: is the tree a job saw byte-identical to its commit?
//!
//! `git status --porcelain` over the cached tree, with the index written when the tree was
//! checked out: it compares the commit with the index (a changed index shows as staged) and the
//! index with every file (stat data first; a file whose stat data changed, or that was written
//! in the same instant as the index, is re-hashed and compared by content), and lists every
//! file that is not in the commit, ignored ones included. That covers `git diff --exit-code`
//! (index against files) and more. Around it warden checks what git does not look at: `HEAD`
//! still names the commit, and the `.git` mount point in the tree is still an empty directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::RepoError;
use crate::git::Git;

/// At most this many changed paths are listed (the count is always exact).
pub const MAX_LISTED: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeProof {
    pub clean: bool,
    /// Changed, added or removed paths, relative to the tree (lossy UTF-8), sorted.
    pub changed: Vec<String>,
    /// How many there are in all (`changed` stops at [`MAX_LISTED`]).
    pub changed_count: usize,
}

pub(crate) async fn prove(
    git: &Git,
    env: &[(String, PathBuf)],
    tree: &Path,
    sha: &str,
    gitdir: &Path,
) -> Result<TreeProof, RepoError> {
    let mut cmd = git.command(None);
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    // Optional locks on: when git had to re-hash files whose stat data could not be trusted
    // (written in the same second as the index: "racily clean"), it records their stat data in
    // the index, so the next proof compares stat data instead of hashing every file again. It
    // only does so for files whose content matched; a changed file stays changed.
    let out = cmd
        .env("GIT_OPTIONAL_LOCKS", "1")
        .args(["status", "--porcelain=v1", "-z"])
        .args([
            "--untracked-files=all",
            "--ignored=matching",
            "--no-renames",
        ])
        .args(["--ignore-submodules=none"])
        .timeout(Duration::from_secs(600))
        .run()
        .await
        .map_err(|e| RepoError::ProofFailed(e.to_string()))?;
    if !out.success() {
        return Err(RepoError::ProofFailed(format!(
            "git status: {}",
            out.stderr_tail()
        )));
    }
    let mut changed: Vec<String> = out
        .stdout
        .split(|b| *b == 0)
        .filter(|e| e.len() > 3)
        .map(|e| String::from_utf8_lossy(&e[3..]).into_owned())
        .collect();

    let head = std::fs::read_to_string(gitdir.join("HEAD")).unwrap_or_default();
    if head.trim() != sha {
        changed.push(".git/HEAD".into());
    }
    let mount_point = tree.join(".git");
    let empty_dir = std::fs::symlink_metadata(&mount_point).is_ok_and(|m| m.is_dir())
        && std::fs::read_dir(&mount_point).is_ok_and(|mut d| d.next().is_none());
    if !empty_dir {
        changed.push(".git".into());
    }
    changed.sort();
    changed.dedup();
    let changed_count = changed.len();
    changed.truncate(MAX_LISTED);
    Ok(TreeProof {
        clean: changed_count == 0,
        changed,
        changed_count,
    })
}
