//! `artifact.json`: the record of a finished job, written into its artifact directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use warden_api::{Invariants, JobStatus, ResourceUsage};

#[derive(Debug, Clone, Serialize)]
pub struct ArtifactJson {
    pub job_id: String,
    pub job_type: String,
    pub tenant: String,
    pub repo: Option<String>,
    pub remote_url: Option<String>,
    pub sha: Option<String>,
    /// The ref the submission named, resolved to `sha` at submission.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    pub params: BTreeMap<String, String>,
    pub status: JobStatus,
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub attempt: u32,
    pub timings: Timings,
    pub resources: Option<ResourceUsage>,
    /// What enforced each limit (`rlimit`, `supervisor`, `worker`) or that it was not enforced.
    pub limits: BTreeMap<String, String>,
    /// `read_only_ok`, `clean_tree_ok`, the commit's tree id and the changed paths. `null`
    /// where they do not apply: a job without a repository has no worktree to keep.
    pub invariants: Invariants,
    /// How the worktree was obtained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkout: Option<CheckoutSummary>,
    pub isolation: String,
    pub unsafe_fallback: bool,
    pub warnings: Vec<String>,
    pub log: LogSummary,
    /// A staged job's stages: how each ended, when, and its range of the log.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<warden_api::StageRecord>,
    /// Its JUnit reports' test cases by status (job types with `results:`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tests: Option<warden_api::TestCounts>,
    /// What the job declared in `warden-outputs.json` (`{"outputs": {…}}`, checked; empty
    /// without one).
    pub outputs: serde_json::Map<String, serde_json::Value>,
    /// A review bundle's outcome, at the top level: `size_cap_exceeded`, and with the fallback
    /// `review_packets_archive`, `review_packets_dir` and `size_cap_fallback`.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewFields>,
    /// Files the job left in its artifact directory (relative paths), warden's own excluded.
    pub files: Vec<String>,
    /// The listing of `files` stopped at its limit (10,000 entries): there are more.
    pub files_truncated: bool,
}

/// `artifact.json`'s review bundle fields.
#[derive(Debug, Clone, Serialize)]
pub struct ReviewFields {
    pub size_cap_exceeded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_packets_archive: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_packets_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_cap_fallback: Option<crate::review::Fallback>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: String,
    pub queue_ms: u64,
    pub wall_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckoutSummary {
    /// The tree was already in the checkout cache.
    pub cache_hit: bool,
    /// Time to get it ready (fetch and checkout on a miss).
    pub ms: u64,
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogSummary {
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub truncated: bool,
}

/// Writes `artifact.json` without trusting anything the job left in the directory: the file is
/// created under a fresh name (`create_new` never follows or reuses an existing entry) and
/// renamed into place, which replaces a planted symlink or file instead of writing through it;
/// a directory the job planted under that name is removed first (the job is gone by then).
pub fn write_artifact_json(dir: &Path, record: &ArtifactJson) -> std::io::Result<()> {
    let mut body = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    body.push(b'\n');
    write_warden_file(dir, "artifact.json", &body)
}

/// Writes a file of warden's (`artifact.json`, `egress.jsonl`) into a sealed artifact
/// directory: whole or not at all (a fresh name, renamed over whatever the job left under that
/// name).
///
/// Not synced: the store the same record is in commits without an fsync (SQLite's
/// `synchronous = NORMAL`), so both survive warden being killed and either may lose its last
/// moments to a power loss; an fsync here cost a tenth of the server's CPU per job.
pub fn write_warden_file(dir: &Path, name: &str, body: &[u8]) -> std::io::Result<()> {
    let target = dir.join(name);
    if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
        // std's remove_dir_all never follows links out of the tree.
        std::fs::remove_dir_all(&target)?;
    }
    let tmp = dir.join(format!(".{name}.{}", uuid::Uuid::now_v7().simple()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    file.write_all(body)?;
    drop(file);
    std::fs::rename(&tmp, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ArtifactJson {
        ArtifactJson {
            job_id: "j".into(),
            job_type: "t".into(),
            tenant: "default".into(),
            repo: None,
            remote_url: None,
            sha: None,
            git_ref: None,
            params: BTreeMap::new(),
            status: JobStatus::Succeeded,
            reason: None,
            exit_code: Some(0),
            signal: None,
            attempt: 1,
            timings: Timings {
                created_at: "x".into(),
                started_at: None,
                finished_at: "y".into(),
                queue_ms: 0,
                wall_ms: 1,
            },
            resources: None,
            limits: BTreeMap::new(),
            invariants: Invariants::default(),
            checkout: None,
            isolation: "unsafe_fallback".into(),
            unsafe_fallback: true,
            warnings: vec![],
            log: LogSummary {
                stdout_bytes: 0,
                stderr_bytes: 0,
                truncated: false,
            },
            stages: vec![],
            tests: None,
            review: None,
            outputs: serde_json::Map::new(),
            files: vec![],
            files_truncated: false,
        }
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let dir = tempfile_dir();
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("artifact.json")).unwrap();
        write_artifact_json(&dir, &sample()).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let meta = std::fs::symlink_metadata(dir.join("artifact.json")).unwrap();
        assert!(meta.is_file());
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("artifact.json")).unwrap()).unwrap();
        assert_eq!(v["status"], "succeeded");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_planted_directory_is_replaced() {
        let dir = tempfile_dir();
        std::fs::create_dir_all(dir.join("artifact.json/deep")).unwrap();
        std::fs::write(dir.join("artifact.json/deep/x"), "x").unwrap();
        write_artifact_json(&dir, &sample()).unwrap();
        assert!(
            std::fs::symlink_metadata(dir.join("artifact.json"))
                .unwrap()
                .is_file()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("warden-art-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
