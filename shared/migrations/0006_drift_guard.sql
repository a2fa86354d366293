-- The drift guard: the column definitions of the target and of every table the
-- source reads, as they were when the run started ({"schema.table": "col type, ..."}).
-- A batch that finds one changed fails, and the run halts saying what changed.
ALTER TABLE backfill.runs ADD COLUMN fingerprints jsonb NOT NULL DEFAULT '{}';
