//! The kernel calls that build the job's filesystem, behind a small trait: [`Linux`] makes
//! them; a recording implementation (in tests) lists them, so that the order of the setup
//! steps is unit-tested without root. Each call returns `Err(step)` naming what failed, with
//! errno, so that setup failures read `sandbox_setup_failed: <step>: <errno>`.

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

impl From<StepError> for io::Error {
    fn from(e: StepError) -> io::Error {
        io::Error::other(e.0)
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

/// The calls that change the job's mount namespace and its files. Reads of the host (what
/// exists, what a link points to) are made directly: they change nothing.
pub trait Kernel {
    fn mount(
        &mut self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> Step;
    /// Sets mount attributes on `target` and every mount below it (`mount_setattr`, ≥ 5.12).
    fn set_mount_attrs(&mut self, target: &Path, attrs: u64) -> Step;
    fn mkdir(&mut self, path: &Path) -> Step;
    /// Creates an empty file (a mount point for a file bind).
    fn touch(&mut self, path: &Path) -> Step;
    /// Creates a new file (never through a link, never an existing one) holding `data`.
    fn write_new(&mut self, path: &Path, data: &[u8], mode: u32) -> Step;
    fn symlink(&mut self, target: &Path, at: &Path) -> Step;
    fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> Step;
    fn chmod(&mut self, path: &Path, mode: u32) -> Step;
    fn chdir(&mut self, path: &Path) -> Step;
    /// `pivot_root(".", ".")`: the current directory becomes `/`, the old root stacked on it.
    fn pivot_root_here(&mut self) -> Step;
    /// `umount2(path, MNT_DETACH)`.
    fn detach(&mut self, path: &Path) -> Step;
    /// Whether the filesystem at `path` reports itself read-only (`statvfs`).
    fn is_read_only(&mut self, path: &Path) -> Step<bool>;
    /// Binds `src` at `dst` through an idmapped mount whose ids are those of the user
    /// namespace `userns` (`open_tree` clone, `mount_setattr(MOUNT_ATTR_IDMAP)`, `move_mount`).
    fn idmapped_bind(&mut self, src: &Path, dst: &Path, userns: std::os::fd::RawFd) -> Step;
}

/// The real kernel.
pub struct Linux;

impl Kernel for Linux {
    fn mount(
        &mut self,
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

    fn set_mount_attrs(&mut self, target: &Path, attrs: u64) -> Step {
        let attr = libc::mount_attr {
            attr_set: attrs,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let target_c = cstr(target)?;
        // SAFETY: target_c is a valid C string and attr a valid mount_attr of the size passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                target_c.as_ptr(),
                libc::AT_RECURSIVE,
                &attr as *const libc::mount_attr,
                std::mem::size_of::<libc::mount_attr>(),
            )
        };
        check(&format!("mount_setattr {}", target.display()), rc as i32)
    }

    fn mkdir(&mut self, path: &Path) -> Step {
        std::fs::create_dir_all(path).map_err(|e| fail(format!("mkdir {}", path.display()), e))
    }

    fn touch(&mut self, path: &Path) -> Step {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map(drop)
            .map_err(|e| fail(format!("create {}", path.display()), e))
    }

    fn write_new(&mut self, path: &Path, data: &[u8], mode: u32) -> Step {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .and_then(|mut f| f.write_all(data))
            .map_err(|e| fail(format!("write {}", path.display()), e))
    }

    fn symlink(&mut self, target: &Path, at: &Path) -> Step {
        std::os::unix::fs::symlink(target, at)
            .map_err(|e| fail(format!("symlink {}", at.display()), e))
    }

    fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> Step {
        let c = cstr(path)?;
        // SAFETY: c is a valid C string.
        check(&format!("chown {}", path.display()), unsafe {
            libc::chown(c.as_ptr(), uid, gid)
        })
    }

    fn chmod(&mut self, path: &Path, mode: u32) -> Step {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| fail(format!("chmod {}", path.display()), e))
    }

    fn chdir(&mut self, path: &Path) -> Step {
        std::env::set_current_dir(path).map_err(|e| fail(format!("chdir {}", path.display()), e))
    }

    fn pivot_root_here(&mut self) -> Step {
        let dot = cstr(Path::new("."))?;
        // SAFETY: pivot_root with "." for both arguments stacks the old root under the new one.
        let rc = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
        check("pivot_root", rc as i32)
    }

    fn detach(&mut self, path: &Path) -> Step {
        let c = cstr(path)?;
        // SAFETY: umount2 with a valid C string and a plain flag.
        check(&format!("detach {}", path.display()), unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH)
        })
    }

    fn is_read_only(&mut self, path: &Path) -> Step<bool> {
        let c = cstr(path)?;
        // SAFETY: statvfs writes into a zeroed struct of the right type; c is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: see above.
        check(&format!("statvfs {}", path.display()), unsafe {
            libc::statvfs(c.as_ptr(), &mut st)
        })?;
        Ok(st.f_flag & libc::ST_RDONLY != 0)
    }

