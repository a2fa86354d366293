//! Change capture for the strategies that build beside a live target
//! (staging-swap, parallel-version): the daily pipeline keeps writing to the
//! target while the run builds its copy, and a swap must not drop those
//! writes. When the run is recorded, in the transaction that copies the
//! target's rows outside the scope, statement-level triggers on the target
//! start recording the key of every row inserted, updated or deleted into the
//! run's change table (`backfill_data.bf_changes_<run>`). At cutover the changes
//! are carried into the built table: a key outside the scope gets the row the
//! live table has (or loses it); a key inside the scope is a conflict — the
//! backfill rewrote it from the source — unless the operator accepts the live
//! value. A catch-up pass carries what it can before the swap's lock; the last
//! changes are carried under it, with writers locked out. The triggers, their
//! function and the change table go with the run's other objects.
//!
//! Merge and partition-overwrite write the target in place and capture nothing.

use super::Result;
use crate::brief::{Brief, Scope};
use crate::sql::{TableName, column_list, key_join};
use sqlx::PgConnection;
use uuid::Uuid;

/// Conflicts named in an error, at most.
pub const CONFLICTS_SHOWN: usize = 20;

/// The objects of one run's capture.
#[derive(Debug, Clone)]
pub struct Capture {
    /// Holds the key of every row written to the target since the run was
    /// recorded, with the order written (`bf_seq`).
    pub changes: TableName,
    /// The trigger function that fills it.
    pub function: TableName,
}

/// What one pass of carrying did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Carried {
    /// Keys whose live row (or its absence) was copied into the built table.
    pub keys: u64,
    /// Keys inside the scope written meanwhile (as row literals), when they
    /// were not accepted: nothing was carried.
    pub conflicts: Vec<String>,
    /// How many keys inside the scope were written meanwhile in all.
    pub conflicting: i64,
}

impl Capture {
    #[must_use]
    pub fn of(run_id: Uuid) -> Self {
        let short = super::short(run_id);
        Self {
            changes: TableName {
                schema: super::DATA_SCHEMA.into(),
                table: format!("bf_changes_{short}"),
            },
            function: TableName {
                schema: super::DATA_SCHEMA.into(),
                table: format!("bf_capture_{short}"),
            },
        }
    }

