-- A queued job's notification names its tenant: every replica's fair-share schedule keeps the
-- set of tenants with queued jobs (`perimeter.rs`) and learns of another replica's submissions
-- from it, so that a claim asks the database for one tenant's oldest job instead of looking at
-- every tenant. (The payload was the job type, which no listener read.)
CREATE OR REPLACE FUNCTION warden_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'queued' THEN
        PERFORM pg_notify('warden_queued', NEW.tenant);
    END IF;
    PERFORM pg_notify('warden_job', NEW.id::text);
    RETURN NULL;
END
$$;
