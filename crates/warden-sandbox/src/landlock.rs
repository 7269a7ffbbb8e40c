//! Landlock: the job may read and execute everywhere in its view, write only to its scratch
//! space, `/tmp`, `/dev/shm` and the artifact directory, and (where the kernel's ABI allows) may
//! neither connect to abstract unix sockets nor signal processes outside its own domain.

use ::landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, path_beneath_rules,
};

use crate::paths::{ARTIFACTS, TMP};

/// The newest ABI warden asks for; older kernels get the best they support.
const ABI_WANTED: ABI = ABI::V6;

/// Landlock could not be applied, or enforces nothing here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LandlockError(pub String);

/// Restricts the calling thread (and what it execs). Fails when Landlock enforces nothing:
/// the sandbox never silently runs without it. `writable`: more directories the job may write
/// (a writable root's overlays).
pub fn restrict(writable: &[std::path::PathBuf]) -> Result<RulesetStatus, LandlockError> {
    let e = |e: ::landlock::RulesetError| LandlockError(e.to_string());
    let read = AccessFs::from_read(ABI_WANTED);
    let all = AccessFs::from_all(ABI_WANTED);
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .map_err(e)?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(e)?
        .create()
        .map_err(e)?
        .add_rules(path_beneath_rules(["/"], read))
        .map_err(e)?
        .add_rules(path_beneath_rules([TMP, "/dev/shm", ARTIFACTS], all))
        .map_err(e)?
        .add_rules(path_beneath_rules(writable, all))
        .map_err(e)?
        .add_rules(path_beneath_rules(
            ["/dev/null", "/dev/zero", "/dev/full"],
            AccessFs::WriteFile | AccessFs::ReadFile,
        ))
        .map_err(e)?
        .restrict_self()
        .map_err(e)?;
    match status.ruleset {
        RulesetStatus::NotEnforced => Err(LandlockError(
            "landlock is not enforced by this kernel".into(),
        )),
        s => Ok(s),
    }
}

/// The ABI the running kernel offers (0 when Landlock is off), for `warden doctor`.
pub fn kernel_abi() -> i64 {
    // SAFETY: landlock_create_ruleset with a null attr, size 0 and the VERSION flag only
    // returns the ABI number.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    }
}
