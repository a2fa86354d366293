//! A second target for tests: daily ship revenue per ship mode
//! (`tpch.ship_revenue`, key ship date + ship mode), built from TPC-H line
//! items, with a brief that rewrites it in monthly batches.

use crate::TestEnv;

/// The source that reproduces the table exactly; `{filter}` narrows it.
const SOURCE: &str = "SELECT l_shipdate, l_shipmode,
       sum(l_extendedprice * (1 - l_discount))::numeric(18,2) AS revenue,
       count(*)::integer AS lines
  FROM tpch.lineitem
 WHERE l_shipdate >= $1 AND l_shipdate < $2{filter}
 GROUP BY 1, 2";

impl TestEnv {
    /// Builds `tpch.ship_revenue` with every revenue one off, and records
    /// (without driving) the merge run that fixes it: its id.
    pub async fn record_ship_revenue_fix(&self) -> uuid::Uuid {
        self.build_ship_revenue().await;
        sqlx::query("UPDATE tpch.ship_revenue SET revenue = revenue + 1")
            .execute(&self.pool)
            .await
            .expect("put the revenue one off");
        self.record_run(&brief("merge", "delete", "")).await.0
    }

    /// Builds `tpch.ship_revenue` and a copy of it (`tpch.ship_revenue_pre`).
    pub async fn build_ship_revenue(&self) {
        let source = SOURCE.replace("l_shipdate >= $1 AND l_shipdate < $2{filter}", "true");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE tpch.ship_revenue AS {source};
             ALTER TABLE tpch.ship_revenue ADD PRIMARY KEY (l_shipdate, l_shipmode);
             ANALYZE tpch.ship_revenue;"
        )))
        .execute(&self.pool)
        .await
        .expect("build tpch.ship_revenue");
        self.copy_ship_revenue().await;
    }

    /// Replaces the copy `tpch.ship_revenue_pre` with the table as it is now.
    pub async fn copy_ship_revenue(&self) {
        sqlx::raw_sql(
            "DROP TABLE IF EXISTS tpch.ship_revenue_pre;
             CREATE TABLE tpch.ship_revenue_pre AS SELECT * FROM tpch.ship_revenue;",
        )
        .execute(&self.pool)
        .await
        .expect("copy tpch.ship_revenue");
    }

    /// Rows in which `tpch.ship_revenue` and its pre-run copy differ
    /// (`EXCEPT ALL` both ways), among the rows `filter` selects.
    pub async fn ship_revenue_changes(&self, filter: &str) -> i64 {
        self.differing_rows("tpch.ship_revenue", "tpch.ship_revenue_pre", filter)
            .await
    }
}

impl TestEnv {
    /// Rows in which `tpch.ship_revenue` and an independent recomputation from
    /// the line items differ (`EXCEPT ALL` both ways), among the rows `filter`
    /// selects.
    pub async fn ship_revenue_wrong(&self, filter: &str) -> i64 {
        let fresh = SOURCE.replace("l_shipdate >= $1 AND l_shipdate < $2{filter}", "true");
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "WITH fresh AS ({fresh}), now AS (SELECT * FROM tpch.ship_revenue)
             SELECT (SELECT count(*) FROM (SELECT * FROM now WHERE {filter} EXCEPT ALL SELECT * FROM fresh WHERE {filter}) a)
                  + (SELECT count(*) FROM (SELECT * FROM fresh WHERE {filter} EXCEPT ALL SELECT * FROM now WHERE {filter}) b)"
        )))
        .fetch_one(&self.pool)
        .await
        .expect("recompute tpch.ship_revenue")
    }
}

/// Adds `scope.where` to a brief.
#[must_use]
pub fn owning(text: &str, filter: &str) -> String {
    crate::in_scope(text, &format!("where = \"{filter}\""))
}

