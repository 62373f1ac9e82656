//! SPIFFE identities: the strict `spiffe://D/ROLE/NAME` form lockbox uses, and reading it from a
//! certificate's URI SAN (webpki verifies the chain but does not expose SANs).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::TlsError;

/// The SPIFFE id spec caps a whole id at 2048 bytes.
const MAX_ID_LEN: usize = 2048;
/// The SPIFFE id spec caps a trust domain name at 255 bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;
const SCHEME: &str = "spiffe://";

/// What a peer is allowed to be; authorization decisions key on this, so the set is closed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// A `lockboxd` on a storage host.
    Lockbox,
    /// A controller replica (signs attestations and grants).
    Controller,
    /// An orchestrator asking for grants.
    Orchestrator,
    /// A human or script with administrative rights.
    Admin,
}

impl Role {
    /// The path segment used in SPIFFE ids, so ids and logs spell roles one way.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Lockbox => "lockbox",
            Role::Controller => "controller",
            Role::Orchestrator => "orchestrator",
            Role::Admin => "admin",
        }
    }

    /// All roles, for CLIs that list or validate them.
    pub const ALL: [Role; 4] = [
        Role::Lockbox,
        Role::Controller,
        Role::Orchestrator,
        Role::Admin,
    ];
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = TlsError;

    /// Exact lowercase match only: an id is an authorization input, so no case folding.
    fn from_str(s: &str) -> Result<Self, TlsError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| TlsError::UnknownRole(s.to_string()))
    }
}

/// A lockbox identity, `spiffe://<trust_domain>/<role>/<name>`, as carried in a certificate's
/// URI SAN. Its fields are only ever produced by [`SpiffeId::parse`] or checked constructors,
/// so they always satisfy the strict syntax.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    /// The cluster: lowercase letters, digits, `.`, `-`, `_`.
    pub trust_domain: String,
    /// What the peer is.
    pub role: Role,
    /// Which one: `[A-Za-z0-9._-]+`, not `.` or `..`.
    pub name: String,
}

impl SpiffeId {
    /// Builds an id from parts, checking them, so an id that cannot be parsed back never exists.
    pub fn new(trust_domain: &str, role: Role, name: &str) -> Result<Self, TlsError> {
        let id = SpiffeId {
            trust_domain: trust_domain.to_string(),
            role,
            name: name.to_string(),
        };
        // Round-trip through the parser so there is one definition of "valid".
        SpiffeId::parse(&id.uri())
    }

    /// Parses `spiffe://D/ROLE/NAME` strictly: lowercase scheme and trust domain, a known role,
    /// exactly two path segments, no port, user info, query, fragment or percent-encoding.
    /// Strictness matters because the result is compared for authorization.
    pub fn parse(uri: &str) -> Result<Self, TlsError> {
        let bad = |reason: &'static str| TlsError::InvalidSpiffeId {
            uri: uri.to_string(),
            reason,
        };
        if uri.len() > MAX_ID_LEN {
            return Err(bad("longer than 2048 bytes"));
        }
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("does not start with spiffe://"))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("no path: expected spiffe://<trust-domain>/<role>/<name>"))?;
        check_trust_domain(trust_domain).map_err(bad)?;
        let mut segments = path.split('/');
        let (Some(role), Some(name), None) = (segments.next(), segments.next(), segments.next())
        else {
            return Err(bad("path must be exactly /<role>/<name>"));
        };
        let role = Role::from_str(role).map_err(|_| bad("unknown role"))?;
        check_name(name).map_err(bad)?;
        Ok(SpiffeId {
            trust_domain: trust_domain.to_string(),
            role,
            name: name.to_string(),
        })
    }

    /// The URI form, as written into certificates and logs.
    pub fn uri(&self) -> String {
        format!(
            "{SCHEME}{}/{}/{}",
            self.trust_domain,
            self.role.as_str(),
            self.name
        )
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

impl FromStr for SpiffeId {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, TlsError> {
        SpiffeId::parse(s)
    }
}

/// Checks a trust domain name against the SPIFFE charset (lowercase only: the spec says
/// implementations must compare lowercase, and refusing other cases avoids two spellings).
pub fn check_trust_domain(td: &str) -> Result<(), &'static str> {
    if td.is_empty() {
        return Err("empty trust domain");
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err("trust domain longer than 255 bytes");
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("trust domain may only contain a-z 0-9 . - _");
    }
    Ok(())
}

/// Checks a workload name. Names also become file names in `pki`, so `.` and `..` are refused.
pub(crate) fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name == "." || name == ".." {
        return Err("name may not be . or ..");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("name may only contain A-Z a-z 0-9 . - _");
    }
    Ok(())
}

