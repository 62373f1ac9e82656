//! Per-method gRPC request counts and latencies, as a tower layer in front of tonic's router.
//!
//! Invariants that keep the metrics cheap and bounded:
//! - label values are `&'static str` only: the method label is a slice of a path the daemon
//!   listed at start-up and the code label comes from a fixed table, so a caller cannot create
//!   series (any path not listed is `method="other"`);
//! - each request is counted exactly once, by a [`Tally`] that records either when the status is
//!   known (response headers of a trailers-only answer, or the body's trailers) or, failing
//!   that, when it is dropped;
//! - the per-request path allocates nothing of its own: histograms are fetched when the layer is
//!   built and counters on their first use.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds, in seconds, of the latency histograms' buckets.
const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Histogram buckets in seconds for request and disk-sync latencies: 100 µs .. 30 s, including
/// 0.05. One set for every latency we export, so that dashboards can compare them bucket by
/// bucket and SLO queries can use `le="0.05"`.
pub fn latency_buckets() -> impl Iterator<Item = f64> + Clone {
    LATENCY_BUCKETS.into_iter()
}

/// gRPC status names as grpc-go and grpc-prometheus print them, indexed by the status number,
/// so that dashboards written for Go services work unchanged.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const OK: usize = 0;
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;
const INTERNAL: usize = 13;

/// The method label of every path not listed in [`RpcMetrics::layer`].
const OTHER: &str = "other";

/// The status in a `grpc-status` header or trailer, as an index into [`CODE_NAMES`] (always in
/// bounds: anything but "0".."16" is Unknown, as in gRPC's own clients).
fn status_code(headers: &HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?;
    Some(match value.as_bytes() {
        [digit @ b'0'..=b'9'] => usize::from(digit - b'0'),
        [b'1', digit @ b'0'..=b'6'] => 10 + usize::from(digit - b'0'),
        _ => UNKNOWN,
    })
}

/// "/lockbox.v1.Lockbox/CreateKey" -> "Lockbox/CreateKey": the service without its package and
/// the method, short enough for a legend and unique within one daemon. A suffix of the path, so
/// it borrows the `'static` path instead of allocating.
fn method_label(path: &'static str) -> &'static str {
    let full = path.strip_prefix('/').unwrap_or(path);
    let service = full.split('/').next().unwrap_or(full);
    match service.rfind('.') {
        Some(dot) => full.get(dot + 1..).unwrap_or(full),
        None => full,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

type Durations = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// The request metrics of one gRPC server: registered once at start-up, then turned into a
/// layer for each server that should be measured.
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Durations,
}

impl RpcMetrics {
    /// Registers `<prefix>_requests_total{method,code}` (counter) and
    /// `<prefix>_request_duration_seconds{method}` (histogram, buckets from
    /// [`latency_buckets`]) in `registry`. `prefix` is e.g. "lockbox" or "lockbox_controller",
    /// so that the two daemons' series stay apart when one Prometheus scrapes both.
    pub fn register(registry: &mut Registry, prefix: &str) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Durations::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register(
            format!("{prefix}_requests"),
            "gRPC requests answered, by method and status code",
            requests.clone(),
        );
        registry.register_with_unit(
            format!("{prefix}_request_duration"),
            "Time from receiving a gRPC request to the end of its response, by method",
            Unit::Seconds,
            durations.clone(),
        );
        RpcMetrics {
            requests,
            durations,
        }
    }

    /// A layer that counts and times every request whose path is in `methods` (full gRPC paths
    /// like "/lockbox.v1.Lockbox/CreateKey", "/grpc.health.v1.Health/Check"); any other path is
    /// labelled method="other", because the path is caller-controlled text and must never
    /// become a label value.
    ///
    /// Listed methods get their latency series and their `code="OK"` count at once (at zero),
    /// so that they are present before the first call and `rate()` sees the first one.
    pub fn layer(&self, methods: &'static [&'static str]) -> RpcMetricsLayer {
        let route = |method| Route {
            method,
            duration: self.durations.get_or_create_owned(&MethodLabels { method }),
            requests: std::array::from_fn(|_| OnceLock::new()),
        };
        let mut routes: Vec<Route> = methods
            .iter()
            .map(|path| route(method_label(path)))
            .collect();
        for listed in &routes {
            let ok = self.requests.get_or_create_owned(&RequestLabels {
                method: listed.method,
                code: CODE_NAMES[OK],
            });
            let _ = listed.requests[OK].set(ok);
        }
        routes.push(route(OTHER));
        RpcMetricsLayer {
            table: Arc::new(Table {
                paths: methods,
                routes: routes.into_boxed_slice(),
                requests: self.requests.clone(),
            }),
        }
    }
}

/// What the layer knows, shared by every clone of the service.
#[derive(Debug)]
struct Table {
    paths: &'static [&'static str],
    /// One per path, in the same order, then one for "other".
    routes: Box<[Route]>,
    requests: Family<RequestLabels, Counter>,
}

#[derive(Debug)]
struct Route {
    method: &'static str,
    duration: Histogram,
    /// The counter of each status code, fetched from the family on first use.
    requests: [OnceLock<Counter>; CODE_NAMES.len()],
}

impl Table {
    fn route_of(&self, path: &str) -> usize {
        self.paths
            .iter()
            .position(|listed| *listed == path)
            .unwrap_or(self.paths.len())
    }

