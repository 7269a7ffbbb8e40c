//! Thin, checked wrappers over the raw system calls the sandbox uses. Each returns
//! `Err(step)` naming what failed, with errno, so that setup failures read
//! `sandbox_setup_failed: <step>: <errno>`.

use std::ffi::CString;
use std::io;
use std::path::Path;

/// A setup step that failed, and why: `<step>: <error>`.
#[derive(Debug)]
pub struct StepError(pub String);

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Step<T = ()> = Result<T, StepError>;

pub fn fail(step: impl AsRef<str>, err: io::Error) -> StepError {
    StepError(format!("{}: {err}", step.as_ref()))
}

pub fn check(step: &str, rc: libc::c_int) -> Step {
    if rc < 0 {
        Err(fail(step, io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

pub fn cstr(p: &Path) -> Step<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        fail(
            format!("path {}", p.display()),
            io::Error::from(io::ErrorKind::InvalidInput),
        )
    })
}

pub fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Step {
    let step = format!("mount {}", target.display());
    let src = src.map(cstr).transpose()?;
    let target_c = cstr(target)?;
    let fstype = fstype.map(|s| CString::new(s).unwrap_or_default());
    let data = data.map(|s| CString::new(s).unwrap_or_default());
    // SAFETY: every pointer is either null or a NUL-terminated string alive for the call.
    let rc = unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    };
    check(&step, rc)
}
