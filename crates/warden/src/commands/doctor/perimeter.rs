//! The configuration's perimeter: who may read its secret files, its token file and itself.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use warden_core::Config;
use warden_core::config::SecretSource;
use warden_sandbox::doctor::{Check, Status};
use warden_worker::secrets::check_file_mode;

fn file_check(what: &str, path: &Path) -> Check {
    let check = format!("{what} {}", path.display());
    match std::fs::metadata(path) {
        Err(e) => Check {
            check,
            status: Status::Fail,
            detail: e.to_string(),
            fix: Some("create the file, or fix the path in the configuration".into()),
        },
        Ok(m) => match check_file_mode(m.is_file(), m.uid(), m.mode()) {
            Ok(()) => Check {
                check,
                status: Status::Pass,
                detail: format!("mode {:04o}, owner uid {}", m.mode() & 0o7777, m.uid()),
                fix: None,
            },
            Err(problem) => Check {
                check,
                status: Status::Fail,
                detail: problem.clone(),
                fix: Some(format!(
                    "chown root {p} && chmod 600 {p} (warden refuses to start until then)",
                    p = path.display()
                )),
            },
        },
    }
}

pub fn checks(config: &Config, config_path: Option<&Path>) -> Vec<Check> {
    let mut out = Vec::new();
    for (name, source) in &config.secrets {
        if let SecretSource::File(path) = source {
            out.push(file_check(&format!("secret {name}:"), path));
        }
    }
    if let Some(path) = &config.worker_token_file {
        out.push(file_check("worker token file", path));
    }
    if let Some(path) = config_path
        && let Ok(m) = std::fs::metadata(path)
    {
        let mode = m.mode() & 0o7777;
        let (status, detail, fix) = if mode & 0o022 != 0 {
            (
                Status::Fail,
                format!("mode {mode:04o}: others may change it (and so which files are secrets)"),
                Some(format!("chmod go-w {}", path.display())),
            )
        } else if mode & 0o004 != 0 && !config.secrets.is_empty() {
            (
                Status::Warn,
                format!(
                    "mode {mode:04o}: anyone on this host can read which secrets exist and where"
                ),
                Some(format!("chmod o-r {}", path.display())),
            )
        } else {
            (Status::Pass, format!("mode {mode:04o}"), None)
        };
        out.push(Check {
            check: format!("config file {}", path.display()),
            status,
            detail,
            fix,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn secret_files_and_the_config_say_what_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("k");
        std::fs::write(&secret, "s3cret-value").unwrap();
        let cfg = dir.path().join("warden.yaml");
        let text = format!("secrets:\n  K: {{file: {}}}\n", secret.display());
        std::fs::write(&cfg, &text).unwrap();
        let config = Config::from_yaml_str(&text, "t").unwrap();
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        set(&secret, 0o644);
        set(&cfg, 0o666);
        let c = checks(&config, Some(&cfg));
        assert_eq!(c[0].status, Status::Fail, "{c:?}");
        assert!(c[0].fix.as_deref().unwrap().contains("chmod 600"));
        assert_eq!(c[1].status, Status::Fail);
        assert!(c[1].fix.as_deref().unwrap().contains("chmod go-w"));
        set(&secret, 0o400);
        set(&cfg, 0o644);
        let c = checks(&config, Some(&cfg));
        assert_eq!(
            (c[0].status, c[1].status),
            (Status::Pass, Status::Warn),
            "{c:?}"
        );
        set(&cfg, 0o600);
        assert_eq!(checks(&config, Some(&cfg))[1].status, Status::Pass);
        std::fs::remove_file(&secret).unwrap();
        assert_eq!(checks(&config, None)[0].status, Status::Fail);
    }
}
