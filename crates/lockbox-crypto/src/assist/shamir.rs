//! Shamir t-of-n sharing of a slot key (SPEC.md "Shamir shares").
//!
//! The arithmetic is `vsss-rs`'s (version 6, `Gf256`): byte-wise sharing over GF(2^8) with
//! constant-time field operations (no log/exp tables, whose secret-indexed lookups leak
//! through the cache), an implementation funded through two security audits, maintained, and
//! built on the `rand_core` 0.10 / `zeroize` stack this crate already links. `blahaj` (the
//! maintained fork of `sharks`) was the other candidate: small, but its GF(256) multiplies
//! through lookup tables indexed by secret bytes; `sharks` itself has had no release since
//! 2021. This module adds what a slot needs around it: parameters bounded before any work,
//! the threshold carried in each share so [`combine`] can refuse too few, duplicate indexes
//! refused, and every secret buffer (polynomial coefficients included) wiped.

use std::convert::Infallible;

use hpke::rand_core::{TryCryptoRng, TryRng};
use vsss_rs::{DefaultShare, Gf256, IdentifierGf256, Polynomial};
use zeroize::{Zeroize, Zeroizing};

use super::{AssistError, AssistResult};
use crate::error::CryptoError;
use crate::secret::SecretBytes;

/// Most shares of one split: a slot has one peer per share, and 16 peers is far beyond what
/// an unseal should wait for; bounds the work a decoded slot can ask for.
pub const MAX_SHARES: u8 = 16;
/// Longest secret that can be split: a 32-byte slot key, with room for a 64-byte one.
pub const MAX_SECRET_LEN: usize = 64;
/// Bytes before a share's `y` values: threshold and index.
pub const SHAMIR_SHARE_HEADER_LEN: usize = 2;

type GfShare = DefaultShare<IdentifierGf256, IdentifierGf256>;

/// Splits `secret` (1 to [`MAX_SECRET_LEN`] bytes) into `n` shares, any `threshold` of which
/// give it back and fewer of which say nothing about it.
///
/// Refuses `threshold` below 2 (with 1, every share *is* the secret), above `n`, and `n`
/// above [`MAX_SHARES`]. Share `i` (1-based, in order) is `threshold || i || y`, wiped on drop
/// like the random coefficients drawn for it.
pub fn split(secret: &SecretBytes, threshold: u8, n: u8) -> AssistResult<Vec<SecretBytes>> {
    check_split(secret, threshold, n)?;
    let mut coefficients = Zeroizing::new(vec![0u8; coefficients_len(secret, threshold)]);
    getrandom::fill(&mut coefficients).map_err(|_| CryptoError::Random)?;
    split_with(secret, threshold, n, &coefficients)
}

/// [`split`] with the polynomials' coefficients given: `(threshold − 1) · len(secret)` bytes,
/// for secret byte `j` the coefficients of `x^1 .. x^(t−1)` in order. **For test vectors only**
/// (feature `test-vectors`): known coefficients give the secret away with a single share.
#[cfg(any(test, feature = "test-vectors"))]
pub fn split_deterministic(
    secret: &SecretBytes,
    threshold: u8,
    n: u8,
    coefficients: &[u8],
) -> AssistResult<Vec<SecretBytes>> {
    check_split(secret, threshold, n)?;
    if coefficients.len() != coefficients_len(secret, threshold) {
        return Err(AssistError::BadParameters(format!(
            "{} coefficient bytes given, {} needed",
            coefficients.len(),
            coefficients_len(secret, threshold)
        )));
    }
    split_with(secret, threshold, n, coefficients)
}

