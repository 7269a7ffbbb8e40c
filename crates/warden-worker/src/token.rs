//! The shared secret between control plane and workers: `WARDEN_WORKER_TOKEN`, else a file.
//! Never taken from argv (it would show in `ps`).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read worker token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the worker token must be at least 16 characters without spaces or control characters \
         (e.g. `openssl rand -hex 32`)"
    )]
    Weak,
}

/// The worker token: `WARDEN_WORKER_TOKEN`, else the contents of `file` (surrounding whitespace
/// trimmed). `Ok(None)` when neither is set.
pub fn read_worker_token(file: Option<&Path>) -> Result<Option<String>, TokenError> {
    let token = match std::env::var("WARDEN_WORKER_TOKEN") {
        Ok(t) => t,
        Err(_) => match file {
            Some(f) => std::fs::read_to_string(f).map_err(|source| TokenError::Read {
                path: f.to_path_buf(),
                source,
            })?,
            None => return Ok(None),
        },
    };
    let token = token.trim().to_string();
    if token.len() < 16 || token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(TokenError::Weak);
    }
    Ok(Some(token))
}
