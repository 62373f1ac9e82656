//! End-to-end: real TLS on 127.0.0.1, certificates from `pki` in temp dirs.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Ca, LOCALHOST, check, start_server};
use lockbox_tls::{
    ClientTls, Expect, Role, SpiffeId, TlsError, TlsFiles, error_chain, find_tls_error,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

const SERVING: i32 = 1;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A raw rustls client config from the files, with the given versions and optionally no
/// client certificate: for the cases `ClientTls` deliberately cannot express.
fn raw_client(
    files: &TlsFiles,
    versions: &[&'static rustls::SupportedProtocolVersion],
    with_cert: bool,
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&files.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let config = if with_cert {
        let chain = rustls::pki_types::CertificateDer::pem_file_iter(&files.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&files.key).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    Arc::new(config)
}

/// Handshake, then a write and a read: in TLS 1.3 the server's verdict on our certificate
/// arrives after our side of the handshake has finished, so it shows on the first read.
async fn raw_roundtrip(
    config: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
) -> Result<(), std::io::Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(LOCALHOST.into());
    let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
    // An HTTP/2 preface; the server answers with SETTINGS if it accepted us.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    tls.flush().await?;
    let mut buf = [0u8; 9];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    if n == 0 {
        return Err(std::io::Error::other("closed by server"));
    }
    Ok(())
}

#[tokio::test]
async fn mutual_tls_works_and_server_sees_client_id() {
    let dir = tmp();
    let ca = Ca::new(dir.path(), "ca", "test.lockbox");
    let server = start_server(ca.files(Role::Lockbox, "node-1")).await;
    let client = ClientTls::load(&ca.files(Role::Controller, "ctl-1")).unwrap();
    assert_eq!(client.trust_domain(), "test.lockbox");

    let channel = client
        .connect(&server.url, Expect::named(Role::Lockbox, "node-1"))
        .await
        .unwrap();
    assert_eq!(check(channel.clone()).await.unwrap(), SERVING);
    assert_eq!(check(channel).await.unwrap(), SERVING);

    // A second connection from the same ClientTls (a resumed session): the SPIFFE check
    // must still find the server's certificate.
    let channel = client
        .connect(&server.url, Expect::role(Role::Lockbox))
        .await
        .unwrap();
    assert_eq!(check(channel).await.unwrap(), SERVING);

    // The lazy variant, and "localhost" as a DNS name.
    let url = format!("https://localhost:{}", server.addr.port());
    let lazy = client
        .connect_lazy(&url, Expect::role(Role::Lockbox))
        .unwrap();
    assert_eq!(check(lazy).await.unwrap(), SERVING);

    let expected = SpiffeId::parse("spiffe://test.lockbox/controller/ctl-1").unwrap();
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|id| *id == expected), "{seen:?}");
}

#[tokio::test]
async fn client_without_certificate_fails_and_server_keeps_serving() {
    let dir = tmp();
    let ca = Ca::new(dir.path(), "ca", "d");
    let server = start_server(ca.files(Role::Lockbox, "n1")).await;
    let files = ca.files(Role::Admin, "a1");

    let no_cert = raw_client(&files, &[&rustls::version::TLS13], false);
    let err = raw_roundtrip(no_cert, server.addr).await.unwrap_err();
    eprintln!("client without certificate: {err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "unexpected error: {err}"
    );
    // The same raw client with its certificate gets through: the failure was the missing cert.
    raw_roundtrip(
        raw_client(&files, &[&rustls::version::TLS13], true),
        server.addr,
    )
    .await
    .unwrap();

    // A failed handshake did not end the listener's stream.
    let client = ClientTls::load(&files).unwrap();
    let channel = client
        .connect(&server.url, Expect::role(Role::Lockbox))
        .await
        .unwrap();
    assert_eq!(check(channel).await.unwrap(), SERVING);
}

