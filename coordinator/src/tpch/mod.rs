//! TPC-H sample data loader.
//!
//! Generates the TPC-H `customer`, `orders` and `lineitem` tables with the
//! [`tpchgen`] crate (deterministic, dbgen-compatible data) and streams them into
//! PostgreSQL with `COPY ... FROM STDIN` (text format). COPY sends ~1 MiB chunks
//! instead of one round trip and one parsed statement per row, which is what makes
//! loading hundreds of thousands of rows take seconds rather than minutes.
//! Rows are generated on blocking threads (orders/lineitem split into parts, each part
//! on its own pooled connection) while earlier chunks are in flight. Tables are analyzed
//! and get their primary and foreign keys only after the data is in: one bulk index
//! build and one validation pass instead of per-row checks.
//!
//! Note: the first generator call in a process builds tpchgen's 300 MiB text pool
//! (~1.5 s, once); every load pays at least that.

mod encode;

use backfill_shared::sql::quote_ident;
use encode::{write_customer, write_lineitem, write_order};
use std::fmt;

use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::mpsc;
use tpchgen::generators::{CustomerGenerator, LineItemGenerator, OrderGenerator};

/// Row counts of a finished TPC-H load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TpchCounts {
    pub customers: u64,
    pub orders: u64,
    pub lineitems: u64,
}

