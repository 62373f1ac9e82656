//! A `peers` slot: a slot key split t of n and each share enrolled to one peer (SPEC.md
//! "Peer slot"), and the state of one unseal of it ([`SlotUnseal`]).
//!
//! Still sans-I/O: [`SlotUnseal::requests`] says what to send to whom, the daemon sends it
//! (concurrently, with its own timeouts) and feeds each answer back with
//! [`SlotUnseal::add_answer`] until [`SlotUnseal::is_ready`]; [`SlotUnseal::finish`] then
//! combines the opened shares into the slot key.

use super::{
    AssistError, AssistResult, BlindingSecret, ENROLLMENT_ID_LEN, EnrollContext, EnrolledShare,
    MAX_SHARES, blind, combine, enroll, put_lp, recover, share_index, share_threshold, split,
};
use crate::secret::{SecretBytes, random_array};
use crate::trust::printable;
use crate::wire::Reader;

/// Version of the peer-slot format.
pub const PEER_SLOT_VERSION: u8 = 0x01;

/// A peer to enroll: its node name (whom the daemon asks, over mTLS) and its assist public
/// key (as the owner learned it from a source it trusts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssistPeer<'a> {
    /// The peer's node name (1 to 255 bytes).
    pub node: &'a str,
    /// The peer's [`AssistIdentity::public_key`](super::AssistIdentity::public_key).
    pub public_key: [u8; 32],
}

/// A slot key split `threshold` of n, share i enrolled to peer i.
///
/// Holds no secret (every share is sealed), so it may be stored in the keyring, copied and
/// printed. Invariants, checked by every constructor: 2 ≤ threshold ≤ n ≤ 16; every share of
/// one owner and one enrollment id; peers pairwise distinct by node and by public key; the
/// owner is not among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSlot {
    threshold: u8,
    shares: Vec<EnrolledShare>,
}

impl PeerSlot {
    /// Splits `slot_key` `threshold` of `peers.len()` and enrolls share i to `peers[i]`, all
    /// under one fresh random enrollment id.
    ///
    /// Refuses (before anything random is drawn) a threshold below 2 or above the number of
    /// peers, more than 16 peers, a peer named twice or with another's public key, and the
    /// owner as its own peer: its assist key sits on the same disks, so it would be a key
    /// file with extra steps.
    pub fn enroll(
        slot_key: &SecretBytes,
        owner_node: &str,
        peers: &[AssistPeer<'_>],
        threshold: u8,
    ) -> AssistResult<Self> {
        let n = check_peers(owner_node, peers, threshold)?;
        let enrollment_id = random_array::<ENROLLMENT_ID_LEN>()?;
        let shares = split(slot_key, threshold, n)?;
        let enrolled = peers
            .iter()
            .zip(&shares)
            .map(|(peer, share)| {
                enroll(
                    &peer.public_key,
                    share,
                    &EnrollContext {
                        owner_node,
                        peer_node: peer.node,
                        enrollment_id,
                    },
                )
            })
            .collect::<AssistResult<Vec<_>>>()?;
        Self::from_shares(threshold, enrolled)
    }

    /// Assembles a slot from shares enrolled separately (e.g. by test vectors, from
    /// `split_deterministic` and `enroll_deterministic`), with the same checks as
    /// [`PeerSlot::decode`].
    pub fn from_shares(threshold: u8, shares: Vec<EnrolledShare>) -> AssistResult<Self> {
        let malformed = |reason| AssistError::Malformed {
            what: "peer slot",
            reason,
        };
        let Some(first) = shares.first() else {
            return Err(malformed("no peers"));
        };
        if shares.len() > usize::from(MAX_SHARES) {
            return Err(malformed("more than 16 peers"));
        }
        if threshold < 2 || usize::from(threshold) > shares.len() {
            return Err(malformed("threshold is not 2 to the number of peers"));
        }
        for (i, share) in shares.iter().enumerate() {
            if share.owner_node() != first.owner_node()
                || share.enrollment_id() != first.enrollment_id()
            {
                return Err(malformed("shares of different owners or enrollments"));
            }
            if share.peer_node() == first.owner_node() {
                return Err(malformed("the owner is one of its peers"));
            }
            for other in &shares[..i] {
                if other.peer_node() == share.peer_node() {
                    return Err(malformed("a peer node appears twice"));
                }
                if other.peer_public_key() == share.peer_public_key() {
                    return Err(malformed("a peer public key appears twice"));
                }
            }
        }
        Ok(Self { threshold, shares })
    }

    /// How many peers must answer.
    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// The enrolled shares, in peer order (position i holds Shamir index i + 1).
    pub fn shares(&self) -> &[EnrolledShare] {
        &self.shares
    }

    /// The node this slot unseals.
    pub fn owner_node(&self) -> &str {
        // Never empty: every constructor refuses a slot without shares.
        self.shares.first().map_or("", EnrolledShare::owner_node)
    }

    /// The enrollment all shares belong to.
    pub fn enrollment_id(&self) -> [u8; ENROLLMENT_ID_LEN] {
        self.shares
            .first()
            .map_or([0; ENROLLMENT_ID_LEN], EnrolledShare::enrollment_id)
    }

    /// `0x01 || threshold || n || n × lp(enrolled share)` (SPEC.md "Peer slot").
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![PEER_SLOT_VERSION, self.threshold];
        // At most 16 shares (an invariant), so the count fits.
        out.push(u8::try_from(self.shares.len()).unwrap_or(u8::MAX));
        for share in &self.shares {
            put_lp(&mut out, &share.encode());
        }
        out
    }

