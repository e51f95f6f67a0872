-- How many long-polls, SSE streams and sockets one key may hold open per instance;
-- NULL: HERALD_MAX_WAITERS_PER_KEY.
ALTER TABLE api_keys ADD COLUMN max_held integer CHECK (max_held > 0);
