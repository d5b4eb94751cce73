-- Uploaded files (issue 16): what each unguessable name holds, and whether a message or profile refers to it.
CREATE TABLE upload (
    name          TEXT    PRIMARY KEY,
    original_name TEXT    NOT NULL,
    content_type  TEXT    NOT NULL,
    size          INTEGER NOT NULL,
    uploader_id   INTEGER NOT NULL REFERENCES user (id),
    -- 1 once a message or a profile picture is found to refer to it: the sweep then keeps it.
    used          INTEGER NOT NULL DEFAULT 0 CHECK (used IN (0, 1)),
    create_time   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) WITHOUT ROWID;
CREATE INDEX upload_unused ON upload (create_time) WHERE used = 0;
