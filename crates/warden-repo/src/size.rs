//! A checkout's size, known before it is written: a hostile repository can be a small pack of
//! highly compressible blobs that would inflate onto the disk.

use std::time::Duration;

use crate::git::Git;
use crate::{MirrorCommit, RepoError};

/// Refuses a commit whose tree is bigger than `budget_bytes` (the whole checkout cache), from
/// the mirror's own record of its blobs' sizes (`git ls-tree -r -l`): before a byte is written.
pub(crate) async fn check_tree_size(
    git: &Git,
    commit: &MirrorCommit,
    budget_bytes: u64,
) -> Result<(), RepoError> {
    let out = git
        .command(None)
        .env("GIT_DIR", &commit.mirror)
        .args(["ls-tree", "-r", "-l", "-z", "--full-tree"])
        .arg(&commit.sha)
        .timeout(Duration::from_secs(600))
        .run()
        .await
        .map_err(|e| RepoError::CheckoutFailed(format!("ls-tree: {e}")))?;
    if !out.success() {
        return Err(RepoError::CheckoutFailed(out.stderr_tail()));
    }
    let (bytes, files) = tree_size(&out.stdout);
    if bytes > budget_bytes {
        return Err(RepoError::CheckoutTooLarge {
            size_mb: bytes.div_ceil(1 << 20),
            files,
            budget_mb: budget_bytes >> 20,
        });
    }
    Ok(())
}

/// Total blob bytes and entries of `git ls-tree -r -l -z` output (`<mode> <type> <object>
/// <size>\t<path>\0` per entry; a submodule's size is `-`).
fn tree_size(listing: &[u8]) -> (u64, u64) {
    let mut bytes = 0u64;
    let mut files = 0u64;
    for entry in listing.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let head = entry.split(|b| *b == b'\t').next().unwrap_or_default();
        let size = std::str::from_utf8(head)
            .ok()
            .and_then(|h| h.split_whitespace().nth(3))
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        bytes = bytes.saturating_add(size);
        files += 1;
    }
    (bytes, files)
}

#[cfg(test)]
mod tests {
    use super::tree_size;

    #[test]
    fn tree_size_sums_blobs_and_counts_entries() {
        let listing = b"100644 blob 1111111111111111111111111111111111111111    1048576\tbig\0\
100755 blob 2222222222222222222222222222222222222222         12\tdir/run.sh\0\
160000 commit 3333333333333333333333333333333333333333       -\tsub\0";
        assert_eq!(tree_size(listing), ((1 << 20) + 12, 3));
        assert_eq!(tree_size(b""), (0, 0));
    }
}