/// Parses the trust-domain URI `spiffe://D` (no path) that a CA certificate carries.
pub(crate) fn parse_trust_domain_uri(uri: &str) -> Result<String, TlsError> {
    let bad = |reason: &'static str| TlsError::InvalidSpiffeId {
        uri: uri.to_string(),
        reason,
    };
    let td = uri
        .strip_prefix(SCHEME)
        .ok_or_else(|| bad("does not start with spiffe://"))?;
    check_trust_domain(td).map_err(bad)?;
    Ok(td.to_string())
}

/// Parses a whole DER certificate, refusing trailing bytes so that what we read is exactly
/// what the verifier checked.
pub(crate) fn parse_cert(cert_der: &[u8]) -> Result<X509Certificate<'_>, TlsError> {
    let (rest, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(TlsError::BadCertificate(
            "trailing bytes after the certificate".to_string(),
        ));
    }
    Ok(cert)
}

/// The URI SANs of a certificate that claim to be SPIFFE ids (scheme compared case-insensitively,
/// so a differently-cased second id is counted, not ignored).
pub(crate) fn spiffe_uris<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, TlsError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate(format!("subject alternative name: {e}")))?;
    let Some(san) = san else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|gn| match gn {
            GeneralName::URI(u)
                if u.get(..7)
                    .is_some_and(|p| p.eq_ignore_ascii_case("spiffe:")) =>
            {
                Some(*u)
            }
            _ => None,
        })
        .collect())
}

/// The SPIFFE id of a certificate: exactly one `spiffe://` URI SAN, in the strict form.
///
/// This does not verify the certificate; call it on a chain rustls has already verified.
pub fn spiffe_id_of_cert(cert_der: &[u8]) -> Result<SpiffeId, TlsError> {
    let cert = parse_cert(cert_der)?;
    match spiffe_uris(&cert)?.as_slice() {
        [] => Err(TlsError::NoSpiffeId),
        [one] => SpiffeId::parse(one),
        many => Err(TlsError::MultipleSpiffeIds(many.len())),
    }
}

/// SHA-256 of the certificate's DER SubjectPublicKeyInfo: the value attestations bind, so a
/// renewed certificate with the same key keeps its attestation and a new key does not.
pub fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32], TlsError> {
    let cert = parse_cert(cert_der)?;
    Ok(Sha256::digest(cert.tbs_certificate.subject_pki.raw).into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_the_strict_form() {
        let id = SpiffeId::parse("spiffe://prod.example_1-a/lockbox/node-1.a_B").unwrap();
        assert_eq!(id.trust_domain, "prod.example_1-a");
        assert_eq!(id.role, Role::Lockbox);
        assert_eq!(id.name, "node-1.a_B");
        assert_eq!(id.uri(), "spiffe://prod.example_1-a/lockbox/node-1.a_B");
        assert_eq!(id.to_string(), id.uri());
        for role in Role::ALL {
            let uri = format!("spiffe://d/{role}/x");
            assert_eq!(SpiffeId::parse(&uri).unwrap().role, role);
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
    }

    #[test]
    fn refuses_everything_else() {
        let long = format!("spiffe://d/lockbox/{}", "a".repeat(2048));
        let long_td = format!("spiffe://{}/lockbox/n", "a".repeat(256));
        for bad in [
            "",
            "spiffe://",
            "spiffe://d",
            "spiffe://d/",
            "spiffe://d/lockbox",
            "spiffe://d/lockbox/",
            "spiffe://d/lockbox/n/extra",
            "spiffe://d/lockbox/n/",
            "spiffe://d//lockbox/n",
            "spiffe://d/Lockbox/n",
            "spiffe://d/root/n",
            "spiffe://D/lockbox/n",
            "SPIFFE://d/lockbox/n",
            "https://d/lockbox/n",
            "spiffe:/d/lockbox/n",
            "spiffe://d:443/lockbox/n",
            "spiffe://user@d/lockbox/n",
            "spiffe://d/lockbox/n?q",
            "spiffe://d/lockbox/n#f",
            "spiffe://d/lockbox/n%41",
            "spiffe://d/lockbox/..",
            "spiffe://d/lockbox/.",
            "spiffe://d/lockbox/a b",
            "spiffe://d/lockbox/é",
            "spiffe:///lockbox/n",
            " spiffe://d/lockbox/n",
            "spiffe://d/lockbox/n\n",
            long.as_str(),
            long_td.as_str(),
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "accepted {bad:?}");
        }
        assert!("Admin".parse::<Role>().is_err());
        assert!(SpiffeId::new("d", Role::Admin, "a/b").is_err());
    }

    #[test]
    fn trust_domain_uri() {
        assert_eq!(
            parse_trust_domain_uri("spiffe://d.example").unwrap(),
            "d.example"
        );
        for bad in [
            "spiffe://",
            "spiffe://d/",
            "spiffe://d/x",
            "spiffe://D",
            "d",
        ] {
            assert!(parse_trust_domain_uri(bad).is_err(), "accepted {bad:?}");
        }
    }
}
