//! Hostile repositories: each has its exact expected outcome, and none makes warden read or
//! write outside its data directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use warden_api::{JobStatus, JobView, SubmitJobRequest};
use warden_client::Client;

use crate::support::{Server, git, wait_job, write_config_with};

/// A repository at `<tmp>/repo` built by `build`, committed; returns its path and HEAD.
fn repo(tmp: &Path, build: impl FnOnce(&Path)) -> (PathBuf, String) {
    let repo = tmp.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    build(&repo);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "hostile"]);
    let head = git(&repo, &["rev-parse", "HEAD"]);
    (repo, head)
}

/// Starts a server with `repo` allowlisted as `r` and one job type `j` running `script`.
fn server(dir: &Path, repo: &Path, script: &str, extra: &str) -> Server {
    let argv = serde_json::to_string(&["/bin/sh", "-c", script]).unwrap();
    Server::start(&write_config_with(
        dir,
        &format!(
            "repos:\n  r: {{url: \"{}\"}}\njob_types:\n  j:\n    argv: {argv}\n    requires_repo: true\n    timeout_s: 120\n{extra}",
            repo.display()
        ),
    ))
}

async fn run(c: &Client, sha: &str) -> (JobView, String) {
    let req = SubmitJobRequest {
        job_type: "j".into(),
        repo_name: Some("r".into()),
        sha: Some(sha.into()),
        ..SubmitJobRequest::default()
    };
    let sub = c.submit(&req).await.unwrap();
    let job = wait_job(c, &sub.job_id, Duration::from_secs(300), |j| {
        j.status.is_terminal()
    })
    .await;
    let out = c.logs_raw(&job.job_id, "stdout", 0).await.unwrap();
    (job, String::from_utf8_lossy(&out).into_owned())
}

fn assert_clean_success(job: &JobView, out: &str) {
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}\n{out}");
    let inv = job.invariants.as_ref().unwrap();
    assert_eq!(inv.read_only_ok, Some(true));
    assert_eq!(inv.clean_tree_ok, Some(true), "{inv:?}");
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn symlinks_out_of_the_tree_lead_only_into_the_sandbox() {
    let tmp = tempfile::tempdir().unwrap();
    // Host things the links point at: warden must neither read nor change them.
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), "host secret\n").unwrap();
    std::fs::set_permissions(
        outside.join("victim"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
    let victim = outside.join("victim");
    let (repo, sha) = repo(tmp.path(), |r| {
        std::os::unix::fs::symlink("/etc/shadow", r.join("shadow")).unwrap();
        std::os::unix::fs::symlink("../../..", r.join("up")).unwrap();
        std::os::unix::fs::symlink(&victim, r.join("escape")).unwrap();
        std::os::unix::fs::symlink(&outside, r.join("dirlink")).unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        &repo,
        "readlink shadow; cat shadow 2>&1 | head -c 200; echo; ls up; cat escape 2>&1; ls dirlink 2>&1; echo end",
        "",
    );
    let (job, out) = run(&s.client(), &sha).await;
    assert_clean_success(&job, &out);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("/etc/shadow"));
    // The sandbox's /etc has no shadow file.
    assert!(lines.next().unwrap().contains("No such file"), "{out}");
    assert!(!out.contains("root:"), "{out}");
    // ../../.. from /work is the sandbox's own root.
    assert!(
        out.contains("\nartifacts\n") && out.contains("\nwork\n"),
        "{out}"
    );
    assert!(!out.contains("host secret"), "{out}");
    assert!(out.ends_with("end\n"));
    // warden followed none of them on the host: no read-only bits taken, nothing added.
    assert_eq!(mode(&victim), 0o644);
    assert_eq!(mode(&outside), 0o755);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host secret\n");
}

#[tokio::test]
async fn a_submodule_with_a_file_url_is_never_fetched() {
    let tmp = tempfile::tempdir().unwrap();
    let other_dir = tmp.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let (other, other_sha) = repo(&other_dir, |r| {
        std::fs::write(r.join("SECRET"), "from the submodule").unwrap();
    });
    let (repo, _) = repo(tmp.path(), |r| {
        std::fs::write(
            r.join(".gitmodules"),
            format!(
                "[submodule \"sub\"]\n\tpath = sub\n\turl = file://{}\n",
                other.display()
            ),
        )
        .unwrap();
    });
    // The gitlink goes in after `add -A` (which would drop it: there is no `sub` directory).
    git(
        &repo,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{other_sha},sub"),
        ],
    );
    git(&repo, &["commit", "-q", "-m", "submodule"]);
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        &repo,
        "ls -A sub | wc -l; git ls-files -s sub | cut -c1-6; cat sub/SECRET 2>&1 | head -n 1",
        "",
    );
    let (job, out) = run(&s.client(), &sha).await;
    assert_clean_success(&job, &out);
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("0"),
        "the submodule directory is empty: {out}"
    );
    assert_eq!(lines.next(), Some("160000"), "a gitlink, left alone: {out}");
    assert!(!out.contains("from the submodule"), "{out}");
    // One mirror: the submodule's repository was never fetched.
    let mirrors = std::fs::read_dir(dir.path().join("data/git/mirrors"))
        .unwrap()
        .count();
    assert_eq!(mirrors, 1);
}

