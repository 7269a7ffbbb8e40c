//! What a job type runs as a pipeline and what it reports: `stages:` (checked stage by stage)
//! and `results:` (where its JUnit reports are). See docs/pipelines.md.

use serde::Deserialize;

use super::job_type::is_valid_label;
use super::positive::Positive;
use crate::params::{is_reserved, is_valid_param_name};

/// One stage of a staged job type.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: String,
    /// Its program; empty for the stage that runs the job type's suites (`suites: true`).
    #[serde(default)]
    pub argv: Vec<String>,
    /// Runs the job type's test suites (warden's suite runner) instead of an argv.
    #[serde(default)]
    pub suites: bool,
    /// The stage's own time limit, within the job's `timeout_s`.
    #[serde(default)]
    pub timeout_s: Option<Positive>,
    /// Variables added to the job's environment for this stage only.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Runs even after an earlier stage failed (a `collect` stage); its own failure is
    /// reported too.
    #[serde(default)]
    pub always: bool,
}

/// Where a job type's test reports are: JUnit XML files in its artifacts.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Results {
    /// Paths (globs allowed: `*`, `?`, `[…]`, `**`) written `$ARTIFACT_DIR/…`.
    #[serde(default)]
    pub junit: Vec<String>,
}

/// Most report patterns a job type may name.
pub const MAX_RESULT_PATTERNS: usize = 16;

impl Results {
    /// Each pattern relative to the artifact directory (`$ARTIFACT_DIR/` taken off).
    pub fn junit_patterns(&self) -> impl Iterator<Item = &str> {
        self.junit
            .iter()
            .map(|p| p.strip_prefix(ARTIFACT_DIR_PREFIX).unwrap_or(p))
    }

    pub(super) fn check(&self) -> Result<(), String> {
        if self.junit.len() > MAX_RESULT_PATTERNS {
            return Err(format!(
                "results.junit lists {} patterns: at most {MAX_RESULT_PATTERNS}",
                self.junit.len()
            ));
        }
        for (i, p) in self.junit.iter().enumerate() {
            let Some(rel) = p.strip_prefix(ARTIFACT_DIR_PREFIX) else {
                return Err(format!(
                    "results.junit[{i}] {p:?} must start with $ARTIFACT_DIR/: warden reads \
                     reports only from the job's artifacts"
                ));
            };
            if rel.is_empty()
                || rel.starts_with('/')
                || rel.split('/').any(|c| c == ".." || c == ".")
                || rel.chars().any(char::is_control)
            {
                return Err(format!(
                    "results.junit[{i}] {p:?} must name a path inside the artifacts (no '..', \
                     '.', '//' or control characters)"
                ));
            }
            if let Err(e) = globset::Glob::new(rel) {
                return Err(format!("results.junit[{i}] {p:?} is not a valid glob: {e}"));
            }
        }
        Ok(())
    }
}

/// How a report path is written: inside the job's artifacts.
pub const ARTIFACT_DIR_PREFIX: &str = "$ARTIFACT_DIR/";

/// Most stages a job type may have.
pub const MAX_STAGES: usize = 64;

/// Checks a job type's `stages:` (names, argv, env), given its caller-set params.
pub(super) fn check_stages(
    stages: &[Stage],
    allowed_params: &[String],
    timeout_s: u64,
) -> Result<(), String> {
    if stages.len() > MAX_STAGES {
        return Err(format!(
            "stages lists {} stages: at most {MAX_STAGES}",
            stages.len()
        ));
    }
    for (i, st) in stages.iter().enumerate() {
        if !is_valid_label(&st.name) {
            return Err(format!(
                "stages[{i}].name {:?} is invalid: names match ^[a-z0-9][a-z0-9_.-]{{0,63}}$",
                st.name
            ));
        }
        if stages[..i].iter().any(|o| o.name == st.name) {
            return Err(format!("stages lists the name {:?} twice", st.name));
        }
        if st.suites {
            if !st.argv.is_empty() {
                return Err(format!(
                    "stages[{i}] ({}): a suites stage runs warden's suite runner: remove its argv",
                    st.name
                ));
            }
        } else if st.argv.first().is_none_or(String::is_empty) {
            return Err(format!(
                "stages[{i}] ({}): argv must name a program: it is empty",
                st.name
            ));
        }
        if st.argv.iter().any(|a| a.contains('\0')) {
            return Err(format!(
                "stages[{i}] ({}): argv must not contain NUL bytes",
                st.name
            ));
        }
        if let Some(t) = st.timeout_s
            && t.get() > timeout_s
        {
            return Err(format!(
                "stages[{i}] ({}): timeout_s {} is longer than the job type's timeout_s {timeout_s}",
                st.name,
                t.get()
            ));
        }
        for (var, value) in &st.env {
            if !is_valid_param_name(var) || is_reserved(var) {
                return Err(format!(
                    "stages[{i}] ({}): env variable {var:?} must match ^[A-Z][A-Z0-9_]{{0,63}}$ \
                     and not be one warden sets",
                    st.name
                ));
            }
            if allowed_params.contains(var) {
                return Err(format!(
                    "stages[{i}] ({}): env variable {var:?} is also an allowed param: say which \
                     one the stage gets by removing one",
                    st.name
                ));
            }
            if value.contains('\0') {
                return Err(format!(
                    "stages[{i}] ({}): env variable {var:?} contains a NUL byte",
                    st.name
                ));
            }
        }
    }
    Ok(())
}

