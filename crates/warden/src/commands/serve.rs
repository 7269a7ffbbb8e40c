//! `warden serve`: arguments to a running control plane (see `warden_server::serve`).

use crate::cli::ServeArgs;
use crate::{config_file, exit};

pub async fn run(args: ServeArgs) -> i32 {
    let config = match config_file::for_serve(&args) {
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
    let stop = crate::signal::stop_requested();
    match warden_server::serve::run(config, exe, options, stop).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {e}");
            if e.is_usage() {
                exit::USAGE
            } else {
                exit::UNAVAILABLE
            }
        }
    }
}
