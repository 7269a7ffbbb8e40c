-- Append-only: never edit a migration that has shipped; add a new file instead.
-- The events outbox: every job state change and every stored log chunk, written by triggers in
-- the transaction that makes the change, so what is published (NATS JetStream, webhooks) can
-- never disagree with the store, across crashes. Written only while `outbox_switch.on` (a
-- server with `events:` turns it on at start).
CREATE TABLE outbox_switch (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    on_ INTEGER NOT NULL
) STRICT;
INSERT INTO outbox_switch (id, on_) VALUES (1, 0);

CREATE TABLE event_outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id       TEXT NOT NULL,
    tenant       TEXT NOT NULL,
    kind         TEXT NOT NULL,            -- 'job' or 'log'
    at           INTEGER NOT NULL,         -- ms since the epoch
    -- kind 'job': the job's state after the change
    job_type     TEXT,
    status       TEXT,
    reason       TEXT,
    exit_code    INTEGER,
    attempt      INTEGER,                  -- both kinds: the job's attempt
    -- kind 'log': the chunk (its bytes stay in log_chunks)
    stream       INTEGER,
    offset       INTEGER,
    published_at INTEGER
) STRICT;
CREATE INDEX event_outbox_pending ON event_outbox (seq) WHERE published_at IS NULL;
CREATE INDEX event_outbox_at ON event_outbox (at);

CREATE TRIGGER jobs_outbox_insert AFTER INSERT ON jobs
    WHEN (SELECT on_ FROM outbox_switch WHERE id = 1) = 1
BEGIN
    INSERT INTO event_outbox (job_id, tenant, kind, at, job_type, status, reason, exit_code, attempt)
    VALUES (NEW.id, NEW.tenant, 'job', NEW.created_at, NEW.job_type, NEW.status, NEW.reason,
            NEW.exit_code, NEW.attempts);
END;

CREATE TRIGGER jobs_outbox_update AFTER UPDATE OF status ON jobs
    WHEN NEW.status <> OLD.status AND (SELECT on_ FROM outbox_switch WHERE id = 1) = 1
BEGIN
    INSERT INTO event_outbox (job_id, tenant, kind, at, job_type, status, reason, exit_code, attempt)
    VALUES (NEW.id, NEW.tenant, 'job',
            COALESCE(NEW.finished_at, CAST(unixepoch('subsec') * 1000 AS INTEGER)),
            NEW.job_type, NEW.status, NEW.reason, NEW.exit_code, NEW.attempts);
END;

CREATE TRIGGER log_chunks_outbox AFTER INSERT ON log_chunks
    WHEN (SELECT on_ FROM outbox_switch WHERE id = 1) = 1
BEGIN
    INSERT INTO event_outbox (job_id, tenant, kind, at, attempt, stream, offset)
    SELECT NEW.job_id, tenant, 'log', CAST(unixepoch('subsec') * 1000 AS INTEGER), attempts,
           NEW.stream, NEW.offset
    FROM jobs WHERE id = NEW.job_id;
END;

-- The publisher: one at a time over every process sharing the store (per-job order).
CREATE TABLE outbox_lease (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    owner       TEXT,
    expires_at  INTEGER NOT NULL
) STRICT;
INSERT INTO outbox_lease (id, owner, expires_at) VALUES (1, NULL, 0);
