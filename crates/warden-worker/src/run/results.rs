//! A finished job's test reports (`results: {junit: [...]}`): found in its sealed artifact
//! directory by the job type's patterns, read by descriptor (regular files only, never through
//! a link), parsed by `junit.rs` within its caps. Nothing here changes how the job ended; what
//! could not be read is a warning on the record.

use std::io::Read;
use std::path::Path;

use warden_api::{TestCounts, TestResult};
use warden_core::config::Results;

use crate::artifact_dir;
use crate::junit::{Collector, MAX_FILE_BYTES};

/// What a job's reports held, and the warnings about those that could not be read.
#[derive(Debug, Default)]
pub(super) struct Collected {
    pub tests: Vec<TestResult>,
    pub counts: TestCounts,
    pub warnings: Vec<String>,
}

/// Most report files read per job.
const MAX_FILES: usize = 256;

/// Reads the reports the patterns name in `dir` (in path order).
pub(super) fn collect(dir: &Path, results: &Results) -> Collected {
    let mut out = Collected::default();
    let mut set = globset::GlobSetBuilder::new();
    for p in results.junit_patterns() {
        // Checked when the configuration was read.
        if let Ok(g) = globset::GlobBuilder::new(p).literal_separator(true).build() {
            set.add(g);
        }
    }
    let Ok(set) = set.build() else {
        return out;
    };
    let listing = artifact_dir::list(dir);
    let files: Vec<_> = listing
        .entries
        .iter()
        .filter(|e| e.kind == artifact_dir::EntryKind::File && set.is_match(&e.path))
        .map(|e| e.path.clone())
        .collect();
    if files.is_empty() {
        out.warnings.push(format!(
            "TEST_REPORT_MISSING: no file in the artifacts matches {}",
            results.junit.join(", ")
        ));
        return out;
    }
    let mut collector = Collector::default();
    for (i, rel) in files.iter().enumerate() {
        let shown = rel.display();
        if i == MAX_FILES {
            out.warnings.push(format!(
                "TEST_REPORT_REFUSED: only the first {MAX_FILES} of {} report files were read",
                files.len()
            ));
            break;
        }
        let read = artifact_dir::open_beneath(dir, rel)
            .map_err(|e| e.to_string())
            .and_then(|(file, size)| {
                if size > MAX_FILE_BYTES {
                    return Err(format!(
                        "{size} bytes is over the {MAX_FILE_BYTES}-byte cap"
                    ));
                }
                let mut bytes = Vec::with_capacity(size as usize);
                file.take(MAX_FILE_BYTES + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|e| e.to_string())?;
                collector.add_file(&bytes).map_err(|e| e.to_string())
            });
        if let Err(why) = read {
            out.warnings
                .push(format!("TEST_REPORT_REFUSED: {shown}: {why}"));
        }
    }
    if collector.counts.truncated {
        out.warnings.push(format!(
            "TEST_RESULTS_TRUNCATED: {} test cases counted, {} kept as records",
            collector.counts.total,
            collector.cases.len()
        ));
    }
    out.counts = collector.counts;
    out.tests = collector.cases;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(patterns: &[&str]) -> Results {
        Results {
            junit: patterns
                .iter()
                .map(|p| format!("$ARTIFACT_DIR/{p}"))
                .collect(),
        }
    }

    #[test]
    fn reports_are_found_by_pattern_and_bad_ones_are_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("reports/unit")).unwrap();
        std::fs::write(
            d.join("reports/unit/a.xml"),
            "<testsuite><testcase name='x'/><testcase name='y'><failure/></testcase></testsuite>",
        )
        .unwrap();
        std::fs::write(d.join("reports/b.xml"), "<!DOCTYPE x><testsuite/>").unwrap();
        std::fs::write(d.join("reports/notes.txt"), "not a report").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("reports/link.xml")).unwrap();
        let got = collect(d, &results(&["reports/**/*.xml"]));
        assert_eq!(
            (got.counts.total, got.counts.failed, got.counts.files),
            (2, 1, 1)
        );
        assert_eq!(got.tests[0].name, "x");
        assert_eq!(got.warnings.len(), 1, "{:?}", got.warnings);
        assert!(
            got.warnings[0].starts_with("TEST_REPORT_REFUSED: reports/b.xml: a <!DOCTYPE>"),
            "{:?}",
            got.warnings
        );
        // `*` stays within a directory.
        let got = collect(d, &results(&["reports/*.xml"]));
        assert_eq!(got.counts.files, 0);
        let got = collect(d, &results(&["junit.xml"]));
        assert_eq!(
            got.warnings,
            ["TEST_REPORT_MISSING: no file in the artifacts matches $ARTIFACT_DIR/junit.xml"]
        );
    }
}
