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
        release_heap: Some(release_heap),
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

/// Returns the allocator's free memory to the system: the pages freed since (in every arena,
/// not only at the top of the heap). Run by the server once it goes idle.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_heap() {
    // SAFETY: malloc_trim only walks the allocator's own free lists under its locks; it is
    // safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_heap() {}
