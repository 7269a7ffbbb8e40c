-- Append-only: never edit a migration that has shipped; add a new file instead.
-- An inline job's own argv (JSON array); NULL for a job type's argv.
ALTER TABLE jobs ADD COLUMN inline_argv text;
