//! JUnit XML reports a job leaves in its artifacts, read defensively into per-test records.
//!
//! The file is the job's: anything may be in it. It is read only within caps (its size, the
//! nesting depth, the records kept, each name and message, all messages together); a
//! `<!DOCTYPE>` is refused outright, so no entity is ever declared, expanded or fetched (the
//! five predefined ones and character references are all XML has without one); the text must
//! be UTF-8. A file that breaks a rule adds nothing; the others still count.

use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};
use warden_api::{TestCounts, TestResult, TestStatus};

/// Largest report file read; a larger one is refused unread.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Test cases kept as records per job (all are counted).
pub const MAX_RECORDS: usize = 50_000;
/// Longest suite, class or test name kept (longer ones are cut).
pub const MAX_NAME: usize = 1024;
/// Longest failure, error or skip message kept.
pub const MAX_MESSAGE: usize = 4096;
/// All messages of one job together.
pub const MAX_MESSAGES_TOTAL: usize = 8 << 20;
/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 64;

/// Why a report file added nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JunitError {
    #[error("{size} bytes is over the {MAX_FILE_BYTES}-byte cap")]
    TooLarge { size: u64 },
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error("a <!DOCTYPE> is not accepted (warden never declares, expands or fetches entities)")]
    Doctype,
    #[error("elements nest deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("malformed XML at byte {at}: {why}")]
    Xml { at: u64, why: String },
}

/// The test cases of every report file of one job.
#[derive(Debug, Default)]
pub struct Collector {
    pub cases: Vec<TestResult>,
    pub counts: TestCounts,
    message_bytes: usize,
}

/// One test case being read.
struct Case {
    result: TestResult,
    /// Inside its `<failure>`, `<error>` or `<skipped>`: the element's text is its message.
    capturing: bool,
    text: String,
}

impl Collector {
    /// Adds one report file's test cases, or none if it breaks a rule.
    pub fn add_file(&mut self, bytes: &[u8]) -> Result<(), JunitError> {
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(JunitError::TooLarge {
                size: bytes.len() as u64,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| JunitError::NotUtf8)?;
        let room = MAX_RECORDS.saturating_sub(self.cases.len());
        let mut file = FileReport::default();
        read(text, room, &mut file)?;
        self.counts.files += 1;
        self.counts.total += file.counts.total;
        self.counts.passed += file.counts.passed;
        self.counts.failed += file.counts.failed;
        self.counts.error += file.counts.error;
        self.counts.skipped += file.counts.skipped;
        self.counts.truncated |= file.dropped;
        for mut case in file.cases {
            if let Some(m) = &case.message {
                if self.message_bytes + m.len() > MAX_MESSAGES_TOTAL {
                    case.message = None;
                    self.counts.truncated = true;
                } else {
                    self.message_bytes += m.len();
                }
            }
            self.cases.push(case);
        }
        Ok(())
    }
}

#[derive(Default)]
struct FileReport {
    cases: Vec<TestResult>,
    counts: TestCounts,
    dropped: bool,
}

fn read(text: &str, room: usize, out: &mut FileReport) -> Result<(), JunitError> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut depth = 0usize;
    let mut suites: Vec<String> = Vec::new();
    let mut case: Option<Case> = None;
    loop {
        let event = reader.read_event().map_err(|e| JunitError::Xml {
            at: reader.error_position(),
            why: e.to_string(),
        })?;
        match event {
            Event::DocType(_) => return Err(JunitError::Doctype),
            Event::Start(e) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(JunitError::TooDeep);
                }
                open(&e, &mut suites, &mut case, true);
            }
            Event::Empty(e) => {
                if depth + 1 > MAX_DEPTH {
                    return Err(JunitError::TooDeep);
                }
                open(&e, &mut suites, &mut case, false);
                if e.local_name().as_ref() == "testcase"
                    && let Some(c) = case.take()
                {
                    finish(c, room, out);
                }
            }
            Event::End(e) => {
                depth = depth.saturating_sub(1);
                match e.local_name().as_ref() {
                    "testsuite" => {
                        suites.pop();
                    }
                    "testcase" => {
                        if let Some(c) = case.take() {
                            finish(c, room, out);
                        }
                    }
                    "failure" | "error" | "skipped" => {
                        if let Some(c) = &mut case {
                            c.capturing = false;
                        }
                    }
                    _ => {}
                }
            }
            Event::Text(t) => capture(&mut case, &t.xml_content(XmlVersion::Implicit1_0)),
            Event::CData(t) => capture(&mut case, &t.into_inner()),
            Event::GeneralRef(r) => {
                let name = r.xml_content(XmlVersion::Implicit1_0);
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(ch)) => ch.to_string(),
                    _ => quick_xml::escape::resolve_predefined_entity(&name)
                        .map(str::to_string)
                        // Never expanded: shown as written.
                        .unwrap_or_else(|| format!("&{name};")),
                };
                capture(&mut case, &resolved);
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
        }
    }
    Ok(())
}

