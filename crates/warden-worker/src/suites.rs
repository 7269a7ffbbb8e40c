//! Test suites (`suites: {dir: …}`): YAML suites in the job's repository, run in byte order of
//! their names by warden's own program inside the job's sandbox (`warden __suites`, its
//! executable bound read-only at [`crate::review::EXE_IN_SANDBOX`]), with the job's
//! privileges. Each suite: `skip_if`, `snapshot` paths before and after, `run` blocks under the
//! suite's timeout, presence-aware `assert`ions, `restore` steps. It writes `runner.jsonl`,
//! `snapshots/<suite>/{before,after}/…`, `results/<suite>/result.json`, `logs/<suite>.log` and
//! `summary.json`, and exits 1 when a suite failed. See docs/pipelines.md.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The argument that makes the `warden` binary the suite runner.
pub const ARG: &str = "__suites";
/// Each suite's file in its directory.
pub const SUITE_FILE: &str = "suite.yaml";
/// A suite's time when neither it nor `SUITE_TIMEOUT_SEC` says.
pub const DEFAULT_TIMEOUT_S: u64 = 900;
/// What `summary.json` affirms.
pub const HARNESS_POLICY: &str =
    "No harness mutation of product-owned artifacts; fail-on-skip enforced";

/// One `suite.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Suite {
    #[serde(default)]
    description: Option<String>,
    /// Shell blocks (`sh -c`), in order; the first that exits non-zero ends the run.
    #[serde(default)]
    run: Vec<String>,
    /// Paths copied before and after the run.
    #[serde(default)]
    snapshot: Vec<String>,
    #[serde(default)]
    assert: Vec<Assertion>,
    #[serde(default)]
    timeout_s: Option<u64>,
    /// Steps run after the assertions, whatever they found; one that fails fails the suite.
    #[serde(default)]
    restore: Vec<String>,
    /// A shell block: exit 0 means skip the suite.
    #[serde(default)]
    skip_if: Option<String>,
    /// A skip passes only with this; otherwise a skipped suite fails (fail-on-skip).
    #[serde(default)]
    allow_skip: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Assertion {
    exists: Option<String>,
    absent: Option<String>,
    unchanged: Option<String>,
    changed: Option<String>,
    /// `{contains: PATH, text: TEXT}`.
    contains: Option<String>,
    text: Option<String>,
    exit_code: Option<i32>,
    /// `warn`: a path that is absent (before and after) makes this a warning, not a failure.
    if_present: Option<IfPresent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum IfPresent {
    Warn,
}

/// How one assertion came out.
#[derive(Debug, Serialize)]
struct Checked {
    assertion: String,
    outcome: &'static str,
    detail: String,
}

/// `results/<suite>/result.json`.
#[derive(Debug, Serialize)]
struct SuiteResult {
    suite: String,
    status: &'static str,
    reason: Option<String>,
    duration_ms: u64,
    run_exit: Option<i32>,
    assertions: Vec<Checked>,
    warnings: Vec<String>,
}

/// Runs the suites; the runner's exit code (0: none failed).
pub fn main() -> i32 {
    match run_all() {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("suites: {e}");
            2
        }
    }
}

struct Runner {
    out: PathBuf,
    events: std::fs::File,
}

impl Runner {
    fn event(&mut self, value: serde_json::Value) {
        let _ = writeln!(self.events, "{value}");
    }
}

