//! The hostile-job suite: each program tries one escape or exhaustion inside the real sandbox.
//! Every case asserts the job's exact safe outcome, then that a normal job still runs, that no
//! process of the hostile job survives, and that its scratch space and cgroup are gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use warden_api::{JobStatus, JobView, SubmitJobRequest};
use warden_client::Client;

use crate::support::*;

fn probe() -> PathBuf {
    let p = Path::new(WARDEN).with_file_name("warden-probe");
    assert!(
        p.exists(),
        "{} missing: build the workspace (cargo nextest run --workspace)",
        p.display()
    );
    p
}

/// The network every hostile job type gets, and its tier: the suite runs once with each.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Net {
    None,
    /// An egress allowlist: the job's namespace is the gateway's, served by warden.
    Egress,
    /// No network, and every job type `isolation: gvisor`.
    Gvisor,
}

fn config(dir: &Path, net: Net) -> PathBuf {
    let probe = probe();
    let bind = format!("binds: [{{host: {}, at: /opt/probe}}]", probe.display());
    let p = |mode: &str, limits: &str, timeout: u32| {
        format!(
            "    argv: [/opt/probe, {mode}]\n    {bind}\n    timeout_s: {timeout}\n    limits: {{{limits}}}\n"
        )
    };
    let sh = |script: &str, limits: &str, timeout: u32, params: &str| {
        let script = script.replace('\\', "\\\\").replace('"', "\\\"");
        format!(
            "    argv: [/bin/sh, -c, \"{script}\"]\n    timeout_s: {timeout}\n    limits: {{{limits}}}\n    allowed_params: [{params}]\n"
        )
    };
    let types = [
        (
            "inspect",
            p(
                if net == Net::Gvisor {
                    "inspect, gvisor"
                } else {
                    "inspect"
                },
                "",
                30,
            ),
        ),
        ("fork_bomb", p("fork-bomb", "pids: 32", 30)),
        ("malloc_bomb", p("malloc-bomb", "memory_mb: 64", 30)),
        ("mmap_bomb", p("mmap-bomb", "memory_mb: 64", 30)),
        ("memfd_bomb", p("memfd-bomb", "memory_mb: 64", 30)),
        (
            "python_bomb",
            sh(
                "echo kept > $ARTIFACT_DIR/before.txt; exec python3 -c 'b = bytearray(1 << 30); print(len(b))'",
                "memory_mb: 64",
                30,
                "",
            ),
        ),
        (
            "fill_tmp",
            sh(
                "head -c 64M /dev/zero > /tmp/f || { echo full; exit 3; }",
                "tmpfs_mb: 8",
                30,
                "",
            ),
        ),
        (
            "fill_shm",
            sh(
                "head -c 64M /dev/zero > /dev/shm/f || { echo full; exit 3; }",
                "tmpfs_mb: 8",
                30,
                "",
            ),
        ),
        (
            "fill_artifacts",
            sh(
                "exec head -c 8M /dev/zero > $ARTIFACT_DIR/big",
                "file_size_mb: 1",
                30,
                "",
            ),
        ),
        (
            "sparse_1tb",
            sh(
                "exec truncate -s 1T $ARTIFACT_DIR/sparse",
                "file_size_mb: 1",
                30,
                "",
            ),
        ),
        (
            "fill_artifacts_3g",
            sh(
                "head -c 3G /dev/zero > $ARTIFACT_DIR/big || { echo refused; exit 3; }",
                "artifacts_mb: 64, file_size_mb: 4096, memory_mb: 512",
                60,
                "",
            ),
        ),
        (
            "artifact_inodes",
            sh(
                "i=0; while true > $ARTIFACT_DIR/f$i 2>/dev/null; do i=$((i+1)); done; echo stopped at $i; exit 3",
                "artifacts_mb: 16",
                120,
                "",
            ),
        ),
        (
            "sparse_scratch",
            sh("exec truncate -s 1T /tmp/sparse", "", 30, ""),
        ),
        (
            "cpu_half",
            sh(
                "(while :; do :; done) & a=$!; (while :; do :; done) & b=$!; sleep 4; kill $a $b; wait; echo burned",
                "cpus: 0.5",
                60,
                "",
            ),
        ),
        ("cpu_seconds", sh("while :; do :; done", "cpu_s: 1", 60, "")),
        (
            "cpu_seconds_ignored",
            sh("trap '' XCPU; while :; do :; done", "cpu_s: 1", 60, ""),
        ),
        (
            "pids_fail",
            sh(
                "i=0; while [ $i -lt 64 ]; do sleep 30 & i=$((i+1)); done; echo never",
                "pids: 8",
                60,
                "",
            ),
        ),
        ("self_segv", sh("kill -SEGV $$", "", 30, "")),
        (
            "no_program",
            "    argv: [/nonexistent/tool]\n    timeout_s: 30\n".to_string(),
        ),
        (
            "inodes",
            sh(
                "i=0; while touch /tmp/f$i 2>/dev/null; do i=$((i+1)); done; echo stopped at $i; exit 3",
                "tmpfs_mb: 1",
                60,
                "",
            ),
        ),
        (
            "flood",
            sh(
                "head -c 3000000 /dev/zero | tr '\\000' x; sleep 30",
                "output_mb: 1",
                60,
                "",
            ),
        ),
        (
            "sigstop",
            sh("echo stopping; kill -STOP $$; echo resumed", "", 1, ""),
        ),
        ("kill_all", p("kill-all", "", 30)),
        ("signal_init", p("signal-init", "", 30)),
        (
            "cpu_burn",
            sh(
                "for i in 1 2 3 4; do (while :; do :; done) & done; wait",
                "",
                2,
                "",
            ),
        ),
        ("sleep_forever", sh("exec sleep infinity", "", 1, "")),
        (
            "dns",
            sh(
                "exec python3 -c 'import socket; socket.getaddrinfo(\"example.com\", 80)'",
                "",
                30,
                "",
            ),
        ),
        (
            "host_loopback",
            sh(
                "exec python3 -c 'import os, socket; s = socket.socket(); s.settimeout(2); print(\"connect\", s.connect_ex((\"127.0.0.1\", int(os.environ[\"PORT\"]))))'",
                "",
                30,
                "PORT",
            ),
        ),
        (
            "host_abstract",
            sh(
                "exec python3 -c 'import os, socket; s = socket.socket(socket.AF_UNIX); print(\"connect\", s.connect_ex(\"\\0\" + os.environ[\"NAME\"]))'",
                "",
                30,
                "NAME",
            ),
        ),
        (
            "secrets",
            sh(
                "cat /etc/shadow; cat \"$SECRET\"; cat /proc/1/environ; for d in \"$DATA\" /home /root; do test -e \"$d\" || echo \"$d: not there\" >&2; done; echo done",
                "",
                30,
                "SECRET, DATA",
            ),
        ),
        ("ptrace", p("ptrace", "", 30)),
        ("namespaces", p("namespaces", "", 30)),
        (
            "setuid",
            sh(
                "test -u /usr/bin/su && echo su-is-setuid; su root -c 'id -u' </dev/null; echo su=$?; mount -t tmpfs none /tmp; echo mount=$?; id -u",
                "",
                30,
                "",
            ),
        ),
        ("keyctl", p("keyctl", "", 30)),
        ("io_uring", p("io-uring", "", 30)),
        ("bpf", p("bpf", "", 30)),
        ("perf", p("perf", "", 30)),
        ("tiocsti", p("tiocsti", "", 30)),
        ("raw_socket", p("raw-socket", "", 30)),
        ("x32", p("x32", "", 30)),
        ("int80", p("int80", "", 30)),
        (
            "worktree_writes",
            sh(
                "echo x > /work/f; chmod 777 /work; mv /work /work2; touch /work/.git; echo done",
                "",
                30,
                "",
            ),
        ),
        (
            "plant",
            sh(
                "echo planted > /tmp/planted; echo planted > /dev/shm/planted; echo planted > $HOME/.profile; echo ok",
                "",
                30,
                "",
            ),
        ),
        (
            "look_for_plants",
            sh(
                "ls -A /tmp /dev/shm $HOME; cat /tmp/planted /dev/shm/planted $HOME/.profile 2>&1; echo done",
                "",
                30,
                "",
            ),
        ),
        ("fds", p("fds", "", 30)),
        (
            "artifact_links",
            sh(
                "ln -s /etc/passwd $ARTIFACT_DIR/passwd; ln -s / $ARTIFACT_DIR/root; mkfifo $ARTIFACT_DIR/fifo; ln /usr/bin/ls $ARTIFACT_DIR/hard 2>/dev/null || echo hardlink-refused; echo made",
                "",
                30,
                "",
            ),
        ),
        ("shm_create", p("shm-create", "", 30)),
        ("shm_look", p("shm-look", "", 30)),
        ("proc_exe", p("proc-exe", "", 30)),
        ("echo", sh("echo normal", "", 30, "")),
    ];
    let mut yaml = String::from("job_types:\n");
    for (name, body) in types {
        yaml.push_str(&format!("  {name}:\n{body}"));
        match net {
            Net::Egress => {
                yaml.push_str("    network: {egress: [\"pypi.org:443\", \"192.0.2.0/28:80\"]}\n")
            }
            Net::Gvisor => yaml.push_str("    isolation: gvisor\n"),
            Net::None => {}
        }
    }
    write_config(dir, "").with_job_types(&yaml)
}

