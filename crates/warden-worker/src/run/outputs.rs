//! `warden-outputs.json`: what a job says about itself — warnings for the record, and outputs
//! (any JSON object) for `artifact.json` — read after the job, by descriptor, within caps, and
//! checked against its schema. It never changes how the job ended; a file that breaks a rule
//! is itself a warning.

use std::io::Read;
use std::path::Path;

use crate::artifact_dir;

/// The file's name in the job's artifacts.
pub(crate) const FILE: &str = "warden-outputs.json";
/// Largest file read.
pub(crate) const MAX_BYTES: u64 = 256 << 10;
/// Most warnings a job may add, and the longest.
pub(crate) const MAX_WARNINGS: usize = 64;
pub(crate) const MAX_WARNING_CHARS: usize = 512;
/// Deepest nesting of `outputs`.
pub(crate) const MAX_DEPTH: usize = 16;

/// What the job said, or nothing (no file), and why what it said was refused.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct JobSaid {
    pub warnings: Vec<String>,
    pub outputs: serde_json::Map<String, serde_json::Value>,
    /// `OUTPUTS_REFUSED: …` when the file broke a rule (then nothing else is taken from it).
    pub refused: Option<String>,
}

/// Reads `warden-outputs.json` from the job's artifact directory, if the job wrote one.
pub(crate) fn read(dir: &Path) -> JobSaid {
    let (file, size) = match artifact_dir::open_beneath(dir, Path::new(FILE)) {
        Ok(f) => f,
        Err(artifact_dir::ArtifactError::NotFound(_)) => return JobSaid::default(),
        Err(e) => return refused(e.to_string()),
    };
    if size > MAX_BYTES {
        return refused(format!("{size} bytes is over the {MAX_BYTES}-byte cap"));
    }
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_BYTES + 1).read_to_end(&mut bytes) {
        return refused(e.to_string());
    }
    parse(&bytes)
}

fn refused(why: String) -> JobSaid {
    JobSaid {
        refused: Some(format!("OUTPUTS_REFUSED: {FILE}: {why}")),
        ..JobSaid::default()
    }
}

