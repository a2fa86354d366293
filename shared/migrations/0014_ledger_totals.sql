-- A run's batches by state, with the rows they wrote and the time they took,
-- kept as the ledger changes rather than counted from it: `status`, `list`,
-- the console and the coordinator's reconcile read a few rows per run instead
-- of every batch row (a million-batch run's ledger is about 90 MB).
--
-- Each statement that updates or deletes ledger rows adds what it changed,
-- by state, to rows of its own connection (`shard` is the backend's
-- process id): batch transactions on different connections never wait for
-- each other here, and a run's figures are the sum over its shards. A shard's
-- row may go negative (a batch queued by the coordinator's connection and
-- claimed by a worker's); the sum may not.
CREATE TABLE backfill.batch_totals (
    run_id        uuid NOT NULL,
    state         text NOT NULL,
    shard         integer NOT NULL,
    batches       bigint NOT NULL,
    rows_source   bigint NOT NULL,
    rows_inserted bigint NOT NULL,
    rows_updated  bigint NOT NULL,
    rows_deleted  bigint NOT NULL,
    -- Inserted plus updated plus deleted, of the batches that have all three.
    rows_written  bigint NOT NULL,
    -- The batches with a duration, its sum and its sum of squares (the spread
    -- of applied batches' durations, for the ETA's range).
    timed         bigint NOT NULL,
    duration_ms   bigint NOT NULL,
    duration_ms_squared double precision NOT NULL,
    PRIMARY KEY (run_id, state, shard)
);

-- A batch row's figures, taken `sign` times, for the calling connection's
-- shard (one row; a set-returning SQL function, so that queries inline it).
CREATE FUNCTION backfill.batch_totals_of(b backfill.batches, sign integer)
RETURNS SETOF backfill.batch_totals LANGUAGE sql STABLE AS $$
    SELECT b.run_id, b.state, pg_backend_pid(), sign::bigint,
           sign * coalesce(b.rows_source, 0), sign * coalesce(b.rows_inserted, 0),
           sign * coalesce(b.rows_updated, 0), sign * coalesce(b.rows_deleted, 0),
           sign * coalesce(b.rows_inserted + b.rows_updated + b.rows_deleted, 0),
           (sign * (b.duration_ms IS NOT NULL)::int)::bigint, sign * coalesce(b.duration_ms, 0),
           sign * coalesce(b.duration_ms::float8 * b.duration_ms, 0)
$$;

-- The same figures counted from the ledger's rows, one by one: what the kept
-- totals must equal (`control::batches::recount`), and where they start from.
CREATE VIEW backfill.batch_totals_counted AS
SELECT f.run_id, f.state, 0 AS shard, sum(f.batches)::bigint AS batches,
       sum(f.rows_source)::bigint AS rows_source, sum(f.rows_inserted)::bigint AS rows_inserted,
       sum(f.rows_updated)::bigint AS rows_updated, sum(f.rows_deleted)::bigint AS rows_deleted,
       sum(f.rows_written)::bigint AS rows_written, sum(f.timed)::bigint AS timed,
       sum(f.duration_ms)::bigint AS duration_ms, sum(f.duration_ms_squared) AS duration_ms_squared
  FROM backfill.batches b, LATERAL backfill.batch_totals_of(b, 1) f
 GROUP BY f.run_id, f.state;

-- Adds (TG_ARGV[0] = 1) or takes away (-1) the figures of the statement's
-- rows `changed`, by run and state: an update takes away its rows as they were
-- and adds them as they are, a delete takes them away.
CREATE FUNCTION backfill.batch_totals_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    sign integer := TG_ARGV[0]::integer;
BEGIN
    INSERT INTO backfill.batch_totals AS t
    SELECT f.run_id, f.state, f.shard, sum(f.batches), sum(f.rows_source), sum(f.rows_inserted),
           sum(f.rows_updated), sum(f.rows_deleted), sum(f.rows_written), sum(f.timed),
           sum(f.duration_ms), sum(f.duration_ms_squared)
      FROM changed b, LATERAL backfill.batch_totals_of(b::backfill.batches, sign) f
     GROUP BY f.run_id, f.state, f.shard
    ON CONFLICT (run_id, state, shard) DO UPDATE SET
           batches = t.batches + EXCLUDED.batches,
           rows_source = t.rows_source + EXCLUDED.rows_source,
           rows_inserted = t.rows_inserted + EXCLUDED.rows_inserted,
           rows_updated = t.rows_updated + EXCLUDED.rows_updated,
           rows_deleted = t.rows_deleted + EXCLUDED.rows_deleted,
           rows_written = t.rows_written + EXCLUDED.rows_written,
           timed = t.timed + EXCLUDED.timed,
           duration_ms = t.duration_ms + EXCLUDED.duration_ms,
           duration_ms_squared = t.duration_ms_squared + EXCLUDED.duration_ms_squared;
    RETURN NULL;
END
$$;

-- One statement, one change per run and state, however many rows it touches.
-- Inserts have no trigger: batches are inserted only with their run, in its
-- transaction, which writes the run's pending total itself
-- (`control::runs::create`; a trigger reading a million inserted rows back
-- would add half to the time of recording them).
CREATE TRIGGER batch_totals_updated_from AFTER UPDATE ON backfill.batches
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION backfill.batch_totals_change('-1');
CREATE TRIGGER batch_totals_updated_to AFTER UPDATE ON backfill.batches
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION backfill.batch_totals_change('1');
CREATE TRIGGER batch_totals_deleted AFTER DELETE ON backfill.batches
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION backfill.batch_totals_change('-1');

-- The ledger as it is (the triggers hold the table until this commits).
INSERT INTO backfill.batch_totals SELECT * FROM backfill.batch_totals_counted;