trait WithJobTypes {
    fn with_job_types(self, yaml: &str) -> Self;
}

impl WithJobTypes for PathBuf {
    /// Replaces the shared test job types with the hostile ones.
    fn with_job_types(self, yaml: &str) -> Self {
        let text = std::fs::read_to_string(&self).unwrap();
        let head = &text[..text.find("job_types:").unwrap()];
        std::fs::write(&self, format!("{head}{yaml}")).unwrap();
        self
    }
}

struct Ran {
    job: JobView,
    out: String,
    err: String,
    data: PathBuf,
}

struct Box {
    server: Server,
    client: Client,
    data: PathBuf,
    /// The jobs run under gVisor: where its outcome differs, the case says how.
    gvisor: bool,
    _dir: tempfile::TempDir,
}

async fn start(net: Net) -> Box {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), net));
    let client = server.client();
    Box {
        data: dir.path().join("data"),
        server,
        client,
        gvisor: net == Net::Gvisor,
        _dir: dir,
    }
}

impl Box {
    async fn run(&self, job_type: &str, params: &[(&str, &str)]) -> Ran {
        let req = SubmitJobRequest {
            job_type: job_type.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ..SubmitJobRequest::default()
        };
        let sub = self.client.submit(&req).await.unwrap();
        let job = wait_terminal(&self.client, &sub.job_id).await;
        let out = String::from_utf8_lossy(
            &self
                .client
                .logs_raw(&sub.job_id, "stdout", 0)
                .await
                .unwrap(),
        )
        .into_owned();
        let err = String::from_utf8_lossy(
            &self
                .client
                .logs_raw(&sub.job_id, "stderr", 0)
                .await
                .unwrap(),
        )
        .into_owned();
        Ran {
            job,
            out,
            err,
            data: self.data.clone(),
        }
    }

