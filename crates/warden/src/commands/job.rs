//! `warden job …`: the API from the command line.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use warden_api::{JobView, SubmitJobRequest};
use warden_client::{Client, ClientError, FollowItem, ListQuery};

use crate::cli::{ClientArgs, JobArgs, JobCommand, OutputFormat, SubmitArgs};
use crate::clientconfig::{self, ClientConfig};
use crate::exit;
use crate::{output, tables};

pub async fn run(args: JobArgs) -> i32 {
    let client = match connect(&args.client) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let fmt = args.client.output;
    let result = match args.command {
        JobCommand::Submit(s) => submit(&client, s, fmt).await,
        JobCommand::Get { job_id, wait } => get(&client, &job_id, wait, fmt).await,
        JobCommand::List {
            tenant,
            status,
            job_type,
            repo,
            limit,
            cursor,
        } => {
            list(
                &client,
                ListQuery {
                    tenant,
                    status,
                    job_type,
                    repo,
                    limit,
                    cursor,
                },
                fmt,
            )
            .await
        }
        JobCommand::Logs {
            job_id,
            stream,
            tail,
            follow,
            raw,
            stage,
        } => match stage {
            Some(stage) => stage_log(&client, &job_id, &stream, &stage, raw).await,
            None => {
                let view = LogView { follow, raw, fmt };
                logs(&client, &job_id, &stream, tail as usize, view).await
            }
        },
        JobCommand::Cancel { job_id } => cancel(&client, &job_id, fmt).await,
        JobCommand::Webhooks { job_id } => webhooks(&client, &job_id, fmt).await,
        JobCommand::Artifacts { job_id, get, out } => {
            artifacts(&client, &job_id, get, out, fmt).await
        }
        JobCommand::Types => types(&client, fmt).await,
        JobCommand::Tests {
            job_id,
            status,
            limit,
        } => {
            let status = status.as_deref().and_then(warden_api::TestStatus::parse);
            tests(&client, &job_id, status, limit, fmt).await
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            if e.is_caller_error() {
                exit::USAGE
            } else {
                exit::UNAVAILABLE
            }
        }
    }
}

/// The client of the chosen context and flags; a usage error (exit 2) says what to fix.
pub fn connect(args: &ClientArgs) -> Result<Client, i32> {
    let usage = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        exit::USAGE
    };
    let path = clientconfig::path(args.config.as_deref());
    let config = ClientConfig::load(&path).map_err(|e| usage(&e))?;
    let flags = clientconfig::Overrides {
        server: args.server.as_deref(),
        timeout: args.timeout,
        token_file: args.token_file.as_deref(),
        ca_file: args.ca.as_deref(),
    };
    let resolved =
        clientconfig::resolve(&config, args.context.as_deref(), flags).map_err(|e| usage(&e))?;
    let ca = match &resolved.ca_file {
        Some(f) => {
            Some(std::fs::read(f).map_err(|e| usage(&format!("--ca {}: {e}", f.display())))?)
        }
        None => None,
    };
    Client::with_ca(
        &resolved.server,
        Duration::from_secs(resolved.timeout_s),
        resolved.token,
        ca.as_deref(),
    )
    .map_err(|e| usage(&e))
}

fn print_job(j: &JobView, fmt: OutputFormat) {
    match fmt {
        OutputFormat::Json => output::json(j),
        OutputFormat::Table => {
            print!("{}", tables::job(j));
            if j.unsafe_fallback {
                eprintln!("note: this job ran without the kernel sandbox (unsafe_fallback)");
            }
        }
    }
}

/// A spinner on a terminal, nothing otherwise.
fn spinner(message: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(message.to_string());
    pb.enable_steady_tick(Duration::from_millis(100));
    Some(pb)
}

async fn wait_for(client: &Client, id: &str) -> Result<JobView, ClientError> {
    let pb = spinner(&format!("waiting for job {id}"));
    let job = client
        .wait(id, |j| {
            if let Some(pb) = &pb {
                pb.set_message(format!("job {id}: {}", j.status));
            }
        })
        .await;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    job
}

