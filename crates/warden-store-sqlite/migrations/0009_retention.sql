-- Append-only: never edit a migration that has shipped; add a new file instead.
-- Bytes of a finished job's artifact files: with its log bytes, what retention's budget counts.
ALTER TABLE jobs ADD COLUMN artifact_bytes INTEGER NOT NULL DEFAULT 0;
-- The collector walks each tenant's finished jobs oldest first.
CREATE INDEX jobs_finished ON jobs (tenant, finished_at) WHERE finished_at IS NOT NULL;
-- One collector at a time over every process sharing the store (the lease of `gc_lease`).
CREATE TABLE gc_lease (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    owner       TEXT,
    expires_at  INTEGER NOT NULL
) STRICT;
INSERT INTO gc_lease (id, owner, expires_at) VALUES (1, NULL, 0);
