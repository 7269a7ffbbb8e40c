//! The tools: their names, descriptions (written for a model: what each is for, what it never
//! does), input schemas, and each call: arguments checked strictly (an unknown or mistyped
//! field is a tool error that names it), then the backend, then a JSON answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool, ToolAnnotations};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use warden_api::{JobView, SubmitJobRequest, TestStatus};
use warden_core::record::LogStream;

use super::{Backend, ToolError};

pub const TOOL_NAMES: &[&str] = &[
    "list_job_types",
    "submit_job",
    "get_job",
    "wait_job",
    "job_logs",
    "job_tests",
    "list_artifacts",
    "read_artifact",
    "cancel_job",
];

/// The most a log or artifact read returns at once (the model's context is the budget).
pub const MAX_READ_BYTES: usize = 256 * 1024;
const DEFAULT_READ_BYTES: usize = 64 * 1024;
const DEFAULT_TAIL_LINES: usize = 200;
const MAX_TAIL_LINES: usize = 5000;
const DEFAULT_WAIT_S: u64 = 60;
const MAX_WAIT_S: u64 = 600;

const JOB_ID: &str = "The job id, as submit_job returned it (a UUID).";

fn schema(properties: Value, required: &[&str]) -> Arc<JsonObject> {
    let Value::Object(o) = json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    }) else {
        unreachable!("a json! object literal is an object")
    };
    Arc::new(o)
}

fn tool(
    name: &'static str,
    description: &'static str,
    input: Arc<JsonObject>,
    read_only: bool,
) -> Tool {
    let mut t = Tool::new(name, description, input);
    t.annotations = Some(
        ToolAnnotations::new()
            .read_only(read_only)
            .destructive(false),
    );
    t
}

