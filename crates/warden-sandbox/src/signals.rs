//! The job starts with the signal state of a fresh process: nothing blocked, nothing ignored.
//! The supervisor blocks SIGTERM/SIGINT/SIGHUP/SIGQUIT and ignores SIGPIPE for itself, and both
//! survive fork and `execve`: without this reset a job's SIGTERM handler would never run (cancel
//! would always end in SIGKILL) and `yes | head -1` would print "Broken pipe".

/// Unblocks every signal and sets every disposition back to the default. Async-signal-safe
/// (it runs between fork and exec).
pub(crate) fn reset() {
    // SAFETY: sigset_t and sigaction are plain data, initialised before use; sigprocmask and
    // sigaction only read them. SIGKILL and SIGSTOP cannot be changed and are skipped; numbers
    // the kernel refuses (the C library's reserved real-time signals) leave an error we ignore.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut sa.sa_mask);
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    }
}
