//! Operator-defined secrets: read once at start from files (owned by root or warden's user,
//! mode 0600 or 0400, else warden refuses to start and names the file) or from warden's own
//! environment; kept in memory only; handed to the jobs whose type is granted them, as files
//! in `/run/secrets` or as environment variables; masked in those jobs' logs.

mod mask;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use warden_core::config::SecretSource;
use warden_core::{Config, JobType};
use warden_sandbox::SecretFile;

pub use mask::{MIN_SECRET_LEN, MaskSet, Masker};

/// The largest secret: a key, a token, a certificate — not a file store.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// A secret's value. `Debug` shows its length only.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue({} bytes)", self.0.len())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("secret {name}: file {path}: {problem}")]
    File {
        name: String,
        path: PathBuf,
        problem: String,
    },
    #[error("secret {name}: environment variable {var} is not set (or not UTF-8)")]
    Env { name: String, var: String },
    #[error("{0}")]
    Login(String),
    #[error(
        "secret {name}: its value is {len} bytes; secrets are {MIN_SECRET_LEN} to \
         {MAX_SECRET_BYTES} bytes (shorter ones cannot be masked in logs without masking \
         ordinary text)"
    )]
    Size { name: String, len: usize },
}

/// Every secret of the configuration, loaded.
#[derive(Debug, Default, Clone)]
pub struct Secrets {
    values: BTreeMap<String, SecretValue>,
}

/// What one job gets.
#[derive(Default, Clone)]
pub struct JobSecrets {
    pub files: Vec<SecretFile>,
    pub env: Vec<(String, String)>,
    /// Names, for the audit trail.
    pub names: Vec<String>,
    pub mask: Option<Arc<MaskSet>>,
}

impl Secrets {
    /// One secret's value, by name.
    pub fn value(&self, name: &str) -> Option<&SecretValue> {
        self.values.get(name)
    }

    /// Reads every secret `config` defines; the first problem refuses the start.
    pub fn load(config: &Config) -> Result<Secrets, SecretError> {
        let mut values = BTreeMap::new();
        for (name, source) in &config.secrets {
            let value = match source {
                SecretSource::File(path) => read_file(name, path)?,
                SecretSource::Env(var) => std::env::var(var)
                    .map_err(|_| SecretError::Env {
                        name: name.clone(),
                        var: var.clone(),
                    })?
                    .into_bytes(),
            };
            if !(MIN_SECRET_LEN..=MAX_SECRET_BYTES).contains(&value.len()) {
                return Err(SecretError::Size {
                    name: name.clone(),
                    len: value.len(),
                });
            }
            values.insert(name.clone(), SecretValue(value));
        }
        Ok(Secrets { values })
    }

    /// Hands `mirrors` the logins of the private https repositories `config` lists (each names
    /// a secret defined here: the configuration's own check saw to that).
    pub fn give_logins(
        &self,
        config: &Config,
        mirrors: &warden_repo::Mirrors,
    ) -> Result<(), SecretError> {
        let logins = config.repos.iter().filter_map(|(name, repo)| {
            let c = repo.credential.as_ref()?;
            let value = self.values.get(&c.secret)?;
            Some((
                name.as_str(),
                c.username.as_str(),
                c.secret.as_str(),
                value.bytes(),
            ))
        });
        mirrors.set_logins(logins).map_err(SecretError::Login)
    }

    /// Opens the image cache of `config` (`images.dir`, default `<data_dir>/images`), with the
    /// passwords of the registries that have a credential.
    pub fn open_images(
        &self,
        config: &Config,
        data_dir: &std::path::Path,
    ) -> std::io::Result<warden_image::Images> {
        let passwords = config
            .images
            .registries
            .iter()
            .filter_map(|(host, r)| {
                let c = r.credential.as_ref()?;
                let value = self.values.get(&c.secret)?;
                Some((
                    host.clone(),
                    String::from_utf8_lossy(value.bytes())
                        .trim_end()
                        .to_string(),
                ))
            })
            .collect();
        let dir = config
            .images
            .dir
            .clone()
            .unwrap_or_else(|| data_dir.join("images"));
        warden_image::Images::open(dir, config.images.clone(), passwords)
    }