fn run_all() -> Result<bool, String> {
    let dir = PathBuf::from(
        std::env::var("WARDEN_SUITES_DIR").map_err(|_| "WARDEN_SUITES_DIR is not set")?,
    );
    let out = PathBuf::from(std::env::var("ARTIFACT_DIR").map_err(|_| "ARTIFACT_DIR is not set")?);
    let default_timeout = std::env::var("SUITE_TIMEOUT_SEC")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .unwrap_or(DEFAULT_TIMEOUT_S);
    let events = std::fs::File::create(out.join("runner.jsonl"))
        .map_err(|e| format!("runner.jsonl: {e}"))?;
    let mut runner = Runner {
        out: out.clone(),
        events,
    };
    let mut names: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().join(SUITE_FILE).is_file())
        .map(|e| std::os::unix::ffi::OsStrExt::as_bytes(e.file_name().as_os_str()).to_vec())
        .collect();
    // Byte order of the names: the same on every machine.
    names.sort();
    let names: Vec<String> = names
        .into_iter()
        .map(|n| String::from_utf8_lossy(&n).into_owned())
        .collect();
    let filter = std::env::var("TEST_FILTER").ok().filter(|f| !f.is_empty());
    let chosen: Vec<String> = match &filter {
        None => names.clone(),
        Some(f) if names.contains(f) => vec![f.clone()],
        Some(f) => {
            runner.event(
                serde_json::json!({"event": "filter_unknown", "filter": f, "suites": names}),
            );
            let why = format!(
                "TEST_FILTER names no suite: {f:?} (suites: {})",
                names.join(", ")
            );
            write_summary(&out, &[], Some(&why))?;
            return Err(why);
        }
    };
    runner.event(serde_json::json!({"event": "start", "suites": chosen, "filter": filter}));
    let mut results = Vec::new();
    for name in &chosen {
        let result = run_suite(&mut runner, &dir.join(name), name, default_timeout);
        let path = out.join("results").join(name);
        std::fs::create_dir_all(&path).map_err(|e| format!("results/{name}: {e}"))?;
        std::fs::write(
            path.join("result.json"),
            serde_json::to_vec_pretty(&result).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("results/{name}/result.json: {e}"))?;
        runner.event(serde_json::json!({"event": "suite_end", "suite": name, "status": result.status, "reason": result.reason}));
        results.push(result);
    }
    write_summary(&out, &results, None)?;
    runner.event(serde_json::json!({"event": "end"}));
    Ok(results.iter().all(|r| r.status != "failed"))
}

fn write_summary(out: &Path, results: &[SuiteResult], error: Option<&str>) -> Result<(), String> {
    let count = |s: &str| results.iter().filter(|r| r.status == s).count();
    let summary = serde_json::json!({
        "suites": results.iter().map(|r| serde_json::json!({
            "suite": r.suite, "status": r.status, "reason": r.reason, "duration_ms": r.duration_ms,
        })).collect::<Vec<_>>(),
        "counts": {"total": results.len(), "passed": count("passed"), "failed": count("failed"), "skipped": count("skipped")},
        "error": error,
        "harness_policy": HARNESS_POLICY,
    });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_vec_pretty(&summary).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("summary.json: {e}"))
}

