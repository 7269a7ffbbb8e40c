//! Per-test results from the JUnit reports real jobs write: records and counts through the real
//! server, failures first, flaky across jobs at one commit, hostile reports each with its exact
//! outcome, and the CLI.

use std::path::Path;
use std::process::Command;

use warden_api::{JobStatus, JobView, SubmitJobRequest, TestStatus};
use warden_client::Client;

use crate::support::{Server, WARDEN, git, wait_terminal, write_config_with};

/// A report with one test of each outcome; `FLIP=1` makes `test_flip` fail instead of pass.
const REPORT: &str = r#"cat > /artifacts/junit.xml <<EOF
<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="5">
<testcase classname="tests.test_a" name="test_ok" time="0.004"/>
<testcase classname="tests.test_a" name="test_bad" time="0.25"><failure message="assert 1 == 2">def test_bad():
&gt;       assert 1 == 2</failure></testcase>
<testcase classname="tests.test_a" name="test_err"><error message="fixture broke"/></testcase>
<testcase classname="tests.test_b" name="test_skip"><skipped message="not on linux"/></testcase>
<testcase classname="tests.test_b" name="test_flip">$( [ "$FLIP" = 1 ] && echo '<failure message="flipped"/>' )</testcase>
</testsuite></testsuites>
EOF"#;

fn config(dir: &Path, repo: &Path) -> std::path::PathBuf {
    // Scripts as YAML block scalars: no escaping, only indentation.
    let block = |script: &str| {
        script
            .lines()
            .map(|l| format!("        {l}\n"))
            .collect::<String>()
    };
    write_config_with(
        dir,
        &format!(
            r#"repos:
  project: {{url: "{url}"}}
job_types:
  junit:
    argv:
      - /bin/sh
      - -c
      - |
{report}    requires_repo: true
    allowed_params: [FLIP]
    timeout_s: 60
    results: {{junit: ["$ARTIFACT_DIR/junit.xml"]}}
  nested:
    argv:
      - /bin/sh
      - -c
      - |
{nested}    timeout_s: 30
    results: {{junit: ["$ARTIFACT_DIR/reports/**/*.xml"]}}
  says:
    argv:
      - /bin/sh
      - -c
      - |
{says}    allowed_params: [MODE]
    timeout_s: 30
  none-written:
    argv: ["/bin/true"]
    timeout_s: 30
    results: {{junit: ["$ARTIFACT_DIR/junit.xml"]}}
  hostile:
    argv:
      - /usr/bin/python3
      - -c
      - |
{hostile}    allowed_params: [KIND]
    timeout_s: 120
    limits: {{artifacts_mb: 256}}
    results: {{junit: ["$ARTIFACT_DIR/*.xml"]}}
"#,
            url = repo.display(),
            report = block(REPORT),
            nested = block(NESTED),
            hostile = block(HOSTILE),
            says = block(SAYS),
        ),
    )
}

/// Writes a `warden-outputs.json` as `MODE` says, then exits as it says.
const SAYS: &str = r#"case "$MODE" in
  good) printf '{"warnings": ["SLOW_MIRROR", "coverage fell 2%%"], "outputs": {"coverage": 81.5, "report": {"path": "cov/index.html"}}}' > /artifacts/warden-outputs.json ;;
  claims) printf '{"status": "succeeded", "warnings": ["all fine"]}' > /artifacts/warden-outputs.json; exit 3 ;;
  garbage) printf '{"warnings": [' > /artifacts/warden-outputs.json ;;
  link) ln -s /etc/passwd /artifacts/warden-outputs.json ;;
esac"#;

const NESTED: &str = r#"mkdir -p /artifacts/reports/unit
echo '<testsuite><testcase name="u"/></testsuite>' > /artifacts/reports/unit/a.xml
echo '<testsuite><testcase name="i"><failure/></testcase></testsuite>' > /artifacts/reports/i.xml"#;

/// Writes the report `KIND` names.
const HOSTILE: &str = r#"import os
k = os.environ['KIND']
f = open('/artifacts/r.xml', 'w')
if k == 'laughs':
    f.write("<?xml version='1.0'?><!DOCTYPE l [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'><!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;'>]><testsuite><testcase name='x'><failure>&c;</failure></testcase></testsuite>")
if k == 'external':
    f.write("<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/shadow'>]><testsuite><testcase name='&e;'/></testsuite>")
