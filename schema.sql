-- chatsvc schema: the current shape of the database, in one readable place.
-- A new database is made from it; an existing one is first brought up to date
-- by chatsvc/migrations/NNN_*.sql (chatsvc/migrate.py), then this is applied
-- again, so every statement is idempotent and a new table or index may simply
-- be added here. A change to an existing table needs a migration step too; a
-- test checks that a migrated database equals one made from this file.
-- Times are ISO 8601 UTC strings with milliseconds, produced by SQLite itself,
-- so rows are returned without conversion.

CREATE TABLE IF NOT EXISTS setting (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS user (
    id            INTEGER PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    nick_name     TEXT    NOT NULL,
    email         TEXT    NOT NULL,
    head_pic      TEXT    NOT NULL DEFAULT '',
    -- Bumped on every password change; tokens carry it, so older tokens die.
    token_version INTEGER NOT NULL DEFAULT 0,
    create_time   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    update_time   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- When the user last had a socket connected (the moment they came online or went offline); NULL if never.
    last_seen     TEXT
);

CREATE TABLE IF NOT EXISTS chatroom (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    type        INTEGER NOT NULL CHECK (type IN (0, 1)),  -- 0 one-to-one, 1 group
    -- "<smaller user id>:<larger user id>" for one-to-one rooms, NULL for
    -- groups: the unique index makes find-or-create safe under races.
    pair_key    TEXT,
    create_time TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    update_time TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- The room's newest message (kept by a trigger on chat_history); 0 if none.
    last_message_id INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS chatroom_pair_key ON chatroom (pair_key) WHERE pair_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS user_chatroom (
    user_id     INTEGER NOT NULL REFERENCES user (id),
    chatroom_id INTEGER NOT NULL REFERENCES chatroom (id),
    -- The newest message of the room the member has read (markRead, or one they sent); 0 if none.
    last_read_id INTEGER NOT NULL DEFAULT 0,
    role        TEXT    NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member')),
    -- When the membership began: the longest-standing admin or member succeeds a leaving owner.
    joined_at   TEXT,
    PRIMARY KEY (user_id, chatroom_id)
) WITHOUT ROWID;
-- Members of a room; the primary key already serves rooms of a user.
CREATE INDEX IF NOT EXISTS user_chatroom_by_room ON user_chatroom (chatroom_id, user_id);

CREATE TABLE IF NOT EXISTS chat_history (
    id            INTEGER PRIMARY KEY,
    content       TEXT    NOT NULL,
    type          INTEGER NOT NULL CHECK (type IN (0, 1, 2)),  -- 0 text, 1 image, 2 file
    chatroom_id   INTEGER NOT NULL REFERENCES chatroom (id),
    sender_id     INTEGER NOT NULL REFERENCES user (id),
    client_msg_id TEXT,
    create_time   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    update_time   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    edit_time     TEXT,
    deleted       INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1))
);
-- History pages: newest first within a room, and cursors on id.
CREATE INDEX IF NOT EXISTS chat_history_by_room ON chat_history (chatroom_id, id);
-- Idempotent sends: one stored message per (sender, client message id).
CREATE UNIQUE INDEX IF NOT EXISTS chat_history_client_msg
    ON chat_history (sender_id, client_msg_id) WHERE client_msg_id IS NOT NULL;