    /// The hostile job left nothing behind, and the next job runs normally.
    async fn after(&self, hostile: &Ran) {
        assert_no_job_processes();
        // runsc and its gofer and sandbox run as root: they name the server's data directory.
        let runsc = processes_mentioning(&self.data.join("sandbox").display().to_string());
        assert!(runsc.is_empty(), "runsc processes survived: {runsc:?}");
        let id = &hostile.job.job_id;
        assert!(
            !hostile.data.join("scratch").join(id).exists(),
            "scratch of {id} survived"
        );
        // The job's cgroup is named `<job id>-<claim>`: none of this job's may be left.
        // v1 hierarchies, and the v2 one (pure v2: /sys/fs/cgroup/warden).
        for controller in ["memory", "pids", "cpu", "unified", ""] {
            let parent = Path::new("/sys/fs/cgroup").join(controller).join("warden");
            let left: Vec<String> = std::fs::read_dir(&parent)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with(id.as_str()))
                        .collect()
                })
                .unwrap_or_default();
            assert!(
                left.is_empty(),
                "cgroups {left:?} survived in {}",
                parent.display()
            );
        }
        let next = self.run("echo", &[]).await;
        assert_eq!(
            next.job.status,
            JobStatus::Succeeded,
            "{:?} {}",
            next.job,
            next.err
        );
        assert_eq!(next.out, "normal\n");
        let _ = &self.server;
    }
}

fn assert_status(r: &Ran, status: JobStatus, reason: Option<&str>) {
    assert_eq!(
        r.job.status, status,
        "job {:?}\nstdout {}\nstderr {}",
        r.job, r.out, r.err
    );
    assert_eq!(
        r.job.reason.as_deref(),
        reason,
        "job {:?}\nstdout {}\nstderr {}",
        r.job,
        r.out,
        r.err
    );
}

fn all_blocked(r: &Ran, expected: &[&str]) {
    assert_status(r, JobStatus::Succeeded, None);
    for what in expected {
        assert!(
            r.out.contains(&format!("BLOCKED {what}")),
            "{what} not blocked:\n{}",
            r.out
        );
    }
    assert!(
        !r.out.contains("ALLOWED"),
        "something was allowed:\n{}",
        r.out
    );
}

/// Each hostile job runs three times: with no network, behind an egress allowlist, and under
/// gVisor.
macro_rules! hostile {
    ($name:ident, |$b:ident| $body:block) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn network_none() {
                let $b = start(Net::None).await;
                $body
            }

            #[tokio::test]
            async fn network_egress() {
                let $b = start(Net::Egress).await;
                $body
            }

            #[tokio::test]
            async fn gvisor() {
                let $b = start(Net::Gvisor).await;
                $body
            }
        }
    };
}

