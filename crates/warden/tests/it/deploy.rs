//! Every warden configuration deploy/ ships (install.sh's, the image's default, compose's, the
//! Kubernetes ConfigMap's) is a valid configuration; the systemd units name the installed paths.

use std::path::{Path, PathBuf};

use serde::Deserialize;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn check(name: &str, text: &str) {
    if let Err(e) = warden_core::Config::from_yaml_str(text, name) {
        panic!("{e}");
    }
}

#[test]
fn every_shipped_configuration_is_valid() {
    let mut checked = Vec::new();
    for f in [
        "systemd/warden.yaml",
        "systemd/worker.yaml",
        "image/warden.yaml",
        "compose/control.yaml",
        "compose/worker.yaml",
    ] {
        check(f, &std::fs::read_to_string(deploy().join(f)).unwrap());
        checked.push(f.to_string());
    }
    let k8s = std::fs::read_to_string(deploy().join("k8s/config.yaml")).unwrap();
    for doc in serde_norway::Deserializer::from_str(&k8s) {
        let v = serde_norway::Value::deserialize(doc).unwrap();
        if v["kind"] != "ConfigMap" {
            continue;
        }
        for (key, text) in v["data"].as_mapping().unwrap() {
            let key = key.as_str().unwrap();
            check(&format!("k8s/config.yaml: {key}"), text.as_str().unwrap());
            checked.push(key.to_string());
        }
    }
    assert_eq!(checked.len(), 8, "{checked:?}");
}

#[test]
fn the_systemd_units_run_what_install_sh_installs() {
    let install = std::fs::read_to_string(deploy().join("install.sh")).unwrap();
    for (unit, config) in [
        ("warden.service", "/etc/warden/warden.yaml"),
        ("warden-worker.service", "/etc/warden/worker.yaml"),
    ] {
        let text = std::fs::read_to_string(deploy().join("systemd").join(unit)).unwrap();
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{unit} has no ExecStart"));
        assert!(exec.starts_with("/usr/local/bin/warden "), "{unit}: {exec}");
        assert!(exec.contains(config), "{unit}: {exec}");
        assert!(install.contains(config), "install.sh never writes {config}");
        for needed in ["Delegate=yes", "User=warden", "NoNewPrivileges=yes"] {
            assert!(text.lines().any(|l| l == needed), "{unit} lacks {needed}");
        }
    }
}

/// A bucket is for replicas with remote workers: the embedded server refuses it at start, and
/// a bucket URL or endpoint that cannot be right is a configuration error with its place.
#[test]
fn artifact_store_is_refused_where_it_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |body: &str| {
        let config = crate::support::write_config_with(dir.path(), body);
        let out = std::process::Command::new(crate::support::WARDEN)
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("WARDEN_DATABASE_URL")
            .env("WARDEN_TEST_S3", "some-secret-value")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let secrets = "secrets: {K: {env: WARDEN_TEST_S3}, S: {env: WARDEN_TEST_S3}}\n";
    let store = |url: &str, endpoint: &str| {
        format!(
            "{secrets}artifact_store: {{url: {url}, endpoint: {endpoint}, access_key_id_secret: K, secret_access_key_secret: S}}\n"
        )
    };
    let (code, err) = serve(&store("s3://bkt/p", "http://127.0.0.1:9"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--database-url"), "{err}");
    for (url, endpoint, want) in [
        ("s3://B", "http://127.0.0.1:9", "is not a bucket name"),
        ("gs://bkt", "http://127.0.0.1:9", "only s3://"),
        ("s3://bkt", "http://storage.example", "only on loopback"),
    ] {
        let (code, err) = serve(&store(url, endpoint));
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(want), "{url} {endpoint}: {err}");
    }
}
