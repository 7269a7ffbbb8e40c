//! Review bundles through the real server and sandbox: under the cap, over it (a 3 MB diff
//! across 200 files with one file larger than the cap), forced, a binary file, an unknown
//! base, an empty range, and bad params refused at submission (422, as every bad param).

use std::path::Path;
use std::process::Command;

use warden_api::{ErrorCode, JobStatus, JobView, SubmitJobRequest};
use warden_client::{Client, ClientError};

use crate::support::{Server, git, wait_terminal, write_config_with};

fn commit_all(repo: &Path, message: &str) -> String {
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

/// base: 200 small files; small: one line changed; big: every file grows ~15 KB, one file by
/// 400 KB (over the 256 KiB cap), and a binary file appears.
fn project(parent: &Path) -> (std::path::PathBuf, String, String, String) {
    let repo = parent.join("project");
    std::fs::create_dir_all(repo.join("src")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    for i in 0..200 {
        std::fs::write(repo.join(format!("src/f{i:03}.txt")), format!("file {i}\n")).unwrap();
    }
    let base = commit_all(&repo, "base: 200 files");
    std::fs::write(repo.join("src/f000.txt"), "file 0, reviewed\n").unwrap();
    let small = commit_all(&repo, "small: one line");
    for i in 0..200 {
        let line = format!("line of file {i} with some text to review, padded out ........\n");
        let n = if i == 7 { 6000 } else { 230 };
        std::fs::write(repo.join(format!("src/f{i:03}.txt")), line.repeat(n)).unwrap();
    }
    std::fs::write(repo.join("logo.bin"), [0u8, 1, 2, 255, 0, 7, 0, 0, 9]).unwrap();
    let big = commit_all(&repo, "big: everything grows");
    (repo, base, small, big)
}

fn req(sha: &str, params: &[(&str, &str)]) -> SubmitJobRequest {
    SubmitJobRequest {
        job_type: "review".into(),
        repo_name: Some("project".into()),
        sha: Some(sha.into()),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..SubmitJobRequest::default()
    }
}

async fn run(c: &Client, r: SubmitJobRequest) -> (JobView, serde_json::Value) {
    let sub = c.submit(&r).await.unwrap();
    let job = wait_terminal(c, &sub.job_id).await;
    let record = match c.artifact(&job.job_id, "artifact.json").await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
        Err(e) => panic!("{job:?}: {e}"),
    };
    (job, record)
}

async fn text(c: &Client, job: &JobView, path: &str) -> String {
    String::from_utf8_lossy(&c.artifact(&job.job_id, path).await.unwrap()).into_owned()
}

#[tokio::test]
async fn review_bundles_fit_fall_back_to_packets_over_the_cap_and_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, base, small, big) = project(dir.path());
    let config = write_config_with(
        dir.path(),
        &format!(
            "repos:\n  project: {{url: \"{}\"}}\njob_types:\n  review:\n    kind: review_bundle\n    requires_repo: true\n    timeout_s: 120\n  review-tiny:\n    kind: review_bundle\n    requires_repo: true\n    timeout_s: 120\n    limits: {{artifacts_mb: 1}}\n",
            repo.display()
        ),
    );
    let server = Server::start(&config);
    let c = server.client();

    // Under the cap: the bundle alone.
    let (job, record) = run(&c, req(&small, &[("SINCE_SHA", &base)])).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);
    assert_eq!(record["size_cap_exceeded"], false);
    assert!(record.get("review_packets_archive").is_none());
    let bundle = text(&c, &job, "REVIEW_BUNDLE.txt").await;
    assert!(
        bundle.starts_with(&format!("REVIEW BUNDLE {base}..{small}\n")),
        "{bundle}"
    );
    assert!(bundle.contains(&format!("commit {small}")));
    assert!(bundle.contains("    small: one line"));
    assert!(bundle.contains("-file 0\n+file 0, reviewed"), "{bundle}");
    assert!(job.invariants.as_ref().unwrap().clean_tree_ok == Some(true));

    // Over the cap: per-file packets, each under it; the large file split in order.
    let (job, record) = run(&c, req(&big, &[("SINCE_SHA", &small)])).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(job.warnings, ["SIZE_CAP_EXCEEDED"]);
    assert_eq!(record["size_cap_exceeded"], true);
    assert_eq!(record["review_packets_archive"], "REVIEW_PACKETS.tar.gz");
    let packets_dir = record["review_packets_dir"].as_str().unwrap().to_string();
    let fallback = &record["size_cap_fallback"];
    assert_eq!(fallback["size_cap_kb"], 256);
    assert_eq!(fallback["files"], 201);
    assert!(
        fallback["bundle_bytes"].as_u64().unwrap() > 3_000_000,
        "{fallback}"
    );
    let n = fallback["packets"].as_u64().unwrap();
    assert!(n >= 12, "{fallback}");
    let listing = c.artifacts(&job.job_id).await.unwrap();
    let packets: Vec<_> = listing
        .artifacts
        .iter()
        .filter(|a| a.path.starts_with(&format!("{packets_dir}/packet_")))
        .collect();
    assert_eq!(packets.len() as u64, n);
    assert!(packets.iter().all(|p| p.size <= 256 * 1024), "{packets:?}");
    let mut parts = Vec::new();
    let mut all = String::new();
    for i in 1..=n {
        let p = text(&c, &job, &format!("{packets_dir}/packet_{i:03}.txt")).await;
        assert!(
            p.starts_with(&format!("REVIEW PACKET {i} of {n} ")),
            "{p:.200}"
        );
        let body = p.split_once("\n\n").unwrap().1.to_string();
        if p.contains("src/f007.txt (part ") {
            parts.push(body.clone());
        }
        all.push_str(&body);
    }
    assert!(parts.len() >= 2, "the 400 KB file spans packets");
    let whole = git(&repo, &["diff", &small, &big, "--", "src/f007.txt"]);
    assert_eq!(
        parts.concat().trim_end(),
        whole.trim_end(),
        "its parts, in order, are its diff"
    );
    // Every file's diff is in some packet; the binary file is named, not inlined.
    assert!(all.contains("Binary files /dev/null and b/logo.bin differ"));
    assert!(
        text(&c, &job, "REVIEW_BUNDLE.txt")
            .await
            .contains("logo.bin")
    );
    for name in [
        "HOW_TO_PASTE.txt",
        "README_REVIEW_PACKETS.txt",
        "size_cap_meta.json",
    ] {
        assert!(!text(&c, &job, name).await.is_empty(), "{name}");
    }
    let archive = dir.path().join("packets.tar.gz");
    std::fs::write(
        &archive,
        c.artifact(&job.job_id, "REVIEW_PACKETS.tar.gz")
            .await
            .unwrap(),
    )
    .unwrap();
    let listed = Command::new("tar")
        .arg("-tzf")
        .arg(&archive)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(
        listed.lines().filter(|l| l.contains("packet_")).count() as u64,
        n,
        "{listed}"
    );

    // Forced: the fallback whatever the size.
    let (job, record) = run(
        &c,
        req(&small, &[("SINCE_SHA", &base), ("FORCE_SIZE_CAP", "1")]),
    )
    .await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(job.warnings, ["SIZE_CAP_EXCEEDED"]);
    assert_eq!(record["size_cap_fallback"]["forced"], true);
    assert_eq!(record["size_cap_fallback"]["packets"], 1);

    // A base the repository does not have: the job fails before it runs.
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let sub = c
        .submit(&req(&small, &[("SINCE_SHA", unknown)]))
        .await
        .unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Failed, "{job:?}");
    assert!(
        job.reason
            .as_deref()
            .unwrap()
            .starts_with("invalid_ref: SINCE_SHA: "),
        "{:?}",
        job.reason
    );
    assert_eq!(job.stdout_bytes + job.stderr_bytes, 0);

    // The bundle cannot be written whole (a 1 MiB artifacts cap): the job fails, never a
    // partial bundle presented as done.
    let sub = c
        .submit(&SubmitJobRequest {
            job_type: "review-tiny".into(),
            ..req(&big, &[("SINCE_SHA", &small)])
        })
        .await
        .unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::Failed, "{job:?}");
    assert_eq!(job.exit_code, Some(1));
    let err =
        String::from_utf8_lossy(&c.logs_raw(&job.job_id, "stderr", 0).await.unwrap()).into_owned();
    assert!(
        err.starts_with("review bundle: /artifacts/REVIEW_BUNDLE.txt: "),
        "{err}"
    );

    // The base is the commit: an empty bundle, succeeded.
    let (job, record) = run(&c, req(&small, &[("SINCE_SHA", &small)])).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(record["size_cap_exceeded"], false);
    let bundle = text(&c, &job, "REVIEW_BUNDLE.txt").await;
    assert!(
        bundle.contains("== patch ==\n") && !bundle.contains("diff --git"),
        "{bundle}"
    );

    // Bad params are refused at submission, with what to fix.
    for (params, fragment) in [
        (vec![], "needs the param SINCE_SHA"),
        (vec![("SINCE_SHA", "main")], "must be a full commit id"),
        (
            vec![("SINCE_SHA", base.as_str()), ("SIZE_CAP_KB", "0")],
            "SIZE_CAP_KB \"0\" must be a whole number of KiB",
        ),
        (
            vec![("SINCE_SHA", base.as_str()), ("FORCE_SIZE_CAP", "yes")],
            "FORCE_SIZE_CAP \"yes\" must be 0 or 1",
        ),
    ] {
        match c.submit(&req(&small, &params)).await {
            Err(ClientError::Api {
                status: 422,
                code: ErrorCode::InvalidParam,
                message,
            }) => assert!(message.contains(fragment), "{message}"),
            other => panic!("{params:?}: {other:?}"),
        }
    }
}
