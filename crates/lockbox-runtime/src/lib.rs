//! Process set-up shared by `lockboxd` and `lockbox-controller`, so the two daemons log, stop
//! and exit the same way and an operator learns one set of conventions:
//!
//! - logs go to stderr (journald takes them from there), filtered by `LOCKBOX_LOG` (tracing's
//!   `EnvFilter` syntax, default `info`), as text or as one JSON object per line;
//! - SIGTERM and SIGINT stop a daemon cleanly (final audit checkpoint, store flushed);
//! - exit codes follow sysexits.h where one fits, so systemd units and scripts can tell a
//!   config mistake (do not restart) from a passing failure (restart).

mod limits;

pub use limits::{MethodLimits, MethodLimitsLayer};

/// EX_CONFIG: the configuration is wrong; restarting will not help until it is fixed.
pub const EXIT_CONFIG: u8 = 78;

/// EX_TEMPFAIL: the daemon stopped to protect acknowledged data (its store could not write
/// or sync); it may succeed once the cause (disk full, I/O error) is gone.
pub const EXIT_TEMPFAIL: u8 = 75;

/// Installs the global log subscriber: stderr, `LOCKBOX_LOG` filter (default `info`), colour
/// only on a terminal, JSON lines when `json`.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCKBOX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The daemons' async runtime: tokio's multi-threaded scheduler with I/O and timers.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Resolves on the first SIGTERM or SIGINT (logged). When the handlers cannot be installed it
/// logs why and never resolves: the daemon then runs until SIGKILL rather than not at all.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Wall-clock time in unix milliseconds: the one clock of grants, attestations, audit records
/// and receipts (which carry it as `*_unix_ms`). A clock before 1970 reads as 0, which every
/// validity check then refuses as not yet valid or long expired, never as valid.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Most concurrent HTTP/2 streams (and requests in service) per connection: an evacuation
/// uses a handful; a client opening thousands to make the daemon buffer each is refused.
pub const MAX_CONCURRENT_STREAMS: u32 = 64;
/// Largest HTTP/2 header list a server accepts (gRPC metadata is small).
pub const MAX_HEADER_LIST: u32 = 16 * 1024;
/// HTTP/2 flow-control windows: how much a client may send ahead of what the handler has
/// read, per stream and per connection. Large enough for a transfer batch in flight.
pub const STREAM_WINDOW: u32 = 1 << 20;
/// See [`STREAM_WINDOW`].
pub const CONNECTION_WINDOW: u32 = 4 << 20;
/// HTTP/2 pings on idle connections, and how long an answer may take: a peer that vanished
/// (power loss, partition) stops holding a connection within a minute.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// A gRPC server with the limits every lockbox server applies (the Unix socket, the peer API,
/// the controller): bounded streams per connection, header list, frame size and windows,
/// keepalive pings, and `request_timeout` for the whole of any one request (a stalled or
/// trickling client cannot hold a handler forever). The message size limits are set per
/// service, sized to what the service receives.
pub fn server(request_timeout: std::time::Duration) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .concurrency_limit_per_connection(MAX_CONCURRENT_STREAMS as usize)
        .http2_max_header_list_size(MAX_HEADER_LIST)
        .max_frame_size(16 * 1024)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .http2_max_pending_accept_reset_streams(Some(20))
        .timeout(request_timeout)
}
