//! The development CA writes what lockbox needs from any CA, and refuses to overwrite.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;

use lockbox_tls::{Role, SpiffeId, TlsError, TlsFiles, load_own_cert, pki, spiffe_id_of_cert};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn der(path: &std::path::Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn init_makes_a_ca_naming_the_trust_domain() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("pki");
    let ca_cert = pki::init("prod.example", &ca_dir).unwrap();
    assert_eq!(ca_cert, ca_dir.join("ca.crt"));
    assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
    assert_eq!(pki::trust_domain_of_ca(&ca_cert).unwrap(), "prod.example");

    let certs = der(&ca_cert);
    assert_eq!(certs.len(), 1);
    let (_, cert) = X509Certificate::from_der(&certs[0]).unwrap();
    assert!(cert.is_ca());
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign());
    let validity = cert.validity().time_to_expiration().unwrap();
    assert!(validity.whole_days() >= 3649, "{validity}");
    // A CA certificate is not a workload identity.
    assert!(spiffe_id_of_cert(&certs[0]).is_err());

    // Refuses to overwrite, naming the file.
    let err = pki::init("prod.example", &ca_dir).unwrap_err();
    assert!(
        matches!(err, TlsError::AlreadyExists(ref p) if p.ends_with("ca.key")),
        "{err:?}"
    );
    assert!(err.to_string().contains("ca.key"));
    assert!(pki::init("Bad Domain", &dir.path().join("x")).is_err());
}

#[test]
fn issue_makes_the_right_sans_and_private_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ca_cert = pki::init("d.example", dir.path()).unwrap();
    let ips = [
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    let issued = pki::issue(
        dir.path(),
        Role::Lockbox,
        "node-7",
        &["node-7.d.example".to_string(), "localhost".to_string()],
        &ips,
    )
    .unwrap();
    assert_eq!(issued.cert, dir.path().join("node-7.crt"));
    assert_eq!(issued.key, dir.path().join("node-7.key"));
    assert_eq!(mode(&issued.key), 0o600);
    assert_eq!(
        issued.spiffe_id,
        SpiffeId::parse("spiffe://d.example/lockbox/node-7").unwrap()
    );

    let certs = der(&issued.cert);
    assert_eq!(certs.len(), 1, "leaf only");
    let (_, cert) = X509Certificate::from_der(&certs[0]).unwrap();
    assert!(!cert.is_ca());
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    let mut ip_bytes = Vec::new();
    for gn in &san.general_names {
        match gn {
            GeneralName::URI(u) => uris.push(u.to_string()),
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(b) => ip_bytes.push(b.to_vec()),
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    assert_eq!(uris, ["spiffe://d.example/lockbox/node-7"]);
    assert_eq!(dns, ["node-7.d.example", "localhost"]);
    assert_eq!(
        ip_bytes,
        [vec![10, 0, 0, 7], Ipv6Addr::LOCALHOST.octets().to_vec()]
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let days = cert.validity().time_to_expiration().unwrap().whole_days();
    assert!((364..=366).contains(&days), "{days}");
    let issuer_der = der(&ca_cert);
    let (_, ca) = X509Certificate::from_der(&issuer_der[0]).unwrap();
    assert_eq!(cert.issuer(), ca.subject());
    cert.verify_signature(Some(ca.public_key())).unwrap();

    // The crate reads back what it wrote.
    let files = TlsFiles {
        cert: issued.cert.clone(),
        key: issued.key.clone(),
        ca: ca_cert,
    };
    let (id, spki) = load_own_cert(&files).unwrap();
    assert_eq!(id, issued.spiffe_id);
    assert_eq!(spki, lockbox_tls::spki_sha256(&certs[0]).unwrap());

    // Refuses to overwrite (the error names the file), bad names and bad DNS names.
    let err = pki::issue(dir.path(), Role::Admin, "node-7", &[], &[]).unwrap_err();
    assert!(err.to_string().contains("node-7.key"), "{err}");
    for bad in ["", ".", "..", "a/b", "../x", "a b"] {
        assert!(
            pki::issue(dir.path(), Role::Admin, bad, &[], &[]).is_err(),
            "{bad:?}"
        );
    }
    assert!(matches!(
        pki::issue(
            dir.path(),
            Role::Admin,
            "x",
            &["not a name".to_string()],
            &[]
        ),
        Err(TlsError::InvalidDnsName(_))
    ));
    // Nothing was written for the refused ones.
    assert!(!dir.path().join("x.key").exists());
}

#[test]
fn issue_needs_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let err = pki::issue(dir.path(), Role::Admin, "a", &[], &[]).unwrap_err();
    assert!(err.to_string().contains("ca.crt"), "{err}");
}

#[test]
fn spki_hash_is_stable_and_distinct() {
    let dir = tempfile::tempdir().unwrap();
    pki::init("d", dir.path()).unwrap();
    let a = pki::issue(dir.path(), Role::Admin, "a", &[], &[]).unwrap();
    let b = pki::issue(dir.path(), Role::Admin, "b", &[], &[]).unwrap();
    let ha = lockbox_tls::spki_sha256(&der(&a.cert)[0]).unwrap();
    let hb = lockbox_tls::spki_sha256(&der(&b.cert)[0]).unwrap();
    assert_ne!(ha, hb);
    assert_eq!(ha, lockbox_tls::spki_sha256(&der(&a.cert)[0]).unwrap());
    assert!(lockbox_tls::spki_sha256(b"not a certificate").is_err());
}