/// An element begins: a suite, a test case, or a test case's outcome.
fn open(e: &BytesStart<'_>, suites: &mut Vec<String>, case: &mut Option<Case>, has_body: bool) {
    match e.local_name().as_ref() {
        "testsuite" if has_body => suites.push(cap(attr(e, "name"), MAX_NAME)),
        "testcase" => {
            *case = Some(Case {
                result: TestResult {
                    suite: suites.last().cloned().unwrap_or_default(),
                    classname: cap(attr(e, "classname"), MAX_NAME),
                    name: cap(attr(e, "name"), MAX_NAME),
                    status: TestStatus::Passed,
                    duration_ms: attr_opt(e, "time")
                        .and_then(|t| t.trim().parse::<f64>().ok())
                        .filter(|s| s.is_finite() && *s >= 0.0)
                        .map(|s| (s * 1000.0).round().min(u64::MAX as f64) as u64),
                    message: None,
                    flaky: false,
                },
                capturing: false,
                text: String::new(),
            });
        }
        kind @ ("failure" | "error" | "skipped") => {
            let Some(c) = case else { return };
            let status = match kind {
                "failure" => TestStatus::Failed,
                "error" => TestStatus::Error,
                _ => TestStatus::Skipped,
            };
            // The first failure or error decides; a skip only marks a test that passed.
            let first = match c.result.status {
                TestStatus::Passed => true,
                TestStatus::Skipped => status.is_failure(),
                TestStatus::Failed | TestStatus::Error => false,
            };
            if first {
                c.result.status = status;
                c.result.message = attr_opt(e, "message").map(|m| cap(m, MAX_MESSAGE));
                c.text.clear();
            }
            c.capturing = first && has_body;
        }
        _ => {}
    }
}

fn capture(case: &mut Option<Case>, text: &str) {
    if let Some(c) = case
        && c.capturing
    {
        // One character past the cap, so that `cap` marks the cut.
        let mut take = (MAX_MESSAGE + 4)
            .saturating_sub(c.text.len())
            .min(text.len());
        while !text.is_char_boundary(take) {
            take -= 1;
        }
        c.text.push_str(&text[..take]);
    }
}

/// A test case ends: counted, and kept while there is room.
fn finish(mut c: Case, room: usize, out: &mut FileReport) {
    let text = c.text.trim();
    if !text.is_empty() {
        let joined = match c.result.message.take() {
            Some(m) if !m.is_empty() && m != text => format!("{m}\n\n{text}"),
            _ => text.to_string(),
        };
        c.result.message = Some(cap(joined, MAX_MESSAGE));
    }
    let counts = &mut out.counts;
    counts.total += 1;
    match c.result.status {
        TestStatus::Passed => counts.passed += 1,
        TestStatus::Failed => counts.failed += 1,
        TestStatus::Error => counts.error += 1,
        TestStatus::Skipped => counts.skipped += 1,
    }
    if out.cases.len() < room {
        out.cases.push(c.result);
    } else {
        out.dropped = true;
    }
}

fn attr_opt(e: &BytesStart<'_>, name: &str) -> Option<String> {
    let a = e.try_get_attribute(name).ok().flatten()?;
    Some(match a.normalized_value(XmlVersion::Implicit1_0) {
        Ok(v) => v.into_owned(),
        // An unknown entity in a value: kept as written, never expanded.
        Err(_) => a.value.into_owned(),
    })
}

fn attr(e: &BytesStart<'_>, name: &str) -> String {
    attr_opt(e, name).unwrap_or_default()
}

