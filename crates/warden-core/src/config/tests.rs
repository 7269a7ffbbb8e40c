use super::*;

const ISSUE_SHAPE: &str = r#"listen: 127.0.0.1:8080
data_dir: ./.warden
slots: 2
job_types:
  local_echo:
    argv: ["/bin/sh", "-c", "echo hello from warden; uname -a"]
    timeout_s: 60
  pytest:
    argv: ["python3", "-m", "pytest", "-q"]
    requires_repo: true
    requires_repo_allowlist: true
    allowed_params: [PYTEST_ADDOPTS]
    timeout_s: 1800
    limits: {memory_mb: 2048, pids: 256, output_mb: 64}
    network: false
repos:
  click: {url: "https://github.com/pallets/click.git"}
"#;

#[test]
fn the_documented_shape_is_accepted() {
    let c = Config::from_yaml_str(ISSUE_SHAPE, "warden.yaml").unwrap();
    assert_eq!(c.slots.get(), 2);
    assert!(
        !c.unsafe_fallback,
        "a file must opt in to running unsandboxed"
    );
    let py = c.job_type("pytest").unwrap();
    assert_eq!(py.limits.memory_mb, Positive(2048));
    // A job type without limits still has memory and process caps.
    let echo = c.job_type("local_echo").unwrap();
    assert_eq!(
        (echo.limits.memory_mb, echo.limits.pids),
        (Positive(4096), Positive(1024))
    );
    assert_eq!(py.limits.output_bytes(), 64 << 20);
    // Nothing a job writes is unbounded: artifacts and file size have defaults too.
    assert_eq!(echo.limits.artifacts_mb, Positive(1024));
    assert_eq!(echo.limits.file_size_mb(), 1024);
    assert_eq!(echo.limits.cpus, None);
    assert!(echo.accept_unenforced.is_empty());
    assert_eq!(py.allowed_params, ["PYTEST_ADDOPTS"]);
    assert_eq!(c.repos["click"].url, "https://github.com/pallets/click.git");
}

#[test]
fn cpus_are_decimal_and_kept_in_thousandths() {
    for (text, millis, shown) in [
        ("0.5", 500, "0.5"),
        ("2", 2000, "2"),
        ("1.25", 1250, "1.25"),
    ] {
        let yaml = format!(
            "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    limits: {{cpus: {text}}}\n    accept_unenforced: [cpus]\n"
        );
        let c = Config::from_yaml_str(&yaml, "w.yaml").unwrap();
        let t = c.job_type("t").unwrap();
        let cpus = t.limits.cpus.unwrap();
        assert_eq!((cpus.millis(), cpus.to_string().as_str()), (millis, shown));
        assert_eq!(t.accept_unenforced, [CgroupLimit::Cpus]);
    }
}

#[test]
fn builtin_default_has_the_demo_job_type() {
    let c = Config::builtin();
    assert!(c.unsafe_fallback);
    assert_eq!(c.job_type("local_echo").unwrap().timeout_s.get(), 60);
    assert!(c.listen.ip().is_loopback());
}

/// `check(yaml, line, fragment)`: the file is refused, at that line, saying that.
fn check(yaml: &str, line: Option<usize>, fragment: &str) {
    let err = Config::from_yaml_str(yaml, "bad.yaml").unwrap_err();
    assert!(err.message.contains(fragment), "{err} lacks {fragment:?}");
    assert_eq!(err.line, line, "{err}");
    assert!(err.to_string().starts_with("bad.yaml"), "{err}");
}

