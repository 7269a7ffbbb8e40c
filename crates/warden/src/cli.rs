//! Command-line definitions (the dispatch is `lib.rs`'s `main`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "warden",
    version,
    about = "A secure, API-first, headless job runner"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane: with its embedded worker on SQLite (the default), or as one of
    /// several replicas on PostgreSQL (--database-url) with remote workers.
    Serve(ServeArgs),
    /// Run jobs for a remote control plane (gRPC), with this host's sandbox.
    Worker(WorkerArgs),
    /// Submit, inspect, follow and cancel jobs on a warden server.
    Job(JobArgs),
    /// Serve warden's jobs as MCP tools on stdin/stdout, for an AI agent on this machine: each
    /// call goes to the context's server as its token (the server also serves MCP at /mcp).
    Mcp(McpArgs),
    /// Tool specs for agents that take tools as JSON: `tools bundle` writes an immutable,
    /// content-addressed bundle of OpenAI-compatible function specs.
    Tools(ToolsArgs),
    /// Manage the client configuration ($HOME/.warden/config): contexts and the current one.
    Config(ConfigArgs),
    /// Check this host and the configuration: kernel features, cgroups, a sandbox self-test,
    /// listening ports, secret files.
    Doctor(DoctorArgs),
    /// Create, list and revoke API tokens (admin).
    Token(TokenArgs),
    /// Read the audit log: submissions, cancellations, tokens, downloads, refusals (admin).
    Audit(AuditArgs),
    /// On the server's host: copy the embedded database to a new file while the server runs.
    Backup(BackupArgs),
    /// On the server's host: put a backup in place as the database of a fresh data directory.
    Restore(RestoreArgs),
    /// On the server's host: one pass of retention's collector (finished jobs past their age
    /// or over the size budget, artifact directories without a job, unused mirrors).
    Gc(GcArgs),
    /// On the server's host: the events outbox (`events:`), e.g. replay a range to NATS.
    Events(EventsArgs),
    /// Exit 0 when the server at --url answers /healthz (a container's or a probe's check).
    Health(HealthArgs),
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The server's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL")]
    pub url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Publish the events stored since a time to NATS JetStream again, with their first
    /// message ids (JetStream drops the ones it still holds).
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// From this time on: RFC 3339 (`2026-12-01T08:00:00Z`) or a duration back (`2h`, `7d`).
    #[arg(long, value_name = "WHEN")]
    pub since: String,
    /// The server configuration whose `events.nats` to publish to.
    #[arg(long, env = "WARDEN_SERVE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The data directory (overrides the configuration's).
    #[arg(long, env = "WARDEN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The PostgreSQL store of a replicated server.
    #[arg(long, env = "WARDEN_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// The server configuration whose `retention:` applies.
    #[arg(long, env = "WARDEN_SERVE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The data directory (overrides the configuration's).
    #[arg(long, env = "WARDEN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The PostgreSQL store of a replicated server.
    #[arg(long, env = "WARDEN_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Say what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The server configuration whose data directory holds the database.
    #[arg(long, env = "WARDEN_SERVE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The data directory (overrides the configuration's).
    #[arg(long, env = "WARDEN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The new file to write (it must not exist).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// A PostgreSQL-backed server is backed up with pg_dump (see docs/deploy.md).
    #[arg(long, env = "WARDEN_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The server configuration whose (fresh) data directory receives the database.
    #[arg(long, env = "WARDEN_SERVE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The data directory (overrides the configuration's).
    #[arg(long, env = "WARDEN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The backup `warden backup` wrote.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once (the server keeps only its hash).
    Create {
        /// The tenant whose jobs the token acts on.
        #[arg(long)]
        tenant: String,
        /// What it may do: read, submit, cancel, admin (comma-separated).
        #[arg(long, value_delimiter = ',', required = true, value_name = "A,B")]
        scopes: Vec<String>,
        /// Lifetime (30d, 12h, 90m); without it the token does not expire.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        expires: Option<std::time::Duration>,
        /// A name to recognise it by in lists.
        #[arg(long)]
        name: Option<String>,
        /// Write the token to this new file (mode 0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// On the server's host: open the store of this server configuration directly instead
        /// of calling the API (to create the first admin token).
        #[arg(long, value_name = "FILE")]
        serve_config: Option<PathBuf>,
        /// With --serve-config: the server's PostgreSQL database.
        #[arg(
            long,
            env = "WARDEN_DATABASE_URL",
            value_name = "URL",
            requires = "serve_config"
        )]
        database_url: Option<String>,
    },
    /// List tokens (never the tokens themselves).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a token: refused at once on every replica.
    Revoke { id: String },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub tenant: Option<String>,
    /// submit, cancel, token.create, token.revoke, artifact.download, secret.use, refused
    #[arg(long)]
    pub action: Option<String>,
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Continue after a previous page (its next_cursor).
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The server configuration to check (same flags as `serve`).
    #[command(flatten)]
    pub serve: ServeArgs,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Server configuration file (YAML). Without it, the built-in default is used.
    #[arg(long, env = "WARDEN_SERVE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the database, artifacts and scratch space live (overrides the file).
    #[arg(long, env = "WARDEN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on, loopback only (overrides the file).
    #[arg(long, env = "WARDEN_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Jobs run at once (overrides the file).
    #[arg(long, env = "WARDEN_SLOTS", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub slots: Option<u64>,
    /// gRPC address (overrides the file; default 127.0.0.1:50051).
    #[arg(long, env = "WARDEN_GRPC_LISTEN", value_name = "ADDR")]
    pub grpc_listen: Option<SocketAddr>,
    /// Share a PostgreSQL database with other replicas (postgres://user@host:port/db). Jobs then
    /// run on remote workers (`warden worker`) only.
    #[arg(long, env = "WARDEN_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "WARDEN_DATABASE_POOL", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(2..=256))]
    pub database_pool: u32,
    /// How the server logs to stderr: text for people, json (one object a line, with job ids
    /// as fields) for collectors.
    #[arg(long, env = "WARDEN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The control plane's gRPC URL (http://host:50051, or https:// with --tls-ca).
    #[arg(long, env = "WARDEN_SERVER", value_name = "URL")]
    pub server: String,
    /// This worker's configuration (YAML, same format as the server's): the job types it can
    /// run and how, sandbox settings. Without it, the built-in default.
    #[arg(long, env = "WARDEN_WORKER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Mirrors, checkout cache, scratch space (overrides the file).
    #[arg(long, env = "WARDEN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Jobs run at once (overrides the file).
    #[arg(long, env = "WARDEN_SLOTS", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub slots: Option<u64>,
    /// Labels this worker offers; job types that require labels go only to workers that have
    /// them all (e.g. --labels gpu,linux).
    #[arg(long, env = "WARDEN_LABELS", value_delimiter = ',', value_name = "A,B")]
    pub labels: Vec<String>,
    /// File holding the worker token (WARDEN_WORKER_TOKEN takes precedence; never pass the
    /// token itself on the command line).
    #[arg(long, env = "WARDEN_WORKER_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Names this worker in leases and logs (default: hostname and a random suffix).
    #[arg(long, value_name = "ID")]
    pub worker_id: Option<String>,
    /// PEM file of the CA that signed the server's TLS certificate (for https://).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// How the worker logs to stderr (text or json).
    #[arg(long, env = "WARDEN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// How to reach the server; shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Client configuration file (default $HOME/.warden/config).
    #[arg(long, global = true, env = "WARDEN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use this context instead of the current one.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Server URL, overriding the context (e.g. http://127.0.0.1:8080).
    #[arg(long, global = true, env = "WARDEN_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// Request timeout in seconds.
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: Option<u64>,
    /// Read the API token from this file, overriding the context (never pass a token in argv).
    #[arg(long, global = true, env = "WARDEN_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA that signed the server's certificate (https://, grpcs://).
    #[arg(long, global = true, env = "WARDEN_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct ToolsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: ToolsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ToolsCommand {
    /// Write the server's job types (one function each) and the control tools as
    /// `DIR/warden-tools-<VERSION>-<sha256>.json`; the same input always gives the same file.
    Bundle {
        /// The directory to write the bundle into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// What to call this set of tools (1-64 of A-Z a-z 0-9 . _ -).
        #[arg(long, value_name = "VERSION")]
        version: String,
    },
}

