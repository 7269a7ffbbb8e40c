//! What the CLI prints as tables, as pure functions of the answers (snapshot-tested).

use warden_api::{ArtifactsResponse, JobTypesResponse, JobView};

use crate::clientconfig::ClientConfig;
use crate::output::{render_table, sanitize};

const JOB_HEADER: [&str; 6] = ["JOB ID", "TYPE", "STATUS", "REASON", "EXIT", "CREATED"];

fn job_row(j: &JobView) -> Vec<String> {
    // Beside every job that ran without the kernel sandbox, wherever it is listed.
    let status = if j.unsafe_fallback {
        format!("{} (UNSANDBOXED)", j.status)
    } else {
        j.status.to_string()
    };
    vec![
        j.job_id.clone(),
        j.job_type.clone(),
        status,
        j.reason.as_deref().map(sanitize).unwrap_or_default(),
        j.exit_code
            .map(|c| c.to_string())
            .or(j.signal.map(|s| format!("sig {s}")))
            .unwrap_or_default(),
        j.created_at.clone(),
    ]
}

/// `warden job list`.
pub fn jobs(list: &[JobView]) -> String {
    let rows: Vec<Vec<String>> = list.iter().map(job_row).collect();
    render_table(&JOB_HEADER, &rows)
}

/// `warden job get|submit|cancel`: the job's row, its commit and what was proven about it.
pub fn job(j: &JobView) -> String {
    let mut out = render_table(&JOB_HEADER, &[job_row(j)]);
    if let (Some(repo), Some(sha)) = (&j.repo_name, &j.sha) {
        let via = j
            .git_ref
            .as_ref()
            .map(|r| format!(" (ref {r:?})"))
            .unwrap_or_default();
        out.push_str(&format!("repo: {repo:?} at {sha}{via}\n"));
    }
    if let Some(image) = &j.image {
        out.push_str(&format!("image: {}\n", sanitize(image)));
    }
    if let (Some(bundle), Some(var)) = (&j.tool_bundle, &j.tool_env_var) {
        out.push_str(&format!(
            "tool bundle: {} (${})\n",
            sanitize(bundle),
            sanitize(var)
        ));
    }
    if j.artifact_bytes > 0 {
        out.push_str(&format!("artifacts: {}\n", human_bytes(j.artifact_bytes)));
    }
    if let Some(argv) = &j.inline_argv {
        let shown: Vec<String> = argv.iter().map(|a| format!("{:?}", sanitize(a))).collect();
        out.push_str(&format!("inline: [{}]\n", shown.join(", ")));
    }
    if !j.warnings.is_empty() {
        let w: Vec<String> = j.warnings.iter().map(|w| sanitize(w)).collect();
        out.push_str(&format!("warnings: {}\n", w.join(", ")));
    }
    let unenforced: Vec<&str> = j
        .enforcement
        .iter()
        .filter(|(_, how)| how.starts_with("not enforced"))
        .map(|(limit, _)| limit.as_str())
        .collect();
    if !unenforced.is_empty() {
        out.push_str(&format!("NOT ENFORCED: {}\n", unenforced.join(", ")));
    }
    if let Some(c) = &j.tests {
        out.push_str(&format!(
            "tests: {} ({} passed, {} failed, {} errors, {} skipped){}\n",
            c.total,
            c.passed,
            c.failed,
            c.error,
            c.skipped,
            if c.truncated {
                "; records truncated"
            } else {
                ""
            }
        ));
    }
    if !j.stages.is_empty() {
        out.push('\n');
        out.push_str(&stages(&j.stages));
    }
    if let Some(inv) = &j.invariants {
        let show = |v: Option<bool>| match v {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        out.push_str(&format!(
            "read-only: {}  clean tree: {}\n",
            show(inv.read_only_ok),
            show(inv.clean_tree_ok)
        ));
        // Debug-quoted: a path may hold newlines or terminal escapes.
        for p in &inv.changed_paths {
            out.push_str(&format!("  changed: {p:?}\n"));
        }
        if inv.changed_count > inv.changed_paths.len() as u64 {
            out.push_str(&format!(
                "  ... {} more\n",
                inv.changed_count - inv.changed_paths.len() as u64
            ));
        }
    }
    out
}

/// `warden job tests`: the counts, then the tests failures first, each failure's first line.
pub fn tests(page: &warden_api::TestsResponse) -> String {
    let mut out = String::new();
    match &page.counts {
        Some(c) => out.push_str(&format!(
            "{} tests: {} passed, {} failed, {} errors, {} skipped ({} report file{}){}\n",
            c.total,
            c.passed,
            c.failed,
            c.error,
            c.skipped,
            c.files,
            if c.files == 1 { "" } else { "s" },
            if c.truncated {
                "; only the first 50000 kept as records"
            } else {
                ""
            }
        )),
        None => out.push_str("no test results (the job has not ended, or its type reads none)\n"),
    }
    if page.tests.is_empty() {
        return out;
    }
    let rows: Vec<Vec<String>> = page
        .tests
        .iter()
        .map(|t| {
            let status = if t.flaky {
                format!("{} (flaky)", t.status.as_str())
            } else {
                t.status.as_str().to_string()
            };
            let name = if t.classname.is_empty() {
                t.name.clone()
            } else {
                format!("{}::{}", t.classname, t.name)
            };
            vec![
                status,
                sanitize(&name),
                t.duration_ms
                    .map(|ms| format!("{:.3}s", ms as f64 / 1000.0))
                    .unwrap_or_default(),
                t.message
                    .as_deref()
                    .and_then(|m| m.lines().find(|l| !l.trim().is_empty()))
                    .map(|l| sanitize(&l.chars().take(100).collect::<String>()))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&render_table(&["STATUS", "TEST", "TIME", "MESSAGE"], &rows));
    if page.next_cursor.is_some() {
        out.push_str("(more: raise --limit, or page with GET /jobs/{id}/tests?cursor=)\n");
    }
    out
}

/// A staged job's stage table: how each stage ended, when, and how much it wrote.
fn stages(stages: &[warden_api::StageRecord]) -> String {
    let rows: Vec<Vec<String>> = stages
        .iter()
        .map(|st| {
            let status = if st.always {
                format!("{} (always)", st.status.as_str())
            } else {
                st.status.as_str().to_string()
            };
            vec![
                sanitize(&st.name),
                status,
                st.exit_code
                    .map(|c| c.to_string())
                    .or(st.signal.map(|s| format!("sig {s}")))
                    .unwrap_or_default(),
                st.started_ms
                    .map(|ms| format!("+{:.3}s", ms as f64 / 1000.0))
                    .unwrap_or_default(),
                st.duration_ms
                    .map(|ms| format!("{:.3}s", ms as f64 / 1000.0))
                    .unwrap_or_default(),
                (st.stdout[1] - st.stdout[0]).to_string(),
                (st.stderr[1] - st.stderr[0]).to_string(),
            ]
        })
        .collect();
    render_table(
        &[
            "STAGE", "STATUS", "EXIT", "START", "TOOK", "STDOUT", "STDERR",
        ],
        &rows,
    )
}

/// Bytes for people: `0 B`, `512 B`, `1.5 KiB`, `20.0 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `warden job artifacts`: a name that is not UTF-8 is shown with its exact bytes; a listing
/// that stopped at its limit says so.
pub fn artifacts(resp: &ArtifactsResponse) -> String {
    let rows: Vec<Vec<String>> = resp
        .artifacts
        .iter()
        .map(|a| {
            let path = match &a.path_hex {
                Some(hex) => format!("{} (bytes {hex})", sanitize(&a.path)),
                None => sanitize(&a.path),
            };
            vec![path, a.kind.clone(), a.size.to_string()]
        })
        .collect();
    let mut out = render_table(&["PATH", "KIND", "SIZE"], &rows);
    if resp.truncated {
        out.push_str(&format!(
            "(listing stopped at {} entries: there are more)\n",
            resp.artifacts.len()
        ));
    }
    out
}

/// `warden job webhooks`: one row per event and URL, oldest first.
pub fn webhooks(resp: &warden_api::WebhooksResponse) -> String {
    if resp.deliveries.is_empty() {
        return "no webhook deliveries (the job has no callback_url and its tenant no webhook)\n"
            .into();
    }
    let rows: Vec<Vec<String>> = resp
        .deliveries
        .iter()
        .map(|d| {
            let state = if d.delivered {
                format!(
                    "delivered {}",
                    d.delivered_at.as_deref().unwrap_or_default()
                )
            } else if d.gave_up {
                "gave up".to_string()
            } else {
                format!("retry at {}", d.next_attempt_at.as_deref().unwrap_or("?"))
            };
            let last = match (d.last_status, &d.last_error) {
                (_, Some(e)) => sanitize(e),
                (Some(s), None) => format!("HTTP {s}"),
                (None, None) => String::new(),
            };
            vec![
                sanitize(&d.url),
                d.job_status.map(|s| s.to_string()).unwrap_or_default(),
                d.attempts.to_string(),
                state,
                last,
            ]
        })
        .collect();
    render_table(&["URL", "EVENT", "ATTEMPTS", "STATE", "LAST"], &rows)
}

/// `warden job types`.
pub fn job_types(resp: &JobTypesResponse) -> String {
    let rows: Vec<Vec<String>> = resp
        .job_types
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.timeout_s.to_string(),
                t.requires_repo.to_string(),
                t.allowed_params.join(","),
            ]
        })
        .collect();
    render_table(&["NAME", "TIMEOUT_S", "REPO", "PARAMS"], &rows)
}

