//! Job parameters: the only way a caller influences a job. They reach the job as environment
//! variables (never argv), and only the names its job type declares are accepted.

use std::collections::BTreeMap;

/// Longest accepted parameter value, in bytes.
pub const MAX_PARAM_VALUE_BYTES: usize = 4096;

/// Environment names warden sets itself; a job type may not declare them as params.
pub const RESERVED_NAMES: &[&str] = &["ARTIFACT_DIR", "HOME", "TMPDIR", "PATH"];

/// Prefixes warden sets itself: `WARDEN_JOB_ID`, `WARDEN_ATTEMPT`, `WARDEN_SHA`, `WARDEN_REPO`,
/// and the `GIT_CONFIG_*` entries that make the job's git trust its read-only worktree.
pub const RESERVED_PREFIXES: &[&str] = &["WARDEN_", "GIT_CONFIG_"];

/// Whether warden sets this variable for every job (so a param may not).
pub fn is_reserved(name: &str) -> bool {
    RESERVED_NAMES.contains(&name) || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("param name {0:?} is invalid: names match ^[A-Z][A-Z0-9_]{{0,63}}$")]
    InvalidName(String),
    #[error("param {name:?} is not allowed for job type {job_type:?} (allowed: {allowed})")]
    Unknown {
        name: String,
        job_type: String,
        allowed: String,
    },
    #[error("param {0:?} contains a NUL byte")]
    Nul(String),
    #[error("param {name:?} is {len} bytes long; the limit is {MAX_PARAM_VALUE_BYTES}")]
    TooLong { name: String, len: usize },
}

/// `^[A-Z][A-Z0-9_]{0,63}$`, written out so the domain crate needs no regex engine.
pub fn is_valid_param_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_uppercase()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
}

/// Checks every param of a submission against its job type.
pub fn validate_params(
    job_type_name: &str,
    allowed_params: &[String],
    params: &BTreeMap<String, String>,
) -> Result<(), ParamError> {
    for (name, value) in params {
        if !is_valid_param_name(name) {
            return Err(ParamError::InvalidName(name.chars().take(80).collect()));
        }
        if !allowed_params.iter().any(|p| p == name) {
            let allowed = if allowed_params.is_empty() {
                "none".to_string()
            } else {
                allowed_params.join(", ")
            };
            return Err(ParamError::Unknown {
                name: name.clone(),
                job_type: job_type_name.to_string(),
                allowed,
            });
        }
        if value.contains('\0') {
            return Err(ParamError::Nul(name.clone()));
        }
        if value.len() > MAX_PARAM_VALUE_BYTES {
            return Err(ParamError::TooLong {
                name: name.clone(),
                len: value.len(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn check(name: &str, value: &str, expected: Result<(), &str>) {
        let config = Config::from_yaml_str(
            "job_types:\n  t:\n    argv: [/bin/true]\n    timeout_s: 5\n    allowed_params: [FOO, B_2]\n",
            "test.yaml",
        )
        .unwrap();
        let params = BTreeMap::from([(name.to_string(), value.to_string())]);
        let got = validate_params("t", &config.job_types["t"].allowed_params, &params);
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(fragment)) => {
                assert!(e.to_string().contains(fragment), "{e} lacks {fragment:?}")
            }
            (got, expected) => panic!("{name}={value:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn param_table() {
        check("FOO", "bar", Ok(()));
        check("B_2", "", Ok(()));
        check("FOO", &"x".repeat(4096), Ok(()));
        check("FOO", &"x".repeat(4097), Err("4097 bytes long"));
        check("FOO", "a\0b", Err("NUL"));
        check("foo", "x", Err("invalid"));
        check("1FOO", "x", Err("invalid"));
        check("FO-O", "x", Err("invalid"));
        check(&"A".repeat(65), "x", Err("invalid"));
        check(
            "BAR",
            "x",
            Err("not allowed for job type \"t\" (allowed: FOO, B_2)"),
        );
        check("", "x", Err("invalid"));
    }

    #[test]
    fn name_rule() {
        assert!(is_valid_param_name("A"));
        assert!(is_valid_param_name(&format!("A{}", "_".repeat(63))));
        assert!(!is_valid_param_name(&format!("A{}", "_".repeat(64))));
        assert!(!is_valid_param_name("Ä"));
    }
}
