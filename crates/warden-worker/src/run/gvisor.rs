//! The gVisor tier on a worker: given where it can be, refused (fail closed) where not.

use warden_sandbox::{GvisorSpec, Tier};

use super::verdict::Refusal;

/// The gVisor tier on this worker, or why it cannot give it (fail closed: never a job that
/// asked for gVisor run natively).
pub(super) fn runtime(
    tier: Tier,
    rootless: bool,
    config: &warden_core::GvisorConfig,
) -> Result<GvisorSpec, Refusal> {
    let refuse = |why: String| Refusal::new("sandbox_setup_failed", format!("gvisor: {why}"));
    if tier == Tier::UnsafeFallback {
        return Err(refuse(
            "runs inside the kernel sandbox; this worker runs jobs unsandboxed (unsafe_fallback)"
                .into(),
        ));
    }
    if rootless {
        return Err(refuse(
            "needs warden running as root; this worker is rootless".into(),
        ));
    }
    match config.runsc() {
        Some(runsc) if runsc.is_file() => Ok(GvisorSpec { runsc }),
        Some(runsc) => Err(refuse(format!(
            "runsc {} not found (gvisor.runsc)",
            runsc.display()
        ))),
        None => Err(refuse(
            "runsc not found in /usr/local/bin, /usr/bin or /usr/sbin: install gVisor (Debian: \
             apt-get install runsc) or set gvisor.runsc"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn gvisor_is_given_only_where_it_can_be_and_refused_saying_why() {
        let at = |p: &str| warden_core::GvisorConfig {
            runsc: Some(PathBuf::from(p)),
        };
        // Any existing file stands in for runsc: only its presence is checked here.
        let present = at("/bin/sh");
        let spec = runtime(Tier::Sandbox, false, &present).unwrap();
        assert_eq!(spec.runsc, PathBuf::from("/bin/sh"));
        for (tier, rootless, config, why) in [
            (
                Tier::UnsafeFallback,
                false,
                &present,
                "unsandboxed (unsafe_fallback)",
            ),
            (
                Tier::Sandbox,
                true,
                &present,
                "needs warden running as root",
            ),
            (
                Tier::Sandbox,
                false,
                &at("/nonexistent/runsc"),
                "runsc /nonexistent/runsc not found",
            ),
        ] {
            let refusal = runtime(tier, rootless, config).unwrap_err();
            let reason = refusal.reason();
            assert!(
                reason.starts_with("sandbox_setup_failed: gvisor: "),
                "{reason}"
            );
            assert!(reason.contains(why), "{reason}");
        }
    }
}