/// Gives back the secret from shares made by [`split`]: at least the threshold carried in
/// them, all of one split (same threshold and length), each index once.
///
/// Checks, in order: every share is well formed → [`AssistError::MalformedShare`]; all share
/// one threshold and length → `MalformedShare`; no index twice →
/// [`AssistError::DuplicateShareIndex`]; at least `threshold` shares →
/// [`AssistError::NotEnoughShares`]. Then interpolates at 0 over all of them. Shares of
/// another split with the same threshold and length are not detectable here: they give a
/// wrong secret, which the AEAD it unwraps then refuses.
pub fn combine(shares: &[SecretBytes]) -> AssistResult<SecretBytes> {
    let threshold = check_shares(shares)?;
    if shares.len() < usize::from(threshold) {
        return Err(AssistError::NotEnoughShares {
            got: shares.len(),
            need: usize::from(threshold),
        });
    }
    interpolate(shares)
}

/// The threshold a well-formed share carries (its first byte), so a caller can tell how many
/// shares to collect.
pub fn share_threshold(share: &SecretBytes) -> AssistResult<u8> {
    parse_share(share).map(|(t, _)| t)
}

/// The index (1-based x coordinate) a well-formed share carries (its second byte).
pub fn share_index(share: &SecretBytes) -> AssistResult<u8> {
    parse_share(share).map(|(_, i)| i)
}

fn check_split(secret: &SecretBytes, threshold: u8, n: u8) -> AssistResult<()> {
    let bad = |m: String| Err(AssistError::BadParameters(m));
    if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
        return bad(format!(
            "a secret to split must be 1 to {MAX_SECRET_LEN} bytes, got {}",
            secret.len()
        ));
    }
    if n > MAX_SHARES {
        return bad(format!("at most {MAX_SHARES} shares, {n} asked"));
    }
    if threshold < 2 {
        return bad(format!(
            "threshold must be at least 2, got {threshold} (with 1, every share is the secret)"
        ));
    }
    if threshold > n {
        return bad(format!("threshold {threshold} is more than the {n} shares"));
    }
    Ok(())
}

fn coefficients_len(secret: &SecretBytes, threshold: u8) -> usize {
    (usize::from(threshold) - 1) * secret.len()
}

/// The split proper: one polynomial of degree `t − 1` per secret byte, evaluated at 1..=n by
/// `vsss-rs`; the polynomial lives in a wiped-on-drop buffer, and each share's buffer is
/// allocated at its final size so no partial copy is left behind by a reallocation.
fn split_with(
    secret: &SecretBytes,
    threshold: u8,
    n: u8,
    coefficients: &[u8],
) -> AssistResult<Vec<SecretBytes>> {
    let t = usize::from(threshold);
    let mut rng = Coefficients::new(coefficients);
    let mut polynomial = Zeroizing::new(<Vec<GfShare> as Polynomial<GfShare>>::create(t));
    let mut shares: Vec<Zeroizing<Vec<u8>>> = (1..=n)
        .map(|i| {
            let mut share = Vec::with_capacity(SHAMIR_SHARE_HEADER_LEN + secret.len());
            share.extend_from_slice(&[threshold, i]);
            Zeroizing::new(share)
        })
        .collect();
    for &byte in secret.expose_secret() {
        let mut intercept = IdentifierGf256(Gf256(byte));
        let filled = polynomial.fill(&intercept, &mut rng, t);
        intercept.zeroize();
        filled.map_err(|_| AssistError::BadParameters("polynomial of the wrong size".into()))?;
        for (x, share) in (1..=n).zip(shares.iter_mut()) {
            let mut y = IdentifierGf256::default();
            polynomial.evaluate_in_place(&IdentifierGf256(Gf256(x)), t, &mut y);
            share.push(y.0.0);
            y.zeroize();
        }
    }
    if !rng.used_exactly() {
        // vsss-rs draws one coefficient per `next_u32` (Gf256::try_random); anything else
        // means the library changed under us, and the shares must not be used.
        return Err(AssistError::BadParameters(
            "the sharing library drew an unexpected number of coefficients".into(),
        ));
    }
    Ok(shares
        .iter_mut()
        .map(|s| SecretBytes::new(std::mem::take(&mut **s)))
        .collect())
}