/// What a job type runs: its own program (`argv` or `stages`), or one of warden's built-in kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    #[default]
    Command,
    /// A bounded diff bundle of a repository between `SINCE_SHA` and the job's commit, made by
    /// warden's own program inside the sandbox (see docs/pipelines.md).
    ReviewBundle,
}

/// The params a review bundle takes: the base commit (required), the size cap in KiB, and
/// `FORCE_SIZE_CAP=1` to take the per-file fallback whatever the size.
pub const REVIEW_PARAMS: [&str; 3] = ["SINCE_SHA", "SIZE_CAP_KB", "FORCE_SIZE_CAP"];
/// A review bundle's size cap when neither the job type nor the job says.
pub const DEFAULT_SIZE_CAP_KB: u64 = 256;
/// The largest size cap a review bundle may have.
pub const MAX_SIZE_CAP_KB: u64 = 1 << 20;

/// Checks a review bundle's params at submission: `SINCE_SHA` a full commit id, `SIZE_CAP_KB`
/// a whole number of KiB, `FORCE_SIZE_CAP` 0 or 1.
pub fn check_review_params(
    params: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    match params.get("SINCE_SHA") {
        None => return Err("a review bundle needs the param SINCE_SHA (the base commit)".into()),
        Some(s) if !crate::repo::is_full_sha(s) => {
            return Err(format!(
                "SINCE_SHA {s:?} must be a full commit id (40 or 64 lowercase hex digits)"
            ));
        }
        Some(_) => {}
    }
    if let Some(cap) = params.get("SIZE_CAP_KB")
        && !cap
            .parse::<u64>()
            .is_ok_and(|c| (1..=MAX_SIZE_CAP_KB).contains(&c))
    {
        return Err(format!(
            "SIZE_CAP_KB {cap:?} must be a whole number of KiB from 1 to {MAX_SIZE_CAP_KB}"
        ));
    }
    if let Some(f) = params.get("FORCE_SIZE_CAP")
        && f != "0"
        && f != "1"
    {
        return Err(format!("FORCE_SIZE_CAP {f:?} must be 0 or 1"));
    }
    Ok(())
}

/// A job type's test suites: `<dir>/<name>/suite.yaml` in the job's repository.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuitesConfig {
    /// Relative to the repository's root.
    pub dir: String,
    /// Each suite's time when it does not say (and the job's `SUITE_TIMEOUT_SEC` does not).
    #[serde(default)]
    pub timeout_s: Option<Positive>,
}

/// The params a suites job takes: one suite by name, and the default suite timeout.
pub const SUITE_PARAMS: [&str; 2] = ["TEST_FILTER", "SUITE_TIMEOUT_SEC"];

impl SuitesConfig {
    pub(super) fn check(&self) -> Result<(), String> {
        let d = std::path::Path::new(&self.dir);
        if self.dir.is_empty()
            || d.is_absolute()
            || d.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            || self.dir.chars().any(char::is_control)
        {
            return Err(format!(
                "suites.dir {:?} must be a path inside the repository (relative, without '..')",
                self.dir
            ));
        }
        Ok(())
    }
}
