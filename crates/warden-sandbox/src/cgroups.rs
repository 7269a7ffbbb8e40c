//! Per-job cgroups for memory (without swap) and process limits, on cgroup v2 or on the v1
//! `memory` and `pids` hierarchies (hybrid hosts mount both). Whichever is present is used and
//! named on the job record.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Which cgroup layout the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Unified hierarchy at `/sys/fs/cgroup` with these controllers available.
    V2 {
        root: PathBuf,
        controllers: Vec<String>,
    },
    /// Separate v1 hierarchies (possibly beside an empty v2 one).
    V1 {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
    None,
}

const CGROUP_FS: &str = "/sys/fs/cgroup";

impl CgroupLayout {
    pub fn detect() -> CgroupLayout {
        let root = Path::new(CGROUP_FS);
        if let Ok(c) = fs::read_to_string(root.join("cgroup.controllers")) {
            let controllers = c.split_whitespace().map(str::to_string).collect();
            return CgroupLayout::V2 {
                root: root.to_path_buf(),
                controllers,
            };
        }
        let v1 = |name: &str| {
            let p = root.join(name);
            p.join("cgroup.procs").exists().then_some(p)
        };
        let (memory, pids) = (v1("memory"), v1("pids"));
        if memory.is_none() && pids.is_none() {
            CgroupLayout::None
        } else {
            CgroupLayout::V1 { memory, pids }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            CgroupLayout::V2 { controllers, .. } => format!("v2 ({})", controllers.join(" ")),
            CgroupLayout::V1 { memory, pids } => format!(
                "v1 (memory: {}, pids: {})",
                if memory.is_some() { "yes" } else { "no" },
                if pids.is_some() { "yes" } else { "no" }
            ),
            CgroupLayout::None => "none".into(),
        }
    }
}

/// The `warden` directory of each hierarchy a job's cgroup goes in, made if missing (on v2 with
/// the controllers enabled on the way down).
pub fn parents(layout: &CgroupLayout) -> io::Result<Vec<PathBuf>> {
    match layout {
        CgroupLayout::V2 { root, controllers } => {
            let parent = root.join("warden");
            fs::create_dir_all(&parent)?;
            let line: Vec<String> = ["memory", "pids"]
                .into_iter()
                .filter(|c| controllers.iter().any(|have| have == c))
                .map(|c| format!("+{c}"))
                .collect();
            for dir in [root.as_path(), parent.as_path()] {
                write(&dir.join("cgroup.subtree_control"), &line.join(" "))?;
            }
            Ok(vec![parent])
        }
        CgroupLayout::V1 { memory, pids } => {
            let mut out = Vec::new();
            for root in [memory, pids].into_iter().flatten() {
                let parent = root.join("warden");
                fs::create_dir_all(&parent)?;
                out.push(parent);
            }
            Ok(out)
        }
        CgroupLayout::None => Ok(Vec::new()),
    }
}

/// The file, relative to a parent from [`parents`], through which a single-threaded process
/// moves itself into the job's cgroup by writing `0`: v1 `tasks` (a thread moving itself skips
/// the global threadgroup lock and its RCU grace period), v2 `cgroup.procs`.
pub fn self_attach_name(layout: &CgroupLayout, name: &str) -> String {
    match layout {
        CgroupLayout::V2 { .. } => format!("{name}/cgroup.procs"),
        _ => format!("{name}/tasks"),
    }
}

/// One job's cgroup(s), removed on drop.
#[derive(Debug)]
pub struct JobCgroup {
    /// Directories the job's processes are placed in (one for v2, one per v1 controller).
    dirs: Vec<PathBuf>,
    version: u8,
    memory_dir: Option<PathBuf>,
    pids_dir: Option<PathBuf>,
}

/// What the cgroup saw when the job was over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupStats {
    pub oom_killed: bool,
    pub pids_max_hit: bool,
    pub peak_memory_bytes: Option<u64>,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// A `key value` line from a flat keyed file (`memory.events`, `pids.events`, `memory.oom_control`).
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
    /// Creates `warden/<name>` in each needed hierarchy and sets the limits. Limits that the
    /// layout cannot enforce are returned in the error, never silently dropped.
    pub fn create(
        layout: &CgroupLayout,
        name: &str,
        memory_bytes: Option<u64>,
        pids: Option<u64>,
    ) -> io::Result<JobCgroup> {
        let mut cg = JobCgroup {
            dirs: Vec::new(),
            version: 0,
            memory_dir: None,
            pids_dir: None,
        };
        match layout {
            CgroupLayout::V2 { root, controllers } => {
                cg.version = 2;
                let parent = root.join("warden");
                fs::create_dir_all(&parent)?;
                // Controllers must be enabled on every level above the job's cgroup.
                let wanted: Vec<&str> = ["memory", "pids"]
                    .into_iter()
                    .filter(|c| controllers.iter().any(|have| have == c))
                    .collect();
                for dir in [root.as_path(), parent.as_path()] {
                    let line: Vec<String> = wanted.iter().map(|c| format!("+{c}")).collect();
                    write(&dir.join("cgroup.subtree_control"), &line.join(" "))?;
                }
                let dir = parent.join(name);
                fs::create_dir(&dir)?;
                cg.dirs.push(dir.clone());
                if let Some(bytes) = memory_bytes {
                    write(&dir.join("memory.max"), &bytes.to_string())?;
                    write(&dir.join("memory.swap.max"), "0")?;
                }
                if let Some(n) = pids {
                    write(&dir.join("pids.max"), &n.to_string())?;
                }
                cg.memory_dir = wanted.contains(&"memory").then(|| dir.clone());
                cg.pids_dir = wanted.contains(&"pids").then_some(dir);
            }
            CgroupLayout::V1 {
                memory,
                pids: pids_root,
            } => {
                cg.version = 1;
                if let Some(root) = memory {
                    let dir = root.join("warden").join(name);
                    fs::create_dir_all(&dir)?;
                    cg.dirs.push(dir.clone());
                    if let Some(bytes) = memory_bytes {
                        write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                        // No swap: memory+swap capped at the same value where swap is accounted.
                        let memsw = dir.join("memory.memsw.limit_in_bytes");
                        if memsw.exists() {
                            write(&memsw, &bytes.to_string())?;
                        } else {
                            write(&dir.join("memory.swappiness"), "0")?;
                        }
                    }
                    cg.memory_dir = Some(dir);
                }
                if let Some(root) = pids_root {
                    let dir = root.join("warden").join(name);
                    fs::create_dir_all(&dir)?;
                    cg.dirs.push(dir.clone());
                    if let Some(n) = pids {
                        write(&dir.join("pids.max"), &n.to_string())?;
                    }
                    cg.pids_dir = Some(dir);
                }
            }
            CgroupLayout::None => {}
        }
        if memory_bytes.is_some() && cg.memory_dir.is_none() {
            return Err(io::Error::other(
                "memory limit requested but no memory cgroup controller",
            ));
        }
        if pids.is_some() && cg.pids_dir.is_none() {
            return Err(io::Error::other(
                "pids limit requested but no pids cgroup controller",
            ));
        }
        Ok(cg)
    }

    pub fn version(&self) -> u8 {
        self.version
    }

    /// Moves a process (and so everything it will start) into the job's cgroup(s).
    pub fn add(&self, pid: i32) -> io::Result<()> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
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