-- Search (chatsvc/store/sqlite.py): a trigram index of live text messages (substrings of three or more
-- characters, any case), and one of their pairs of CJK characters (two-character words). An entry's rowid
-- is chatroom_id * 2^32 + message id: each posting list is ordered by room, then by message, so a room's
-- matches are one rowid range that FTS5 seeks to and reads newest first (message ids below 2^32).
-- Contentless (the text lives in chat_history): an entry leaves the index with the text it entered with.
-- Sizes are kept (no columnsize = 0): without them FTS5 cannot list a contentless table, and dumps fail.
CREATE VIRTUAL TABLE IF NOT EXISTS chat_search USING fts5 (content, content = '', tokenize = 'trigram');
-- Two-character words: every pair of CJK characters (CJK and Hangul blocks, compatibility ideographs,
-- full-width forms, supplementary ideographs) of a live text message, as the hex of its UTF-8 so that any
-- character is a plain token; no positions are kept. chatsvc/store/sqlite.py spells a query's pair the same way.
CREATE VIRTUAL TABLE IF NOT EXISTS chat_search_pairs USING fts5 (pairs, content = '', detail = none);
-- The pairs of each live text message that has any (json_each of "[0,0,...]" numbers the characters: a
-- trigger may not use WITH RECURSIVE).
CREATE VIEW IF NOT EXISTS chat_search_pairs_source AS
SELECT h.id AS id, h.chatroom_id * 4294967296 + h.id AS entry, (
    SELECT group_concat(hex(substr(h.content, s.key + 1, 2)), ' ')
    FROM json_each('[' || substr(replace(hex(zeroblob(length(h.content))), '00', ',0'), 2) || ']') AS s
    WHERE substr(h.content, s.key + 1, 2) GLOB '[⺀-鿿가-힯豈-﫿＀-￯ᄀ-ᇿ𠀀-𿿿][⺀-鿿가-힯豈-﫿＀-￯ᄀ-ᇿ𠀀-𿿿]'
) AS pairs
FROM chat_history AS h
WHERE h.type = 0 AND h.deleted = 0 AND h.content GLOB '*[⺀-鿿가-힯豈-﫿＀-￯ᄀ-ᇿ𠀀-𿿿][⺀-鿿가-힯豈-﫿＀-￯ᄀ-ᇿ𠀀-𿿿]*';
-- The index holds every live text message up to indexed_id (with its current text), and none above it: storing
-- a message does not index it (FTS5 writes a segment per transaction, which cost more than the INSERT); the
-- writer indexes new messages in chunks when idle, and before each search (chatsvc/search_index.py).
-- Its own one-row table, not the setting table: the triggers compare an INTEGER without a cast, and
-- copy-to-postgres (which copies setting) carries no SQLite index state to an engine without this index.
CREATE TABLE IF NOT EXISTS chat_search_watermark (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_id INTEGER NOT NULL
);
INSERT OR IGNORE INTO chat_search_watermark (id, indexed_id) VALUES (1, 0);
-- A message leaves the index before its row changes (BEFORE: the pairs are read from the row as it was) and
-- comes back after (AFTER); SQLite runs BEFORE triggers first. Only an entry the index holds may be taken out (a
-- 'delete' of one it does not hold corrupts a contentless table): a message above the watermark is left to the
-- indexer, which indexes the text it has then. A new message is indexed at once only when its id is at or below
-- the watermark: ids are reused once the newest message is deleted, and the indexer looks above the watermark.
CREATE TRIGGER IF NOT EXISTS chat_search_insert AFTER INSERT ON chat_history
WHEN new.type = 0 AND new.deleted = 0 AND new.id <= (SELECT indexed_id FROM chat_search_watermark) BEGIN
    INSERT INTO chat_search (rowid, content) VALUES (new.chatroom_id * 4294967296 + new.id, new.content);
    INSERT INTO chat_search_pairs (rowid, pairs) SELECT entry, pairs FROM chat_search_pairs_source WHERE id = new.id;
END;
CREATE TRIGGER IF NOT EXISTS chat_search_unindex BEFORE UPDATE OF content, deleted, type, chatroom_id ON chat_history
WHEN old.type = 0 AND old.deleted = 0 AND old.id <= (SELECT indexed_id FROM chat_search_watermark) BEGIN
    INSERT INTO chat_search (chat_search, rowid, content)
    VALUES ('delete', old.chatroom_id * 4294967296 + old.id, old.content);
    INSERT INTO chat_search_pairs (chat_search_pairs, rowid, pairs)
    SELECT 'delete', entry, pairs FROM chat_search_pairs_source WHERE id = old.id;
END;
CREATE TRIGGER IF NOT EXISTS chat_search_reindex AFTER UPDATE OF content, deleted, type, chatroom_id ON chat_history
WHEN new.type = 0 AND new.deleted = 0 AND new.id <= (SELECT indexed_id FROM chat_search_watermark) BEGIN
    INSERT INTO chat_search (rowid, content) VALUES (new.chatroom_id * 4294967296 + new.id, new.content);
    INSERT INTO chat_search_pairs (rowid, pairs) SELECT entry, pairs FROM chat_search_pairs_source WHERE id = new.id;
