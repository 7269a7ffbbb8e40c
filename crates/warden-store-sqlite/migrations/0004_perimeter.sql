-- Append-only: never edit a migration that has shipped; add a new file instead.
CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,           -- the public part of the token
    tenant      TEXT NOT NULL,
    name        TEXT,
    scopes      TEXT NOT NULL,              -- JSON array of scope names
    hash        BLOB NOT NULL,              -- SHA-256 of the whole token; never the token
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
) STRICT;

CREATE TABLE audit (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    action      TEXT NOT NULL,
    tenant      TEXT,
    token_id    TEXT,
    client      TEXT,
    target      TEXT,
    outcome     TEXT NOT NULL,
    detail      TEXT
) STRICT;
CREATE INDEX audit_at ON audit (at);

-- Fair share: each tenant's pass and the scheduler's virtual time (see warden-store's fair.rs).
CREATE TABLE tenant_pass (
    tenant      TEXT PRIMARY KEY,
    pass        INTEGER NOT NULL
) STRICT;
CREATE TABLE scheduler (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    v           INTEGER NOT NULL
) STRICT;
INSERT INTO scheduler (id, v) VALUES (1, 0);

-- Per-tenant queue heads: the claim skips from tenant to tenant along this index.
CREATE INDEX jobs_queued_tenant ON jobs (tenant, id) WHERE status = 'queued';
