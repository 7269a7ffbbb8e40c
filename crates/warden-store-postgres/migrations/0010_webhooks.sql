-- Append-only: never edit a migration that has shipped; add a new file instead.
-- Webhooks, fed from the events outbox: a job's own callback URL (submitted with it), the
-- deliveries of each job event to each URL with their attempts, and how far the outbox has
-- been turned into deliveries.
CREATE TABLE job_callbacks (
    job_id  uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    url     text NOT NULL
);

CREATE TABLE webhook_deliveries (
    id           bigserial PRIMARY KEY,
    seq          bigint NOT NULL,
    job_id       uuid NOT NULL,
    url          text NOT NULL,
    body         bytea NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    next_at      bigint NOT NULL,
    delivered_at bigint,
    gave_up      boolean NOT NULL DEFAULT false,
    last_status  integer,
    last_error   text,
    created_at   bigint NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at)
    WHERE delivered_at IS NULL AND NOT gave_up;
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id, id);

CREATE TABLE webhook_cursor (
    id   integer PRIMARY KEY CHECK (id = 1),
    seq  bigint NOT NULL
);
INSERT INTO webhook_cursor (id, seq) VALUES (1, 0);