async fn submit(client: &Client, args: SubmitArgs, fmt: OutputFormat) -> Result<i32, ClientError> {
    let params: BTreeMap<String, String> = args.params.into_iter().collect();
    let command = match args.cmd {
        Some(program) => std::iter::once(program).chain(args.args).collect(),
        None => Vec::new(),
    };
    let req = SubmitJobRequest {
        job_type: args.job_type.unwrap_or_default(),
        repo_name: args.repo,
        remote_url: args.remote_url,
        sha: args.sha,
        git_ref: args.git_ref,
        params,
        idempotency_key: args.idempotency_key,
        command,
        callback_url: args.callback_url,
        tool_bundle: args.tool_bundle,
        tool_env_var: args.tool_env_var,
    };
    let resp = client.submit(&req).await?;
    if args.follow {
        let mut out = std::io::stdout().lock();
        client
            .follow(&resp.job_id, "stdout", Some(0), None, |item| {
                if let FollowItem::Log(ev) = item {
                    let _ = out.write_all(job_text(&ev.text, false).as_bytes());
                    let _ = out.flush();
                }
            })
            .await?;
        drop(out);
    }
    if args.wait || args.follow {
        let job = wait_for(client, &resp.job_id).await?;
        if !args.follow || fmt == OutputFormat::Json {
            print_job(&job, fmt);
        } else {
            eprintln!("job {} {}", job.job_id, job.status);
        }
        return Ok(exit::for_status(job.status));
    }
    match fmt {
        OutputFormat::Json => output::json(&resp),
        OutputFormat::Table => output::table(
            &["JOB ID", "STATUS", "ARTIFACT DIR"],
            &[vec![
                resp.job_id.clone(),
                resp.status.to_string(),
                resp.artifact_dir.clone(),
            ]],
        ),
    }
    Ok(exit::OK)
}

async fn get(client: &Client, id: &str, wait: bool, fmt: OutputFormat) -> Result<i32, ClientError> {
    let job = if wait {
        wait_for(client, id).await?
    } else {
        client.get(id).await?
    };
    print_job(&job, fmt);
    Ok(if wait {
        exit::for_status(job.status)
    } else {
        exit::OK
    })
}

async fn list(client: &Client, q: ListQuery, fmt: OutputFormat) -> Result<i32, ClientError> {
    let page = client.list(&q).await?;
    match fmt {
        OutputFormat::Json => output::json(&page),
        OutputFormat::Table => {
            print!("{}", tables::jobs(&page.jobs));
            if let Some(c) = &page.next_cursor {
                eprintln!("more: --cursor {c}");
            }
        }
    }
    Ok(exit::OK)
}

/// How `warden job logs` shows a log.
struct LogView {
    follow: bool,
    raw: bool,
    fmt: OutputFormat,
}

/// A job's text as it goes to stdout: on a terminal, unless `--raw`, it cannot drive it.
fn job_text(text: &str, raw: bool) -> std::borrow::Cow<'_, str> {
    if raw || !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        std::borrow::Cow::Borrowed(text)
    } else {
        std::borrow::Cow::Owned(output::neutralize_terminal(text))
    }
}

async fn logs(
    client: &Client,
    id: &str,
    stream: &str,
    tail: usize,
    view: LogView,
) -> Result<i32, ClientError> {
    let LogView { follow, raw, fmt } = view;
    if follow {
        let mut out = std::io::stdout().lock();
        let end = client
            .follow(id, stream, None, Some(tail), |item| match (item, fmt) {
                (FollowItem::Log(ev), OutputFormat::Table) => {
                    let _ = out.write_all(job_text(&ev.text, raw).as_bytes());
                    let _ = out.flush();
                }
                (FollowItem::Log(ev), OutputFormat::Json) => {
                    let _ = writeln!(out, "{}", serde_json::to_string(&ev).unwrap_or_default());
                }
                (FollowItem::End(end), OutputFormat::Json) => {
                    let _ = writeln!(out, "{}", serde_json::to_string(&end).unwrap_or_default());
                }
                (FollowItem::End(_), OutputFormat::Table) => {}
            })
            .await?;
        if fmt == OutputFormat::Table {
            eprintln!("job {id} {}", end.status);
        }
        return Ok(exit::OK);
    }
    let resp = client.logs(id, stream, tail).await?;
    match fmt {
        OutputFormat::Json => output::json(&resp),
        OutputFormat::Table => {
            let mut out = std::io::stdout().lock();
            for line in &resp.lines {
                let _ = writeln!(out, "{}", job_text(line, raw));
            }
            if resp.truncated {
                eprintln!("note: output was truncated at the job's output limit");
            }
        }
    }
    Ok(exit::OK)
}

