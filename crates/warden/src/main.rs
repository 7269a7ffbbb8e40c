//! The `warden` binary: sets up error reporting and hands over to [`warden::main`].

fn main() {
    // The zygote that forks each job's supervisor is this same binary; it must start before
    // anything else exists in the process (no threads, no runtime, no logging).
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(warden_sandbox::ZYGOTE_ARG))
    {
        warden_sandbox::zygote::main();
    }
    // A review job's bundle maker, run by the worker inside the job's sandbox.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(warden_worker::review::ARG))
    {
        std::process::exit(warden_worker::review::main());
    }
    // A suites job's runner, run by the worker inside the job's sandbox.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(warden_worker::suites::ARG))
    {
        std::process::exit(warden_worker::suites::main());
    }
    std::process::exit(warden::main());
}