#[tokio::test]
async fn hooks_in_a_repository_never_run_and_hooks_path_is_only_in_the_gitdir() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("hook-ran");
    let (repo, sha) = repo(tmp.path(), |r| {
        for dir in [".githooks", "hooks", ".git-hooks"] {
            for hook in [
                "post-checkout",
                "pre-commit",
                "reference-transaction",
                "post-merge",
                "post-index-change",
            ] {
                let p = r.join(dir).join(hook);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        &repo,
        "git config core.hooksPath; echo rc=$?",
        "    hooks_path: .githooks\n",
    );
    let (job, out) = run(&s.client(), &sha).await;
    assert_clean_success(&job, &out);
    assert_eq!(out, ".githooks\nrc=0\n");
    assert!(!marker.exists(), "a hook ran on the host");
    // Set in the git directory the job sees, never in the tree.
    let tree_configs: Vec<_> = walk(&dir.path().join("data/git/trees"))
        .into_iter()
        .filter(|p| {
            p.file_name().is_some_and(|n| n == "config")
                && std::fs::read_to_string(p).is_ok_and(|t| t.contains("hooksPath"))
        })
        .collect();
    assert_eq!(tree_configs.len(), 1, "{tree_configs:?}");
    assert!(
        !tree_configs[0].to_string_lossy().contains("/tree/"),
        "{tree_configs:?}"
    );
    // The mirror carries no hooks either.
    for p in walk(&dir.path().join("data/git/mirrors")) {
        assert!(!p.to_string_lossy().contains("/hooks/"), "{}", p.display());
    }
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[tokio::test]
async fn a_100_mb_file_is_checked_out_and_accounted() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = repo(tmp.path(), |r| {
        let f = std::fs::File::create(r.join("big.bin")).unwrap();
        f.set_len(100 << 20).unwrap();
        std::fs::write(r.join("small.txt"), "small\n").unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &repo, "stat -c %s big.bin", "");
    let c = s.client();
    let (job, out) = run(&c, &sha).await;
    assert_clean_success(&job, &out);
    assert_eq!(out, "104857600\n");
    let record: serde_json::Value =
        serde_json::from_slice(&c.artifact(&job.job_id, "artifact.json").await.unwrap()).unwrap();
    assert_eq!(record["checkout"]["bytes"], (100u64 << 20) + 6);
    assert_eq!(record["checkout"]["files"], 2);
}

#[tokio::test]
async fn fifty_thousand_files_are_checked_out_and_proven() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = repo(tmp.path(), |r| {
        for d in 0..100 {
            let dir = r.join(format!("d{d:03}"));
            std::fs::create_dir(&dir).unwrap();
            for f in 0..500 {
                std::fs::write(dir.join(format!("f{f:03}.txt")), format!("{d}/{f}\n")).unwrap();
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        &repo,
        "find . -path ./.git -prune -o -type f -print | wc -l; cat d042/f314.txt",
        "",
    );
    let (job, out) = run(&s.client(), &sha).await;
    assert_clean_success(&job, &out);
    assert_eq!(out, "50000\n42/314\n");
}

#[tokio::test]
async fn names_with_newlines_and_terminal_escapes_are_kept_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let evil = "evil\n\x1b[31mred\x1b[0m.txt";
    let (repo, sha) = repo(tmp.path(), |r| {
        std::fs::write(r.join(evil), "content\n").unwrap();
        std::fs::create_dir(r.join("dir\nwith newline")).unwrap();
        std::fs::write(r.join("dir\nwith newline/x"), "x\n").unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        &repo,
        "for f in *; do printf '[%s]' \"$f\"; done; cat \"$(printf 'evil\\n\\033[31mred\\033[0m.txt')\"",
        "",
    );
    let (job, out) = run(&s.client(), &sha).await;
    assert_clean_success(&job, &out);
    assert_eq!(
        out,
        format!("[dir\nwith newline][{evil}]content\n"),
        "byte-exact names"
    );
}

#[tokio::test]
async fn a_tree_that_inflates_past_the_checkout_budget_is_refused_before_it_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    // 3 MiB of zeros compress to almost nothing in the pack: a small fetch, a big tree.
    let (repo, sha) = repo(tmp.path(), |r| {
        for i in 0..3 {
            std::fs::write(r.join(format!("zeros{i}")), vec![0u8; 1 << 20]).unwrap();
        }
    });
    let dir = tmp.path().join("w");
    std::fs::create_dir(&dir).unwrap();
    let server = server(&dir, &repo, "echo ran", "git: {checkout_cache_mb: 2}\n");
    let (job, out) = run(&server.client(), &sha).await;
    assert_eq!(job.status, JobStatus::Error, "{job:?}");
    assert_eq!(out, "", "the job never ran");
    assert_eq!(
        job.reason.as_deref(),
        Some(
            "checkout_too_large: the tree is 3 MiB in 3 files, over the 2 MiB the checkout cache \
             may hold (git.checkout_cache_mb)"
        )
    );
    // Nothing of the tree was written.
    let trees = dir.join("data/git/trees");
    let written: u64 = walk_size(&trees);
    assert!(written < 1 << 20, "{written} bytes of checkout written");
}

fn walk_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => walk_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
