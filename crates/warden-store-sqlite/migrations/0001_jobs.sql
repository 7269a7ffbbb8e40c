-- Append-only: never edit a migration that has shipped; add a new file instead.
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,      -- UUIDv7, sorts by creation
    tenant           TEXT NOT NULL,
    job_type         TEXT NOT NULL,
    repo_name        TEXT,
    remote_url       TEXT,
    sha              TEXT,
    params           TEXT NOT NULL,         -- JSON object
    idempotency_key  TEXT,
    status           TEXT NOT NULL,
    reason           TEXT,
    exit_code        INTEGER,
    signal           INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    unsafe_fallback  INTEGER NOT NULL DEFAULT 0,
    warnings         TEXT NOT NULL DEFAULT '[]',
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    stdout_bytes     INTEGER NOT NULL DEFAULT 0,
    stderr_bytes     INTEGER NOT NULL DEFAULT 0,
    log_truncated    INTEGER NOT NULL DEFAULT 0,
    resources        TEXT,                  -- JSON ResourceUsage
    lease_owner      TEXT,
    lease_token      INTEGER NOT NULL DEFAULT 0,
    lease_expires_at INTEGER
) STRICT;

CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The claim path only ever looks at queued rows; keep it off the finished history.
CREATE INDEX jobs_queued ON jobs (id) WHERE status = 'queued';
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX jobs_status ON jobs (status, id);

CREATE TABLE log_chunks (
    job_id  TEXT NOT NULL,
    stream  INTEGER NOT NULL,               -- 1 stdout, 2 stderr
    offset  INTEGER NOT NULL,               -- byte offset of the chunk's first byte
    data    BLOB NOT NULL,
    PRIMARY KEY (job_id, stream, offset)
) STRICT, WITHOUT ROWID;
