-- Operator pause, and the load guard's throttle: while either holds, no new batch
-- of the run starts (workers wait; in-flight batches finish).
ALTER TABLE backfill.runs DROP CONSTRAINT runs_state_check;
ALTER TABLE backfill.runs ADD CONSTRAINT runs_state_check CHECK (state IN (
    'running', 'paused', 'halted', 'applied', 'approved', 'cut_over',
    'rolling_back', 'rolled_back', 'cancelled'));

DROP INDEX backfill.runs_one_active_per_target;
CREATE UNIQUE INDEX runs_one_active_per_target ON backfill.runs (target)
    WHERE state IN ('running', 'paused', 'halted', 'applied', 'approved');

-- Set while the brief's `pause_when` guard holds.
ALTER TABLE backfill.runs ADD COLUMN throttled_since timestamptz;
