-- Log chunks in a rowid table. A WITHOUT ROWID table keeps each row inside its primary-key
-- B-tree, and to compare keys while seeking there SQLite reads a cell's whole record when it
-- overflows its page — a chunk of up to 1 MiB — so every append read back the chunks on its
-- path. Here the key lives in its own small index and the bytes in the table's leaves.
CREATE TABLE log_chunks_rowid (
    job_id  TEXT NOT NULL,
    stream  INTEGER NOT NULL,               -- 1 stdout, 2 stderr
    offset  INTEGER NOT NULL,               -- byte offset of the chunk's first byte
    data    BLOB NOT NULL,
    PRIMARY KEY (job_id, stream, offset)
) STRICT;
INSERT INTO log_chunks_rowid (job_id, stream, offset, data)
    SELECT job_id, stream, offset, data FROM log_chunks ORDER BY job_id, stream, offset;
DROP TABLE log_chunks;
ALTER TABLE log_chunks_rowid RENAME TO log_chunks;

CREATE TRIGGER log_chunks_outbox AFTER INSERT ON log_chunks
    WHEN (SELECT on_ FROM outbox_switch WHERE id = 1) = 1
BEGIN
    INSERT INTO event_outbox (job_id, tenant, kind, at, attempt, stream, offset)
    SELECT NEW.job_id, tenant, 'log', CAST(unixepoch('subsec') * 1000 AS INTEGER), attempts,
           NEW.stream, NEW.offset
    FROM jobs WHERE id = NEW.job_id;
END;
