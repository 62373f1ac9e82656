//! The endpoint and the gRPC layer over real sockets: a raw HTTP/1.1 client for /metrics, and a
//! tonic server with the health service for the request metrics.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lockbox_metrics::prometheus_client::encoding::text::encode;
use lockbox_metrics::prometheus_client::metrics::counter::Counter;
use lockbox_metrics::prometheus_client::metrics::gauge::Gauge;
use lockbox_metrics::prometheus_client::registry::Registry;
use lockbox_metrics::{RpcMetrics, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::http::uri::PathAndQuery;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

struct Answer {
    status: u16,
    /// Header lines, names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection, read until the server closes it.
async fn http(addr: SocketAddr, method: &str, target: &str, extra: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn scrape_answers_openmetrics_and_runs_refresh() {
    let mut registry = Registry::default();
    let events = Counter::<u64>::default();
    let state = Gauge::<i64>::default();
    registry.register("test_events", "Events seen", events.clone());
    registry.register("test_state", "State set by the refresh hook", state.clone());
    events.inc_by(3);
    let refreshes = Arc::new(AtomicU64::new(0));
    let refresh = {
        let refreshes = refreshes.clone();
        Arc::new(move || {
            let n = refreshes.fetch_add(1, Ordering::SeqCst) + 1;
            state.set(i64::try_from(n).unwrap() * 10);
        })
    };
    let endpoint = serve(localhost(), Arc::new(registry), Some(refresh))
        .await
        .unwrap();
    let addr = endpoint.local_addr();
    assert_ne!(addr.port(), 0);

    // Prometheus asks for OpenMetrics first.
    let accept =
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n";
    let answer = http(addr, "GET", "/metrics", accept).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert_eq!(
        answer.body,
        "# HELP test_events Events seen.\n\
         # TYPE test_events counter\n\
         test_events_total 3\n\
         # HELP test_state State set by the refresh hook.\n\
         # TYPE test_state gauge\n\
         test_state 10\n\
         # EOF\n"
    );
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);

    // The hook runs before every scrape; a query string does not matter. A client that does
    // not ask for OpenMetrics (curl, promtool) gets the Prometheus text format 0.0.4, whose
    // counter TYPE lines name the `_total` series.
    let answer = http(addr, "GET", "/metrics?x=1", "").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(answer.body.contains("\ntest_state 20\n"), "{}", answer.body);
    assert!(
        answer.body.contains("# TYPE test_events_total counter\n"),
        "{}",
        answer.body
    );
    assert!(!answer.body.contains("# EOF"), "{}", answer.body);
    assert_eq!(refreshes.load(Ordering::SeqCst), 2);

    endpoint.stop().await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn other_paths_and_methods_are_refused() {
    let refreshes = Arc::new(AtomicU64::new(0));
    let refresh = {
        let refreshes = refreshes.clone();
        Arc::new(move || {
            refreshes.fetch_add(1, Ordering::SeqCst);
        })
    };
    let endpoint = serve(localhost(), Arc::new(Registry::default()), Some(refresh))
        .await
        .unwrap();
    let addr = endpoint.local_addr();

    for path in ["/", "/metric", "/metrics/", "/favicon.ico"] {
        let answer = http(addr, "GET", path, "").await;
        assert_eq!(answer.status, 404, "{path}");
        assert!(answer.body.contains("/metrics"), "{}", answer.body);
    }
    for method in ["POST", "PUT", "DELETE", "HEAD"] {
        let answer = http(addr, method, "/metrics", "Content-Length: 5\r\n").await;
        assert_eq!(answer.status, 405, "{method}");
        assert_eq!(answer.header("allow"), Some("GET"), "{method}");
    }
    // A large body announced is neither waited for nor read.
    let answer = http(addr, "POST", "/metrics", "Content-Length: 100000000\r\n").await;
    assert_eq!(answer.status, 405);
    assert_eq!(refreshes.load(Ordering::SeqCst), 0);

    // Too large headers end in an error, not a stuck or crashed server.
    let big = format!("X-Big: {}\r\n", "a".repeat(64 * 1024));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{big}\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"));
    assert_eq!(http(addr, "GET", "/metrics", "").await.status, 200);

    endpoint.stop().await;
}

#[tokio::test]
async fn connections_are_bounded_and_stop_does_not_wait_for_idle_ones() {
    let endpoint = serve(localhost(), Arc::new(Registry::default()), None)
        .await
        .unwrap();
    let addr = endpoint.local_addr();

    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // The 65th is accepted and closed at once.
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // Closing one frees its slot.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut raw = Vec::new();
        if stream.write_all(request.as_bytes()).await.is_ok()
            && stream.read_to_end(&mut raw).await.is_ok()
            && raw.starts_with(b"HTTP/1.1 200")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no slot was freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = Instant::now();
    endpoint.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

const METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];

#[tokio::test]
async fn grpc_requests_are_counted_by_method_and_code() {
    let mut registry = Registry::default();
    let rpc = RpcMetrics::register(&mut registry, "test");
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(rpc.layer(METHODS))
            .add_service(health)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel.clone());
    let check = |service: &str| HealthCheckRequest {
        service: service.to_owned(),
    };

    client.check(check("")).await.unwrap();
    let status = client.check(check("nope.v1.Nope")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    for path in ["/grpc.health.v1.Health/Nope", "/other.v1.Other/Call"] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let status = grpc
            .unary::<_, HealthCheckResponse, _>(
                tonic::Request::new(check("")),
                PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{path}");
    }
    // A stream the client walks away from is counted as Canceled, when the server sees it go.
    let mut watch = client.watch(check("")).await.unwrap().into_inner();
    assert!(watch.message().await.unwrap().is_some());
    drop(watch);

    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        text.clear();
        encode(&mut text, &registry).unwrap();
        if text.contains("test_requests_total{method=\"Health/Watch\",code=\"Canceled\"} 1\n") {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for line in [
        "# TYPE test_requests counter",
        "# TYPE test_request_duration_seconds histogram",
        "# UNIT test_request_duration_seconds seconds",
        "test_requests_total{method=\"Health/Check\",code=\"OK\"} 1",
        "test_requests_total{method=\"Health/Check\",code=\"NotFound\"} 1",
        "test_requests_total{method=\"other\",code=\"Unimplemented\"} 2",
        "test_requests_total{method=\"Health/Watch\",code=\"OK\"} 0",
        "test_request_duration_seconds_count{method=\"Health/Check\"} 2",
        "test_request_duration_seconds_count{method=\"Health/Watch\"} 1",
        "test_request_duration_seconds_count{method=\"other\"} 2",
        "test_request_duration_seconds_bucket{le=\"30.0\",method=\"Health/Check\"} 2",
        "test_request_duration_seconds_bucket{le=\"+Inf\",method=\"Health/Check\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    // Caller-chosen paths never become label values; every request is counted once.
    assert!(!text.contains("Nope") && !text.contains("Other"), "{text}");
    let total: u64 = text
        .lines()
        .filter(|l| l.starts_with("test_requests_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 5, "{text}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
