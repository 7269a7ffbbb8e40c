-- The ref a submission named (resolved to `sha` at submission), and what warden proved about the
-- worktree after the job (JSON: read_only_ok, clean_tree_ok, tree, changed paths).
ALTER TABLE jobs ADD COLUMN git_ref TEXT;
ALTER TABLE jobs ADD COLUMN invariants TEXT;
