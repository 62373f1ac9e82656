//! Shared helpers: a development PKI in a temp dir and a tonic health server behind our
//! mTLS listener, with an interceptor that records who called (via `peer_spiffe_id`).
#![allow(clippy::unwrap_used, dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lockbox_tls::{ReloadableServerConfig, Role, SpiffeId, TlsFiles, peer_spiffe_id, pki};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A CA directory.
pub struct Ca {
    pub dir: PathBuf,
    pub cert: PathBuf,
}

impl Ca {
    pub fn new(root: &Path, sub: &str, trust_domain: &str) -> Ca {
        let dir = root.join(sub);
        let cert = pki::init(trust_domain, &dir).unwrap();
        Ca { dir, cert }
    }

    /// Issues `name` with SANs for 127.0.0.1 and "localhost"; files trust this CA.
    pub fn files(&self, role: Role, name: &str) -> TlsFiles {
        let issued = pki::issue(
            &self.dir,
            role,
            name,
            &["localhost".to_string()],
            &[LOCALHOST],
        )
        .unwrap();
        TlsFiles {
            cert: issued.cert,
            key: issued.key,
            ca: self.cert.clone(),
        }
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub url: String,
    pub config: Arc<ReloadableServerConfig>,
    /// Every caller identity the interceptor saw, in order.
    pub seen: Arc<Mutex<Vec<SpiffeId>>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start_server(files: TlsFiles) -> Server {
    lockbox_tls::install_default_provider();
    let config = ReloadableServerConfig::load(files).unwrap();
    let listener = tokio::net::TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let intercepted = tonic::service::interceptor::InterceptedService::new(
        health,
        move |req: tonic::Request<()>| match peer_spiffe_id(&req) {
            Ok(id) => {
                seen2.lock().unwrap().push(id);
                Ok(req)
            }
            Err(e) => Err(tonic::Status::unauthenticated(e.to_string())),
        },
    );
    let incoming = config.clone().incoming(listener);
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(intercepted)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    Server {
        addr,
        url: format!("https://{addr}"),
        config,
        seen,
        task,
    }
}

/// One health check (empty service name: the server's overall status).
pub async fn check(channel: Channel) -> Result<i32, tonic::Status> {
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(resp.into_inner().status)
}
