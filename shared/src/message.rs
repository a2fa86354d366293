//! Messages on the queues and their MessagePack codec.
//!
//! Encoded with named fields (`rmp_serde::to_vec_named`) so either side can add a
//! field without breaking the other. A batch message carries no SQL: only the run,
//! the batch, its typed bounds and the brief's hash; the worker loads the SQL from
//! the control plane and refuses a hash that differs.

use crate::brief::Bound;
use crate::checks::BatchChecks;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The message format this build writes and reads.
pub const VERSION: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("not a MessagePack message of the expected shape: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error(
        "message version {found} is not supported (this build reads version {VERSION}); upgrade the worker or drain the queue with the build that wrote it"
    )]
    Version { found: u16 },
    #[error("could not encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

pub type Result<T, E = CodecError> = std::result::Result<T, E>;

/// "Apply this batch": published by the coordinator to the batch queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMessage {
    pub version: u16,
    pub run_id: Uuid,
    pub batch_no: u32,
    pub lo: Bound,
    pub hi: Bound,
    /// SHA-256 of the brief text the run was planned from.
    pub brief_hash: String,
}

/// Why a batch failed, as the worker classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Retrying cannot help (the source query fails, a constraint is violated).
    Permanent,
    /// Retries were exhausted on a failure that might pass later.
    Exhausted,
}

/// What happened to a batch: published by workers to the run's event queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Applied {
        version: u16,
        run_id: Uuid,
        batch_no: u32,
        rows_source: i64,
        rows_inserted: i64,
        rows_updated: i64,
        rows_deleted: i64,
        duration_ms: i64,
        /// What the batch measured on its range.
        #[serde(default)]
        checks: BatchChecks,
    },
    Failed {
        version: u16,
        run_id: Uuid,
        batch_no: u32,
        kind: FailureKind,
        error: String,
    },
}

impl Event {
    #[must_use]
    pub fn run_id(&self) -> Uuid {
        match self {
            Self::Applied { run_id, .. } | Self::Failed { run_id, .. } => *run_id,
        }
    }

    fn version(&self) -> u16 {
        match self {
            Self::Applied { version, .. } | Self::Failed { version, .. } => *version,
        }
    }
}

/// Encodes any message with named fields.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>> {
    Ok(rmp_serde::to_vec_named(message)?)
}

pub fn decode_batch(bytes: &[u8]) -> Result<BatchMessage> {
    let m: BatchMessage = rmp_serde::from_slice(bytes)?;
    check_version(m.version)?;
    Ok(m)
}

pub fn decode_event(bytes: &[u8]) -> Result<Event> {
    let e: Event = rmp_serde::from_slice(bytes)?;
    check_version(e.version())?;
    Ok(e)
}

fn check_version(found: u16) -> Result<()> {
    if found == VERSION {
        Ok(())
    } else {
        Err(CodecError::Version { found })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn batch() -> BatchMessage {
        BatchMessage {
            version: VERSION,
            run_id: Uuid::new_v4(),
            batch_no: 7,
            lo: Bound::Date(NaiveDate::from_ymd_opt(1992, 1, 1).unwrap()),
            hi: Bound::Date(NaiveDate::from_ymd_opt(1992, 2, 1).unwrap()),
            brief_hash: "ab".repeat(32),
        }
    }

    #[test]
    fn batch_round_trips_with_named_fields() {
        let m = batch();
        let bytes = encode(&m).unwrap();
        assert_eq!(decode_batch(&bytes).unwrap(), m);
        // Named fields: the field names travel with the message.
        assert!(bytes.windows(8).any(|w| w == b"batch_no"));
    }

    #[test]
    fn events_round_trip() {
        let e = Event::Failed {
            version: VERSION,
            run_id: Uuid::new_v4(),
            batch_no: 3,
            kind: FailureKind::Permanent,
            error: "boom".into(),
        };
        assert_eq!(decode_event(&encode(&e).unwrap()).unwrap(), e);
    }

    #[test]
    fn extra_fields_are_ignored_so_messages_can_grow() {
        #[derive(Serialize)]
        struct Newer {
            #[serde(flatten)]
            inner: BatchMessage,
            trace_sampled: bool,
        }
        let m = batch();
        let bytes = encode(&Newer {
            inner: m.clone(),
            trace_sampled: true,
        })
        .unwrap();
        assert_eq!(decode_batch(&bytes).unwrap(), m);
    }

    #[test]
    fn rejects_garbage_and_unknown_versions() {
        assert!(matches!(
            decode_batch(b"\xc1 definitely not msgpack"),
            Err(CodecError::Decode(_))
        ));
        let mut m = batch();
        m.version = 99;
        assert!(matches!(
            decode_batch(&encode(&m).unwrap()),
            Err(CodecError::Version { found: 99 })
        ));
    }
}
