-- Append-only: never edit a migration that has shipped; add a new file instead.
CREATE TABLE tokens (
    id          text PRIMARY KEY,           -- the public part of the token
    tenant      text NOT NULL,
    name        text,
    scopes      text NOT NULL,              -- JSON array of scope names
    hash        bytea NOT NULL,             -- SHA-256 of the whole token; never the token
    created_at  bigint NOT NULL,
    expires_at  bigint,
    revoked_at  bigint
);

CREATE TABLE audit (
    seq         bigserial PRIMARY KEY,
    at          bigint NOT NULL,
    action      text NOT NULL,
    tenant      text,
    token_id    text,
    client      text,
    target      text,
    outcome     text NOT NULL,
    detail      text
);
CREATE INDEX audit_at ON audit (at);

-- Fair share: each replica keeps its schedule in memory (see src/perimeter.rs); the claim
-- finds tenants with queued jobs along this index.
CREATE INDEX jobs_queued_tenant ON jobs (tenant, id) WHERE status = 'queued';
