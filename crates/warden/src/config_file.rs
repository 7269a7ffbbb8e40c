//! Reading the YAML configuration `serve`, `worker` and `doctor` run with.

use std::path::{Path, PathBuf};

use warden_core::config::Positive;
use warden_core::{Config, ConfigError, InvalidConfig};

use crate::cli::ServeArgs;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(#[from] ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(#[from] InvalidConfig),
}

/// The configuration file, or the built-in default without one.
pub fn read(path: Option<&Path>) -> Result<Config, LoadError> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(Config::from_yaml_str(&text, &path.display().to_string())?)
        }
        None => Ok(Config::builtin()),
    }
}

/// The server's configuration (file or built-in default) with flag/env overrides applied.
pub fn for_serve(args: &ServeArgs) -> Result<Config, LoadError> {
    let mut config = read(args.config.as_deref())?;
    if let Some(d) = &args.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(s) = args.slots {
        config.slots = Positive(s);
    }
    if let Some(g) = args.grpc_listen {
        config.grpc_listen = g;
    }
    config.validate()?;
    Ok(config)
}