/// Everything that can go wrong while loading TPC-H data.
#[derive(Debug, thiserror::Error)]
pub enum TpchError {
    #[error(
        "invalid TPC-H scale factor {scale}: use a finite number large enough to produce at \
         least one customer (>= 0.00001); typical values are 0.01 .. 1.0"
    )]
    InvalidScale { scale: f64 },

    #[error("invalid schema name {schema:?}: {reason}")]
    InvalidSchema {
        schema: String,
        reason: &'static str,
    },

    #[error(
        "could not create schema {schema:?} and the TPC-H tables in it: {source}; check that the \
         database is reachable and the role has CREATE privilege on the database and schema"
    )]
    Setup {
        schema: String,
        #[source]
        source: sqlx::Error,
    },

    #[error(
        "could not get a database connection to load table {table}: {source}; check the pool \
         size / acquire timeout and that PostgreSQL is reachable"
    )]
    Acquire {
        table: &'static str,
        #[source]
        source: sqlx::Error,
    },

    #[error(
        "COPY into table {table} failed: {source}; the table is left partially loaded, re-run \
         the load (it drops and recreates the tables)"
    )]
    Copy {
        table: &'static str,
        #[source]
        source: sqlx::Error,
    },

    #[error(
        "TPC-H generator for table {table} (part {part}/{parts}) panicked or was cancelled: \
         {source}; this is a bug, please report it together with the scale factor"
    )]
    Generator {
        table: &'static str,
        part: i32,
        parts: i32,
        #[source]
        source: tokio::task::JoinError,
    },

    #[error("formatting a generated {table} row as COPY text failed; this is a bug")]
    Format { table: &'static str },

    #[error(
        "adding {constraint} on table {table} failed: {source}; the data is loaded but \
         unconstrained, re-run the load (a concurrent writer to the schema can cause this)"
    )]
    Constraint {
        table: &'static str,
        constraint: &'static str,
        #[source]
        source: sqlx::Error,
    },

    #[error(
        "ANALYZE of table {table} failed: {source}; the data is loaded, statistics may be stale"
    )]
    Analyze {
        table: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

pub type Result<T, E = TpchError> = std::result::Result<T, E>;

/// Target size of one COPY data message.
const CHUNK_BYTES: usize = 1 << 20;
/// Headroom so a chunk does not reallocate when the last row crosses `CHUNK_BYTES`.
const CHUNK_SLACK: usize = 4 << 10;
/// Chunks buffered between a generator thread and its COPY connection.
const CHANNEL_DEPTH: usize = 4;
/// Upper bound on concurrent COPY connections.
const MAX_WORKERS: usize = 8;
/// Do not split orders/lineitem into parts smaller than this many orders.
const MIN_ORDERS_PER_PART: i64 = 25_000;

/// Creates `schema` if missing, (re)creates tables customer, orders, lineitem in it, fills
/// them at `scale` (e.g. 0.01 .. 1.0), adds primary keys and the foreign keys
/// orders.o_custkey -> customer, lineitem.l_orderkey -> orders AFTER loading, runs ANALYZE,
/// and returns the row counts.
pub async fn load(pool: &PgPool, schema: &str, scale: f64) -> Result<TpchCounts> {
    validate_scale(scale)?;
    validate_schema(schema)?;
    let s = quote_ident(schema);

    sqlx::raw_sql(AssertSqlSafe(create_tables_sql(&s)))
        .execute(pool)
        .await
        .map_err(|source| TpchError::Setup {
            schema: schema.to_owned(),
            source,
        })?;

    let workers = worker_count(pool);
    let jobs = plan_jobs(scale, workers);
    let copied: Vec<(Table, u64)> = stream::iter(jobs)
        .map(|job| copy_part(pool, &s, scale, job))
        .buffer_unordered(workers)
        .try_collect()
        .await?;

    let mut counts = TpchCounts {
        customers: 0,
        orders: 0,
        lineitems: 0,
    };
    for (table, rows) in copied {
        match table {
            Table::Customer => counts.customers += rows,
            Table::Orders => counts.orders += rows,
            Table::LineItem => counts.lineitems += rows,
        }
    }

    // Per table: statistics, then the primary key index. The tables are disjoint, so the
    // three run concurrently; ANALYZE does not need the index and the index build does
    // not invalidate the statistics.
    let s = s.as_str();
    futures_util::future::try_join_all([Table::LineItem, Table::Orders, Table::Customer].map(
        |table| async move {
            analyze(pool, s, table).await?;
            add_constraint(pool, s, table, "primary key", table.primary_key()).await
        },
    ))
    .await?;
    // Both foreign keys lock `orders`, so running them concurrently would only serialize.
    add_constraint(
        pool,
        s,
        Table::Orders,
        "foreign key orders.o_custkey -> customer",
        "ADD CONSTRAINT orders_o_custkey_fkey FOREIGN KEY (o_custkey) \
         REFERENCES {s}.customer (c_custkey)",
    )
    .await?;
    add_constraint(
        pool,
        s,
        Table::LineItem,
        "foreign key lineitem.l_orderkey -> orders",
        "ADD CONSTRAINT lineitem_l_orderkey_fkey FOREIGN KEY (l_orderkey) \
         REFERENCES {s}.orders (o_orderkey)",
    )
    .await?;

    Ok(counts)
}

/// Quotes an SQL identifier: wraps it in double quotes and doubles inner double quotes.
fn validate_scale(scale: f64) -> Result<()> {
    if scale.is_finite() && CustomerGenerator::calculate_row_count(scale, 1, 1) >= 1 {
        Ok(())
    } else {
        Err(TpchError::InvalidScale { scale })
    }
}

fn validate_schema(schema: &str) -> Result<()> {
    let reason = if schema.is_empty() {
        "must not be empty"
    } else if schema.contains('\0') {
        "must not contain NUL characters"
    } else if schema.len() > 63 {
        "must be at most 63 bytes (PostgreSQL would silently truncate it)"
    } else {
        return Ok(());
    };
    Err(TpchError::InvalidSchema {
        schema: schema.to_owned(),
        reason,
    })
}

fn create_tables_sql(s: &str) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
DROP TABLE IF EXISTS {s}.lineitem, {s}.orders, {s}.customer CASCADE;
CREATE TABLE {s}.customer (
    c_custkey       bigint        NOT NULL,
    c_name          varchar(25)   NOT NULL,
    c_address       varchar(40)   NOT NULL,
    c_nationkey     integer       NOT NULL,
    c_phone         varchar(15)   NOT NULL,
    c_acctbal       numeric(15,2) NOT NULL,
    c_mktsegment    varchar(10)   NOT NULL,
    c_comment       varchar(117)  NOT NULL
);
CREATE TABLE {s}.orders (
    o_orderkey      bigint        NOT NULL,
    o_custkey       bigint        NOT NULL,
    o_orderstatus   char(1)       NOT NULL,
    o_totalprice    numeric(15,2) NOT NULL,
    o_orderdate     date          NOT NULL,
    o_orderpriority varchar(15)   NOT NULL,
    o_clerk         varchar(15)   NOT NULL,
    o_shippriority  integer       NOT NULL,
    o_comment       varchar(79)   NOT NULL
);
CREATE TABLE {s}.lineitem (
    l_orderkey      bigint        NOT NULL,
    l_partkey       bigint        NOT NULL,
    l_suppkey       bigint        NOT NULL,
    l_linenumber    integer       NOT NULL,
    l_quantity      numeric(15,2) NOT NULL,
    l_extendedprice numeric(15,2) NOT NULL,
    l_discount      numeric(15,2) NOT NULL,
    l_tax           numeric(15,2) NOT NULL,
    l_returnflag    char(1)       NOT NULL,
    l_linestatus    char(1)       NOT NULL,
    l_shipdate      date          NOT NULL,
    l_commitdate    date          NOT NULL,
    l_receiptdate   date          NOT NULL,
    l_shipinstruct  varchar(25)   NOT NULL,
    l_shipmode      varchar(10)   NOT NULL,
    l_comment       varchar(44)   NOT NULL
);"
    )
}

