//! `warden config …`: contexts in the client configuration.

use std::path::{Path, PathBuf};

use crate::cli::{ConfigArgs, ConfigCommand, OutputFormat};
use crate::clientconfig::{self, ClientConfig, Context};
use crate::{exit, output, tables};

/// Why a config command did not do what was asked.
enum Failed {
    /// The caller's mistake: exit 2.
    Usage(String),
    /// The file could not be written: exit 8.
    Io(String),
}

pub fn run(args: ConfigArgs) -> i32 {
    let path = clientconfig::path(args.config.as_deref());
    let config = match ClientConfig::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let result = match args.command {
        ConfigCommand::SetContext {
            name,
            server,
            timeout_seconds,
            token_file,
            ca,
        } => set_context(config, &path, name, server, timeout_seconds, token_file, ca),
        ConfigCommand::UseContext { name } => use_context(config, &path, name),
        ConfigCommand::DeleteContext { name } => delete_context(config, &path, name),
        ConfigCommand::GetContexts => {
            get_contexts(&config, args.output);
            Ok(())
        }
        ConfigCommand::CurrentContext => current_context(&config, args.output),
    };
    match result {
        Ok(()) => exit::OK,
        Err(Failed::Usage(e)) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
        Err(Failed::Io(e)) => {
            eprintln!("error: {e}");
            exit::UNAVAILABLE
        }
    }
}

fn save(config: &ClientConfig, path: &Path) -> Result<(), Failed> {
    config.save(path).map_err(|e| Failed::Io(e.to_string()))
}

fn set_context(
    mut config: ClientConfig,
    path: &Path,
    name: String,
    server: String,
    timeout_seconds: Option<u64>,
    token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<(), Failed> {
    if !["http://", "https://", "grpc://", "grpcs://"]
        .iter()
        .any(|s| server.starts_with(s))
    {
        return Err(Failed::Usage(format!(
            "--server {server:?} must start with http://, https://, grpc:// or grpcs://"
        )));
    }
    let absolute = |p: PathBuf| -> Result<PathBuf, Failed> {
        std::path::absolute(&p).map_err(|e| Failed::Usage(format!("{}: {e}", p.display())))
    };
    let existing = config.context(&name).cloned();
    let token_file = match token_file {
        Some(f) => {
            // Checked now, read at each use: the file may be rotated in place.
            clientconfig::read_token_file(&f).map_err(|e| Failed::Usage(e.to_string()))?;
            Some(absolute(f)?)
        }
        None => existing.as_ref().and_then(|c| c.token_file.clone()),
    };
    let ca_file = match ca {
        Some(f) => {
            std::fs::read(&f).map_err(|e| Failed::Usage(format!("--ca {}: {e}", f.display())))?;
            Some(absolute(f)?)
        }
        None => existing.as_ref().and_then(|c| c.ca_file.clone()),
    };
    config.upsert(Context {
        name: name.clone(),
        server,
        timeout_seconds,
        token: if token_file.is_some() {
            None
        } else {
            existing.and_then(|c| c.token)
        },
        token_file,
        ca_file,
    });
    save(&config, path)?;
    println!("context {name:?} saved in {}", path.display());
    Ok(())
}

fn use_context(mut config: ClientConfig, path: &Path, name: String) -> Result<(), Failed> {
    if config.context(&name).is_none() {
        return Err(Failed::Usage(format!(
            "no context named {name:?}; see `warden config get-contexts`"
        )));
    }
    config.current_context = Some(name.clone());
    save(&config, path)?;
    println!("switched to context {name:?}");
    Ok(())
}

fn delete_context(mut config: ClientConfig, path: &Path, name: String) -> Result<(), Failed> {
    if config.context(&name).is_none() {
        return Err(Failed::Usage(format!("no context named {name:?}")));
    }
    config.contexts.retain(|c| c.name != name);
    if config.current_context.as_deref() == Some(name.as_str()) {
        config.current_context = config.contexts.first().map(|c| c.name.clone());
    }
    save(&config, path)?;
    println!("context {name:?} deleted");
    Ok(())
}

fn get_contexts(config: &ClientConfig, format: OutputFormat) {
    if format == OutputFormat::Table {
        print!("{}", tables::contexts(config));
        return;
    }
    // Tokens are secrets: never printed.
    let contexts: Vec<serde_json::Value> = config
        .contexts
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "server": c.server,
                "timeoutSeconds": c.timeout_seconds,
                "hasToken": c.token.is_some() || c.token_file.is_some(),
                "tokenFile": c.token_file,
                "caFile": c.ca_file,
                "current": config.current_context.as_deref() == Some(c.name.as_str()),
            })
        })
        .collect();
    output::json(&contexts);
}

fn current_context(config: &ClientConfig, format: OutputFormat) -> Result<(), Failed> {
    match &config.current_context {
        Some(c) if format == OutputFormat::Json => {
            output::json(&serde_json::json!({ "currentContext": c }));
            Ok(())
        }
        Some(c) => {
            println!("{c}");
            Ok(())
        }
        None => Err(Failed::Usage(
            "no current context; add one with `warden config set-context`".into(),
        )),
    }
}