#[tokio::test]
async fn client_certificate_from_another_ca_fails() {
    let dir = tmp();
    let ca = Ca::new(dir.path(), "ca", "d");
    let other = Ca::new(dir.path(), "other", "d");
    let server = start_server(ca.files(Role::Lockbox, "n1")).await;
    // Our certificate comes from `other`, but we trust the server's CA.
    let mut files = other.files(Role::Controller, "evil");
    files.ca = ca.cert.clone();
    let client = ClientTls::load(&files).unwrap();

    // TLS 1.3: the client finishes its handshake before the server rejects its certificate,
    // so the rejection may show at connect or on the first call; it must show somewhere.
    let outcome = match client
        .connect(&server.url, Expect::role(Role::Lockbox))
        .await
    {
        Err(e) => Err(e.to_string()),
        Ok(channel) => check(channel).await.map_err(|s| error_chain(&s)),
    };
    eprintln!("client from another CA: {outcome:?}");
    assert!(outcome.unwrap_err().contains("UnknownCA"));
    assert!(server.seen.lock().unwrap().is_empty());

    let raw = raw_client(&files, &[&rustls::version::TLS13], true);
    let err = raw_roundtrip(raw, server.addr).await.unwrap_err();
    assert!(
        err.to_string().contains("UnknownCA"),
        "unexpected error: {err}"
    );
}

#[tokio::test]
async fn server_certificate_from_another_ca_is_refused() {
    let dir = tmp();
    let ca = Ca::new(dir.path(), "ca", "d");
    let other = Ca::new(dir.path(), "other", "d");
    // The server's own certificate is from `other` (it trusts `ca` for clients).
    let mut server_files = other.files(Role::Lockbox, "n1");
    server_files.ca = ca.cert.clone();
    let server = start_server(server_files).await;
    let client = ClientTls::load(&ca.files(Role::Controller, "c1")).unwrap();

    let err = client
        .connect(&server.url, Expect::role(Role::Lockbox))
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::Handshake { .. }), "{err:?}");
    let msg = err.to_string();
    eprintln!("server from another CA: {msg}");
    assert!(msg.contains("tls handshake with"), "{msg}");
    assert!(msg.contains("UnknownIssuer"), "{msg}");
}

#[tokio::test]
async fn server_with_wrong_role_or_name_is_refused() {
    let dir = tmp();
    let ca = Ca::new(dir.path(), "ca", "d");
    let server = start_server(ca.files(Role::Lockbox, "n1")).await;
    let client = ClientTls::load(&ca.files(Role::Lockbox, "n2")).unwrap();

    let err = client
        .connect(&server.url, Expect::role(Role::Controller))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TlsError::WrongPeer { .. }), "{err:?}");
    assert!(
        msg.contains("expected spiffe://d/controller/*, server is spiffe://d/lockbox/n1"),
        "{msg}"
    );

    let err = client
        .connect(&server.url, Expect::named(Role::Lockbox, "n3"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("expected spiffe://d/lockbox/n3, server is spiffe://d/lockbox/n1"),
        "{err}"
    );

    // Lazily: the call fails, and the cause is recoverable from the Status.
    let lazy = client
        .connect_lazy(&server.url, Expect::role(Role::Orchestrator))
        .unwrap();
    let status = check(lazy).await.unwrap_err();
    let cause = find_tls_error(&status).unwrap_or_else(|| panic!("no TlsError in {status:?}"));
    eprintln!("lazy wrong role: status {status}; cause: {cause}");
    assert!(matches!(cause, TlsError::WrongPeer { .. }), "{cause:?}");
    assert!(server.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn server_in_another_trust_domain_is_refused() {
    let dir = tmp();
    let ca = Ca::new(dir.path(), "ca", "d");
    let server = start_server(ca.files(Role::Lockbox, "n1")).await;
    // Same CA material would be needed for this in real life; here the client trusts the
    // server's CA but its own certificate says another trust domain.
    let other_td = Ca::new(dir.path(), "other", "elsewhere");
    let mut files = other_td.files(Role::Controller, "c1");
    files.ca = ca.cert.clone();
    let client = ClientTls::load(&files).unwrap();
    let err = client
        .connect(&server.url, Expect::role(Role::Lockbox))
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::WrongPeer { .. }), "{err:?}");
}