hostile!(probe_sees_the_box_as_specified, |b| {
    let r = b.run("inspect", &[]).await;
    assert_status(&r, JobStatus::Succeeded, None);
    assert_eq!(r.out, "INSPECT OK\n");
    b.after(&r).await;
});

hostile!(fork_bomb_hits_the_pids_limit, |b| {
    let r = b.run("fork_bomb", &[]).await;
    if b.gvisor {
        // On gVisor's ptrace platform every process of the job is a stub process on the host:
        // the cgroup's pids limit stops them, and the sandbox with them (fail closed).
        assert_status(&r, JobStatus::Failed, Some("pids_limit"));
        b.after(&r).await;
        return;
    }
    assert_status(&r, JobStatus::Succeeded, None);
    assert_eq!(r.job.warnings, ["PIDS_LIMIT_HIT"]);
    let failures: u64 = r.out.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(failures > 0, "{}", r.out);
    b.after(&r).await;
});

async fn memory_bomb(b: &Box, job_type: &str) -> Ran {
    let r = b.run(job_type, &[]).await;
    assert_status(&r, JobStatus::Failed, Some("memory_limit"));
    assert_eq!(r.job.signal, Some(9), "killed by the OOM killer");
    assert!(
        r.job.enforcement["memory"].starts_with("cgroup v"),
        "{:?}",
        r.job.enforcement
    );
    let peak = r.job.resources.as_ref().unwrap().peak_memory_bytes.unwrap();
    // gVisor's sentry makes charges the kernel may not refuse (a page over, seen on v1).
    let slack = if b.gvisor { 64 << 10 } else { 0 };
    assert!(
        peak <= (64 << 20) + slack,
        "peak {peak} over the 64 MiB limit"
    );
    b.after(&r).await;
    r
}

hostile!(malloc_bomb_is_oom_killed, |b| {
    memory_bomb(&b, "malloc_bomb").await;
});
hostile!(mmap_bomb_is_oom_killed, |b| {
    memory_bomb(&b, "mmap_bomb").await;
});
hostile!(memfd_bomb_is_oom_killed, |b| {
    memory_bomb(&b, "memfd_bomb").await;
});
hostile!(python_bomb_is_oom_killed_and_its_artifacts_are_kept, |b| {
    let r = memory_bomb(&b, "python_bomb").await;
    // The OOM kill took the whole job, but not its init: what it wrote before was copied out.
    let kept = b.client.artifact(&r.job.job_id, "before.txt").await;
    assert_eq!(kept.unwrap(), b"kept\n");
    assert!(r.job.warnings.is_empty(), "{:?}", r.job.warnings);
});

hostile!(filling_tmp_stops_at_its_size, |b| {
    let r = b.run("fill_tmp", &[]).await;
    assert_status(&r, JobStatus::Failed, Some("exit_code: 3"));
    assert_eq!(r.out, "full\n");
    assert!(r.err.contains("No space left on device"), "{}", r.err);
    b.after(&r).await;
});

hostile!(filling_dev_shm_stops_at_its_size, |b| {
    let r = b.run("fill_shm", &[]).await;
    assert_status(&r, JobStatus::Failed, Some("exit_code: 3"));
    assert!(r.err.contains("No space left on device"), "{}", r.err);
    b.after(&r).await;
});

hostile!(filling_the_artifact_dir_hits_the_file_size_limit, |b| {
    let r = b.run("fill_artifacts", &[]).await;
    assert_status(&r, JobStatus::Failed, Some("file_size_limit"));
    assert_eq!(r.job.signal, Some(libc_sigxfsz()));
    let art = r.data.join("artifacts").join(&r.job.job_id).join("big");
    assert_eq!(std::fs::metadata(art).unwrap().len(), 1 << 20);
    b.after(&r).await;
});

hostile!(one_terabyte_sparse_file_is_refused, |b| {
    let r = b.run("sparse_1tb", &[]).await;
    assert_status(&r, JobStatus::Failed, Some("file_size_limit"));
    let art = r.data.join("artifacts").join(&r.job.job_id).join("sparse");
    assert!(std::fs::metadata(&art).map(|m| m.len()).unwrap_or(0) <= 1 << 20);
    b.after(&r).await;
});

