-- Append-only: never edit a migration that has shipped; add a new file instead.
-- The events outbox: every job state change and every stored log chunk, written by triggers in
-- the transaction that makes the change, so what is published (NATS JetStream, webhooks) can
-- never disagree with the store, across crashes. Written only while `outbox_switch.on_` (a
-- replica with `events:` turns it on at start). Per job, a later change's row always has the
-- larger seq and commits later: both take the job's row lock first.
CREATE TABLE outbox_switch (
    id  integer PRIMARY KEY CHECK (id = 1),
    on_ boolean NOT NULL
);
INSERT INTO outbox_switch (id, on_) VALUES (1, false);

CREATE TABLE event_outbox (
    seq          bigserial PRIMARY KEY,
    job_id       uuid NOT NULL,
    tenant       text NOT NULL,
    kind         text NOT NULL,
    at           bigint NOT NULL,
    job_type     text,
    status       text,
    reason       text,
    exit_code    integer,
    attempt      integer,
    stream       smallint,
    "offset"     bigint,
    published_at bigint
);
CREATE INDEX event_outbox_pending ON event_outbox (seq) WHERE published_at IS NULL;
CREATE INDEX event_outbox_at ON event_outbox (at);

CREATE FUNCTION warden_outbox_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT on_ FROM outbox_switch WHERE id = 1) THEN
        INSERT INTO event_outbox (job_id, tenant, kind, at, job_type, status, reason, exit_code, attempt)
        VALUES (NEW.id, NEW.tenant, 'job',
                COALESCE(NEW.finished_at, (extract(epoch FROM clock_timestamp()) * 1000)::bigint),
                NEW.job_type, NEW.status, NEW.reason, NEW.exit_code, NEW.attempts);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_outbox_insert AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION warden_outbox_job();
CREATE TRIGGER jobs_outbox_update AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status)
    EXECUTE FUNCTION warden_outbox_job();

CREATE FUNCTION warden_outbox_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT on_ FROM outbox_switch WHERE id = 1) THEN
        INSERT INTO event_outbox (job_id, tenant, kind, at, attempt, stream, "offset")
        SELECT NEW.job_id, tenant, 'log', (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
               attempts, NEW.stream, NEW."offset"
        FROM jobs WHERE id = NEW.job_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER log_chunks_outbox AFTER INSERT ON log_chunks
    FOR EACH ROW EXECUTE FUNCTION warden_outbox_log();

CREATE TABLE outbox_lease (
    id          integer PRIMARY KEY CHECK (id = 1),
    owner       text,
    expires_at  bigint NOT NULL
);
INSERT INTO outbox_lease (id, owner, expires_at) VALUES (1, NULL, 0);
