//! `warden tools bundle`: the server's tools as an OpenAI-compatible function-spec bundle,
//! content-addressed (its SHA-256 in the file name) and deterministic.

use std::io::Write;

use warden_server::mcp::bundle;

use crate::cli::{ToolsArgs, ToolsCommand};
use crate::exit;

pub async fn run(args: ToolsArgs) -> i32 {
    let ToolsCommand::Bundle { out, version } = args.command;
    if let Err(e) = bundle::check_version(&version) {
        eprintln!("error: --{e}");
        return exit::USAGE;
    }
    let client = match crate::commands::job::connect(&args.client) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let types = match client.job_types().await {
        Ok(t) => t.job_types,
        Err(e) => {
            eprintln!("error: {e}");
            return if e.is_caller_error() {
                exit::USAGE
            } else {
                exit::UNAVAILABLE
            };
        }
    };
    let bytes = match bundle::build(&version, &types) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let digest = bundle::digest(&bytes);
    let path = out.join(format!("warden-tools-{version}-{digest}.json"));
    match std::fs::read(&path) {
        Ok(existing) if existing == bytes => {
            println!("{} (unchanged)", path.display());
            return exit::OK;
        }
        _ => {}
    }
    if let Err(e) = std::fs::create_dir_all(&out).and_then(|()| write_new(&path, &bytes)) {
        eprintln!("error: {}: {e}", path.display());
        return exit::UNAVAILABLE;
    }
    println!("{}", path.display());
    println!(
        "sha256 {digest}: {} tools ({} job types)",
        bytes_tools(&bytes),
        types.len()
    );
    exit::OK
}

/// Written whole under a temporary name, read-only, then renamed into place: a bundle is
/// never seen half-written, and is not edited afterwards.
fn write_new(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    f.set_permissions(std::fs::Permissions::from_mode(0o444))?;
    std::fs::rename(&tmp, path)
}

fn bytes_tools(bytes: &[u8]) -> usize {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v["tools"].as_array().map(Vec::len))
        .unwrap_or(0)
}