#[tokio::test]
async fn tls12_only_client_fails() {
    let dir = tmp();
    let ca = Ca::new(dir.path(), "ca", "d");
    let server = start_server(ca.files(Role::Lockbox, "n1")).await;
    let files = ca.files(Role::Admin, "a1");
    let tls12 = raw_client(&files, &[&rustls::version::TLS12], true);
    let err = raw_roundtrip(tls12, server.addr).await.unwrap_err();
    let msg = err.to_string();
    eprintln!("tls 1.2 client: {msg}");
    assert!(
        msg.contains("ProtocolVersion") || msg.to_lowercase().contains("version"),
        "{msg}"
    );
}

#[tokio::test]
async fn negotiated_group_is_x25519mlkem768() {
    let dir = tmp();
    let ca = Ca::new(dir.path(), "ca", "d");
    let server = start_server(ca.files(Role::Lockbox, "n1")).await;
    let client = ClientTls::load(&ca.files(Role::Admin, "a1")).unwrap();
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let tls = TlsConnector::from(client.config())
        .connect(ServerName::IpAddress(LOCALHOST.into()), tcp)
        .await
        .unwrap();
    let conn = tls.get_ref().1;
    assert_eq!(
        conn.negotiated_key_exchange_group().map(|g| g.name()),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    drop(tls);

    // A second connection resumes the session; the server's certificate (which the SPIFFE
    // check in `ClientTls::connect` reads) is still available on a resumed connection.
    let mut resumed = false;
    for _ in 0..10 {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let mut tls = TlsConnector::from(client.config())
            .connect(ServerName::IpAddress(LOCALHOST.into()), tcp)
            .await
            .unwrap();
        // Read the server's SETTINGS so that its session tickets (sent before) are processed.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 9];
        let _ = tokio::time::timeout(Duration::from_secs(2), tls.read(&mut buf)).await;
        let conn = tls.get_ref().1;
        assert!(conn.peer_certificates().is_some_and(|c| !c.is_empty()));
        if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            resumed = true;
            break;
        }
    }
    assert!(resumed, "no connection was resumed");

    // And the server side uses the same provider order.
    let server_cfg = server.config.current();
    assert_eq!(
        server_cfg
            .crypto_provider()
            .kx_groups
            .first()
            .map(|g| g.name()),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );
}

/// Overwrites `dst`'s three files with `src`'s contents (as an operator would).
fn replace_files(src: &TlsFiles, dst: &TlsFiles) {
    std::fs::copy(&src.cert, &dst.cert).unwrap();
    std::fs::copy(&src.key, &dst.key).unwrap();
    std::fs::copy(&src.ca, &dst.ca).unwrap();
}

/// The server's files live in their own directory, so replacing them touches no CA.
fn private_copy(src: &TlsFiles, dir: &std::path::Path) -> TlsFiles {
    std::fs::create_dir_all(dir).unwrap();
    let dst = TlsFiles {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        ca: dir.join("ca.crt"),
    };
    replace_files(src, &dst);
    dst
}