hostile!(three_gib_into_the_artifact_dir_stops_at_its_cap, |b| {
    let r = b.run("fill_artifacts_3g", &[]).await;
    assert_status(&r, JobStatus::Failed, Some("exit_code: 3"));
    assert!(r.err.contains("No space left on device"), "{}", r.err);
    assert_eq!(r.job.warnings, ["ARTIFACTS_LIMIT"]);
    // What the job wrote up to the cap is kept; nothing beyond it ever reached the host.
    let art = r.data.join("artifacts").join(&r.job.job_id).join("big");
    let len = std::fs::metadata(&art).unwrap().len();
    assert!(len > 32 << 20 && len <= 64 << 20, "{len} bytes kept");
    assert_eq!(r.job.enforcement["artifacts"], "tmpfs 64 MiB, 4096 inodes");
    b.after(&r).await;
});

hostile!(empty_files_in_the_artifact_dir_stop_at_the_inode_cap, |b| {
    let r = b.run("artifact_inodes", &[]).await;
    assert_status(&r, JobStatus::Failed, Some("exit_code: 3"));
    let n: u64 = r.out.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        (1000..=4096).contains(&n),
        "{n} files fit in a 4096-inode tmpfs"
    );
    assert_eq!(r.job.warnings, ["ARTIFACTS_LIMIT"]);
    // Every one of them was copied out.
    let dir = r.data.join("artifacts").join(&r.job.job_id);
    let copied = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('f')
        })
        .count() as u64;
    assert_eq!(copied, n);
    b.after(&r).await;
});

hostile!(
    one_terabyte_sparse_file_in_scratch_is_refused_by_default,
    |b| {
        let r = b.run("sparse_scratch", &[]).await;
        assert_status(&r, JobStatus::Failed, Some("file_size_limit"));
        assert_eq!(r.job.signal, Some(libc_sigxfsz()));
        assert_eq!(r.job.enforcement["file_size"], "rlimit");
        b.after(&r).await;
    }
);

hostile!(a_cpu_burn_is_held_to_half_a_cpu, |b| {
    let r = b.run("cpu_half", &[]).await;
    assert_status(&r, JobStatus::Succeeded, None);
    assert_eq!(r.out, "burned\n");
    let res = r.job.resources.as_ref().unwrap();
    let cpu = res.user_cpu_ms + res.system_cpu_ms;
    // Two burners for 4 s of wall would take 8 s of CPU unthrottled (4 s on one core). Half a
    // CPU is held over the job's whole wall time, which under gVisor includes the sandbox's own
    // start (its CPU is in the job's cgroup too); two 100 ms periods of slack for the accounting.
    let bound = res.wall_ms / 2 + 200;
    assert!(
        cpu <= bound,
        "{cpu} ms of CPU in {} ms of wall at cpus: 0.5 (bound {bound})",
        res.wall_ms
    );
    assert!(cpu >= 1000, "{cpu} ms: the burners barely ran");
    assert!(
        res.cpu_throttled_ms.unwrap() > 0,
        "throttling recorded: {res:?}"
    );
    assert!(
        r.job.enforcement["cpus"].starts_with("cgroup v"),
        "{:?}",
        r.job.enforcement
    );
    b.after(&r).await;
});

/// Every way a job can end maps to exactly one status and reason, on whatever cgroup layout the
/// host has (this suite also runs on pure v2 in `cargo xtask vm-test`). The cases with tests of
/// their own are listed by name in the comment; the rest are driven here.
#[tokio::test]
async fn every_way_a_job_ends_maps_to_one_status_and_reason() {
    // Elsewhere: memory_limit (memory bombs), output_limit (flood), timed_out (sleep_forever,
    // sigstop), file_size_limit (sparse files), ARTIFACTS_LIMIT (fill_artifacts_3g), cancelled
    // and lost leases (e2e, cluster), limit_unavailable (rootless).
    let b = start(Net::None).await;
    let table: &[(&str, JobStatus, &str)] = &[
        ("cpu_seconds", JobStatus::Failed, "cpu_limit"),
        ("cpu_seconds_ignored", JobStatus::Failed, "cpu_limit"),
        ("pids_fail", JobStatus::Failed, "pids_limit"),
        ("self_segv", JobStatus::Failed, "signal: 11"),
        (
            "no_program",
            JobStatus::Error,
            "sandbox_setup_failed: exec /nonexistent/tool:",
        ),
        ("echo", JobStatus::Succeeded, ""),
    ];
    for (job_type, status, reason) in table {
        let r = b.run(job_type, &[]).await;
        assert_eq!(r.job.status, *status, "{job_type}: {:?} {}", r.job, r.err);
        let got = r.job.reason.clone().unwrap_or_default();
        assert!(
            got.starts_with(reason) && (reason.is_empty() == got.is_empty()),
            "{job_type}: reason {got:?}, wanted {reason:?}"
        );
        b.after(&r).await;
    }
}

