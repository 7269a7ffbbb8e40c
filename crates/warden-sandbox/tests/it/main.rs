//! warden-sandbox's integration tests. The sandbox itself is exercised end to end by the
//! `warden` crate's hostile-job suite; here, the probe those tests rely on must be able to fail.

use std::process::Command;

const PROBE: &str = env!("CARGO_BIN_EXE_warden-probe");

#[test]
fn probe_reports_violations_outside_the_sandbox() {
    let out = Command::new(PROBE)
        .arg("inspect")
        .current_dir("/")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "the host is not a sandbox");
    let text = String::from_utf8_lossy(&out.stdout);
    // The test process is neither pid 2 nor uid 1000 in a box of its own.
    assert!(text.contains("VIOLATION pid"), "{text}");
    assert!(text.contains("VIOLATION cwd /"), "{text}");
    assert!(!text.contains("INSPECT OK"), "{text}");
}

#[test]
fn probe_refuses_unknown_modes() {
    let out = Command::new(PROBE).arg("no-such-mode").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "unknown mode no-such-mode\n"
    );
}

#[test]
fn seccomp_policy_denies_in_a_real_process() {
    // The probe's namespace mode outside the sandbox, but under the policy: a child installs
    // the filters first (it needs no_new_privs), then tries.
    let out = Command::new(PROBE)
        .arg("seccomp-self-test")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for what in [
        "unshare user",
        "mount tmpfs",
        "keyctl",
        "bpf",
        "io_uring_setup",
        "ptrace attach init",
    ] {
        assert!(text.contains(&format!("BLOCKED {what}")), "{what}: {text}");
    }
    assert!(!text.contains("ALLOWED"), "{text}");
}
