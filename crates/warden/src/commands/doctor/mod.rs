//! `warden doctor`: can this host run warden's sandbox, and is the configuration sound?

use warden_sandbox::Host;
use warden_sandbox::doctor::{Check, Status, kernel_checks};
use warden_sandbox::{Launcher, Tier};
use warden_worker::token::read_worker_token;
use warden_worker::{SupervisedExecutor, sandbox_self_test};

mod perimeter;
mod ports;

use crate::cli::{DoctorArgs, OutputFormat};
use crate::{config_file, exit, output};

pub async fn run(args: DoctorArgs) -> i32 {
    let mut checks = kernel_checks();
    let config = match config_file::for_serve(&args.serve) {
        Ok(c) => {
            checks.push(Check {
                check: "configuration".into(),
                status: Status::Pass,
                detail: match &args.serve.config {
                    Some(p) => {
                        format!("{} is valid ({} job types)", p.display(), c.job_types.len())
                    }
                    None => format!("built-in default ({} job types)", c.job_types.len()),
                },
                fix: None,
            });
            Some(c)
        }
        Err(e) => {
            checks.push(Check {
                check: "configuration".into(),
                status: Status::Fail,
                detail: e.to_string(),
                fix: Some("fix the file as the message says".into()),
            });
            None
        }
    };
    let needs_git = config
        .as_ref()
        .is_some_and(|c| c.job_types.values().any(|t| t.requires_repo));
    checks.push(git_check(needs_git));
    if let Some(c) = &config {
        checks.push(cache_check(c));
        checks.push(token_check(c));
        checks.extend(perimeter::checks(c, args.serve.config.as_deref()));
    }
    checks.extend(ports::audit(std::path::Path::new("/proc")));
    if let Some(url) = &args.serve.database_url {
        checks.push(database_check(url).await);
    }
    // The real thing: start /bin/true in the full sandbox, as `warden serve` does at start.
    let (uid, gid) = config
        .as_ref()
        .map(|c| (c.sandbox_uid, c.sandbox_gid))
        .unwrap_or((65534, 65534));
    let scratch = std::env::temp_dir().join(format!("warden-doctor-{}", std::process::id()));
    let mut gvisor = None;
    let selftest = match std::env::current_exe() {
        Ok(exe) => {
            let _ = std::fs::create_dir_all(&scratch);
            // As `warden serve` would: its cgroup home, rootless or not.
            let exec =
                SupervisedExecutor::new(Launcher::new(exe), Tier::Sandbox, Host::establish());
            let etc = scratch.join("etc");
            let r = match warden_sandbox::prepare_etc(&etc) {
                Ok(()) => sandbox_self_test(&exec, &scratch, &etc, uid, gid, None)
                    .await
                    .map_err(|e| e.0),
                Err(e) => Err(format!("prepare /etc: {e}")),
            };
            if r.is_ok() {
                let test = GvisorTest {
                    exec: &exec,
                    scratch: &scratch,
                    etc: &etc,
                    ids: (uid, gid),
                };
                gvisor = Some(gvisor_check(config.as_ref(), test).await);
            }
            let _ = std::fs::remove_dir_all(&scratch);
            r
        }
        Err(e) => Err(format!("cannot locate the warden binary: {e}")),
    };
    checks.push(match selftest {
        Ok(()) => Check { check: "sandbox self-test".into(), status: Status::Pass, detail: "/bin/true ran in the full sandbox".into(), fix: None },
        Err(e) => Check {
            check: "sandbox self-test".into(),
            status: Status::Fail,
            detail: format!("sandbox_setup_failed: {e}"),
            fix: Some("see the failing checks above; until fixed, jobs end `error` unless unsafe_fallback: true".into()),
        },
    });
    checks.extend(gvisor);

    match args.output {
        OutputFormat::Json => output::json(&checks),
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = checks
                .iter()
                .map(|c| {
                    vec![
                        format!("{:?}", c.status).to_uppercase(),
                        c.check.clone(),
                        c.detail.clone(),
                    ]
                })
                .collect();
            output::table(&["STATUS", "CHECK", "DETAIL"], &rows);
            for c in checks.iter().filter(|c| c.status != Status::Pass) {
                if let Some(fix) = &c.fix {
                    println!("\n{} ({:?}): {fix}", c.check, c.status);
                }
            }
        }
    }
    if checks.iter().any(|c| c.status == Status::Fail) {
        exit::JOB_FAILED
    } else {
        exit::OK
    }
}

/// Where the gVisor tier's self-test runs.
struct GvisorTest<'a> {
    exec: &'a SupervisedExecutor,
    scratch: &'a std::path::Path,
    etc: &'a std::path::Path,
    ids: (u32, u32),
}