if k == 'huge':
    f.write('<testsuite>' + ' ' * (80 << 20) + '</testsuite>')
if k == 'many':
    f.write("<testsuite name='m'>" + "<testcase name='t'/>" * 1000000 + '</testsuite>')
if k == 'deep':
    f.write('<a>' * 100000 + '</a>' * 100000)
if k == 'garbage':
    f.write("<testsuite><testcase name='a'></testsuite>")
"#;

fn req(job_type: &str, repo: bool, params: &[(&str, &str)]) -> SubmitJobRequest {
    SubmitJobRequest {
        job_type: job_type.into(),
        repo_name: repo.then(|| "project".into()),
        git_ref: repo.then(|| "main".into()),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..SubmitJobRequest::default()
    }
}

async fn run(c: &Client, r: SubmitJobRequest) -> JobView {
    let sub = c.submit(&r).await.unwrap();
    wait_terminal(c, &sub.job_id).await
}

fn repo(parent: &Path) -> std::path::PathBuf {
    let repo = parent.join("project");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README"), "tests\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    repo
}

#[tokio::test]
async fn junit_reports_become_per_test_records_failures_first_and_flaky_at_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), &repo(dir.path())));
    let c = server.client();

    let job = run(&c, req("junit", true, &[])).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    let counts = job.tests.clone().expect("counts on the record");
    assert_eq!(
        (
            counts.total,
            counts.passed,
            counts.failed,
            counts.error,
            counts.skipped,
            counts.files
        ),
        (5, 2, 1, 1, 1, 1)
    );
    let page = c.tests(&job.job_id, None, None, 100).await.unwrap();
    assert_eq!(page.counts, Some(counts.clone()));
    let order: Vec<(&str, TestStatus)> = page
        .tests
        .iter()
        .map(|t| (t.name.as_str(), t.status))
        .collect();
    assert_eq!(
        order,
        [
            ("test_bad", TestStatus::Failed),
            ("test_err", TestStatus::Error),
            ("test_skip", TestStatus::Skipped),
            ("test_ok", TestStatus::Passed),
            ("test_flip", TestStatus::Passed),
        ]
    );
    let bad = &page.tests[0];
    assert_eq!(
        (bad.suite.as_str(), bad.classname.as_str(), bad.duration_ms),
        ("pytest", "tests.test_a", Some(250))
    );
    assert_eq!(
        bad.message.as_deref(),
        Some("assert 1 == 2\n\ndef test_bad():\n>       assert 1 == 2")
    );
    assert!(page.tests.iter().all(|t| !t.flaky), "one run is not flaky");
    let failed = c
        .tests(&job.job_id, Some(TestStatus::Failed), None, 100)
        .await
        .unwrap();
    assert_eq!(failed.tests.len(), 1);
    let paged = c.tests(&job.job_id, None, None, 2).await.unwrap();
    assert_eq!(paged.tests.len(), 2);
    let rest = c
        .tests(&job.job_id, None, paged.next_cursor.as_deref(), 100)
        .await
        .unwrap();
    assert_eq!(rest.tests[0].name, "test_skip");
    let record: serde_json::Value =
        serde_json::from_slice(&c.artifact(&job.job_id, "artifact.json").await.unwrap()).unwrap();
    assert_eq!(record["tests"]["failed"], 1);

    // The same commit again, where test_flip fails: it passed and failed there, so it is
    // flaky in both jobs' results; the test that failed both times is not.
    let again = run(&c, req("junit", true, &[("FLIP", "1")])).await;
    assert_eq!(again.sha, job.sha);
    for id in [&job.job_id, &again.job_id] {
        let page = c.tests(id, None, None, 100).await.unwrap();
        let flaky: Vec<&str> = page
            .tests
            .iter()
            .filter(|t| t.flaky)
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(flaky, ["test_flip"], "{id}");
    }

    // Reports found by a recursive glob, in path order.
    let job = run(&c, req("nested", false, &[])).await;
    let counts = job.tests.clone().unwrap();
    assert_eq!((counts.files, counts.total, counts.failed), (2, 2, 1));
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);

    // Nothing written: a warning, the job's status its own.
    let job = run(&c, req("none-written", false, &[])).await;
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(
        job.warnings,
        ["TEST_REPORT_MISSING: no file in the artifacts matches $ARTIFACT_DIR/junit.xml"]
    );
    assert_eq!(job.tests.as_ref().map(|c| c.total), Some(0));

    // The CLI: counts, then failures first.
    let out = Command::new(WARDEN)
        .args(["job", "tests", &again.job_id])
        .env_remove("WARDEN_CONFIG")
        .env("WARDEN_SERVER", &server.url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "5 tests: 1 passed, 2 failed, 1 errors, 1 skipped (1 report file)"
    );
    assert!(lines[2].starts_with("failed"), "{text}");
    assert!(
        text.contains("failed (flaky)  tests.test_b::test_flip"),
        "{text}"
    );
    // Garbage in the query is the caller's, with a message that says what to fix.
    let http = crate::support::http();
    for (query, status, fragment) in [
        (
            "status=broken",
            400,
            "status=\"broken\" is invalid; one of: passed, failed, error, skipped",
        ),
        ("limit=0", 400, "limit=\"0\" is invalid"),
        ("cursor=-1", 400, "cursor=\"-1\" is invalid"),
        ("colour=red", 400, "unknown query parameter \"colour\""),
    ] {
        let resp = http
            .get(format!(
                "{}/jobs/{}/tests?{query}",
                server.url, again.job_id
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{query}");
        let body: serde_json::Value = resp.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(body["error"]["code"], "invalid_query", "{query}");
        assert!(message.contains(fragment), "{query}: {message}");
    }
    let resp = http
        .get(format!(
            "{}/jobs/0193a1b2-0000-7000-8000-000000000001/tests",
            server.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let bad = Command::new(WARDEN)
        .args(["job", "tests", &again.job_id, "--status", "broken"])
        .env("WARDEN_SERVER", &server.url)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[tokio::test]
async fn hostile_reports_each_end_as_stated_and_the_job_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), &repo(dir.path())));
    let c = server.client();
    let refused = |why: &str| format!("TEST_REPORT_REFUSED: r.xml: {why}");
    for (kind, warning, counted) in [
        (
            "laughs",
            refused(
                "a <!DOCTYPE> is not accepted (warden never declares, expands or fetches entities)",
            ),
            0,
        ),
        (
            "external",
            refused(
                "a <!DOCTYPE> is not accepted (warden never declares, expands or fetches entities)",
            ),
            0,
        ),
        (
            "huge",
            refused("83886103 bytes is over the 67108864-byte cap"),
            0,
        ),
        (
            "many",
            "TEST_RESULTS_TRUNCATED: 1000000 test cases counted, 50000 kept as records".into(),
            1_000_000,
        ),
        ("deep", refused("elements nest deeper than 64"), 0),
    ] {
        let job = run(&c, req("hostile", false, &[("KIND", kind)])).await;
        assert_eq!(job.status, JobStatus::Succeeded, "{kind}: {job:?}");
        assert_eq!(job.warnings, [warning], "{kind}");
        assert_eq!(job.tests.as_ref().unwrap().total, counted, "{kind}");
        let page = c.tests(&job.job_id, None, None, 10_000).await.unwrap();
        assert_eq!(
            page.tests.len() as u64,
            counted.min(10_000),
            "{kind}: records"
        );
    }
    let job = run(&c, req("hostile", false, &[("KIND", "garbage")])).await;
    assert_eq!(job.warnings.len(), 1);
    assert!(
        job.warnings[0].starts_with("TEST_REPORT_REFUSED: r.xml: malformed XML at byte"),
        "{:?}",
        job.warnings
    );
}