fn libc_sigxfsz() -> i32 {
    25
}

hostile!(inode_exhaustion_stays_in_the_jobs_tmpfs, |b| {
    let r = b.run("inodes", &[]).await;
    assert_status(&r, JobStatus::Failed, Some("exit_code: 3"));
    let n: u64 = r.out.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n < 1024, "{n} files fit in a 1 MiB tmpfs");
    b.after(&r).await;
});

hostile!(stdout_flood_without_newlines_hits_the_output_limit, |b| {
    let r = b.run("flood", &[]).await;
    assert_status(&r, JobStatus::Failed, Some("output_limit"));
    assert_eq!(r.job.stdout_bytes, 1 << 20);
    assert!(r.out.bytes().all(|c| c == b'x'));
    b.after(&r).await;
});

hostile!(sigstop_itself_still_times_out_and_dies, |b| {
    let r = b.run("sigstop", &[]).await;
    assert_status(&r, JobStatus::TimedOut, Some("timed_out"));
    assert_eq!(r.out, "stopping\n");
    b.after(&r).await;
});

hostile!(kill_minus_one_only_reaches_the_job, |b| {
    let r = b.run("kill_all", &[]).await;
    assert_status(&r, JobStatus::Succeeded, None);
    assert!(r.out.contains("still alive"), "{}", r.out);
    b.after(&r).await;
});

hostile!(the_namespace_init_cannot_be_signalled, |b| {
    let r = b.run("signal_init", &[]).await;
    if b.gvisor {
        // gVisor's PID namespace has no init of warden's: pid 1 is the job, which kills itself.
        assert_status(&r, JobStatus::Failed, Some("signal: 9"));
        b.after(&r).await;
        return;
    }
    all_blocked(&r, &["kill init SIGKILL", "kill init SIGTERM"]);
    b.after(&r).await;
});

hostile!(cpu_burn_on_every_core_is_stopped_at_the_deadline, |b| {
    let r = b.run("cpu_burn", &[]).await;
    assert_status(&r, JobStatus::TimedOut, Some("timed_out"));
    b.after(&r).await;
});

hostile!(sleep_forever_times_out, |b| {
    let r = b.run("sleep_forever", &[]).await;
    assert_status(&r, JobStatus::TimedOut, Some("timed_out"));
    assert!(r.job.resources.as_ref().unwrap().wall_ms < 5_000);
    b.after(&r).await;
});

hostile!(dns_does_not_resolve, |b| {
    let r = b.run("dns", &[]).await;
    assert_status(&r, JobStatus::Failed, Some("exit_code: 1"));
    assert!(r.err.contains("gaierror"), "{}", r.err);
    b.after(&r).await;
});

hostile!(host_loopback_services_are_unreachable, |b| {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let r = b.run("host_loopback", &[("PORT", &port)]).await;
    assert_status(&r, JobStatus::Succeeded, None);
    assert_eq!(
        r.out, "connect 111\n",
        "ECONNREFUSED: the job's loopback is its own"
    );
    assert!(listener.accept().is_err(), "the host listener was reached");
    b.after(&r).await;
});

