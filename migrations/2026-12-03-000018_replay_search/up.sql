-- A bulk replay whose filter no index answers (an event type, stream or status code
-- without a small set to start from) searches the history in steps of bounded size, in
-- the background, instead of reading it whole in one request (7.2 s at 20 million
-- deliveries for a type that matched nothing; see docs/webhooks.md, "Deliveries and
-- replay"). Each step commits the deliveries it made due with where it stopped.
ALTER TABLE replays
    -- Older deliveries are still to be searched.
    ADD COLUMN searching      boolean NOT NULL DEFAULT false,
    -- The filter as parsed, for the steps that go on with it.
    ADD COLUMN search_filter  jsonb,
    -- The oldest delivery (creation time, id) searched so far: the next step starts below.
    ADD COLUMN searched_to_at timestamptz,
    ADD COLUMN searched_to_id uuid;
CREATE INDEX replays_searching_idx ON replays (created_at) WHERE searching;
