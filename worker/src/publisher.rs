//! The worker's outgoing messages, on a channel in confirm mode: validation events
//! for the coordinator and dead letters (with the reason in a header) for poison
//! messages. Every publish waits for the broker's confirm.

use crate::error::BatchError;
use backfill_shared::message::{self, Event};
use backfill_shared::topology::{self, REASON_HEADER, Topology};
use lapin::message::Delivery;
use lapin::options::ConfirmSelectOptions;
use lapin::types::AMQPValue;
use lapin::{Channel, Connection};

#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    channel: Channel,
    topology: Topology,
}

impl Publisher {
    pub(crate) async fn new(conn: &Connection, topology: Topology) -> lapin::Result<Self> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel, topology })
    }

    /// Publishes an event to the run's event queue.
    pub(crate) async fn event(&self, event: &Event) -> Result<(), BatchError> {
        let payload = message::encode(event)
            .map_err(|e| BatchError::Permanent(format!("encoding event: {e}")))?;
        topology::publish_confirmed(
            &self.channel,
            &self.topology.events,
            &event.run_id().to_string(),
            &payload,
            topology::persistent(),
        )
        .await
        .map_err(|e| BatchError::service("publishing an event", e))
    }

    /// Copies a delivery to the dead-letter exchange with its reason. The caller
    /// acks the original only after this returns `Ok`.
    pub(crate) async fn dead_letter(
        &self,
        delivery: &Delivery,
        reason: &str,
    ) -> Result<(), BatchError> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
        headers.insert(
            "x-backfill-original-queue".into(),
            AMQPValue::LongString(delivery.routing_key.as_str().into()),
        );
        let properties = topology::persistent().with_headers(headers);
        topology::publish_confirmed(
            &self.channel,
            &self.topology.dead,
            "",
            &delivery.data,
            properties,
        )
        .await
        .map_err(|e| BatchError::service("dead-lettering", e))
    }
}