    /// Creates the change table, its function and the triggers on `on`. Run
    /// in the transaction that copies the target: creating a trigger waits
    /// for the target's writers and holds new ones until the commit, so
    /// every write after the copy is captured.
    pub async fn install(
        &self,
        conn: &mut PgConnection,
        brief: &Brief,
        on: &TableName,
    ) -> Result<()> {
        let scope = &brief.scope;
        let keys = column_list(&scope.key, None);
        let (changes, function) = (self.changes.quoted(), self.function.quoted());
        let prefix = &self.function.table;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {changes} AS SELECT {keys} FROM {target} WITH NO DATA;
             ALTER TABLE {changes} ADD COLUMN bf_seq bigint GENERATED ALWAYS AS IDENTITY,
                                   ADD COLUMN bf_at timestamptz NOT NULL DEFAULT clock_timestamp();
             CREATE FUNCTION {function}() RETURNS trigger
             LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, backfill AS $bf$
             BEGIN
                 IF TG_OP IN ('INSERT', 'UPDATE') THEN
                     INSERT INTO {changes} ({keys}) SELECT {keys} FROM bf_new;
                 END IF;
                 IF TG_OP IN ('UPDATE', 'DELETE') THEN
                     INSERT INTO {changes} ({keys}) SELECT {keys} FROM bf_old;
                 END IF;
                 RETURN NULL;
             END
             $bf$;
             CREATE TRIGGER {i} AFTER INSERT ON {on} REFERENCING NEW TABLE AS bf_new
                 FOR EACH STATEMENT EXECUTE FUNCTION {function}();
             CREATE TRIGGER {u} AFTER UPDATE ON {on} REFERENCING OLD TABLE AS bf_old NEW TABLE AS bf_new
                 FOR EACH STATEMENT EXECUTE FUNCTION {function}();
             CREATE TRIGGER {d} AFTER DELETE ON {on} REFERENCING OLD TABLE AS bf_old
                 FOR EACH STATEMENT EXECUTE FUNCTION {function}();",
            target = scope.target.quoted(),
            on = on.quoted(),
            i = crate::sql::quote_ident(&format!("{prefix}_i")),
            u = crate::sql::quote_ident(&format!("{prefix}_u")),
            d = crate::sql::quote_ident(&format!("{prefix}_d")),
        )))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Drops the triggers (with their function), and the change table.
    pub async fn remove(&self, conn: &mut PgConnection) -> Result<()> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP FUNCTION IF EXISTS {}() CASCADE; DROP TABLE IF EXISTS {}",
            self.function.quoted(),
            self.changes.quoted()
        )))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Whether the run captures (its change table exists).
    pub async fn exists(&self, conn: &mut PgConnection) -> Result<bool> {
        Ok(sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(self.changes.quoted())
            .fetch_one(&mut *conn)
            .await?)
    }

    /// Carries the captured changes from `live` into `built`, then forgets
    /// them (those it saw: a change committed meanwhile waits for the next
    /// pass; under the swap's lock there is none). A key whose live or built row lies inside the scope is a
    /// conflict: with `in_scope_accepted` its live row is carried too;
    /// without, nothing is carried when there is one, and the conflicts are
    /// returned. With `outside_only`, only keys outside the scope are carried
    /// (the catch-up pass before the swap's lock, which must not change what
    /// validation fingerprinted), and conflicts are left for the last pass.
    /// Without a change table (a run recorded before captures), nothing.
    pub async fn carry(
        &self,
        conn: &mut PgConnection,
        scope: &Scope,
        live: &TableName,
        built: &TableName,
        pass: Pass,
    ) -> Result<Carried> {
        // A run recorded before captures existed carries nothing.
        if !self.exists(&mut *conn).await? {
            return Ok(Carried::default());
        }
        let changes = self.changes.quoted();
        let keys = column_list(&scope.key, None);
        let (live_q, built_q) = (live.quoted(), built.quoted());
        let owned = |alias: &str| format!("coalesce(({}), false)", scope.owned_range(alias));
        // The keys written since, each once, and whether it lies in the scope
        // (its live row or its built row does).
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS bf_seen, bf_carry;
             CREATE TEMPORARY TABLE bf_seen ON COMMIT DROP AS SELECT bf_seq, {keys} FROM {changes};
             CREATE TEMPORARY TABLE bf_carry ON COMMIT DROP AS SELECT DISTINCT {keys} FROM bf_seen;
             ALTER TABLE bf_carry ADD COLUMN bf_in_scope boolean"
        )))
        .execute(&mut *conn)
        .await?;
        let (start, end) = (scope.batch_by.start, scope.batch_by.end);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE bf_carry c SET bf_in_scope =
                 EXISTS (SELECT 1 FROM {live_q} t WHERE {live_match} AND {live_owned})
                 OR EXISTS (SELECT 1 FROM {built_q} t WHERE {live_match} AND {live_owned})",
            live_match = key_join(&scope.key, "t", "c"),
            live_owned = owned("t"),
        )))
        .bind(start)
        .bind(end)
        .execute(&mut *conn)
        .await?;
        let (conflicting, shown): (i64, Vec<String>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), coalesce((array_agg(ROW({keys})::text ORDER BY {keys}))[1:{CONFLICTS_SHOWN}], '{{}}')
               FROM bf_carry WHERE bf_in_scope"
        )))
        .fetch_one(&mut *conn)
        .await?;
        let mut carried = Carried {
            conflicting,
            ..Carried::default()
        };
        let taken = match pass {
            Pass::OutsideOnly => "NOT bf_in_scope",
            Pass::All { in_scope_accepted } if conflicting > 0 && !in_scope_accepted => {
                carried.conflicts = shown;
                return Ok(carried);
            }
            Pass::All { .. } => "true",
        };
        let matched = key_join(&scope.key, "x", "c");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {built_q} x USING bf_carry c WHERE {matched} AND {taken};
             INSERT INTO {built_q} SELECT x.* FROM {live_q} x JOIN bf_carry c ON {matched} WHERE {taken};
             DELETE FROM {changes} x USING bf_seen n, bf_carry c
              WHERE x.bf_seq = n.bf_seq AND {matched} AND {taken};"
        )))
        .execute(&mut *conn)
        .await?;
        carried.keys = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM bf_carry WHERE {taken}"
        )))
        .fetch_one(&mut *conn)
        .await?
        .try_into()
        .unwrap_or(0);
        Ok(carried)
    }
}

impl Capture {
    /// Rows outside the scope in which `built` differs from `live`, leaving
    /// out the keys written since the run began (the carry brings those
    /// over): a built table changed outside the scope by anyone but the run
    /// (which writes only the scope). How many, and up to
    /// [`CONFLICTS_SHOWN`] keys as row literals. Nothing without a change
    /// table.
    pub async fn differs_outside(
        &self,
        conn: &mut PgConnection,
        scope: &Scope,
        live: &TableName,
        built: &TableName,
    ) -> Result<(i64, Vec<String>)> {
        if !self.exists(&mut *conn).await? {
            return Ok((0, Vec::new()));
        }
        let keys = column_list(&scope.key, None);
        let outside = |alias: &str| {
            format!(
                "NOT coalesce(({}), false) AND NOT EXISTS (SELECT 1 FROM {} c WHERE {})",
                scope.owned_range(alias),
                self.changes.quoted(),
                key_join(&scope.key, "c", alias)
            )
        };
        let (live_q, built_q) = (live.quoted(), built.quoted());
        let (n, shown): (i64, Vec<String>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH l AS (SELECT * FROM {live_q} l WHERE {l_out}),
                  b AS (SELECT * FROM {built_q} b WHERE {b_out}),
                  d AS ((SELECT * FROM l EXCEPT ALL SELECT * FROM b)
                        UNION ALL (SELECT * FROM b EXCEPT ALL SELECT * FROM l))
             SELECT count(*), coalesce((array_agg(DISTINCT ROW({keys})::text))[1:{CONFLICTS_SHOWN}], '{{}}') FROM d",
            l_out = outside("l"),
            b_out = outside("b"),
        )))
        .bind(scope.batch_by.start)
        .bind(scope.batch_by.end)
        .fetch_one(&mut *conn)
        .await?;
        Ok((n, shown))
    }
}

/// Which captured changes a pass carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Only keys outside the scope; conflicts wait for the last pass.
    OutsideOnly,
    /// Every key; a key inside the scope only when accepted.
    All { in_scope_accepted: bool },
}
