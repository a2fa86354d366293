//! OpenLineage run events (spec 2-0-2) for a run's life: the backfill run
//! itself (`START`, `RUNNING` when taken up again, `COMPLETE`, `FAIL` with the
//! `errorMessage` facet, `ABORT`), and its cutover and rollback as runs of
//! their own whose `parent` facet points at the backfill run.
//!
//! The backfill run's `runId` is the Backfill run id. Datasets are named as
//! OpenLineage names PostgreSQL tables: namespace `postgres://host:port`, name
//! `database.schema.table`.

use super::{Facts, Happened, Step};
use serde_json::{Value, json};
use sha2::Digest as _;
use uuid::Uuid;

const SCHEMA: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
const PRODUCER: &str = "https://github.com/backfill-dev/backfill";
const FACET: &str = "https://openlineage.io/spec/facets";
/// The custom run facet: what a lineage user filters backfills on.
const BACKFILL_FACET: &str =
    "https://github.com/backfill-dev/backfill/blob/main/docs/openlineage-facet.json";

/// Where the warehouse is, as OpenLineage names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warehouse {
    /// `postgres://host:port`.
    pub namespace: String,
    pub database: String,
}

impl Warehouse {
    /// From a `postgres://user:password@host:port/database?…` URL (no
    /// password kept); `None` for a URL without a host.
    #[must_use]
    pub fn from_url(url: &str) -> Option<Self> {
        let rest = url.split_once("://")?.1;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if host_port.is_empty() {
            return None;
        }
        let host_port = if host_port.contains(':') {
            host_port.to_owned()
        } else {
            format!("{host_port}:5432")
        };
        let database = path.split('?').next().unwrap_or_default();
        Some(Self {
            namespace: format!("postgres://{host_port}"),
            database: if database.is_empty() {
                "postgres".to_owned()
            } else {
                database.to_owned()
            },
        })
    }

    fn dataset(&self, table: &str) -> Value {
        json!({ "namespace": self.namespace, "name": format!("{}.{table}", self.database) })
    }
}

/// A run id of its own for the run's cutover or rollback, the same in every
/// process (so a `START` and its `COMPLETE` match).
fn child_run_id(run_id: Uuid, what: &str) -> Uuid {
    let digest = sha2::Sha256::digest(format!("{run_id}/{what}").as_bytes());
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
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
        Happened::Resumed => (None, "RUNNING"),
        Happened::Halted(_) | Happened::Failed(_) => (None, "FAIL"),
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
    let run_id = kind.map_or(run.run_id, |kind| child_run_id(run.run_id, kind));

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
    if let Some(message) = facts.happened.error() {
        run_facets.insert(
            "errorMessage".into(),
            facet(
                "ErrorMessageRunFacet",
                "1-0-1",
                json!({ "message": message, "programmingLanguage": "SQL" }),
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
                    "run": { "runId": run.run_id },
                    "job": { "namespace": namespace, "name": brief.meta.name },
                }),
            ),
        );
    }
    let counts = facts.counts;
    let mut backfill = json!({
        "_producer": PRODUCER,
        "_schemaURL": BACKFILL_FACET,
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
    if let (Some(map), Some(why)) = (backfill.as_object_mut(), &run.halt_reason) {
        map.insert("haltReason".into(), why.clone().into());
    }
    // What the brief's dbt manifest has downstream, as it reads now (an
    // unreadable manifest leaves it out: an event never fails on it).
    let dbt = brief.dependencies.dbt_manifest.as_deref().and_then(|path| {
        crate::dbt::radius(
            path,
            &warehouse.database,
            &brief.scope.target,
            &brief.dependencies.downstream,
        )
        .ok()
    });
    if let (Some(map), Some(dbt)) = (backfill.as_object_mut(), dbt) {
        map.insert("dbtDownstream".into(), json!(dbt.dependents));
        map.insert("dbtTests".into(), json!(dbt.tests));
        map.insert("dbtSelector".into(), json!(dbt.selector));
    }
    run_facets.insert("backfill".into(), backfill);

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
    let inputs: Vec<Value> = run
        .fingerprints
        .keys()
        .filter(|t| **t != target && Some(*t) != run.side_table.as_ref())
        .map(|t| warehouse.dataset(t))
        .collect();
    Some(json!({
        "eventType": event_type,
        "eventTime": facts.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "producer": PRODUCER,
        "schemaURL": SCHEMA,
        "run": { "runId": run_id, "facets": run_facets },
        "job": { "namespace": namespace, "name": job_name, "facets": job_facets },
        "inputs": if kind.is_none() { inputs } else { Vec::new() },
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
        assert!(Warehouse::from_url("postgres:///x").is_none());
    }

    #[test]
    fn a_cutover_has_a_run_id_of_its_own_in_every_process() {
        let run = Uuid::new_v4();
        assert_eq!(child_run_id(run, "cutover"), child_run_id(run, "cutover"));
        assert_ne!(child_run_id(run, "cutover"), child_run_id(run, "rollback"));
        assert_ne!(child_run_id(run, "cutover"), run);
    }
}
