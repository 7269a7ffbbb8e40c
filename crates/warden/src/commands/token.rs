//! `warden token …` and `warden audit`: the perimeter from the command line (admin).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use warden_api::{CreateTokenRequest, CreateTokenResponse};
use warden_client::{AuditQuery, Client, ClientError};

use crate::cli::{AuditArgs, OutputFormat, TokenArgs, TokenCommand};
use crate::commands::job::connect;
use crate::{exit, output, tables};

pub async fn run(args: TokenArgs) -> i32 {
    let fmt = args.client.output;
    if let TokenCommand::Create {
        serve_config: Some(config),
        database_url,
        tenant,
        scopes,
        expires,
        name,
        out,
    } = args.command
    {
        let req = request(tenant, scopes, expires, name);
        return match create_direct(&config, database_url.as_deref(), req).await {
            Ok(created) => show_created(&created, out.as_deref(), fmt),
            Err(e) => {
                eprintln!("error: {e}");
                exit::USAGE
            }
        };
    }
    let client = match connect(&args.client) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = match args.command {
        TokenCommand::Create {
            tenant,
            scopes,
            expires,
            name,
            out,
            ..
        } => match client
            .create_token(&request(tenant, scopes, expires, name))
            .await
        {
            Ok(created) => Ok(show_created(&created, out.as_deref(), fmt)),
            Err(e) => Err(e),
        },
        TokenCommand::List { tenant } => list(&client, tenant.as_deref(), fmt).await,
        TokenCommand::Revoke { id } => match client.revoke_token(&id).await {
            Ok(t) => {
                match fmt {
                    OutputFormat::Json => output::json(&t),
                    OutputFormat::Table => println!("token {} revoked", t.id),
                }
                Ok(exit::OK)
            }
            Err(e) => Err(e),
        },
    };
    finish(result)
}

fn finish(result: Result<i32, ClientError>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            if e.is_caller_error() {
                exit::USAGE
            } else {
                exit::UNAVAILABLE
            }
        }
    }
}

fn request(
    tenant: String,
    scopes: Vec<String>,
    expires: Option<std::time::Duration>,
    name: Option<String>,
) -> CreateTokenRequest {
    CreateTokenRequest {
        tenant,
        scopes,
        expires_in_s: expires.map(|d| d.as_secs().max(1)),
        name,
    }
}

/// Prints the new token once (or writes it, mode 0600, to `out`), with what it allows.
fn show_created(created: &CreateTokenResponse, out: Option<&Path>, fmt: OutputFormat) -> i32 {
    if let Some(path) = out {
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(format!("{}\n", created.token).as_bytes()));
        if let Err(e) = written {
            eprintln!(
                "error: --out {}: {e} (the token was created as {}; revoke it and try again)",
                path.display(),
                created.info.id
            );
            return exit::USAGE;
        }
    }
    match fmt {
        OutputFormat::Json if out.is_some() => output::json(&created.info),
        OutputFormat::Json => output::json(created),
        OutputFormat::Table => {
            print!("{}", tables::tokens(std::slice::from_ref(&created.info)));
            match out {
                Some(p) => println!("token written to {} (mode 0600)", p.display()),
                None => {
                    println!("token (shown once; keep it in a file of mode 0600):");
                    println!("{}", created.token);
                }
            }
        }
    }
    exit::OK
}

/// On the server's host, without the API: opens the store the server's configuration names
/// (to create the first admin token of a server that trusts no one on loopback).
async fn create_direct(
    config: &Path,
    database_url: Option<&str>,
    req: CreateTokenRequest,
) -> Result<CreateTokenResponse, String> {
    use warden_store::Store;
    let config = crate::config_file::read(Some(config)).map_err(|e| e.to_string())?;
    let (token, record) =
        warden_server::service::admin::mint_record(&config, req).map_err(|e| e.message)?;
    let store: Box<dyn Store> = match database_url {
        Some(url) => Box::new(
            warden_store_postgres::PgStore::connect(url, 2)
                .await
                .map_err(|e| e.to_string())?,
        ),
        None => {
            let data = warden_worker::DataDir::new(&config.data_dir);
            let db = data.database();
            if !db.exists() {
                return Err(format!(
                    "{} does not exist: start `warden serve` with this configuration once first",
                    db.display()
                ));
            }
            Box::new(warden_store_sqlite::SqliteStore::open(&db).map_err(|e| e.to_string())?)
        }
    };
    store
        .create_token(record.clone())
        .await
        .map_err(|e| e.to_string())?;
    let mut entry = warden_store::AuditEntry {
        at: warden_store::now_millis(),
        action: "token.create".into(),
        tenant: Some(record.tenant.clone()),
        target: Some(record.id.clone()),
        outcome: "ok".into(),
        ..Default::default()
    };
    entry.detail = Some("created on the server host with --serve-config".into());
    store
        .append_audit(vec![entry])
        .await
        .map_err(|e| e.to_string())?;
    Ok(CreateTokenResponse {
        token,
        info: warden_server::service::admin::token_view(&record),
    })
}

async fn list(
    client: &Client,
    tenant: Option<&str>,
    fmt: OutputFormat,
) -> Result<i32, ClientError> {
    let tokens = client.list_tokens(tenant).await?;
    match fmt {
        OutputFormat::Json => output::json(&tokens),
        OutputFormat::Table => print!("{}", tables::tokens(&tokens.tokens)),
    }
    Ok(exit::OK)
}

pub async fn audit(args: AuditArgs) -> i32 {
    let client = match connect(&args.client) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let q = AuditQuery {
        tenant: args.tenant,
        action: args.action,
        limit: args.limit,
        cursor: args.cursor,
    };
    finish(match client.audit(&q).await {
        Ok(resp) => {
            match args.client.output {
                OutputFormat::Json => output::json(&resp),
                OutputFormat::Table => print!("{}", tables::audit(&resp)),
            }
            Ok(exit::OK)
        }
        Err(e) => Err(e),
    })
}
