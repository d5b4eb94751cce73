-- Read positions (issue 15): the newest message of the room each member has read, 0 if none.
ALTER TABLE user_chatroom ADD COLUMN last_read_id INTEGER NOT NULL DEFAULT 0;
-- Existing members start with everything read, so an upgrade does not light up every room as unread.
UPDATE user_chatroom
SET last_read_id = coalesce((SELECT max(id) FROM chat_history WHERE chatroom_id = user_chatroom.chatroom_id), 0);
-- Sending a message moves the sender's read position to it, in the statement that stores the message.
CREATE TRIGGER chat_history_moves_sender_read AFTER INSERT ON chat_history BEGIN
    UPDATE user_chatroom SET last_read_id = NEW.id
    WHERE user_id = NEW.sender_id AND chatroom_id = NEW.chatroom_id AND last_read_id < NEW.id;
END;
