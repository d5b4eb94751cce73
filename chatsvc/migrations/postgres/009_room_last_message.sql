-- Each room's newest message on its own row (issue 14): /chatroom/list and markRead read it instead of asking
-- for max(id) of the room's history, which PostgreSQL may answer by walking the whole history backwards.
ALTER TABLE chatroom ADD COLUMN last_message_id BIGINT NOT NULL DEFAULT 0;
-- One pass over the history, not a max() per room (the very lookup this column replaces).
UPDATE chatroom AS c SET last_message_id = newest.id
FROM (SELECT chatroom_id, max(id) AS id FROM chat_history GROUP BY chatroom_id) AS newest
WHERE c.id = newest.chatroom_id;
-- Storing messages makes the newest of each room its room's newest: once per statement, so a batch costs one
-- UPDATE.
CREATE FUNCTION chat_history_moves_room_last() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE chatroom AS c SET last_message_id = stored.id
    FROM (SELECT chatroom_id, max(id) AS id FROM new_messages GROUP BY chatroom_id) AS stored
    WHERE c.id = stored.chatroom_id AND c.last_message_id < stored.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER chat_history_moves_room_last AFTER INSERT ON chat_history
    REFERENCING NEW TABLE AS new_messages FOR EACH STATEMENT EXECUTE FUNCTION chat_history_moves_room_last();