/// `warden config get-contexts`: tokens are secrets and never shown.
pub fn contexts(config: &ClientConfig) -> String {
    let rows: Vec<Vec<String>> = config
        .contexts
        .iter()
        .map(|c| {
            let current = config.current_context.as_deref() == Some(c.name.as_str());
            vec![
                if current { "*".into() } else { String::new() },
                c.name.clone(),
                c.server.clone(),
                c.timeout_seconds.map(|t| t.to_string()).unwrap_or_default(),
            ]
        })
        .collect();
    render_table(&["CURRENT", "NAME", "SERVER", "TIMEOUT"], &rows)
}

/// `warden token list` (and the token just created): never the token itself.
pub fn tokens(tokens: &[warden_api::TokenView]) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.tenant.clone(),
                t.scopes.join(","),
                t.name.clone().unwrap_or_default(),
                t.expires_at.clone().unwrap_or_else(|| "never".into()),
                match &t.revoked_at {
                    Some(at) => format!("revoked {at}"),
                    None => "active".into(),
                },
            ]
        })
        .collect();
    render_table(
        &["ID", "TENANT", "SCOPES", "NAME", "EXPIRES", "STATE"],
        &rows,
    )
}

/// `warden audit`, newest first.
pub fn audit(resp: &warden_api::AuditResponse) -> String {
    let rows: Vec<Vec<String>> = resp
        .entries
        .iter()
        .map(|e| {
            vec![
                e.at.clone(),
                e.action.clone(),
                e.outcome.clone(),
                e.tenant.clone().unwrap_or_default(),
                e.token_id.clone().unwrap_or_else(|| "-".into()),
                e.client.clone().unwrap_or_default(),
                e.target.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut out = render_table(
        &[
            "AT", "ACTION", "OUTCOME", "TENANT", "TOKEN", "CLIENT", "TARGET",
        ],
        &rows,
    );
    if let Some(c) = &resp.next_cursor {
        out.push_str(&format!("more: --cursor {c}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use warden_api::{ArtifactEntry, Invariants, JobStatus, JobTypeView};

    use super::*;
    use crate::clientconfig::Context;

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(20 << 30), "20.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }

    fn view(id: &str, status: JobStatus) -> JobView {
        JobView {
            job_id: id.into(),
            tenant: "default".into(),
            job_type: "pytest".into(),
            status,
            reason: None,
            repo_name: None,
            remote_url: None,
            sha: None,
            git_ref: None,
            params: BTreeMap::new(),
            idempotency_key: None,
            invariants: None,
            exit_code: None,
            signal: None,
            attempts: 1,
            max_attempts: 3,
            cancel_requested: false,
            unsafe_fallback: false,
            warnings: vec![],
            created_at: "2026-11-30T21:00:00.000Z".into(),
            started_at: None,
            finished_at: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            log_truncated: false,
            resources: None,
            enforcement: BTreeMap::new(),
            inline_argv: None,
            image: None,
            stages: Vec::new(),
            tests: None,
            artifact_bytes: 0,
            tool_bundle: None,
            tool_env_var: None,
            artifact_dir: "/data/artifacts/x".into(),
        }
    }

    #[test]
    fn job_list() {
        let ok = JobView {
            exit_code: Some(0),
            ..view("0193a1b2-0000-7000-8000-000000000001", JobStatus::Succeeded)
        };
        let killed = JobView {
            signal: Some(9),
            reason: Some("timed_out".into()),
            ..view("0193a1b2-0000-7000-8000-000000000002", JobStatus::TimedOut)
        };
        let hostile = JobView {
            exit_code: Some(1),
            // A reason with a terminal escape and a newline cannot draw on the terminal.
            reason: Some("exit_code: 1\n\u{1b}[2Jfake".into()),
            ..view("0193a1b2-0000-7000-8000-000000000003", JobStatus::Failed)
        };
        let queued = view("0193a1b2-0000-7000-8000-000000000004", JobStatus::Queued);
        let unsandboxed = JobView {
            exit_code: Some(0),
            unsafe_fallback: true,
            ..view("0193a1b2-0000-7000-8000-000000000006", JobStatus::Succeeded)
        };
        insta::assert_snapshot!(jobs(&[ok, killed, hostile, queued, unsandboxed]));
    }

    #[test]
    fn job_detail_with_limits_not_enforced() {
        let j = JobView {
            exit_code: Some(0),
            warnings: vec!["LIMITS_NOT_ENFORCED".into(), "ARTIFACTS_LIMIT".into()],
            enforcement: BTreeMap::from([
                ("memory".into(), "not enforced (none: not delegated)".into()),
                ("pids".into(), "not enforced (none: not delegated)".into()),
                ("wall_time".into(), "supervisor".into()),
            ]),
            ..view("0193a1b2-0000-7000-8000-000000000007", JobStatus::Succeeded)
        };
        insta::assert_snapshot!(job(&j));
    }

    #[test]
    fn test_results_failures_first() {
        use warden_api::{TestCounts, TestResult, TestStatus, TestsResponse};
        let t = |class: &str, name: &str, status, ms, message: Option<&str>, flaky| TestResult {
            suite: "pytest".into(),
            classname: class.into(),
            name: name.into(),
            status,
            duration_ms: ms,
            message: message.map(str::to_string),
            flaky,
        };
        let page = TestsResponse {
            job_id: "j".into(),
            counts: Some(TestCounts {
                total: 4,
                passed: 1,
                failed: 1,
                error: 1,
                skipped: 1,
                files: 1,
                truncated: false,
            }),
            tests: vec![
                t(
                    "tests.test_a",
                    "test_bad",
                    TestStatus::Failed,
                    Some(250),
                    Some("\nassert 1 == 2\ntraceback"),
                    true,
                ),
                t(
                    "tests.test_a",
                    "test_err\u{1b}[2J",
                    TestStatus::Error,
                    None,
                    Some("fixture broke"),
                    false,
                ),
                t(
                    "tests.test_b",
                    "test_skip",
                    TestStatus::Skipped,
                    Some(0),
                    Some("not on linux"),
                    false,
                ),
                t("", "test_ok", TestStatus::Passed, Some(1), None, false),
            ],
            next_cursor: Some("4".into()),
        };
        insta::assert_snapshot!(tests(&page));
        let none = TestsResponse {
            job_id: "j".into(),
            counts: None,
            tests: vec![],
            next_cursor: None,
        };
        assert_eq!(
            tests(&none),
            "no test results (the job has not ended, or its type reads none)\n"
        );
    }

    #[test]
    fn job_detail_with_stages() {
        let stage = |name: &str, status, exit, out: [u64; 2], always| warden_api::StageRecord {
            name: name.into(),
            status,
            always,
            exit_code: exit,
            signal: None,
            started_ms: exit.map(|_| 1500),
            duration_ms: exit.map(|_| 250),
            stdout: out,
            stderr: [0, 0],
        };
        use warden_api::StageStatus as S;
        let j = JobView {
            exit_code: Some(2),
            reason: Some("stage_failed: build".into()),
            stages: vec![
                stage("deps", S::Succeeded, Some(0), [0, 100], false),
                stage("build", S::Failed, Some(2), [100, 4196], false),
                stage("test", S::Skipped, None, [4196, 4196], false),
                stage(
                    "collect\u{1b}[2J",
                    S::Succeeded,
                    Some(0),
                    [4196, 4200],
                    true,
                ),
            ],
            ..view("0193a1b2-0000-7000-8000-000000000009", JobStatus::Failed)
        };
        insta::assert_snapshot!(job(&j));
    }

    #[test]
    fn job_detail_with_a_mutated_tree() {
        let j = JobView {
            repo_name: Some("click".into()),
            sha: Some("a".repeat(40)),
            git_ref: Some("main".into()),
            reason: Some("mutation_detected: 3 path(s) differ".into()),
            exit_code: Some(0),
            invariants: Some(Invariants {
                read_only_ok: Some(true),
                clean_tree_ok: Some(false),
                changed_count: 3,
                changed_paths: vec!["src/a.py".into(), "new\nline".into()],
                ..Invariants::default()
            }),
            ..view(
                "0193a1b2-0000-7000-8000-000000000005",
                JobStatus::MutationDetected,
            )
        };
        insta::assert_snapshot!(job(&j));
    }

    #[test]
    fn artifact_listing() {
        let resp = ArtifactsResponse {
            job_id: "j".into(),
            truncated: true,
            artifacts: vec![
                ArtifactEntry {
                    path: "artifact.json".into(),
                    path_hex: None,
                    kind: "file".into(),
                    size: 812,
                },
                ArtifactEntry {
                    path: "reports".into(),
                    path_hex: None,
                    kind: "dir".into(),
                    size: 0,
                },
                ArtifactEntry {
                    path: "reports/junit.xml".into(),
                    path_hex: None,
                    kind: "file".into(),
                    size: 40_213,
                },
                ArtifactEntry {
                    path: "link".into(),
                    path_hex: None,
                    kind: "symlink".into(),
                    size: 0,
                },
                // A name that would forge a row, and one that would read backwards.
                ArtifactEntry {
                    path: "x\nartifact.json  file  1".into(),
                    path_hex: None,
                    kind: "file".into(),
                    size: 2,
                },
                ArtifactEntry {
                    path: "report\u{202e}fdp.exe".into(),
                    path_hex: None,
                    kind: "file".into(),
                    size: 3,
                },
                // Two names that differ only in bytes that are not UTF-8.
                ArtifactEntry {
                    path: "a\u{fffd}".into(),
                    path_hex: Some("61ff".into()),
                    kind: "file".into(),
                    size: 4,
                },
                ArtifactEntry {
                    path: "a\u{fffd}".into(),
                    path_hex: Some("61fe".into()),
                    kind: "file".into(),
                    size: 5,
                },
            ],
        };
        insta::assert_snapshot!(artifacts(&resp));
    }

    #[test]
    fn job_type_listing() {
        let t = |name: &str, repo: bool, params: &[&str]| JobTypeView {
            name: name.into(),
            argv: vec!["/bin/true".into()],
            stages: Vec::new(),
            timeout_s: 60,
            requires_repo: repo,
            allowed_params: params.iter().map(|p| p.to_string()).collect(),
            network: false,
            egress: Vec::new(),
        };
        let resp = JobTypesResponse {
            job_types: vec![
                t("local_echo", false, &[]),
                t("pytest", true, &["PYTEST_ADDOPTS", "TEST_FILTER"]),
            ],
        };
        insta::assert_snapshot!(job_types(&resp));
    }

    #[test]
    fn context_listing_never_shows_tokens() {
        let config = ClientConfig {
            current_context: Some("prod".into()),
            contexts: vec![
                Context {
                    name: "local".into(),
                    server: "http://127.0.0.1:8080".into(),
                    timeout_seconds: None,
                    token: None,
                    token_file: None,
                    ca_file: None,
                },
                Context {
                    name: "prod".into(),
                    server: "grpc://warden.internal:50051".into(),
                    timeout_seconds: Some(30),
                    token: Some("s3cr3t-token-value".into()),
                    token_file: None,
                    ca_file: None,
                },
            ],
        };
        let out = contexts(&config);
        assert!(!out.contains("s3cr3t"));
        insta::assert_snapshot!(out);
    }

    #[test]
    fn webhook_deliveries() {
        use warden_api::{WebhookDelivery, WebhooksResponse};
        let d = |url: &str, status: JobStatus, attempts: u32| WebhookDelivery {
            url: url.into(),
            event_id: "e".into(),
            job_status: Some(status),
            attempts,
            delivered: false,
            gave_up: false,
            last_status: None,
            last_error: None,
            created_at: "2026-12-02T05:00:00.000Z".into(),
            delivered_at: None,
            next_attempt_at: None,
        };
        let resp = WebhooksResponse {
            job_id: "j".into(),
            deliveries: vec![
                WebhookDelivery {
                    delivered: true,
                    last_status: Some(204),
                    delivered_at: Some("2026-12-02T05:00:01.000Z".into()),
                    ..d("https://hooks.example/a", JobStatus::Running, 3)
                },
                WebhookDelivery {
                    last_status: Some(503),
                    next_attempt_at: Some("2026-12-02T05:00:09.000Z".into()),
                    ..d("https://hooks.example/a", JobStatus::Succeeded, 1)
                },
                WebhookDelivery {
                    gave_up: true,
                    last_error: Some("connection refused\u{1b}[2J".into()),
                    ..d("https://down.example/\u{7}", JobStatus::Succeeded, 8)
                },
            ],
        };
        insta::assert_snapshot!(webhooks(&resp));
        let none = WebhooksResponse {
            job_id: "j".into(),
            deliveries: vec![],
        };
        assert!(webhooks(&none).starts_with("no webhook deliveries"));
    }
}