END;
CREATE TRIGGER IF NOT EXISTS chat_search_delete BEFORE DELETE ON chat_history
WHEN old.type = 0 AND old.deleted = 0 AND old.id <= (SELECT indexed_id FROM chat_search_watermark) BEGIN
    INSERT INTO chat_search (chat_search, rowid, content)
    VALUES ('delete', old.chatroom_id * 4294967296 + old.id, old.content);
    INSERT INTO chat_search_pairs (chat_search_pairs, rowid, pairs)
    SELECT 'delete', entry, pairs FROM chat_search_pairs_source WHERE id = old.id;
END;
-- Sending a message moves the sender's read position to it, in the statement that stores the message.
CREATE TRIGGER IF NOT EXISTS chat_history_moves_sender_read AFTER INSERT ON chat_history BEGIN
    UPDATE user_chatroom SET last_read_id = NEW.id
    WHERE user_id = NEW.sender_id AND chatroom_id = NEW.chatroom_id AND last_read_id < NEW.id;
END;
-- Storing a message makes it its room's newest, in the statement that stores it.
CREATE TRIGGER IF NOT EXISTS chat_history_moves_room_last AFTER INSERT ON chat_history BEGIN
    UPDATE chatroom SET last_message_id = NEW.id WHERE id = NEW.chatroom_id AND last_message_id < NEW.id;
END;

CREATE TABLE IF NOT EXISTS friendship (
    user_id   INTEGER NOT NULL REFERENCES user (id),
    friend_id INTEGER NOT NULL REFERENCES user (id),
    PRIMARY KEY (user_id, friend_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS friend_request (
    id           INTEGER PRIMARY KEY,
    from_user_id INTEGER NOT NULL REFERENCES user (id),
    to_user_id   INTEGER NOT NULL REFERENCES user (id),
    reason       TEXT    NOT NULL DEFAULT '',
    status       INTEGER NOT NULL DEFAULT 0 CHECK (status IN (0, 1, 2)),  -- 0 pending, 1 agreed, 2 rejected
    create_time  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    update_time  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS friend_request_to ON friend_request (to_user_id, status);
CREATE INDEX IF NOT EXISTS friend_request_from ON friend_request (from_user_id, status);

CREATE TABLE IF NOT EXISTS favorite (
    id              INTEGER PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES user (id),
    chat_history_id INTEGER NOT NULL REFERENCES chat_history (id),
    create_time     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (user_id, chat_history_id)
);
-- A user's favorites newest first, without sorting.
CREATE INDEX IF NOT EXISTS favorite_by_user ON favorite (user_id, id);
-- Deleting a message drops the favorites of it.
CREATE INDEX IF NOT EXISTS favorite_by_message ON favorite (chat_history_id);

CREATE TABLE IF NOT EXISTS captcha (
    purpose    TEXT NOT NULL,  -- register | update_password | update_user
    address    TEXT NOT NULL,
    code       TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- Wrong guesses at this code; the code is burnt at the fifth (chatsvc/http/users.py).
    attempts   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (purpose, address)
) WITHOUT ROWID;
-- Purging expired codes on each new request.
CREATE INDEX IF NOT EXISTS captcha_by_expiry ON captcha (expires_at);

-- Uploaded files (chatsvc/files/): the bytes live in the file store under the unguessable name.
CREATE TABLE IF NOT EXISTS upload (
    name          TEXT    PRIMARY KEY,
    original_name TEXT    NOT NULL,
    content_type  TEXT    NOT NULL,
    size          INTEGER NOT NULL,
    uploader_id   INTEGER NOT NULL REFERENCES user (id),
    -- 1 once a message or a profile picture is found to refer to it: the sweep then keeps it.
    used          INTEGER NOT NULL DEFAULT 0 CHECK (used IN (0, 1)),
    create_time   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) WITHOUT ROWID;
-- The sweep's candidates: unused uploads, oldest first.
CREATE INDEX IF NOT EXISTS upload_unused ON upload (create_time) WHERE used = 0;

-- Webhooks for unseen messages (chatsvc/webhooks.py): one row per stored message while its delivery is pending.
CREATE TABLE IF NOT EXISTS webhook_outbox (
    message_id      INTEGER PRIMARY KEY REFERENCES chat_history (id),
    -- Sending attempts made so far; the next waits CHATSVC_WEBHOOK_BACKOFF * 2 ** attempts.
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- Set while one instance sends it; another may take it over once it has passed.
    lease_until     TEXT,
    -- The recipients, as a JSON array, fixed at the first attempt so every retry sends the same body.
    recipient_ids   TEXT,
    create_time     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
-- The sender's next deliveries, soonest first.
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (next_attempt_at);
