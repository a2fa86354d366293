//! The AMQP topology, declared identically by coordinator and workers:
//!
//! - `<ns>.batches`: durable quorum queue of [`BatchMessage`](crate::message::BatchMessage)s,
//!   with a delivery limit; a message redelivered past it is dead-lettered.
//! - `<ns>.dead` (fanout exchange and quorum queue): dead letters. Workers publish a
//!   poison message there themselves, with an `x-backfill-reason` header saying why.
//! - `<ns>.events` (direct exchange): workers publish [`Event`](crate::message::Event)s
//!   with the run id as routing key; each run has its own durable queue
//!   `<ns>.events.<run id>`, so a coordinator that restarts finds its events waiting.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};
use std::time::Duration;
use uuid::Uuid;

/// A message delivered more often than this is dead-lettered by the broker.
pub const DELIVERY_LIMIT: i64 = 5;
/// The header a dead letter's reason travels in.
pub const REASON_HEADER: &str = "x-backfill-reason";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub batches: String,
    pub dead: String,
    pub events: String,
}

impl Topology {
    #[must_use]
    pub fn new(namespace: &str) -> Self {
        Self {
            batches: format!("{namespace}.batches"),
            dead: format!("{namespace}.dead"),
            events: format!("{namespace}.events"),
        }
    }

    #[must_use]
    pub fn run_events_queue(&self, run_id: Uuid) -> String {
        format!("{}.{run_id}", self.events)
    }

    /// Declares the shared exchanges and queues. Idempotent.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions::durable();
        channel
            .exchange_declare(
                self.dead.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(self.dead.as_str().into(), durable, quorum(&[]))
            .await?;
        channel
            .queue_bind(
                self.dead.as_str().into(),
                self.dead.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.batches.as_str().into(),
                durable,
                quorum(&[
                    ("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)),
                    (
                        "x-dead-letter-exchange",
                        AMQPValue::LongString(self.dead.as_str().into()),
                    ),
                ]),
            )
            .await?;
        channel
            .exchange_declare(
                self.events.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
    }

    /// Declares and binds the event queue of one run.
    pub async fn declare_run_events(
        &self,
        channel: &Channel,
        run_id: Uuid,
    ) -> lapin::Result<String> {
        let queue = self.run_events_queue(run_id);
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                quorum(&[]),
            )
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                self.events.as_str().into(),
                run_id.to_string().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(queue)
    }
}

fn quorum(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    for (k, v) in extra {
        args.insert(ShortString::from(*k), v.clone());
    }
    args
}

/// How long a publisher waits for the broker to confirm what it published. A
/// broker short of disk or memory blocks its publishers without closing their
/// connections; past this wait the publish is an error that says so, retried as
/// a lost connection is.
pub const CONFIRM_WAIT: Duration = Duration::from_secs(30);

/// What to do about a broker that blocks publishers.
pub const ALARM_FIX: &str = "`rabbitmq-diagnostics check_local_alarms` names the alarm; free the disk or memory (or raise the limit) and publishing resumes";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused (nacked) a message to {0}; it was not stored")]
    Nacked(String),
    #[error("the broker has not confirmed a message to {0} within {secs} s: RabbitMQ blocks publishers while it is short of disk or memory. {ALARM_FIX}", secs = CONFIRM_WAIT.as_secs())]
    Unconfirmed(String),
}

/// `publishing` (publishes and the wait for their confirms) bounded by
/// [`CONFIRM_WAIT`]: past it, [`PublishError::Unconfirmed`] naming `to`.
pub async fn within_confirm_wait<T, E: From<PublishError>>(
    to: &str,
    publishing: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::time::timeout(CONFIRM_WAIT, publishing)
        .await
        .unwrap_or_else(|_| Err(PublishError::Unconfirmed(to.to_owned()).into()))
}

/// Persistent delivery, so a message survives a broker restart.
#[must_use]
pub fn persistent() -> lapin::BasicProperties {
    lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/msgpack".into())
}

/// Publishes on a channel in confirm mode and waits for the broker's confirm,
/// at most [`CONFIRM_WAIT`]. A nack is an error, never a delivery.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: lapin::BasicProperties,
) -> Result<(), PublishError> {
    let to = format!("{exchange}/{routing_key}");
    within_confirm_wait(&to, async {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                lapin::options::BasicPublishOptions::default(),
                payload,
                properties,
            )
            .await?
            .await?;
        if confirm.is_ack() {
            Ok(())
        } else {
            Err(PublishError::Nacked(to.clone()))
        }
    })
    .await
}
