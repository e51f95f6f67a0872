#!/usr/bin/env bash
# What daily partitions would cost Herald's hot statements, before building them.
#
# Builds two copies of the same 30 days of history in a scratch database: `flat_*` tables
# as Herald has them today, and `part_*` tables partitioned by day on their UUIDv7 ids
# (the layout docs/scaling.md discusses). Then times each hot statement on both with
# pgbench, prepared (generic plans, as Herald runs its hot statements) and simple
# (planned on every call):
#
#   read    a stream read at the stream's end (the hub's read after a hint)
#   insert  one event
#   due     the claim query's scan of due deliveries (FOR UPDATE SKIP LOCKED)
#   record  a delivery's outcome written by id
#
# usage: scripts/partition-probe.sh [ADMIN_URL] [EVENTS_PER_DAY]
#   ADMIN_URL  a PostgreSQL URL whose user may create databases
#              (default postgres://postgres@127.0.0.1/postgres)
# The scratch database `herald_partition_probe` is dropped at the end.
set -euo pipefail

ADMIN_URL=${1:-postgres://postgres@127.0.0.1/postgres}
PER_DAY=${2:-20000}
DAYS=30
STREAMS=1000
SECS=${SECS:-10}
DB=herald_partition_probe
URL=${ADMIN_URL%/*}/$DB
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true' EXIT

psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
psql -q -v ON_ERROR_STOP=1 "$URL" <<SQL
-- UUIDv7 at a given time (Herald's herald_uuid7(), with the time as an argument).
CREATE FUNCTION uuid7_at(ts timestamptz) RETURNS uuid LANGUAGE sql VOLATILE AS \$\$
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
        PLACING substring(int8send(floor(extract(epoch FROM ts) * 1000)::bigint) FROM 3)
        FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
\$\$;
-- The smallest UUIDv7 of a time: a partition bound.
CREATE FUNCTION uuid7_floor(ts timestamptz) RETURNS uuid LANGUAGE sql IMMUTABLE AS \$\$
    SELECT encode(substring(int8send(floor(extract(epoch FROM ts) * 1000)::bigint) FROM 3)
        || '\x70008000000000000000'::bytea, 'hex')::uuid
\$\$;

CREATE TABLE flat_events (
    id uuid PRIMARY KEY, stream text NOT NULL, seq bigint NOT NULL, event_type text NOT NULL,
    payload json NOT NULL, created_at timestamptz NOT NULL, UNIQUE (stream, seq));
CREATE TABLE part_events (
    id uuid PRIMARY KEY, stream text NOT NULL, seq bigint NOT NULL, event_type text NOT NULL,
    payload json NOT NULL, created_at timestamptz NOT NULL) PARTITION BY RANGE (id);
CREATE INDEX part_events_stream_seq ON part_events (stream, seq);

CREATE TABLE flat_deliveries (
    id uuid PRIMARY KEY, event_id uuid NOT NULL, endpoint_id uuid NOT NULL,
    status text NOT NULL, next_attempt_at timestamptz, updated_at timestamptz NOT NULL);
CREATE TABLE part_deliveries (
    id uuid PRIMARY KEY, event_id uuid NOT NULL, endpoint_id uuid NOT NULL,
    status text NOT NULL, next_attempt_at timestamptz, updated_at timestamptz NOT NULL)
    PARTITION BY RANGE (id);
CREATE INDEX flat_deliveries_due ON flat_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX part_deliveries_due ON part_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX flat_deliveries_event ON flat_deliveries (event_id);
CREATE INDEX part_deliveries_event ON part_deliveries (event_id);

-- One partition per day, the oldest $DAYS days ago, and two ahead.
DO \$\$
DECLARE d date;
BEGIN
  FOR i IN -$DAYS..2 LOOP
    d := current_date + i;
    EXECUTE format('CREATE TABLE part_events_%s PARTITION OF part_events FOR VALUES FROM (%L) TO (%L)',
                   to_char(d, 'YYYYMMDD'), uuid7_floor(d), uuid7_floor(d + 1));
    EXECUTE format('CREATE TABLE part_deliveries_%s PARTITION OF part_deliveries FOR VALUES FROM (%L) TO (%L)',
                   to_char(d, 'YYYYMMDD'), uuid7_floor(d), uuid7_floor(d + 1));
  END LOOP;
END \$\$;

-- $DAYS days of history: each stream's seq grows with time.
INSERT INTO flat_events
SELECT uuid7_at(now() - make_interval(secs => ($DAYS * 86400.0) * (1 - g::float8 / ($DAYS * $PER_DAY)))),
       's' || (g % $STREAMS), g / $STREAMS + 1, 'probe.event', '{"n":1}', now()
  FROM generate_series(0, $DAYS * $PER_DAY - 1) g;
INSERT INTO part_events SELECT * FROM flat_events;
INSERT INTO flat_deliveries
SELECT uuid7_at(now() - make_interval(secs => ($DAYS * 86400.0) * (1 - row_number() OVER (ORDER BY id) / ($DAYS * $PER_DAY)::float8))),
       id, '00000000-0000-7000-8000-000000000001', 'succeeded', NULL, now()
  FROM flat_events;
-- A few due retries, as a running queue has.
UPDATE flat_deliveries SET status = 'pending', next_attempt_at = now() - interval '1 s'
 WHERE id IN (SELECT id FROM flat_deliveries ORDER BY id DESC LIMIT 200);
INSERT INTO part_deliveries SELECT * FROM flat_deliveries;
VACUUM ANALYZE;
SQL

for layout in flat part; do
  cat >"$WORK/read-$layout.sql" <<SQL
\set s random(0, $((STREAMS - 1)))
SELECT id, seq, payload FROM ${layout}_events WHERE stream = 's' || :s AND seq > $((DAYS * PER_DAY / STREAMS - 1)) ORDER BY seq LIMIT 1000;
SQL
  cat >"$WORK/insert-$layout.sql" <<SQL
\set s random(0, $((STREAMS - 1)))
INSERT INTO ${layout}_events VALUES (uuid7_at(clock_timestamp()), 'new' || :s, nextval('seqs'), 'probe.event', '{"n":1}', now());
SQL
  cat >"$WORK/due-$layout.sql" <<SQL
BEGIN;
SELECT id FROM ${layout}_deliveries WHERE status = 'pending' AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT 40 FOR UPDATE SKIP LOCKED;
ROLLBACK;
SQL
  psql -qAt "$URL" -c "SELECT id FROM ${layout}_deliveries ORDER BY id DESC LIMIT 1" >"$WORK/recent-id"
  cat >"$WORK/record-$layout.sql" <<SQL
UPDATE ${layout}_deliveries SET updated_at = now() WHERE id = '$(cat "$WORK/recent-id")';
SQL
done
psql -q "$URL" -c "CREATE SEQUENCE seqs"

printf '%-7s %-9s %12s %12s\n' statement mode "flat ms" "30 days ms"
for statement in read insert due record; do
  for mode in prepared simple; do
    row=()
    for layout in flat part; do
      latency=$(pgbench -n -M "$mode" -c 1 -T "$SECS" -f "$WORK/$statement-$layout.sql" "$URL" 2>/dev/null \
        | awk '/latency average/ {print $4}')
      row+=("$latency")
    done
    printf '%-7s %-9s %12s %12s\n' "$statement" "$mode" "${row[0]}" "${row[1]}"
  done
done
psql -qAt "$URL" -c "SELECT 'sizes: flat_events ' || pg_size_pretty(pg_total_relation_size('flat_events')) || ', part_events ' || pg_size_pretty((SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits WHERE inhparent = 'part_events'::regclass)::bigint)"
