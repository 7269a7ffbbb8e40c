//! `warden serve`.

use warden_core::Config;
use warden_core::config::Positive;

use crate::cli::ServeArgs;
use crate::exit;

/// The configuration file, or the built-in default without one.
pub fn read_config(path: Option<&std::path::Path>) -> Result<Config, String> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
            Config::from_yaml_str(&text, &path.display().to_string()).map_err(|e| e.to_string())
        }
        None => Ok(Config::builtin()),
    }
}

/// Loads the configuration (file or built-in default) and applies flag/env overrides.
pub fn load_config(args: &ServeArgs) -> Result<Config, String> {
    let mut config = read_config(args.config.as_deref())?;
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
    config
        .validate()
        .map_err(|e| format!("invalid configuration: {e}"))?;
    Ok(config)
}

pub async fn run(args: ServeArgs) -> i32 {
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot locate the warden binary to supervise jobs: {e}");
            return exit::UNAVAILABLE;
        }
    };
    let options = warden_server::serve::ServeOptions {
        database_url: args.database_url.clone(),
        database_pool: args.database_pool,
    };
    match warden_server::serve::run(config, exe, options).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                warden_server::serve::ServeError::Locked(_)
                | warden_server::serve::ServeError::Bind { .. }
                | warden_server::serve::ServeError::Config(_)
                | warden_server::serve::ServeError::Database(
                    warden_server::serve::OpenError::Url(_),
                ) => exit::USAGE,
                _ => exit::UNAVAILABLE,
            }
        }
    }
}
