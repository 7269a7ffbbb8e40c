//! The client's kubeconfig-style configuration: `$HOME/.warden/config` (or `WARDEN_CONFIG`,
//! or `--config`), holding named contexts and the current one.
//!
//! ```yaml
//! currentContext: local
//! contexts:
//!   - name: local
//!     server: http://127.0.0.1:8080
//!     timeoutSeconds: 30
//!     tokenFile: /home/me/.warden/local.token   # optional; read at each use
//!     caFile: /etc/warden/ca.pem                # optional; for https:// and grpcs://
//! ```
//!
//! (`token:` inline is still read, from files written by earlier versions; the file is kept
//! mode 0600.)

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";
pub const DEFAULT_TIMEOUT_S: u64 = 30;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<Context>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Context {
    pub name: String,
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A file holding the API token, read each time the context is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signed the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no context named {0:?}; see `warden config get-contexts`")]
    NoSuchContext(String),
    #[error("token file {path}: {message}")]
    TokenFile { path: PathBuf, message: String },
}

/// The token in `path`: its contents, surrounding whitespace trimmed, not empty.
pub fn read_token_file(path: &Path) -> Result<String, ClientConfigError> {
    let bad = |message: String| ClientConfigError::TokenFile {
        path: path.into(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(bad("the file is empty".into()));
    }
    if token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(bad("a token has no spaces or control characters".into()));
    }
    Ok(token.to_string())
}

/// The file to use: `--config`/`WARDEN_CONFIG` (already merged by clap), else the default.
pub fn path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".warden").join("config")
}

impl ClientConfig {
    /// Loads the file; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<ClientConfig, ClientConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ClientConfig::default());
            }
            Err(source) => {
                return Err(ClientConfigError::Io {
                    path: path.into(),
                    source,
                });
            }
        };
        if text.trim().is_empty() {
            return Ok(ClientConfig::default());
        }
        let config: ClientConfig =
            serde_norway::from_str(&text).map_err(|e| ClientConfigError::Invalid {
                path: path.into(),
                message: e.to_string(),
            })?;
        for (i, c) in config.contexts.iter().enumerate() {
            if config.contexts[..i].iter().any(|o| o.name == c.name) {
                return Err(ClientConfigError::Invalid {
                    path: path.into(),
                    message: format!("context {:?} is defined twice", c.name),
                });
            }
            if c.timeout_seconds == Some(0) {
                return Err(ClientConfigError::Invalid {
                    path: path.into(),
                    message: format!("context {:?}: timeoutSeconds must be at least 1", c.name),
                });
            }
        }
        if let Some(cur) = &config.current_context
            && !config.contexts.iter().any(|c| &c.name == cur)
        {
            return Err(ClientConfigError::Invalid {
                path: path.into(),
                message: format!("currentContext {cur:?} names no context"),
            });
        }
        Ok(config)
    }

    /// Writes the file atomically with mode 0600 (it may hold tokens).
    pub fn save(&self, path: &Path) -> Result<(), ClientConfigError> {
        let io = |source| ClientConfigError::Io {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).map_err(io)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        let text = serde_norway::to_string(self).map_err(|e| ClientConfigError::Invalid {
            path: path.into(),
            message: e.to_string(),
        })?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub fn context(&self, name: &str) -> Option<&Context> {
        self.contexts.iter().find(|c| c.name == name)
    }

    pub fn upsert(&mut self, ctx: Context) {
        match self.contexts.iter_mut().find(|c| c.name == ctx.name) {
            Some(existing) => *existing = ctx,
            None => self.contexts.push(ctx),
        }
        if self.current_context.is_none() {
            self.current_context = self.contexts.first().map(|c| c.name.clone());
        }
    }
}

/// Where and how to connect, after flags, the chosen context and defaults are merged.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub server: String,
    pub timeout_s: u64,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
}

/// Flags that override the context.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides<'a> {
    pub server: Option<&'a str>,
    pub timeout: Option<u64>,
    pub token_file: Option<&'a Path>,
    pub ca_file: Option<&'a Path>,
}

