#!/usr/bin/env bash
# Times the console's calls (`herald bench views`) against an API-only Herald serving an
# existing database: the commands of docs/benchmarks.md "2 million and 20 million
# deliveries" in one step.
#
# usage: scripts/views-on-database.sh HERALD_BINARY DATABASE [REPEAT]
#   DATABASE   a database on postgres://postgres@127.0.0.1 (e.g. one `herald bench fill` made)
#   REPEAT     timed calls per view (default 20; each view is warmed first, see --warmup)
# Starting the binary applies its pending migrations to DATABASE first; the time they took
# is printed.
set -euo pipefail
bin=$1
db=$2
repeat=${3:-20}
url=postgres://postgres@127.0.0.1/$db
key=hk_views_$(date +%s%N)
start=$(date +%s.%N)
DATABASE_URL=$url "$bin" migrate >/dev/null
echo "migrations: $(echo "$(date +%s.%N) - $start" | bc) s"
DATABASE_URL=$url HERALD_DELIVERY_CONCURRENCY=0 HERALD_LISTEN=127.0.0.1:18082 \
  HERALD_ADMIN_KEY=$key RUST_LOG=warn "$bin" serve >/tmp/views-serve.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 150); do
  curl -fs -o /dev/null http://127.0.0.1:18082/readyz && break
  sleep 0.2
done
HERALD_URL=http://127.0.0.1:18082 HERALD_API_KEY=$key "$bin" bench views --repeat "$repeat"