hostile!(host_abstract_unix_sockets_are_unreachable, |b| {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("warden-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let r = b.run("host_abstract", &[("NAME", &name)]).await;
    assert_status(&r, JobStatus::Succeeded, None);
    assert!(
        r.out == "connect 111\n" || r.out == "connect 1\n",
        "refused or denied: {}",
        r.out
    );
    assert!(listener.accept().is_err(), "the host socket was reached");
    b.after(&r).await;
});

hostile!(host_secrets_and_other_jobs_are_out_of_view, |b| {
    let secret = std::env::temp_dir().join(format!("warden-secret-{}", std::process::id()));
    std::fs::write(&secret, "TOP-SECRET-VALUE").unwrap();
    let data = b.data.display().to_string();
    let r = b
        .run(
            "secrets",
            &[("SECRET", &secret.display().to_string()), ("DATA", &data)],
        )
        .await;
    std::fs::remove_file(&secret).unwrap();
    assert_status(&r, JobStatus::Succeeded, None);
    assert!(!r.out.contains("TOP-SECRET") && !r.err.contains("TOP-SECRET"));
    if b.gvisor {
        // Under gVisor pid 1 is the job's own shell: its environment is the job's own.
        let own = format!("WARDEN_JOB_ID={}\0", r.job.job_id);
        assert!(r.out.contains(&own), "{}", r.out);
        assert!(r.out.ends_with("\0done\n"), "{}", r.out);
    } else {
        assert_eq!(r.out, "done\n");
        assert!(
            r.err.contains("/proc/1/environ: Permission denied"),
            "{}",
            r.err
        );
    }
    assert!(r.err.contains("/etc/shadow: No such file"), "{}", r.err);
    assert!(
        r.err
            .contains(&format!("{}: No such file", secret.display())),
        "{}",
        r.err
    );
    for gone in [data.as_str(), "/home", "/root"] {
        assert!(r.err.contains(&format!("{gone}: not there")), "{}", r.err);
    }
    b.after(&r).await;
});

hostile!(ptrace_and_memory_access_are_denied, |b| {
    let r = b.run("ptrace", &[]).await;
    all_blocked(
        &r,
        &[
            "ptrace attach init",
            "ptrace attach parent",
            "process_vm_readv",
        ],
    );
    b.after(&r).await;
});

hostile!(namespaces_and_mounts_are_denied, |b| {
    let r = b.run("namespaces", &[]).await;
    if b.gvisor {
        // gVisor's kernel lets an unprivileged process make a user and mount namespace of its
        // own (and chroot in it), as Linux does without seccomp: both live in the sentry.
        // What needs a capability over the job's own namespaces is still refused.
        assert_status(&r, JobStatus::Succeeded, None);
        for what in ["clone CLONE_NEWUSER", "mount tmpfs", "setns"] {
            assert!(r.out.contains(&format!("BLOCKED {what}")), "{}", r.out);
        }
        for what in ["unshare user", "unshare mount", "chroot"] {
            assert!(r.out.contains(&format!("ALLOWED {what}")), "{}", r.out);
        }
        b.after(&r).await;
        return;
    }
    all_blocked(
        &r,
        &[
            "unshare user",
            "unshare mount",
            "clone CLONE_NEWUSER",
            "mount tmpfs",
            "setns",
            "chroot",
        ],
    );
    b.after(&r).await;
});

hostile!(setuid_binaries_gain_nothing, |b| {
    let r = b.run("setuid", &[]).await;
    assert_status(&r, JobStatus::Succeeded, None);
    assert!(
        r.out.contains("su-is-setuid"),
        "su is setuid on the host: {}",
        r.out
    );
    assert!(
        r.out.contains("su=1") && r.out.contains("mount=32"),
        "{}\n{}",
        r.out,
        r.err
    );
    assert!(r.out.ends_with("1000\n"), "{}", r.out);
    b.after(&r).await;
});

hostile!(keyrings_are_denied, |b| {
    let r = b.run("keyctl", &[]).await;
    // gVisor has no keyrings for a job to reach: EACCES instead of seccomp's EPERM.
    let why = if b.gvisor {
        "Permission denied"
    } else {
        "Operation not permitted"
    };
    all_blocked(&r, &[&format!("keyctl: {why}"), &format!("add_key: {why}")]);
    b.after(&r).await;
});

hostile!(io_uring_is_denied, |b| {
    let r = b.run("io_uring", &[]).await;
    if b.gvisor {
        // gVisor serves io_uring in its own kernel: the host's is never reached.
        assert_status(&r, JobStatus::Succeeded, None);
        assert!(r.out.contains("ALLOWED io_uring_setup"), "{}", r.out);
        b.after(&r).await;
        return;
    }
    all_blocked(&r, &["io_uring_setup: Operation not permitted"]);
    b.after(&r).await;
});

hostile!(bpf_is_denied, |b| {
    let r = b.run("bpf", &[]).await;
    all_blocked(&r, &["bpf: Operation not permitted"]);
    b.after(&r).await;
});

hostile!(perf_and_userfaultfd_are_denied, |b| {
    let r = b.run("perf", &[]).await;
    all_blocked(&r, &["perf_event_open", "userfaultfd"]);
    b.after(&r).await;
});

hostile!(tiocsti_is_denied, |b| {
    let r = b.run("tiocsti", &[]).await;
    // Under gVisor the job has no terminal to inject into at all.
    let why = if b.gvisor {
        "Inappropriate ioctl for device"
    } else {
        "Operation not permitted"
    };
    all_blocked(&r, &[&format!("TIOCSTI: {why}")]);
    b.after(&r).await;
});

hostile!(raw_packet_and_vsock_sockets_are_denied, |b| {
    let r = b.run("raw_socket", &[]).await;
    all_blocked(
        &r,
        &["socket AF_PACKET", "socket SOCK_RAW", "socket AF_VSOCK"],
    );
    b.after(&r).await;
});

hostile!(x32_syscalls_are_denied, |b| {
    let r = b.run("x32", &[]).await;
    all_blocked(&r, &["x32 getpid"]);
    b.after(&r).await;
});

hostile!(i386_syscalls_kill_the_job, |b| {
    let r = b.run("int80", &[]).await;
    if b.gvisor {
        // gVisor serves no i386 system call: the call fails with an error, never a pid.
        assert_status(&r, JobStatus::Succeeded, None);
        assert!(r.out.starts_with("ALLOWED int80 getpid = -"), "{}", r.out);
        b.after(&r).await;
        return;
    }
    assert_status(&r, JobStatus::Failed, Some("signal: 31"));
    assert!(!r.out.contains("ALLOWED"), "{}", r.out);
    b.after(&r).await;
});

hostile!(the_worktree_cannot_be_changed, |b| {
    let r = b.run("worktree_writes", &[]).await;
    assert_status(&r, JobStatus::Succeeded, None);
    assert_eq!(r.out, "done\n");
    // gVisor checks permissions before the mount's read-only flag.
    let refusals = if b.gvisor {
        [
            "Read-only file system",
            "Permission denied",
            "Operation not permitted",
        ]
        .iter()
        .map(|e| r.err.matches(e).count())
        .sum()
    } else {
        r.err.matches("Read-only file system").count()
    };
    assert_eq!(refusals, 4, "{}", r.err);
    assert!(r.err.contains("mv: cannot move"), "{}", r.err);
    b.after(&r).await;
});

hostile!(files_planted_in_tmp_do_not_reach_the_next_job, |b| {
    let plant = b.run("plant", &[]).await;
    assert_status(&plant, JobStatus::Succeeded, None);
    let look = b.run("look_for_plants", &[]).await;
    assert_status(&look, JobStatus::Succeeded, None);
    assert!(!look.out.lines().any(|l| l == "planted"), "{}", look.out);
    assert_eq!(look.out.matches("No such file").count(), 3, "{}", look.out);
    b.after(&plant).await;
});

hostile!(no_inherited_file_descriptors, |b| {
    let r = b.run("fds", &[]).await;
    assert_status(&r, JobStatus::Succeeded, None);
    assert_eq!(r.out, "open fds above 2: []\n");
    b.after(&r).await;
});

hostile!(artifact_links_and_fifos_are_never_followed, |b| {
    let r = b.run("artifact_links", &[]).await;
    assert_status(&r, JobStatus::Succeeded, None);
    assert_eq!(r.out, "hardlink-refused\nmade\n");
    let http = crate::support::http();
    for path in ["passwd", "root/etc/passwd"] {
        let url = format!("{}/jobs/{}/artifacts/{path}", b.server.url, r.job.job_id);
        let resp = http.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 422, "{path}");
    }
    // A fifo is not an artifact: it never leaves the job's /artifacts.
    let url = format!("{}/jobs/{}/artifacts/fifo", b.server.url, r.job.job_id);
    assert_eq!(http.get(url).send().await.unwrap().status(), 404);
    let art: serde_json::Value = serde_json::from_slice(
        &b.client
            .artifact(&r.job.job_id, "artifact.json")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        art["files"],
        serde_json::json!([]),
        "links and fifos are not outputs"
    );
    b.after(&r).await;
});

