//! Strict big-endian reader shared by the decoders.
//!
//! Every decoder in SPEC.md is "read exactly these fields, then require the end": one reader
//! keeps truncation and trailing-byte checks identical everywhere.

use crate::error::{CryptoError, Result};

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    /// Reported for a short input, e.g. "keyring (truncated)".
    truncated: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], truncated: &'static str) -> Self {
        Self { buf, truncated }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(CryptoError::Malformed(self.truncated));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// How many bytes are left, for a last field that runs to the end of its container.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// A `u32` length prefix followed by that many bytes.
    pub(crate) fn len_prefixed(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()?;
        let n = usize::try_from(n).map_err(|_| CryptoError::Malformed(self.truncated))?;
        self.bytes(n)
    }

    /// Ends decoding; anything left is an error so that each value has one encoding.
    pub(crate) fn finish(self, trailing: &'static str) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CryptoError::Malformed(trailing))
        }
    }
}

/// Appends `bytes` with a `u32` big-endian length prefix.
///
/// Callers bound their inputs well below 4 GiB; longer input is a programming error that must
/// not be encoded ambiguously, hence the `Result`.
pub(crate) fn put_len_prefixed(out: &mut Vec<u8>, bytes: &[u8], what: &'static str) -> Result<()> {
    let n = u32::try_from(bytes.len()).map_err(|_| CryptoError::Malformed(what))?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_and_checks_end() {
        let mut r = Reader::new(&[0, 1, 0, 0, 0, 2, 9, 9, 5], "t (truncated)");
        assert_eq!(r.u16().unwrap(), 1);
        assert_eq!(r.len_prefixed().unwrap(), &[9, 9]);
        assert!(matches!(
            r.u16(),
            Err(CryptoError::Malformed("t (truncated)"))
        ));
    }

    #[test]
    fn trailing_is_rejected() {
        let mut r = Reader::new(&[1, 2], "t");
        r.u8().unwrap();
        assert!(r.finish("t (trailing bytes)").is_err());
    }
}
