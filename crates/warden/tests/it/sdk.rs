//! The client SDKs against a live warden: the Python package's own pytest suite
//! (`sdk/python/tests`), run with Debian's python3 and the package from its source tree.

use std::path::Path;
use std::process::Command;

use crate::mcp::agent_server;

const SDK_TYPES: &str = r#"  chatty:
    argv: ["/bin/sh", "-c", "i=1; while [ $i -le $LINES ]; do echo \"line $i\"; i=$((i+1)); sleep 0.1; done"]
    allowed_params: [LINES]
    timeout_s: 60
  sleeper:
    argv: ["/bin/sleep", "1000"]
    timeout_s: 600
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_passes_its_suite_against_a_live_server() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _token_file, token, _good, bad) = agent_server(dir.path(), SDK_TYPES).await;
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/python");
    let out = Command::new("/usr/bin/python3")
        .args(["-B", "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE"])
        .arg(sdk.join("tests"))
        .env("PYTHONPATH", sdk.join("src"))
        .env("WARDEN_URL", &server.url)
        .env("WARDEN_TOKEN", &token)
        .env("WARDEN_TEST_SHA", &bad)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every test ran and passed: none skipped, none deselected.
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.starts_with("9 passed"), "{summary:?}\n{stdout}");
}

fn sdk_ts() -> std::path::PathBuf {
    let ts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/ts");
    assert!(
        ts.join("node_modules/.bin/tsc").exists(),
        "sdk/ts/node_modules is missing: run scripts/setup.sh (it installs the TypeScript SDK's \
         packages under target/sdk-ts)"
    );
    ts
}

/// The TypeScript client, type-checked and built with its generated code, runs its Node test
/// over gRPC: a job submitted and followed live to its end, a repository job at a commit, and
/// warden's error codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_submits_and_follows_over_grpc() {
    let ts = sdk_ts();
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("dist");
    let built = Command::new(ts.join("node_modules/.bin/tsc"))
        .args(["-p", "tsconfig.json", "--outDir"])
        .arg(&out_dir)
        .current_dir(&ts)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "tsc: {}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let (server, _token_file, token, _good, bad) = agent_server(dir.path(), SDK_TYPES).await;
    let grpc = server.grpc.trim_start_matches("http://").to_string();
    let out = Command::new("node")
        .arg("--test")
        .arg(out_dir.join("test/e2e.test.js"))
        .env("NODE_PATH", ts.join("node_modules"))
        .env("WARDEN_GRPC", &grpc)
        .env("WARDEN_TOKEN", &token)
        .env("WARDEN_TEST_SHA", &bad)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("# pass 2"), "{stdout}");
    assert!(stdout.contains("# fail 0"), "{stdout}");
}

/// `sdk/ts/src/gen` is what ts-proto makes of `proto/` today: regenerated into a scratch
/// directory, byte for byte the checked-in files (after a .proto change: `npm run generate`).
#[test]
fn the_checked_in_typescript_is_generated_from_the_current_protos() {
    let ts = sdk_ts();
    let dir = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        ts.join("node_modules/.bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(ts.join("node_modules/.bin/buf"))
        .args([
            "generate",
            "../../proto",
            "--template",
            "buf.gen.yaml",
            "-o",
        ])
        .arg(dir.path())
        .current_dir(&ts)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "buf generate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("src/gen/warden/v1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let names = list(dir.path());
    assert_eq!(
        names,
        list(&ts),
        "every generated file is checked in, and no other"
    );
    assert!(names.contains(&"jobs.ts".to_string()), "{names:?}");
    for name in names {
        let rel = Path::new("src/gen/warden/v1").join(name);
        let fresh = std::fs::read_to_string(dir.path().join(&rel)).unwrap();
        let checked_in = std::fs::read_to_string(ts.join(&rel)).unwrap();
        assert!(
            fresh == checked_in,
            "{} is stale: run `npm run generate` in sdk/ts",
            rel.display()
        );
    }
}
