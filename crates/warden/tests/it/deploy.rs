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
