//! A real software TPM for tests and demos: `swtpm socket --tpm2` on loopback.
//!
//! Tests of the `tpm2` unseal method run against it rather than a mock, so they exercise the
//! same libtss2 and TPM command paths as a host with `/dev/tpmrm0`. Debian's `swtpm` package
//! provides the binary (`deploy/test.sh` installs it); a missing binary is an error, never a
//! skipped test.

use std::{
    fs::{self, File},
    io::{self, Read},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::error::TpmError;

/// How long `start` waits for swtpm to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts with fresh ports when another process took ours between probing and swtpm's bind.
const START_ATTEMPTS: usize = 5;

/// A running `swtpm socket --tpm2` process, killed when dropped.
///
/// Its TPM state (including the owner seed, which decides whether a slot loads) lives in the
/// `state_dir` given to [`Swtpm::start`]: start again on the same directory and it is the same
/// TPM; another directory is another TPM.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    port: u16,
    state_dir: PathBuf,
}

impl Swtpm {
    /// Starts swtpm with its state in `state_dir` (created if missing) on two free adjacent
    /// ports of 127.0.0.1 (server N, control N+1: the swtpm TCTI derives the control port that
    /// way), manufactured and started up on first use (`--flags not-need-init,startup-clear`),
    /// and returns once the server port accepts connections.
    ///
    /// Errors: `NotFound` if swtpm is not installed; otherwise an error carrying swtpm's own
    /// output when it exits or does not answer within 10 seconds.
    pub fn start(state_dir: &Path) -> io::Result<Swtpm> {
        fs::create_dir_all(state_dir)?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port_pair()?;
            match Self::spawn(state_dir, port) {
                Ok(swtpm) => return Ok(swtpm),
                // NotFound (no swtpm binary) will not improve with other ports.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("swtpm did not start")))
    }

    /// The TCTI string for [`seal`](crate::seal) and [`unseal`](crate::unseal):
    /// `swtpm:host=127.0.0.1,port=N`.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The TPM server port (the control channel is the next one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding this TPM's state.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Extends SHA-256 PCR `pcr` with `digest`, as a changed bootloader or secure-boot
    /// configuration would at boot: after it, slots bound to that PCR no longer unseal.
    pub fn extend_pcr(&self, pcr: u32, digest: [u8; 32]) -> Result<(), TpmError> {
        crate::tpm::extend_pcr(&self.tcti(), pcr, digest)
    }

    fn spawn(state_dir: &Path, port: u16) -> io::Result<Swtpm> {
        let log_path = state_dir.join("swtpm.log");
        let log = File::create(&log_path)?;
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", state_dir.display()))
            .arg("--server")
            .arg(format!("type=tcp,bindaddr=127.0.0.1,port={port}"))
            .arg("--ctrl")
            .arg(format!("type=tcp,bindaddr=127.0.0.1,port={}", port + 1))
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        "swtpm not found on PATH: install Debian's swtpm package \
                         (deploy/test.sh does)",
                    )
                } else {
                    e
                }
            })?;
        // From here on Drop kills the child on every error path.
        let mut swtpm = Swtpm {
            child,
            port,
            state_dir: state_dir.to_path_buf(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = swtpm.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "swtpm exited at start ({status}): {}",
                    read_log(&log_path)
                )));
            }
            let answers = |p: u16| {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, p));
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            };
            if answers(port) && answers(port + 1) {
                return Ok(swtpm);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "swtpm did not answer on 127.0.0.1:{port} within {START_TIMEOUT:?}: {}",
                        read_log(&log_path)
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        // Already exited is fine; either way reap it so no zombie outlives the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two adjacent free ports on 127.0.0.1, drawn from 20000..32000: below Linux's ephemeral
/// range (32768 and up), where tests that ask the kernel for a free port (port 0) get theirs,
/// so a swtpm never takes a port such a test has just been given and not yet bound. Free when
/// probed: a race with another swtpm is possible, which `start` absorbs by retrying.
fn free_port_pair() -> io::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    for attempt in 0u64..256 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(attempt);
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 11_999) as u16;
        let Ok(first) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) else {
            continue;
        };
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            drop(first);
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        "no two adjacent free ports on 127.0.0.1",
    ))
}

/// swtpm's own output, for an error message (bounded: it is a log, not a secret).
fn read_log(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(f) = File::open(path) {
        let _ = f.take(4096).read_to_string(&mut text);
    }
    let text = text.trim();
    if text.is_empty() {
        "(no output)".to_owned()
    } else {
        text.to_owned()
    }
}
