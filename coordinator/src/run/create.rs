//! Recording a run: the run, every batch, the before-image or side table (built
//! by `control::setup`), the maintenance marker and the drift guard's
//! fingerprints, in one transaction, before anything is published.

use crate::error::{CliError, Result};
use crate::lifecycle;
use backfill_shared::brief::{BatchRange, Brief};
use backfill_shared::control::runs::{self, NewRun};
use backfill_shared::control::{drift, maintenance, people};
use backfill_shared::sql::TableName;
use sqlx::PgPool;
use uuid::Uuid;

/// This session, when it is the person the brief names as owner: the owner
/// runs the brief (the database holds the same rule, migration 0016), and the
/// run records them as its operator.
async fn owner_session(pool: &PgPool, brief: &Brief) -> Result<people::Session> {
    let owner = &brief.meta.owner;
    let session = people::whoami(pool).await?;
    match &session.person {
        None => Err(CliError::NotAllowed(format!(
            "this session's database role {role} is nobody in backfill.people, and only the brief's owner ({owner}) runs it; \
             connect as {owner}'s own role (BACKFILL_DATABASE_URL), or have an administrator map it: `backfill people add {owner} --role {role}`",
            role = session.role
        ))),
        Some(me) if !session.is(owner) => Err(CliError::NotAllowed(format!(
            "the brief names {owner} as owner, but this session is {} (database role {}); \
             {owner} runs it from their own login, or the brief names who does",
            me.name, session.role
        ))),
        Some(_) => Ok(session),
    }
}

/// Records a new run (and its before-image table) in one transaction.
pub async fn create(
    pool: &PgPool,
    brief_text: &str,
    brief: &Brief,
    batches: &[BatchRange],
) -> Result<Uuid> {
    let operator = owner_session(pool, brief).await?;
    let run_id = Uuid::new_v4();
    let target = &brief.scope.target;
    let live = lifecycle::writes_live_target(brief);
    let image_table = (live && brief.write.snapshot).then(|| TableName {
        schema: backfill_shared::control::DATA_SCHEMA.into(),
        table: format!("image_{}", run_id.simple()),
    });
    let side_table = lifecycle::side_table(brief, run_id);
    if side_table.is_some() {
        lifecycle::check_name(&lifecycle::old_table(brief, run_id))?;
    }
    for table in image_table.iter().chain(&side_table) {
        lifecycle::check_name(table)?;
    }

    // The target's health before the run, for `validate` to compare with.
    let health = crate::catalog::health(pool, target, &brief.scope.batch_by.column).await?;
    // And the metrics stakeholders quote, where they read them.
    let downstream = crate::downstream::before_run(pool, brief).await?;
    // And the dashboards' queries on it.
    let queries = crate::latency::before_run(pool, brief).await?;
    let params = serde_json::json!({
        "target_table_bytes": health.table_bytes,
        "target_index_bytes": health.index_bytes,
        "target_health": health,
        "downstream_before": downstream,
        "queries_before": queries,
        "strategy": brief.write.strategy,
        "on_missing": brief.write.on_missing,
        "snapshot": brief.write.snapshot,
        // The way back the brief states when it keeps no before-images.
        "without_images": brief.rollback.without_images,
        "max_unmatched_pct": brief.validation.max_unmatched_pct,
        "batch_by": brief.scope.batch_by.column,
        "start": brief.scope.batch_by.start.to_string(),
        "end": brief.scope.batch_by.end.to_string(),
        "max_in_flight": brief.limits.max_in_flight,
        "side_table": side_table.as_ref().map(ToString::to_string),
        // Which rule rewrites which period, for the run log and the report.
        "periods": brief.scope.periods.iter().map(|p| serde_json::json!({ "until": p.until.to_string(), "reason": p.reason })).collect::<Vec<_>>(),
    });
    // The drift guard: what the target and every table the source reads look like now.
    let mut guarded = vec![target.to_string()];
    let scope = &brief.scope;
    for rule in 0..scope.rules().len() {
        // Each rule's tables, from the plan of the first batch that follows it.
        let Some(first) = batches.iter().find(|b| scope.rule_for(b.lo) == rule) else {
            continue;
        };
        if let Some(plan) =
            crate::preflight::explain(pool, scope.source_for(first.lo), first.lo, first.hi).await
        {
            for table in drift::tables_in_plan(&plan) {
                if !guarded.contains(&table) {
                    guarded.push(table);
                }
            }
        }
    }
    let fingerprints = drift::fingerprints(pool, &guarded).await?;
    let canary = crate::canary::pick(pool, brief, batches).await?;
    runs::create(
        pool,
        &NewRun {
            run_id,
            brief_text,
            brief,
            operator: operator.name(),
            batches,
            image_table: image_table.as_ref(),
            side_table: side_table.as_ref(),
            fingerprints: &fingerprints,
            marker: live.then(|| maintenance::Marker::of(brief, run_id)),
            params,
            canary: &canary,
        },
    )
    .await
    .map_err(|e| match e {
        backfill_shared::control::ControlError::Sql(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P07") => {
            CliError::BadInput(format!(
                "{}; a table of that name is in the way of this run: drop or rename it, or set write.new_table",
                db.message()
            ))
        }
        other => other.into(),
    })?;
    Ok(run_id)
}
