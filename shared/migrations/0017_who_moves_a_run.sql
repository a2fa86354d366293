-- Who moves a run along its life: cutting it over, rolling it back,
-- cancelling it, declaring it done and setting it going again after a halt or
-- a pause are its owner's or its reviewer's (or the role that recorded it),
-- as the console has it; pausing stays anyone's. A superuser's own session
-- (acting for nobody) may, as it may do anything in the database.
CREATE FUNCTION backfill.require_owner_or_reviewer(run uuid, what text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, backfill AS $$
DECLARE
    r record;
    acting name := backfill.acting_role();
BEGIN
    IF acting = session_user AND (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) THEN
        RETURN;
    END IF;
    SELECT owner, reviewer, operator_role INTO r FROM backfill.runs WHERE run_id = run;
    IF acting = r.operator_role OR EXISTS (
        SELECT 1 FROM backfill.people p
         WHERE p.role = acting AND lower(p.name) IN (lower(r.owner), lower(r.reviewer))) THEN
        RETURN;
    END IF;
    RAISE EXCEPTION 'only the owner (%) or the reviewer (%) of run % may % it; this session is role %', r.owner, r.reviewer, run, what, acting
        USING ERRCODE = '42501';
END
$$;

CREATE FUNCTION backfill.runs_moved_by_their_people() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, backfill AS $$
BEGIN
    IF NEW.state IS DISTINCT FROM OLD.state THEN
        CASE
            WHEN NEW.state = 'cut_over' THEN
                PERFORM backfill.require_owner_or_reviewer(NEW.run_id, 'cut over');
            WHEN NEW.state = 'rolling_back' THEN
                PERFORM backfill.require_owner_or_reviewer(NEW.run_id, 'roll back');
            WHEN NEW.state = 'cancelled' THEN
                PERFORM backfill.require_owner_or_reviewer(NEW.run_id, 'cancel');
            WHEN NEW.state = 'done' THEN
                PERFORM backfill.require_owner_or_reviewer(NEW.run_id, 'declare done');
            WHEN NEW.state = 'running' AND OLD.state IN ('halted', 'paused') THEN
                PERFORM backfill.require_owner_or_reviewer(NEW.run_id, 'resume');
            ELSE NULL;
        END CASE;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER runs_moved_by_their_people
    BEFORE UPDATE ON backfill.runs
    FOR EACH ROW EXECUTE FUNCTION backfill.runs_moved_by_their_people();
