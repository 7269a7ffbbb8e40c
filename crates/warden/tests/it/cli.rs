//! The `warden` command line: exit codes, bad flags, config files, contexts.

use std::process::Command;

use crate::support::*;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn warden(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(WARDEN);
    cmd.args(args)
        .env_remove("WARDEN_CONFIG")
        .env_remove("WARDEN_SERVER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn bad_flags_and_config_files_exit_2_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad_yaml = dir.path().join("bad.yaml");
    std::fs::write(
        &bad_yaml,
        "slots: 2\njob_types:\n  t:\n    argv: [x]\n    timeout_s: 0\n",
    )
    .unwrap();
    let unknown_key = dir.path().join("unknown.yaml");
    std::fs::write(&unknown_key, "slots: 2\nsandbox: off\n").unwrap();
    let bad_client = dir.path().join("client.yaml");
    std::fs::write(
        &bad_client,
        "contexts: [{name: a, server: http://x, colour: red}]\n",
    )
    .unwrap();
    let bad_client_s = bad_client.to_str().unwrap();
    let bad_yaml_s = bad_yaml.to_str().unwrap();
    let unknown_s = unknown_key.to_str().unwrap();
    let missing = dir.path().join("missing.yaml");
    let missing_s = missing.to_str().unwrap();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["serve", "--config", bad_yaml_s], vec![], "bad.yaml:5:"),
        (
            vec!["serve", "--config", bad_yaml_s],
            vec![],
            "0 never means unlimited",
        ),
        (
            vec!["serve", "--config", unknown_s],
            vec![],
            "unknown.yaml:2:1: unknown field `sandbox`",
        ),
        (
            vec!["serve", "--config", missing_s],
            vec![],
            "cannot read config file",
        ),
        (
            vec!["serve", "--slots", "0"],
            vec![],
            "0 is not in 1..=1024",
        ),
        (
            vec!["serve", "--listen", "nowhere"],
            vec![],
            "invalid socket address",
        ),
        (
            vec!["serve", "--listen", "0.0.0.0:8080"],
            vec![],
            "is not loopback",
        ),
        (
            vec!["serve"],
            vec![("WARDEN_SLOTS", "many")],
            "invalid value 'many'",
        ),
        (
            vec!["job", "submit", "echo", "-p", "NOEQUALS"],
            vec![],
            "is not KEY=VALUE",
        ),
        (
            vec!["job", "list", "--limit", "0"],
            vec![],
            "0 is not in 1..=500",
        ),
        (
            vec!["job", "--server", "ftp://x", "list"],
            vec![],
            "must start with http://",
        ),
        (
            vec!["job", "list", "-o", "yaml"],
            vec![],
            "invalid value 'yaml'",
        ),
        (
            vec!["job", "--config", bad_client_s, "list"],
            vec![],
            "unknown field `colour`",
        ),
        (
            vec!["job", "--context", "nope", "list"],
            vec![],
            "no context named \"nope\"",
        ),
        (
            vec!["job", "logs", "x", "--stream", "stdin"],
            vec![],
            "invalid value 'stdin'",
        ),
        (
            vec!["config", "--config", bad_client_s, "get-contexts"],
            vec![],
            "unknown field `colour`",
        ),
        (vec!["frobnicate"], vec![], "unrecognized subcommand"),
    ];
    for (args, env, fragment) in cases {
        let r = warden(&args, &env);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(fragment),
            "{args:?}: {:?} lacks {fragment:?}",
            r.stderr
        );
    }
}

/// The same commands, answers and exit codes over gRPC (`grpc://`) as over HTTP.
#[tokio::test]
async fn the_cli_speaks_grpc_too() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(dir.path(), ""));
    let grpc = server.grpc.replace("http://", "grpc://");
    let env = [("WARDEN_SERVER", grpc.as_str())];
    let ok = warden(
        &[
            "job",
            "submit",
            "echo",
            "-p",
            "GREETING=grpc",
            "--wait",
            "-o",
            "json",
        ],
        &env,
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let view: serde_json::Value = serde_json::from_str(&ok.stdout).unwrap();
    assert_eq!(view["status"], "succeeded");
    let id = view["job_id"].as_str().unwrap();
    let logs = warden(&["job", "logs", id], &env);
    assert_eq!(logs.code, 0, "{}", logs.stderr);
    assert_eq!(logs.stdout, "hello grpc\n");
    let got = warden(&["job", "get", id, "-o", "json"], &env);
    let got: serde_json::Value = serde_json::from_str(&got.stdout).unwrap();
    assert_eq!(got["exit_code"], 0);
    let art = warden(&["job", "artifacts", id, "--get", "out.txt"], &env);
    assert_eq!(art.code, 0, "{}", art.stderr);
    assert_eq!(art.stdout, "out\n");
    let followed = warden(
        &["job", "submit", "echo", "-p", "GREETING=live", "--follow"],
        &env,
    );
    assert_eq!(followed.code, 0, "{}", followed.stderr);
    assert_eq!(followed.stdout, "hello live\n");
    let failed = warden(&["job", "submit", "fail", "--wait"], &env);
    assert_eq!(failed.code, 1);
    let list = warden(&["job", "list", "-o", "json"], &env);
    let list: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 3);
    // Refusals keep their codes and messages: exit 2.
    let refused = warden(&["job", "submit", "echo", "-p", "NOPE=1"], &env);
    assert_eq!(refused.code, 2);
    assert!(
        refused.stderr.contains("not allowed for job type"),
        "{}",
        refused.stderr
    );
    let unknown = warden(
        &["job", "get", "01a20f6b-5fa2-70a5-b3b0-ef6ce0f83903"],
        &env,
    );
    assert_eq!(unknown.code, 2);
    assert!(unknown.stderr.contains("not found"), "{}", unknown.stderr);
    let finished = warden(&["job", "cancel", id], &env);
    assert_eq!(finished.code, 2);
    assert!(
        finished.stderr.contains("already ended"),
        "{}",
        finished.stderr
    );
    // Nothing listening: unreachable (8), not a usage error.
    let down = warden(&["job", "list"], &[("WARDEN_SERVER", "grpc://127.0.0.1:1")]);
    assert_eq!(down.code, 8, "{}", down.stderr);
}

