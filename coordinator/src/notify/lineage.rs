//! OpenLineage run events (spec 2-0-2) for a run's life: the backfill run
//! itself (`START`; `RUNNING` when it halts, its coordinator is lost or it is
//! taken up again, none of which ends it; then one of `COMPLETE` or `ABORT`),
//! and its cutover and rollback as runs of their own whose `parent` facet
//! points at the backfill run (`START`, then `COMPLETE` or `FAIL`): one
//! terminal event per `runId`.
//!
//! Each `runId` is a UUIDv7, as the spec recommends: the run's creation time
//! and bits derived from the Backfill run id and the step, so every process
//! names a run alike. The Backfill run id is in the `backfill_run` facet.
//! Datasets are named as OpenLineage names PostgreSQL tables: namespace
//! `postgres://host:port` (`localhost` for a Unix socket), name
//! `database.schema.table`, all as the connection has them.

use super::{Facts, Happened, Step};
use serde_json::{Value, json};
use sha2::Digest as _;
use uuid::Uuid;

const SCHEMA: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
const PRODUCER: &str = "https://github.com/backfill-dev/backfill";
const FACET: &str = "https://openlineage.io/spec/facets";
/// The custom run facet, named with the producer's prefix.
const BACKFILL_FACET_NAME: &str = "backfill_run";
/// Its schema, at this version's tag: immutable once released.
const BACKFILL_FACET: &str = concat!(
    "https://github.com/backfill-dev/backfill/blob/v",
    env!("CARGO_PKG_VERSION"),
    "/docs/openlineage/BackfillRunFacet.json"
);

/// Where the warehouse is, as OpenLineage names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warehouse {
    /// `postgres://host:port`.
    pub namespace: String,
    pub database: String,
}

impl Warehouse {
    /// From a `postgres://user:password@host:port/database?…` URL, read as
    /// the connection reads it (`?host=`, `?port=`, `?dbname=` included; no
    /// password kept): a Unix socket's directory is `localhost`, a missing
    /// database the user's name, as PostgreSQL takes it. `None` for a URL
    /// that is none.
    #[must_use]
    pub fn from_url(url: &str) -> Option<Self> {
        use std::str::FromStr as _;
        let options = sqlx::postgres::PgConnectOptions::from_str(url).ok()?;
        let host = options.get_host();
        let host = if host.starts_with('/') || host.is_empty() {
            "localhost"
        } else {
            host
        };
        let database = options
            .get_database()
            .unwrap_or_else(|| options.get_username());
        Some(Self {
            namespace: format!("postgres://{host}:{}", options.get_port()),
            database: database.to_owned(),
        })
    }

    fn dataset(&self, table: &str) -> Value {
        json!({ "namespace": self.namespace, "name": format!("{}.{table}", self.database) })
    }
}

