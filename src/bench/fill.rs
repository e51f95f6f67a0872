//! `herald bench fill`: a database with history, for measuring what operators' views cost
//! as tables grow. Writes straight through SQL (`INSERT ... SELECT generate_series`) as
//! fast as PostgreSQL takes it, in chunks, with the same shape Herald writes: events with
//! time-ordered (UUIDv7) ids spread evenly over `--span` up to now, one delivery per event
//! plus a second one for 15% of them, one attempt per delivery, about 0.5% of events
//! failed (HTTP 503; picked by a hash of their number, so spread over endpoints and time) at
//! their first endpoint and the rest succeeded, and the streams' counters set
//! so that new events continue the sequences. The same options give the same data (apart
//! from ids' random bits): a repeatable data set.
//!
//! The endpoints it creates subscribe only to the fill's event types (`fill.0`..`fill.9`), so
//! events published later (benchmarks) are not fanned out to them.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;

use crate::domain::units::parse_duration;

/// Options of `herald bench fill`.
#[derive(Debug, Args)]
pub struct FillOptions {
    /// The database to fill (migrated first if needed).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Events to write.
    #[arg(long, default_value_t = 2_000_000)]
    pub events: i64,
    /// Streams the events are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub streams: i64,
    /// Endpoints the deliveries go to.
    #[arg(long, default_value_t = 50)]
    pub endpoints: i64,
    /// The history's time span, ending now.
    #[arg(long, default_value = "1d", value_parser = parse_duration)]
    pub span: Duration,
    /// Events written per statement.
    #[arg(long, default_value_t = 100_000)]
    pub chunk: i64,
}

/// A UUIDv7 from a timestamp and a number (its random bits from the number's MD5).
const UUID7: &str = "CREATE FUNCTION pg_temp.fill_uuid7(ts timestamptz, n bigint) RETURNS uuid \
    LANGUAGE sql IMMUTABLE AS $$ SELECT (lpad(to_hex(floor(extract(epoch FROM ts) * 1000)::bigint), 12, '0') \
    || '7' || substr(md5(n::text), 1, 3) || '8' || substr(md5(n::text), 4, 15))::uuid $$";

/// One chunk: events `$1..$2` of `$3`, over `$4` streams, timestamps from `$5` (Unix ms)
/// over `$6` ms, deliveries to the endpoints `$7`.
const CHUNK: &str = "
WITH ev AS (
  INSERT INTO events (id, stream, seq, event_type, payload, created_at)
  SELECT pg_temp.fill_uuid7(ts, i), 'fill-' || (i % $4::int8), i / $4::int8 + 1, 'fill.' || (i % 10),
         json_build_object('n', i, 'amount_cents', i % 100000, 'currency', 'EUR'), ts
    FROM (SELECT i, to_timestamp(($5::int8 + i * ($6::int8::float8 / $3::int8)) / 1000.0) AS ts
            FROM generate_series($1::int8, $2::int8 - 1) AS i) AS g
  RETURNING id, stream, seq, event_type, created_at
), d AS (
  INSERT INTO deliveries (id, event_id, endpoint_id, stream, seq, event_type, status, attempts,
                          last_status_code, last_error, created_at, updated_at)
  SELECT pg_temp.fill_uuid7(ev.created_at, -(2 * x.i + k + 1)), ev.id,
         ($7::text[])[(1 + (x.i + k) % cardinality($7::text[]))::int4]::uuid, ev.stream, ev.seq, ev.event_type,
         CASE WHEN x.failed THEN 'failed' ELSE 'succeeded' END, CASE WHEN x.failed THEN 8 ELSE 1 END,
         CASE WHEN x.failed THEN 503 ELSE 200 END,
         CASE WHEN x.failed THEN 'the receiver answered HTTP 503' END,
         ev.created_at, ev.created_at + interval '40 ms'
    FROM ev
   CROSS JOIN LATERAL (SELECT (ev.seq - 1) * $4::int8 + substr(ev.stream, 6)::int8 AS i) AS j
   CROSS JOIN LATERAL generate_series(0, CASE WHEN j.i % 20 < 3 THEN 1 ELSE 0 END) AS k
   CROSS JOIN LATERAL (SELECT j.i, k = 0 AND abs(hashint8(j.i)) % 200 = 0 AS failed) AS x
  RETURNING id, created_at, last_status_code
)
INSERT INTO attempts (id, delivery_id, started_at, duration_ms, trigger, request_headers,
                      response_status, response_body)
