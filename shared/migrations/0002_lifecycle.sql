-- The run lifecycle after its batches: approval, cutover, rollback and cleanup,
-- the tables a run builds beside its target, and maintenance markers.

ALTER TABLE backfill.runs DROP CONSTRAINT runs_state_check;
ALTER TABLE backfill.runs ADD CONSTRAINT runs_state_check CHECK (state IN (
    'running', 'halted', 'applied', 'approved', 'cut_over',
    'rolling_back', 'rolled_back', 'cancelled'));

ALTER TABLE backfill.runs
    -- staging-swap and parallel-version: the table batches write to.
    ADD COLUMN side_table      text,
    -- after a swap: the name the previous target now has (the rollback copy).
    ADD COLUMN old_table       text,
    ADD COLUMN approved_by     text,
    ADD COLUMN approved_at     timestamptz,
    ADD COLUMN cut_over_at     timestamptz,
    ADD COLUMN rolled_back_at  timestamptz,
    ADD COLUMN cleaned_at      timestamptz;

-- Runs applied before approval and cutover existed wrote to live targets: their
-- changes are already what readers see, so they count as cut over.
INSERT INTO backfill.run_log (run_id, actor, event, detail)
SELECT run_id, 'migration 0002', 'run_cut_over',
       '{"reason": "applied before approval and cutover existed; its writes were already live"}'
  FROM backfill.runs WHERE state = 'applied';
UPDATE backfill.runs SET state = 'cut_over', cut_over_at = finished_at WHERE state = 'applied';

-- A run holds its target from the first batch until it is cut over, rolled back
-- or cancelled: a second run is refused until then. (A forced rollback of an
-- earlier run may overlap a later run, so `rolling_back` does not hold it.)
DROP INDEX backfill.runs_one_active_per_target;
CREATE UNIQUE INDEX runs_one_active_per_target ON backfill.runs (target)
    WHERE state IN ('running', 'halted', 'applied', 'approved');

ALTER TABLE backfill.batches DROP CONSTRAINT batches_state_check;
ALTER TABLE backfill.batches ADD CONSTRAINT batches_state_check CHECK (state IN (
    'pending', 'queued', 'running', 'applied', 'failed', 'rolled_back'));

-- "Under maintenance": a live target a run is writing to, for dashboards to show.
CREATE TABLE backfill.maintenance (
    target            text PRIMARY KEY,
    run_id            uuid NOT NULL REFERENCES backfill.runs (run_id),
    reason            text NOT NULL,
    owner             text NOT NULL,
    since             timestamptz NOT NULL DEFAULT now(),
    -- the target's comment before the marker replaced it, restored when cleared
    previous_comment  text
);
