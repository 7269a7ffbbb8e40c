//! Where a worker's jobs get their cgroups ([`CgroupHome`]), decided once at start: the v2
//! root's `warden` directory, a cgroup delegated to warden (warden moving itself into a leaf),
//! or the v1 hierarchies; and, for `warden doctor`, the same decision made without writing.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{CGROUP_FS, CgroupLimits, SELF_LEAF, V2_CONTROLLERS, v1_root, write};

/// Where this worker makes its jobs' cgroups, decided once at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupHome {
    /// Jobs' cgroups are made in `parent`, whose `subtree_control` enables `controllers`.
    V2 {
        parent: PathBuf,
        controllers: Vec<String>,
    },
    /// One `warden` directory per v1 hierarchy present.
    V1 {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
        cpu: Option<PathBuf>,
    },
    /// No cgroup warden may use; why, and the command that would give one.
    Unavailable { why: String },
}

impl CgroupHome {
    /// Finds (and on v2 prepares) the place for jobs' cgroups. May move the calling process
    /// into the leaf [`SELF_LEAF`] of its own delegated cgroup: call it before starting any
    /// helper process.
    pub fn establish() -> CgroupHome {
        let root = Path::new(CGROUP_FS);
        let result = if root.join("cgroup.controllers").exists() {
            establish_v2(root)
        } else {
            establish_v1()
        };
        result.unwrap_or_else(|why| CgroupHome::Unavailable { why })
    }

    /// What [`CgroupHome::establish`] would find, without changing anything (for `warden
    /// doctor`): write access stands in for the writes themselves.
    pub fn inspect() -> CgroupHome {
        let root = Path::new(CGROUP_FS);
        if !root.join("cgroup.controllers").exists() {
            let dirs: Vec<Option<PathBuf>> = ["memory", "pids", "cpu"]
                .iter()
                .map(|n| v1_root(n).filter(|r| writable(r)).map(|r| r.join("warden")))
                .collect();
            if dirs.iter().all(Option::is_none) {
                return CgroupHome::Unavailable {
                    why: "cgroup v1 hierarchies are writable by root only".into(),
                };
            }
            return CgroupHome::V1 {
                memory: dirs[0].clone(),
                pids: dirs[1].clone(),
                cpu: dirs[2].clone(),
            };
        }
        let (parent, above) = match v2_parent(root) {
            Ok(p) => p,
            Err(why) => return CgroupHome::Unavailable { why },
        };
        // Where warden must write: the root (for `warden`) or its own delegated cgroup.
        let check = above.unwrap_or_else(|| parent.clone());
        if !writable(&check.join("cgroup.subtree_control"))
            || !writable(&check.join("cgroup.procs"))
        {
            return CgroupHome::Unavailable {
                why: format!(
                    "warden's cgroup {} is not delegated to uid {}",
                    check.display(),
                    // SAFETY: geteuid has no arguments.
                    unsafe { libc::geteuid() }
                ),
            };
        }
        match available(&check) {
            Ok(c) => CgroupHome::V2 {
                parent,
                controllers: c.into_iter().map(str::to_string).collect(),
            },
            Err(why) => CgroupHome::Unavailable { why },
        }
    }

    /// One line for logs and `warden doctor`.
    pub fn describe(&self) -> String {
        match self {
            CgroupHome::V2 {
                parent,
                controllers,
            } => format!("v2 in {} ({})", parent.display(), controllers.join(" ")),
            CgroupHome::V1 { memory, pids, cpu } => {
                let names: Vec<&str> = [("memory", memory), ("pids", pids), ("cpu", cpu)]
                    .into_iter()
                    .filter_map(|(n, p)| p.as_ref().map(|_| n))
                    .collect();
                format!("v1 ({})", names.join(" "))
            }
            CgroupHome::Unavailable { why } => format!("none: {why}"),
        }
    }

    /// Whether a limit on `controller` (`memory`, `pids`, `cpu`) can be enforced.
    pub fn enforces(&self, controller: &str) -> bool {
        match self {
            CgroupHome::V2 { controllers, .. } => controllers.iter().any(|c| c == controller),
            CgroupHome::V1 { memory, pids, cpu } => match controller {
                "memory" => memory.is_some(),
                "pids" => pids.is_some(),
                "cpu" => cpu.is_some(),
                _ => false,
            },
            CgroupHome::Unavailable { .. } => false,
        }
    }

