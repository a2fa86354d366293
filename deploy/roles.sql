-- Least-privilege roles for Backfill. Run as a superuser (or the owner of schema
-- `backfill`) in the warehouse database, after the control plane exists (any
-- `backfill` command creates it). Idempotent: run it again after upgrades, so
-- new control-plane tables are granted too.
--
--   backfill_viewer    reads the control plane: status, report, list
--   backfill_operator  runs, pauses, resumes, cancels, retries, validates, cuts over
--   backfill_reviewer  validates, approves, accepts failed checks (as the reviewer a brief names)
--   backfill_worker    applies batches: the ledger and the run log
--   backfill_console   the login of `backfill serve`: acts for the person logged in to
--                      the console (the database believes its backfill.acting_role,
--                      migration 0013; nobody else's)
--
-- People log in as their own roles, members of these:
--   CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE backfill_operator;
--   CREATE ROLE bob   LOGIN PASSWORD '...' IN ROLE backfill_reviewer;
--   backfill people add alice --role alice --email alice@example.com
--   backfill people add bob   --role bob   --email bob@example.com
-- Who runs and who approves are database logins: a run is recorded only by
-- the session of the role its brief's owner maps to (migration 0016); the
-- database refuses an approval, a promotion or an accepted failed check from
-- any session but the reviewer's role, and never from the owner's or the one
-- that recorded the run (migration 0008); an approval counts only a validation
-- the reviewer's own session recorded; every run-log entry records the session
-- user, whatever the insert says. A worker never rewrites an applied batch.
-- Cutover, rollback, cancel, done and resuming are the run's owner's or
-- reviewer's (migration 0017); pausing is any operator's. The rules are definer functions with their
-- search path pinned, a run is inserted only in its first state, its brief,
-- owner and reviewer never change, and its state moves only along its life
-- (migration 0015): no grant below lets a login step around them in SQL. The
-- ledger's totals (backfill.batch_totals) are written only by those
-- functions, so no role is granted to write them. On the warehouse's own tables, grant as your site does: operators and
-- workers write the targets (operators own them, or are members of the role
-- that does: the maintenance comment and a cutover's swap need ownership),
-- and everyone reads what the sources read.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'backfill_viewer') THEN
        CREATE ROLE backfill_viewer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'backfill_operator') THEN
        CREATE ROLE backfill_operator NOLOGIN IN ROLE backfill_viewer;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'backfill_reviewer') THEN
        CREATE ROLE backfill_reviewer NOLOGIN IN ROLE backfill_viewer;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'backfill_worker') THEN
        CREATE ROLE backfill_worker NOLOGIN IN ROLE backfill_viewer;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'backfill_console') THEN
        CREATE ROLE backfill_console NOLOGIN IN ROLE backfill_operator, backfill_reviewer;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA backfill, backfill_data TO backfill_viewer;
GRANT SELECT ON ALL TABLES IN SCHEMA backfill TO backfill_viewer;

-- Nobody but the owner of schema backfill creates anything in it: a view or
-- function created there could stand in for what the rules read.
REVOKE CREATE ON SCHEMA backfill FROM PUBLIC, backfill_operator;

-- Operators record and steer runs; their runs' before-images and a swap's
-- change tables are created in schema backfill_data, and granted by the run to
-- backfill_worker (to write) and backfill_viewer (to read), as the tables
-- staging-swap builds beside a target are. tests/tests/least_privilege.rs
-- runs a run's whole life with these roles.
GRANT CREATE ON SCHEMA backfill_data TO backfill_operator;
GRANT INSERT, UPDATE ON backfill.runs, backfill.batches TO backfill_operator;
GRANT INSERT, UPDATE, DELETE ON backfill.maintenance TO backfill_operator;
GRANT INSERT ON backfill.run_log, backfill.validations, backfill.validation_runs TO backfill_operator;
GRANT INSERT, UPDATE (delivered) ON backfill.announcements TO backfill_operator;

-- Reviewers validate, approve and promote canaries; the database lets only the
-- named reviewer's role approve, accept or promote (the triggers of migrations
-- 0008 and 0010).
GRANT UPDATE (state, approved_by, approved_at, approved_validation, promoted_by, promoted_at, updated_at) ON backfill.runs TO backfill_reviewer;
GRANT INSERT ON backfill.run_log, backfill.validations, backfill.validation_runs,
    backfill.check_acceptances TO backfill_reviewer;

-- Workers claim and apply batches; they never change a run.
GRANT UPDATE ON backfill.batches TO backfill_worker;
GRANT INSERT ON backfill.run_log TO backfill_worker;

GRANT USAGE ON ALL SEQUENCES IN SCHEMA backfill
    TO backfill_operator, backfill_reviewer, backfill_worker;
