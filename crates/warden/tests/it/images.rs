//! Images as job roots, through real jobs: images built here with `buildah` (from scratch and
//! Debian's static busybox: nothing is pulled from the internet), served by a real OCI
//! registry on loopback (Debian's `docker-registry`, the distribution registry) and read from
//! local OCI layouts and archives.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use warden_api::{ErrorCode, JobStatus, JobView, SubmitJobRequest};
use warden_client::{Client, ClientError};

use crate::support::{Server, wait_job, write_config_with};

/// What every test image holds: busybox as `/bin/sh`, a user `app` (1234:1234), and a motd
/// that says which build it is.
fn image_tree(dir: &Path, motd: &str) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "id", "cat", "ls", "echo", "pwd"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234:app:/srv:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\napp:x:1234:\n").unwrap();
    std::fs::write(dir.join("etc/motd"), format!("{motd}\n")).unwrap();
}

/// Builds an image with buildah into `dest` (an `oci-archive:` or `oci:` destination).
fn build(work: &Path, motd: &str, dest: &str) {
    let tree = work.join(format!("tree-{motd}"));
    if !tree.exists() {
        image_tree(&tree, motd);
    }
    let buildah = |args: &[&str]| -> String {
        let out = Command::new("buildah")
            .arg("--root")
            .arg(work.join("buildah/root"))
            .arg("--runroot")
            .arg(work.join("buildah/run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .expect("buildah (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let c = buildah(&["from", "scratch"]);
    buildah(&["copy", &c, tree.to_str().unwrap(), "/"]);
    buildah(&[
        "config",
        "--env",
        "GREETING=hello from the image",
        "--env",
        "PATH=/bin",
        "--workingdir",
        "/srv",
        "--user",
        "app",
        "--entrypoint",
        "[\"/bin/false\"]",
        &c,
    ]);
    buildah(&["commit", "-q", &c, dest]);
    buildah(&["rm", &c]);
}

/// The distribution registry on a loopback port, storing under `dir`; stopped on drop.
struct Registry {
    child: Child,
    host: String,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        Registry::start_with(dir, "")
    }

    /// With `extra` in its configuration (TLS, auth); always on a loopback port.
    fn start_with(dir: &Path, extra: &str) -> Registry {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let host = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\n{}",
                dir.join("registry").display(),
                if extra.is_empty() {
                    format!("http: {{addr: {host}}}\n")
                } else {
                    extra.replace("ADDR", &host)
                }
            ),
        )
        .unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (scripts/setup.sh installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&host).is_ok() {
                return Registry { child, host };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the registry did not start on {host}");
    }

    /// Copies a local image to `name` (`team/busy:v1`) in the registry.
    fn push(&self, from: &str, name: &str) {
        self.push_as(from, name, None);
    }

    fn push_as(&self, from: &str, name: &str, creds: Option<&str>) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "-q", "--dest-tls-verify=false"]);
        if let Some(c) = creds {
            cmd.args(["--dest-creds", c]);
        }
        let out = cmd
            .arg(from)
            .arg(format!("docker://{}/{name}", self.host))
            .output()
            .expect("skopeo (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Shows everything the image decides, and that nothing of the host's root is there.
const PROBE: &str = r#"echo "$GREETING"; pwd; id -u; id -g; cat /etc/motd; test -e /usr && echo host-usr; (echo x > /probe) 2>/dev/null || echo read-only"#;

fn job_type(name: &str, image: &str) -> String {
    format!(
        "  {name}:\n    argv: [/bin/sh, -c, '{PROBE}']\n    timeout_s: 60\n    image: \"{image}\"\n"
    )
}

fn req(job_type: &str) -> SubmitJobRequest {
    SubmitJobRequest {
        job_type: job_type.into(),
        ..SubmitJobRequest::default()
    }
}

async fn run(c: &Client, job_type: &str) -> (JobView, String) {
    let job = c.submit(&req(job_type)).await.unwrap();
    let done = wait_job(c, &job.job_id, Duration::from_secs(120), |j| {
        j.status.is_terminal()
    })
    .await;
    let out = c.logs_raw(&done.job_id, "stdout", 0).await.unwrap();
    (done, String::from_utf8_lossy(&out).into_owned())
}

fn expected(motd: &str) -> String {
    format!("hello from the image\n/srv\n1234\n1234\n{motd}\nread-only\n")
}

fn digest_of(job: &JobView) -> String {
    let pinned = job.image.as_deref().expect("the job records its image");
    let (_, d) = pinned.rsplit_once('@').expect("pinned to a digest");
    assert!(d.starts_with("sha256:") && d.len() == 71, "{pinned}");
    d.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_in_an_image_pulled_from_a_registry_pinned_at_submission() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let registry = Registry::start(work);
    let one = format!("oci-archive:{}:v1", work.join("one.tar").display());
    build(work, "build-one", &one);
    registry.push(&one, "team/busy:v1");
    let image = format!("{}/team/busy:v1", registry.host);
    let config = write_config_with(
        work,
        &format!(
            "images: {{registries: {{\"{host}\": {{insecure_http: true}}}}}}\njob_types:\n{}",
            job_type("busy", &image),
            host = registry.host
        ),
    );
    let server = Server::start(&config);
    let c = server.client();
    let (first, out) = run(&c, "busy").await;
    assert_eq!(first.status, JobStatus::Succeeded, "{first:?}\n{out}");
    // The image's Env, WorkingDir and User (a name from its own /etc/passwd) apply; its
    // Entrypoint (/bin/false) does not; the host's /usr is not there; the root is read-only.
    assert_eq!(out, expected("build-one"));
    let d1 = digest_of(&first);
    assert!(
        first
            .image
            .as_deref()
            .unwrap()
            .starts_with(&format!("{image}@"))
    );
    // The tag moves: the next job is pinned to the new digest and runs the new image.
    let two = format!("oci-archive:{}:v1", work.join("two.tar").display());
    build(work, "build-two", &two);
    registry.push(&two, "team/busy:v1");
    let (second, out) = run(&c, "busy").await;
    assert_eq!(second.status, JobStatus::Succeeded, "{second:?}");
    assert_eq!(out, expected("build-two"));
    assert_ne!(digest_of(&second), d1);
    // Both are in the cache, unpacked once each; a third job of the same digest unpacks nothing.
    let roots = work.join("data/images/roots");
    assert_eq!(std::fs::read_dir(&roots).unwrap().count(), 2);
    let (third, _) = run(&c, "busy").await;
    assert_eq!(digest_of(&third), digest_of(&second));
    assert_eq!(std::fs::read_dir(&roots).unwrap().count(), 2);
    // The registry gone: a submission cannot be pinned and is refused, saying why.
    drop(registry);
    match c.submit(&req("busy")).await {
        Err(ClientError::Api {
            status,
            code,
            message,
        }) => {
            assert_eq!(
                (status, code),
                (502, ErrorCode::ImageUnavailable),
                "{message}"
            );
            assert!(message.contains(&image), "{message}");
        }
        other => panic!("expected image_unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_in_images_from_local_layouts_and_archives() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let archive = work.join("img.tar");
    let layout = work.join("layout");
    build(
        work,
        "from-archive",
        &format!("oci-archive:{}:v1", archive.display()),
    );
    build(work, "from-layout", &format!("oci:{}:v2", layout.display()));
    let config = write_config_with(
        work,
        &format!(
            "job_types:\n{}{}{}    isolation: gvisor\n{}",
            job_type("archive", &format!("oci-archive:{}:v1", archive.display())),
            job_type("layout", &format!("oci:{}:v2", layout.display())),
            job_type("layout_gvisor", &format!("oci:{}:v2", layout.display())),
            job_type("missing_tag", &format!("oci:{}:nope", layout.display())),
        ),
    );
    let server = Server::start(&config);
    let c = server.client();
    let (job, out) = run(&c, "archive").await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(out, expected("from-archive"));
    let (job, out) = run(&c, "layout").await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(out, expected("from-layout"));
    // The same image under gVisor: the image decides the same, and the record names the tier.
    let (job, out) = run(&c, "layout_gvisor").await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(out, expected("from-layout"));
    assert_eq!(job.enforcement["isolation"], "gvisor");
    match c.submit(&req("missing_tag")).await {
        Err(ClientError::Api { code, message, .. }) => {
            assert_eq!(code, ErrorCode::ImageUnavailable, "{message}");
            assert!(
                message.contains("has no image tagged \"nope\""),
                "{message}"
            );
        }
        other => panic!("expected image_unavailable, got {other:?}"),
    }
}

#[test]
fn image_entries_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    for (body, says) in [
        (
            "job_types:\n  t:\n    argv: [/bin/true]\n    timeout_s: 5\n    image: python:3.12\n",
            "names no registry",
        ),
        (
            "job_types:\n  t:\n    argv: [/bin/true]\n    timeout_s: 5\n    image: oci:relative\n",
            "absolute path",
        ),
        (
            "job_types:\n  t:\n    argv: [/bin/true]\n    timeout_s: 5\n    image: r.example/x\n    rootfs: /srv/root\n",
            "either an image or a rootfs",
        ),
        ("images: {cache_mb: 0}\n", "cache_mb"),
        (
            "images: {registries: {\"r.example\": {insecure_http: true, ca_file: /ca.pem}}}\n",
            "ca_file is for https",
        ),
        (
            "images: {registries: {\"r.example\": {credential: {username: u, secret: NOPE}}}}\n",
            "is not defined under secrets",
        ),
        ("images: {pull_timeout: 5}\n", "unknown field"),
        (
            "job_types:\n  t:\n    argv: [/bin/true]\n    timeout_s: 5\n    root: rw\n",
            "unknown variant",
        ),
        (
            "job_types:\n  t:\n    argv: [/bin/true]\n    timeout_s: 5\n    limits: {root_mb: 0}\n",
            "root_mb",
        ),
    ] {
        let config = write_config_with(dir.path(), body);
        let out = Command::new(crate::support::WARDEN)
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{body}: {err}");
        assert!(err.contains(says), "{body}: {err}");
    }
}

/// The job's changes as `changes.json` lists them: path → (change, kind).
fn changes(work: &Path, job: &JobView) -> std::collections::BTreeMap<String, (String, String)> {
    let path = work
        .join("data/artifacts")
        .join(&job.job_id)
        .join("changes.json");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("changes.json")).unwrap();
    report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                (
                    c["change"].as_str().unwrap().to_string(),
                    c["kind"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writable_root_changes_nothing_outside_the_job_and_reports_what_it_changed() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let tool = format!("warden-tool-{}", std::process::id());
    let archive = work.join("img.tar");
    build(
        work,
        "writable",
        &format!("oci-archive:{}:v1", archive.display()),
    );
    // Replace a system program, add one, change and delete files of /etc, make a directory;
    // then show that the replaced program is what runs.
    let host_script = format!(
        "cp /bin/true /usr/bin/false && cp /bin/sh /usr/bin/{tool} && echo extra >> /etc/hostname \
         && rm /etc/hosts && mkdir /usr/share/{tool}-dir && echo x > /usr/share/{tool}-dir/f \
         && /usr/bin/false && echo replaced"
    );
    let config = write_config_with(
        work,
        &format!(
            "job_types:\n\
             \x20 host_writable:\n    argv: [/bin/sh, -c, {host_script:?}]\n    timeout_s: 60\n    root: writable\n\
             \x20 host_again:\n    argv: [/bin/sh, -c, 'test ! -e /usr/bin/{tool} && test -e /etc/hosts && /usr/bin/false || echo clean']\n    timeout_s: 60\n    root: writable\n\
             \x20 host_small:\n    argv: [/bin/sh, -c, 'head -c 3000000 /dev/zero > /usr/bin/{tool}-big']\n    timeout_s: 60\n    root: writable\n    limits: {{root_mb: 1}}\n\
             \x20 host_read_only:\n    argv: [/bin/sh, -c, 'echo x > /usr/bin/{tool}']\n    timeout_s: 60\n\
             \x20 image_writable:\n    argv: [/bin/sh, -c, 'echo new > /bin/{tool} && echo changed > /etc/motd && cat /etc/motd']\n    timeout_s: 60\n    root: writable\n    image: \"oci-archive:{}:v1\"\n",
            archive.display()
        ),
    );
    let server = Server::start(&config);
    let c = server.client();
    let (job, out) = run(&c, "host_writable").await;
    let err = c.logs_raw(&job.job_id, "stderr", 0).await.unwrap();
    assert_eq!(
        job.status,
        JobStatus::Succeeded,
        "{job:?}\n{}",
        String::from_utf8_lossy(&err)
    );
    assert_eq!(out, "replaced\n");
    // The host's root is untouched.
    assert!(!Path::new("/usr/bin").join(&tool).exists());
    assert!(!Path::new("/usr/share").join(format!("{tool}-dir")).exists());
    assert!(
        !Command::new("/usr/bin/false").status().unwrap().success(),
        "the host's /usr/bin/false was replaced"
    );
    let got = changes(work, &job);
    let want = |c: &str, k: &str| Some((c.to_string(), k.to_string()));
    let at = |p: &str| got.get(p).cloned();
    assert_eq!(at("/usr/bin/false"), want("modified", "file"), "{got:?}");
    assert_eq!(
        at(&format!("/usr/bin/{tool}")),
        want("added", "file"),
        "{got:?}"
    );
    assert_eq!(at("/etc/hostname"), want("modified", "file"), "{got:?}");
    assert_eq!(at("/etc/hosts"), want("deleted", "file"), "{got:?}");
    assert_eq!(
        at(&format!("/usr/share/{tool}-dir")),
        want("added", "dir"),
        "{got:?}"
    );
    assert_eq!(
        at(&format!("/usr/share/{tool}-dir/f")),
        want("added", "file"),
        "{got:?}"
    );
    assert_eq!(got.len(), 6, "{got:?}");
    assert_eq!(
        job.enforcement["root"],
        "writable (overlay, changes in a 1024 MiB tmpfs): 3 added, 2 modified, 1 deleted"
    );
    // changes.json is warden's, not one of the job's outputs.
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            work.join("data/artifacts")
                .join(&job.job_id)
                .join("artifact.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(record["files"], serde_json::json!([]));
    // Nothing persists into the next job.
    let (again, out) = run(&c, "host_again").await;
    assert_eq!(again.status, JobStatus::Succeeded, "{again:?}");
    assert_eq!(out, "clean\n");
    // The changes are capped: more than root_mb is ENOSPC for the job.
    let (small, _) = run(&c, "host_small").await;
    assert_eq!(small.status, JobStatus::Failed, "{small:?}");
    // Without `root: writable` the root stays read-only.
    let (ro, _) = run(&c, "host_read_only").await;
    assert_eq!(ro.status, JobStatus::Failed, "{ro:?}");
    // Over an image: the image's files belong to the job, and what it changed is reported.
    let (img, out) = run(&c, "image_writable").await;
    assert_eq!(img.status, JobStatus::Succeeded, "{img:?}");
    assert_eq!(out, "changed\n");
    let got = changes(work, &img);
    let at = |p: &str| got.get(p).cloned();
    assert_eq!(
        at(&format!("/bin/{tool}")),
        want("added", "file"),
        "{got:?}"
    );
    assert_eq!(at("/etc/motd"), want("modified", "file"), "{got:?}");
    // The cached image itself is unchanged.
    let roots = work.join("data/images/roots");
    let root = std::fs::read_dir(&roots)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(
        std::fs::read_to_string(root.join("rootfs/etc/motd")).unwrap(),
        "writable\n"
    );
    assert!(!root.join("rootfs/bin").join(&tool).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_registry_is_reached_over_tls_with_a_login_from_the_secrets() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let (ca, cert, key) = crate::support::test_certs(work);
    const TOKEN: &str = "registry-token-7d1f0c9b5a";
    let hash = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import crypt; print(crypt.crypt({TOKEN:?}, crypt.mksalt(crypt.METHOD_BLOWFISH)))"
            ),
        ])
        .output()
        .unwrap();
    assert!(hash.status.success());
    let htpasswd = work.join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("ci:{}", String::from_utf8_lossy(&hash.stdout)),
    )
    .unwrap();
    let registry = Registry::start_with(
        work,
        &format!(
            "http: {{addr: ADDR, tls: {{certificate: {}, key: {}}}}}\nauth: {{htpasswd: {{realm: warden-test, path: {}}}}}\n",
            cert.display(),
            key.display(),
            htpasswd.display()
        ),
    );
    let image = format!("oci-archive:{}:v1", work.join("img.tar").display());
    build(work, "private", &image);
    registry.push_as(&image, "team/private:v1", Some(&format!("ci:{TOKEN}")));
    let secret = work.join("registry-token");
    std::fs::write(&secret, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let reference = format!("{}/team/private:v1", registry.host);
    let config = write_config_with(
        work,
        &format!(
            "secrets: {{REGISTRY_TOKEN: {{file: {secret}}}}}\n\
             images: {{registries: {{\"{host}\": {{ca_file: {ca}, credential: {{username: ci, secret: REGISTRY_TOKEN}}}}}}}}\n\
             job_types:\n{}",
            job_type("private", &reference),
            secret = secret.display(),
            host = registry.host,
            ca = ca.display(),
        ),
    );
    let server = Server::start(&config);
    let c = server.client();
    let (job, out) = run(&c, "private").await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(out, expected("private"));
    drop(server);
    // Without the login, or without the CA, the image cannot even be pinned.
    for registry_entry in [
        format!("{{ca_file: {}}}", ca.display()),
        "{credential: {username: ci, secret: REGISTRY_TOKEN}}".to_string(),
    ] {
        let data = work.join("data");
        let _ = std::fs::remove_dir_all(&data);
        let config = write_config_with(
            work,
            &format!(
                "secrets: {{REGISTRY_TOKEN: {{file: {secret}}}}}\n\
                 images: {{registries: {{\"{host}\": {registry_entry}}}}}\n\
                 job_types:\n{}",
                job_type("private", &reference),
                secret = secret.display(),
                host = registry.host,
            ),
        );
        let server = Server::start(&config);
        match server.client().submit(&req("private")).await {
            Err(ClientError::Api { code, message, .. }) => {
                assert_eq!(code, ErrorCode::ImageUnavailable, "{message}");
                assert!(!message.contains(TOKEN), "{message}");
            }
            other => panic!("{registry_entry}: expected image_unavailable, got {other:?}"),
        }
    }
}
