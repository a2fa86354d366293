-- `backfill announce`: the note the operators' guide asks for before a run
-- (what changes and why, the period and tables, who may see numbers move, the
-- window, the expected size and time), recorded by brief hash so that `run`
-- of a metric-changing or production-critical brief can require one.
CREATE TABLE backfill.announcements (
    id           bigserial PRIMARY KEY,
    brief_hash   text NOT NULL,
    name         text NOT NULL,
    target       text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL CHECK (window_end > window_start),
    note         text NOT NULL,
    announced_by text NOT NULL,
    -- The webhooks that took it (their addresses, passwords redacted).
    delivered    jsonb NOT NULL DEFAULT '[]',
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX announcements_brief_hash ON backfill.announcements (brief_hash, id DESC);
