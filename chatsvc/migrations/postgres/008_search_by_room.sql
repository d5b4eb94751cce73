-- Search by room, and CJK pairs (issue 15). The pg_trgm index of 004 served a search in one room by reading
-- every match of the word in every room, and a two-character word (CJK) not at all (no trigram to look up).
DROP INDEX chat_history_search;
-- The terms of a message in a room: "<room>x<gram>" for every three characters in a row (lower-cased), and
-- for every two in a row that are both CJK (CJK and Hangul blocks, compatibility ideographs, full-width
-- forms, supplementary ideographs). chatsvc/store/postgres.py looks a query's own terms up in the room's.
CREATE FUNCTION chat_search_terms(room BIGINT, content TEXT) RETURNS TEXT[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(DISTINCT term), '{}') FROM (
        SELECT room || 'x' || lower(substr(content, i, 3)) AS term FROM generate_series(1, length(content) - 2) AS i
        UNION ALL
        SELECT room || 'x' || substr(content, i, 2) FROM generate_series(1, length(content) - 1) AS i
        WHERE substr(content, i, 2) ~ '^[⺀-鿿가-힯豈-﫿＀-￯ᄀ-ᇿ𠀀-𿿿][⺀-鿿가-힯豈-﫿＀-￯ᄀ-ᇿ𠀀-𿿿]$'
    ) AS grams
$$;
-- Live text messages by their terms: a search in one room reads that room's postings only.
CREATE INDEX chat_history_search ON chat_history USING gin (chat_search_terms(chatroom_id, content))
WHERE type = 0 AND deleted = 0;