    fn idmapped_bind(&mut self, src: &Path, dst: &Path, userns: std::os::fd::RawFd) -> Step {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        const OPEN_TREE_CLONE: libc::c_uint = 1;
        const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
        const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
        let (src_c, dst_c) = (cstr(src)?, cstr(dst)?);
        let step = format!("idmapped bind {} at {}", src.display(), dst.display());
        // SAFETY: open_tree with a valid C string; the result is checked before use.
        let tree = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                src_c.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
            )
        };
        check(&step, tree as i32)?;
        // SAFETY: a new descriptor, owned from here.
        let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
        let attr = libc::mount_attr {
            attr_set: MOUNT_ATTR_IDMAP,
            attr_clr: 0,
            propagation: 0,
            userns_fd: userns as u64,
        };
        // SAFETY: a valid descriptor, an empty C string, and a mount_attr of the size passed.
        check(&step, unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                &attr as *const libc::mount_attr,
                std::mem::size_of::<libc::mount_attr>(),
            )
        } as i32)?;
        // SAFETY: valid descriptors and C strings.
        check(&step, unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                dst_c.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        } as i32)
    }
}

#[cfg(test)]
pub(crate) mod recording {
    //! A [`Kernel`] that only writes down what it was asked to do.

    use std::path::{Path, PathBuf};

    use super::{Kernel, Step};

    #[derive(Debug, Clone, PartialEq)]
    pub(crate) enum Call {
        Mount {
            src: Option<PathBuf>,
            target: PathBuf,
            fstype: Option<String>,
            flags: libc::c_ulong,
            data: Option<String>,
        },
        SetAttrs(PathBuf, u64),
        Mkdir(PathBuf),
        Touch(PathBuf),
        /// A new file of this many bytes with this mode (never its contents: they may be secret).
        WriteNew(PathBuf, usize, u32),
        Symlink(PathBuf, PathBuf),
        Chown(PathBuf, u32, u32),
        Chmod(PathBuf, u32),
        Chdir(PathBuf),
        PivotRoot,
        Detach(PathBuf),
        CheckReadOnly(PathBuf),
        IdmappedBind(PathBuf, PathBuf),
    }

    #[derive(Default)]
    pub(crate) struct Recorder {
        pub calls: Vec<Call>,
    }

    impl Kernel for Recorder {
        fn mount(
            &mut self,
            src: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags: libc::c_ulong,
            data: Option<&str>,
        ) -> Step {
            self.calls.push(Call::Mount {
                src: src.map(Path::to_path_buf),
                target: target.to_path_buf(),
                fstype: fstype.map(str::to_string),
                flags,
                data: data.map(str::to_string),
            });
            Ok(())
        }
        fn set_mount_attrs(&mut self, target: &Path, attrs: u64) -> Step {
            self.calls.push(Call::SetAttrs(target.to_path_buf(), attrs));
            Ok(())
        }
        fn mkdir(&mut self, path: &Path) -> Step {
            self.calls.push(Call::Mkdir(path.to_path_buf()));
            Ok(())
        }
        fn touch(&mut self, path: &Path) -> Step {
            self.calls.push(Call::Touch(path.to_path_buf()));
            Ok(())
        }
        fn write_new(&mut self, path: &Path, data: &[u8], mode: u32) -> Step {
            self.calls
                .push(Call::WriteNew(path.to_path_buf(), data.len(), mode));
            Ok(())
        }
        fn symlink(&mut self, target: &Path, at: &Path) -> Step {
            self.calls
                .push(Call::Symlink(target.to_path_buf(), at.to_path_buf()));
            Ok(())
        }
        fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> Step {
            self.calls.push(Call::Chown(path.to_path_buf(), uid, gid));
            Ok(())
        }
        fn chmod(&mut self, path: &Path, mode: u32) -> Step {
            self.calls.push(Call::Chmod(path.to_path_buf(), mode));
            Ok(())
        }
        fn chdir(&mut self, path: &Path) -> Step {
            self.calls.push(Call::Chdir(path.to_path_buf()));
            Ok(())
        }
        fn pivot_root_here(&mut self) -> Step {
            self.calls.push(Call::PivotRoot);
            Ok(())
        }
        fn detach(&mut self, path: &Path) -> Step {
            self.calls.push(Call::Detach(path.to_path_buf()));
            Ok(())
        }
        fn is_read_only(&mut self, path: &Path) -> Step<bool> {
            self.calls.push(Call::CheckReadOnly(path.to_path_buf()));
            Ok(true)
        }
        fn idmapped_bind(&mut self, src: &Path, dst: &Path, _userns: i32) -> Step {
            self.calls
                .push(Call::IdmappedBind(src.to_path_buf(), dst.to_path_buf()));
            Ok(())
        }
    }
}
