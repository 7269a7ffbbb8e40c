//! Tool-spec bundles: warden's tools as OpenAI-compatible function specs, for agents that take
//! tools as JSON rather than over MCP. One function per job type (`run_<type>`, its params as a
//! JSON Schema) and the MCP server's control tools. A bundle is deterministic — the same job
//! types and version give the same bytes (keys sorted, tools in a fixed order) — so its
//! SHA-256 names it (`warden tools bundle` puts the hash in the file name).

use serde_json::{Value, json};
use warden_api::JobTypeView;

/// The bundle format's name and version, in every bundle.
pub const FORMAT: &str = "warden.tool-bundle/v1";

/// A bundle version: what the operator calls this set of tools.
pub fn check_version(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "version {v:?}: 1-64 of A-Z a-z 0-9 . _ - (it goes in the file name)"
        ))
    }
}

/// The function name of a job type: `run_` and its name with `.` as `_` (function names are
/// `^[a-zA-Z0-9_-]{1,64}$`).
fn function_name(job_type: &str) -> String {
    format!("run_{}", job_type.replace('.', "_"))
}

fn function(name: &str, description: &str, parameters: Value) -> Value {
    json!({
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    })
}

/// The bundle's bytes: pretty JSON with sorted keys and a final newline.
pub fn build(version: &str, job_types: &[JobTypeView]) -> Result<Vec<u8>, String> {
    check_version(version)?;
    let mut tools: Vec<Value> = super::tools::all()
        .into_iter()
        .map(|t| {
            function(
                &t.name,
                t.description.as_deref().unwrap_or_default(),
                Value::Object((*t.input_schema).clone()),
            )
        })
        .collect();
    let mut types: Vec<&JobTypeView> = job_types.iter().collect();
    types.sort_by(|a, b| a.name.cmp(&b.name));
    let mut names = serde_json::Map::new();
    for t in types {
        let name = function_name(&t.name);
        if name.len() > 64 {
            return Err(format!(
                "job type {:?}: its function name {name:?} is over 64 characters",
                t.name
            ));
        }
        if let Some(other) = names.insert(name.clone(), json!(t.name)) {
            return Err(format!(
                "job types {other} and {:?} both become function {name:?}",
                t.name
            ));
        }
        let params: serde_json::Map<String, Value> = t
            .allowed_params
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    json!({"type": "string", "maxLength": warden_core::params::MAX_PARAM_VALUE_BYTES}),
                )
            })
            .collect();
        let mut properties = json!({
            "params": {
                "type": "object",
                "description": "The job type's params: string values, passed to the job as environment variables.",
                "properties": params,
                "additionalProperties": false,
            },
        });
        let mut required = Vec::new();
        if t.requires_repo {
            properties["repo"] =
                json!({"type": "string", "description": "The repository's configured name."});
            properties["sha"] = json!({"type": "string", "description": "A full 40-hex commit id (give sha or ref)."});
            properties["ref"] = json!({"type": "string", "description": "A branch or tag, resolved to a commit at submission."});
            required.push("repo");
        }
        let what = if t.stages.is_empty() {
            format!("`{}`", t.argv.join(" "))
        } else {
            format!("the stages {}", t.stages.join(", "))
        };
        let description = format!(
            "Run the warden job type `{}` ({what}; at most {} s){}: submits one job and returns \
             its id; then call wait_job. It runs in a sandbox against a read-only checkout and \
             can never modify, commit to or push the repository.",
            t.name,
            t.timeout_s,
            if t.requires_repo {
                ", on a repository at a commit"
            } else {
                ""
            }
        );
        tools.push(function(
            &name,
            &description,
            json!({
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": false,
            }),
        ));
    }
    let bundle = json!({
        "format": FORMAT,
        "version": version,
        "tools": tools,
        "job_types": names,
    });
    let mut bytes = serde_json::to_vec_pretty(&bundle).map_err(|e| e.to_string())?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The hex SHA-256 of a bundle's bytes: its name.
pub use warden_worker::tool_bundles::digest;

#[cfg(test)]
mod tests {
    use super::*;

    fn job_type(name: &str, repo: bool, params: &[&str]) -> JobTypeView {
        JobTypeView {
            name: name.into(),
            argv: vec!["/usr/bin/python3".into(), "-m".into(), "pytest".into()],
            stages: vec![],
            timeout_s: 600,
            requires_repo: repo,
            allowed_params: params.iter().map(|p| p.to_string()).collect(),
            network: false,
            egress: vec![],
        }
    }

    #[test]
    fn a_bundle_is_the_same_bytes_for_the_same_input_in_any_order() {
        let a = job_type("pytest", true, &["PYTEST_ARGS"]);
        let b = job_type("lint.ruff", false, &[]);
        let one = build("1.0", &[a.clone(), b.clone()]).unwrap();
        let two = build("1.0", &[b, a.clone()]).unwrap();
        assert_eq!(one, two);
        assert_eq!(digest(&one), digest(&two));
        assert_ne!(one, build("1.1", &[a]).unwrap(), "the version is in it");

        let v: Value = serde_json::from_slice(&one).unwrap();
        assert_eq!(v["format"], FORMAT);
        let names: Vec<&str> = v["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap())
            .collect();
        let mut want: Vec<&str> = super::super::tools::TOOL_NAMES.to_vec();
        want.extend(["run_lint_ruff", "run_pytest"]);
        assert_eq!(names, want);
        let run = &v["tools"][names.len() - 1]["function"];
        assert_eq!(run["parameters"]["required"], json!(["repo"]));
        assert_eq!(
            run["parameters"]["properties"]["params"]["properties"]["PYTEST_ARGS"]["type"],
            "string"
        );
        assert!(
            run["description"]
                .as_str()
                .unwrap()
                .contains("never modify")
        );
        assert_eq!(v["job_types"]["run_lint_ruff"], "lint.ruff");
    }

    #[test]
    fn names_that_collide_or_run_long_and_bad_versions_are_refused() {
        let e = build(
            "1",
            &[job_type("a.b", false, &[]), job_type("a_b", false, &[])],
        )
        .unwrap_err();
        assert!(e.contains("both become function \"run_a_b\""), "{e}");
        let long = "x".repeat(64);
        assert!(build("1", &[job_type(&long, false, &[])]).is_err());
        for bad in ["", "1/2", "v 1", &"9".repeat(65)] {
            assert!(build(bad, &[]).is_err(), "{bad:?}");
        }
    }
}
