//! A development CA, for tests, local clusters and `lockboxctl pki`.
//!
//! Operators may bring their own CA; nothing else in lockbox may assume this one. What this
//! module writes is what lockbox needs from any CA: a CA certificate naming the trust domain
//! in a `spiffe://D` URI SAN, and leaves with exactly one `spiffe://D/ROLE/NAME` URI SAN,
//! EKU serverAuth + clientAuth, ECDSA P-256 keys (supported by rustls/aws-lc-rs on both sides).

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::files::load_certs;
use crate::spiffe::{
    check_name, check_trust_domain, parse_cert, parse_trust_domain_uri, spiffe_uris,
};
use crate::{Role, SpiffeId, TlsError};

/// File names inside a PKI directory.
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const CA_VALIDITY_DAYS: i64 = 3650;
const LEAF_VALIDITY_DAYS: i64 = 365;
/// Back-date certificates a little so a peer whose clock lags does not reject a fresh one.
const BACKDATE: Duration = Duration::minutes(5);

/// What [`issue`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// `<dir>/<name>.crt`: the leaf alone (peers trust the CA directly).
    pub cert: PathBuf,
    /// `<dir>/<name>.key`, mode 0600.
    pub key: PathBuf,
    /// The identity the certificate carries.
    pub spiffe_id: SpiffeId,
}

/// A random positive 128-bit serial: RFC 5280 wants serials unique per CA, and a random one
/// needs no state.
fn random_serial() -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| TlsError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40; // positive, and no leading zero byte to strip
    Ok(SerialNumber::from_slice(&bytes))
}

/// Writes a new file that must not exist yet, with `mode` set at creation (never widened
/// then narrowed), and syncs it so a crash does not leave a key file half-written.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => TlsError::AlreadyExists(path.to_path_buf()),
            _ => TlsError::io("creating", path, e),
        })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| TlsError::io("writing", path, e))
}

fn refuse_existing(paths: &[&Path]) -> Result<(), TlsError> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(TlsError::AlreadyExists(p.to_path_buf())),
        None => Ok(()),
    }
}

fn ia5(s: String) -> Result<rcgen::string::Ia5String, TlsError> {
    rcgen::string::Ia5String::try_from(s.as_str()).map_err(|_| TlsError::InvalidSan(s))
}

/// Creates `dir/ca.crt` and `dir/ca.key` (0600) for `trust_domain`: CA:true (path length 0:
/// it signs leaves only), keyCertSign, a `spiffe://<trust_domain>` URI SAN, 10 years.
/// Refuses to overwrite an existing CA, since that would orphan every issued certificate.
pub fn init(trust_domain: &str, dir: &Path) -> Result<PathBuf, TlsError> {
    check_trust_domain(trust_domain).map_err(|reason| TlsError::InvalidSpiffeId {
        uri: format!("spiffe://{trust_domain}"),
        reason,
    })?;
    std::fs::create_dir_all(dir).map_err(|e| TlsError::io("creating directory", dir, e))?;
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    refuse_existing(&[&key_path, &cert_path])?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let serial = random_serial()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    // A per-CA tag in the name: verifiers find issuers by name, so two development CAs for
    // one trust domain must not share a subject (else "bad signature" instead of "unknown
    // issuer"), and operators can tell them apart.
    let tag: String = serial.to_bytes()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("lockbox development CA {trust_domain} {tag}"),
    );
    params.subject_alt_names = vec![SanType::URI(ia5(format!("spiffe://{trust_domain}"))?)];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
    params.serial_number = Some(serial);
    let cert = params.self_signed(&key)?;

    // Key first with create_new: if two inits race, exactly one wins the key.
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(cert_path)
}

/// Issues `dir/<name>.crt` and `dir/<name>.key` (0600), signed by `dir`'s CA, with URI SAN
/// `spiffe://D/<role>/<name>` (D from the CA certificate), the given DNS and IP SANs (what
/// clients verify the host name against), EKU serverAuth + clientAuth (every component is
/// both), one year. Refuses to overwrite either file; the error names it.
pub fn issue(
    dir: &Path,
    role: Role,
    name: &str,
    dns: &[String],
    ips: &[IpAddr],
) -> Result<Issued, TlsError> {
    check_name(name).map_err(|reason| TlsError::InvalidSpiffeId {
        uri: name.to_string(),
        reason,
    })?;
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    let trust_domain = trust_domain_of_ca(&ca_cert_path)?;
    let spiffe_id = SpiffeId::new(&trust_domain, role, name)?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    refuse_existing(&[&key_path, &cert_path])?;

    let ca_pem = std::fs::read_to_string(&ca_cert_path)
        .map_err(|e| TlsError::io("reading", &ca_cert_path, e))?;
    let ca_key_pem = std::fs::read_to_string(&ca_key_path)
        .map_err(|e| TlsError::io("reading", &ca_key_path, e))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, trust_domain.as_str());
    let mut sans = vec![SanType::URI(ia5(spiffe_id.uri())?)];
    for d in dns {
        // The same check rustls applies to the name a client connects to.
        rustls::pki_types::DnsName::try_from(d.as_str())
            .map_err(|_| TlsError::InvalidDnsName(d.clone()))?;
        sans.push(SanType::DnsName(ia5(d.clone())?));
    }
    sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(LEAF_VALIDITY_DAYS);
    params.serial_number = Some(random_serial()?);
    let cert = params.signed_by(&key, &issuer)?;

    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
        spiffe_id,
    })
}

/// The trust domain a CA certificate (first certificate of a PEM file) names in its single
/// `spiffe://D` URI SAN: how `issue` and `lockboxctl` learn D without being told twice.
pub fn trust_domain_of_ca(ca_cert_pem_path: &Path) -> Result<String, TlsError> {
    let certs = load_certs(ca_cert_pem_path)?;
    let first = certs
        .first()
        .ok_or_else(|| TlsError::NoCertificate(ca_cert_pem_path.to_path_buf()))?;
    let cert = parse_cert(first)?;
    match spiffe_uris(&cert)?.as_slice() {
        [one] => parse_trust_domain_uri(one),
        [] => Err(TlsError::CaWithoutTrustDomain(
            ca_cert_pem_path.to_path_buf(),
        )),
        many => Err(TlsError::MultipleSpiffeIds(many.len())),
    }
}
