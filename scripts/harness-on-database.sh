#!/bin/bash
# Runs the peer harness's load phases against one Herald serving a database you choose:
# a copy of a filled one (herald bench fill), a big one in place, or a fresh one; with any
# HERALD_RETENTION, so retention can purge while the load runs. Used for the figures in
# docs/benchmarks.md ("2 million and 20 million deliveries", "Retention while ingest and
# delivery run").
#
# usage, from the project root:
#   [TEMPLATE=fill2m] [DB=scratch] [PHASES="warmup ingest latency"] [LAT_SECS=30] \
#   [RETENTION=30d] scripts/harness-on-database.sh target/release/herald OUTDIR
# TEMPLATE: copy this database into DB first (DB is dropped and re-created); without it,
# DB is used as it is. Needs PostgreSQL on 127.0.0.1:5432 with trust for user postgres,
# and whbench built as the harness's README says (WHBENCH, default
# /tmp/whbench/release/whbench).
set -euo pipefail
BIN=$(realpath "${1:?herald binary}"); OUT=${2:?output folder}; mkdir -p "$OUT"
HARNESS=$(realpath "$(dirname "$0")/../../shared/peer-harness")
WHBENCH=${WHBENCH:-/tmp/whbench/release/whbench}
DB=${DB:-scratch}; PORT=${HERALD_PORT:-18093}; RECV_PORT=${RECV_PORT:-9093}
KEY=hk_harness_$(date +%s%N)
if [ -n "${TEMPLATE:-}" ]; then
  psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB TEMPLATE $TEMPLATE"
fi
export DATABASE_URL=postgres://postgres@127.0.0.1/$DB HERALD_LISTEN=127.0.0.1:$PORT \
  HERALD_ADMIN_KEY=$KEY HERALD_ALLOWED_DESTINATIONS=127.0.0.0/8 \
  HERALD_RETENTION=${RETENTION:-30d} RUST_LOG=warn,herald::retention=info,herald::partitions=info
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
"$WHBENCH" receiver --listen 127.0.0.1:$RECV_PORT --out "$OUT/recv.tsv" --id-header webhook-id \
  --seq-key bseq 2> "$OUT/receiver.log" & PIDS+=($!)
python3 "$HARNESS/procsample.py" --out "$OUT/samples.tsv" --interval 0.25 --rss-group server \
  --group server='herald serve' --group postgres='(^postgres|bin/postgres )' \
  --group receiver='whbench receiver' --group loadgen='whbench load' & PIDS+=($!)
"$BIN" serve > "$OUT/herald.log" 2>&1 & SERVER=$!; PIDS+=($SERVER)
for _ in $(seq 1 150); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.2; done
# Only the load's type: endpoints of a fill subscribe to the fill's types only.
curl -fsS -X POST "http://127.0.0.1:$PORT/v1/endpoints" -H "Authorization: Bearer $KEY" \
  -H 'Content-Type: application/json' \
  -d "{\"url\":\"http://127.0.0.1:$RECV_PORT/hook\",\"description\":\"bench\",\"event_types\":[\"bench.event\"]}" \
  > "$OUT/endpoint.json"
# Events purged so far, once a second (time, count).
( while kill -0 $SERVER 2>/dev/null; do
    echo "$(date +%s.%N) $(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^herald_events_purged_total /{print $2}')"
    sleep 1
  done ) > "$OUT/purged.tsv" & PIDS+=($!)
export BODY='{"stream":"bench","type":"bench.event","payload":{"bseq":{seq},"t_send_ns":{t_send_ns},"pad":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}}'
export WHBENCH MSG_URL="http://127.0.0.1:$PORT/v1/events" AUTH="Authorization: Bearer $KEY" \
  RECV_FILE="$OUT/recv.tsv" RECV_STATS="http://127.0.0.1:$RECV_PORT/__stats" SAMPLES="$OUT/samples.tsv"
PHASES=${PHASES:-"warmup ingest latency"} LAT_SECS=${LAT_SECS:-30} "$HARNESS/phases.sh" "$OUT" > "$OUT/phases.log" 2>&1
python3 "$HARNESS/analyze.py" summary "$OUT/results.jsonl" | tee "$OUT/summary.txt"
awk 'NR==1{t0=$1} $2>0 && $2!=last{last=$2; t=$1} END {if (last) printf "purged %d events, the last %.0f s after the start\n", last, t-t0}' "$OUT/purged.tsv"
