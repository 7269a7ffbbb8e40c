//! Jobs on real repositories: pinned commits, read-only worktrees, the checkout cache, the
//! mutation proof, and hostile repositories, through the real server and sandbox.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use warden_api::{ErrorCode, JobStatus, JobView, SubmitJobRequest};
use warden_client::{Client, ClientError};

use crate::support::{Server, git, wait_job, wait_terminal, write_config_with};

fn write(path: &Path, text: &str) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

fn commit_all(repo: &Path, message: &str) -> String {
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

fn new_repo(parent: &Path, name: &str) -> PathBuf {
    let repo = parent.join(name);
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    repo
}

fn submit_req(job_type: &str, repo: &str) -> SubmitJobRequest {
    SubmitJobRequest {
        job_type: job_type.into(),
        repo_name: Some(repo.into()),
        ..SubmitJobRequest::default()
    }
}

async fn run(c: &Client, req: SubmitJobRequest) -> JobView {
    let sub = c.submit(&req).await.unwrap();
    wait_job(c, &sub.job_id, Duration::from_secs(120), |j| {
        j.status.is_terminal()
    })
    .await
}

async fn stdout(c: &Client, job: &JobView) -> String {
    String::from_utf8_lossy(&c.logs_raw(&job.job_id, "stdout", 0).await.unwrap()).into_owned()
}

async fn artifact_json(c: &Client, job: &JobView) -> serde_json::Value {
    serde_json::from_slice(&c.artifact(&job.job_id, "artifact.json").await.unwrap()).unwrap()
}

fn api_error(e: ClientError) -> (u16, ErrorCode, String) {
    match e {
        ClientError::Api {
            status,
            code,
            message,
        } => (status, code, message),
        other => panic!("expected an API error, got {other}"),
    }
}

/// A project with a shell test suite that checks its own sources, on several commits and
/// branches: `v1` passes, `main` passes with more tests, `broken` fails one.
struct Project {
    _tmp: tempfile::TempDir,
    path: PathBuf,
    v1: String,
    main: String,
    broken: String,
}

const SUITE: &str = r#"#!/bin/sh
# A small test runner: every tests/*.sh is a test; prints one line per test and a summary.
pass=0; fail=0
for t in tests/*.sh; do
  if sh "$t" >/dev/null 2>&1; then echo "PASS $t"; pass=$((pass+1)); else echo "FAIL $t"; fail=$((fail+1)); fi
done
echo "summary: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
"#;

impl Project {
    fn new() -> Project {
        let tmp = tempfile::tempdir().unwrap();
        let path = new_repo(tmp.path(), "project");
        write(&path.join("run_tests.sh"), SUITE);
        write(&path.join("lib/add.sh"), "add() { echo $(($1 + $2)); }\n");
        write(
            &path.join("tests/add.sh"),
            ". lib/add.sh; [ \"$(add 2 3)\" = 5 ]\n",
        );
        let v1 = commit_all(&path, "add");
        git(&path, &["tag", "-a", "v1", "-m", "release 1"]);
        write(&path.join("lib/mul.sh"), "mul() { echo $(($1 * $2)); }\n");
        write(
            &path.join("tests/mul.sh"),
            ". lib/mul.sh; [ \"$(mul 4 5)\" = 20 ]\n",
        );
        let main = commit_all(&path, "mul");
        git(&path, &["checkout", "-q", "-b", "broken"]);
        write(&path.join("lib/mul.sh"), "mul() { echo $(($1 + $2)); }\n");
        let broken = commit_all(&path, "a bug");
        git(&path, &["checkout", "-q", "main"]);
        Project {
            _tmp: tmp,
            path,
            v1,
            main,
            broken,
        }
    }
}

fn project_config(dir: &Path, project: &Path, extra_types: &str) -> PathBuf {
    write_config_with(
        dir,
        &format!(
            r#"repos:
  project: {{url: "{}"}}
job_types:
  suite:
    argv: ["/bin/sh", "run_tests.sh"]
    requires_repo: true
    requires_repo_allowlist: true
    timeout_s: 60
  inspect:
    argv: ["/bin/sh", "-c", "git rev-parse HEAD; git status --porcelain | wc -l; git log --format=%s | head -n 1; pwd"]
    requires_repo: true
    timeout_s: 60
  slow:
    argv: ["/bin/sh", "-c", "echo ready; sleep 3; echo done"]
    requires_repo: true
    timeout_s: 60
{extra_types}"#,
            project.display()
        ),
    )
}

#[tokio::test]
async fn a_real_test_suite_runs_at_the_pinned_commit() {
    let p = Project::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&project_config(dir.path(), &p.path, ""));
    let c = server.client();

    // By ref: resolved at submission and recorded.
    let mut req = submit_req("suite", "project");
    req.git_ref = Some("main".into());
    let job = run(&c, req).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(job.sha.as_deref(), Some(p.main.as_str()));
    assert_eq!(job.git_ref.as_deref(), Some("main"));
    let out = stdout(&c, &job).await;
    assert_eq!(
        out,
        "PASS tests/add.sh\nPASS tests/mul.sh\nsummary: 2 passed, 0 failed\n"
    );
    let inv = job.invariants.clone().unwrap();
    assert_eq!(inv.read_only_ok, Some(true));
    assert_eq!(inv.clean_tree_ok, Some(true));
    assert_eq!(
        inv.tree.as_deref(),
        Some(git(&p.path, &["rev-parse", "main^{tree}"]).as_str())
    );
    let record = artifact_json(&c, &job).await;
    assert_eq!(record["repo"], "project");
    assert_eq!(record["sha"], p.main.as_str());
    assert_eq!(record["ref"], "main");
    assert_eq!(record["invariants"]["read_only_ok"], true);
    assert_eq!(record["invariants"]["clean_tree_ok"], true);
    assert_eq!(record["invariants"]["tree"], inv.tree.unwrap().as_str());
    assert_eq!(record["checkout"]["cache_hit"], false);

    // An annotated tag resolves to its commit; the older suite has one test.
    let mut req = submit_req("suite", "project");
    req.git_ref = Some("v1".into());
    let job = run(&c, req).await;
    assert_eq!(job.sha.as_deref(), Some(p.v1.as_str()));
    assert_eq!(
        stdout(&c, &job).await,
        "PASS tests/add.sh\nsummary: 1 passed, 0 failed\n"
    );

    // The broken branch, by full sha: the suite fails, and says which test.
    let mut req = submit_req("suite", "project");
    req.sha = Some(p.broken.clone());
    let job = run(&c, req).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.reason.as_deref(), Some("exit_code: 1"));
    assert!(stdout(&c, &job).await.contains("FAIL tests/mul.sh"));
    assert_eq!(job.invariants.unwrap().clean_tree_ok, Some(true));

    // The same commit again: from the cache, no new checkout.
    let mut req = submit_req("suite", "project");
    req.sha = Some(p.main.clone());
    let job = run(&c, req).await;
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(artifact_json(&c, &job).await["checkout"]["cache_hit"], true);

    // Inside, git works on the pinned commit and sees a clean tree in /work.
    let job = run(&c, {
        let mut r = submit_req("inspect", "project");
        r.git_ref = Some("broken".into());
        r
    })
    .await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(
        stdout(&c, &job).await,
        format!("{}\n0\na bug\n/work\n", p.broken)
    );
}

#[tokio::test]
async fn refs_and_shas_the_repository_does_not_have_are_refused_clearly() {
    let p = Project::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&project_config(dir.path(), &p.path, ""));
    let c = server.client();

    let mut req = submit_req("suite", "project");
    req.git_ref = Some("no-such-branch".into());
    let (status, code, message) = api_error(c.submit(&req).await.unwrap_err());
    assert_eq!((status, code), (422, ErrorCode::InvalidRef));
    assert!(message.contains("\"no-such-branch\""), "{message}");

    // A well-formed sha the repository does not have: the job ends `error: invalid_ref`, fast.
    let mut req = submit_req("suite", "project");
    req.sha = Some("0123456789abcdef0123456789abcdef01234567".into());
    let started = std::time::Instant::now();
    let job = run(&c, req).await;
    assert_eq!(job.status, JobStatus::Error);
    let reason = job.reason.unwrap();
    assert!(
        reason.starts_with("invalid_ref: commit 0123456789abcdef"),
        "{reason}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(job.exit_code, None);

    for (mutate, want_code, fragment) in [
        (
            Box::new(|r: &mut SubmitJobRequest| {
                r.sha = Some(p.main.clone());
                r.git_ref = Some("main".into());
            }) as Box<dyn Fn(&mut SubmitJobRequest)>,
            ErrorCode::InvalidRequest,
            "not both",
        ),
        (
            Box::new(|r: &mut SubmitJobRequest| r.sha = Some(p.main[..12].to_string())),
            ErrorCode::InvalidRequest,
            "send it as \"ref\"",
        ),
        (
            Box::new(|_: &mut SubmitJobRequest| {}),
            ErrorCode::InvalidRequest,
            "needs sha",
        ),
        (
            Box::new(|r: &mut SubmitJobRequest| r.git_ref = Some("main..x".into())),
            ErrorCode::InvalidRef,
            "not a valid ref name",
        ),
        (
            Box::new(|r: &mut SubmitJobRequest| {
                r.repo_name = Some("other".into());
                r.sha = Some(p.main.clone());
            }),
            ErrorCode::RepoNotAllowed,
            "\"other\" is not in the server's repos allowlist",
        ),
        (
            Box::new(|r: &mut SubmitJobRequest| {
                r.remote_url = Some("https://example.com/elsewhere.git".into());
                r.sha = Some(p.main.clone());
            }),
            ErrorCode::RepoNotAllowed,
            "does not match the allowlisted URL",
        ),
    ] {
        let mut req = submit_req("suite", "project");
        mutate(&mut req);
        let (status, code, message) = api_error(c.submit(&req).await.unwrap_err());
        assert_eq!((status, code), (422, want_code), "{message}");
        assert!(message.contains(fragment), "{message} lacks {fragment:?}");
    }

    // A job type without the allowlist: only https and ssh from callers, never ext:: or a
    // local path.
    for (url, fragment) in [
        (
            "ext::sh -c touch% /tmp/pwned",
            "transport \"ext\" is not allowed",
        ),
        (
            "/etc",
            "allowed only for repositories the operator configured",
        ),
        (
            "file:///etc",
            "allowed only for repositories the operator configured",
        ),
        ("git://example.com/x", "transport \"git\" is not allowed"),
    ] {
        let mut req = submit_req("inspect", "adhoc");
        req.remote_url = Some(url.into());
        req.sha = Some(p.main.clone());
        let (status, code, message) = api_error(c.submit(&req).await.unwrap_err());
        assert_eq!(
            (status, code),
            (422, ErrorCode::RepoNotAllowed),
            "{url}: {message}"
        );
        assert!(message.contains(fragment), "{url}: {message}");
    }
    assert!(!Path::new("/tmp/pwned").exists());
}

#[tokio::test]
async fn a_job_cannot_change_its_worktree_in_any_way() {
    let p = Project::new();
    let dir = tempfile::tempdir().unwrap();
    let attempts = r#"
  vandal:
    argv: ["/bin/sh", "-c", "for a in 'echo x > run_tests.sh' 'echo x >> lib/add.sh' 'touch new.txt' 'mkdir newdir' 'chmod 777 run_tests.sh' 'mv run_tests.sh moved.sh' 'ln run_tests.sh hard.sh' 'ln -s /etc/passwd sym' 'rm lib/add.sh' 'rmdir tests' 'echo 0000000000000000000000000000000000000000 > .git/HEAD' 'echo x >> .git/config' 'touch .git/objects/x' 'truncate -s 0 lib/add.sh'; do if sh -c \"$a\" 2>/dev/null; then echo \"WROTE: $a\"; else echo \"refused: $a\"; fi; done"]
    requires_repo: true
    timeout_s: 60
"#;
    let server = Server::start(&project_config(dir.path(), &p.path, attempts));
    let c = server.client();
    let mut req = submit_req("vandal", "project");
    req.sha = Some(p.main.clone());
    let job = run(&c, req).await;
    let out = stdout(&c, &job).await;
    assert!(!out.contains("WROTE"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("refused: ")).count(),
        14,
        "{out}"
    );
    assert_eq!(job.status, JobStatus::Succeeded);
    let inv = job.invariants.unwrap();
    assert_eq!(
        (inv.read_only_ok, inv.clean_tree_ok),
        (Some(true), Some(true))
    );
}

/// The cached tree of the one commit in `data`.
fn cached_tree(data: &Path) -> PathBuf {
    let trees: Vec<PathBuf> = std::fs::read_dir(data.join("git/trees"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("tree").is_dir() && !p.join("tainted").exists())
        .collect();
    assert_eq!(trees.len(), 1, "{trees:?}");
    trees[0].join("tree")
}

#[tokio::test]
async fn tampering_with_the_cached_tree_during_a_job_is_mutation_detected() {
    let p = Project::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&project_config(dir.path(), &p.path, ""));
    let c = server.client();
    let mut req = submit_req("slow", "project");
    req.sha = Some(p.main.clone());
    let sub = c.submit(&req).await.unwrap();
    wait_job(&c, &sub.job_id, Duration::from_secs(30), |j| {
        j.stdout_bytes > 0
    })
    .await;
    // From outside the sandbox, as only root on the host can.
    let tree = cached_tree(&dir.path().join("data"));
    let victim = tree.join("lib/add.sh");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&victim, "add() { echo 5; }\n").unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    assert_eq!(job.status, JobStatus::MutationDetected, "{job:?}");
    assert_eq!(job.exit_code, Some(0), "whatever its exit code");
    let reason = job.reason.clone().unwrap();
    assert!(
        reason.starts_with("mutation_detected: 1 path(s) differ"),
        "{reason}"
    );
    let inv = job.invariants.clone().unwrap();
    assert_eq!(inv.clean_tree_ok, Some(false));
    assert_eq!(inv.changed_paths, vec!["lib/add.sh"]);
    let record = artifact_json(&c, &job).await;
    assert_eq!(record["status"], "mutation_detected");
    assert_eq!(record["invariants"]["changed_paths"][0], "lib/add.sh");

    // The tainted tree left the cache: the next job gets a fresh, correct checkout.
    let mut req = submit_req("suite", "project");
    req.sha = Some(p.main.clone());
    let next = run(&c, req).await;
    assert_eq!(next.status, JobStatus::Succeeded);
    assert_eq!(
        artifact_json(&c, &next).await["checkout"]["cache_hit"],
        false
    );
    let fresh = cached_tree(&dir.path().join("data"));
    assert_ne!(fresh, tree);
    for _ in 0..200 {
        if !tree.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!tree.exists(), "the tainted tree was not removed");
}

#[tokio::test]
async fn concurrent_jobs_on_one_commit_share_one_checkout() {
    let p = Project::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&project_config(dir.path(), &p.path, ""));
    let c = server.client();
    let mut ids = Vec::new();
    for _ in 0..6 {
        let mut req = submit_req("suite", "project");
        req.sha = Some(p.main.clone());
        ids.push(c.submit(&req).await.unwrap().job_id);
    }
    let mut misses = 0;
    for id in &ids {
        let job = wait_terminal(&c, id).await;
        assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
        if artifact_json(&c, &job).await["checkout"]["cache_hit"] == false {
            misses += 1;
        }
    }
    assert_eq!(misses, 1);
    cached_tree(&dir.path().join("data"));
}

#[tokio::test]
async fn pytest_runs_against_a_local_python_project() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = new_repo(tmp.path(), "calc");
    write(
        &repo.join("calc.py"),
        "def add(a, b):\n    return a + b\n\n\ndef div(a, b):\n    return a / b\n",
    );
    write(
        &repo.join("test_calc.py"),
        "import pytest\nfrom calc import add, div\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\ndef test_div():\n    assert div(6, 3) == 2\n\n\ndef test_div_zero():\n    with pytest.raises(ZeroDivisionError):\n        div(1, 0)\n",
    );
    let good = commit_all(&repo, "calc");
    write(
        &repo.join("calc.py"),
        "def add(a, b):\n    return a - b\n\n\ndef div(a, b):\n    return a / b\n",
    );
    let bad = commit_all(&repo, "regression");
    let dir = tempfile::tempdir().unwrap();
    // The job type as the foundation issue configures it.
    let config = write_config_with(
        dir.path(),
        &format!(
            r#"repos:
  calc: {{url: "{}"}}
job_types:
  pytest:
    argv: ["python3", "-m", "pytest", "-q"]
    requires_repo: true
    requires_repo_allowlist: true
    allowed_params: [PYTEST_ADDOPTS]
    timeout_s: 1800
    limits: {{memory_mb: 2048, pids: 256, output_mb: 64}}
    network: false
"#,
            repo.display()
        ),
    );
    let server = Server::start(&config);
    let c = server.client();
    let mut req = submit_req("pytest", "calc");
    req.sha = Some(good);
    req.params
        .insert("PYTEST_ADDOPTS".into(), "-p no:cacheprovider".into());
    let job = run(&c, req.clone()).await;
    let out = stdout(&c, &job).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{out} {job:?}");
    assert!(out.contains("3 passed"), "{out}");
    assert_eq!(job.invariants.unwrap().clean_tree_ok, Some(true));

    req.sha = Some(bad);
    let job = run(&c, req).await;
    let out = stdout(&c, &job).await;
    assert_eq!(job.status, JobStatus::Failed, "{out}");
    assert_eq!(job.exit_code, Some(1));
    assert!(out.contains("1 failed, 2 passed"), "{out}");
    assert!(out.contains("test_add"), "{out}");
    // pytest could write no cache or bytecode into the tree: it is still the commit.
    assert_eq!(job.invariants.unwrap().clean_tree_ok, Some(true));
}

#[tokio::test]
async fn the_cli_submits_by_ref_and_shows_the_commit_and_the_proof() {
    let p = Project::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&project_config(dir.path(), &p.path, ""));
    let cli = |args: &[&str]| {
        let out = Command::new(crate::support::WARDEN)
            .args(args)
            .args(["--server", &server.url])
            .env_remove("WARDEN_CONFIG")
            .env_remove("WARDEN_SERVER")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli(&[
        "job", "submit", "suite", "--repo", "project", "--ref", "main", "--wait", "-o", "json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["sha"], p.main.as_str());
    let id = job["job_id"].as_str().unwrap();
    let (code, out, _) = cli(&["job", "get", id]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("repo: \"project\" at {} (ref \"main\")", p.main)),
        "{out}"
    );
    assert!(out.contains("read-only: yes  clean tree: yes"), "{out}");

    let (code, _, err) = cli(&[
        "job", "submit", "suite", "--repo", "project", "--ref", "nope",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("\"nope\" is not a branch or tag"), "{err}");
    let (code, _, err) = cli(&[
        "job", "submit", "suite", "--repo", "project", "--ref", "main", "--sha", &p.main,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
}

#[tokio::test]
async fn under_gvisor_a_suite_runs_at_the_pinned_commit_and_cannot_change_its_worktree() {
    let p = Project::new();
    let dir = tempfile::tempdir().unwrap();
    let gvisor = r#"
  suite_gvisor:
    argv: ["/bin/sh", "run_tests.sh"]
    requires_repo: true
    timeout_s: 60
    isolation: gvisor
  inspect_gvisor:
    argv: ["/bin/sh", "-c", "git rev-parse HEAD; git status --porcelain | wc -l; pwd; echo made > $ARTIFACT_DIR/out.txt; for a in 'echo x > run_tests.sh' 'touch new.txt' 'rm lib/add.sh' 'echo x >> .git/config' 'touch .git/objects/x'; do if sh -c \"$a\" 2>/dev/null; then echo \"WROTE: $a\"; else echo \"refused: $a\"; fi; done"]
    requires_repo: true
    timeout_s: 60
    isolation: gvisor
"#;
    let server = Server::start(&project_config(dir.path(), &p.path, gvisor));
    let c = server.client();
    let mut req = submit_req("suite_gvisor", "project");
    req.sha = Some(p.main.clone());
    let job = run(&c, req).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(
        stdout(&c, &job).await,
        "PASS tests/add.sh\nPASS tests/mul.sh\nsummary: 2 passed, 0 failed\n"
    );
    // The record says which tier ran the job.
    assert_eq!(job.enforcement["isolation"], "gvisor");
    assert!(job.enforcement["kernel"].starts_with("gVisor"), "{job:?}");
    assert_eq!(artifact_json(&c, &job).await["isolation"], "gvisor");
    let mut req = submit_req("suite_gvisor", "project");
    req.sha = Some(p.broken.clone());
    let job = run(&c, req).await;
    assert_eq!(
        (job.status, job.reason.as_deref()),
        (JobStatus::Failed, Some("exit_code: 1"))
    );

    let mut req = submit_req("inspect_gvisor", "project");
    req.sha = Some(p.main.clone());
    let job = run(&c, req).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    let out = stdout(&c, &job).await;
    assert!(out.starts_with(&format!("{}\n0\n/work\n", p.main)), "{out}");
    assert!(!out.contains("WROTE"), "{out}");
    assert_eq!(out.matches("refused: ").count(), 5, "{out}");
    let inv = job.invariants.clone().unwrap();
    assert_eq!(
        (inv.read_only_ok, inv.clean_tree_ok),
        (Some(true), Some(true))
    );
    assert_eq!(c.artifact(&job.job_id, "out.txt").await.unwrap(), b"made\n");
}