fn run_suite(runner: &mut Runner, dir: &Path, name: &str, default_timeout: u64) -> SuiteResult {
    let started = Instant::now();
    let mut result = SuiteResult {
        suite: name.to_string(),
        status: "passed",
        reason: None,
        duration_ms: 0,
        run_exit: None,
        assertions: Vec::new(),
        warnings: Vec::new(),
    };
    runner.event(serde_json::json!({"event": "suite_start", "suite": name}));
    let file = dir.join(SUITE_FILE);
    let suite: Suite = match std::fs::read_to_string(&file)
        .map_err(|e| e.to_string())
        .and_then(|text| {
            serde_norway::from_str(&text).map_err(|e| match e.location() {
                Some(l) => format!("{name}/{SUITE_FILE}:{}:{}: {e}", l.line(), l.column()),
                None => format!("{name}/{SUITE_FILE}: {e}"),
            })
        }) {
        Ok(s) => s,
        Err(why) => {
            result.status = "failed";
            result.reason = Some(why);
            return result;
        }
    };
    let _ = &suite.description;
    let log_dir = runner.out.join("logs");
    let _ = std::fs::create_dir_all(&log_dir);
    let log = match std::fs::File::create(log_dir.join(format!("{name}.log"))) {
        Ok(f) => f,
        Err(e) => {
            result.status = "failed";
            result.reason = Some(format!("logs/{name}.log: {e}"));
            return result;
        }
    };
    let deadline = started + Duration::from_secs(suite.timeout_s.unwrap_or(default_timeout).max(1));
    if let Some(block) = &suite.skip_if {
        runner.event(serde_json::json!({"event": "step", "suite": name, "step": "skip_if"}));
        if matches!(shell(block, &log, deadline), Step::Exited(0)) {
            result.duration_ms = started.elapsed().as_millis() as u64;
            if suite.allow_skip {
                result.status = "skipped";
                result.reason = Some("skip_if held (allow_skip)".into());
            } else {
                result.status = "failed";
                result.reason = Some("skipped without allow_skip: true (fail-on-skip)".into());
            }
            return result;
        }
    }
    let snaps = runner.out.join("snapshots").join(name);
    for p in &suite.snapshot {
        snapshot(p, &snaps.join("before"));
    }
    let mut run_exit = 0;
    for (i, block) in suite.run.iter().enumerate() {
        runner
            .event(serde_json::json!({"event": "step", "suite": name, "step": "run", "index": i}));
        match shell(block, &log, deadline) {
            Step::Exited(0) => {}
            Step::Exited(code) => {
                run_exit = code;
                break;
            }
            Step::TimedOut => {
                result.status = "failed";
                result.reason = Some(format!(
                    "timeout: run[{i}] still running after {} s",
                    suite.timeout_s.unwrap_or(default_timeout)
                ));
                run_exit = 124;
                break;
            }
            Step::Failed(why) => {
                result.status = "failed";
                result.reason = Some(format!("run[{i}]: {why}"));
                break;
            }
        }
    }
    result.run_exit = Some(run_exit);
    for p in &suite.snapshot {
        snapshot(p, &snaps.join("after"));
    }
    let mut expects_exit = false;
    for a in &suite.assert {
        let checked = check(a, run_exit, &snaps);
        if a.exit_code.is_some() {
            expects_exit = true;
        }
        runner.event(serde_json::json!({"event": "assert", "suite": name, "assertion": checked.assertion, "outcome": checked.outcome}));
        match checked.outcome {
            "fail" if result.status == "passed" => {
                result.status = "failed";
                result.reason = Some(format!(
                    "assertion failed: {}: {}",
                    checked.assertion, checked.detail
                ));
            }
            "warn" => result
                .warnings
                .push(format!("{}: {}", checked.assertion, checked.detail)),
            _ => {}
        }
        result.assertions.push(checked);
    }
    // A non-zero exit is never swallowed: only an exit_code assertion accepts one.
    if run_exit != 0 && !expects_exit && result.status == "passed" {
        result.status = "failed";
        result.reason = Some(format!("run exited {run_exit}"));
    }
    for (i, block) in suite.restore.iter().enumerate() {
        runner.event(
            serde_json::json!({"event": "step", "suite": name, "step": "restore", "index": i}),
        );
        let restore_deadline =
            Instant::now() + Duration::from_secs(suite.timeout_s.unwrap_or(default_timeout).max(1));
        if !matches!(shell(block, &log, restore_deadline), Step::Exited(0))
            && result.status != "failed"
        {
            result.status = "failed";
            result.reason = Some(format!("restore[{i}] failed"));
        }
    }
    result.duration_ms = started.elapsed().as_millis() as u64;
    result
}

enum Step {
    Exited(i32),
    TimedOut,
    Failed(String),
}

/// `sh -c block` in its own process group, output to the suite's log, killed (the whole group)
/// at the deadline.
fn shell(block: &str, log: &std::fs::File, deadline: Instant) -> Step {
    let (out, err) = match (log.try_clone(), log.try_clone()) {
        (Ok(o), Ok(e)) => (o, e),
        _ => return Step::Failed("cannot share the log".into()),
    };
    let mut child = match Command::new("/bin/sh")
        .arg("-c")
        .arg(block)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Step::Failed(format!("sh: {e}")),
    };
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt;
                return Step::Exited(status.code().unwrap_or(128 + status.signal().unwrap_or(0)));
            }
            Ok(None) if Instant::now() >= deadline => {
                // The block and everything it started.
                let _ = rustix::process::kill_process_group(
                    rustix::process::Pid::from_child(&child),
                    rustix::process::Signal::KILL,
                );
                let _ = child.wait();
                return Step::TimedOut;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Step::Failed(e.to_string()),
        }
    }
}