/// Whether the gVisor tier (`isolation: gvisor`) can run jobs here, learned by running
/// `/bin/true` under it. Unavailable is a failure only when a job type asks for it.
async fn gvisor_check(config: Option<&warden_core::Config>, test: GvisorTest<'_>) -> Check {
    let wanted: Vec<&str> = config
        .map(|c| {
            c.job_types
                .iter()
                .filter(|(_, t)| t.isolation == warden_core::IsolationTier::Gvisor)
                .map(|(n, _)| n.0.as_str())
                .collect()
        })
        .unwrap_or_default();
    let unavailable = |why: String| Check {
        check: "gvisor tier".into(),
        status: if wanted.is_empty() {
            Status::Warn
        } else {
            Status::Fail
        },
        detail: if wanted.is_empty() {
            format!("unavailable: {why} (no job type uses isolation: gvisor)")
        } else {
            format!(
                "unavailable: {why}; jobs of {} end `error: sandbox_setup_failed: gvisor: …`",
                wanted.join(", ")
            )
        },
        fix: Some(
            "install gVisor's runsc (Debian: apt-get install runsc) or set gvisor.runsc, and run \
             warden as root"
                .into(),
        ),
    };
    let runsc = match config.map_or_else(
        || warden_core::GvisorConfig::default().runsc(),
        |c| c.gvisor.runsc(),
    ) {
        Some(r) if r.is_file() => r,
        Some(r) => return unavailable(format!("runsc {} not found", r.display())),
        None => {
            return unavailable("runsc not found in /usr/local/bin, /usr/bin or /usr/sbin".into());
        }
    };
    if rustix::process::geteuid().as_raw() != 0 {
        return unavailable("warden is not running as root".into());
    }
    let started = std::time::Instant::now();
    let spec = warden_sandbox::GvisorSpec {
        runsc: runsc.clone(),
    };
    let (uid, gid) = test.ids;
    match sandbox_self_test(test.exec, test.scratch, test.etc, uid, gid, Some(spec)).await {
        Ok(()) => Check {
            check: "gvisor tier".into(),
            status: Status::Pass,
            detail: format!(
                "/bin/true ran under gVisor ({}) in {} ms",
                runsc.display(),
                started.elapsed().as_millis()
            ),
            fix: None,
        },
        Err(e) => unavailable(e.0),
    }
}

/// The oldest git warden's repository support is tested with needs: parallel checkout (2.32),
/// `GIT_CONFIG_COUNT` (2.31) and `safe.directory` (2.35.2).
const MIN_GIT: (u32, u32) = (2, 36);

fn git_check(needed: bool) -> Check {
    let out = std::process::Command::new("git")
        .arg("--version")
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .output();
    let missing = if needed { Status::Fail } else { Status::Warn };
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let version: Vec<u32> = text
                .trim_start_matches("git version ")
                .split(['.', ' '])
                .take(2)
                .filter_map(|p| p.parse().ok())
                .collect();
            match version.as_slice() {
                [major, minor] if (*major, *minor) >= MIN_GIT => Check {
                    check: "git".into(),
                    status: Status::Pass,
                    detail: text,
                    fix: None,
                },
                _ => Check {
                    check: "git".into(),
                    status: missing,
                    detail: format!(
                        "{text}: repository jobs need git {}.{} or newer",
                        MIN_GIT.0, MIN_GIT.1
                    ),
                    fix: Some("install a newer git (Debian 12's 2.39 is enough)".into()),
                },
            }
        }
        _ => Check {
            check: "git".into(),
            status: missing,
            detail:
                "git not found in /usr/local/bin:/usr/bin:/bin: repository job types cannot run"
                    .into(),
            fix: Some("install git".into()),
        },
    }
}

/// What the mirrors and the checkout cache hold, read without changing anything.
fn cache_check(config: &warden_core::Config) -> Check {
    let git = config.data_dir.join("git");
    let count = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0)
    };
    let mut bytes = 0u64;
    let mut trees = 0usize;
    for e in std::fs::read_dir(git.join("trees"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let meta = std::fs::read(e.path().join("meta.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if let Some(m) = meta {
            trees += 1;
            bytes += m["bytes"].as_u64().unwrap_or(0);
        }
    }
    let budget = config.git.checkout_cache_mb.get();
    Check {
        check: "checkout cache".into(),
        status: Status::Pass,
        detail: format!(
            "{}: {} mirror(s), {trees} cached tree(s), {} MiB of {budget} MiB (git.checkout_cache_mb)",
            git.display(),
            count(&git.join("mirrors")),
            bytes >> 20
        ),
        fix: None,
    }
}

/// The worker token: needed for workers at all, and for any gRPC caller off loopback.
fn token_check(c: &warden_core::Config) -> Check {
    let public = !c.grpc_listen.ip().is_loopback();
    match read_worker_token(c.worker_token_file.as_deref()) {
        Ok(Some(_)) => Check {
            check: "worker token".into(),
            status: Status::Pass,
            detail: format!("set; gRPC on {}", c.grpc_listen),
            fix: None,
        },
        Ok(None) => Check {
            check: "worker token".into(),
            status: if public { Status::Fail } else { Status::Warn },
            detail: if public {
                format!(
                    "grpc_listen {} is not loopback and no token is set",
                    c.grpc_listen
                )
            } else {
                "not set: remote workers cannot connect".into()
            },
            fix: Some("set WARDEN_WORKER_TOKEN or worker_token_file (>= 16 characters)".into()),
        },
        Err(e) => Check {
            check: "worker token".into(),
            status: Status::Fail,
            detail: e.to_string(),
            fix: Some("fix the token file or variable".into()),
        },
    }
}

/// `--database-url`: reachable, which server, which schema version. Read-only: the doctor
/// never creates or migrates the schema (`serve` does).
async fn database_check(url: &str) -> Check {
    let connected = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        warden_store_postgres::PgStore::probe(url),
    )
    .await
    .map(|r| r.map(|p| (p.server_version, p.schema_version)));
    match connected {
        Ok(Ok((version, schema))) => Check {
            check: "database".into(),
            status: Status::Pass,
            detail: match schema {
                Some(v) => format!("PostgreSQL {version} reachable; warden schema version {v}"),
                None => format!(
                    "PostgreSQL {version} reachable; no warden schema yet (serve creates it)"
                ),
            },
            fix: None,
        },
        Ok(Err(e)) => Check {
            check: "database".into(),
            status: Status::Fail,
            detail: e.to_string(),
            fix: Some("check --database-url, that PostgreSQL runs, and the user's rights".into()),
        },
        Err(_) => Check {
            check: "database".into(),
            status: Status::Fail,
            detail: "no answer within 10 s".into(),
            fix: Some("check the host and port in --database-url".into()),
        },
    }
}