    fn record(&self, route: usize, code: usize, elapsed: Duration) {
        let Some(route) = self.routes.get(route) else {
            return;
        };
        let (Some(counter), Some(&code)) = (route.requests.get(code), CODE_NAMES.get(code)) else {
            return;
        };
        counter
            .get_or_init(|| {
                self.requests.get_or_create_owned(&RequestLabels {
                    method: route.method,
                    code,
                })
            })
            .inc();
        route.duration.observe(elapsed.as_secs_f64());
    }
}

/// The tower layer [`RpcMetrics::layer`] makes, to put in a tonic server chain with
/// `Server::builder().layer(..)`.
#[derive(Clone, Debug)]
pub struct RpcMetricsLayer {
    table: Arc<Table>,
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetered<S>;

    fn layer(&self, inner: S) -> RpcMetered<S> {
        RpcMetered {
            inner,
            table: self.table.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] makes. Its responses have tonic's body type whatever the
/// inner service's body is, so that it fits anywhere in a tonic server's layer chain.
#[derive(Clone, Debug)]
pub struct RpcMetered<S> {
    inner: S,
    table: Arc<Table>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcMetered<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let tally = Tally {
            route: self.table.route_of(request.uri().path()),
            table: self.table.clone(),
            start: Instant::now(),
            header_code: None,
            done: false,
        };
        ResponseFuture {
            inner: self.inner.call(request),
            tally: Some(tally),
        }
    }
}

/// Counts one request exactly once: through [`Tally::finish`] when its status is known,
/// else when dropped — the response or its body went away unfinished, which for a server
/// means the client cancelled.
struct Tally {
    table: Arc<Table>,
    route: usize,
    start: Instant,
    /// The status from the response headers (a trailers-only answer), if any.
    header_code: Option<usize>,
    done: bool,
}

impl Tally {
    fn finish(&mut self, code: usize) {
        if !self.done {
            self.done = true;
            self.table.record(self.route, code, self.start.elapsed());
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.finish(self.header_code.unwrap_or(CANCELED));
    }
}

pin_project_lite::pin_project! {
    /// The future of [`RpcMetered`]: the inner service's, with the request's [`Tally`] handed
    /// to the response body once there is one.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        tally: Option<Tally>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Output = Result<http::Response<tonic::body::Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some(mut tally) = this.tally.take() else {
            // Polled again after completing: nothing left to count.
            return Poll::Ready(result.map(|response| response.map(tonic::body::Body::new)));
        };
        Poll::Ready(match result {
            Ok(response) => {
                let header_code = status_code(response.headers());
                if response.body().is_end_stream() {
                    tally.finish(header_code.unwrap_or(UNKNOWN));
                    Ok(response.map(tonic::body::Body::new))
                } else {
                    tally.header_code = header_code;
                    Ok(response.map(|inner| tonic::body::Body::new(MeteredBody { inner, tally })))
                }
            }
            Err(error) => {
                // tonic turns a service error into a status of its own; we cannot see which.
                tally.finish(UNKNOWN);
                Err(error)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its request when the trailers go by, at its end, or when it
    /// is dropped unfinished.
    struct MeteredBody<B> {
        #[pin]
        inner: B,
        tally: Tally,
    }
}

impl<B: http_body::Body> http_body::Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = ready!(this.inner.poll_frame(cx));
        let tally = this.tally;
        match &polled {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = status_code(trailers).or(tally.header_code);
                    tally.finish(code.unwrap_or(UNKNOWN));
                }
            }
            // The stream is reset; the client sees no status from us.
            Some(Err(_)) => tally.finish(tally.header_code.unwrap_or(INTERNAL)),
            None => tally.finish(tally.header_code.unwrap_or(UNKNOWN)),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn method_labels_drop_the_package() {
        assert_eq!(
            method_label("/lockbox.v1.Lockbox/CreateKey"),
            "Lockbox/CreateKey"
        );
        assert_eq!(method_label("/grpc.health.v1.Health/Check"), "Health/Check");
        assert_eq!(method_label("/Plain/Call"), "Plain/Call");
        assert_eq!(method_label("no.slash"), "slash");
        assert_eq!(method_label(""), "");
    }

    #[test]
    fn status_codes_parse_strictly() {
        let code = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-status", http::HeaderValue::from_static(value));
            status_code(&headers).map(|code| CODE_NAMES[code])
        };
        assert_eq!(code("0"), Some("OK"));
        assert_eq!(code("1"), Some("Canceled"));
        assert_eq!(code("5"), Some("NotFound"));
        assert_eq!(code("12"), Some("Unimplemented"));
        assert_eq!(code("16"), Some("Unauthenticated"));
        for bad in ["17", "-1", "+1", "01", "", "x", "100", "1 "] {
            assert_eq!(code(bad), Some("Unknown"), "{bad:?}");
        }
        assert_eq!(status_code(&HeaderMap::new()), None);
    }

    #[test]
    fn buckets_cover_100us_to_30s() {
        let buckets: Vec<f64> = latency_buckets().collect();
        assert_eq!(buckets.first(), Some(&0.0001));
        assert_eq!(buckets.last(), Some(&30.0));
        assert!(buckets.contains(&0.05));
        assert!(buckets.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
