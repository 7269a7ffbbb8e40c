-- Append-only: never edit a migration that has shipped; add a new file instead.
-- Webhooks, fed from the events outbox: a job's own callback URL (submitted with it), the
-- deliveries of each job event to each URL with their attempts, and how far the outbox has
-- been turned into deliveries.
CREATE TABLE job_callbacks (
    job_id  TEXT PRIMARY KEY,
    url     TEXT NOT NULL
) STRICT;

CREATE TABLE webhook_deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    seq          INTEGER NOT NULL,          -- the outbox event delivered
    job_id       TEXT NOT NULL,
    url          TEXT NOT NULL,
    body         BLOB NOT NULL,             -- the JSON event, as signed and sent
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      INTEGER NOT NULL,
    delivered_at INTEGER,
    gave_up      INTEGER NOT NULL DEFAULT 0,
    last_status  INTEGER,
    last_error   TEXT,
    created_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at)
    WHERE delivered_at IS NULL AND gave_up = 0;
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id, id);

CREATE TABLE webhook_cursor (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL
) STRICT;
INSERT INTO webhook_cursor (id, seq) VALUES (1, 0);
