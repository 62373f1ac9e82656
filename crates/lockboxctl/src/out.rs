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
