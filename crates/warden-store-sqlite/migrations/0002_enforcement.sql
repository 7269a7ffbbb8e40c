-- What enforced each limit of the job (JSON object: limit -> mechanism), recorded at completion.
ALTER TABLE jobs ADD COLUMN enforcement TEXT NOT NULL DEFAULT '{}';
