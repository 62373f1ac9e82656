//! Audit positions: the newest signed checkpoint each lockbox reported when it was attested
//! here (its sequence number and entry hash), per node identity (the node name and its signing
//! key). A lockbox's own checks (the sealed audit head, the watermark beside its store) catch a
//! store rolled back under its keyring, but not a data dir restored whole from an older copy:
//! keyring, watermark and store then agree with each other. Such a node resurrects keys
//! destroyed since the copy and forgets MOVE tombstones and used grants. Only state outside
//! the host can tell, and the controller sees every node at each attestation.
//!
//! A node that reports a checkpoint *behind* the one remembered (a lower sequence number), or
//! *another chain* at the same number (another hash), is recorded in the audit log as
//! `audit-rollback` (outcome `detected`, naming both positions) and counted in
//! `lockbox_controller_audit_rollbacks_total`; it is still attested. The controller reports,
//! it does not refuse: the usual cause is a deliberate restore or a snapshot rolled back, the
//! node's volumes must keep their keys, and an operator decides (docs/operations.md, alert
//! `LockboxControllerAuditRollback`). The new position is remembered, so one rollback is
//! reported once.
//!
//! Positions are node records of the audit database (`audit-position/<node>`, one per node
//! name), written in the same atomic batch as the record of the attestation or rollback that
//! moved them. Losing one only weakens the check (the next report is taken as the first);
//! never a refusal. What a node reporting positions in a loop can make the controller write is
//! bounded: the attestation record as before (re-served for a minute), and beyond it at most
//! one rollback record and one position write per node a minute (`service.rs`); rollbacks past
//! that are counted and logged, not recorded.

use lockbox_runtime::now_unix_ms as now_ms;

/// The audit database's node-record key of `node`'s position: one per node name, so what a
/// node can make the controller keep is bounded by the names the CA issues (a node that
/// attests under a new signing key replaces its record: a node initialized afresh).
pub fn key(node: &str) -> Vec<u8> {
    let mut k = b"audit-position/".to_vec();
    k.extend_from_slice(node.as_bytes());
    k
}

/// Version byte of an encoded [`Position`].
const VERSION: u8 = 1;
/// Encoded length: version, signing key, sequence number, hash, time.
const LEN: usize = 1 + 32 + 8 + 32 + 8;

/// What the controller remembers of one node's audit chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The node's Ed25519 signing key when it reported: a node initialized afresh under the
    /// same name has a new key and a chain of its own.
    pub signing_key: [u8; 32],
    /// Sequence number of the checkpoint record.
    pub seq: u64,
    /// SHA-256 entry hash of that record.
    pub hash: [u8; 32],
    /// When it was reported (unix ms), for the rollback record.
    pub at_unix_ms: u64,
}

impl Position {
    /// `version || signing_key || seq (u64 BE) || hash || at_unix_ms (u64 BE)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LEN);
        out.push(VERSION);
        out.extend_from_slice(&self.signing_key);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.at_unix_ms.to_be_bytes());
        out
    }

    /// Strict: exactly [`LEN`] bytes of version 1.
    pub fn decode(bytes: &[u8]) -> Result<Position, String> {
        if bytes.len() != LEN || bytes[0] != VERSION {
            return Err(format!(
                "an audit position record of {} bytes (version {:?}); expected {LEN} of version {VERSION}",
                bytes.len(),
                bytes.first()
            ));
        }
        let mut signing_key = [0u8; 32];
        signing_key.copy_from_slice(&bytes[1..33]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&bytes[33..41]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&bytes[41..73]);
        let mut at = [0u8; 8];
        at.copy_from_slice(&bytes[73..81]);
        Ok(Position {
            signing_key,
            seq: u64::from_be_bytes(seq),
            hash,
            at_unix_ms: u64::from_be_bytes(at),
        })
    }
}

/// The position an `AttestRequest` reports: none from a node that predates it (0 and empty),
/// otherwise a sequence number from 1 and a 32-byte hash. Anything else is refused by name.
pub fn from_request(
    signing_key: [u8; 32],
    seq: u64,
    hash: &[u8],
) -> Result<Option<Position>, String> {
    match (seq, hash.len()) {
        (0, 0) => Ok(None),
        (0, _) => Err("audit checkpoint hash without a sequence number".into()),
        (_, 32) => {
            let mut h = [0u8; 32];
            h.copy_from_slice(hash);
            Ok(Some(Position {
                signing_key,
                seq,
                hash: h,
                at_unix_ms: now_ms(),
            }))
        }
        (_, n) => Err(format!(
            "the audit checkpoint hash must be 32 bytes, got {n}"
        )),
    }
}

