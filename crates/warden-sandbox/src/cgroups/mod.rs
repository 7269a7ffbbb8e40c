//! Per-job cgroups: memory (without swap), processes and CPU bandwidth, on a pure cgroup v2
//! hierarchy or on the v1 `memory`, `pids` and `cpu` hierarchies of a hybrid host.
//!
//! Where the jobs' cgroups go is decided once, when a worker starts ([`CgroupHome::establish`]):
//! - v2, warden in the root cgroup (root on a host without systemd): `/sys/fs/cgroup/warden`.
//! - v2, warden in a cgroup of its own it may write (systemd `Delegate=yes`, or
//!   `systemd-run --user --scope -p Delegate=yes` for a rootless warden): warden moves itself
//!   into the leaf `warden-main` (the "no internal processes" rule: a cgroup that hands
//!   controllers to its children holds no process itself) and makes each job's cgroup beside it.
//! - v1: `<hierarchy>/warden` in each of `memory`, `pids` and `cpu`.
//!
//! On v2 the job's init is cloned straight into its cgroup (`CLONE_INTO_CGROUP`: no migration,
//! no global lock); on v1 it moves itself in through `tasks`.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod home;

pub use home::CgroupHome;

const CGROUP_FS: &str = "/sys/fs/cgroup";

/// The leaf a delegated warden moves itself into.
pub const SELF_LEAF: &str = "warden-main";

/// Controllers warden enables for its jobs on v2, when the host offers them (`io` only
/// accounts: warden sets no I/O limit).
const V2_CONTROLLERS: &[&str] = &["memory", "pids", "cpu", "io"];

/// The CPU bandwidth period warden uses (the kernel's default, 100 ms).
const CPU_PERIOD_US: u64 = 100_000;

/// Which cgroup layout the host has (for `warden doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Unified hierarchy at `/sys/fs/cgroup` with these controllers available.
    V2 {
        controllers: Vec<String>,
    },
    /// Separate v1 hierarchies (possibly beside an empty v2 one).
    V1 {
        memory: bool,
        pids: bool,
        cpu: bool,
    },
    None,
}

impl CgroupLayout {
    pub fn detect() -> CgroupLayout {
        let root = Path::new(CGROUP_FS);
        if let Ok(c) = fs::read_to_string(root.join("cgroup.controllers")) {
            let controllers = c.split_whitespace().map(str::to_string).collect();
            return CgroupLayout::V2 { controllers };
        }
        let (memory, pids, cpu) = (v1_root("memory"), v1_root("pids"), v1_root("cpu"));
        if memory.is_none() && pids.is_none() && cpu.is_none() {
            CgroupLayout::None
        } else {
            CgroupLayout::V1 {
                memory: memory.is_some(),
                pids: pids.is_some(),
                cpu: cpu.is_some(),
            }
        }
    }

    pub fn describe(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        match self {
            CgroupLayout::V2 { controllers } => format!("v2 ({})", controllers.join(" ")),
            CgroupLayout::V1 { memory, pids, cpu } => format!(
                "v1 (memory: {}, pids: {}, cpu: {})",
                yes(*memory),
                yes(*pids),
                yes(*cpu)
            ),
            CgroupLayout::None => "none".into(),
        }
    }
}

/// A v1 hierarchy's mount point, when the host has it.
fn v1_root(name: &str) -> Option<PathBuf> {
    let p = Path::new(CGROUP_FS).join(name);
    p.join("cgroup.procs").exists().then_some(p)
}

/// The limits a job's cgroup enforces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CgroupLimits {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// CPU bandwidth in thousandths of a CPU (`500` is half a CPU).
    pub cpu_millis: Option<u64>,
}

impl CgroupLimits {
    fn wanted(&self) -> impl Iterator<Item = &'static str> {
        [
            ("memory", self.memory_bytes.is_some()),
            ("pids", self.pids.is_some()),
            ("cpu", self.cpu_millis.is_some()),
        ]
        .into_iter()
        .filter_map(|(c, on)| on.then_some(c))
    }
}

