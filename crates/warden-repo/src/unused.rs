//! Mirrors no job has used for a while, removed by retention's collector (a mirror is fetched
//! again when a job needs it later).

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::mirror::Mirrors;

/// The file whose modification time says when a job last used the mirror.
const USED_STAMP: &str = "warden-last-used";

/// Re-stamped at most this often: a busy mirror is not written on every job.
const STAMP_EVERY: Duration = Duration::from_secs(3600);

/// Records that a job uses `mirror` now (best effort: a mirror not made yet has no stamp and
/// counts as used when its `HEAD` was written).
pub(crate) fn mark_used(mirror: &Path) {
    let stamp = mirror.join(USED_STAMP);
    let fresh = std::fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age < STAMP_EVERY);
    if fresh || !mirror.join("HEAD").is_file() {
        return;
    }
    if let Ok(f) = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&stamp)
    {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// When a job last used the mirror: its stamp, else when it was cloned.
fn last_used(mirror: &Path) -> Option<SystemTime> {
    [mirror.join(USED_STAMP), mirror.join("HEAD")]
        .iter()
        .find_map(|p| std::fs::symlink_metadata(p).and_then(|m| m.modified()).ok())
}

/// Bytes of the regular files beneath `dir`, never following links.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total = total.saturating_add(m.len());
            }
        }
    }
    total
}

/// A mirror the collector removed (or, on a dry run, would remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusedMirror {
    /// Its directory name under `mirrors/`.
    pub id: String,
    pub bytes: u64,
    pub last_used: Option<SystemTime>,
}

impl Mirrors {
    /// Removes the mirrors last used before `unused_since` that no queued or running job
    /// needs: `needed` holds the mirror ids of those jobs' URLs ([`crate::mirror_id`]; a
    /// mirror fetched with a login is the same id with a `.login-…` tail). Each mirror is
    /// checked again under its lock (a fetch or clone holds it) and renamed aside before it
    /// is deleted, so no job ever sees half a mirror. With `dry_run`, only says which.
    pub async fn remove_unused(
        &self,
        unused_since: SystemTime,
        needed: &HashSet<String>,
        dry_run: bool,
    ) -> Vec<UnusedMirror> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.root()) else {
            return out;
        };
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".tmp-"))
            .collect();
        names.sort();
        for id in names {
            let base = id.split_once(".login-").map_or(id.as_str(), |(b, _)| b);
            if needed.contains(base) {
                continue;
            }
            let path = self.root().join(&id);
            let lock = self.lock_for(&id);
            let _turn = lock.lock().await;
            let Some(used) = last_used(&path) else {
                continue;
            };
            if used >= unused_since {
                continue;
            }
            let bytes = dir_bytes(&path);
            if !dry_run {
                let aside = self.root().join(format!(".tmp-gc-{id}"));
                if let Err(e) = std::fs::rename(&path, &aside) {
                    tracing::warn!(mirror = %id, error = %e, "could not remove an unused mirror");
                    continue;
                }
                let _ = std::fs::remove_dir_all(&aside);
            }
            out.push(UnusedMirror {
                id,
                bytes,
                last_used: Some(used),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_is_the_last_use_and_falls_back_to_the_clone() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path();
        assert_eq!(last_used(m), None);
        mark_used(m);
        assert!(!m.join(USED_STAMP).exists(), "no HEAD: not a mirror yet");
        std::fs::write(m.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        let old = SystemTime::now() - Duration::from_secs(40 * 86_400);
        std::fs::File::options()
            .write(true)
            .open(m.join("HEAD"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(last_used(m), Some(old));
        mark_used(m);
        let used = last_used(m).unwrap();
        assert!(used > old + Duration::from_secs(39 * 86_400));
        assert_eq!(dir_bytes(m), "ref: refs/heads/main\n".len() as u64);
    }

    fn fake_mirror(root: &Path, id: &str, used: SystemTime) {
        let m = root.join(id);
        std::fs::create_dir_all(m.join("objects")).unwrap();
        std::fs::write(m.join("objects/pack"), vec![0u8; 1000]).unwrap();
        std::fs::write(m.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(m.join("HEAD"))
            .unwrap()
            .set_modified(used)
            .unwrap();
    }

    #[tokio::test]
    async fn unused_mirrors_go_unless_a_job_needs_them() {
        let dir = tempfile::tempdir().unwrap();
        let git = crate::Git::new(dir.path().join("home")).unwrap();
        let mirrors = Mirrors::new(
            dir.path().join("mirrors"),
            git,
            Duration::from_secs(60),
            1 << 30,
        )
        .unwrap();
        let root = mirrors.root().to_path_buf();
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        fake_mirror(&root, "aaaa-old", now - 40 * day);
        fake_mirror(&root, "bbbb-needed", now - 40 * day);
        fake_mirror(&root, "bbbb-needed.login-1234", now - 40 * day);
        fake_mirror(&root, "cccc-fresh", now - day);
        let needed = HashSet::from(["bbbb-needed".to_string()]);
        let since = now - 30 * day;

        let would = mirrors.remove_unused(since, &needed, true).await;
        let ids: Vec<&str> = would.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["aaaa-old"]);
        assert!(would[0].bytes >= 1000);
        assert!(root.join("aaaa-old").is_dir(), "a dry run deletes nothing");

        let removed = mirrors.remove_unused(since, &needed, false).await;
        assert_eq!(removed, would);
        let mut left: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["bbbb-needed", "bbbb-needed.login-1234", "cccc-fresh"],
            "nothing half-removed is left behind"
        );
    }
}
