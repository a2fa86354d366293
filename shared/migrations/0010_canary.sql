-- The canary (`limits.canary`): a run applies a few batches first, then waits
-- in state `canary` until the reviewer promotes it (never the owner: the
-- database enforces it, as for approval), or it promotes itself when the
-- brief says `auto = true` and the canary breached no limit.
ALTER TABLE backfill.runs DROP CONSTRAINT runs_state_check;
ALTER TABLE backfill.runs ADD CONSTRAINT runs_state_check CHECK (state IN (
    'running', 'paused', 'halted', 'canary', 'applied', 'approved', 'cut_over',
    'rolling_back', 'rolled_back', 'cancelled'));

DROP INDEX backfill.runs_one_active_per_target;
CREATE UNIQUE INDEX runs_one_active_per_target ON backfill.runs (target)
    WHERE state IN ('running', 'paused', 'halted', 'canary', 'applied', 'approved');

-- The canary's batches, recorded with the run (NULL: no canary).
ALTER TABLE backfill.runs ADD COLUMN canary_batches integer[];
-- Set once at creation from the brief; the trigger below keeps it so.
ALTER TABLE backfill.runs ADD COLUMN canary_auto boolean NOT NULL DEFAULT false;
-- When the canary's batches were all applied and the run began to wait.
ALTER TABLE backfill.runs ADD COLUMN canary_at timestamptz;
ALTER TABLE backfill.runs ADD COLUMN promoted_by text;
ALTER TABLE backfill.runs ADD COLUMN promoted_at timestamptz;

CREATE FUNCTION backfill.runs_promoted_by_reviewer() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.canary_auto IS DISTINCT FROM OLD.canary_auto
       OR NEW.canary_batches IS DISTINCT FROM OLD.canary_batches THEN
        RAISE EXCEPTION 'run %: the canary is fixed when the run is recorded', NEW.run_id
            USING ERRCODE = '42501';
    END IF;
    IF NEW.promoted_at IS NOT NULL AND OLD.promoted_at IS NULL AND NOT OLD.canary_auto THEN
        PERFORM backfill.require_reviewer(NEW.run_id, 'promote');
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER runs_promoted_by_reviewer
    BEFORE UPDATE ON backfill.runs
    FOR EACH ROW EXECUTE FUNCTION backfill.runs_promoted_by_reviewer();
