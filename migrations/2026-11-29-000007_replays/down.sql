DROP INDEX deliveries_replay_idx;
ALTER TABLE deliveries DROP COLUMN replay_id;
DROP TABLE replays;
