//! What a hostile job can reach beyond its sandbox's walls: the artifact listing, what it leaves
//! on the host, the socket families, signals, its own record and the API. One test per finding,
//! each asserting the exact safe outcome, in the real sandbox.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use warden_api::{ErrorCode, JobStatus, SubmitJobRequest};
use warden_client::{Client, ClientError};

use crate::support::*;

fn probe() -> PathBuf {
    Path::new(WARDEN).with_file_name("warden-probe")
}

const JOB_TYPES: &str = r#"
job_types:
  swapper:
    argv: ["/bin/sh", "-c", "cd \"$ARTIFACT_DIR\"; mkdir d; echo x > d/x; ln -s /etc l; echo ready; while :; do mv -T d t; mv -T l d; mv -T d l; mv -T t d; done"]
    timeout_s: 120
  leftovers:
    argv: ["/bin/sh", "-c", "cd \"$ARTIFACT_DIR\"; cp /bin/true suid; chmod 6755 suid; mkdir -m 2777 shared; echo hi > shared/f; chmod 666 shared/f; ls -ln"]
    timeout_s: 30
  families:
    argv: ["/opt/probe", "socket-families"]
    binds: [{host: "PROBE", at: /opt/probe}]
    timeout_s: 30
  watch_default:
    argv: ["/opt/probe", "inotify"]
    binds: [{host: "PROBE", at: /opt/probe}]
    timeout_s: 30
  watch_allowed:
    argv: ["/opt/probe", "inotify"]
    binds: [{host: "PROBE", at: /opt/probe}]
    inotify: true
    timeout_s: 30
  graceful:
    argv: ["/bin/sh", "-c", "trap 'echo handled > \"$ARTIFACT_DIR/term\"; exit 0' TERM; echo ready; while :; do sleep 0.05; done"]
    timeout_s: 120
  pipe:
    argv: ["/bin/sh", "-c", "yes | head -1"]
    timeout_s: 30
  record_dir:
    argv: ["/bin/sh", "-c", "mkdir -p \"$ARTIFACT_DIR/artifact.json/inner\"; echo ok"]
    timeout_s: 30
  names:
    argv: ["/usr/bin/python3", "-c", "import os\nd = os.environ['ARTIFACT_DIR'].encode()\nopen(d + b'/a\\xff', 'w').write('1')\nopen(d + b'/a\\xfe', 'w').write('22')\nos.mkdir(d + b'/many')\nfor i in range(10050):\n    open(d + b'/many/%d' % i, 'w').close()\nprint('made')"]
    timeout_s: 120
  hold:
    argv: ["/bin/sh", "-c", "echo ready; exec sleep 1000"]
    timeout_s: 120
  unix_socket:
    argv: ["/usr/bin/python3", "-c", "import os, socket; s = socket.socket(socket.AF_UNIX); s.bind(os.environ['ARTIFACT_DIR'] + '/sock'); print('bound')"]
    timeout_s: 30
"#;

struct Host {
    server: Server,
    client: Client,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

fn start() -> Host {
    let dir = tempfile::tempdir().unwrap();
    let types = JOB_TYPES.replace("PROBE", &probe().display().to_string());
    let server = Server::start(&write_config_with(dir.path(), &types));
    Host {
        client: server.client(),
        data: dir.path().join("data"),
        server,
        _dir: dir,
    }
}

impl Host {
    async fn submit(&self, job_type: &str) -> String {
        let req = SubmitJobRequest {
            job_type: job_type.into(),
            ..SubmitJobRequest::default()
        };
        self.client.submit(&req).await.unwrap().job_id
    }

