//! Messages a worker must not act on are dead-lettered with their reason, and the
//! worker goes on applying the run's batches.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::run::Finish;
use backfill_shared::brief::{Bound, Brief};
use backfill_shared::message::{self, BatchMessage, VERSION};
use backfill_shared::topology::{self};
use backfill_tests::{TestEnv, dead_letter_reasons};
use lapin::types::AMQPValue;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_is_dead_lettered_with_a_reason_and_the_run_completes() {
    let env = TestEnv::new(0.01).await;
    let text = env.brief(12, 4).await;
    let (run_id, _, plan) = env.record_run(&text).await;
    let (conn, channel, topo) = env.channel().await;
    // Forgeries of the last batch, which the coordinator publishes long after them.
    let last = *plan.last().unwrap();
    let good = BatchMessage {
        version: VERSION,
        run_id,
        batch_no: last.no,
        lo: last.lo,
        hi: last.hi,
        brief_hash: Brief::hash(&text),
    };
    let hostile: Vec<(Vec<u8>, &str)> = vec![
        (b"\x00\xffthis is not messagepack".to_vec(), "undecodable"),
        (
            message::encode(&BatchMessage {
                version: 99,
                ..good.clone()
            })
            .unwrap(),
            "version 99",
        ),
        (
            message::encode(&BatchMessage {
                run_id: uuid::Uuid::new_v4(),
                ..good.clone()
            })
            .unwrap(),
            "unknown run",
        ),
        (
            message::encode(&BatchMessage {
                brief_hash: "0".repeat(64),
                ..good.clone()
            })
            .unwrap(),
            "brief hash",
        ),
        (
            message::encode(&BatchMessage {
                hi: Bound::Integer(1_000_000_000),
                ..good.clone()
            })
            .unwrap(),
            "not the ledger's",
        ),
    ];
    for (payload, _) in &hostile {
        topology::publish_confirmed(&channel, "", &topo.batches, payload, topology::persistent())
            .await
            .unwrap();
    }

    let finish = env.run_to_end(run_id, 1).await;
    assert_eq!(finish, Finish::Applied);
    env.assert_exactly_applied(run_id).await;

    let reasons = dead_letter_reasons(&channel, &topo, hostile.len()).await;
    assert_eq!(reasons.len(), hostile.len(), "dead letters: {reasons:?}");
    for (_, expected) in &hostile {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no dead letter says {expected:?}: {reasons:?}"
        );
    }
    let _ = conn.close(200, "done".into()).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_message_key_unsigned_and_wrongly_signed_messages_are_refused() {
    let mut env = TestEnv::new(0.01).await;
    env.config = env
        .config
        .clone()
        .with_message_key("a shared secret for this test");
    let text = env.brief(6, 3).await;
    let (run_id, _, plan) = env.record_run(&text).await;
    let (conn, channel, topo) = env.channel().await;
    let last = *plan.last().unwrap();
    let payload = message::encode(&BatchMessage {
        version: VERSION,
        run_id,
        batch_no: last.no,
        lo: last.lo,
        hi: last.hi,
        brief_hash: Brief::hash(&text),
    })
    .unwrap();
    let forged = backfill_shared::signing::Signer::new("somebody else's secret key");
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        backfill_shared::signing::SIGNATURE_HEADER.into(),
        AMQPValue::LongString(forged.sign(&payload).into()),
    );
    for properties in [
        topology::persistent(),
        topology::persistent().with_headers(headers),
    ] {
        topology::publish_confirmed(&channel, "", &topo.batches, &payload, properties)
            .await
            .unwrap();
    }

    // Workers and coordinator share the key; the run completes with signed messages.
    let finish = env.run_to_end(run_id, 1).await;
    assert_eq!(finish, Finish::Applied);
    env.assert_exactly_applied(run_id).await;

    let reasons = dead_letter_reasons(&channel, &topo, 2).await;
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("unsigned")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("wrong signature")),
        "{reasons:?}"
    );
    let _ = conn.close(200, "done".into()).await;
    env.cleanup().await;
}
