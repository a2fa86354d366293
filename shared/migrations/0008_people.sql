-- Who people are: the names briefs use, mapped to the database roles the
-- warehouse authenticates (password, certificate, LDAP, Kerberos: as the site
-- has it). The two-person rule is kept here, by the database itself: only the
-- session of the reviewer's role approves a run or accepts a failed check,
-- never the owner's. Every run-log entry records the session user.
CREATE TABLE backfill.people (
    name  text PRIMARY KEY CHECK (btrim(name) <> ''),
    role  name NOT NULL UNIQUE,
    email text
);
CREATE UNIQUE INDEX people_by_lower_name ON backfill.people (lower(name));

ALTER TABLE backfill.run_log ADD COLUMN session_role name NOT NULL DEFAULT session_user;

-- Raises unless this session is the reviewer's role, and not the owner's.
CREATE FUNCTION backfill.require_reviewer(run uuid, what text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    reviewer_role name;
    owner_role name;
BEGIN
    SELECT owner, reviewer INTO r FROM backfill.runs WHERE run_id = run;
    SELECT role INTO reviewer_role FROM backfill.people WHERE lower(name) = lower(r.reviewer);
    SELECT role INTO owner_role FROM backfill.people WHERE lower(name) = lower(r.owner);
    IF reviewer_role IS NULL THEN
        RAISE EXCEPTION 'the reviewer of run % (%) is not in backfill.people; map them to their database role: backfill people add % --role ROLE', run, r.reviewer, r.reviewer
            USING ERRCODE = '42501';
    END IF;
    IF session_user <> reviewer_role OR session_user = owner_role THEN
        RAISE EXCEPTION 'only % (database role %) may % run %; this session is role %', r.reviewer, reviewer_role, what, run, session_user
            USING ERRCODE = '42501';
    END IF;
END
$$;

CREATE FUNCTION backfill.runs_approved_by_reviewer() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'approved'
       AND (OLD.state IS DISTINCT FROM 'approved' OR NEW.approved_validation IS DISTINCT FROM OLD.approved_validation) THEN
        PERFORM backfill.require_reviewer(NEW.run_id, 'approve');
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER runs_approved_by_reviewer
    BEFORE UPDATE ON backfill.runs
    FOR EACH ROW EXECUTE FUNCTION backfill.runs_approved_by_reviewer();

CREATE FUNCTION backfill.checks_accepted_by_reviewer() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM backfill.require_reviewer(
        (SELECT run_id FROM backfill.validation_runs WHERE id = NEW.validation_run),
        'accept a failed check of');
    RETURN NEW;
END
$$;

CREATE TRIGGER checks_accepted_by_reviewer
    BEFORE INSERT ON backfill.check_acceptances
    FOR EACH ROW EXECUTE FUNCTION backfill.checks_accepted_by_reviewer();
