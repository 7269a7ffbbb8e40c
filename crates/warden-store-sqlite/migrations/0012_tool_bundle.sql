-- The tool bundle a submission chose by its SHA-256, and the variable that points at it.
ALTER TABLE jobs ADD COLUMN tool_bundle TEXT;
ALTER TABLE jobs ADD COLUMN tool_env_var TEXT;
