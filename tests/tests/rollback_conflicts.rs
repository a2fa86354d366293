//! Rollback never clobbers later writes: after a run, a row it updated is
//! changed again, a row it inserted is changed, and a row it deleted is
//! inserted again. Rollback lists the three, leaves them as they are, restores
//! every other row exactly and fails; `--overwrite-newer` then restores them too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::CliError;
use backfill_coordinator::lifecycle::rollback::{self, RollbackOptions};
use backfill_coordinator::run::Finish;
use backfill_shared::control::runs::{self, RunState};
use backfill_tests::{TestEnv, ship_revenue};

/// The key of the first row of a month, as `(date, mode)` literals.
async fn first_row(env: &TestEnv, month: &str) -> (String, String) {
    sqlx::query_as(
        "SELECT l_shipdate::text, l_shipmode::text FROM tpch.ship_revenue
          WHERE date_trunc('month', l_shipdate) = $1::date ORDER BY 1, 2 LIMIT 1",
    )
    .bind(month)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

async fn exec(env: &TestEnv, sql: &str, key: &(String, String)) {
    let n = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&key.0)
        .bind(&key.1)
        .execute(&env.pool)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 1, "{sql} {key:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_spares_rows_written_since_the_run() {
    for strategy in ["merge", "partition-overwrite"] {
        let env = TestEnv::new(0.01).await;
        env.build_ship_revenue().await;
        // Give the run something to update, insert and delete.
        let updated = first_row(&env, "1992-03-01").await;
        let inserted = first_row(&env, "1992-05-01").await;
        sqlx::query(
            "UPDATE tpch.ship_revenue SET revenue = revenue * 2 WHERE l_shipdate < '1992-07-01'",
        )
        .execute(&env.pool)
        .await
        .unwrap();
        exec(
            &env,
            "DELETE FROM tpch.ship_revenue WHERE l_shipdate = $1::date AND l_shipmode = $2",
            &inserted,
        )
        .await;
        let junk = ("1992-06-15".to_owned(), "JUNK".to_owned());
        exec(
            &env,
            "INSERT INTO tpch.ship_revenue VALUES ($1::date, $2, 1.00, 1)",
            &junk,
        )
        .await;
        env.copy_ship_revenue().await;

        let (run_id, ..) = env
            .record_run(&ship_revenue::brief(strategy, "delete", ""))
            .await;
        assert_eq!(
            env.run_to_end(run_id, 1).await,
            Finish::Applied,
            "{strategy}"
        );

        // The daily pipeline writes after the run.
        for (sql, key) in [
            (
                "UPDATE tpch.ship_revenue SET revenue = revenue + 1 WHERE l_shipdate = $1::date AND l_shipmode = $2",
                &updated,
            ),
            (
                "UPDATE tpch.ship_revenue SET lines = lines + 1 WHERE l_shipdate = $1::date AND l_shipmode = $2",
                &inserted,
            ),
            (
                "INSERT INTO tpch.ship_revenue VALUES ($1::date, $2, 7.00, 7)",
                &junk,
            ),
        ] {
            exec(&env, sql, key).await;
        }
        let later = "(l_shipdate, l_shipmode::text) IN (SELECT l_shipdate, l_shipmode::text FROM tpch.ship_revenue_later)";
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS tpch.ship_revenue_later;
             CREATE TABLE tpch.ship_revenue_later AS SELECT * FROM tpch.ship_revenue
              WHERE (l_shipdate, l_shipmode) IN (('{}', '{}'), ('{}', '{}'), ('{}', '{}'))",
            updated.0, updated.1, inserted.0, inserted.1, junk.0, junk.1
        )))
        .execute(&env.pool)
        .await
        .unwrap();

        let err = rollback::rollback(&env.pool, run_id, "alice", RollbackOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 1, "{strategy}: {err}");
        let CliError::Halted(message) = &err else {
            panic!("{strategy}: {err:?}")
        };
        println!("{strategy}: {message}");
        assert!(message.starts_with("3 row(s)"), "{strategy}: {message}");
        for key in [&updated, &inserted, &junk] {
            assert!(message.contains(&key.0), "{strategy}: {key:?} not listed");
        }
        assert!(message.contains("--overwrite-newer"));
        // The later writes stand; every other row is as it was before the run.
        let stand: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT * FROM tpch.ship_revenue_later
                                   EXCEPT ALL SELECT * FROM tpch.ship_revenue) x",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert_eq!(stand, 0, "{strategy}: a later write was overwritten");
        assert_eq!(
            env.ship_revenue_changes(&format!("NOT {later}")).await,
            0,
            "{strategy}: rows without conflict are not restored exactly"
        );
        assert_eq!(
            runs::state(&env.pool, run_id).await.unwrap(),
            RunState::RollingBack
        );

        let report = env.rollback_overwriting(run_id).await;
        assert_eq!(report.newer_rows_overwritten, 3, "{strategy}");
        assert_eq!(env.ship_revenue_changes("true").await, 0, "{strategy}");
        assert!(
            env.logged(run_id, "rollback_overwrote_newer").await >= 1,
            "{strategy}"
        );
        // The run log, append-only, keeps the conflicts' keys, never their
        // values (an erasure could not remove them from it).
        let (entries, with_values): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE jsonb_path_exists(detail, '$.conflicts[*].now')
                                                  OR jsonb_path_exists(detail, '$.conflicts[*].before'))
               FROM backfill.run_log
              WHERE run_id = $1 AND event IN ('rollback_conflicts', 'rollback_overwrote_newer')",
        )
        .bind(run_id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert!(entries >= 2, "{strategy}: {entries}");
        assert_eq!(with_values, 0, "{strategy}: row values in the run log");
        env.cleanup().await;
    }
}