/// The CPU quota per [`CPU_PERIOD_US`] for `millis` thousandths of a CPU (at least 1 ms: the
/// kernel's floor).
pub fn cpu_quota_us(millis: u64) -> u64 {
    (millis.saturating_mul(CPU_PERIOD_US) / 1000).max(1000)
}

/// One job's cgroup(s), removed on drop.
#[derive(Debug)]
pub struct JobCgroup {
    /// Directories the job's processes are placed in (one for v2, one per v1 controller).
    dirs: Vec<PathBuf>,
    version: u8,
    memory_dir: Option<PathBuf>,
    pids_dir: Option<PathBuf>,
    cpu_dir: Option<PathBuf>,
}

/// What the cgroup saw when the job was over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupStats {
    pub oom_killed: bool,
    pub pids_max_hit: bool,
    pub peak_memory_bytes: Option<u64>,
    /// Time the job was held back by its CPU limit.
    pub cpu_throttled_us: Option<u64>,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// A `key value` line from a flat keyed file (`memory.events`, `pids.events`, `cpu.stat`).
fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl JobCgroup {
    /// Creates the job's cgroup `name` in `home` and sets the limits. A limit the home cannot
    /// enforce is an error, never silently dropped.
    pub fn create(home: &CgroupHome, name: &str, limits: CgroupLimits) -> io::Result<JobCgroup> {
        if let Some(missing) = limits.wanted().find(|c| !home.enforces(c)) {
            return Err(io::Error::other(format!(
                "a {missing} limit was asked for but this host's cgroups cannot enforce it ({})",
                home.describe()
            )));
        }
        let mut cg = JobCgroup {
            dirs: Vec::new(),
            version: home.version(),
            memory_dir: None,
            pids_dir: None,
            cpu_dir: None,
        };
        match home {
            CgroupHome::V2 {
                parent,
                controllers,
            } => {
                let dir = parent.join(name);
                fs::create_dir(&dir)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
                cg.dirs.push(dir.clone());
                let has = |c: &str| controllers.iter().any(|h| h == c);
                if has("memory") {
                    cg.memory_dir = Some(dir.clone());
                }
                if has("pids") {
                    cg.pids_dir = Some(dir.clone());
                }
                if has("cpu") {
                    cg.cpu_dir = Some(dir.clone());
                }
                if let Some(bytes) = limits.memory_bytes {
                    write(&dir.join("memory.max"), &bytes.to_string())?;
                    // Kernels without swap accounting have no such file: no swap to account.
                    let swap = dir.join("memory.swap.max");
                    if swap.exists() {
                        write(&swap, "0")?;
                    }
                    // An OOM kill takes the whole job, never one process of it.
                    write(&dir.join("memory.oom.group"), "1")?;
                }
                if let Some(n) = limits.pids {
                    write(&dir.join("pids.max"), &n.to_string())?;
                }
                if let Some(m) = limits.cpu_millis {
                    let line = format!("{} {CPU_PERIOD_US}", cpu_quota_us(m));
                    write(&dir.join("cpu.max"), &line)?;
                }
            }
            CgroupHome::V1 { memory, pids, cpu } => {
                let mut make = |parent: &Option<PathBuf>| -> io::Result<Option<PathBuf>> {
                    let Some(parent) = parent else {
                        return Ok(None);
                    };
                    let dir = parent.join(name);
                    fs::create_dir(&dir)
                        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
                    cg.dirs.push(dir.clone());
                    Ok(Some(dir))
                };
                let cpu = cpu
                    .as_ref()
                    .filter(|_| limits.cpu_millis.is_some())
                    .cloned();
                let (memory_dir, pids_dir, cpu_dir) = (make(memory)?, make(pids)?, make(&cpu)?);
                if let (Some(dir), Some(bytes)) = (&memory_dir, limits.memory_bytes) {
                    write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                    // No swap: memory+swap capped at the same value where swap is accounted.
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write(&memsw, &bytes.to_string())?;
                    } else {
                        write(&dir.join("memory.swappiness"), "0")?;
                    }
                }
                if let (Some(dir), Some(n)) = (&pids_dir, limits.pids) {
                    write(&dir.join("pids.max"), &n.to_string())?;
                }
                if let (Some(dir), Some(m)) = (&cpu_dir, limits.cpu_millis) {
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &cpu_quota_us(m).to_string())?;
                }
                (cg.memory_dir, cg.pids_dir, cg.cpu_dir) = (memory_dir, pids_dir, cpu_dir);
            }
            CgroupHome::Unavailable { .. } => {}
        }
        Ok(cg)
    }

    pub fn version(&self) -> u8 {
        self.version
    }

    /// The v2 cgroup's directory, opened for `clone3(CLONE_INTO_CGROUP)`.
    pub fn v2_fd(&self) -> Option<io::Result<OwnedFd>> {
        if self.version != 2 {
            return None;
        }
        let dir = self.dirs.first()?;
        Some(crate::fd::open_dir(dir))
    }

    /// The v1 directories a process joins by writing `0` to their `tasks` file.
    pub fn v1_dirs(&self) -> &[PathBuf] {
        if self.version == 1 { &self.dirs } else { &[] }
    }

    pub fn stats(&self) -> CgroupStats {
        let mut s = CgroupStats::default();
        if let Some(d) = &self.memory_dir {
            if self.version == 2 {
                s.oom_killed = keyed(&d.join("memory.events"), "oom_kill").unwrap_or(0) > 0;
                s.peak_memory_bytes = number(&d.join("memory.peak"));
            } else {
                s.oom_killed = keyed(&d.join("memory.oom_control"), "oom_kill").unwrap_or(0) > 0;
                s.peak_memory_bytes = number(&d.join("memory.max_usage_in_bytes"));
            }
        }
        if let Some(d) = &self.pids_dir {
            s.pids_max_hit = keyed(&d.join("pids.events"), "max").unwrap_or(0) > 0;
        }
        if let Some(d) = &self.cpu_dir {
            s.cpu_throttled_us = if self.version == 2 {
                keyed(&d.join("cpu.stat"), "throttled_usec")
            } else {
                keyed(&d.join("cpu.stat"), "throttled_time").map(|ns| ns / 1000)
            };
        }
        s
    }

    /// Kills everything still in the cgroup (v2 `cgroup.kill`; v1 by listing `cgroup.procs`).
    pub fn kill_all(&self) {
        for dir in &self.dirs {
            if self.version == 2 && fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                continue;
            }
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill with a pid read from the job's own cgroup and SIGKILL.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // The last processes may still be exiting: a few quick retries.
            for _ in 0..100 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                self.kill_all();
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quota_is_per_period_with_the_kernel_floor() {
        assert_eq!(cpu_quota_us(500), 50_000);
        assert_eq!(cpu_quota_us(2000), 200_000);
        assert_eq!(cpu_quota_us(1), 1000);
    }

    #[test]
    fn a_limit_the_home_cannot_enforce_is_refused() {
        let home = CgroupHome::Unavailable {
            why: "no delegation".into(),
        };
        let err = JobCgroup::create(
            &home,
            "x",
            CgroupLimits {
                memory_bytes: Some(1 << 20),
                ..CgroupLimits::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("memory limit"), "{err}");
        assert!(err.to_string().contains("no delegation"), "{err}");
        // Nothing asked: nothing to enforce, no error.
        assert!(JobCgroup::create(&home, "x", CgroupLimits::default()).is_ok());
    }

    #[test]
    fn enforces_follows_the_controllers() {
        let v2 = CgroupHome::V2 {
            parent: "/sys/fs/cgroup/warden".into(),
            controllers: vec!["memory".into(), "pids".into()],
        };
        assert!(v2.enforces("memory") && v2.enforces("pids") && !v2.enforces("cpu"));
        let v1 = CgroupHome::V1 {
            memory: None,
            pids: Some("/p".into()),
            cpu: Some("/c".into()),
        };
        assert!(!v1.enforces("memory") && v1.enforces("cpu"));
    }
}