#[test]
fn bad_configs_are_refused_with_line_and_reason() {
    check("slots: 2\nbogus: 1\n", Some(2), "unknown field `bogus`");
    check("slots: two\n", Some(1), "invalid type: string \"two\"");
    check("slots: 0\n", Some(1), "0 never means unlimited");
    check("slots: -3\n", Some(1), "got -3");
    check(
        "job_types:\n  t:\n    argv: [x]\n    timeout_s: 0\n",
        Some(4),
        "0 never means unlimited",
    );
    check(
        "job_types:\n  t:\n    argv: [x]\n    timeout_s: -1\n",
        Some(4),
        "got -1",
    );
    check(
        "job_types:\n  t:\n    argv: [x]\n",
        Some(3),
        "missing field `timeout_s`",
    );
    check(
        "job_types:\n  t:\n    argv: []\n    timeout_s: 5\n",
        Some(2),
        "argv must name a program",
    );
    check(
        "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    allowed_params: [lower]\n",
        Some(2),
        "not a valid param name",
    );
    check(
        "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    allowed_params: [HOME]\n",
        Some(2),
        "reserved",
    );
    check(
        "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    limits: {memory_mb: 0}\n",
        Some(5),
        "0 never means unlimited",
    );
    for (cpus, why) in [
        ("0", "more than 0"),
        ("-1", "more than 0"),
        ("0.0001", "finer than a thousandth"),
        ("1e9", "at most 4096"),
        (".nan", "more than 0"),
        ("two", "a number of CPUs"),
    ] {
        check(
            &format!(
                "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    limits: {{cpus: {cpus}}}\n"
            ),
            Some(5),
            why,
        );
    }
    check(
        "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    accept_unenforced: [memory, disk]\n",
        Some(5),
        "unknown variant `disk`",
    );
    check(
        "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    accept_unenforced: [pids, pids]\n",
        Some(2),
        "lists pids twice",
    );
    check(
        "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    limits: {swap: 1}\n",
        Some(5),
        "unknown field `swap`",
    );
    check(
        "job_types:\n  Bad Name:\n    argv: [x]\n    timeout_s: 5\n",
        Some(2),
        "is invalid",
    );
    check("listen: nowhere\n", Some(1), "invalid socket address");
    check(
        "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    binds: [{host: /opt, at: /proc/x}]\n",
        Some(2),
        "a place warden manages itself",
    );
    check(
        "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    binds: [{host: opt, at: /opt}]\n",
        Some(2),
        "must be an absolute path",
    );
    check("listen: 0.0.0.0:8080\n", None, "not loopback");
    check(
        "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    allowed_params: [WARDEN_SHA]\n",
        Some(2),
        "reserved",
    );
    check(
        "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    allowed_params: [GIT_CONFIG_COUNT]\n",
        Some(2),
        "reserved",
    );
    for (network, line, why) in [
        ("maybe", 5, "write none, host, or {egress:"),
        ("{egress: []}", 5, "network.egress is empty"),
        ("{egress: [pypi.org]}", 5, "a port is required"),
        ("{egress: [\"a.*.org:443\"]}", 5, "'*' is allowed only"),
        (
            "{egress: [\"10.0.0.1/8:5432\"]}",
            5,
            "host bits set; the range is 10.0.0.0/8",
        ),
        (
            "{egress: [\"x.org:443\"], max_connections: 0}",
            5,
            "0 never means unlimited",
        ),
        (
            "{egress: [\"x.org:443\"], max_bytes: 5}",
            5,
            "unknown field `max_bytes`",
        ),
        ("{egres: [\"x.org:443\"]}", 5, "unknown field `egres`"),
    ] {
        check(
            &format!("job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    network: {network}\n"),
            Some(line),
            why,
        );
    }
    check(
        "repos:\n  x: {url: \"ext::sh -c id\"}\n",
        Some(2),
        "transport \"ext\" is not allowed",
    );
    check(
        "repos:\n  x: {url: \"https://u:p@h/x\"}\n",
        Some(2),
        "credentials in a repository URL are refused",
    );
    check(
        "repos:\n  x: {url: \"https://h/x\", branch: main}\n",
        Some(2),
        "unknown field `branch`",
    );
    check(
        "git: {fetch_timeout_s: 0}\n",
        Some(1),
        "0 never means unlimited",
    );
    check(
        "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    requires_repo: true\n    hooks_path: ../x\n",
        Some(2),
        "must be a path inside the worktree",
    );
    check(
        "slots: 'unterminated\n",
        Some(2),
        "found unexpected end of stream",
    );
}

#[test]
fn empty_file_means_defaults() {
    let c = Config::from_yaml_str("\n", "empty.yaml").unwrap();
    assert!(c.job_types.is_empty());
    assert_eq!(c.slots.get(), 2);
}

#[test]
fn the_gvisor_tier_is_chosen_per_job_type_and_refuses_what_it_cannot_give() {
    let c = Config::from_yaml_str(
        "gvisor: {runsc: /opt/gvisor/runsc}\njob_types:\n  g:\n    argv: [x]\n    timeout_s: 5\n    isolation: gvisor\n  n:\n    argv: [x]\n    timeout_s: 5\n",
        "ok.yaml",
    )
    .unwrap();
    assert_eq!(c.job_types["g"].isolation, IsolationTier::Gvisor);
    assert_eq!(c.job_types["n"].isolation, IsolationTier::Native);
    assert_eq!(
        c.gvisor.runsc(),
        Some(std::path::PathBuf::from("/opt/gvisor/runsc"))
    );
    check(
        "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    isolation: firecracker\n",
        Some(5),
        "unknown variant `firecracker`, expected `native` or `gvisor`",
    );
    check(
        "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    isolation: gvisor\n    root: writable\n",
        Some(2),
        "root: writable is not available with isolation: gvisor",
    );
    check("gvisor: {path: /x}\n", Some(1), "unknown field `path`");
    check(
        "gvisor: {runsc: bin/runsc}\n",
        None,
        "gvisor.runsc \"bin/runsc\" must be an absolute path",
    );
}

