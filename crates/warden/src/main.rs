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
    return_large_buffers();
    std::process::exit(warden::main());
}

/// glibc's allocator raises its mmap threshold each time a large buffer is freed, after which
/// buffers of log batches and reads (1–16 MiB) come from per-thread arenas that keep the memory
/// once freed: a server that stored one big log would hold hundreds of MiB from then on. A
/// fixed threshold keeps such buffers mapped and returns them on free; two arenas bound what
/// tokio's many blocking threads can hold.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn return_large_buffers() {
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread
    // exists (the zygote and the in-sandbox helpers above have already gone their own way).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_buffers() {}
