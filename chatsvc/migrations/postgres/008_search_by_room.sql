-- Search by room, and CJK pairs (issue 15). The pg_trgm index of 004 served a search in one room by reading
-- every match of the word in every room, and a two-character word (CJK) not at all (no trigram to look up).
DROP INDEX chat_history_search;
-- The terms of a message in a room: "<room>x<gram>" for every three characters in a row (lower-cased), and
-- for every two in a row that are both CJK (CJK and Hangul blocks, compatibility ideographs, full-width
-- forms, supplementary ideographs). chatsvc/store/postgres.py looks a query's own terms up in the room's.
-- PL/pgSQL, not SQL: it keeps its plans between calls (a SQL function with a subquery is planned at every call,
-- four times slower per message written). Duplicate terms are left in: GIN keeps one of each.
CREATE FUNCTION chat_search_terms(room BIGINT, content TEXT) RETURNS TEXT[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    folded TEXT := lower(content);
    prefix TEXT := room || 'x';
    terms TEXT[] := '{}';
BEGIN
    FOR i IN 1 .. length(folded) - 2 LOOP
        terms := terms || (prefix || substr(folded, i, 3));
    END LOOP;
    IF content ~ '[⺀-鿿가-힯豈-﫿＀-￯ᄀ-ᇿ𠀀-𿿿][⺀-鿿가-힯豈-﫿＀-￯ᄀ-ᇿ𠀀-𿿿]' THEN
        FOR i IN 1 .. length(content) - 1 LOOP
            IF substr(content, i, 2) ~ '^[⺀-鿿가-힯豈-﫿＀-￯ᄀ-ᇿ𠀀-𿿿][⺀-鿿가-힯豈-﫿＀-￯ᄀ-ᇿ𠀀-𿿿]$' THEN
                terms := terms || (prefix || substr(content, i, 2));
            END IF;
        END LOOP;
    END IF;
    RETURN terms;
END
$$;
-- Live text messages by their terms: a search in one room reads that room's postings only.
CREATE INDEX chat_history_search ON chat_history USING gin (chat_search_terms(chatroom_id, content))
WHERE type = 0 AND deleted = 0;
