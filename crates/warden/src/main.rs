//! The `warden` binary: sets up error reporting and hands over to [`warden::cli`].

fn main() {
    // The zygote that forks each job's supervisor is this same binary; it must start before
    // anything else exists in the process (no threads, no runtime, no logging).
    match std::env::args_os()
        .nth(1)
        .as_deref()
        .and_then(|a| a.to_str())
    {
        Some(warden_sandbox::ZYGOTE_ARG) => warden_sandbox::zygote::main(),
        _ => {}
    }
    std::process::exit(warden::cli::main());
}
