//! Publishing a run's batch messages.

use crate::{CliError, Result};
use backfill_shared::brief::BatchRange;
use backfill_shared::failure::ServiceFailure;
use backfill_shared::message::{self, BatchMessage, VERSION};
use backfill_shared::signing::{SIGNATURE_HEADER, Signer};
use backfill_shared::telemetry;
use backfill_shared::topology;
use lapin::types::FieldTable;
use tracing::{Instrument as _, info_span};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

/// Publishes batch messages of one run: pipelined, each confirmed, signed when
/// the deployment has a message key.
pub(super) struct BatchPublisher<'a> {
    /// The parent of every publish span: the run's root span.
    pub(super) run_span: &'a opentelemetry::Context,
    pub(super) channel: &'a lapin::Channel,
    pub(super) queue: &'a str,
    pub(super) brief_hash: &'a str,
    pub(super) run_id: Uuid,
    pub(super) plan: &'a [BatchRange],
    pub(super) signer: Option<Signer>,
}

impl BatchPublisher<'_> {
    /// Publishes batches `nos` and waits for their confirms, at most
    /// [`topology::CONFIRM_WAIT`] in all.
    pub(super) async fn publish(&self, nos: &[u32]) -> Result<()> {
        topology::within_confirm_wait(self.queue, self.publish_unbounded(nos)).await
    }

    async fn publish_unbounded(&self, nos: &[u32]) -> Result<()> {
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
            let span = info_span!(
                "batch.publish",
                otel.kind = "producer",
                messaging.system = "rabbitmq",
                messaging.destination.name = self.queue,
                run.id = %self.run_id,
                batch.no = i64::from(no),
            );
            let _ = span.set_parent(self.run_span.clone());
            let mut headers = FieldTable::default();
            // The worker's apply span becomes this span's child.
            span.in_scope(|| telemetry::inject(&mut headers));
            if let Some(signer) = &self.signer {
                headers.insert(
                    SIGNATURE_HEADER.into(),
                    lapin::types::AMQPValue::LongString(signer.sign(&payload).into()),
                );
            }
            let properties = topology::persistent().with_headers(headers);
            confirms.push(
                self.channel
                    .basic_publish(
                        "".into(),
                        self.queue.into(),
                        lapin::options::BasicPublishOptions::default(),
                        &payload,
                        properties,
                    )
                    .instrument(span)
                    .await?,
            );
        }
        for confirm in confirms {
            if !confirm.await?.is_ack() {
                // Transient: the driver reconnects and publishes what the ledger
                // says is still queued.
                return Err(CliError::Call(ServiceFailure::Nacked(format!(
                    "{} (a batch of run {})",
                    self.queue, self.run_id
                ))));
            }
        }
        Ok(())
    }
}