/// Copies `path` (file, directory or link; absent: nothing) under `to`, at its own path.
fn snapshot(path: &str, to: &Path) {
    let src = Path::new(path);
    let dst = to.join(path.trim_start_matches('/'));
    if let Some(parent) = dst.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = copy(src, &dst);
}

fn copy(src: &Path, dst: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)
    } else if meta.is_dir() {
        std::fs::create_dir_all(dst)?;
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            copy(&entry.path(), &dst.join(entry.file_name()))?;
        }
        Ok(())
    } else if meta.is_file() {
        std::fs::copy(src, dst).map(|_| ())
    } else {
        Ok(())
    }
}

/// Two snapshots the same: types, bytes and link targets, recursively (absent == absent).
fn same(a: &Path, b: &Path) -> bool {
    match (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) {
        (Err(_), Err(_)) => true,
        (Ok(x), Ok(y)) if x.file_type().is_symlink() && y.file_type().is_symlink() => {
            std::fs::read_link(a).ok() == std::fs::read_link(b).ok()
        }
        (Ok(x), Ok(y)) if x.is_dir() && y.is_dir() => {
            let names = |p: &Path| {
                let mut v: Vec<_> = std::fs::read_dir(p)
                    .map(|r| r.filter_map(Result::ok).map(|e| e.file_name()).collect())
                    .unwrap_or_default();
                v.sort();
                v
            };
            let (na, nb) = (names(a), names(b));
            na == nb && na.iter().all(|n| same(&a.join(n), &b.join(n)))
        }
        (Ok(x), Ok(y)) if x.is_file() && y.is_file() => {
            std::fs::read(a).ok() == std::fs::read(b).ok()
        }
        _ => false,
    }
}

fn check(a: &Assertion, run_exit: i32, snaps: &Path) -> Checked {
    let present = |p: &str| std::fs::symlink_metadata(p).is_ok();
    let snapped = |p: &str, when: &str| snaps.join(when).join(p.trim_start_matches('/'));
    let (assertion, path, ok, detail) = if let Some(p) = &a.exists {
        (
            format!("exists {p}"),
            Some(p),
            present(p),
            "absent".to_string(),
        )
    } else if let Some(p) = &a.absent {
        (
            format!("absent {p}"),
            None,
            !present(p),
            "present".to_string(),
        )
    } else if let Some(p) = &a.unchanged {
        let ok = same(&snapped(p, "before"), &snapped(p, "after"));
        (
            format!("unchanged {p}"),
            Some(p),
            ok,
            "changed by the run".to_string(),
        )
    } else if let Some(p) = &a.changed {
        let ok = !same(&snapped(p, "before"), &snapped(p, "after"));
        (
            format!("changed {p}"),
            Some(p),
            ok,
            "not changed by the run".to_string(),
        )
    } else if let (Some(p), Some(t)) = (&a.contains, &a.text) {
        let ok = std::fs::read(p)
            .is_ok_and(|b| b.windows(t.len().max(1)).any(|w| w == t.as_bytes()) || t.is_empty());
        (
            format!("contains {p} {t:?}"),
            Some(p),
            ok,
            "text not found".to_string(),
        )
    } else if let Some(code) = a.exit_code {
        (
            format!("exit_code {code}"),
            None,
            run_exit == code,
            format!("the run exited {run_exit}"),
        )
    } else {
        return Checked {
            assertion: "?".into(),
            outcome: "fail",
            detail: "an assertion names exists, absent, unchanged, changed, contains (with text) or exit_code".into(),
        };
    };
    // Presence-aware: an optional applet that is not there is a warning, not a failure.
    if !ok
        && a.if_present == Some(IfPresent::Warn)
        && path.is_some_and(|p| !present(p) && !snapped(p, "before").exists())
    {
        return Checked {
            assertion,
            outcome: "warn",
            detail: "not present (if_present: warn)".into(),
        };
    }
    Checked {
        assertion,
        outcome: if ok { "pass" } else { "fail" },
        detail: if ok { String::new() } else { detail },
    }
}