/// Copies a directory tree without Python's bytecode caches.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "__pycache__" {
            continue;
        }
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&entry.path(), &to.join(&name));
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

#[tokio::test]
async fn a_real_projects_pytest_junit_counts_equal_pytests_own_summary() {
    // A real project's own test suite: lazr.uri and lazr.restfulclient as Debian ships them
    // (two of its test modules need packages this host lacks: pytest reports them as errors).
    let lazr = Path::new("/usr/lib/python3/dist-packages/lazr");
    assert!(
        lazr.is_dir(),
        "scripts/setup.sh installs python3-lazr.restfulclient"
    );
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("lazr-project");
    copy_tree(lazr, &repo.join("lazr"));
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "lazr as Debian ships it"]);
    let config = write_config_with(
        dir.path(),
        &format!(
            r#"repos:
  lazr: {{url: "{}"}}
job_types:
  pytest:
    argv: ["/usr/bin/python3", "-B", "-m", "pytest", "-p", "no:cacheprovider", "--continue-on-collection-errors", "lazr", "--junitxml=/artifacts/junit.xml"]
    requires_repo: true
    timeout_s: 120
    results: {{junit: ["$ARTIFACT_DIR/junit.xml"]}}
"#,
            repo.display()
        ),
    );
    let server = Server::start(&config);
    let c = server.client();
    let sub = c
        .submit(&SubmitJobRequest {
            job_type: "pytest".into(),
            repo_name: Some("lazr".into()),
            git_ref: Some("main".into()),
            ..SubmitJobRequest::default()
        })
        .await
        .unwrap();
    let job = wait_terminal(&c, &sub.job_id).await;
    let out =
        String::from_utf8_lossy(&c.logs_raw(&job.job_id, "stdout", 0).await.unwrap()).into_owned();
    // pytest's own last line: "48 passed, 2 errors in 0.13s" (words in any mix).
    let summary = out
        .lines()
        .last()
        .unwrap_or_default()
        .trim_matches('=')
        .trim();
    let mut said = std::collections::BTreeMap::new();
    let words: Vec<&str> = summary
        .split([' ', ','])
        .filter(|w| !w.is_empty())
        .collect();
    for pair in words.windows(2) {
        if let Ok(n) = pair[0].parse::<u64>() {
            let kind = pair[1].trim_end_matches('s');
            said.insert(
                if kind == "error" {
                    "error".to_string()
                } else {
                    kind.to_string()
                },
                n,
            );
        }
    }
    assert!(
        said.get("passed").copied().unwrap_or(0) > 10,
        "{summary:?}\n{out}"
    );
    let counts = job.tests.clone().expect("counts");
    let n = |k: &str| said.get(k).copied().unwrap_or(0);
    assert_eq!(
        (counts.passed, counts.failed, counts.error, counts.skipped),
        (n("passed"), n("failed"), n("error"), n("skipped")),
        "pytest said {summary:?}"
    );
    let page = c.tests(&job.job_id, None, None, 10_000).await.unwrap();
    assert_eq!(page.tests.len() as u64, counts.total);
    assert!(
        page.tests
            .iter()
            .any(|t| t.classname.starts_with("lazr.uri.tests"))
    );
    // What pytest could not import leads the list.
    if n("error") > 0 {
        assert_eq!(page.tests[0].status, TestStatus::Error);
    }
}