/// At most `max` bytes, cut at a character boundary, with `…` where it was cut.
fn cap(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max.saturating_sub('…'.len_utf8());
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Result<Collector, JunitError> {
        let mut c = Collector::default();
        c.add_file(xml.as_bytes())?;
        Ok(c)
    }

    #[test]
    fn pytest_shaped_reports_become_records() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5" time="0.3">
<testcase classname="tests.test_a" name="test_ok" time="0.001" />
<testcase classname="tests.test_a" name="test_bad" time="0.25"><failure message="assert 1 == 2">def test_bad():
&gt;       assert 1 == 2 &amp;&#x41;</failure><system-out>noise</system-out></testcase>
<testcase classname="tests.test_a" name="test_err" time="bogus"><error message="fixture broke"/></testcase>
<testcase classname="tests.test_b" name="test_skip"><skipped message="not on linux" type="pytest.skip"/></testcase>
<testcase classname="tests.test_b" name="test_cdata"><failure><![CDATA[<raw> & text]]></failure></testcase>
</testsuite></testsuites>"#;
        let c = parse(xml).unwrap();
        assert_eq!(
            c.counts,
            TestCounts {
                total: 5,
                passed: 1,
                failed: 2,
                error: 1,
                skipped: 1,
                files: 1,
                truncated: false
            }
        );
        let by = |n: &str| c.cases.iter().find(|t| t.name == n).unwrap();
        assert_eq!(by("test_ok").duration_ms, Some(1));
        assert_eq!(by("test_ok").suite, "pytest");
        let bad = by("test_bad");
        assert_eq!(bad.status, TestStatus::Failed);
        assert_eq!(
            bad.message.as_deref(),
            Some("assert 1 == 2\n\ndef test_bad():\n>       assert 1 == 2 &A")
        );
        assert_eq!(by("test_err").duration_ms, None);
        assert_eq!(by("test_err").message.as_deref(), Some("fixture broke"));
        assert_eq!(by("test_skip").status, TestStatus::Skipped);
        assert_eq!(by("test_cdata").message.as_deref(), Some("<raw> & text"));
    }

    #[test]
    fn hostile_reports_add_nothing_and_say_why() {
        let laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>
<testsuite><testcase name="a"><failure>&lol2;</failure></testcase></testsuite>"#;
        assert_eq!(parse(laughs).unwrap_err(), JunitError::Doctype);
        let external = r#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><testsuite><testcase name="&e;"/></testsuite>"#;
        assert_eq!(parse(external).unwrap_err(), JunitError::Doctype);
        let deep = format!(
            "{}{}",
            "<a>".repeat(MAX_DEPTH + 1),
            "</a>".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(parse(&deep).unwrap_err(), JunitError::TooDeep);
        assert!(matches!(
            parse("<testsuite><testcase name='a'></testsuite>").unwrap_err(),
            JunitError::Xml { .. }
        ));
        let mut c = Collector::default();
        assert_eq!(
            c.add_file(b"\xff\xfe<x/>").unwrap_err(),
            JunitError::NotUtf8
        );
        assert_eq!(c.counts, TestCounts::default());
    }

    #[test]
    fn an_undeclared_entity_is_never_expanded() {
        let c = parse(r#"<testsuite><testcase name="x&amp;y" classname="&nope;"><failure message="&lt;&nope;">&nope;</failure></testcase></testsuite>"#).unwrap();
        assert_eq!(c.cases[0].name, "x&y");
        assert_eq!(c.cases[0].classname, "&nope;");
        assert_eq!(c.cases[0].message.as_deref(), Some("&lt;&nope;\n\n&nope;"));
    }

    #[test]
    fn records_are_capped_and_counts_stay_exact() {
        let mut xml = String::from("<testsuite name='big'>");
        for i in 0..(MAX_RECORDS + 10) {
            xml.push_str(&format!("<testcase name='t{i}'/>"));
        }
        xml.push_str("</testsuite>");
        let c = parse(&xml).unwrap();
        assert_eq!(c.cases.len(), MAX_RECORDS);
        assert_eq!(c.counts.total, (MAX_RECORDS + 10) as u64);
        assert_eq!(c.counts.passed, (MAX_RECORDS + 10) as u64);
        assert!(c.counts.truncated);
        let long = "x".repeat(MAX_MESSAGE * 3);
        let c = parse(&format!(
            "<testsuite><testcase name='{long}'><failure message='{long}'>{long}</failure></testcase></testsuite>"
        ))
        .unwrap();
        assert_eq!(c.cases[0].name.len(), MAX_NAME);
        assert!(c.cases[0].message.as_ref().unwrap().len() <= MAX_MESSAGE);
    }

    #[test]
    fn a_file_over_the_cap_is_refused_unread() {
        let mut c = Collector::default();
        let big = vec![b' '; (MAX_FILE_BYTES + 1) as usize];
        assert_eq!(
            c.add_file(&big).unwrap_err(),
            JunitError::TooLarge {
                size: MAX_FILE_BYTES + 1
            }
        );
    }

    #[test]
    fn garbage_never_panics_and_keeps_the_caps() {
        let alphabet = b"<>/=\"' &;#x!-[]CDATAtestcasefailureskippedsuite\n";
        for doc in crate::garbage(alphabet, 300, 2000) {
            check_properties(&doc);
        }
    }

    fn check_properties(doc: &[u8]) {
        fuzzing::junit(doc);
    }
}

/// The fuzz target's entry point (`fuzz/fuzz_targets/junit.rs`), also run over garbage by the
/// unit tests: what any input must give.
pub mod fuzzing {
    use super::*;

    /// No panic; a refused file adds nothing; records within every cap, never more than
    /// counted.
    pub fn junit(doc: &[u8]) {
        let mut c = Collector::default();
        if c.add_file(doc).is_ok() {
            assert!(c.cases.len() as u64 <= c.counts.total);
            assert!(c.cases.len() <= MAX_RECORDS);
            assert_eq!(
                c.counts.total,
                c.counts.passed + c.counts.failed + c.counts.error + c.counts.skipped
            );
            for t in &c.cases {
                assert!(t.name.len() <= MAX_NAME && t.classname.len() <= MAX_NAME);
                assert!(t.suite.len() <= MAX_NAME);
                assert!(t.message.as_ref().is_none_or(|m| m.len() <= MAX_MESSAGE));
            }
        } else {
            assert_eq!(c.counts, TestCounts::default());
            assert!(c.cases.is_empty());
        }
    }
}
