//! `warden config …`: contexts in the client configuration.

use crate::cli::{ConfigArgs, ConfigCommand, OutputFormat};
use crate::clientconfig::{self, ClientConfig, Context};
use crate::{exit, output};

pub fn run(args: ConfigArgs) -> i32 {
    let path = clientconfig::path(args.config.as_deref());
    let mut config = match ClientConfig::load(&path) {
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
        } => {
            if !["http://", "https://", "grpc://"]
                .iter()
                .any(|s| server.starts_with(s))
            {
                eprintln!(
                    "error: --server {server:?} must start with http://, https:// or grpc://"
                );
                return exit::USAGE;
            }
            let token = match token_file {
                None => config.context(&name).and_then(|c| c.token.clone()),
                Some(f) => match std::fs::read_to_string(&f) {
                    Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
                    Ok(_) => {
                        eprintln!("error: token file {} is empty", f.display());
                        return exit::USAGE;
                    }
                    Err(e) => {
                        eprintln!("error: cannot read token file {}: {e}", f.display());
                        return exit::USAGE;
                    }
                },
            };
            config.upsert(Context {
                name: name.clone(),
                server,
                timeout_seconds,
                token,
            });
            config
                .save(&path)
                .map(|()| println!("context {name:?} saved in {}", path.display()))
        }
        ConfigCommand::UseContext { name } => {
            if config.context(&name).is_none() {
                eprintln!("error: no context named {name:?}; see `warden config get-contexts`");
                return exit::USAGE;
            }
            config.current_context = Some(name.clone());
            config
                .save(&path)
                .map(|()| println!("switched to context {name:?}"))
        }
        ConfigCommand::DeleteContext { name } => {
            if config.context(&name).is_none() {
                eprintln!("error: no context named {name:?}");
                return exit::USAGE;
            }
            config.contexts.retain(|c| c.name != name);
            if config.current_context.as_deref() == Some(name.as_str()) {
                config.current_context = config.contexts.first().map(|c| c.name.clone());
            }
            config
                .save(&path)
                .map(|()| println!("context {name:?} deleted"))
        }
        ConfigCommand::GetContexts if args.output == OutputFormat::Json => {
            // Tokens are secrets: never printed.
            let contexts: Vec<serde_json::Value> = config
                .contexts
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "name": c.name,
                        "server": c.server,
                        "timeoutSeconds": c.timeout_seconds,
                        "hasToken": c.token.is_some(),
                        "current": config.current_context.as_deref() == Some(c.name.as_str()),
                    })
                })
                .collect();
            output::json(&contexts);
            Ok(())
        }
        ConfigCommand::GetContexts => {
            let rows: Vec<Vec<String>> = config
                .contexts
                .iter()
                .map(|c| {
                    let current = config.current_context.as_deref() == Some(c.name.as_str());
                    vec![
                        if current { "*".into() } else { String::new() },
                        c.name.clone(),
                        c.server.clone(),
                        c.timeout_seconds.map(|t| t.to_string()).unwrap_or_default(),
                    ]
                })
                .collect();
            output::table(&["CURRENT", "NAME", "SERVER", "TIMEOUT"], &rows);
            Ok(())
        }
        ConfigCommand::CurrentContext => match &config.current_context {
            Some(c) if args.output == OutputFormat::Json => {
                output::json(&serde_json::json!({ "currentContext": c }));
                Ok(())
            }
            Some(c) => {
                println!("{c}");
                Ok(())
            }
            None => {
                eprintln!("error: no current context; add one with `warden config set-context`");
                return exit::USAGE;
            }
        },
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {e}");
            exit::UNAVAILABLE
        }
    }
}
