-- The owner is a login, and an approval counts only what the reviewer's own
-- session measured.

-- A run's own tables (before-images, the change tables of a swap) live in
-- their own schema, where operators may create them; schema `backfill` holds
-- the record and its rules, and only its owner creates anything there
-- (deploy/roles.sql revokes the CREATE operators once had).
CREATE SCHEMA IF NOT EXISTS backfill_data;

-- The database role that recorded the run: its owner's, by the rule below.
ALTER TABLE backfill.runs ADD COLUMN operator_role name;

-- The run is recorded by its owner: the session (or the person a console
-- acts for) must be the role backfill.people maps the brief's owner to. The
-- run records that person's name as its operator, whatever the insert says.
CREATE OR REPLACE FUNCTION backfill.runs_recorded_fresh() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, backfill AS $$
DECLARE
    acting name := backfill.acting_role();
    me text;
    owner_role name;
BEGIN
    IF NEW.state <> 'running'
       OR num_nonnulls(NEW.approved_by, NEW.approved_at, NEW.approved_validation,
                       NEW.promoted_by, NEW.promoted_at, NEW.canary_at, NEW.cut_over_at,
                       NEW.rolled_back_at, NEW.cleaned_at, NEW.done_at, NEW.finished_at,
                       NEW.old_table, NEW.halt_reason) > 0 THEN
        RAISE EXCEPTION 'run %: a run is recorded in state running with nothing approved, promoted or finished (this one says %); record runs with `backfill run`', NEW.run_id, NEW.state
            USING ERRCODE = '42501';
    END IF;
    SELECT name INTO me FROM backfill.people WHERE role = acting;
    SELECT role INTO owner_role FROM backfill.people WHERE lower(name) = lower(NEW.owner);
    IF me IS NULL THEN
        RAISE EXCEPTION 'this session (database role %) is nobody in backfill.people, and only the owner a brief names may run it; connect as your own role, or have an administrator map it: backfill people add NAME --role %', acting, acting
            USING ERRCODE = '42501';
    END IF;
    IF owner_role IS DISTINCT FROM acting THEN
        RAISE EXCEPTION 'the brief names % as owner, but this session is % (database role %); the owner runs the brief, or the brief names who does', NEW.owner, me, acting
            USING ERRCODE = '42501';
    END IF;
    NEW.operator := me;
    NEW.operator_role := acting;
    RETURN NEW;
END
$$;

