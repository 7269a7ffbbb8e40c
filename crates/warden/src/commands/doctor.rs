//! `warden doctor`: can this host run warden's sandbox, and is the configuration sound?

use warden_sandbox::doctor::{Check, Status, kernel_checks};
use warden_sandbox::{Isolation, Launcher};
use warden_worker::{SupervisedExecutor, sandbox_self_test};

use crate::cli::{DoctorArgs, OutputFormat};
use crate::{exit, output};

pub async fn run(args: DoctorArgs) -> i32 {
    let mut checks = kernel_checks();
    let config = match crate::commands::serve::load_config(&args.serve) {
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
                detail: e,
                fix: Some("fix the file as the message says".into()),
            });
            None
        }
    };
    checks.push(git_check());
    // The real thing: start /bin/true in the full sandbox, as `warden serve` does at start.
    let (uid, gid) = config
        .as_ref()
        .map(|c| (c.sandbox_uid, c.sandbox_gid))
        .unwrap_or((65534, 65534));
    let scratch = std::env::temp_dir().join(format!("warden-doctor-{}", std::process::id()));
    let selftest = match std::env::current_exe() {
        Ok(exe) => {
            let _ = std::fs::create_dir_all(&scratch);
            let exec = SupervisedExecutor::new(Launcher::new(exe), Isolation::Sandbox);
            let etc = scratch.join("etc");
            let r = match warden_sandbox::prepare_etc(&etc) {
                Ok(()) => sandbox_self_test(&exec, &scratch, &etc, uid, gid).await,
                Err(e) => Err(format!("prepare /etc: {e}")),
            };
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

fn git_check() -> Check {
    match std::process::Command::new("git").arg("--version").output() {
        Ok(o) if o.status.success() => Check {
            check: "git".into(),
            status: Status::Pass,
            detail: String::from_utf8_lossy(&o.stdout).trim().to_string(),
            fix: None,
        },
        _ => Check {
            check: "git".into(),
            status: Status::Warn,
            detail: "git not found: repository job types cannot run".into(),
            fix: Some("install git".into()),
        },
    }
}