#[test]
fn staged_job_types_are_checked_stage_by_stage() {
    let ok = Config::from_yaml_str(
        "job_types:\n  ci:\n    timeout_s: 60\n    stages:\n      - {name: deps, argv: [a]}\n      - {name: build, argv: [b, c], timeout_s: 30, env: {MODE: fast}}\n      - {name: collect, argv: [d], always: true}\n",
        "ok.yaml",
    )
    .unwrap();
    let t = &ok.job_types[&JobTypeName("ci".into())];
    assert!(t.argv.is_empty());
    let names: Vec<(&str, bool)> = t
        .stages
        .iter()
        .map(|s| (s.name.as_str(), s.always))
        .collect();
    assert_eq!(
        names,
        [("deps", false), ("build", false), ("collect", true)]
    );
    assert_eq!(t.stages[1].timeout_s.map(|p| p.get()), Some(30));
    assert_eq!(t.stages[1].env["MODE"], "fast");

    let head = "job_types:\n  ci:\n    timeout_s: 60\n";
    for (body, fragment) in [
        (
            "    argv: [x]\n    stages: [{name: a, argv: [x]}]\n",
            "either argv (one program) or stages",
        ),
        (
            "    allowed_params: [A]\n",
            "missing field `argv` (or `stages`)",
        ),
        ("    stages: []\n", "stages is empty"),
        (
            "    stages: [{name: Build, argv: [x]}]\n",
            "stages[0].name \"Build\" is invalid",
        ),
        (
            "    stages: [{name: a, argv: [x]}, {name: a, argv: [y]}]\n",
            "stages lists the name \"a\" twice",
        ),
        (
            "    stages: [{name: a, argv: []}]\n",
            "stages[0] (a): argv must name a program",
        ),
        (
            "    stages: [{name: a, argv: [x], timeout_s: 61}]\n",
            "timeout_s 61 is longer than the job type's timeout_s 60",
        ),
        (
            "    stages: [{name: a, argv: [x], timeout_s: 0}]\n",
            "0 never means unlimited",
        ),
        (
            "    stages: [{name: a, argv: [x], env: {HOME: /x}}]\n",
            "env variable \"HOME\" must match",
        ),
        (
            "    allowed_params: [MODE]\n    stages: [{name: a, argv: [x], env: {MODE: x}}]\n",
            "env variable \"MODE\" is also an allowed param",
        ),
        (
            "    stages: [{name: a, argv: [x], retries: 2}]\n",
            "unknown field `retries`",
        ),
        (
            "    isolation: gvisor\n    stages: [{name: a, argv: [x]}]\n",
            "stages are not available with isolation: gvisor",
        ),
    ] {
        let err = Config::from_yaml_str(&format!("{head}{body}"), "bad.yaml").unwrap_err();
        assert!(err.message.contains(fragment), "{err} lacks {fragment:?}");
        assert!(err.line.is_some(), "{err}");
    }
    let many: String = (0..=MAX_STAGES)
        .map(|i| format!("      - {{name: s{i}, argv: [x]}}\n"))
        .collect();
    let err = Config::from_yaml_str(&format!("{head}    stages:\n{many}"), "bad.yaml").unwrap_err();
    assert!(err.message.contains("at most 64"), "{err}");
}

#[test]
fn result_reports_are_globs_inside_the_artifacts() {
    let ok = Config::from_yaml_str(
        "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    results: {junit: [\"$ARTIFACT_DIR/junit.xml\", \"$ARTIFACT_DIR/reports/**/*.xml\"]}\n",
        "ok.yaml",
    )
    .unwrap();
    let t = &ok.job_types[&JobTypeName("t".into())];
    let patterns: Vec<&str> = t.results.junit_patterns().collect();
    assert_eq!(patterns, ["junit.xml", "reports/**/*.xml"]);
    for (pattern, fragment) in [
        ("/tmp/junit.xml", "must start with $ARTIFACT_DIR/"),
        ("junit.xml", "must start with $ARTIFACT_DIR/"),
        (
            "$ARTIFACT_DIR/../etc/passwd",
            "must name a path inside the artifacts",
        ),
        (
            "$ARTIFACT_DIR//x.xml",
            "must name a path inside the artifacts",
        ),
        ("$ARTIFACT_DIR/", "must name a path inside the artifacts"),
        ("$ARTIFACT_DIR/a[.xml", "is not a valid glob"),
    ] {
        let yaml = format!(
            "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    results: {{junit: [{pattern:?}]}}\n"
        );
        let err = Config::from_yaml_str(&yaml, "bad.yaml").unwrap_err();
        assert!(err.message.contains(fragment), "{pattern}: {err}");
        assert!(err.line.is_some(), "{err}");
    }
    let err = Config::from_yaml_str(
        "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    results: {xunit: []}\n",
        "bad.yaml",
    )
    .unwrap_err();
    assert!(err.message.contains("unknown field `xunit`"), "{err}");
}

