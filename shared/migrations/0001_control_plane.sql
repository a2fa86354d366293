-- The control plane: runs, their batches, and an append-only log of what happened.

CREATE TABLE backfill.runs (
    run_id        uuid PRIMARY KEY,
    name          text NOT NULL,
    target        text NOT NULL,
    brief         text NOT NULL,
    brief_hash    text NOT NULL,
    code_version  text NOT NULL,
    operator      text NOT NULL,
    owner         text NOT NULL,
    reviewer      text NOT NULL,
    strategy      text NOT NULL,
    bound_kind    text NOT NULL CHECK (bound_kind IN ('integer', 'date', 'timestamp')),
    batch_count   integer NOT NULL CHECK (batch_count > 0),
    params        jsonb NOT NULL DEFAULT '{}',
    image_table   text,
    state         text NOT NULL CHECK (state IN ('running', 'halted', 'applied', 'cancelled')),
    halt_reason   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);

-- One active run per target: a second `backfill run` is refused with the first's id.
CREATE UNIQUE INDEX runs_one_active_per_target ON backfill.runs (target)
    WHERE state IN ('running', 'halted');

CREATE TABLE backfill.batches (
    run_id        uuid NOT NULL REFERENCES backfill.runs (run_id),
    batch_no      integer NOT NULL,
    lo            text NOT NULL,
    hi            text NOT NULL,
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'queued', 'running', 'applied', 'failed')),
    attempts      integer NOT NULL DEFAULT 0,
    -- Grows on every claim; the apply transaction commits only if its token is still current.
    fence         bigint NOT NULL DEFAULT 0,
    worker        text,
    rows_source   bigint,
    rows_inserted bigint,
    rows_updated  bigint,
    rows_deleted  bigint,
    queued_at     timestamptz,
    started_at    timestamptz,
    applied_at    timestamptz,
    duration_ms   bigint,
    last_error    text,
    PRIMARY KEY (run_id, batch_no)
);

CREATE INDEX batches_by_state ON backfill.batches (run_id, state);

CREATE TABLE backfill.run_log (
    id        bigserial PRIMARY KEY,
    run_id    uuid NOT NULL REFERENCES backfill.runs (run_id),
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor     text NOT NULL,
    event     text NOT NULL,
    batch_no  integer,
    detail    jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX run_log_by_run ON backfill.run_log (run_id, id);

CREATE FUNCTION backfill.run_log_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'backfill.run_log is append-only: % refused', TG_OP;
END
$$;

CREATE TRIGGER run_log_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON backfill.run_log
    FOR EACH STATEMENT EXECUTE FUNCTION backfill.run_log_is_append_only();