#[tokio::test]
async fn wait_exit_codes_follow_the_job_status() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(dir.path(), ""));
    let env = [("WARDEN_SERVER", server.url.as_str())];
    let ok = warden(
        &["job", "submit", "echo", "-p", "GREETING=cli", "--wait"],
        &env,
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(ok.stdout.contains("succeeded"), "{}", ok.stdout);
    let failed = warden(&["job", "submit", "fail", "--wait", "-o", "json"], &env);
    assert_eq!(failed.code, 1);
    let view: serde_json::Value = serde_json::from_str(&failed.stdout).unwrap();
    assert_eq!(view["exit_code"], 3);
    let timed_out = warden(&["job", "submit", "tree_timeout", "--wait"], &env);
    assert_eq!(timed_out.code, 3, "{}", timed_out.stdout);
    let error = warden(&["job", "submit", "missing_program", "--wait"], &env);
    assert_eq!(error.code, 6);
    let followed = warden(
        &["job", "submit", "echo", "-p", "GREETING=f", "--follow"],
        &env,
    );
    assert_eq!(followed.code, 0);
    assert_eq!(followed.stdout, "hello f\n");
    // The server refusing a request is the caller's mistake: exit 2 with its message.
    let refused = warden(&["job", "submit", "echo", "-p", "NOPE=1"], &env);
    assert_eq!(refused.code, 2);
    assert!(
        refused.stderr.contains("not allowed for job type"),
        "{}",
        refused.stderr
    );
    let bad_id = warden(&["job", "get", "not-a-uuid"], &env);
    assert_eq!(bad_id.code, 2);
    assert!(
        bad_id.stderr.contains("invalid job id"),
        "{}",
        bad_id.stderr
    );
    // Logs and listing.
    let list = warden(&["job", "list", "--job-type", "echo", "-o", "json"], &env);
    let list: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    let id = list["jobs"][0]["job_id"].as_str().unwrap().to_string();
    let logs = warden(&["job", "logs", &id], &env);
    assert_eq!(logs.stdout, "hello f\n");
    let arts = warden(&["job", "artifacts", &id], &env);
    assert!(arts.stdout.contains("artifact.json"), "{}", arts.stdout);
}

#[tokio::test]
async fn unreachable_server_exits_8() {
    let r = warden(
        &[
            "job",
            "list",
            "--server",
            "http://127.0.0.1:9",
            "--timeout",
            "2",
        ],
        &[],
    );
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("cannot reach warden at http://127.0.0.1:9"),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn contexts_select_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(dir.path(), ""));
    let cfg = dir.path().join("home").join(".warden").join("config");
    let cfg_s = cfg.to_str().unwrap();
    let env = [("WARDEN_CONFIG", cfg_s)];
    let set = warden(
        &[
            "config",
            "set-context",
            "dead",
            "--server",
            "http://127.0.0.1:9",
        ],
        &env,
    );
    assert_eq!(set.code, 0, "{}", set.stderr);
    let set = warden(
        &[
            "config",
            "set-context",
            "live",
            "--server",
            &server.url,
            "--timeout",
            "5",
        ],
        &env,
    );
    assert_eq!(set.code, 0, "{}", set.stderr);
    assert_eq!(
        warden(&["config", "current-context"], &env).stdout,
        "dead\n"
    );
    assert_eq!(warden(&["job", "types", "--timeout", "2"], &env).code, 8);
    assert_eq!(warden(&["job", "types", "--context", "live"], &env).code, 0);
    assert_eq!(warden(&["config", "use-context", "live"], &env).code, 0);
    let types = warden(&["job", "types"], &env);
    assert_eq!(types.code, 0, "{}", types.stderr);
    assert!(types.stdout.contains("echo"), "{}", types.stdout);
    let contexts = warden(&["config", "get-contexts"], &env).stdout;
    assert!(
        contexts
            .lines()
            .any(|l| l.starts_with('*') && l.contains("live")),
        "{contexts}"
    );
    assert_eq!(warden(&["config", "use-context", "ghost"], &env).code, 2);
    let json: serde_json::Value =
        serde_json::from_str(&warden(&["config", "get-contexts", "-o", "json"], &env).stdout)
            .unwrap();
    let live = json
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "live")
        .unwrap();
    assert_eq!(live["current"], true);
    assert_eq!(live["timeoutSeconds"], 5);
    let current = warden(&["config", "current-context", "-o", "json"], &env).stdout;
    assert_eq!(
        current.trim().replace([' ', '\n'], ""),
        r#"{"currentContext":"live"}"#
    );
}

