-- The time a run spent running, so its pace and ETA leave out the time it
-- stood halted, paused or waiting at its canary: `active_ms` adds up the
-- closed stretches in state running, `running_since` opens the current one.
ALTER TABLE backfill.runs
    ADD COLUMN active_ms bigint NOT NULL DEFAULT 0,
    ADD COLUMN running_since timestamptz;

-- Runs recorded before: their time from start to end (or now), less a
-- canary's wait; a running one goes on running from now.
UPDATE backfill.runs
   SET active_ms = greatest(0, (extract(epoch FROM
           (coalesce(finished_at, now()) - created_at)
           - coalesce(coalesce(promoted_at, now()) - canary_at, interval '0')) * 1000)::bigint),
       running_since = CASE WHEN state = 'running' THEN now() END;

CREATE FUNCTION backfill.runs_keep_active_time() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.active_ms := 0;
        NEW.running_since := CASE WHEN NEW.state = 'running' THEN now() END;
    ELSIF OLD.state = 'running' AND NEW.state <> 'running' THEN
        NEW.active_ms := OLD.active_ms
            + greatest(0, (extract(epoch FROM now() - OLD.running_since) * 1000)::bigint);
        NEW.running_since := NULL;
    ELSIF NEW.state = 'running' AND OLD.state <> 'running' THEN
        NEW.active_ms := OLD.active_ms;
        NEW.running_since := now();
    ELSE
        NEW.active_ms := OLD.active_ms;
        NEW.running_since := OLD.running_since;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER runs_keep_active_time
    BEFORE INSERT OR UPDATE ON backfill.runs
    FOR EACH ROW EXECUTE FUNCTION backfill.runs_keep_active_time();