async fn add_constraint(
    pool: &PgPool,
    s: &str,
    table: Table,
    constraint: &'static str,
    clause: &'static str,
) -> Result<()> {
    let sql = format!(
        "ALTER TABLE {s}.{} {}",
        table.name(),
        clause.replace("{s}", s)
    );
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(pool)
        .await
        .map_err(|source| TpchError::Constraint {
            table: table.name(),
            constraint,
            source,
        })?;
    Ok(())
}

async fn analyze(pool: &PgPool, s: &str, table: Table) -> Result<()> {
    sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE {s}.{}", table.name())))
        .execute(pool)
        .await
        .map_err(|source| TpchError::Analyze {
            table: table.name(),
            source,
        })?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Customer,
    Orders,
    LineItem,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Orders => "orders",
            Self::LineItem => "lineitem",
        }
    }

    /// Column list in the order the row writers emit fields.
    fn columns(self) -> &'static str {
        match self {
            Self::Customer => {
                "c_custkey, c_name, c_address, c_nationkey, c_phone, c_acctbal, c_mktsegment, \
                 c_comment"
            }
            Self::Orders => {
                "o_orderkey, o_custkey, o_orderstatus, o_totalprice, o_orderdate, \
                 o_orderpriority, o_clerk, o_shippriority, o_comment"
            }
            Self::LineItem => {
                "l_orderkey, l_partkey, l_suppkey, l_linenumber, l_quantity, l_extendedprice, \
                 l_discount, l_tax, l_returnflag, l_linestatus, l_shipdate, l_commitdate, \
                 l_receiptdate, l_shipinstruct, l_shipmode, l_comment"
            }
        }
    }

    fn primary_key(self) -> &'static str {
        match self {
            Self::Customer => "ADD CONSTRAINT customer_pkey PRIMARY KEY (c_custkey)",
            Self::Orders => "ADD CONSTRAINT orders_pkey PRIMARY KEY (o_orderkey)",
            Self::LineItem => "ADD CONSTRAINT lineitem_pkey PRIMARY KEY (l_orderkey, l_linenumber)",
        }
    }
}

/// One slice of one table: `tpchgen` part `part` of `parts` (1-based).
#[derive(Debug, Clone, Copy)]
struct Job {
    table: Table,
    part: i32,
    parts: i32,
}

fn worker_count(pool: &PgPool) -> usize {
    let connections = usize::try_from(pool.options().get_max_connections()).unwrap_or(1);
    let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    // The server parses the COPY stream on its own CPU, so allow twice the client cores.
    connections.min(cpus * 2).clamp(1, MAX_WORKERS)
}

