-- `backfill done`: a cut-over run whose every item of the operators'
-- definition of done is recorded (scope applied, validation passed or its
-- failures accepted, cutover and refreshes done, stakeholders told, rollback
-- assets retained until a date, the lesson captured) ends in state `done`.
ALTER TABLE backfill.runs DROP CONSTRAINT runs_state_check;
ALTER TABLE backfill.runs ADD CONSTRAINT runs_state_check CHECK (state IN (
    'running', 'paused', 'halted', 'canary', 'applied', 'approved', 'cut_over',
    'rolling_back', 'rolled_back', 'cancelled', 'done'));

ALTER TABLE backfill.runs ADD COLUMN done_at timestamptz;