/// How a reported position compares with the remembered one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Nothing remembered for this node (or it was unreadable): remember this one.
    First,
    /// Another signing key: a node initialized afresh; remember this one.
    NewIdentity,
    /// The same checkpoint again: nothing to write.
    Same,
    /// Further along: remember this one.
    Ahead,
    /// Behind the remembered checkpoint: a rollback.
    Behind(Position),
    /// The remembered sequence number with another hash: the chain was replaced.
    Forked(Position),
}

impl Seen {
    /// Whether the reported position should be written.
    pub fn remember(&self) -> bool {
        !matches!(self, Seen::Same)
    }
}

/// Compares `now` with what was remembered.
pub fn compare(known: Option<&Position>, now: &Position) -> Seen {
    let Some(k) = known else {
        return Seen::First;
    };
    if k.signing_key != now.signing_key {
        return Seen::NewIdentity;
    }
    match now.seq.cmp(&k.seq) {
        std::cmp::Ordering::Greater => Seen::Ahead,
        std::cmp::Ordering::Less => Seen::Behind(*k),
        std::cmp::Ordering::Equal if now.hash == k.hash => Seen::Same,
        std::cmp::Ordering::Equal => Seen::Forked(*k),
    }
}

/// The audit detail of a rollback: both positions, so an operator can find the records.
pub fn rollback_detail(node: &str, seen: &Seen, now: &Position) -> Option<String> {
    let (what, k) = match seen {
        Seen::Behind(k) => ("behind", k),
        Seen::Forked(k) => ("on another chain than", k),
        _ => return None,
    };
    Some(format!(
        "node {node} reports audit checkpoint {} ({}), {what} checkpoint {} ({}) it reported at \
         {}: its data dir was restored from an older copy or rolled back",
        now.seq,
        hex::encode(now.hash),
        k.seq,
        hex::encode(k.hash),
        crate::revoked::rfc3339(k.at_unix_ms)
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pos(key: u8, seq: u64, hash: u8) -> Position {
        Position {
            signing_key: [key; 32],
            seq,
            hash: [hash; 32],
            at_unix_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn round_trips_and_refuses_other_lengths_and_versions() {
        let p = pos(1, 4003, 9);
        let bytes = p.encode();
        assert_eq!(bytes.len(), LEN);
        assert_eq!(Position::decode(&bytes).unwrap(), p);
        for n in [0, 1, LEN - 1, LEN + 1] {
            let mut b = bytes.clone();
            b.resize(n, 0);
            assert!(Position::decode(&b).is_err(), "{n} bytes");
        }
        let mut b = bytes;
        b[0] = 2;
        assert!(Position::decode(&b).is_err());
    }

    #[test]
    fn compares_each_case() {
        let k = pos(1, 10, 7);
        assert_eq!(compare(None, &k), Seen::First);
        assert_eq!(compare(Some(&k), &pos(1, 10, 7)), Seen::Same);
        assert_eq!(compare(Some(&k), &pos(1, 11, 3)), Seen::Ahead);
        assert_eq!(compare(Some(&k), &pos(1, 9, 7)), Seen::Behind(k));
        assert_eq!(compare(Some(&k), &pos(1, 10, 8)), Seen::Forked(k));
        assert_eq!(compare(Some(&k), &pos(2, 1, 1)), Seen::NewIdentity);
        assert!(!Seen::Same.remember());
        assert!(Seen::Behind(k).remember() && Seen::First.remember());
        let d = rollback_detail("host-a", &Seen::Behind(k), &pos(1, 9, 7)).unwrap();
        assert!(d.contains("host-a") && d.contains("checkpoint 9") && d.contains("checkpoint 10"));
        assert!(rollback_detail("host-a", &Seen::Ahead, &k).is_none());
    }

    #[test]
    fn reads_requests_strictly() {
        let key = [1u8; 32];
        assert_eq!(from_request(key, 0, &[]).unwrap(), None);
        assert!(from_request(key, 0, &[0; 32]).is_err());
        assert!(from_request(key, 5, &[]).is_err());
        assert!(from_request(key, 5, &[0; 31]).is_err());
        assert!(from_request(key, 5, &[0; 33]).is_err());
        let p = from_request(key, 5, &[3; 32]).unwrap().unwrap();
        assert_eq!((p.seq, p.hash, p.signing_key), (5, [3; 32], key));
    }
}