/// Splits the load into jobs, biggest first so the small tables fill in at the end.
fn plan_jobs(scale: f64, workers: usize) -> Vec<Job> {
    let orders = OrderGenerator::calculate_row_count(scale, 1, 1);
    let max_parts = i64::try_from(workers).unwrap_or(1);
    let parts = i32::try_from((orders / MIN_ORDERS_PER_PART).clamp(1, max_parts)).unwrap_or(1);
    let mut jobs = Vec::new();
    for table in [Table::LineItem, Table::Orders] {
        jobs.extend((1..=parts).map(|part| Job { table, part, parts }));
    }
    jobs.push(Job {
        table: Table::Customer,
        part: 1,
        parts: 1,
    });
    jobs
}

/// Generates one job's rows on a blocking thread and streams them into one COPY.
async fn copy_part(pool: &PgPool, s: &str, scale: f64, job: Job) -> Result<(Table, u64)> {
    let table = job.table;
    let copy_err = |source| TpchError::Copy {
        table: table.name(),
        source,
    };

    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CHANNEL_DEPTH);
    // If we return early, `rx` is dropped and the producer stops at its next chunk.
    let producer = tokio::task::spawn_blocking(move || produce(job, scale, &tx));

    let mut conn = pool.acquire().await.map_err(|source| TpchError::Acquire {
        table: table.name(),
        source,
    })?;
    let statement = format!("COPY {s}.{} ({}) FROM STDIN", table.name(), table.columns());
    let mut copy = conn.copy_in_raw(&statement).await.map_err(copy_err)?;

    while let Some(chunk) = rx.recv().await {
        if let Err(source) = copy.send(chunk).await {
            // Best effort: the send error is the one worth reporting.
            let _ = copy.abort("tpch load: sending COPY data failed").await;
            return Err(copy_err(source));
        }
    }

    let produced = match producer.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(source) => Err(TpchError::Generator {
            table: table.name(),
            part: job.part,
            parts: job.parts,
            source,
        }),
    };
    if let Err(e) = produced {
        let _ = copy.abort("tpch load: generating data failed").await;
        return Err(e);
    }

    let rows = copy.finish().await.map_err(copy_err)?;
    Ok((table, rows))
}

/// Runs on a blocking thread: renders rows into ~1 MiB COPY text chunks.
fn produce(job: Job, scale: f64, tx: &mpsc::Sender<Vec<u8>>) -> Result<()> {
    let mut sink = ChunkSink::new(tx);
    let formatted = match job.table {
        Table::Customer => sink.write_all(
            CustomerGenerator::new(scale, job.part, job.parts).iter(),
            write_customer,
        ),
        Table::Orders => sink.write_all(
            OrderGenerator::new(scale, job.part, job.parts).iter(),
            write_order,
        ),
        Table::LineItem => sink.write_all(
            LineItemGenerator::new(scale, job.part, job.parts).iter(),
            write_lineitem,
        ),
    };
    formatted.map_err(|fmt::Error| TpchError::Format {
        table: job.table.name(),
    })
}

struct ChunkSink<'a> {
    buf: String,
    tx: &'a mpsc::Sender<Vec<u8>>,
}

impl<'a> ChunkSink<'a> {
    fn new(tx: &'a mpsc::Sender<Vec<u8>>) -> Self {
        Self {
            buf: String::with_capacity(CHUNK_BYTES + CHUNK_SLACK),
            tx,
        }
    }

    /// Formats every row, shipping full chunks. Stops quietly if the consumer went away
    /// (it reports its own error).
    fn write_all<R>(
        &mut self,
        rows: impl Iterator<Item = R>,
        write_row: fn(&mut String, &R) -> fmt::Result,
    ) -> fmt::Result {
        for row in rows {
            write_row(&mut self.buf, &row)?;
            if self.buf.len() >= CHUNK_BYTES && !self.flush() {
                return Ok(());
            }
        }
        self.flush();
        Ok(())
    }

    /// Sends the buffered text; returns `false` if the receiver is gone.
    fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        let next = String::with_capacity(CHUNK_BYTES + CHUNK_SLACK);
        let chunk = std::mem::replace(&mut self.buf, next).into_bytes();
        self.tx.blocking_send(chunk).is_ok()
    }
}

#[cfg(test)]
mod tests;
