-- Approval means "validated": every `backfill validate` is one validation run,
-- with the fingerprint of what it checked; a failed check can be accepted, with
-- a reason, by someone other than the owner; an approval names the validation
-- it approved, and cutover exposes only what that validation saw.
CREATE TABLE backfill.validation_runs (
    id          bigserial PRIMARY KEY,
    run_id      uuid NOT NULL REFERENCES backfill.runs (run_id),
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text NOT NULL,
    passed      boolean NOT NULL,
    failed      text[] NOT NULL DEFAULT '{}',
    -- Per batch range of the table to be exposed: rows and a hash of them.
    fingerprint jsonb NOT NULL
);
CREATE INDEX validation_runs_by_run ON backfill.validation_runs (run_id, id);

ALTER TABLE backfill.validations
    ADD COLUMN validation_run bigint REFERENCES backfill.validation_runs (id);

CREATE TABLE backfill.check_acceptances (
    validation_run bigint NOT NULL REFERENCES backfill.validation_runs (id),
    check_name     text NOT NULL,
    actor          text NOT NULL,
    reason         text NOT NULL,
    at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (validation_run, check_name)
);

ALTER TABLE backfill.runs
    ADD COLUMN approved_validation bigint REFERENCES backfill.validation_runs (id);
