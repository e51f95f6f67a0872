-- Each endpoint's last error kept on its row, written by the recorder as attempts fail,
-- instead of looked up in its deliveries: the overview probed an index of deliveries with
-- an error in each of the last week's day partitions for every endpoint (3.8 of its 7.8
-- ms at 20 million deliveries; see docs/benchmarks.md).
ALTER TABLE endpoints ADD COLUMN last_error text, ADD COLUMN last_error_at timestamptz;

-- What an existing installation's overview showed: the most recent error among the last
-- week's deliveries (the index below answers it with a probe per endpoint and day).
UPDATE endpoints e
   SET (last_error, last_error_at) =
       (SELECT x.last_error, x.updated_at FROM deliveries x
         WHERE x.endpoint_id = e.id AND x.last_error IS NOT NULL
           AND x.event_id >= herald_day_id((now() AT TIME ZONE 'UTC')::date - 7)
         ORDER BY x.updated_at DESC LIMIT 1);

-- Nothing reads it any more, and every retry wrote to it.
DROP INDEX deliveries_endpoint_error_idx;
