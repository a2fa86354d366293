-- The control plane's rules, beyond the reach of the roles they bind
-- (deploy/roles.sql). A login that may write schema `backfill` must not be able
-- to step around them in SQL.

-- Every function that keeps a rule runs as its owner with its search path
-- pinned: nothing a session creates in schema `backfill` (a view named
-- pg_roles) or sets (search_path) changes what it reads, and the ledger's
-- totals are written by the trigger, not by a grant to every writer.
ALTER FUNCTION backfill.acting_role()
    SECURITY DEFINER SET search_path = pg_catalog, backfill;
ALTER FUNCTION backfill.require_reviewer(uuid, text)
    SECURITY DEFINER SET search_path = pg_catalog, backfill;
ALTER FUNCTION backfill.runs_approved_by_reviewer()
    SECURITY DEFINER SET search_path = pg_catalog, backfill;
ALTER FUNCTION backfill.checks_accepted_by_reviewer()
    SECURITY DEFINER SET search_path = pg_catalog, backfill;
ALTER FUNCTION backfill.runs_promoted_by_reviewer()
    SECURITY DEFINER SET search_path = pg_catalog, backfill;
ALTER FUNCTION backfill.run_log_is_append_only()
    SECURITY DEFINER SET search_path = pg_catalog, backfill;
ALTER FUNCTION backfill.batch_totals_change()
    SECURITY DEFINER SET search_path = pg_catalog, backfill;

-- A run is recorded in its first state, with nothing approved, promoted, cut
-- over or finished: a copy of an approved run inserted by hand is refused.
CREATE FUNCTION backfill.runs_recorded_fresh() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, backfill AS $$
BEGIN
    IF NEW.state <> 'running'
       OR num_nonnulls(NEW.approved_by, NEW.approved_at, NEW.approved_validation,
                       NEW.promoted_by, NEW.promoted_at, NEW.canary_at, NEW.cut_over_at,
                       NEW.rolled_back_at, NEW.cleaned_at, NEW.done_at, NEW.finished_at,
                       NEW.old_table, NEW.halt_reason) > 0 THEN
        RAISE EXCEPTION 'run %: a run is recorded in state running with nothing approved, promoted or finished (this one says %); record runs with `backfill run`', NEW.run_id, NEW.state
            USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER runs_recorded_fresh
    BEFORE INSERT ON backfill.runs
    FOR EACH ROW EXECUTE FUNCTION backfill.runs_recorded_fresh();

-- What a run is never changes after it is recorded: its brief, its hash, who
-- owns and who reviews it, its target and its batches. A state moves only
-- along the run's life: approved only from applied (the reviewer's role, by
-- the trigger of migration 0008), cut over only once approved, done only once
-- cut over, rolled back only through rolling back; nothing leaves rolled_back.
CREATE FUNCTION backfill.runs_move_by_the_rules() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, backfill AS $$
DECLARE
    allowed boolean;
BEGIN
    IF NEW.run_id IS DISTINCT FROM OLD.run_id
       OR NEW.brief IS DISTINCT FROM OLD.brief
       OR NEW.brief_hash IS DISTINCT FROM OLD.brief_hash
       OR NEW.owner IS DISTINCT FROM OLD.owner
       OR NEW.reviewer IS DISTINCT FROM OLD.reviewer
       OR NEW.operator IS DISTINCT FROM OLD.operator
       OR NEW.target IS DISTINCT FROM OLD.target
       OR NEW.strategy IS DISTINCT FROM OLD.strategy
       OR NEW.batch_count IS DISTINCT FROM OLD.batch_count
       OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'run %: its brief, owner, reviewer, operator, target and batches are fixed when it is recorded', OLD.run_id
            USING ERRCODE = '42501';
    END IF;
    allowed := CASE NEW.state
        WHEN OLD.state THEN true
        WHEN 'approved' THEN OLD.state = 'applied'
        WHEN 'cut_over' THEN OLD.state = 'approved' AND NEW.approved_validation IS NOT NULL
        WHEN 'done' THEN OLD.state = 'cut_over'
        WHEN 'rolled_back' THEN OLD.state = 'rolling_back'
        WHEN 'rolling_back' THEN true
        WHEN 'cancelled' THEN OLD.state IN ('running', 'paused', 'halted', 'canary', 'applied', 'approved')
        WHEN 'applied' THEN OLD.state = 'running'
        ELSE OLD.state IN ('running', 'paused', 'halted', 'canary')
    END;
    IF NOT allowed THEN
        RAISE EXCEPTION 'run %: it cannot move from % to %', OLD.run_id, OLD.state, NEW.state
            USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER runs_move_by_the_rules
    BEFORE UPDATE ON backfill.runs
    FOR EACH ROW EXECUTE FUNCTION backfill.runs_move_by_the_rules();

-- A run-log entry names the session that wrote it (or the person a console
-- session acts for), whatever the insert says.
CREATE FUNCTION backfill.run_log_names_its_session() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, backfill AS $$
BEGIN
    NEW.session_role := backfill.acting_role();
    RETURN NEW;
END
$$;

CREATE TRIGGER run_log_names_its_session
    BEFORE INSERT ON backfill.run_log
    FOR EACH ROW EXECUTE FUNCTION backfill.run_log_names_its_session();

-- A run's first total (its batches, all pending) is written with the run, by
-- this function, from the batch count the run records; after that only the
-- ledger's trigger writes totals. No role needs to write them directly.
CREATE FUNCTION backfill.batch_totals_start(run uuid) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, backfill AS $$
    INSERT INTO backfill.batch_totals
           (run_id, state, shard, batches, rows_source, rows_inserted, rows_updated,
            rows_deleted, rows_written, timed, duration_ms, duration_ms_squared)
    SELECT r.run_id, 'pending', pg_backend_pid(), r.batch_count, 0, 0, 0, 0, 0, 0, 0, 0
      FROM backfill.runs r
     WHERE r.run_id = run
       AND NOT EXISTS (SELECT 1 FROM backfill.batch_totals t WHERE t.run_id = run)
$$;