    /// Decodes strictly: version, threshold and count, each share as
    /// [`EnrolledShare::decode`], the slot's invariants (see [`PeerSlot`]), then the end of
    /// input.
    pub fn decode(bytes: &[u8]) -> AssistResult<Self> {
        const WHAT: &str = "peer slot";
        let trunc = |_| AssistError::Truncated(WHAT);
        let Some(&version) = bytes.first() else {
            return Err(AssistError::Truncated(WHAT));
        };
        if version != PEER_SLOT_VERSION {
            return Err(AssistError::UnsupportedVersion {
                what: WHAT,
                version,
            });
        }
        let mut r = Reader::new(&bytes[1..], WHAT);
        let threshold = r.u8().map_err(trunc)?;
        let n = r.u8().map_err(trunc)?;
        if n == 0 || n > MAX_SHARES {
            return Err(AssistError::Malformed {
                what: WHAT,
                reason: "number of peers is not 1 to 16",
            });
        }
        let mut shares = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            shares.push(EnrolledShare::decode(r.len_prefixed().map_err(trunc)?)?);
        }
        r.finish(WHAT).map_err(|_| AssistError::Malformed {
            what: WHAT,
            reason: "trailing bytes",
        })?;
        Self::from_shares(threshold, shares)
    }

    /// Starts an unseal of this slot by `owner_node`: one fresh blinded request per peer.
    ///
    /// Refuses a slot enrolled for another owner ([`AssistError::ContextMismatch`]) before any
    /// peer is asked.
    pub fn begin_unseal(&self, owner_node: &str) -> AssistResult<SlotUnseal<'_>> {
        if owner_node != self.owner_node() {
            return Err(AssistError::ContextMismatch {
                field: "owner node",
                expected: printable(owner_node),
                found: printable(self.owner_node()),
            });
        }
        let mut pending = Vec::with_capacity(self.shares.len());
        let mut requests = Vec::with_capacity(self.shares.len());
        for (peer, share) in self.shares.iter().enumerate() {
            let (blinding, blinded) = blind(share)?;
            pending.push(Some(blinding));
            requests.push(AssistRequest {
                peer,
                peer_node: share.peer_node().to_owned(),
                peer_public_key: share.peer_public_key(),
                blinded,
            });
        }
        Ok(SlotUnseal {
            slot: self,
            pending,
            requests,
            opened: Vec::new(),
            answered: Vec::new(),
        })
    }
}

/// What to send one peer: its blinded point, and who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssistRequest {
    /// The peer's position in the slot, to pass back to [`SlotUnseal::add_answer`].
    pub peer: usize,
    /// Whom to ask (the daemon checks the answering peer's mTLS identity is this node).
    pub peer_node: String,
    /// The assist key the answer must come from.
    pub peer_public_key: [u8; 32],
    /// `X`, the request itself.
    pub blinded: [u8; 32],
}

