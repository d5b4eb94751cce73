-- The twin of SQLite's step 010 (every SQLite step has one with the same number): nothing to do here.
-- PostgreSQL's search index (the GIN expression index of 008) is kept by PostgreSQL itself, and a GIN index
-- already defers its work off the INSERT (its pending list), so it has no watermark.
SELECT 1;
