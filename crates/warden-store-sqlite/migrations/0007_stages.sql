-- A staged job's stages (JSON), once it has ended; NULL for a job without stages.
ALTER TABLE jobs ADD COLUMN stages TEXT;