    /// What a control plane sends a remote worker for a job of `job_type`: the file secrets
    /// (name, value) and the variables (variable, name, value).
    #[allow(clippy::type_complexity)]
    pub fn wire_grant(
        &self,
        job_type: &JobType,
    ) -> Result<(Vec<(String, Vec<u8>)>, Vec<(String, String, Vec<u8>)>), String> {
        let get = |name: &String| {
            self.values
                .get(name)
                .map(|v| v.0.clone())
                .ok_or_else(|| format!("secret {name:?} is not defined"))
        };
        let files = job_type
            .secrets
            .iter()
            .map(|n| Ok((n.clone(), get(n)?)))
            .collect::<Result<_, String>>()?;
        let env = job_type
            .secret_env
            .iter()
            .map(|(var, n)| Ok((var.clone(), n.clone(), get(n)?)))
            .collect::<Result<_, String>>()?;
        Ok((files, env))
    }

    /// The secrets `job_type` is granted. `Err` names a grant this worker cannot honour (a
    /// secret it does not have, or one to deliver as a variable that is not text).
    pub fn for_job(&self, job_type: &JobType) -> Result<JobSecrets, String> {
        let mut out = JobSecrets::default();
        let get = |name: &String| {
            self.values
                .get(name)
                .ok_or_else(|| format!("secret {name:?} is not defined on this worker"))
        };
        for name in &job_type.secrets {
            out.files.push(SecretFile {
                name: name.clone(),
                value: get(name)?.0.clone(),
            });
            out.names.push(name.clone());
        }
        for (var, name) in &job_type.secret_env {
            let text = std::str::from_utf8(get(name)?.bytes())
                .ok()
                .filter(|t| !t.contains('\0'))
                .ok_or_else(|| {
                    format!("secret {name:?} is not text without NUL: it cannot be variable {var}")
                })?;
            out.env.push((var.clone(), text.to_string()));
            if !out.names.contains(name) {
                out.names.push(name.clone());
            }
        }
        let pairs: Vec<(&str, &[u8])> = out
            .names
            .iter()
            .filter_map(|n| self.values.get(n).map(|v| (n.as_str(), v.bytes())))
            .collect();
        out.mask = MaskSet::new(&pairs).map(Arc::new);
        Ok(out)
    }
}

impl JobSecrets {
    /// What a control plane sent with a remote job: files and variables (name → value).
    pub fn from_wire(
        files: Vec<(String, Vec<u8>)>,
        env: Vec<(String, String, Vec<u8>)>,
    ) -> Result<JobSecrets, String> {
        let mut out = JobSecrets::default();
        let mut values: Vec<(String, Vec<u8>)> = Vec::new();
        for (name, value) in files {
            if !warden_core::config::is_valid_secret_name(&name) {
                return Err(format!("secret name {name:?} is invalid"));
            }
            values.push((name.clone(), value.clone()));
            out.names.push(name.clone());
            out.files.push(SecretFile { name, value });
        }
        for (var, name, value) in env {
            if !warden_core::params::is_valid_param_name(&var)
                || warden_core::params::is_reserved(&var)
                || !warden_core::config::is_valid_secret_name(&name)
            {
                return Err(format!("secret variable {var:?} ({name:?}) is invalid"));
            }
            let text = String::from_utf8(value.clone())
                .ok()
                .filter(|t| !t.contains('\0'))
                .ok_or_else(|| format!("secret variable {var} is not text"))?;
            if !out.names.contains(&name) {
                out.names.push(name.clone());
            }
            values.push((name, value));
            out.env.push((var, text));
        }
        if values.iter().any(|(_, v)| v.len() < MIN_SECRET_LEN) {
            return Err("a secret shorter than 6 bytes cannot be masked".into());
        }
        let pairs: Vec<(&str, &[u8])> = values
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        out.mask = MaskSet::new(&pairs).map(Arc::new);
        Ok(out)
    }
}