/// One unseal of a [`PeerSlot`] in progress: the outstanding blinding secrets and the shares
/// opened so far. `Debug` shows requests and progress; secrets print as `[redacted]`.
#[derive(Debug)]
pub struct SlotUnseal<'a> {
    slot: &'a PeerSlot,
    /// One per peer; taken by its answer, good or bad, so each request is used once.
    pending: Vec<Option<BlindingSecret>>,
    requests: Vec<AssistRequest>,
    opened: Vec<SecretBytes>,
    answered: Vec<usize>,
}

impl SlotUnseal<'_> {
    /// One request per peer, in slot order.
    pub fn requests(&self) -> &[AssistRequest] {
        &self.requests
    }

    /// Opens the share of peer position `peer` with its `answer`; `Ok(true)` once enough
    /// shares are open for [`SlotUnseal::finish`].
    ///
    /// The request is used up either way, so a bad answer cannot be retried with the same
    /// blinding ([`AssistError::NoPendingRequest`]); start a new unseal to ask again. Errors
    /// are [`recover`]'s, and [`AssistError::MalformedShare`] if the opened share is not this
    /// slot's share for that position (threshold or index differ).
    pub fn add_answer(&mut self, peer: usize, answer: &[u8; 32]) -> AssistResult<bool> {
        let blinding = self
            .pending
            .get_mut(peer)
            .and_then(Option::take)
            .ok_or(AssistError::NoPendingRequest(peer))?;
        let share = self
            .slot
            .shares
            .get(peer)
            .ok_or(AssistError::NoPendingRequest(peer))?;
        let opened = recover(share, &share.context(), blinding, answer)?;
        if share_threshold(&opened)? != self.slot.threshold
            || usize::from(share_index(&opened)?) != peer + 1
        {
            return Err(AssistError::MalformedShare(
                "the opened share is not this slot position's",
            ));
        }
        self.opened.push(opened);
        self.answered.push(peer);
        Ok(self.is_ready())
    }

    /// Whether enough shares are open to finish.
    pub fn is_ready(&self) -> bool {
        self.opened.len() >= usize::from(self.slot.threshold)
    }

    /// The nodes whose answers opened their share, in the order they came (for `status` and
    /// the audit record).
    pub fn answered(&self) -> Vec<&str> {
        self.answered
            .iter()
            .filter_map(|&i| self.slot.shares.get(i).map(EnrolledShare::peer_node))
            .collect()
    }

    /// Combines the opened shares into the slot key;
    /// [`AssistError::NotEnoughShares`] before the threshold is reached.
    pub fn finish(self) -> AssistResult<SecretBytes> {
        if !self.is_ready() {
            return Err(AssistError::NotEnoughShares {
                got: self.opened.len(),
                need: usize::from(self.slot.threshold),
            });
        }
        combine(&self.opened)
    }
}

/// Checks enrollment parameters before anything is drawn; returns n.
fn check_peers(owner_node: &str, peers: &[AssistPeer<'_>], threshold: u8) -> AssistResult<u8> {
    let bad = |m: String| AssistError::BadParameters(m);
    let n = u8::try_from(peers.len())
        .ok()
        .filter(|&n| (1..=MAX_SHARES).contains(&n))
        .ok_or_else(|| bad(format!("1 to {MAX_SHARES} peers, {} given", peers.len())))?;
    if threshold < 2 || threshold > n {
        return Err(bad(format!(
            "threshold must be 2 to the {n} peers, got {threshold}"
        )));
    }
    for (i, peer) in peers.iter().enumerate() {
        if peer.node == owner_node {
            return Err(bad(format!(
                "{} cannot be its own peer",
                printable(owner_node)
            )));
        }
        for other in &peers[..i] {
            if other.node == peer.node {
                return Err(bad(format!("peer {} given twice", printable(peer.node))));
            }
            if other.public_key == peer.public_key {
                return Err(bad(format!(
                    "peers {} and {} have the same assist key",
                    printable(other.node),
                    printable(peer.node)
                )));
            }
        }
    }
    Ok(n)
}
