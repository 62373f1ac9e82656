//! Accepting on the Unix socket without spinning when accepting fails.
//!
//! tonic's server loop goes straight back to `accept` after an error. When the process is out
//! of file descriptors (`EMFILE`), the listening socket stays readable and every `accept`
//! fails at once, so that loop burned a core while no client got in. Here a failed accept waits
//! before the next one (10 ms, doubling to 1 s while failures go on), logs the first failure
//! and then one in a hundred, and goes back to full speed after the first success. The peer
//! API's TLS listener (lockbox-tls) backs off the same way.

use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The accepted connections of `listener`, as tonic's `serve_with_incoming` takes them. The
/// listener closes when the stream is dropped (at shutdown).
pub fn unix_incoming(listener: UnixListener) -> ReceiverStream<std::io::Result<UnixStream>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        let mut failures: u64 = 0;
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    if failures > 0 {
                        tracing::info!(failures, "accepting on the socket works again");
                    }
                    backoff = FIRST_BACKOFF;
                    failures = 0;
                    if tx.send(Ok(stream)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if failures.is_multiple_of(100) {
                        tracing::warn!(
                            error = %e,
                            failures = failures + 1,
                            "cannot accept a connection on the socket (out of file descriptors? \
                             see LimitNOFILE); backing off"
                        );
                    }
                    failures += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    });
    ReceiverStream::new(rx)
}
