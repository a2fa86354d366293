-- What a run measured before its first batch (`params`: the target's size
-- and health, the downstream metrics stakeholders quote, the dashboards'
-- query times) is what `validate` holds the run against, so it is fixed
-- when the run is recorded, as its brief is: an owner who rewrote the
-- figures before would make any change look expected.
CREATE FUNCTION backfill.runs_keep_what_they_measured() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF NEW.params IS DISTINCT FROM OLD.params THEN
        RAISE EXCEPTION 'run %: what it measured before its first batch (params) is fixed when it is recorded', OLD.run_id
            USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER runs_keep_what_they_measured
    BEFORE UPDATE OF params ON backfill.runs
    FOR EACH ROW EXECUTE FUNCTION backfill.runs_keep_what_they_measured();
