//! The job's seccomp policy, kept as reviewed data: every denied syscall says why.
//!
//! The policy is a deny list over a default of "allow": jobs run arbitrary test suites and
//! toolchains, so an allow list would break them in ways that are hard to predict, while the
//! calls below are the kernel's known attack surface and privileged operations that no test run
//! needs. Three filters are installed (seccomp stacks them; the strictest answer wins):
//!
//! 1. the deny list below → `EPERM` (a clear, catchable failure for the job);
//! 2. `clone3` → `ENOSYS`, so libc falls back to `clone`, whose flags filter 1 can inspect;
//! 3. the x32 ABI (syscall numbers with bit 30 set) → `EPERM`.
//!
//! Any syscall made through a non-native ABI (e.g. `int 0x80` i386 calls on x86_64) kills the
//! process: seccompiler checks the audit architecture first.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Which arguments make a call denied.
#[derive(Debug, Clone, Copy)]
pub enum When {
    Always,
    /// Argument `arg` (32-bit) equals one of the values.
    ArgIs(u8, &'static [u64]),
    /// Argument `arg` has any of these bits set (each listed mask is checked on its own).
    ArgHasBit(u8, &'static [u64]),
    /// Argument `arg` is none of the values (an allowlist: anything else is denied).
    ArgNotIn(u8, &'static [u64]),
    /// Every one of these comparisons holds.
    AllOf(&'static [Cmp]),
}

/// One comparison of a (32-bit) syscall argument.
#[derive(Debug, Clone, Copy)]
pub enum Cmp {
    Eq(u8, u64),
    Ne(u8, u64),
    /// `arg & mask == value`.
    MaskedEq(u8, u64, u64),
}

#[derive(Debug, Clone, Copy)]
pub struct Deny {
    /// libc's constant name, `SYS_<syscall>`.
    sym: &'static str,
    pub nr: i64,
    pub when: When,
    pub why: &'static str,
}

impl Deny {
    /// The syscall's name (`unshare`).
    pub fn name(&self) -> &'static str {
        self.sym.trim_start_matches("SYS_")
    }
}

const CLONE_NEW_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME
];

const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;

/// `deny!(SYS_name, when, why)`: the number comes from libc, the name from the constant.
macro_rules! deny {
    ($sys:ident, $when:expr, $why:expr) => {
        Deny {
            sym: stringify!($sys),
            nr: libc::$sys,
            when: $when,
            why: $why,
        }
    };
}

/// The deny list. Review every change: it is the job's view of the kernel.
pub const POLICY: &[Deny] = &[
    // Namespaces: a job must not build itself a new view of the system (and new user namespaces
    // are the usual first step of kernel exploits).
    deny!(
        SYS_unshare,
        When::Always,
        "new namespaces are warden's to create, not the job's"
    ),
    deny!(
        SYS_setns,
        When::Always,
        "joining another namespace escapes the job's view"
    ),
    deny!(
        SYS_clone,
        When::ArgHasBit(0, CLONE_NEW_FLAGS),
        "clone with CLONE_NEW* = unshare"
    ),
    // Mounts, old and new API: the job's filesystem view is fixed by warden.
    deny!(SYS_mount, When::Always, "the job's mounts are fixed"),
    deny!(
        SYS_umount2,
        When::Always,
        "unmounting could uncover what warden hid"
    ),
    deny!(SYS_pivot_root, When::Always, "the root is fixed"),
    deny!(
        SYS_chroot,
        When::Always,
        "no nested roots (and chroot tricks around Landlock)"
    ),
    deny!(SYS_move_mount, When::Always, "new mount API"),
    deny!(
        SYS_open_tree,
        When::Always,
        "new mount API: clones mount trees"
    ),
    deny!(SYS_fsopen, When::Always, "new mount API"),
    deny!(SYS_fsconfig, When::Always, "new mount API"),
    deny!(SYS_fsmount, When::Always, "new mount API"),
    deny!(SYS_fspick, When::Always, "new mount API"),
    deny!(
        SYS_mount_setattr,
        When::Always,
        "could clear read-only flags"
    ),
    // Reaching into other processes.
    deny!(
        SYS_ptrace,
        When::Always,
        "no debugging or injecting into any process"
    ),
    deny!(
        SYS_process_vm_readv,
        When::Always,
        "reads another process's memory"
    ),
    deny!(
        SYS_process_vm_writev,
        When::Always,
        "writes another process's memory"
    ),
    deny!(
        SYS_process_madvise,
        When::Always,
        "acts on another process's memory"
    ),
    deny!(
        SYS_pidfd_getfd,
        When::Always,
        "steals file descriptors from another process"
    ),
    deny!(
        SYS_kcmp,
        When::Always,
        "probes other processes' kernel objects"
    ),
    // Kernel keyrings: shared kernel state, a frequent exploit target.
    deny!(SYS_keyctl, When::Always, "kernel keyring"),
    deny!(SYS_add_key, When::Always, "kernel keyring"),
    deny!(SYS_request_key, When::Always, "kernel keyring"),
    // Large kernel attack surface no test needs.
    deny!(
        SYS_bpf,
        When::Always,
        "eBPF: verifier bugs are a classic escape"
    ),
    deny!(
        SYS_perf_event_open,
        When::Always,
        "perf: side channels and kernel bugs"
    ),
    deny!(
        SYS_userfaultfd,
        When::Always,
        "used to win kernel races in exploits"
    ),
    deny!(
        SYS_io_uring_setup,
        When::Always,
        "io_uring bypasses seccomp for its operations"
    ),
    deny!(SYS_io_uring_enter, When::Always, "io_uring"),
    deny!(SYS_io_uring_register, When::Always, "io_uring"),
    // Changing the running kernel.
    deny!(SYS_kexec_load, When::Always, "replaces the kernel"),
    deny!(SYS_kexec_file_load, When::Always, "replaces the kernel"),
    deny!(SYS_init_module, When::Always, "loads kernel code"),
    deny!(SYS_finit_module, When::Always, "loads kernel code"),
    deny!(SYS_delete_module, When::Always, "unloads kernel code"),
    // File handles bypass path-based checks (the "shocker" container escape).
    deny!(
        SYS_open_by_handle_at,
        When::Always,
        "opens files by handle, around the mount view"
    ),
    deny!(
        SYS_name_to_handle_at,
        When::Always,
        "pairs with open_by_handle_at"
    ),
    // Terminal injection: push input into a terminal another process reads.
    deny!(
        SYS_ioctl,
        When::ArgIs(1, &[TIOCSTI, TIOCLINUX]),
        "TIOCSTI/TIOCLINUX inject terminal input"
    ),
    // Socket families: an allowlist. Everything else (AF_PACKET sniffs and forges frames,
    // AF_VSOCK reaches the hypervisor, AF_ALG/AF_TIPC/AF_RDS... are kernel attack surface and, on
    // distribution kernels, an unprivileged socket() can autoload their modules) is refused.
    deny!(
        SYS_socket,
        When::ArgNotIn(
            0,
            &[
                libc::AF_UNIX as u64,
                libc::AF_INET as u64,
                libc::AF_INET6 as u64,
                libc::AF_NETLINK as u64,
            ]
        ),
        "only unix, IPv4, IPv6 and (route) netlink sockets"
    ),
    deny!(
        SYS_socket,
        When::AllOf(&[
            Cmp::Eq(0, libc::AF_NETLINK as u64),
            Cmp::Ne(2, libc::NETLINK_ROUTE as u64)
        ]),
        "netlink for interface and route queries only: NETLINK_KOBJECT_UEVENT shows the host's \
         device events, the others are kernel interfaces no job needs"
    ),
    deny!(
        SYS_socket,
        When::AllOf(&[
            Cmp::Eq(0, libc::AF_INET as u64),
            Cmp::MaskedEq(1, 0xf, libc::SOCK_RAW as u64)
        ]),
        "raw IP sockets forge packets (raw netlink sockets, as `ip` opens them, are fine)"
    ),
    deny!(
        SYS_socket,
        When::AllOf(&[
            Cmp::Eq(0, libc::AF_INET6 as u64),
            Cmp::MaskedEq(1, 0xf, libc::SOCK_RAW as u64)
        ]),
        "raw IPv6 sockets forge packets"
    ),
    // Host-wide administration (mostly needs capabilities the job lacks; denied to be sure).
    deny!(SYS_acct, When::Always, "process accounting is host-wide"),
    deny!(SYS_swapon, When::Always, "host-wide"),
    deny!(SYS_swapoff, When::Always, "host-wide"),
    deny!(SYS_reboot, When::Always, "host-wide"),
    deny!(SYS_syslog, When::Always, "kernel log leaks addresses"),
    deny!(SYS_settimeofday, When::Always, "host clock"),
    deny!(SYS_clock_settime, When::Always, "host clock"),
    deny!(SYS_clock_adjtime, When::Always, "host clock"),
    deny!(SYS_quotactl, When::Always, "host-wide"),
    deny!(SYS_iopl, When::Always, "raw port I/O"),
    deny!(SYS_ioperm, When::Always, "raw port I/O"),
    deny!(
        SYS_modify_ldt,
        When::Always,
        "16-bit segments: old exploit surface"
    ),
    deny!(SYS_uselib, When::Always, "obsolete"),
    deny!(SYS_vhangup, When::Always, "terminal control"),
    deny!(
        SYS_fanotify_init,
        When::Always,
        "watches the whole filesystem"
    ),
    deny!(
        SYS_lookup_dcookie,
        When::Always,
        "obsolete profiling interface"
    ),
];

fn cond(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

fn arch() -> TargetArch {
    #[cfg(target_arch = "x86_64")]
    return TargetArch::x86_64;
    #[cfg(target_arch = "aarch64")]
    return TargetArch::aarch64;
}

/// The policy could not be compiled or installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SeccompError(pub String);

/// Denied unless a job type says `inotify: true`: on the shared read-only `/usr` and binds,
/// inotify would let a job watch what the host runs (which files it opens, and when).
#[cfg(target_arch = "x86_64")]
const INOTIFY: &[i64] = &[libc::SYS_inotify_init, libc::SYS_inotify_init1];
#[cfg(target_arch = "aarch64")]
const INOTIFY: &[i64] = &[libc::SYS_inotify_init1];

/// Compiles the policy into the filters to install, in order; with `deny_inotify`, the
/// `inotify_init*` calls are denied too (in the same filter: no extra cost per syscall).
pub fn compile(deny_inotify: bool) -> Result<Vec<BpfProgram>, SeccompError> {
    let err = |e: seccompiler::BackendError| SeccompError(e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    if deny_inotify {
        for nr in INOTIFY {
            rules.insert(*nr, Vec::new());
        }
    }
    for d in POLICY {
        let entry = rules.entry(d.nr).or_default();
        match d.when {
            When::Always => {}
            When::ArgIs(arg, values) => {
                for v in values {
                    entry.push(
                        SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, *v).map_err(err)?])
                            .map_err(err)?,
                    );
                }
            }
            When::ArgHasBit(arg, bits) => {
                for b in bits {
                    let c = cond(arg, SeccompCmpOp::MaskedEq(*b), *b).map_err(err)?;
                    entry.push(SeccompRule::new(vec![c]).map_err(err)?);
                }
            }
            When::ArgNotIn(arg, allowed) => {
                let conds = allowed
                    .iter()
                    .map(|v| cond(arg, SeccompCmpOp::Ne, *v).map_err(err))
                    .collect::<Result<Vec<_>, _>>()?;
                entry.push(SeccompRule::new(conds).map_err(err)?);
            }
            When::AllOf(cmps) => {
                let conds = cmps
                    .iter()
                    .map(|c| match *c {
                        Cmp::Eq(arg, v) => cond(arg, SeccompCmpOp::Eq, v),
                        Cmp::Ne(arg, v) => cond(arg, SeccompCmpOp::Ne, v),
                        Cmp::MaskedEq(arg, mask, v) => cond(arg, SeccompCmpOp::MaskedEq(mask), v),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(err)?;
                entry.push(SeccompRule::new(conds).map_err(err)?);
            }
        }
    }
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch(),
    )
    .map_err(err)?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch(),
    )
    .map_err(err)?;
    let mut out: Vec<BpfProgram> = Vec::new();
    for f in [deny, clone3] {
        out.push(
            f.try_into()
                .map_err(|e: seccompiler::BackendError| SeccompError(e.to_string()))?,
        );
    }
    out.push(x32_filter());
    Ok(out)
}

/// On x86_64, syscall numbers with bit 30 set are the x32 ABI: same audit arch, different table.
fn x32_filter() -> BpfProgram {
    use seccompiler::sock_filter;
    const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const BPF_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const X32_BIT: u32 = 0x4000_0000;
    let ret_errno = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    vec![
        // A = seccomp_data.nr (offset 0)
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // if A >= X32_BIT goto deny else goto allow
        sock_filter {
            code: BPF_JGE_K,
            jt: 0,
            jf: 1,
            k: X32_BIT,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: ret_errno,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ]
}

/// The compiled policy (with or without inotify), computed once per process (the zygote does
/// both before forking).
pub fn compiled(deny_inotify: bool) -> Result<&'static [BpfProgram], SeccompError> {
    type Filters = std::sync::OnceLock<Result<Vec<BpfProgram>, SeccompError>>;
    static WITHOUT_INOTIFY: Filters = std::sync::OnceLock::new();
    static WITH_INOTIFY: Filters = std::sync::OnceLock::new();
    let (cell, deny) = if deny_inotify {
        (&WITHOUT_INOTIFY, true)
    } else {
        (&WITH_INOTIFY, false)
    };
    cell.get_or_init(|| compile(deny))
        .as_ref()
        .map(Vec::as_slice)
        .map_err(Clone::clone)
}

/// Installs the filters on the calling thread. Needs `no_new_privs` (or CAP_SYS_ADMIN) first.
pub fn install(filters: &[BpfProgram]) -> Result<(), SeccompError> {
    for f in filters {
        seccompiler::apply_filter(f).map_err(|e| SeccompError(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_compiles_and_covers_the_required_calls() {
        let filters = compile(true).unwrap();
        assert_eq!(filters.len(), 3);
        for name in [
            "unshare",
            "setns",
            "mount",
            "pivot_root",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "open_by_handle_at",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsmount",
            "fspick",
        ] {
            assert!(
                POLICY.iter().any(|d| d.name() == name),
                "{name} missing from the policy"
            );
        }
        assert!(POLICY.iter().all(|d| !d.why.is_empty()));
    }
}
