//! The `/metrics` HTTP endpoint.
//!
//! Plain HTTP/1.1 over a tokio listener, sized so that scrapers (or anything else that can
//! reach the port) cannot hold the daemon's resources: a fixed number of connections, a bounded
//! header buffer and read time, a cap on each connection's life, and request bodies never read.
//! The body of every answer is built from the registry in memory; nothing from the request is
//! echoed back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

/// Connections served at once; one more is closed as soon as it is accepted. A scraper needs
/// one; the rest is slack for a human with curl.
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's headers, also the idle limit between requests of a
/// kept-alive connection (hyper runs this timer while waiting for the next request).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's read buffer, which holds the request line and headers (hyper's floor is 8 KiB).
const MAX_BUF_SIZE: usize = 16 * 1024;
/// Longest life of one connection, so that a client reading its answer slowly, or scraping in
/// a tight loop, cannot keep a slot forever. Scrapers reconnect.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How long [`Endpoint::stop`] lets open connections finish their current answer.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of file descriptors), so that the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format 0.0.4, for clients that do not ask for OpenMetrics (curl,
/// `promtool check metrics`, older scrapers), as client_golang does.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the request's `Accept` header asks for OpenMetrics (Prometheus does, first).
fn wants_openmetrics(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

/// A running /metrics endpoint.
///
/// Dropping it without [`Endpoint::stop`] also stops the server, without waiting for it.
pub struct Endpoint {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The address actually bound, which differs from the one asked for when its port was 0
    /// (tests, and logging the port a daemon really serves).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets open connections finish their answer (at most a few seconds), and
    /// returns once the server task has ended, so that a daemon's shutdown leaves nothing
    /// running.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "metrics endpoint task failed");
        }
    }
}

/// Binds `addr` and serves `registry` until stopped. `refresh`, when given, runs (synchronously)
/// just before each encode, so a daemon can set gauges from its current state rather than
/// keep them up to date on every change.
///
/// A panic in `refresh` ends the one connection that triggered it, not the daemon.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    refresh: Option<Arc<dyn Fn() + Send + Sync>>,
) -> std::io::Result<Endpoint> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let scrape = Arc::new(Scrape { registry, refresh });
    let task = tokio::spawn(accept_loop(listener, scrape, stopped));
    Ok(Endpoint {
        local_addr,
        stop,
        task,
    })
}

struct Scrape {
    registry: Arc<Registry>,
    refresh: Option<Arc<dyn Fn() + Send + Sync>>,
}

async fn accept_loop(listener: TcpListener, scrape: Arc<Scrape>, stopped: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let mut stop = stopped.clone();
    loop {
        tokio::select! {
            // Also taken when the Endpoint is dropped (the sender is gone).
            _ = stop.changed() => break,
            Some(done) = connections.join_next() => log_connection_end(done),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        connections.spawn(serve_connection(
                            stream,
                            scrape.clone(),
                            stopped.clone(),
                            slot,
                        ));
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "metrics endpoint: too many connections, closing one");
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "metrics endpoint: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    // Each connection saw the stop through its own receiver and is finishing its answer.
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while let Some(done) = connections.join_next().await {
            log_connection_end(done);
        }
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
}

fn log_connection_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done {
        tracing::warn!(%error, "metrics endpoint: a connection task failed");
    }
}

async fn serve_connection(
    stream: TcpStream,
    scrape: Arc<Scrape>,
    mut stopped: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    // Answers are written whole; do not let Nagle hold back their tail.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request: Request<Incoming>| {
        std::future::ready(Ok::<_, Infallible>(scrape.answer(&request)))
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF_SIZE);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "metrics endpoint: connection ended");
            }
            return;
        }
        () = tokio::time::sleep(CONNECTION_LIFETIME) => {
            tracing::debug!("metrics endpoint: connection lifetime over, closing it");
            return;
        }
        _ = stopped.changed() => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(STOP_GRACE, connection).await;
}

impl Scrape {
    /// The whole routing table. The request body is never read: hyper discards what it has
    /// buffered and closes the connection rather than drain a large one.
    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.uri().path() != "/metrics" {
            return plain(
                StatusCode::NOT_FOUND,
                "not found: the metrics are at /metrics\n",
            );
        }
        if request.method() != Method::GET {
            let mut response = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: GET /metrics\n",
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
            return response;
        }
        if let Some(refresh) = &self.refresh {
            refresh();
        }
        let mut text = String::new();
        let (encoded, content_type) = if wants_openmetrics(request) {
            (
                prometheus_client::encoding::text::encode(&mut text, &self.registry),
                OPENMETRICS_TEXT,
            )
        } else {
            (
                prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry),
                PROMETHEUS_TEXT,
            )
        };
        match encoded {
            Ok(()) => {
                let mut response = Response::new(Full::new(Bytes::from(text)));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                response
            }
            Err(error) => {
                tracing::warn!(%error, "metrics endpoint: encoding the registry failed");
                plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding the metrics failed\n",
                )
            }
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
