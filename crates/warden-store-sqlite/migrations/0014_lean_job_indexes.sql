-- Append-only: never edit a migration that has shipped; add a new file instead.
-- Two index entries fewer written for every job. `jobs_queued` is read by nothing: claims go by
-- tenant along `jobs_queued_tenant`, a listing by status along `jobs_status`. `jobs_commit` is
-- read only with a commit's sha (a job type's flaky tests at a commit): jobs without one, which
-- run without a repository, no longer enter it.
DROP INDEX jobs_queued;
DROP INDEX jobs_commit;
CREATE INDEX jobs_commit ON jobs (job_type, sha) WHERE sha IS NOT NULL;