#[tokio::test]
async fn a_job_adds_warnings_and_outputs_but_never_its_own_status() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), &repo(dir.path())));
    let c = server.client();
    let artifact_json = |c: Client, id: String| async move {
        serde_json::from_slice::<serde_json::Value>(
            &c.artifact(&id, "artifact.json").await.unwrap(),
        )
        .unwrap()
    };

    let job = run(&c, req("says", false, &[("MODE", "good")])).await;
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(job.warnings, ["SLOW_MIRROR", "coverage fell 2%"]);
    let record = artifact_json(c.clone(), job.job_id.clone()).await;
    assert_eq!(
        record["outputs"],
        serde_json::json!({"coverage": 81.5, "report": {"path": "cov/index.html"}})
    );
    assert_eq!(
        record["warnings"],
        serde_json::json!(["SLOW_MIRROR", "coverage fell 2%"])
    );
    assert_eq!(record["files"], serde_json::json!(["warden-outputs.json"]));

    // A file that claims a status is refused whole; the job's exit decides.
    let job = run(&c, req("says", false, &[("MODE", "claims")])).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.exit_code, Some(3));
    assert_eq!(
        job.warnings,
        [
            "OUTPUTS_REFUSED: warden-outputs.json: unknown key \"status\": only \"warnings\" and \"outputs\""
        ]
    );
    let record = artifact_json(c.clone(), job.job_id.clone()).await;
    assert_eq!(record["outputs"], serde_json::json!({}));

    let job = run(&c, req("says", false, &[("MODE", "garbage")])).await;
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(job.warnings.len(), 1);
    assert!(
        job.warnings[0].starts_with("OUTPUTS_REFUSED: warden-outputs.json: not JSON: EOF"),
        "{:?}",
        job.warnings
    );
    let job = run(&c, req("says", false, &[("MODE", "link")])).await;
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(job.warnings.len(), 1, "{:?}", job.warnings);
    assert!(job.warnings[0].starts_with("OUTPUTS_REFUSED: warden-outputs.json: "));
    // No file: nothing said.
    let job = run(&c, req("says", false, &[("MODE", "none")])).await;
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);
}
