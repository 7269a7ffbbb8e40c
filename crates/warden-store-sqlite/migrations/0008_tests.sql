-- A job's JUnit test counts (JSON), once it has ended; NULL for a job type without `results:`.
ALTER TABLE jobs ADD COLUMN tests TEXT;
-- Per-test results, per attempt, kept in the order the reports list them (the primary key);
-- `rank` orders failures first, then skipped, then passed, when read (a job has at most
-- 50,000: sorted on read rather than indexed on every insert).
CREATE TABLE test_results (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    suite TEXT NOT NULL,
    classname TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    duration_ms INTEGER,
    message TEXT,
    PRIMARY KEY (job_id, attempt, idx)
) STRICT, WITHOUT ROWID;
-- Flaky tests are found among the jobs of one type at one commit.
CREATE INDEX jobs_commit ON jobs (job_type, sha);
