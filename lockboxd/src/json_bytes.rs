//! Byte strings in stored JSON records (`#[serde(with = "crate::json_bytes")]`), written as
//! base64 text.
//!
//! serde's default for `Vec<u8>` is an array of numbers: an evacuation's receipt names every
//! key (megabytes of protobuf) and was three times that size as numbers, a visible share of
//! the transfer's time at both ends; sealed material inline in a key's metadata would grow the
//! same way. Reading also accepts the array of numbers that earlier versions wrote.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serializer};

/// Writes `bytes` as base64 text.
pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&STANDARD.encode(bytes))
}

/// The two spellings a stored byte string may have.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Base64(String),
    Numbers(Vec<u8>),
}

impl Stored {
    fn into_bytes<E: serde::de::Error>(self) -> Result<Vec<u8>, E> {
        match self {
            Stored::Base64(text) => STANDARD.decode(text).map_err(E::custom),
            Stored::Numbers(bytes) => Ok(bytes),
        }
    }
}

/// Reads base64 text, or the array of numbers earlier versions wrote.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    Stored::deserialize(d)?.into_bytes()
}

/// The same for an optional byte string (`null` or absent is `None`).
pub(crate) mod option {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `Some` as base64 text, `None` as `null`.
    pub(crate) fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => super::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    /// Reads `null` as `None`, anything else as [`super::deserialize`] does.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<super::Stored>::deserialize(d)?
            .map(super::Stored::into_bytes)
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Record {
        #[serde(with = "crate::json_bytes")]
        body: Vec<u8>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "crate::json_bytes::option"
        )]
        inline: Option<Vec<u8>>,
    }

    #[test]
    fn base64_out_both_spellings_in() {
        let r = Record {
            body: vec![0, 1, 254, 255],
            inline: Some(vec![7; 5]),
        };
        let text = serde_json::to_string(&r).unwrap_or_default();
        assert_eq!(text, r#"{"body":"AAH+/w==","inline":"BwcHBwc="}"#);
        assert_eq!(serde_json::from_str::<Record>(&text).ok(), Some(r));

        let old: Record = serde_json::from_str(r#"{"body":[0,1,254,255],"inline":[7,7]}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(old.body, vec![0, 1, 254, 255]);
        assert_eq!(old.inline, Some(vec![7, 7]));

        let none: Record = serde_json::from_str(r#"{"body":""}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(none.inline, None);
        assert_eq!(
            serde_json::to_string(&none).unwrap_or_default(),
            r#"{"body":""}"#
        );
        let null: Record =
            serde_json::from_str(r#"{"body":"","inline":null}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(null.inline, None);

        assert!(serde_json::from_str::<Record>(r#"{"body":"not base64!"}"#).is_err());
        assert!(serde_json::from_str::<Record>(r#"{"body":[256]}"#).is_err());
    }
}