#[tokio::test]
async fn reload_switches_to_a_new_ca_without_restart() {
    let dir = tmp();
    let old_ca = Ca::new(dir.path(), "old", "d");
    let new_ca = Ca::new(dir.path(), "new", "d");
    let server_files = private_copy(&old_ca.files(Role::Lockbox, "n1"), &dir.path().join("srv"));
    let server = start_server(server_files.clone()).await;
    let old_client = ClientTls::load(&old_ca.files(Role::Admin, "a1")).unwrap();
    let new_client = ClientTls::load(&new_ca.files(Role::Admin, "a1")).unwrap();
    let expect = Expect::named(Role::Lockbox, "n1");

    let old_channel = old_client
        .connect(&server.url, expect.clone())
        .await
        .unwrap();
    assert_eq!(check(old_channel.clone()).await.unwrap(), SERVING);
    assert!(
        new_client
            .connect(&server.url, expect.clone())
            .await
            .is_err()
    );

    let before = server.config.current();
    replace_files(&new_ca.files(Role::Lockbox, "n1"), &server_files);
    server.config.reload().unwrap();
    assert!(!Arc::ptr_eq(&before, &server.config.current()));

    let channel = new_client
        .connect(&server.url, expect.clone())
        .await
        .unwrap();
    assert_eq!(check(channel).await.unwrap(), SERVING);
    let err = old_client.connect(&server.url, expect).await.unwrap_err();
    assert!(matches!(err, TlsError::Handshake { .. }), "{err:?}");
    // Established connections keep the config they were accepted with.
    assert_eq!(check(old_channel).await.unwrap(), SERVING);
}

#[tokio::test]
async fn failed_reload_keeps_the_old_config() {
    let dir = tmp();
    let ca = Ca::new(dir.path(), "ca", "d");
    let server_files = private_copy(&ca.files(Role::Lockbox, "n1"), &dir.path().join("srv"));
    let server = start_server(server_files.clone()).await;
    let client = ClientTls::load(&ca.files(Role::Admin, "a1")).unwrap();
    let before = server.config.current();

    std::fs::write(&server_files.cert, b"garbage").unwrap();
    let err = server.config.reload().unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate(_)), "{err:?}");
    assert!(Arc::ptr_eq(&before, &server.config.current()));

    // A key that does not match the certificate is refused too.
    let other = ca.files(Role::Lockbox, "n2");
    std::fs::copy(&other.cert, &server_files.cert).unwrap();
    std::fs::write(&server_files.ca, b"-----BEGIN CERTIFICATE-----\nnope\n").unwrap();
    assert!(server.config.reload().is_err());
    std::fs::copy(&ca.cert, &server_files.ca).unwrap();
    let err = server.config.reload().unwrap_err();
    assert!(matches!(err, TlsError::Config { .. }), "{err:?}");
    assert!(Arc::ptr_eq(&before, &server.config.current()));

    let channel = client
        .connect(&server.url, Expect::named(Role::Lockbox, "n1"))
        .await
        .unwrap();
    assert_eq!(check(channel).await.unwrap(), SERVING);
}

#[tokio::test]
async fn unreachable_server_and_bad_url_give_clear_errors() {
    let dir = tmp();
    let ca = Ca::new(dir.path(), "ca", "d");
    let client = ClientTls::load(&ca.files(Role::Admin, "a1")).unwrap();
    // Bind then drop to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let err = client
        .connect(
            &format!("https://127.0.0.1:{port}"),
            Expect::role(Role::Lockbox),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::TcpConnect { .. }), "{err:?}");
    let err = client
        .connect_lazy("http://127.0.0.1:1", Expect::role(Role::Lockbox))
        .unwrap_err();
    assert!(matches!(err, TlsError::InvalidUrl { .. }), "{err:?}");
}

#[tokio::test]
async fn slow_handshake_does_not_block_others() {
    let dir = tmp();
    let ca = Ca::new(dir.path(), "ca", "d");
    let server = start_server(ca.files(Role::Lockbox, "n1")).await;
    // A few connections that never send a ClientHello.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let client = ClientTls::load(&ca.files(Role::Admin, "a1")).unwrap();
    let channel = tokio::time::timeout(
        Duration::from_secs(5),
        client.connect(&server.url, Expect::role(Role::Lockbox)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(check(channel).await.unwrap(), SERVING);
    drop(idle);
}

#[tokio::test]
async fn request_without_tls_has_no_peer_id() {
    let request = tonic::Request::new(());
    assert!(matches!(
        lockbox_tls::peer_spiffe_id(&request),
        Err(TlsError::NoPeerCertificate)
    ));
    assert!(lockbox_tls::peer_spki_sha256(&request).is_err());
}
