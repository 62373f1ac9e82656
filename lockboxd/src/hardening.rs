//! Process hardening at start-up (DESIGN.md §2 invariant 8): key material must not reach a
//! core dump or swap.
//!
//! - Core dumps: the process is made non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`, which also
//!   keeps other processes of the same user from ptrace-attaching) and `RLIMIT_CORE` is set to
//!   0 (a non-dumpable process still dumps when `fs.suid_dumpable = 2`).
//! - Swap: `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`: every page is locked as it is
//!   first touched, so a page that ever held a key is never swapped out, while memory that is
//!   reserved but never touched (thread stacks, malloc arenas) is not made resident. Without
//!   `MCL_ONFAULT` the lock populated all of it: ~60 MiB more RSS for an idle daemon. Only
//!   when `RLIMIT_MEMLOCK` is unlimited
//!   (or `CAP_IPC_LOCK` lifts it). With a finite limit, `MCL_FUTURE` would make every
//!   allocation beyond it fail later (a daemon that dies on its next big read is worse than
//!   one that may swap), so then memory is left unlocked and one warning says how to allow it. `[hardening] mlock` chooses between
//!   that (`auto`), refusing to start (`required`) and not trying (`off`).
//!
//! The result is kept for `status` (`memory_locked`, `core_dumps_disabled`).

use std::sync::OnceLock;

use rustix::mm::{MlockAllFlags, mlockall};
use rustix::process::{DumpableBehavior, Resource, Rlimit, dumpable_behavior, getrlimit};

use crate::config::MlockMode;

/// How to allow memory locking; shown in the warning and in the `required` error.
pub const MLOCK_HINT: &str = "set LimitMEMLOCK=infinity in lockboxd's systemd unit, or run \
                              `ulimit -l unlimited` before starting lockboxd";

/// Why start-up hardening refuses to go on.
#[derive(Debug, thiserror::Error)]
pub enum HardeningError {
    /// `[hardening] mlock = "required"` and memory could not be locked.
    #[error(
        "memory locking is required ([hardening] mlock = \"required\") but {why}: {MLOCK_HINT}"
    )]
    MlockRequired {
        /// What prevented it (the limit, or the error of `mlockall`).
        why: String,
    },
}

/// What start-up hardening achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardening {
    /// `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)` succeeded.
    pub memory_locked: bool,
    /// Not dumpable and `RLIMIT_CORE` is 0 (read back, not assumed).
    pub core_dumps_disabled: bool,
}

static APPLIED: OnceLock<Hardening> = OnceLock::new();

/// Disables core dumps and, as `mode` says, locks memory. Call once, early in `main` (after
/// logging is set up, before the runtime starts threads and before any secret is read).
///
/// Failing to disable core dumps is logged, not fatal (a seccomp filter may refuse
/// `setrlimit` where systemd's `LimitCORE=0` already did the job; `status` reports what
/// holds). Failing to lock memory is fatal only with [`MlockMode::Required`].
pub fn apply(mode: MlockMode) -> Result<Hardening, HardeningError> {
    disable_core_dumps();
    let core_dumps_disabled = core_dumps_disabled();
    if !core_dumps_disabled {
        tracing::warn!(
            "core dumps are NOT disabled: key material could end up in a core file \
             (set LimitCORE=0 in the systemd unit, or `ulimit -c 0`)"
        );
    }
    let memory_locked = match mode {
        MlockMode::Off => {
            tracing::info!("memory locking is off ([hardening] mlock = \"off\")");
            false
        }
        MlockMode::Auto | MlockMode::Required => match lock_memory() {
            Ok(()) => {
                tracing::info!("memory locked (mlockall): key pages cannot be swapped out");
                true
            }
            Err(why) if mode == MlockMode::Required => {
                return Err(HardeningError::MlockRequired { why });
            }
            Err(why) => {
                tracing::warn!(
                    "memory is NOT locked ({why}): key material may be swapped to disk; \
                     to lock it, {MLOCK_HINT} ([hardening] mlock = \"off\" silences this)"
                );
                false
            }
        },
    };
    let h = Hardening {
        memory_locked,
        core_dumps_disabled,
    };
    let _ = APPLIED.set(h);
    Ok(h)
}

/// The hardening in force now: whether memory was locked at start-up, and whether core dumps
/// are disabled (read live, so a later change would show).
pub fn current() -> Hardening {
    Hardening {
        memory_locked: APPLIED.get().is_some_and(|h| h.memory_locked),
        core_dumps_disabled: core_dumps_disabled(),
    }
}

fn disable_core_dumps() {
    if let Err(e) = rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        tracing::warn!(error = %e, "prctl(PR_SET_DUMPABLE, 0) failed");
    }
    let zero = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if getrlimit(Resource::Core) != zero
        && let Err(e) = rustix::process::setrlimit(Resource::Core, zero)
    {
        tracing::warn!(error = %e, "setrlimit(RLIMIT_CORE, 0) failed");
    }
}

fn core_dumps_disabled() -> bool {
    matches!(dumpable_behavior(), Ok(DumpableBehavior::NotDumpable))
        && getrlimit(Resource::Core).current == Some(0)
}

/// Locks all current and future pages, if nothing caps how much may be locked:
/// `RLIMIT_MEMLOCK` is unlimited, or the process holds `CAP_IPC_LOCK` (which the limit does
/// not bind; e.g. root outside the shipped unit, which drops every capability).
fn lock_memory() -> Result<(), String> {
    let ipc_lock = rustix::thread::capabilities(None).is_ok_and(|c| {
        c.effective
            .contains(rustix::thread::CapabilitySet::IPC_LOCK)
    });
    if let (Some(limit), false) = (getrlimit(Resource::Memlock).current, ipc_lock) {
        return Err(format!(
            "RLIMIT_MEMLOCK is {limit} bytes, not unlimited (and no CAP_IPC_LOCK), and locking \
             future allocations under a finite limit would make them fail"
        ));
    }
    mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT)
        .map_err(|e| format!("mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) failed: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // The test process itself: `apply` is exercised on real daemons (tests/tests/e2e/hardening.rs),
    // since it changes the whole process. Here only what reads state without changing it.
    #[test]
    fn current_is_false_before_apply() {
        assert!(!current().memory_locked);
    }

    #[test]
    fn required_error_says_how_to_fix_it() {
        let e = HardeningError::MlockRequired {
            why: "RLIMIT_MEMLOCK is 65536 bytes".into(),
        };
        let s = e.to_string();
        assert!(s.contains("LimitMEMLOCK=infinity") && s.contains("ulimit -l unlimited"));
        assert!(s.contains("65536"));
    }
}
