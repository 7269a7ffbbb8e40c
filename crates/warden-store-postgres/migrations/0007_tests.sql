-- A job's JUnit test counts (JSON), once it has ended; NULL for a job type without `results:`.
ALTER TABLE jobs ADD COLUMN tests text;
-- Per-test results, per attempt; `rank` orders failures first, then skipped, then passed.
CREATE TABLE test_results (
    job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    idx integer NOT NULL,
    rank integer NOT NULL,
    suite text NOT NULL,
    classname text NOT NULL,
    name text NOT NULL,
    status text NOT NULL,
    duration_ms bigint,
    message text,
    PRIMARY KEY (job_id, attempt, idx)
);
CREATE INDEX test_results_order ON test_results (job_id, attempt, rank, idx);
-- Flaky tests are found among the jobs of one type at one commit.
CREATE INDEX jobs_commit ON jobs (job_type, sha);
