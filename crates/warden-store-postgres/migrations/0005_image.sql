-- The image a job runs in, pinned to its digest at submission (`REF@sha256:…`).
ALTER TABLE jobs ADD COLUMN image text;