/// Lagrange interpolation at 0 over all `shares` (already checked), by `vsss-rs`.
fn interpolate(shares: &[SecretBytes]) -> AssistResult<SecretBytes> {
    // vsss-rs's byte shares are `x || y`: drop our threshold byte.
    let points: Zeroizing<Vec<Vec<u8>>> = Zeroizing::new(
        shares
            .iter()
            .map(|s| s.expose_secret()[1..].to_vec())
            .collect(),
    );
    let secret = Gf256::combine_bytes(points.as_slice())
        .map_err(|_| AssistError::MalformedShare("refused by the sharing library"))?;
    Ok(SecretBytes::new(secret))
}

/// `(threshold, index)` of one share, refusing what [`split`] never makes.
fn parse_share(share: &SecretBytes) -> AssistResult<(u8, u8)> {
    let b = share.expose_secret();
    if b.len() <= SHAMIR_SHARE_HEADER_LEN || b.len() > SHAMIR_SHARE_HEADER_LEN + MAX_SECRET_LEN {
        return Err(AssistError::MalformedShare(
            "not 3 to 66 bytes (threshold, index, 1 to 64 values)",
        ));
    }
    let (threshold, index) = (b[0], b[1]);
    if !(2..=MAX_SHARES).contains(&threshold) {
        return Err(AssistError::MalformedShare("threshold is not 2 to 16"));
    }
    if !(1..=MAX_SHARES).contains(&index) {
        return Err(AssistError::MalformedShare("index is not 1 to 16"));
    }
    Ok((threshold, index))
}

/// Checks the shares agree and returns their threshold; see [`combine`] for the order.
fn check_shares(shares: &[SecretBytes]) -> AssistResult<u8> {
    let parsed = shares
        .iter()
        .map(parse_share)
        .collect::<AssistResult<Vec<_>>>()?;
    let (Some(first), Some(&(threshold, _))) = (shares.first(), parsed.first()) else {
        return Err(AssistError::NotEnoughShares { got: 0, need: 2 });
    };
    let mut seen = [false; 256];
    for (share, &(t, index)) in shares.iter().zip(&parsed) {
        if t != threshold {
            return Err(AssistError::MalformedShare(
                "shares of different thresholds",
            ));
        }
        if share.len() != first.len() {
            return Err(AssistError::MalformedShare("shares of different lengths"));
        }
        let slot = &mut seen[usize::from(index)];
        if *slot {
            return Err(AssistError::DuplicateShareIndex(index));
        }
        *slot = true;
    }
    Ok(threshold)
}

/// Interpolation without the threshold check: what `t − 1` shares would give. Tests only,
/// to show that it is not the secret.
#[cfg(test)]
pub(super) fn interpolate_unchecked(shares: &[SecretBytes]) -> AssistResult<SecretBytes> {
    check_shares(shares)?;
    interpolate(shares)
}

/// Hands `vsss-rs` the coefficient bytes, one per draw, and records whether it drew exactly
/// those: the coefficients come from `getrandom` (or a vector) into a wiped buffer, so an RNG
/// failure is [`CryptoError::Random`] instead of a panic inside the library, and vectors are
/// reproducible. A draw past the end gets zero and is recorded; the split is then refused.
struct Coefficients<'a> {
    bytes: &'a [u8],
    drawn: usize,
    overdrawn: bool,
}

impl<'a> Coefficients<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            drawn: 0,
            overdrawn: false,
        }
    }

    fn next_byte(&mut self) -> u8 {
        match self.bytes.get(self.drawn) {
            Some(&b) if !self.overdrawn => {
                self.drawn += 1;
                b
            }
            _ => {
                self.overdrawn = true;
                0
            }
        }
    }

    fn used_exactly(&self) -> bool {
        !self.overdrawn && self.drawn == self.bytes.len()
    }
}

impl TryRng for Coefficients<'_> {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(u32::from(self.next_byte()))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(u64::from(self.next_byte()))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for b in dst {
            *b = self.next_byte();
        }
        Ok(())
    }
}

// As unpredictable as its bytes: from `getrandom` in `split`.
impl TryCryptoRng for Coefficients<'_> {}