/// A brief rewriting `tpch.ship_revenue` in monthly batches over 1992–1998, one
/// batch in flight, before-images on, no metric limits; `filter` is appended
/// to the source's WHERE clause (`" AND l_shipmode = 'AIR'"`).
#[must_use]
pub fn brief(strategy: &str, on_missing: &str, filter: &str) -> String {
    let source = SOURCE.replace("{filter}", filter);
    format!(
        r#"[brief]
name = "ship-revenue"
reason = "Recompute daily ship revenue."
owner = "alice"
reviewer = "bob"
risk = "metric-changing"

[scope]
target = "tpch.ship_revenue"
key = ["l_shipdate", "l_shipmode"]
columns = ["revenue", "lines"]
batch_by = {{ column = "l_shipdate", start = "1992-01-01", end = "1999-01-01", step = "1 month" }}
source = """
{source}
"""

[write]
strategy = "{strategy}"
on_missing = "{on_missing}"
snapshot = true

[dependencies]
downstream = []
stakeholders = ["finance"]

[validation]
max_duplicate_keys = 0

[limits]
max_in_flight = 1

[rollback]
plan = "Before-images per batch restore every changed row."
retain_days = 14
"#
    )
}

/// How a test partitions `tpch.ship_revenue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioning {
    /// Range-partitioned by ship date: before 1992, 1992–94, 1995–98, from
    /// 1999 — the first and last empty, as a warehouse's spare partitions are.
    ByShipDate,
    /// List-partitioned by ship mode, with a default partition.
    ByShipMode,
}

impl TestEnv {
    /// Builds `tpch.ship_revenue` as a partitioned table holding the same rows
    /// as [`TestEnv::build_ship_revenue`]'s, with a key on the parent, an index
    /// and a check constraint of one partition's own, and a copy of it
    /// (`tpch.ship_revenue_pre`).
    pub async fn build_partitioned_ship_revenue(&self, partitioning: Partitioning) {
        let (by, partitions) = match partitioning {
            Partitioning::ByShipDate => (
                "RANGE (l_shipdate)",
                [
                    ("early", "FROM (MINVALUE) TO ('1992-01-01')"),
                    ("1992_94", "FROM ('1992-01-01') TO ('1995-01-01')"),
                    ("1995_98", "FROM ('1995-01-01') TO ('1999-01-01')"),
                    ("late", "FROM ('1999-01-01') TO (MAXVALUE)"),
                ],
            ),
            Partitioning::ByShipMode => (
                "LIST (l_shipmode)",
                [
                    ("air", "IN ('AIR', 'REG AIR')"),
                    ("mail", "IN ('MAIL')"),
                    ("ground", "IN ('RAIL', 'TRUCK')"),
                    ("other", "DEFAULT"),
                ],
            ),
        };
        let mut ddl = format!(
            "CREATE TABLE tpch.ship_revenue (l_shipdate date NOT NULL, l_shipmode varchar(10) NOT NULL,
                                             revenue numeric(18,2), lines integer,
                                             PRIMARY KEY (l_shipdate, l_shipmode)) PARTITION BY {by};"
        );
        for (name, bound) in partitions {
            let bound = if bound == "DEFAULT" {
                "DEFAULT".to_owned()
            } else {
                format!("FOR VALUES {bound}")
            };
            ddl.push_str(&format!(
                "CREATE TABLE tpch.ship_revenue_{name} PARTITION OF tpch.ship_revenue {bound};"
            ));
        }
        let source = SOURCE.replace("l_shipdate >= $1 AND l_shipdate < $2{filter}", "true");
        let own = partitions[2].0;
        ddl.push_str(&format!(
            "CREATE INDEX ship_revenue_{own}_revenue ON tpch.ship_revenue_{own} (revenue);
             ALTER TABLE tpch.ship_revenue_{own} ADD CONSTRAINT some_lines CHECK (lines > 0);
             INSERT INTO tpch.ship_revenue {source};
             ANALYZE tpch.ship_revenue;"
        ));
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&self.pool)
            .await
            .expect("build the partitioned tpch.ship_revenue");
        self.copy_ship_revenue().await;
    }

    /// The structure of `tpch.ship_revenue` as the catalog holds it (kind,
    /// partitioning, bounds, indexes, constraints) and the names of its partitions.
    pub async fn ship_revenue_structure(&self) -> (Vec<String>, Vec<String>) {
        let mut conn = self.pool.acquire().await.expect("connection");
        let table = backfill_shared::sql::TableName::parse("tpch.ship_revenue").expect("name");
        let structure = backfill_shared::partitions::structure(&mut conn, &table)
            .await
            .expect("read the structure");
        let names = backfill_shared::partitions::children(&mut conn, &table)
            .await
            .expect("read the partitions")
            .into_iter()
            .map(|p| p.name.to_string())
            .collect();
        (structure, names)
    }
}