hostile!(concurrent_jobs_cannot_see_each_other, |b| {
    let first = SubmitJobRequest {
        job_type: "shm_create".into(),
        ..SubmitJobRequest::default()
    };
    let a = b.client.submit(&first).await.unwrap();
    wait_running_with_output(&b.client, &a.job_id).await;
    let look = b.run("shm_look", &[]).await;
    assert_status(&look, JobStatus::Succeeded, None);
    assert!(
        look.out
            .contains("BLOCKED find other job's shm: No such file"),
        "{}",
        look.out
    );
    assert!(
        look.out.contains("visible processes: 1\n") || look.out.contains("visible processes: 2\n"),
        "{}",
        look.out
    );
    let a = wait_terminal(&b.client, &a.job_id).await;
    assert_eq!(a.status, JobStatus::Succeeded);
    b.after(&look).await;
});

hostile!(proc_exe_tricks_fail, |b| {
    let r = b.run("proc_exe", &[]).await;
    if b.gvisor {
        // pid 1 is the job itself under gVisor: reading it reads the job.
        assert_status(&r, JobStatus::Succeeded, None);
        assert!(r.out.contains("BLOCKED write /proc/self/exe"), "{}", r.out);
        b.after(&r).await;
        return;
    }
    all_blocked(
        &r,
        &[
            "read /proc/1/exe",
            "read /proc/1/environ",
            "read /proc/1/root/etc",
            "write /proc/self/exe",
        ],
    );
    b.after(&r).await;
});
