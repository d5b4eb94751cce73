-- Presence and group roles (issue 15).
-- When the user last had a socket connected (the moment they came online or went offline); NULL if never since.
ALTER TABLE user ADD COLUMN last_seen TEXT;
-- A member's role in a group: 'owner' (one per group), 'admin' or 'member'; one-to-one rooms have members only.
ALTER TABLE user_chatroom ADD COLUMN role TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member'));
-- When the membership began (set by every insert; NULL for memberships older than this step): who stood longest.
ALTER TABLE user_chatroom ADD COLUMN joined_at TEXT;
-- No join time was stored before: the earliest member of an existing group is taken to be its lowest user id.
UPDATE user_chatroom SET role = 'owner'
WHERE chatroom_id IN (SELECT id FROM chatroom WHERE type = 1)
  AND user_id = (SELECT min(o.user_id) FROM user_chatroom AS o WHERE o.chatroom_id = user_chatroom.chatroom_id);