pub fn resolve(
    config: &ClientConfig,
    context: Option<&str>,
    flags: Overrides<'_>,
) -> Result<Resolved, ClientConfigError> {
    let Overrides {
        server,
        timeout,
        token_file,
        ca_file,
    } = flags;
    let ctx = match context.or(config.current_context.as_deref()) {
        Some(name) => Some(
            config
                .context(name)
                .ok_or_else(|| ClientConfigError::NoSuchContext(name.into()))?,
        ),
        None => None,
    };
    Ok(Resolved {
        server: server
            .map(str::to_string)
            .or_else(|| ctx.map(|c| c.server.clone()))
            .unwrap_or_else(|| DEFAULT_SERVER.to_string()),
        timeout_s: timeout
            .or(ctx.and_then(|c| c.timeout_seconds))
            .unwrap_or(DEFAULT_TIMEOUT_S),
        token: match token_file.or(ctx.and_then(|c| c.token_file.as_deref())) {
            Some(f) => Some(read_token_file(f)?),
            None => ctx.and_then(|c| c.token.clone()),
        },
        ca_file: ca_file
            .map(Path::to_path_buf)
            .or_else(|| ctx.and_then(|c| c.ca_file.clone())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(name: &str, server: &str) -> Context {
        Context {
            name: name.into(),
            server: server.into(),
            timeout_seconds: Some(5),
            token: None,
            token_file: None,
            ca_file: None,
        }
    }

    #[test]
    fn flags_beat_context_beats_default() {
        let mut c = ClientConfig::default();
        let none = Overrides::default();
        assert_eq!(resolve(&c, None, none).unwrap().server, DEFAULT_SERVER);
        c.upsert(ctx("a", "http://a:1"));
        c.upsert(ctx("b", "http://b:2"));
        assert_eq!(c.current_context.as_deref(), Some("a"));
        let r = resolve(&c, None, none).unwrap();
        assert_eq!((r.server.as_str(), r.timeout_s), ("http://a:1", 5));
        assert_eq!(resolve(&c, Some("b"), none).unwrap().server, "http://b:2");
        let flags = Overrides {
            server: Some("http://x"),
            timeout: Some(9),
            ..none
        };
        assert_eq!(resolve(&c, Some("b"), flags).unwrap().timeout_s, 9);
        assert!(matches!(
            resolve(&c, Some("zz"), none),
            Err(ClientConfigError::NoSuchContext(_))
        ));
    }

    #[test]
    fn token_files_are_read_at_use_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        let mut c = ClientConfig::default();
        c.upsert(Context {
            token_file: Some(f.clone()),
            token: Some("inline-is-second".into()),
            ..ctx("a", "http://a:1")
        });
        let none = Overrides::default();
        let missing = resolve(&c, None, none).unwrap_err().to_string();
        assert!(missing.contains("tok"), "{missing}");
        for (text, fragment) in [("  \n", "empty"), ("two words", "no spaces")] {
            std::fs::write(&f, text).unwrap();
            let err = resolve(&c, None, none).unwrap_err().to_string();
            assert!(err.contains(fragment), "{text:?}: {err}");
        }
        std::fs::write(&f, "wdn_abc\n").unwrap();
        assert_eq!(
            resolve(&c, None, none).unwrap().token.as_deref(),
            Some("wdn_abc")
        );
        let other = dir.path().join("other");
        std::fs::write(&other, "wdn_flag").unwrap();
        let flags = Overrides {
            token_file: Some(&other),
            ..none
        };
        assert_eq!(
            resolve(&c, None, flags).unwrap().token.as_deref(),
            Some("wdn_flag")
        );
    }

    #[test]
    fn save_and_load_round_trip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("config");
        let mut c = ClientConfig::default();
        c.upsert(Context {
            token: Some("s3cret".into()),
            ..ctx("a", "http://a:1")
        });
        c.save(&p).unwrap();
        assert_eq!(ClientConfig::load(&p).unwrap(), c);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("currentContext: a"), "{text}");
    }

    #[test]
    fn bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        for (text, fragment) in [
            (
                "contexts: [{name: a, server: x, bogus: 1}]",
                "unknown field `bogus`",
            ),
            ("currentContext: nope\ncontexts: []", "names no context"),
            (
                "contexts: [{name: a, server: x}, {name: a, server: y}]",
                "defined twice",
            ),
            (
                "contexts: [{name: a, server: x, timeoutSeconds: 0}]",
                "at least 1",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let err = ClientConfig::load(&p).unwrap_err().to_string();
            assert!(err.contains(fragment), "{text:?}: {err}");
        }
    }
}
