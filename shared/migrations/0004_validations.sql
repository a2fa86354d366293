-- Run-level validation results (`backfill validate`): one row per check per time
-- it ran, so the report can show what was checked, when, and what it found.
CREATE TABLE backfill.validations (
    id        bigserial PRIMARY KEY,
    run_id    uuid NOT NULL REFERENCES backfill.runs (run_id),
    at        timestamptz NOT NULL DEFAULT now(),
    check_name text NOT NULL,
    passed    boolean NOT NULL,
    summary   text NOT NULL,
    detail    jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX validations_by_run ON backfill.validations (run_id, id);
