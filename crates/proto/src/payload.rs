//! What every payload parser shares: the error type and the retained-message convention (an empty
//! retained payload clears the topic).

use serde::de::DeserializeOwned;

/// Why a payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, or JSON of the wrong shape (serde's message says where: line, column, field).
    #[error("invalid {what} payload: {source}")]
    Json {
        /// What was being read (`measurement`, `software_update command`, ...).
        what: &'static str,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// JSON of the right shape with a value the contract does not allow.
    #[error("invalid {what} payload: {reason}")]
    Invalid {
        /// What was being read.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An empty payload where one is required (an empty payload only clears retained topics).
    #[error("empty {what} payload")]
    Empty {
        /// What was being read.
        what: &'static str,
    },
    /// A versioned EdgeMLOps payload newer than this build understands.
    #[error("{what} payload has version {found}, this build reads up to version {supported}")]
    UnsupportedVersion {
        /// What was being read.
        what: &'static str,
        /// The payload's version.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
}

/// A retained topic's content: a value, or cleared by an empty payload (alarms, twin fragments,
/// registrations, commands, capabilities).
#[derive(Clone, Debug, PartialEq)]
pub enum Retained<T> {
    /// The topic holds this value.
    Value(T),
    /// The topic was cleared (an empty retained message).
    Cleared,
}

impl<T> Retained<T> {
    /// The value, if not cleared.
    pub fn value(self) -> Option<T> {
        match self {
            Self::Value(v) => Some(v),
            Self::Cleared => None,
        }
    }
}

/// Parses a JSON payload, refusing an empty one.
pub(crate) fn from_json<T: DeserializeOwned>(payload: &[u8], what: &'static str) -> Result<T, PayloadError> {
    if payload.is_empty() {
        return Err(PayloadError::Empty { what });
    }
    serde_json::from_slice(payload).map_err(|source| PayloadError::Json { what, source })
}

/// Parses a retained JSON payload: empty means cleared.
pub(crate) fn retained_from_json<T: DeserializeOwned>(
    payload: &[u8],
    what: &'static str,
) -> Result<Retained<T>, PayloadError> {
    if payload.is_empty() {
        Ok(Retained::Cleared)
    } else {
        from_json(payload, what).map(Retained::Value)
    }
}

/// Serializes a payload. Serializing these types cannot fail: keys are strings and numbers finite
/// by construction or written as `null` by serde_json.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("wire types serialize to JSON (string keys, no custom failures)")
}
