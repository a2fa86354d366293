-- The console acts for the person logged in to it. A session may name, in the
-- setting backfill.acting_role, the database role of the person it acts for,
-- but only a session whose user is a member of the group role backfill_console
-- (deploy/roles.sql grants it to the console's login) or a superuser is
-- believed: for any other session backfill.acting_role() is its own user,
-- whatever it sets. The two-person rule and the run log see that role, so an
-- approval from the console is held to the same rule as one from the CLI.
CREATE FUNCTION backfill.acting_role() RETURNS name
LANGUAGE plpgsql STABLE AS $$
DECLARE
    acting text := nullif(current_setting('backfill.acting_role', true), '');
BEGIN
    IF acting IS NOT NULL AND (
        (SELECT rolsuper FROM pg_roles WHERE rolname = session_user)
        OR (EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'backfill_console')
            AND pg_has_role(session_user, 'backfill_console', 'MEMBER'))) THEN
        RETURN acting::name;
    END IF;
    RETURN session_user;
END
$$;

ALTER TABLE backfill.run_log ALTER COLUMN session_role SET DEFAULT backfill.acting_role();

CREATE OR REPLACE FUNCTION backfill.require_reviewer(run uuid, what text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    reviewer_role name;
    owner_role name;
    acting name := backfill.acting_role();
BEGIN
    SELECT owner, reviewer INTO r FROM backfill.runs WHERE run_id = run;
    SELECT role INTO reviewer_role FROM backfill.people WHERE lower(name) = lower(r.reviewer);
    SELECT role INTO owner_role FROM backfill.people WHERE lower(name) = lower(r.owner);
    IF reviewer_role IS NULL THEN
        RAISE EXCEPTION 'the reviewer of run % (%) is not in backfill.people; map them to their database role: backfill people add % --role ROLE', run, r.reviewer, r.reviewer
            USING ERRCODE = '42501';
    END IF;
    IF acting <> reviewer_role OR acting = owner_role THEN
        RAISE EXCEPTION 'only % (database role %) may % run %; this session is role %', r.reviewer, reviewer_role, what, run, acting
            USING ERRCODE = '42501';
    END IF;
END
$$;
