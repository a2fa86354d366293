//! `backfill done`: a run walked through the operators' definition of done,
//! each missing item named until it is supplied — the scope applied, the
//! validation, the cutover, the stakeholders told (by `report --send` to a
//! webhook, or `--told`), the rollback copies kept until a date, the lesson —
//! after which the run is `done` and the report carries how people were told
//! and the lesson.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::lifecycle::done::{self, Supplied, Verdict};
use backfill_coordinator::lifecycle::{approve, cutover};
use backfill_coordinator::run::Finish;
use backfill_coordinator::{resume, validate};
use backfill_shared::control::runs::{self, RunState};
use backfill_tests::receiver::Receiver;
use backfill_tests::{TestEnv, ship_revenue};
use std::time::Duration;

fn missing(verdict: &Verdict) -> Vec<&'static str> {
    verdict
        .items
        .iter()
        .filter(|i| !i.ok)
        .map(|i| i.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_is_done_only_when_every_item_is_recorded() {
    let env = TestEnv::new(0.01).await;
    let run_id = env.record_ship_revenue_fix().await;
    let check = async |supplied: Supplied<'_>| {
        done::done(&env.pool, run_id, "alice", supplied)
            .await
            .unwrap()
    };

    let verdict = check(Supplied::default()).await;
    assert!(!verdict.done);
    assert_eq!(
        missing(&verdict),
        [
            "scope processed",
            "validation",
            "cut over, refreshed",
            "refresh reached downstream",
            "stakeholders told",
            "lesson captured"
        ]
    );
    let render = verdict.render();
    assert!(render.contains("0 of 84 batches applied"), "{render}");
    assert!(
        render.contains(&format!("backfill validate {run_id}")),
        "{render}"
    );
    assert!(
        render.contains("kept 14 days after cutover, owned by alice"),
        "{render}"
    );

    assert_eq!(env.run_to_end(run_id, 2).await, Finish::Applied);
    validate::validate(&env.pool, run_id).await.unwrap();
    let verdict = check(Supplied::default()).await;
    assert_eq!(
        missing(&verdict),
        [
            "cut over, refreshed",
            "refresh reached downstream",
            "stakeholders told",
            "lesson captured"
        ]
    );
    assert!(verdict.render().contains("84 of 84 batches applied"));

    approve::approve(&env.reviewer, run_id, None).await.unwrap();
    cutover::cutover(&env.pool, run_id, "alice", Duration::from_secs(5))
        .await
        .unwrap();
    let verdict = check(Supplied::default()).await;
    assert_eq!(missing(&verdict), ["stakeholders told", "lesson captured"]);
    assert!(verdict.render().contains("kept 14 days, until"));

    // The change note goes to the webhook; where it went is recorded.
    // Its address is a secret, as a Slack incoming webhook's path is: it is
    // shown, logged and posted only as scheme, host and last four characters.
    let receiver = Receiver::start().await;
    let secret = "T0AAAA/B0BBBB/SeCrEtHoOk9876";
    let hook = format!("{}/services/{secret}", receiver.url);
    let (code, stdout, stderr) = env
        .cli_with(
            &["report", &run_id.to_string(), "--send"],
            &[("BACKFILL_WEBHOOK_URL", &hook)],
        )
        .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("change note delivered to {}/…9876", receiver.url)),
        "{stderr}"
    );
    let taken = receiver.until("the change note", |t| !t.is_empty()).await;
    assert_eq!(taken[0].path, format!("/services/{secret}"));
    assert_eq!(taken[0].body["type"], "dev.backfill.run.change_note");
    let note = taken[0].body["data"]["change_note"].as_str().unwrap();
    assert!(note.contains("# Backfill report: ship-revenue"), "{note}");
    assert!(stdout.contains("| Told | change note sent to"), "{stdout}");
    for (what, text) in [
        ("the output", format!("{stdout}{stderr}")),
        ("the delivered body", taken[0].body.to_string()),
    ] {
        assert!(
            !text.contains("SeCrEt"),
            "the webhook's secret is in {what}"
        );
    }

    // From the CLI: exit 1, the missing item named; --json says the same.
    let (code, _, stderr) = env.cli(&["done", &run_id.to_string()]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("missing lesson captured"), "{stderr}");
    let (code, stdout, _) = env.cli(&["--json", "done", &run_id.to_string()]).await;
    assert_eq!(code, Some(1));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["done"], false);
    assert_eq!(json["items"].as_array().unwrap().len(), 7);
    let lesson = "Announce a week ahead: finance had a board deck on the old numbers.";
    let (code, stdout, stderr) = env
        .cli_with(
            &["done", &run_id.to_string(), "--lesson", lesson],
            &[("BACKFILL_WEBHOOK_URL", &hook)],
        )
        .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!format!("{stdout}{stderr}").contains("SeCrEt"), "{stdout}");
    let logged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM backfill.run_log WHERE detail::text LIKE '%SeCrEt%'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(logged, 0, "the webhook's secret is in the run log");
    assert!(
        receiver
            .taken()
            .iter()
            .all(|r| !r.body.to_string().contains("SeCrEt")),
        "the webhook's secret was posted"
    );
    assert!(
        stdout.contains(&format!("run {run_id} is done.")),
        "{stdout}"
    );
    assert_eq!(
        runs::state(&env.pool, run_id).await.unwrap(),
        RunState::Done
    );
    let (_, report, _) = env.cli(&["report", &run_id.to_string()]).await;
    assert!(
        report.contains(&format!("| Lesson | {lesson} |")),
        "{report}"
    );
    assert!(report.contains("(done)"), "{report}");
    // Done stays done; asking again changes nothing.
    assert!(check(Supplied::default()).await.done);

    // Another run on another table: no date to keep its copies until, told
    // by hand, then cancelled (which can never be done).
    sqlx::raw_sql(
        "CREATE TABLE tpch.sr_other (LIKE tpch.ship_revenue INCLUDING ALL);
         INSERT INTO tpch.sr_other SELECT * FROM tpch.ship_revenue;",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let text = ship_revenue::brief("merge", "delete", "")
        .replace(
            "target = \"tpch.ship_revenue\"",
            "target = \"tpch.sr_other\"",
        )
        .replace("retain_days = 14", "retain_days = 0");
    let (other, ..) = env.record_run(&text).await;
    let verdict = done::done(
        &env.pool,
        other,
        "alice",
        Supplied {
            told: Some("read out at the finance stand-up"),
            lesson: None,
        },
    )
    .await
    .unwrap();
    let names = missing(&verdict);
    assert!(names.contains(&"rollback retained"), "{names:?}");
    assert!(!names.contains(&"stakeholders told"), "{names:?}");
    assert!(verdict.render().contains("retain_days = 0"));
    assert!(
        verdict
            .render()
            .contains("read out at the finance stand-up (alice")
    );
    let refused = done::done(
        &env.pool,
        other,
        "alice",
        Supplied {
            lesson: Some("  "),
            told: None,
        },
    )
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("--lesson is empty"),
        "{refused}"
    );
    resume::cancel(&env.pool, other, "alice").await.unwrap();
    let (code, _, stderr) = env.cli(&["done", &other.to_string()]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot be done"), "{stderr}");
    env.cleanup().await;
}