-- Nobody approves, promotes or accepts a check of a run their own role
-- recorded, whatever the brief's names and backfill.people say since.
CREATE OR REPLACE FUNCTION backfill.require_reviewer(run uuid, what text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, backfill AS $$
DECLARE
    r record;
    reviewer_role name;
    owner_role name;
    acting name := backfill.acting_role();
BEGIN
    SELECT owner, reviewer, operator, operator_role INTO r FROM backfill.runs WHERE run_id = run;
    SELECT role INTO reviewer_role FROM backfill.people WHERE lower(name) = lower(r.reviewer);
    SELECT role INTO owner_role FROM backfill.people WHERE lower(name) = lower(r.owner);
    IF reviewer_role IS NULL THEN
        RAISE EXCEPTION 'the reviewer of run % (%) is not in backfill.people; map them to their database role: backfill people add % --role ROLE', run, r.reviewer, r.reviewer
            USING ERRCODE = '42501';
    END IF;
    IF acting = r.operator_role THEN
        RAISE EXCEPTION 'database role % recorded run % (as %), so it cannot % it', acting, run, r.operator, what
            USING ERRCODE = '42501';
    END IF;
    IF acting <> reviewer_role OR acting = owner_role THEN
        RAISE EXCEPTION 'only % (database role %) may % run %; this session is role %', r.reviewer, reviewer_role, what, run, acting
            USING ERRCODE = '42501';
    END IF;
END
$$;

-- A validation names the role that recorded it, whatever the insert says; a
-- check's result belongs to a validation its own session recorded.
ALTER TABLE backfill.validation_runs ADD COLUMN recorded_by name;

CREATE FUNCTION backfill.validation_names_its_session() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, backfill AS $$
BEGIN
    NEW.recorded_by := backfill.acting_role();
    RETURN NEW;
END
$$;

CREATE TRIGGER validation_names_its_session
    BEFORE INSERT ON backfill.validation_runs
    FOR EACH ROW EXECUTE FUNCTION backfill.validation_names_its_session();

CREATE FUNCTION backfill.checks_of_own_validation() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, backfill AS $$
BEGIN
    IF NEW.validation_run IS NOT NULL AND (
        SELECT v.recorded_by IS DISTINCT FROM backfill.acting_role()
               OR v.run_id <> NEW.run_id
          FROM backfill.validation_runs v WHERE v.id = NEW.validation_run) THEN
        RAISE EXCEPTION 'validation %: its checks are written by the session that recorded it, for its own run', NEW.validation_run
            USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER checks_of_own_validation
    BEFORE INSERT ON backfill.validations
    FOR EACH ROW EXECUTE FUNCTION backfill.checks_of_own_validation();

-- An approval counts a validation nobody else could have written: one of this
-- run, recorded by the approving session itself (`backfill approve` validates
-- again as the reviewer), every failed check of it accepted.
CREATE OR REPLACE FUNCTION backfill.runs_approved_by_reviewer() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, backfill AS $$
DECLARE
    v record;
    open text[];
BEGIN
    IF NEW.state = 'approved'
       AND (OLD.state IS DISTINCT FROM 'approved' OR NEW.approved_validation IS DISTINCT FROM OLD.approved_validation) THEN
        PERFORM backfill.require_reviewer(NEW.run_id, 'approve');
        SELECT id, run_id, recorded_by, failed INTO v
          FROM backfill.validation_runs WHERE id = NEW.approved_validation;
        IF v.id IS NULL OR v.run_id <> NEW.run_id THEN
            RAISE EXCEPTION 'run %: an approval names a validation of this run', NEW.run_id
                USING ERRCODE = '42501';
        END IF;
        IF v.recorded_by IS DISTINCT FROM backfill.acting_role() THEN
            RAISE EXCEPTION 'run %: validation % was recorded by role %, not by this session (%); the reviewer approves what their own session validated (backfill approve validates again)', NEW.run_id, v.id, coalesce(v.recorded_by::text, 'unknown'), backfill.acting_role()
                USING ERRCODE = '42501';
        END IF;
        SELECT array_agg(f) INTO open FROM unnest(v.failed) f
         WHERE NOT EXISTS (SELECT 1 FROM backfill.check_acceptances a
                            WHERE a.validation_run = v.id AND a.check_name = f);
        IF open IS NOT NULL THEN
            RAISE EXCEPTION 'run %: validation % failed % and nobody accepted it', NEW.run_id, v.id, array_to_string(open, ', ')
                USING ERRCODE = '42501';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

-- A worker claims, applies and fails batches; it never rewrites a batch
-- already applied or rolled back, nor what a batch is.
CREATE FUNCTION backfill.batches_kept_from_workers() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, backfill AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'backfill_worker')
       AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'backfill_operator')
       AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user)
       AND pg_has_role(session_user, 'backfill_worker', 'MEMBER')
       AND NOT pg_has_role(session_user, 'backfill_operator', 'MEMBER')
       AND (OLD.state IN ('applied', 'rolled_back')
            OR NEW.run_id IS DISTINCT FROM OLD.run_id
            OR NEW.batch_no IS DISTINCT FROM OLD.batch_no
            OR NEW.lo IS DISTINCT FROM OLD.lo
            OR NEW.hi IS DISTINCT FROM OLD.hi) THEN
        RAISE EXCEPTION 'run % batch %: a worker changes only batches not yet applied, and never their range (this one is %)', OLD.run_id, OLD.batch_no, OLD.state
            USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER batches_kept_from_workers
    BEFORE UPDATE ON backfill.batches
    FOR EACH ROW EXECUTE FUNCTION backfill.batches_kept_from_workers();

-- What a run is, now with the role that recorded it.
CREATE OR REPLACE FUNCTION backfill.runs_move_by_the_rules() RETURNS trigger
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
       OR NEW.operator_role IS DISTINCT FROM OLD.operator_role
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
