-- Each room's newest message on its own row (issue 14): /chatroom/list and markRead read it instead of asking
-- for max(id) of the room's history, which PostgreSQL may answer by walking the whole history backwards.
ALTER TABLE chatroom ADD COLUMN last_message_id INTEGER NOT NULL DEFAULT 0;
UPDATE chatroom SET last_message_id = coalesce((SELECT max(id) FROM chat_history WHERE chatroom_id = chatroom.id), 0);
-- Storing a message makes it its room's newest, in the statement that stores it.
CREATE TRIGGER chat_history_moves_room_last AFTER INSERT ON chat_history BEGIN
    UPDATE chatroom SET last_message_id = NEW.id WHERE id = NEW.chatroom_id AND last_message_id < NEW.id;
END;
