//! Test hooks that make a daemon crash or wait at an exact step (`LOCKBOX_FAILPOINT`), so
//! crash and race tests hit that step instead of racing a signal or a timer against it.
//! Unset in production, each costs one environment lookup at the step.

/// Crash-test hook: when `LOCKBOX_FAILPOINT` names this point, the process exits at once,
/// without destructors or flushes, as a `kill -9` there would. Lets tests crash a daemon at an
/// exact step (e.g. after the destination's receipt, before the MOVE tombstone) instead of
/// racing a signal against it. Unset in production, it costs one env lookup per transfer.
pub fn hit(name: &str) {
    if std::env::var("LOCKBOX_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: exiting now");
        std::process::exit(86);
    }
}

/// Race-test hook: when `LOCKBOX_FAILPOINT` is `pause:NAME:MS`, the step named NAME waits MS
/// milliseconds, so a test can change a key at an exact point of a transfer (e.g. rekey it
/// after the destination's receipt, before the source completes) instead of racing a timer.
pub async fn pause(name: &str) {
    let Ok(v) = std::env::var("LOCKBOX_FAILPOINT") else {
        return;
    };
    let mut parts = v.splitn(3, ':');
    if parts.next() == Some("pause")
        && parts.next() == Some(name)
        && let Some(ms) = parts.next().and_then(|ms| ms.parse::<u64>().ok())
    {
        eprintln!("failpoint {name}: pausing {ms} ms");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}