#[test]
fn doctor_reports_every_kernel_feature_and_exits_by_its_verdict() {
    let r = warden(&["doctor", "-o", "json"], &[]);
    let checks: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    for want in [
        "namespace: user",
        "namespace: mount",
        "namespace: pid",
        "namespace: network",
        "namespace: ipc",
        "namespace: uts",
        "namespace: cgroup",
        "unprivileged user namespaces",
        "seccomp",
        "landlock",
        "privileges",
        "cgroup layout",
        "cgroup limits",
        "configuration",
        "sandbox self-test",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let failed = checks.iter().any(|c| c["status"] == "FAIL");
    assert!(
        checks
            .iter()
            .all(|c| ["PASS", "WARN", "FAIL"].contains(&c["status"].as_str().unwrap()))
    );
    assert_eq!(r.code, if failed { 1 } else { 0 }, "{}", r.stdout);
    // This suite runs where the hostile-job suite runs: the sandbox works here.
    let selftest = checks
        .iter()
        .find(|c| c["check"] == "sandbox self-test")
        .unwrap();
    assert_eq!(selftest["status"], "PASS", "{selftest}");
    // ... and so does the egress gateway's namespace, the way the sandbox makes it.
    let egress = checks
        .iter()
        .find(|c| c["check"] == "per-job network (egress gateway)")
        .unwrap();
    assert_eq!(egress["status"], "PASS", "{egress}");
    assert!(
        egress["detail"]
            .as_str()
            .unwrap()
            .contains("every address routed to its lo"),
        "{egress}"
    );
    // The gVisor tier works here too (scripts/setup.sh installs runsc)...
    let gvisor = checks.iter().find(|c| c["check"] == "gvisor tier").unwrap();
    assert_eq!(gvisor["status"], "PASS", "{gvisor}");
    // ... and where a job type asks for it and it is not there, that is a FAIL.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gvisor.yaml");
    std::fs::write(
        &missing,
        "gvisor: {runsc: /nonexistent/runsc}\njob_types:\n  gv:\n    argv: [/bin/true]\n    timeout_s: 5\n    isolation: gvisor\n",
    )
    .unwrap();
    let r = warden(
        &[
            "doctor",
            "--config",
            missing.to_str().unwrap(),
            "-o",
            "json",
        ],
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.stdout);
    let checks: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    let gvisor = checks.iter().find(|c| c["check"] == "gvisor tier").unwrap();
    assert_eq!(gvisor["status"], "FAIL", "{gvisor}");
    assert!(
        gvisor["detail"]
            .as_str()
            .unwrap()
            .contains("runsc /nonexistent/runsc not found; jobs of gv end"),
        "{gvisor}"
    );
    // A bad configuration is a FAIL of its own, and the verdict follows.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "slots: 0\n").unwrap();
    let r = warden(
        &["doctor", "--config", bad.to_str().unwrap(), "-o", "json"],
        &[],
    );
    assert_eq!(r.code, 1);
    let checks: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    let config = checks
        .iter()
        .find(|c| c["check"] == "configuration")
        .unwrap();
    assert_eq!(config["status"], "FAIL");
    assert!(
        config["detail"]
            .as_str()
            .unwrap()
            .contains("0 never means unlimited"),
        "{config}"
    );
}

#[tokio::test]
async fn doctor_checks_the_database_without_touching_it() {
    let fresh = warden_store_postgres::testing::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let config = config.to_str().unwrap();
    // `warden doctor --database-url URL`: its exit code and its database check.
    let doctor = |url: &str| {
        let run = warden(
            &[
                "doctor",
                "--config",
                config,
                "--database-url",
                url,
                "-o",
                "json",
            ],
            &[],
        );
        let checks: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        let check = checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "database")
            .unwrap()
            .clone();
        (run.code, check)
    };
    let (code, down) = doctor("postgres://postgres@127.0.0.1:1/x");
    assert_eq!(code, 1, "{down}");
    assert_eq!(down["status"], "FAIL");
    let (_, check) = doctor(&fresh.url);
    assert_eq!(check["status"], "PASS", "{check}");
    // Read-only: the doctor created no schema in the database it looked at.
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("no warden schema yet"),
        "{check}"
    );
}