    /// The v1 hierarchies' `warden` directories a job with these limits gets a cgroup in:
    /// memory and pids always (their verdicts and peak are read even without a limit), cpu
    /// only for a CPU limit (one hierarchy less per job otherwise). Empty on v2.
    pub fn v1_parents(&self, limits: &CgroupLimits) -> Vec<PathBuf> {
        match self {
            CgroupHome::V1 { memory, pids, cpu } => {
                let cpu = cpu.as_ref().filter(|_| limits.cpu_millis.is_some());
                [memory.as_ref(), pids.as_ref(), cpu]
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    pub(super) fn version(&self) -> u8 {
        match self {
            CgroupHome::V2 { .. } => 2,
            CgroupHome::V1 { .. } => 1,
            CgroupHome::Unavailable { .. } => 0,
        }
    }
}

/// The calling process's cgroup on the unified hierarchy (`0::/path`).
fn own_v2_cgroup() -> Result<PathBuf, String> {
    let text =
        fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim()))
        .ok_or_else(|| "/proc/self/cgroup has no unified (0::) entry".to_string())
}

/// The directory jobs' cgroups go in, and, when warden is in the root cgroup, that root (whose
/// controllers must be enabled too): `<root>/warden`, or warden's own cgroup (one up from
/// [`SELF_LEAF`] when warden already moved itself there).
fn v2_parent(root: &Path) -> Result<(PathBuf, Option<PathBuf>), String> {
    let own = own_v2_cgroup()?;
    let rel = own.strip_prefix("/").unwrap_or(&own);
    if rel.as_os_str().is_empty() {
        // The root cgroup may hold processes and children at once.
        return Ok((root.join("warden"), Some(root.to_path_buf())));
    }
    let mut dir = root.join(rel);
    if dir.file_name().is_some_and(|n| n == SELF_LEAF) {
        dir.pop();
    }
    Ok((dir, None))
}

fn establish_v2(root: &Path) -> Result<CgroupHome, String> {
    let (parent, above) = v2_parent(root)?;
    let ours = |what: &str, e: io::Error| -> String {
        let fix = if is_root() {
            "warden's own cgroup must be writable (systemd: Delegate=yes)".to_string()
        } else {
            "run warden in a cgroup delegated to its user: `systemd-run --user --scope -p Delegate=yes warden serve` \
             (or a systemd unit with Delegate=yes)"
                .to_string()
        };
        format!("{what} in {}: {e}; {fix}", parent.display())
    };
    if let Some(above) = &above {
        fs::create_dir_all(&parent).map_err(|e| ours("create", e))?;
        enable(above, &available(above)?).map_err(|e| ours("enable controllers", e))?;
    } else {
        let leaf = parent.join(SELF_LEAF);
        match fs::create_dir(&leaf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ours("create leaf", e)),
        }
        write(&leaf.join("cgroup.procs"), "0").map_err(|e| ours("move warden into its leaf", e))?;
    }
    let offered = available(&parent)?;
    enable(&parent, &offered).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            format!(
                "{} holds processes other than warden, so it cannot hand controllers to jobs: \
                 run warden in a cgroup of its own (systemd: Delegate=yes)",
                parent.display()
            )
        } else {
            ours("enable controllers", e)
        }
    })?;
    let controllers: Vec<String> = fs::read_to_string(parent.join("cgroup.subtree_control"))
        .map_err(|e| ours("read subtree_control", e))?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Ok(CgroupHome::V2 {
        parent,
        controllers,
    })
}

/// The controllers of [`V2_CONTROLLERS`] that `dir` offers its children.
fn available(dir: &Path) -> Result<Vec<&'static str>, String> {
    let have = fs::read_to_string(dir.join("cgroup.controllers"))
        .map_err(|e| format!("{}: {e}", dir.join("cgroup.controllers").display()))?;
    let have: Vec<&str> = have.split_whitespace().collect();
    Ok(V2_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| have.contains(c))
        .collect())
}

/// Enables each controller in `dir`'s `subtree_control` (one write: all or none).
fn enable(dir: &Path, controllers: &[&str]) -> io::Result<()> {
    if controllers.is_empty() {
        return Ok(());
    }
    let line: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    write(&dir.join("cgroup.subtree_control"), &line.join(" "))
}

fn establish_v1() -> Result<CgroupHome, String> {
    let make = |name: &str| -> Result<Option<PathBuf>, String> {
        let Some(root) = v1_root(name) else {
            return Ok(None);
        };
        let dir = root.join("warden");
        let refused = |e: String| {
            format!(
                "{}: {e}; a cgroup v1 host gives cgroups to root only (run warden as root, \
                 or boot with systemd.unified_cgroup_hierarchy=1 and delegate a v2 subtree)",
                dir.display()
            )
        };
        fs::create_dir_all(&dir).map_err(|e| refused(e.to_string()))?;
        if !writable(&dir) {
            return Err(refused("not writable".into()));
        }
        Ok(Some(dir))
    };
    let (memory, pids, cpu) = (make("memory")?, make("pids")?, make("cpu")?);
    if memory.is_none() && pids.is_none() && cpu.is_none() {
        return Err("no cgroup hierarchy is mounted at /sys/fs/cgroup".into());
    }
    Ok(CgroupHome::V1 { memory, pids, cpu })
}

/// Whether this process may write `p` (it may exist already, made by another user).
fn writable(p: &Path) -> bool {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        // SAFETY: access with a valid C string.
        .is_ok_and(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments.
    unsafe { libc::geteuid() == 0 }
}