/// `warden job logs --stage NAME`: the byte range of one stage's output, from the stage table.
async fn stage_log(
    client: &Client,
    id: &str,
    stream: &str,
    name: &str,
    raw: bool,
) -> Result<i32, ClientError> {
    let job = client.get(id).await?;
    if job.stages.is_empty() {
        eprintln!(
            "error: job {id} has no stage table{}",
            if job.status.is_terminal() {
                " (its job type has no stages)"
            } else {
                ": it is written when the job ends; follow the whole log with -f"
            }
        );
        return Ok(exit::USAGE);
    }
    let Some(stage) = job.stages.iter().find(|s| s.name == name) else {
        let names: Vec<&str> = job.stages.iter().map(|s| s.name.as_str()).collect();
        eprintln!(
            "error: job {id} has no stage {name:?} (its stages: {})",
            names.join(", ")
        );
        return Ok(exit::USAGE);
    };
    let [start, end] = if stream == "stderr" {
        stage.stderr
    } else {
        stage.stdout
    };
    let mut out = std::io::stdout().lock();
    let mut at = start;
    while at < end {
        let bytes = client.logs_raw(id, stream, at).await?;
        if bytes.is_empty() {
            break;
        }
        let take = bytes.len().min((end - at) as usize);
        if raw || !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            let _ = out.write_all(&bytes[..take]);
        } else {
            let text = String::from_utf8_lossy(&bytes[..take]);
            let _ = out.write_all(job_text(&text, raw).as_bytes());
        }
        at += take as u64;
    }
    let _ = out.flush();
    Ok(exit::OK)
}

async fn tests(
    client: &Client,
    id: &str,
    status: Option<warden_api::TestStatus>,
    limit: u32,
    fmt: OutputFormat,
) -> Result<i32, ClientError> {
    let page = client.tests(id, status, None, limit).await?;
    match fmt {
        OutputFormat::Json => output::json(&page),
        OutputFormat::Table => print!("{}", tables::tests(&page)),
    }
    Ok(exit::OK)
}

async fn webhooks(client: &Client, id: &str, fmt: OutputFormat) -> Result<i32, ClientError> {
    let resp = client.webhooks(id).await?;
    match fmt {
        OutputFormat::Json => output::json(&resp),
        OutputFormat::Table => print!("{}", tables::webhooks(&resp)),
    }
    Ok(exit::OK)
}

async fn cancel(client: &Client, id: &str, fmt: OutputFormat) -> Result<i32, ClientError> {
    let job = client.cancel(id).await?;
    print_job(&job, fmt);
    Ok(exit::OK)
}

async fn artifacts(
    client: &Client,
    id: &str,
    get: Option<String>,
    out: Option<std::path::PathBuf>,
    fmt: OutputFormat,
) -> Result<i32, ClientError> {
    if let Some(path) = get {
        let bytes = client.artifact(id, &path).await?;
        let written = match &out {
            Some(file) => std::fs::write(file, &bytes),
            None => std::io::stdout().lock().write_all(&bytes),
        };
        if let Err(e) = written {
            eprintln!("error: cannot write the artifact: {e}");
            return Ok(exit::UNAVAILABLE);
        }
        return Ok(exit::OK);
    }
    let resp = client.artifacts(id).await?;
    match fmt {
        OutputFormat::Json => output::json(&resp),
        OutputFormat::Table => {
            print!("{}", tables::artifacts(&resp));
        }
    }
    Ok(exit::OK)
}

async fn types(client: &Client, fmt: OutputFormat) -> Result<i32, ClientError> {
    let resp = client.job_types().await?;
    match fmt {
        OutputFormat::Json => output::json(&resp),
        OutputFormat::Table => {
            print!("{}", tables::job_types(&resp));
        }
    }
    Ok(exit::OK)
}