/// The OpenLineage `runId` of the run (`what` = `run`) or of its cutover or
/// rollback: a UUIDv7 of the run's creation time and bits derived from its
/// id and `what`, the same in every process (so a `START` and its
/// `COMPLETE` match).
fn lineage_run_id(run_id: Uuid, created: chrono::DateTime<chrono::Utc>, what: &str) -> Uuid {
    let digest = sha2::Sha256::digest(format!("{run_id}/{what}").as_bytes());
    let mut random = [0_u8; 10];
    random.copy_from_slice(&digest[..10]);
    let millis = u64::try_from(created.timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

fn facet(name: &str, version: &str, body: Value) -> Value {
    let mut body = body;
    if let Some(map) = body.as_object_mut() {
        map.insert("_producer".into(), PRODUCER.into());
        map.insert(
            "_schemaURL".into(),
            format!("{FACET}/{version}/{name}.json#/$defs/{name}").into(),
        );
    }
    body
}

/// The event for `facts`, or `None` when what happened is no step of an
/// OpenLineage run (a validation, an approval, a cleanup).
#[must_use]
pub fn event(facts: &Facts<'_>, namespace: &str, warehouse: &Warehouse) -> Option<Value> {
    let run = facts.run;
    let (kind, event_type) = match facts.happened {
        Happened::Started => (None, "START"),
        // A halted run, or one whose coordinator is gone, goes on when
        // resumed or driven again: not an end.
        Happened::Resumed | Happened::Halted(_) | Happened::Failed(_) => (None, "RUNNING"),
        Happened::Applied => (None, "COMPLETE"),
        Happened::Cancelled => (None, "ABORT"),
        Happened::Cutover(step) => (Some("cutover"), step_type(step)),
        Happened::Rollback(step) => (Some("rollback"), step_type(step)),
        Happened::Validated { .. }
        | Happened::Approved { .. }
        | Happened::CleanedUp
        | Happened::Done
        | Happened::ChangeNote(_) => {
            return None;
        }
    };
    let brief = &run.brief;
    let job_name = match kind {
        None => brief.meta.name.clone(),
        Some(kind) => format!("{}.{kind}", brief.meta.name),
    };
    let run_id = lineage_run_id(run.run_id, run.created_at, kind.unwrap_or("run"));

    let mut run_facets = serde_json::Map::new();
    if let Some((start, end)) = super::nominal_time(run) {
        run_facets.insert(
            "nominalTime".into(),
            facet(
                "NominalTimeRunFacet",
                "1-0-1",
                json!({ "nominalStartTime": start, "nominalEndTime": end }),
            ),
        );
    }
    // An error of the code, not a halt (a breached limit or a failed batch
    // the run holds on, in `haltReason`): the coordinator's, or a cutover's
    // or rollback's statements'.
    let failure = match facts.happened {
        Happened::Failed(message) => Some((message, "Rust")),
        Happened::Cutover(Step::Failed(message)) | Happened::Rollback(Step::Failed(message)) => {
            Some((message, "SQL"))
        }
        _ => None,
    };
    if let Some((message, language)) = failure {
        run_facets.insert(
            "errorMessage".into(),
            facet(
                "ErrorMessageRunFacet",
                "1-0-1",
                json!({ "message": message, "programmingLanguage": language }),
            ),
        );
    }
    if kind.is_some() {
        run_facets.insert(
            "parent".into(),
            facet(
                "ParentRunFacet",
                "1-0-1",
                json!({
                    "run": { "runId": lineage_run_id(run.run_id, run.created_at, "run") },
                    "job": { "namespace": namespace, "name": brief.meta.name },
                }),
            ),
        );
    }
    let counts = facts.counts;
    let mut backfill = json!({
        "_producer": PRODUCER,
        "_schemaURL": BACKFILL_FACET,
        "runId": run.run_id,
        "strategy": brief.write.strategy.as_str(),
        "risk": brief.meta.risk.as_str(),
        "briefHash": run.brief_hash,
        "codeVersion": run.code_version,
        "batches": run.batch_count,
        "batchesApplied": counts.applied,
        "rowsWritten": counts.rows.inserted + counts.rows.updated + counts.rows.deleted,
        "target": brief.scope.target.to_string(),
        "scope": { "column": brief.scope.batch_by.column,
                   "start": brief.scope.batch_by.start.to_string(),
                   "end": brief.scope.batch_by.end.to_string() },
    });
    // Why it holds, while it does: a breach accepted and resumed holds no more.
    let holding = match facts.happened {
        Happened::Halted(why) => Some(why.clone()),
        _ if run.state == backfill_shared::control::runs::RunState::Halted => {
            run.halt_reason.clone()
        }
        _ => None,
    };
    if let (Some(map), Some(why)) = (backfill.as_object_mut(), holding) {
        map.insert("haltReason".into(), why.into());
    }
    if let (Some(map), Some(dbt)) = (backfill.as_object_mut(), &facts.dbt) {
        map.insert("dbtDownstream".into(), json!(dbt.dependents));
        map.insert("dbtTests".into(), json!(dbt.tests));
        map.insert("dbtSelector".into(), json!(dbt.selector));
    }
    run_facets.insert(BACKFILL_FACET_NAME.into(), backfill);

    let mut owners = vec![json!({ "name": brief.meta.owner, "type": "owner" })];
    if !brief.meta.reviewer.is_empty() {
        owners.push(json!({ "name": brief.meta.reviewer, "type": "reviewer" }));
    }
    let job_facets = json!({
        "jobType": facet("JobTypeJobFacet", "2-0-3",
            json!({ "processingType": "BATCH", "integration": "BACKFILL", "jobType": kind.unwrap_or("BACKFILL").to_uppercase() })),
        "sql": facet("SQLJobFacet", "1-1-0", json!({ "query": brief.scope.source, "dialect": "postgres" })),
        "documentation": facet("DocumentationJobFacet", "1-1-0", json!({ "description": brief.meta.reason })),
        "ownership": facet("OwnershipJobFacet", "1-0-1", json!({ "owners": owners })),
    });

    let target = brief.scope.target.to_string();
    let written = match kind {
        // Batches write the side table of staging-swap and parallel-version.
        None => run.side_table.clone().unwrap_or_else(|| target.clone()),
        Some(_) => target.clone(),
    };
    let sources = run
        .fingerprints
        .keys()
        .filter(|t| **t != target && Some(*t) != run.side_table.as_ref());
    // What each job reads: the batches the sources; a cutover that swaps in
    // the built table that table and the sources it was built from, so the
    // target shows its sources upstream; a rollback the copy it restores
    // from. A cutover of a live target moves no data and reads nothing.
    let inputs: Vec<Value> = match kind {
        None => sources.map(|t| warehouse.dataset(t)).collect(),
        Some("cutover") => run
            .side_table
            .iter()
            .map(|side| warehouse.dataset(side))
            .chain(
                sources
                    .filter(|_| run.side_table.is_some())
                    .map(|t| warehouse.dataset(t)),
            )
            .collect(),
        Some(_) => run
            .old_table
            .as_ref()
            .or(run.image_table.as_ref())
            .map(|copy| warehouse.dataset(copy))
            .into_iter()
            .collect(),
    };
    Some(json!({
        "eventType": event_type,
        "eventTime": facts.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "producer": PRODUCER,
        "schemaURL": SCHEMA,
        "run": { "runId": run_id, "facets": run_facets },
        "job": { "namespace": namespace, "name": job_name, "facets": job_facets },
        "inputs": inputs,
        "outputs": [warehouse.dataset(&written)],
    }))
}

fn step_type(step: &Step) -> &'static str {
    match step {
        Step::Started => "START",
        Step::Done => "COMPLETE",
        Step::Failed(_) => "FAIL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warehouse_url_becomes_a_namespace_without_its_password() {
        let w =
            Warehouse::from_url("postgres://bob:sekrit@db.internal:6432/analytics?sslmode=require")
                .unwrap();
        assert_eq!(w.namespace, "postgres://db.internal:6432");
        assert_eq!(w.database, "analytics");
        let w = Warehouse::from_url("postgresql://127.0.0.1/postgres").unwrap();
        assert_eq!(w.namespace, "postgres://127.0.0.1:5432");
        // A Unix socket, the database in the path or as dbname, or the user's.
        let w =
            Warehouse::from_url("postgres:///analytics?host=/var/run/postgresql&user=etl").unwrap();
        assert_eq!(
            (w.namespace.as_str(), w.database.as_str()),
            ("postgres://localhost:5432", "analytics")
        );
        let w = Warehouse::from_url("postgres://etl@db.internal/?dbname=sales&port=6543").unwrap();
        assert_eq!(
            (w.namespace.as_str(), w.database.as_str()),
            ("postgres://db.internal:6543", "sales")
        );
        let w = Warehouse::from_url("postgres://etl@db.internal").unwrap();
        assert_eq!(w.database, "etl");
        assert!(!format!("{w:?}").contains("sekrit"));
    }

    #[test]
    fn each_step_has_a_v7_run_id_of_its_own_in_every_process() {
        let run = Uuid::new_v4();
        let at = chrono::Utc::now();
        let id = |what| lineage_run_id(run, at, what);
        assert_eq!(id("cutover"), id("cutover"));
        assert_ne!(id("cutover"), id("rollback"));
        assert_ne!(id("run"), id("cutover"));
        assert_eq!(id("run").get_version_num(), 7);
        let (secs, _) = id("run").get_timestamp().unwrap().to_unix();
        assert_eq!(i64::try_from(secs).unwrap(), at.timestamp());
    }

    #[test]
    fn the_facets_schema_is_where_its_url_says() {
        let schema: Value = serde_json::from_str(include_str!(
            "../../../docs/openlineage/BackfillRunFacet.json"
        ))
        .unwrap();
        assert_eq!(schema["$id"], BACKFILL_FACET);
        assert!(schema["properties"]["runId"].is_object());
    }
}
