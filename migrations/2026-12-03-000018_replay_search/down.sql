DROP INDEX replays_searching_idx;
ALTER TABLE replays DROP COLUMN searching, DROP COLUMN search_filter,
    DROP COLUMN searched_to_at, DROP COLUMN searched_to_id;
