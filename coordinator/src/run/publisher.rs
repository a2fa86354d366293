//! Publishing a run's batch messages.

use crate::{CliError, Result};
use backfill_shared::brief::BatchRange;
use backfill_shared::message::{self, BatchMessage, VERSION};
use backfill_shared::signing::{SIGNATURE_HEADER, Signer};
use backfill_shared::topology;
use lapin::types::FieldTable;
use uuid::Uuid;

/// Publishes batch messages of one run: pipelined, each confirmed, signed when
/// the deployment has a message key.
pub(super) struct BatchPublisher<'a> {
    pub(super) channel: &'a lapin::Channel,
    pub(super) queue: &'a str,
    pub(super) brief_hash: &'a str,
    pub(super) run_id: Uuid,
    pub(super) plan: &'a [BatchRange],
    pub(super) signer: Option<Signer>,
}

impl BatchPublisher<'_> {
    pub(super) async fn publish(&self, nos: &[u32]) -> Result<()> {
        // Pipelined: publish them all, then wait for every confirm.
        let mut confirms = Vec::with_capacity(nos.len());
        for &no in nos {
            let range = self
                .plan
                .get(no as usize)
                .ok_or_else(|| CliError::Internal(format!("batch {no} is not in the plan")))?;
            let payload = message::encode(&BatchMessage {
                version: VERSION,
                run_id: self.run_id,
                batch_no: no,
                lo: range.lo,
                hi: range.hi,
                brief_hash: self.brief_hash.to_owned(),
            })
            .map_err(|e| CliError::Internal(e.to_string()))?;
            let mut properties = topology::persistent();
            if let Some(signer) = &self.signer {
                let mut headers = FieldTable::default();
                headers.insert(
                    SIGNATURE_HEADER.into(),
                    lapin::types::AMQPValue::LongString(signer.sign(&payload).into()),
                );
                properties = properties.with_headers(headers);
            }
            confirms.push(
                self.channel
                    .basic_publish(
                        "".into(),
                        self.queue.into(),
                        lapin::options::BasicPublishOptions::default(),
                        &payload,
                        properties,
                    )
                    .await?,
            );
        }
        for confirm in confirms {
            if !confirm.await?.is_ack() {
                return Err(CliError::Internal(format!(
                    "the broker refused (nacked) a batch of run {}; nothing is lost — run again to re-attach",
                    self.run_id
                )));
            }
        }
        Ok(())
    }
}
