//! How a webhook delivery treats what endpoints answer: a refusal of the
//! request itself (a 4xx but 408 and 429) is not tried again, since it would
//! be refused again; a busy endpoint (429 with `Retry-After`) is waited for as
//! long as it asks; and what the command says matches the run log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::notify::{self, Settings};
use backfill_tests::TestEnv;
use backfill_tests::receiver::Receiver;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refusal_is_not_retried_and_a_busy_endpoint_is_waited_for() {
    let env = TestEnv::new(0.01).await;
    let refused = [(400, None); 4];
    let receiver =
        Receiver::answering(&[("/refuses", &refused), ("/busy", &[(429, Some(1))])]).await;
    let vars: HashMap<String, String> = [(
        "BACKFILL_WEBHOOKS".to_owned(),
        format!("cloudevents={0}/refuses,cloudevents={0}/busy", receiver.url),
    )]
    .into_iter()
    .collect();
    let notifier = notify::install(
        Settings::from_vars(&vars).unwrap(),
        &env.config.database_url,
    )
    .expect("the first notifier of this process");
    let run_id = env.record_ship_revenue_fix().await;

    let started = Instant::now();
    let delivered = notify::send_change_note(&env.pool, run_id, "alice", "# The note")
        .await
        .unwrap();
    // The busy endpoint took it on its second try, a second after the first.
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(delivered[0].contains("127.0.0.1"), "{delivered:?}");
    let taken = receiver.taken();
    let tries = |path: &str| taken.iter().filter(|r| r.path == path).count();
    assert_eq!((tries("/refuses"), tries("/busy")), (1, 2));

    // The run log says the same: delivered to one, refused by the other (with
    // what it answered), and that refusal dropped.
    let (endpoints, failed): (serde_json::Value, serde_json::Value) = sqlx::query_as(
        "SELECT detail->'endpoints', detail->'failed' FROM backfill.run_log
          WHERE run_id = $1 AND event = 'change_note_delivered'",
    )
    .bind(run_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(endpoints.as_array().map(Vec::len), Some(1), "{endpoints}");
    let failed = failed.to_string();
    assert!(failed.contains("400"), "{failed}");
    let dropped: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM backfill.run_log WHERE run_id = $1 AND event = 'notification_dropped'",
    )
    .bind(run_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(dropped, 1);
    notifier.shutdown().await;
    env.cleanup().await;
}