/// Every tool, in a stable order.
pub fn all() -> Vec<Tool> {
    let job_id = || json!({"job_id": {"type": "string", "description": JOB_ID}});
    vec![
        tool(
            "list_job_types",
            "List the job types this warden server runs. A job type is a command the server's \
             administrator configured (a project's test suite, a linter, a build); you pick a \
             type and its params, never the command itself. Each entry gives `params_schema`, \
             the JSON Schema of the `params` submit_job takes for it, and `requires_repo`.",
            schema(json!({}), &[]),
            true,
        ),
        tool(
            "submit_job",
            "Queue one job of a configured type and return its id at once (then call wait_job). \
             For a repository job give `repo` (the repository's configured name) and either \
             `sha` (a full 40-hex commit) or `ref` (a branch or tag, resolved to a commit now \
             and recorded). The job runs in a sandbox against a read-only checkout at that \
             commit: it can never modify, commit to or push the repository, and it sees only \
             the params you pass (as environment variables).",
            schema(
                json!({
                    "job_type": {"type": "string", "description": "A name from list_job_types."},
                    "repo": {"type": "string", "description": "The repository's configured name (repository jobs)."},
                    "sha": {"type": "string", "description": "A full 40-hex commit id (give sha or ref, not both)."},
                    "ref": {"type": "string", "description": "A branch, tag or HEAD, resolved to a commit at submission."},
                    "params": {
                        "type": "object",
                        "description": "The job type's params (see params_schema): names in capitals, string values.",
                        "additionalProperties": {"type": "string"},
                    },
                    "idempotency_key": {"type": "string", "description": "Submitting the same request with the same key again returns the first job instead of a new one."},
                    "callback_url": {"type": "string", "description": "Where the job's state changes are delivered as signed webhooks (only hosts the server allows)."},
                    "tool_bundle": {"type": "string", "description": "A tool-spec bundle the server knows, as sha256:HEX: the job finds it read-only at /run/warden/tools.json."},
                    "tool_env_var": {"type": "string", "description": "The variable holding the bundle's path (default AGENT_TOOL_SPEC); only with tool_bundle."},
                }),
                &["job_type"],
            ),
            false,
        ),
        tool(
            "get_job",
            "The current record of one job: status (queued, running, succeeded, failed, \
             cancelled, timed_out, error), exit code, reason when it did not succeed, the commit \
             it ran at, test counts, log and artifact sizes.",
            schema(job_id(), &["job_id"]),
            true,
        ),
        tool(
            "wait_job",
            "Wait until a job ends, at most `timeout_s` seconds (default 60, at most 600), and \
             return its record. `finished: false` in the answer means it is still queued or \
             running: call wait_job again. Waiting never changes the job.",
            schema(
                json!({
                    "job_id": {"type": "string", "description": JOB_ID},
                    "timeout_s": {"type": "integer", "minimum": 1, "maximum": MAX_WAIT_S, "description": "Seconds to wait at most (default 60)."},
                }),
                &["job_id"],
            ),
            true,
        ),
        tool(
            "job_logs",
            "Read a job's output (stdout or stderr) while it runs or after: by default its last \
             200 lines; or `offset` and `max_bytes` for an exact byte range (the answer says \
             the range it holds and where the stream ends, to read on from). Capped at \
             `max_bytes` (default 64 KiB, at most 256 KiB). Secrets the job was given are \
             already masked in what warden stored.",
            schema(
                json!({
                    "job_id": {"type": "string", "description": JOB_ID},
                    "stream": {"type": "string", "enum": ["stdout", "stderr"], "description": "Default stdout."},
                    "tail_lines": {"type": "integer", "minimum": 1, "maximum": MAX_TAIL_LINES, "description": "The last this many lines (default 200); not with offset."},
                    "offset": {"type": "integer", "minimum": 0, "description": "Read from this byte of the stream instead of the tail."},
                    "max_bytes": {"type": "integer", "minimum": 1, "maximum": MAX_READ_BYTES, "description": "At most this many bytes (default 65536)."},
                }),
                &["job_id"],
            ),
            true,
        ),
        tool(
            "job_tests",
            "A finished job's test results from its JUnit reports, failed and errored tests \
             first, each with its message and output; `counts` sums them all. `flaky` marks a \
             test that both passed and failed at the same commit.",
            schema(
                json!({
                    "job_id": {"type": "string", "description": JOB_ID},
                    "status": {"type": "string", "enum": ["failed", "error", "skipped", "passed"], "description": "Only tests that ended so."},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "At most this many (default 50)."},
                }),
                &["job_id"],
            ),
            true,
        ),
        tool(
            "list_artifacts",
            "List the files a job kept in its artifact directory (reports, coverage, build \
             outputs), with their sizes. Read one with read_artifact.",
            schema(job_id(), &["job_id"]),
            true,
        ),
        tool(
            "read_artifact",
            "Read one artifact file of a job as text, at most `max_bytes` (default 64 KiB, at \
             most 256 KiB; the answer says when it was cut). A binary file is refused with its \
             size: download it over warden's HTTP API instead.",
            schema(
                json!({
                    "job_id": {"type": "string", "description": JOB_ID},
                    "path": {"type": "string", "description": "The file's path in the artifact directory, as list_artifacts gives it."},
                    "max_bytes": {"type": "integer", "minimum": 1, "maximum": MAX_READ_BYTES, "description": "At most this many bytes (default 65536)."},
                }),
                &["job_id", "path"],
            ),
            true,
        ),
        tool(
            "cancel_job",
            "Stop a queued or running job: a queued one ends at once, a running one is sent \
             SIGTERM then killed. A job that already ended is left as it is (an error says so).",
            schema(job_id(), &["job_id"]),
            false,
        ),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobArg {
    job_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitArgs {
    job_type: String,
    repo: Option<String>,
    sha: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    idempotency_key: Option<String>,
    callback_url: Option<String>,
    tool_bundle: Option<String>,
    tool_env_var: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitArgs {
    job_id: String,
    timeout_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogArgs {
    job_id: String,
    stream: Option<String>,
    tail_lines: Option<usize>,
    offset: Option<u64>,
    max_bytes: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestsArgs {
    job_id: String,
    status: Option<String>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadArtifactArgs {
    job_id: String,
    path: String,
    max_bytes: Option<usize>,
}

fn invalid(message: impl Into<String>) -> ToolError {
    ToolError::new("invalid_arguments", message)
}

fn args<T: DeserializeOwned>(tool: &str, args: JsonObject) -> Result<T, ToolError> {
    serde_json::from_value(Value::Object(args))
        .map_err(|e| invalid(format!("{tool}: {e} (see the tool's input schema)")))
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    name: &str,
    value: Option<T>,
    (min, max): (T, T),
    default: T,
) -> Result<T, ToolError> {
    match value {
        None => Ok(default),
        Some(v) if v >= min && v <= max => Ok(v),
        Some(v) => Err(invalid(format!(
            "{name} {v} is out of range: {min}..={max}"
        ))),
    }
}

fn answer(value: Value) -> CallToolResult {
    let text = serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string());
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content = Some(value);
    r
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Runs one tool. `cancelled`: the client gave up on the call (a wait stops at once).
pub async fn call(
    backend: &dyn Backend,
    name: &str,
    arguments: JsonObject,
    cancelled: &CancellationToken,
) -> Result<CallToolResult, ToolError> {
    match name {
        "list_job_types" => {
            args::<NoArgs>(name, arguments)?;
            let types = backend.job_types().await?;
            let types: Vec<Value> = types
                .iter()
                .map(|t| {
                    let mut v = to_value(t);
                    v["params_schema"] = params_schema(&t.allowed_params);
                    v
                })
                .collect();
            Ok(answer(json!({"job_types": types})))
        }
        "submit_job" => {
            let a: SubmitArgs = args(name, arguments)?;
            let submitted = backend
                .submit(SubmitJobRequest {
                    job_type: a.job_type,
                    repo_name: a.repo,
                    sha: a.sha,
                    git_ref: a.git_ref,
                    params: a.params,
                    idempotency_key: a.idempotency_key,
                    callback_url: a.callback_url,
                    tool_bundle: a.tool_bundle,
                    tool_env_var: a.tool_env_var,
                    ..SubmitJobRequest::default()
                })
                .await?;
            Ok(answer(json!({
                "job_id": submitted.job_id,
                "status": submitted.status,
                "idempotent_replay": submitted.idempotent_replay,
                "next": "call wait_job with this job_id",
            })))
        }
        "get_job" => {
            let a: JobArg = args(name, arguments)?;
            Ok(answer(job_answer(&backend.get(&a.job_id).await?)))
        }
        "wait_job" => {
            let a: WaitArgs = args(name, arguments)?;
            let timeout = in_range("timeout_s", a.timeout_s, (1, MAX_WAIT_S), DEFAULT_WAIT_S)?;
            let job = wait(backend, &a.job_id, Duration::from_secs(timeout), cancelled).await?;
            Ok(answer(job_answer(&job)))
        }
        "job_logs" => logs(backend, args(name, arguments)?).await,
        "job_tests" => {
            let a: TestsArgs = args(name, arguments)?;
            let status = match a.status.as_deref() {
                None => None,
                Some(s) => Some(TestStatus::parse(s).ok_or_else(|| {
                    invalid(format!(
                        "status {s:?} is not one of failed, error, skipped, passed"
                    ))
                })?),
            };
            let limit = in_range("limit", a.limit, (1, 1000), 50)?;
            Ok(answer(to_value(
                &backend.tests(&a.job_id, status, limit).await?,
            )))
        }
        "list_artifacts" => {
            let a: JobArg = args(name, arguments)?;
            Ok(answer(to_value(&backend.artifacts(&a.job_id).await?)))
        }
        "read_artifact" => {
            let a: ReadArtifactArgs = args(name, arguments)?;
            let limit = in_range(
                "max_bytes",
                a.max_bytes,
                (1, MAX_READ_BYTES),
                DEFAULT_READ_BYTES,
            )?;
            let (head, size) = backend.read_artifact(&a.job_id, &a.path, limit).await?;
            let cut = (head.len() as u64) < size;
            let Some(text) = text_of(&head, cut) else {
                return Err(ToolError::new(
                    "binary_artifact",
                    format!(
                        "{} is binary ({size} bytes), not text: download it from \
                         /jobs/{}/artifacts/{} over the HTTP API",
                        a.path, a.job_id, a.path
                    ),
                ));
            };
            Ok(answer(json!({
                "path": a.path,
                "size": size,
                "bytes_read": head.len(),
                "truncated": cut,
                "text": text,
            })))
        }
        "cancel_job" => {
            let a: JobArg = args(name, arguments)?;
            Ok(answer(job_answer(&backend.cancel(&a.job_id).await?)))
        }
        other => Err(invalid(format!("no tool {other:?}"))),
    }
}

/// A job type's params as the JSON Schema of submit_job's `params`.
fn params_schema(allowed: &[String]) -> Value {
    let props: serde_json::Map<String, Value> = allowed
        .iter()
        .map(|p| {
            (
                p.clone(),
                json!({"type": "string", "maxLength": warden_core::params::MAX_PARAM_VALUE_BYTES}),
            )
        })
        .collect();
    json!({"type": "object", "properties": props, "additionalProperties": false})
}

/// A job's record, with `finished` said plainly.
fn job_answer(job: &JobView) -> Value {
    let mut v = to_value(job);
    v["finished"] = json!(job.status.is_terminal());
    v
}

async fn wait(
    backend: &dyn Backend,
    id: &str,
    timeout: Duration,
    cancelled: &CancellationToken,
) -> Result<JobView, ToolError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(50);
    loop {
        let job = backend.get(id).await?;
        if job.status.is_terminal() || tokio::time::Instant::now() >= deadline {
            return Ok(job);
        }
        let nap = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + delay));
        tokio::select! {
            _ = nap => {}
            _ = cancelled.cancelled() => return Ok(job),
        }
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

async fn logs(backend: &dyn Backend, a: LogArgs) -> Result<CallToolResult, ToolError> {
    let stream = match a.stream.as_deref() {
        None => LogStream::Stdout,
        Some(s) => LogStream::parse(s)
            .ok_or_else(|| invalid(format!("stream {s:?} is not stdout or stderr")))?,
    };
    if a.offset.is_some() && a.tail_lines.is_some() {
        return Err(invalid("give offset or tail_lines, not both"));
    }
    let max = in_range(
        "max_bytes",
        a.max_bytes,
        (1, MAX_READ_BYTES),
        DEFAULT_READ_BYTES,
    )?;
    let tail = in_range(
        "tail_lines",
        a.tail_lines,
        (1, MAX_TAIL_LINES),
        DEFAULT_TAIL_LINES,
    )?;
    let job = backend.get(&a.job_id).await?;
    let total = match stream {
        LogStream::Stdout => job.stdout_bytes,
        LogStream::Stderr => job.stderr_bytes,
    };
    let (from, bytes) = match a.offset {
        Some(offset) => (
            offset,
            backend.read_log(&a.job_id, stream, offset, max).await?,
        ),
        None => {
            let start = total.saturating_sub(max as u64);
            let window = backend.read_log(&a.job_id, stream, start, max).await?;
            // The last `tail` lines of the window; a first line cut by the window is dropped.
            let mut cut = 0;
            let body = window.strip_suffix(b"\n").unwrap_or(&window);
            let mut lines = 0;
            for (i, b) in body.iter().enumerate().rev() {
                if *b == b'\n' {
                    lines += 1;
                    if lines == tail {
                        cut = i + 1;
                        break;
                    }
                }
            }
            if lines < tail && start > 0 {
                cut = window.iter().position(|b| *b == b'\n').map_or(0, |p| p + 1);
            }
            (start + cut as u64, window[cut..].to_vec())
        }
    };
    let to = from + bytes.len() as u64;
    Ok(answer(json!({
        "job_id": a.job_id,
        "stream": stream.as_str(),
        "from_offset": from,
        "to_offset": to,
        "stream_bytes": total,
        "earlier_output": from > 0,
        "later_output": to < total,
        "job_finished": job.status.is_terminal(),
        "log_truncated_by_warden": job.log_truncated,
        "text": String::from_utf8_lossy(&bytes),
    })))
}

/// The bytes as text, or `None` for binary: a NUL byte, or invalid UTF-8 other than a
/// character cut at the end of a read that stopped early.
fn text_of(bytes: &[u8], cut: bool) -> Option<String> {
    if bytes.contains(&0) {
        return None;
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Some(s.to_string()),
        Err(e) if cut && e.error_len().is_none() => {
            Some(String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned())
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_is_listed_once_with_a_closed_object_schema() {
        let tools = all();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(names, TOOL_NAMES);
        for t in &tools {
            assert_eq!(t.input_schema["type"], "object", "{}", t.name);
            assert_eq!(t.input_schema["additionalProperties"], false, "{}", t.name);
            let desc = t.description.as_deref().unwrap_or("");
            assert!(desc.len() > 80, "{} is described for a model", t.name);
        }
        let submit = &tools[1];
        assert!(
            submit
                .description
                .as_deref()
                .unwrap()
                .contains("never modify, commit to or push"),
            "submit_job says what it never does"
        );
    }

    #[test]
    fn text_is_told_from_binary_and_a_cut_character_is_not_binary() {
        assert_eq!(text_of(b"ok\n", false).as_deref(), Some("ok\n"));
        assert_eq!(text_of(b"a\0b", false), None);
        assert_eq!(text_of(&[0xff, 0xfe, b'a'], false), None);
        let euro = "x€".as_bytes();
        assert_eq!(text_of(&euro[..2], true).as_deref(), Some("x"));
        assert_eq!(text_of(&euro[..2], false), None);
    }

    #[test]
    fn params_become_a_closed_schema_of_strings() {
        let s = params_schema(&["PYTEST_ARGS".into()]);
        assert_eq!(s["properties"]["PYTEST_ARGS"]["type"], "string");
        assert_eq!(s["additionalProperties"], false);
    }

    #[test]
    fn arguments_are_checked_strictly() {
        let obj = |v: Value| match v {
            Value::Object(o) => o,
            _ => unreachable!(),
        };
        let e = args::<JobArg>("get_job", obj(json!({"job_id": "x", "extra": 1})))
            .err()
            .unwrap();
        assert_eq!(e.code, "invalid_arguments");
        assert!(e.message.contains("extra"), "{}", e.message);
        let e = args::<JobArg>("get_job", obj(json!({"job_id": 5})))
            .err()
            .unwrap();
        assert!(e.message.contains("string"), "{}", e.message);
        let e = in_range("timeout_s", Some(0u64), (1, 600), 60).unwrap_err();
        assert!(e.message.contains("1..=600"), "{}", e.message);
    }
}