#[test]
fn a_review_bundle_type_takes_no_program_and_needs_its_repository() {
    let ok = Config::from_yaml_str(
        "job_types:\n  r:\n    kind: review_bundle\n    requires_repo: true\n    timeout_s: 60\n    size_cap_kb: 64\n",
        "ok.yaml",
    )
    .unwrap();
    let t = &ok.job_types[&JobTypeName("r".into())];
    assert_eq!(t.kind, JobKind::ReviewBundle);
    assert_eq!(t.size_cap_kb, 64);
    assert_eq!(t.allowed_params, REVIEW_PARAMS);
    let head = "job_types:\n  r:\n    kind: review_bundle\n    timeout_s: 60\n";
    for (body, fragment) in [
        (
            "    requires_repo: true\n    argv: [x]\n",
            "remove argv and stages",
        ),
        (
            "    requires_repo: true\n    image: busybox\n",
            "remove image and rootfs",
        ),
        (
            "    requires_repo: true\n    isolation: gvisor\n",
            "remove isolation: gvisor",
        ),
        ("", "needs requires_repo: true"),
        (
            "    requires_repo: true\n    size_cap_kb: 2000000\n",
            "size_cap_kb 2000000 is over",
        ),
        (
            "    requires_repo: true\n    kind: bundle\n",
            "duplicate field `kind`",
        ),
    ] {
        let err = Config::from_yaml_str(&format!("{head}{body}"), "bad.yaml").unwrap_err();
        assert!(err.message.contains(fragment), "{body}: {err}");
    }
    let err = Config::from_yaml_str(
        "job_types:\n  t:\n    argv: [x]\n    timeout_s: 5\n    size_cap_kb: 10\n",
        "bad.yaml",
    )
    .unwrap_err();
    assert!(
        err.message
            .contains("size_cap_kb applies only to kind: review_bundle"),
        "{err}"
    );
    let params = |p: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let sha = "a".repeat(40);
    assert!(check_review_params(&params(&[("SINCE_SHA", &sha)])).is_ok());
    assert!(
        check_review_params(&params(&[("SINCE_SHA", &sha), ("SIZE_CAP_KB", "1048577")])).is_err()
    );
}

#[test]
fn suites_are_read_from_the_repository_by_warden_s_runner() {
    let ok = Config::from_yaml_str(
        "job_types:\n  s:\n    requires_repo: true\n    timeout_s: 60\n    suites: {dir: tests/suites, timeout_s: 30}\n  p:\n    requires_repo: true\n    timeout_s: 60\n    suites: {dir: t}\n    stages:\n      - {name: build, argv: [make]}\n      - {name: run_suites, suites: true}\n",
        "ok.yaml",
    )
    .unwrap();
    let s = &ok.job_types[&JobTypeName("s".into())];
    assert_eq!(s.suites.as_ref().unwrap().dir, "tests/suites");
    assert!(s.argv.is_empty() && s.stages.is_empty());
    assert_eq!(s.allowed_params, SUITE_PARAMS);
    let p = &ok.job_types[&JobTypeName("p".into())];
    assert!(p.stages[1].suites && p.stages[1].argv.is_empty());
    let head = "job_types:\n  s:\n    timeout_s: 60\n";
    for (body, fragment) in [
        (
            "    requires_repo: true\n    suites: {dir: ../x}\n",
            "must be a path inside the repository",
        ),
        (
            "    requires_repo: true\n    suites: {dir: /abs}\n",
            "must be a path inside the repository",
        ),
        ("    suites: {dir: t}\n", "suites need requires_repo: true"),
        (
            "    requires_repo: true\n    suites: {dir: t}\n    argv: [x]\n",
            "remove argv",
        ),
        (
            "    requires_repo: true\n    suites: {dir: t}\n    image: busybox\n",
            "remove image, rootfs or isolation: gvisor",
        ),
        (
            "    requires_repo: true\n    suites: {dir: t}\n    stages: [{name: a, argv: [x]}]\n",
            "exactly one stage with suites: true",
        ),
        (
            "    stages: [{name: a, suites: true}]\n",
            "needs the job type's suites",
        ),
        (
            "    requires_repo: true\n    suites: {dir: t}\n    stages: [{name: a, suites: true, argv: [x]}]\n",
            "remove its argv",
        ),
        (
            "    requires_repo: true\n    suites: {dir: t, parallel: 2}\n",
            "unknown field `parallel`",
        ),
    ] {
        let err = Config::from_yaml_str(&format!("{head}{body}"), "bad.yaml").unwrap_err();
        assert!(err.message.contains(fragment), "{body}: {err}");
    }
}
