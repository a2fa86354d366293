-- A run of a million batches is recorded in seconds. Each ledger row's only
-- index work at insert is its primary key:
-- - batches are written only with their run, in the run's transaction
--   (control::runs::create), and runs are never deleted, so the foreign key
--   guarded nothing the code does not keep, at the price of a trigger per row
--   (most of the time of recording a large run);
-- - the index on (run_id, state) held every row; the coordinator's reconcile
--   looks only at in-flight batches and `status` only at failing ones, which
--   partial indexes hold (empty while a run is recorded).
ALTER TABLE backfill.batches DROP CONSTRAINT batches_run_id_fkey;
DROP INDEX backfill.batches_by_state;
CREATE INDEX batches_in_flight ON backfill.batches (run_id, batch_no)
    WHERE state IN ('queued', 'running');
CREATE INDEX batches_failing ON backfill.batches (run_id, batch_no)
    WHERE last_error IS NOT NULL;