#[derive(Debug, Args)]
pub struct McpArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: JobCommand,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job of a configured type.
    Submit(SubmitArgs),
    /// Show one job.
    Get {
        job_id: String,
        /// Wait until the job ends; exit with its status code.
        #[arg(long)]
        wait: bool,
    },
    /// List jobs, newest first.
    List {
        /// Another tenant's jobs (admin tokens; an admin sees every tenant without it).
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        job_type: Option<String>,
        /// Only jobs on this repository (its repo_name).
        #[arg(long)]
        repo: Option<String>,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: Option<u32>,
        /// Continue after a previous page (its next_cursor).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show a job's output; -f follows it live until the job ends.
    Logs {
        job_id: String,
        #[arg(long, value_parser = ["stdout", "stderr"], default_value = "stdout")]
        stream: String,
        /// How many of the last lines to show.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=100_000))]
        tail: u64,
        #[arg(short = 'f', long)]
        follow: bool,
        /// Write the job's bytes exactly as they are, escape sequences included (by default, on
        /// a terminal, control characters are shown escaped so a job cannot drive it).
        #[arg(long)]
        raw: bool,
        /// Only what this stage of a staged job wrote (the whole stage; once the job has ended).
        #[arg(long, value_name = "NAME", conflicts_with_all = ["follow", "tail"])]
        stage: Option<String>,
    },
    /// A job's test results from its JUnit reports: failures first, flaky ones marked.
    Tests {
        job_id: String,
        /// Only tests that ended so.
        #[arg(long, value_parser = ["passed", "failed", "error", "skipped"])]
        status: Option<String>,
        /// At most this many (the counts are always of all).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// Cancel a queued or running job.
    Cancel { job_id: String },
    /// A job's webhook deliveries (its tenant's URL and its --callback-url): every event, its
    /// attempts, and whether it was delivered, is retrying or was given up.
    Webhooks { job_id: String },
    /// List a job's artifacts, or download one with --get.
    Artifacts {
        job_id: String,
        /// Artifact path to download (relative to the job's artifact directory).
        #[arg(long, value_name = "PATH")]
        get: Option<String>,
        /// Where to write the download (default: standard output).
        #[arg(long, value_name = "FILE", requires = "get")]
        out: Option<PathBuf>,
    },
    /// List the job types the server offers.
    Types,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The job type (with --cmd: optional, the tenant's inline job type).
    #[arg(required_unless_present = "cmd")]
    pub job_type: Option<String>,
    /// An inline command (tenants whose policy allows it): this program runs under the job
    /// type the policy names, with its sandbox and limits.
    #[arg(long, value_name = "PROGRAM")]
    pub cmd: Option<String>,
    /// An argument of --cmd (repeatable, in order).
    #[arg(
        long = "arg",
        value_name = "ARG",
        requires = "cmd",
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
    /// A declared parameter, KEY=VALUE (repeatable). Reaches the job as an environment variable.
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    #[arg(long)]
    pub repo: Option<String>,
    #[arg(long)]
    pub remote_url: Option<String>,
    /// The full commit id to run at.
    #[arg(long, conflicts_with = "git_ref")]
    pub sha: Option<String>,
    /// A branch or tag, resolved to a commit by the server now (instead of --sha).
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Deliver this job's state changes as signed webhooks to this URL (a host the server's
    /// `events.webhooks.allow_hosts` lists).
    #[arg(long, value_name = "URL")]
    pub callback_url: Option<String>,
    /// Hand the job this tool-spec bundle (a file `warden tools bundle` wrote, or
    /// `sha256:HEX`): the server must hold the same bytes in its `tool_bundles:` directory.
    /// Bound read-only at /run/warden/tools.json.
    #[arg(long, value_name = "PATH", value_parser = parse_tool_bundle)]
    pub tool_bundle: Option<String>,
    /// The variable that holds the bundle's path (default: the job type's, AGENT_TOOL_SPEC).
    #[arg(long, value_name = "NAME", requires = "tool_bundle")]
    pub tool_env_var: Option<String>,
    /// Wait until the job ends and exit with its status code.
    #[arg(long)]
    pub wait: bool,
    /// Follow the job's stdout live (implies --wait).
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// `--tool-bundle`: a bundle file, named to the server by its SHA-256 (or `sha256:HEX` as is).
fn parse_tool_bundle(s: &str) -> Result<String, String> {
    use warden_worker::tool_bundles::{digest, parse_digest, read_capped};
    if s.starts_with("sha256:") {
        return parse_digest(s).map(|d| format!("sha256:{d}"));
    }
    let bytes = read_capped(std::path::Path::new(s))
        .map_err(|e| format!("{s} is not a bundle file it can read: {e}"))?;
    Ok(format!("sha256:{}", digest(&bytes)))
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Client configuration file (default $HOME/.warden/config).
    #[arg(long, global = true, env = "WARDEN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Add or update a context.
    SetContext {
        name: String,
        #[arg(long)]
        server: String,
        #[arg(long = "timeout", value_parser = clap::value_parser!(u64).range(1..=86_400))]
        timeout_seconds: Option<u64>,
        /// Read the API token from this file each time the context is used (never pass secrets
        /// in argv).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// PEM file of the CA that signed the server's certificate.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
    },
    /// Make a context the current one.
    UseContext { name: String },
    /// Remove a context.
    DeleteContext { name: String },
    /// List contexts.
    GetContexts,
    /// Print the current context's name.
    CurrentContext,
}
