//! Versioned on-disk records: one version byte, then the JSON of the record.

use serde::{de::DeserializeOwned, Serialize};

/// A type stored as a versioned record. Bump `VERSION` when the shape changes, and teach
/// `decode_record` callers to read the old versions.
pub trait Record: Serialize + DeserializeOwned {
    /// The version byte written in front of the record.
    const VERSION: u8;
}

/// A record that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Empty value.
    #[error("empty record")]
    Empty,
    /// A version this build does not know.
    #[error("record version {found} is not readable (expected {expected})")]
    Version {
        /// The version byte found.
        found: u8,
        /// The version this build reads.
        expected: u8,
    },
    /// The body did not decode.
    #[error("record body does not decode: {0}")]
    Body(String),
}

/// Encodes a record: `[VERSION] ++ json`.
pub fn encode_record<T: Record>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(T::VERSION);
    // Serialising plain data into a Vec cannot fail; an empty body would fail to decode loudly.
    let _ = serde_json::to_writer(&mut out, value);
    out
}

/// Decodes a record written by [`encode_record`].
pub fn decode_record<T: Record>(bytes: &[u8]) -> Result<T, RecordError> {
    let (&version, body) = bytes.split_first().ok_or(RecordError::Empty)?;
    if version != T::VERSION {
        return Err(RecordError::Version {
            found: version,
            expected: T::VERSION,
        });
    }
    serde_json::from_slice(body).map_err(|e| RecordError::Body(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Thing {
        a: u32,
    }
    impl Record for Thing {
        const VERSION: u8 = 3;
    }

    #[test]
    fn round_trips_and_refuses_other_versions() {
        let bytes = encode_record(&Thing { a: 7 });
        assert_eq!(bytes[0], 3);
        assert_eq!(decode_record::<Thing>(&bytes), Ok(Thing { a: 7 }));
        let mut other = bytes.clone();
        other[0] = 2;
        assert_eq!(
            decode_record::<Thing>(&other),
            Err(RecordError::Version {
                found: 2,
                expected: 3
            })
        );
        assert_eq!(decode_record::<Thing>(&[]), Err(RecordError::Empty));
        assert!(matches!(
            decode_record::<Thing>(&[3, b'{']),
            Err(RecordError::Body(_))
        ));
    }
}
