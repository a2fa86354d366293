-- What each batch measured on its range (duplicate keys, NULLs, metrics per group
-- before and after, orphaned references), as its event carried it.
ALTER TABLE backfill.batches ADD COLUMN checks jsonb;
