-- Edit, delete and search (issue 15). An edited message keeps its id and gains edit_time; a deleted one keeps
-- its place (id, room, sender, time, type) with its content erased.
ALTER TABLE chat_history ADD COLUMN edit_time TIMESTAMPTZ;
-- Deleting a message drops the favorites of it.
CREATE INDEX favorite_by_message ON favorite (chat_history_id);
ALTER TABLE chat_history ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1));
-- Search: a trigram index of live text messages, for ILIKE '%...%' (pg_trgm ships with PostgreSQL, and is
-- trusted: the database's owner may create it). Built here for the rows already stored.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX chat_history_search ON chat_history USING gin (content gin_trgm_ops) WHERE type = 0 AND deleted = 0;
