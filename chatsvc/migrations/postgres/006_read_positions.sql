-- Read positions (issue 15): the newest message of the room each member has read, 0 if none.
ALTER TABLE user_chatroom ADD COLUMN last_read_id BIGINT NOT NULL DEFAULT 0;
-- Existing members start with everything read, so an upgrade does not light up every room as unread.
UPDATE user_chatroom AS m
SET last_read_id = coalesce((SELECT max(id) FROM chat_history WHERE chatroom_id = m.chatroom_id), 0);
-- Sending a message moves the sender's read position to it, in the statement that stores the message:
-- once per statement, so a batch of messages costs one UPDATE.
CREATE FUNCTION chat_history_moves_sender_read() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE user_chatroom AS m SET last_read_id = sent.id
    FROM (SELECT sender_id, chatroom_id, max(id) AS id FROM new_messages GROUP BY sender_id, chatroom_id) AS sent
    WHERE m.user_id = sent.sender_id AND m.chatroom_id = sent.chatroom_id AND m.last_read_id < sent.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER chat_history_moves_sender_read AFTER INSERT ON chat_history
    REFERENCING NEW TABLE AS new_messages FOR EACH STATEMENT EXECUTE FUNCTION chat_history_moves_sender_read();
