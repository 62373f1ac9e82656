//! Everything lockboxctl prints on stdout goes through here.
//!
//! `println!` panics when stdout is gone (`lockboxctl key list | head -1` closes the pipe after
//! the first line), which shows a backtrace for something that is not a failure. Like other
//! Unix tools, lockboxctl instead stops quietly with the status a `SIGPIPE` would give (141), so
//! `set -o pipefail` scripts see the same thing they see from `ls | head`. Any other write error
//! (a full disk behind `> file`) is a real failure: one `error:` line and status 1.
//!
//! The daemon's `SIGPIPE` handling is not touched: Rust ignores the signal, and a write to a
//! closed Unix socket must stay an error the RPC layer reports, not a silent death.

use std::io::{ErrorKind, Write};
use std::time::{Duration, UNIX_EPOCH};

/// The exit status of a process killed by `SIGPIPE` (128 + 13), which shells and
/// `set -o pipefail` already know as "the reader went away".
pub const CLOSED_PIPE_STATUS: i32 = 141;

/// Writes `args` and a newline to stdout, or ends the process as described in the module doc.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    if let Err(e) = written {
        fail(&e);
    }
}

/// Writes `args` to stdout without a newline (text that brings its own).
pub fn text(args: std::fmt::Arguments<'_>) {
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        fail(&e);
    }
}

/// Writes raw bytes (a key in `--format raw`) and flushes them.
pub fn bytes(data: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(data).and_then(|()| out.flush()) {
        fail(&e);
    }
}

/// The first unix millisecond RFC 3339 cannot write (year 10000); humantime refuses to format it.
const RFC3339_END_UNIX_MS: u64 = 253_402_300_800_000;

/// A time in unix milliseconds as people read it: RFC 3339 in UTC with milliseconds
/// (`2025-06-01T12:00:00.000Z`), `-` for 0 (not set), and the number itself for a time past
/// year 9999. `--json` keeps the numbers.
pub fn time(unix_ms: u64) -> String {
    match unix_ms {
        0 => "-".to_string(),
        RFC3339_END_UNIX_MS.. => format!("{unix_ms} (unix ms)"),
        ms => humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
    }
}

/// Whether an error means the reader of stdout went away (as opposed to a write that failed).
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
    })
}

/// Ends the process after a failed stdout write. Exits at once rather than unwinding: the
/// command's work is done (output is the last step) and nothing is left to clean up that the
/// kernel does not reclaim; key material in this process lives in zeroizing buffers that the
/// exit discards with the address space.
fn fail(e: &std::io::Error) -> ! {
    if e.kind() == ErrorKind::BrokenPipe {
        std::process::exit(CLOSED_PIPE_STATUS);
    }
    eprintln!("error: cannot write to stdout: {e}");
    std::process::exit(1);
}

/// `println!` that treats a closed stdout as the end of the command instead of a panic.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}

/// `print!` counterpart of [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::text(format_args!($($arg)*))
    };
}

pub(crate) use {out, outln};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1), "1970-01-01T00:00:00.001Z");
        assert_eq!(time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(time(RFC3339_END_UNIX_MS - 1), "9999-12-31T23:59:59.999Z");
        assert_eq!(time(RFC3339_END_UNIX_MS), "253402300800000 (unix ms)");
        assert_eq!(time(u64::MAX), format!("{} (unix ms)", u64::MAX));
    }
}