    async fn stdout(&self, id: &str) -> String {
        let bytes = self.client.logs_raw(id, "stdout", 0).await.unwrap();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn artifacts(&self, id: &str) -> PathBuf {
        self.data.join("artifacts").join(id)
    }
}

#[tokio::test]
async fn a_swapping_job_never_leads_the_listing_outside_its_tree() {
    let h = start();
    let id = h.submit("swapper").await;
    wait_running_with_output(&h.client, &id).await;
    let grpc = Client::new(
        &h.server.grpc.replace("http://", "grpc://"),
        Duration::from_secs(10),
        None,
    )
    .unwrap();
    // The job's own names, and the one file it made: nothing else may ever appear (host
    // entries such as d/passwd or d/shadow would, if a walk followed the link swapped in).
    let allowed = ["d", "t", "l", "d/x", "t/x", "l/x", "artifact.json"];
    let check = |list: &warden_api::ArtifactsResponse, when: &str| {
        for a in &list.artifacts {
            assert!(
                allowed.contains(&a.path.as_str()),
                "{when}: {:?} is outside the job's tree",
                a.path
            );
        }
    };
    // While it runs, its tree is its own tmpfs: the host sees none of it.
    for round in 0..100 {
        let client = if round % 3 == 0 { &grpc } else { &h.client };
        let list = client.artifacts(&id).await.unwrap();
        check(&list, &format!("round {round}"));
        assert!(list.artifacts.is_empty(), "round {round}: {list:?}");
    }
    h.client.cancel(&id).await.unwrap();
    let job = wait_terminal(&h.client, &id).await;
    assert_eq!(job.status, JobStatus::Cancelled);
    // Copied out once every process of it was gone, mid-swap: its names only, the link kept
    // as a link.
    let list = h.client.artifacts(&id).await.unwrap();
    check(&list, "after");
    assert!(
        list.artifacts.iter().any(|a| a.path.ends_with("/x")),
        "the job's own file was kept: {list:?}"
    );
}

#[tokio::test]
async fn setuid_and_world_writable_leftovers_are_defused_and_the_data_dir_is_private() {
    let h = start();
    let id = h.submit("leftovers").await;
    let job = wait_terminal(&h.client, &id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    let out = h.stdout(&id).await;
    assert!(
        out.contains("-rwsr-sr-x"),
        "the job did make a setuid file: {out}"
    );
    let dir = h.artifacts(&id);
    let warden_uid = rustix::process::geteuid().as_raw();
    for (path, mode) in [
        ("", 0o755),
        ("suid", 0o755),
        ("shared", 0o775),
        ("shared/f", 0o664),
    ] {
        let meta = std::fs::symlink_metadata(dir.join(path)).unwrap();
        assert_eq!(meta.mode() & 0o7777, mode, "{path:?}");
        assert_eq!(meta.uid(), warden_uid, "{path:?} still the job's");
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&h.data), 0o700);
    assert_eq!(mode(&h.data.join("warden.db")), 0o600);
}

#[tokio::test]
async fn only_unix_inet_and_route_netlink_sockets_open() {
    let h = start();
    let id = h.submit("families").await;
    let job = wait_terminal(&h.client, &id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    let out = h.stdout(&id).await;
    for what in ["netlink uevent", "netlink audit", "af_alg", "af_tipc"] {
        assert!(out.contains(&format!("BLOCKED {what}")), "{what}:\n{out}");
    }
    assert!(!out.contains("ALLOWED"), "{out}");
    for what in ["unix", "inet", "inet6", "netlink route"] {
        assert!(out.contains(&format!("USABLE {what}\n")), "{what}:\n{out}");
    }
}

#[tokio::test]
async fn a_cancelled_jobs_sigterm_handler_runs() {
    let h = start();
    let id = h.submit("graceful").await;
    wait_running_with_output(&h.client, &id).await;
    h.client.cancel(&id).await.unwrap();
    let job = wait_terminal(&h.client, &id).await;
    assert_eq!(job.status, JobStatus::Cancelled);
    let term = std::fs::read_to_string(h.artifacts(&id).join("term"));
    assert_eq!(
        term.ok().as_deref(),
        Some("handled\n"),
        "the job's SIGTERM handler never ran"
    );
}

#[tokio::test]
async fn a_closed_pipe_is_quiet_as_in_a_shell() {
    let h = start();
    let id = h.submit("pipe").await;
    let job = wait_terminal(&h.client, &id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(h.stdout(&id).await, "y\n");
    let err = h.client.logs_raw(&id, "stderr", 0).await.unwrap();
    assert!(err.is_empty(), "{}", String::from_utf8_lossy(&err));
}

#[tokio::test]
async fn a_planted_record_directory_is_replaced_by_the_record() {
    let h = start();
    let id = h.submit("record_dir").await;
    let job = wait_terminal(&h.client, &id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);
    let record: serde_json::Value =
        serde_json::from_slice(&h.client.artifact(&id, "artifact.json").await.unwrap()).unwrap();
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["job_id"], id.as_str());
}

#[tokio::test]
async fn a_socket_in_the_artifacts_is_left_behind_not_a_server_error() {
    let h = start();
    let id = h.submit("unix_socket").await;
    let job = wait_terminal(&h.client, &id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    // Only files, directories and links leave the job's /artifacts: the socket stays behind.
    match h.client.artifact(&id, "sock").await {
        Err(ClientError::Api { status, code, .. }) => {
            assert_eq!((status, code), (404, ErrorCode::ArtifactNotFound));
        }
        other => panic!("downloading a socket answered {other:?}"),
    }
}

/// The host uid of every process of this test's jobs.
fn host_uids_of_jobs() -> std::collections::BTreeSet<u32> {
    processes_of_uid(test_uid())
        .into_iter()
        .filter_map(|pid| std::fs::metadata(format!("/proc/{pid}")).ok())
        .map(|m| m.uid())
        .collect()
}

#[tokio::test]
async fn jobs_running_at_once_have_host_uids_of_their_own() {
    let h = start();
    let (a, b) = (h.submit("hold").await, h.submit("hold").await);
    wait_running_with_output(&h.client, &a).await;
    wait_running_with_output(&h.client, &b).await;
    let uids = host_uids_of_jobs();
    assert_eq!(uids.len(), 2, "two jobs, one uid each: {uids:?}");
    assert!(
        uids.iter()
            .all(|u| (test_uid()..test_uid() + 2).contains(u)),
        "{uids:?}"
    );
    for id in [&a, &b] {
        h.client.cancel(id).await.unwrap();
        assert_eq!(
            wait_terminal(&h.client, id).await.status,
            JobStatus::Cancelled
        );
    }
    // Every job type has memory and process limits, even without a `limits:` of its own.
    let job = h.client.get(&a).await.unwrap();
    assert!(
        job.enforcement["memory"].starts_with("cgroup v"),
        "{:?}",
        job.enforcement
    );
    assert!(
        job.enforcement["pids"].starts_with("cgroup v"),
        "{:?}",
        job.enforcement
    );
}

#[tokio::test]
async fn names_are_lossless_and_long_listings_say_they_stopped() {
    let h = start();
    let id = h.submit("names").await;
    let job = wait_terminal(&h.client, &id).await;
    assert_eq!(
        job.status,
        JobStatus::Succeeded,
        "{job:?} {}",
        h.stdout(&id).await
    );
    let grpc = Client::new(
        &h.server.grpc.replace("http://", "grpc://"),
        Duration::from_secs(10),
        None,
    )
    .unwrap();
    for client in [&h.client, &grpc] {
        let list = client.artifacts(&id).await.unwrap();
        assert!(list.truncated, "10,052 entries listed as complete");
        assert_eq!(list.artifacts.len(), 10_000);
    }
    // The two names differ only in a byte that is not UTF-8: both are listed apart ...
    let dir = h.artifacts(&id);
    let listing = warden_worker::artifact_dir::list(&dir);
    assert!(listing.truncated);
    let record: serde_json::Value =
        serde_json::from_slice(&h.client.artifact(&id, "artifact.json").await.unwrap()).unwrap();
    assert_eq!(record["files_truncated"], true);
    // ... and each can be downloaded by its exact bytes.
    for (name, body) in [("a%FF", "1"), ("a%FE", "22")] {
        let url = format!("{}/jobs/{id}/artifacts/{name}", h.server.url);
        let resp = crate::support::http().get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        assert_eq!(resp.text().await.unwrap(), body);
    }
}

#[tokio::test]
async fn inotify_is_off_unless_the_job_type_asks() {
    let h = start();
    for (job_type, expected) in [
        ("watch_default", "BLOCKED inotify_init1"),
        ("watch_allowed", "ALLOWED inotify_init1"),
    ] {
        let id = h.submit(job_type).await;
        let job = wait_terminal(&h.client, &id).await;
        assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
        let out = h.stdout(&id).await;
        assert!(out.starts_with(expected), "{job_type}: {out}");
    }
}