/// Checks the file against its schema: `{"warnings": [string], "outputs": {…}}`, both
/// optional, nothing else.
pub(crate) fn parse(bytes: &[u8]) -> JobSaid {
    if bytes.len() as u64 > MAX_BYTES {
        return refused(format!(
            "{} bytes is over the {MAX_BYTES}-byte cap",
            bytes.len()
        ));
    }
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return refused(format!("not JSON: {e}")),
    };
    let serde_json::Value::Object(mut top) = value else {
        return refused("must be a JSON object".into());
    };
    if let Some(key) = top.keys().find(|k| *k != "warnings" && *k != "outputs") {
        return refused(format!(
            "unknown key {key:?}: only \"warnings\" and \"outputs\""
        ));
    }
    let mut said = JobSaid::default();
    match top.remove("warnings") {
        None => {}
        Some(serde_json::Value::Array(items)) => {
            if items.len() > MAX_WARNINGS {
                return refused(format!("{} warnings: at most {MAX_WARNINGS}", items.len()));
            }
            for (i, w) in items.into_iter().enumerate() {
                let serde_json::Value::String(w) = w else {
                    return refused(format!("warnings[{i}] must be a string"));
                };
                if w.is_empty() || w.chars().count() > MAX_WARNING_CHARS {
                    return refused(format!(
                        "warnings[{i}] must be 1 to {MAX_WARNING_CHARS} characters"
                    ));
                }
                if w.chars().any(char::is_control) {
                    return refused(format!("warnings[{i}] holds a control character"));
                }
                said.warnings.push(w);
            }
        }
        Some(_) => return refused("\"warnings\" must be an array of strings".into()),
    }
    match top.remove("outputs") {
        None => {}
        Some(serde_json::Value::Object(map)) => {
            let value = serde_json::Value::Object(map);
            if depth(&value) > MAX_DEPTH {
                return refused(format!("\"outputs\" nests deeper than {MAX_DEPTH}"));
            }
            let serde_json::Value::Object(map) = value else {
                unreachable!("matched as an object above")
            };
            said.outputs = map;
        }
        Some(_) => return refused("\"outputs\" must be an object".into()),
    }
    said
}

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// What any input must give (the fuzz target's and the garbage test's property): no panic; a
/// refused file gives nothing else; an accepted one keeps every cap.
pub(crate) fn check_properties(bytes: &[u8]) {
    let said = parse(bytes);
    if said.refused.is_some() {
        assert!(said.warnings.is_empty() && said.outputs.is_empty());
        return;
    }
    assert!(said.warnings.len() <= MAX_WARNINGS);
    for w in &said.warnings {
        assert!(!w.is_empty() && w.chars().count() <= MAX_WARNING_CHARS);
        assert!(!w.chars().any(char::is_control));
    }
    assert!(depth(&serde_json::Value::Object(said.outputs)) <= MAX_DEPTH);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_never_panics_and_keeps_the_caps() {
        let alphabet = br#"{}[]":,warningsoutputs 0123\u001b"#;
        for doc in crate::garbage(alphabet, 200, 3000) {
            check_properties(&doc);
        }
        check_properties(br#"{"warnings": ["a"], "outputs": {"b": [[[1]]]}}"#);
    }

    fn refusal(text: &str) -> String {
        parse(text.as_bytes()).refused.unwrap_or_default()
    }

    #[test]
    fn the_schema_is_held_and_a_bad_file_is_one_warning() {
        let ok = parse(br#"{"warnings": ["SIZE_CAP_EXCEEDED", "slow mirror"], "outputs": {"coverage": 81.5, "report": {"path": "cov/index.html"}}}"#);
        assert_eq!(ok.refused, None);
        assert_eq!(ok.warnings, ["SIZE_CAP_EXCEEDED", "slow mirror"]);
        assert_eq!(ok.outputs["coverage"], 81.5);
        assert_eq!(parse(b"{}"), JobSaid::default());
        for (text, why) in [
            ("", "not JSON"),
            ("[1]", "must be a JSON object"),
            (r#"{"status": "succeeded"}"#, "unknown key \"status\""),
            (
                r#"{"warnings": "x"}"#,
                "\"warnings\" must be an array of strings",
            ),
            (r#"{"warnings": [1]}"#, "warnings[0] must be a string"),
            (
                r#"{"warnings": [""]}"#,
                "warnings[0] must be 1 to 512 characters",
            ),
            (
                r#"{"warnings": ["a\u001b[2J"]}"#,
                "warnings[0] holds a control character",
            ),
            (r#"{"outputs": [1]}"#, "\"outputs\" must be an object"),
        ] {
            let got = refusal(text);
            assert!(
                got.starts_with("OUTPUTS_REFUSED: warden-outputs.json: "),
                "{text}: {got}"
            );
            assert!(got.contains(why), "{text}: {got}");
        }
        let many = format!(r#"{{"warnings": [{}]}}"#, vec!["\"w\""; 65].join(","));
        assert!(refusal(&many).contains("65 warnings: at most 64"));
        let deep = format!(
            r#"{{"outputs": {}{}}}"#,
            "{\"a\":".repeat(17) + "1",
            "}".repeat(17)
        );
        assert!(
            refusal(&deep).contains("nests deeper than 16"),
            "{}",
            refusal(&deep)
        );
        let big = format!(r#"{{"outputs": {{"x": "{}"}}}}"#, "y".repeat(300 << 10));
        assert!(refusal(&big).contains("over the 262144-byte cap"));
    }

    #[test]
    fn the_file_is_read_by_descriptor_and_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            read(dir.path()),
            JobSaid::default(),
            "no file, nothing said"
        );
        std::fs::write(dir.path().join(FILE), r#"{"warnings": ["w"]}"#).unwrap();
        assert_eq!(read(dir.path()).warnings, ["w"]);
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join(FILE)).unwrap();
        let said = read(dir.path());
        assert!(said.refused.is_some(), "{said:?}");
        assert!(said.warnings.is_empty());
    }
}
