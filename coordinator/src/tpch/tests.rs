//! The loader's tests: plans, chunking and a load into a real database.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures_util::FutureExt as _;
use sqlx::postgres::PgPoolOptions;

use super::encode::push_escaped;
use super::*;

const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

type TestResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Loads `scale` into a fresh schema, checks it, and drops the schema even if a check fails.
async fn with_loaded_schema(
    scale: f64,
    expect_lineitems: std::ops::RangeInclusive<u64>,
) -> TestResult {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(DATABASE_URL)
        .await?;
    let schema = format!("tpch_test_{}", uuid::Uuid::new_v4().simple());

    let outcome = AssertUnwindSafe(check_load(&pool, &schema, scale, expect_lineitems))
        .catch_unwind()
        .await;
    let drop_sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(&schema));
    sqlx::raw_sql(AssertSqlSafe(drop_sql))
        .execute(&pool)
        .await?;
    match outcome {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn check_load(
    pool: &PgPool,
    schema: &str,
    scale: f64,
    expect_lineitems: std::ops::RangeInclusive<u64>,
) -> TestResult {
    let started = Instant::now();
    let counts = load(pool, schema, scale).await?;
    eprintln!(
        "tpch load at SF {scale}: {counts:?} in {:?}",
        started.elapsed()
    );

    let expected_customers = u64::try_from(CustomerGenerator::calculate_row_count(scale, 1, 1))?;
    let expected_orders = u64::try_from(OrderGenerator::calculate_row_count(scale, 1, 1))?;
    assert_eq!(counts.customers, expected_customers);
    assert_eq!(counts.orders, expected_orders);
    assert!(
        expect_lineitems.contains(&counts.lineitems),
        "lineitems {} not in {expect_lineitems:?}",
        counts.lineitems
    );

    let s = quote_ident(schema);
    let count = |table: &str| format!("SELECT count(*) FROM {s}.{table}");
    for (table, expected) in [
        ("customer", counts.customers),
        ("orders", counts.orders),
        ("lineitem", counts.lineitems),
    ] {
        let actual: i64 = sqlx::query_scalar(AssertSqlSafe(count(table)))
            .fetch_one(pool)
            .await?;
        assert_eq!(u64::try_from(actual)?, expected, "count(*) of {table}");
    }

    let orders_without_items: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {s}.orders o WHERE NOT EXISTS \
         (SELECT 1 FROM {s}.lineitem l WHERE l.l_orderkey = o.o_orderkey)"
    )))
    .fetch_one(pool)
    .await?;
    assert_eq!(orders_without_items, 0, "every order has line items");

    let mut constraints: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.contype::text, rel.relname::text, coalesce(ref.relname::text, '')
           FROM pg_constraint c
           JOIN pg_namespace n ON n.oid = c.connamespace
           JOIN pg_class rel ON rel.oid = c.conrelid
           LEFT JOIN pg_class ref ON ref.oid = c.confrelid
          WHERE n.nspname = $1 AND c.contype IN ('p', 'f')",
    )
    .bind(schema)
    .fetch_all(pool)
    .await?;
    constraints.sort();
    let owned = |t: &str, a: &str, b: &str| (t.to_owned(), a.to_owned(), b.to_owned());
    assert_eq!(
        constraints,
        vec![
            owned("f", "lineitem", "orders"),
            owned("f", "orders", "customer"),
            owned("p", "customer", ""),
            owned("p", "lineitem", ""),
            owned("p", "orders", ""),
        ]
    );

    // Spot-check typed values round-tripped through the text COPY format.
    let (flag, ship, price): (String, chrono::NaiveDate, String) =
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT l_returnflag::text, l_shipdate, l_extendedprice::text FROM {s}.lineitem \
         WHERE l_orderkey = 1 AND l_linenumber = 1"
        )))
        .fetch_one(pool)
        .await?;
    assert_eq!(flag, "N");
    assert_eq!(
        ship,
        chrono::NaiveDate::from_ymd_opt(1996, 3, 13).ok_or("bad date")?
    );
    assert!(price.contains('.'), "numeric keeps two decimals: {price}");
    Ok(())
}

#[tokio::test]
async fn loads_scale_0_01() -> TestResult {
    with_loaded_schema(0.01, 50_000..=70_000).await
}

/// Timing run: `cargo test --release -- --ignored --nocapture loads_scale`.
#[tokio::test]
#[ignore = "loads SF 0.1 (600k line items); run manually for timing"]
async fn loads_scale_0_1() -> TestResult {
    with_loaded_schema(0.1, 550_000..=650_000).await
}

/// Our COPY rows must carry exactly the values of tpchgen's own TBL rendering.
fn assert_matches_tbl<R: std::fmt::Display>(
    rows: impl Iterator<Item = R>,
    write_row: fn(&mut String, &R) -> fmt::Result,
) -> TestResult {
    let mut ours = String::new();
    for row in rows {
        ours.clear();
        write_row(&mut ours, &row)?;
        let tbl = row.to_string();
        let expected = format!("{}\n", tbl.trim_end_matches('|').replace('|', "\t"));
        assert_eq!(ours, expected);
    }
    Ok(())
}

#[test]
fn rows_match_tbl_format() -> TestResult {
    assert_matches_tbl(CustomerGenerator::new(0.01, 1, 1).iter(), write_customer)?;
    assert_matches_tbl(OrderGenerator::new(0.01, 1, 1).iter(), write_order)?;
    assert_matches_tbl(LineItemGenerator::new(0.01, 1, 1).iter(), write_lineitem)?;
    Ok(())
}

#[test]
fn escapes_copy_text() {
    let mut buf = String::new();
    push_escaped(&mut buf, "a\\b\tc\nd\re");
    assert_eq!(buf, "a\\\\b\\tc\\nd\\re");
}

#[test]
fn rejects_bad_input() {
    assert!(matches!(
        validate_scale(0.0),
        Err(TpchError::InvalidScale { .. })
    ));
    assert!(matches!(
        validate_scale(f64::NAN),
        Err(TpchError::InvalidScale { .. })
    ));
    assert!(validate_scale(0.01).is_ok());
    assert!(matches!(
        validate_schema(""),
        Err(TpchError::InvalidSchema { .. })
    ));
}