SELECT pg_temp.fill_uuid7(d.created_at, hashtextextended(d.id::text, 1)), d.id, d.created_at,
       40, 'schedule', '{\"content-type\": \"application/json\"}'::jsonb, d.last_status_code,
       CASE WHEN d.last_status_code = 200 THEN 'ok' ELSE 'upstream unavailable' END
  FROM d";

/// Fills the database.
pub async fn run(options: FillOptions) -> anyhow::Result<()> {
    if options.events < 1 || options.streams < 1 || options.endpoints < 1 || options.chunk < 1 {
        anyhow::bail!("--events, --streams, --endpoints and --chunk must be at least 1");
    }
    let url = options.database_url.clone();
    tokio::task::spawn_blocking(move || crate::db::run_migrations(&url)).await??;
    let (client, connection) =
        tokio_postgres::connect(&options.database_url, tokio_postgres::NoTls)
            .await
            .context("connect to DATABASE_URL")?;
    tokio::spawn(connection);
    // Bulk loading: a lost tail of a fill is no loss.
    client.batch_execute("SET synchronous_commit = off").await?;
    client.batch_execute(UUID7).await?;

    let types: Vec<String> = (0..10).map(|n| format!("fill.{n}")).collect();
    let endpoints: Vec<String> = (0..options.endpoints)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    for (n, id) in endpoints.iter().enumerate() {
        client
            .execute(
                "INSERT INTO endpoints (id, url, description, event_types, secret, last_success_at) \
                 VALUES ($1::text::uuid, $2, 'bench fill', $3, decode(md5($2), 'hex'), now())",
                &[id, &format!("https://fill-{n}.example/webhooks"), &types],
            )
            .await?;
    }

    let span_ms = i64::try_from(options.span.as_millis()).unwrap_or(i64::MAX);
    let start_ms = chrono::Utc::now().timestamp_millis() - span_ms;
    // The days the history falls on need their partitions (a running Herald makes today's
    // and the next days' only).
    client
        .execute(
            "SELECT herald_ensure_partitions((to_timestamp($1::int8 / 1000.0) AT TIME ZONE 'UTC')::date, \
                                             (now() AT TIME ZONE 'UTC')::date)",
            &[&start_ms],
        )
        .await?;
    let started = Instant::now();
    let mut done = 0_i64;
    while done < options.events {
        let end = (done + options.chunk).min(options.events);
        client
            .execute(
                CHUNK,
                &[
                    &done,
                    &end,
                    &options.events,
                    &options.streams,
                    &start_ms,
                    &span_ms,
                    &endpoints,
                ],
            )
            .await
            .with_context(|| format!("write events {done}..{end}"))?;
        done = end;
        println!(
            "{done} events ({:.0} events/s)",
            done as f64 / started.elapsed().as_secs_f64()
        );
    }
    client
        .execute(
            "INSERT INTO streams (name, last_seq) \
             SELECT 'fill-' || s, ($1::int8 - s + $2::int8 - 1) / $2::int8 \
               FROM generate_series(0, LEAST($2::int8, $1::int8) - 1) AS s \
             ON CONFLICT (name) DO UPDATE SET last_seq = GREATEST(streams.last_seq, EXCLUDED.last_seq)",
            &[&options.events, &options.streams],
        )
        .await?;
    // The delivery counters as a running Herald keeps them: its rollup task folds closed
    // minutes into hours as it goes, and autovacuum reuses the space. Written in bulk, a
    // day of minute rows folded at once would leave the table mostly dead space.
    let mut conn = {
        use diesel_async::AsyncConnection as _;
        diesel_async::AsyncPgConnection::establish(&options.database_url).await?
    };
    crate::db::models::overview::fold(&mut conn).await?;
    client
        .batch_execute("VACUUM (FULL, ANALYZE) delivery_counts")
        .await?;
    client.batch_execute("ANALYZE").await?;

    let counts = client
        .query_one(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM deliveries), \
                    (SELECT count(*) FROM deliveries WHERE status = 'failed'), \
                    (SELECT count(*) FROM attempts), pg_database_size(current_database())",
            &[],
        )
        .await?;
    let (events, deliveries, failed, attempts, bytes): (i64, i64, i64, i64, i64) = (
        counts.get(0),
        counts.get(1),
        counts.get(2),
        counts.get(3),
        counts.get(4),
    );
    println!(
        "filled in {:.1} s: {events} events, {deliveries} deliveries ({failed} failed), \
         {attempts} attempts, {} endpoints; database {:.2} GB ({:.2} GB per million deliveries)",
        started.elapsed().as_secs_f64(),
        options.endpoints,
        bytes as f64 / 1e9,
        bytes as f64 / 1e9 / (deliveries.max(1) as f64 / 1e6)
    );
    Ok(())
}
