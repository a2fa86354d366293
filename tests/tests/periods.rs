//! Rules that differ by period: a brief whose `[[scope.periods]]` computes
//! ship revenue without discounts before 1995-06-15 and with them after ends
//! equal to a per-period recomputation; no batch straddles the boundary;
//! `plan`, `sample` and the report name the rule of each range.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::run::Finish;
use backfill_coordinator::{plan, report, sample};
use backfill_shared::brief::{Bound, BoundKind, Brief};
use backfill_tests::{TestEnv, in_scope, ship_revenue};

const UNTIL: &str = "1995-06-15";
const OLD_RULE: &str = "Discounts were not netted from revenue until 1995-06-15";

/// The revenue of the old rules: the extended price, discounts not netted.
const OLD_SOURCE: &str = "SELECT l_shipdate, l_shipmode,
       sum(l_extendedprice)::numeric(18,2) AS revenue,
       count(*)::integer AS lines
  FROM tpch.lineitem
 WHERE l_shipdate >= $1 AND l_shipdate < $2
 GROUP BY 1, 2";

fn brief() -> String {
    in_scope(
        &ship_revenue::brief("merge", "delete", ""),
        &format!(
            "\n[[scope.periods]]\nuntil = \"{UNTIL}\"\nreason = \"{OLD_RULE}\"\nsource = \"\"\"\n{OLD_SOURCE}\n\"\"\""
        ),
    )
}

fn date(text: &str) -> Bound {
    Bound::parse(BoundKind::Date, text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_period_is_rewritten_by_its_own_rule() {
    let env = TestEnv::new(0.01).await;
    env.build_ship_revenue().await;
    sqlx::query("UPDATE tpch.ship_revenue SET revenue = 0")
        .execute(&env.pool)
        .await
        .unwrap();
    let text = brief();
    let parsed = Brief::parse(&text).unwrap();

    // The plan cuts the month the rule changes in, and says which rule each range follows.
    let (planned, batches, _) = plan::plan(&env.pool, &parsed).await.unwrap();
    let until = date(UNTIL);
    assert!(
        batches.iter().all(|b| !(b.lo < until && until < b.hi)),
        "a batch straddles {UNTIL}"
    );
    assert!(batches.iter().any(|b| b.hi == until) && batches.iter().any(|b| b.lo == until));
    let rendered = planned.render();
    assert!(
        rendered.contains(&format!("[1992-01-01, {UNTIL})")) && rendered.contains(OLD_RULE),
        "{rendered}"
    );
    assert_eq!(planned.rules.len(), 2);
    assert_eq!(
        planned.rules.iter().map(|r| r.batches).sum::<usize>(),
        batches.len()
    );

    // A sample follows one rule, and names it.
    let early = sample::sample(&env.pool, &parsed, date("1993-01-01"), date("1993-02-01"))
        .await
        .unwrap();
    assert_eq!(early.rule, OLD_RULE);
    let straddling = sample::sample(&env.pool, &parsed, date("1995-06-01"), date("1995-07-01"))
        .await
        .map(|_| ())
        .expect_err("a slice across the boundary is refused")
        .to_string();
    assert!(straddling.contains("straddles"), "{straddling}");

    let (run_id, ..) = env.record_run(&text).await;
    assert_eq!(env.run_to_end(run_id, 2).await, Finish::Applied);
    // Each side of the boundary equals its own rule's recomputation.
    let wrong: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "WITH old_rule AS (SELECT l_shipdate, l_shipmode, sum(l_extendedprice)::numeric(18,2) AS revenue, count(*)::integer AS lines
                             FROM tpch.lineitem WHERE l_shipdate >= '1992-01-01' AND l_shipdate < '{UNTIL}' GROUP BY 1, 2),
              new_rule AS (SELECT l_shipdate, l_shipmode, sum(l_extendedprice * (1 - l_discount))::numeric(18,2) AS revenue, count(*)::integer AS lines
                             FROM tpch.lineitem WHERE l_shipdate >= '{UNTIL}' AND l_shipdate < '1999-01-01' GROUP BY 1, 2),
              fresh AS (SELECT * FROM old_rule UNION ALL SELECT * FROM new_rule),
              now AS (SELECT * FROM tpch.ship_revenue WHERE l_shipdate >= '1992-01-01' AND l_shipdate < '1999-01-01')
         SELECT (SELECT count(*) FROM (SELECT * FROM now EXCEPT ALL SELECT * FROM fresh) a)
              + (SELECT count(*) FROM (SELECT * FROM fresh EXCEPT ALL SELECT * FROM now) b)"
    )))
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        wrong, 0,
        "the target differs from the per-period recomputation"
    );

    // The report names both rules.
    let markdown = report::gather(&env.pool, run_id).await.unwrap().markdown();
    assert!(
        markdown.contains("Rules by period")
            && markdown.contains(&format!("[1992-01-01, {UNTIL}): {OLD_RULE}"))
            && markdown.contains(&format!("[{UNTIL}, 1999-01-01): the current rules")),
        "{markdown}"
    );
    env.cleanup().await;
}

#[test]
fn periods_out_of_order_or_outside_the_scope_are_refused() {
    let text = brief();
    for (until, expected) in [
        ("1991-06-01", "periods[0].until"),
        ("1999-06-01", "periods[0].until"),
    ] {
        let bad = text.replace(
            &format!("until = \"{UNTIL}\""),
            &format!("until = \"{until}\""),
        );
        let problems = Brief::parse(&bad).unwrap_err().to_string();
        assert!(problems.contains(expected), "{until}: {problems}");
    }
    let no_params = text.replace(
        "WHERE l_shipdate >= $1 AND l_shipdate < $2\n GROUP BY 1, 2\n\"\"\"\n\n[write]",
        "WHERE true\n GROUP BY 1, 2\n\"\"\"\n\n[write]",
    );
    let problems = Brief::parse(&no_params).unwrap_err().to_string();
    assert!(problems.contains("periods[0].source"), "{problems}");
}