/// A secret file: a regular file owned by root or by warden's user, readable by its owner
/// alone (0600 or 0400). One trailing newline is not part of the value.
fn read_file(name: &str, path: &Path) -> Result<Vec<u8>, SecretError> {
    let bad = |problem: String| SecretError::File {
        name: name.into(),
        path: path.into(),
        problem,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    check_file_mode(meta.is_file(), meta.uid(), meta.mode()).map_err(bad)?;
    let mut value = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    if value.ends_with(b"\r\n") {
        value.truncate(value.len() - 2);
    } else if value.ends_with(b"\n") {
        value.pop();
    }
    Ok(value)
}

/// Whether a file may hold a secret; the error says what to run.
pub fn check_file_mode(is_file: bool, uid: u32, mode: u32) -> Result<(), String> {
    let me = rustix::process::geteuid().as_raw();
    if !is_file {
        return Err("not a regular file".into());
    }
    if uid != 0 && uid != me {
        return Err(format!(
            "owned by uid {uid}, not by root or warden's user (uid {me}): chown {me} it"
        ));
    }
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {:04o} lets others read it: chmod 600 it (or 400)",
            mode & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn config(dir: &Path, mode: u32, text: &[u8]) -> Config {
        let f = dir.join("key");
        std::fs::write(&f, text).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
        let yaml = format!(
            "secrets:\n  API_KEY: {{file: {}}}\njob_types:\n  t:\n    argv: [/bin/true]\n    \
             timeout_s: 5\n    secrets: [API_KEY]\n    secret_env: {{KEY: API_KEY}}\n",
            f.display()
        );
        Config::from_yaml_str(&yaml, "t.yaml").unwrap()
    }

    #[test]
    fn files_are_read_trimmed_and_granted() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), 0o600, b"s3cret-value\n");
        let secrets = Secrets::load(&c).unwrap();
        let job = secrets.for_job(c.job_type("t").unwrap()).unwrap();
        assert_eq!(job.files[0].value, b"s3cret-value");
        assert_eq!(job.env, [("KEY".to_string(), "s3cret-value".to_string())]);
        assert_eq!(job.names, ["API_KEY"]);
        assert!(job.mask.is_some());
        assert!(!format!("{secrets:?}").contains("s3cret"));
    }

    #[test]
    fn unsafe_files_and_bad_values_refuse_the_start_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        for (mode, text, fragment) in [
            (0o644, b"s3cret-value" as &[u8], "chmod 600"),
            (0o640, b"s3cret-value", "mode 0640"),
            (0o600, b"short", "6 to 65536 bytes"),
        ] {
            let c = config(dir.path(), mode, text);
            let err = Secrets::load(&c).unwrap_err().to_string();
            assert!(err.contains(fragment), "{mode:o}: {err}");
            assert!(err.contains(&dir.path().display().to_string()) || fragment.contains("bytes"));
        }
        assert!(
            check_file_mode(false, 0, 0o600)
                .unwrap_err()
                .contains("regular")
        );
        assert!(
            check_file_mode(true, 4242, 0o600)
                .unwrap_err()
                .contains("chown")
        );
        let missing = Config::from_yaml_str(
            "secrets:\n  K: {file: /nonexistent/warden-secret}\n",
            "t.yaml",
        )
        .unwrap();
        let err = Secrets::load(&missing).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/warden-secret"), "{err}");
        let env = Config::from_yaml_str("secrets:\n  K: {env: WARDEN_TEST_UNSET_VAR}\n", "t.yaml")
            .unwrap();
        let err = Secrets::load(&env).unwrap_err().to_string();
        assert!(err.contains("WARDEN_TEST_UNSET_VAR"), "{err}");
    }
}
