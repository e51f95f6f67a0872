//! Day partitions of `events`, `deliveries` and `attempts` (migration 000016): created
//! ahead of time, dropped whole by retention.
//!
//! Each UTC day has one partition of each table (`events_p20261203`, ...), listed in
//! `herald_partitions`; an installation that had history before the migration also has
//! `*_legacy` partitions holding everything before the day after it. [`ensure`] creates the
//! partitions for today and the next [`DAYS_AHEAD`] days; it runs before an instance serves
//! and then every [`ENSURE_INTERVAL`], so a publish always finds its partition even after
//! days of downtime. [`drop_before`] takes partitions whose every row is older than a
//! cutoff out of their tables without blocking publishing or delivery
//! (`DETACH PARTITION ... CONCURRENTLY`), then drops them.

use std::time::Duration;

use diesel::sql_types::{BigInt, Date, Nullable, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::DbPool;

/// Days after today that always have their partitions.
pub const DAYS_AHEAD: i32 = 2;
/// How often [`ensure`] runs.
pub const ENSURE_INTERVAL: Duration = Duration::from_secs(3600);
/// The partitioned tables, each split by the same days.
const TABLES: [&str; 3] = ["attempts", "deliveries", "events"];
/// Drops by one instance at a time (a session advisory lock; other instances skip).
const DROP_LOCK: i64 = 0x4845_5241_4c44_5054; // "HERALDPT"

/// Creates the partitions for today and the next [`DAYS_AHEAD`] days that do not exist
/// yet; returns how many days it created.
pub async fn ensure(pool: &DbPool) -> anyhow::Result<i64> {
    let mut conn = pool.get().await?;
    Ok(ensure_on(&mut conn).await?)
}

/// [`ensure`] on a connection of the caller's.
pub async fn ensure_on(conn: &mut diesel_async::AsyncPgConnection) -> diesel::QueryResult<i64> {
    #[derive(diesel::QueryableByName)]
    struct Created {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let created: Created = diesel::sql_query(
        "SELECT herald_ensure_partitions(d, d + $1::int4)::int8 AS n \
           FROM (SELECT (now() AT TIME ZONE 'UTC')::date AS d) AS today",
    )
    .bind::<BigInt, _>(i64::from(DAYS_AHEAD))
    .get_result(conn)
    .await?;
    Ok(created.n)
}

/// Whether a write failed because the day it belongs to has no partition yet (the hourly
/// [`run`] fell behind, or the clock jumped): [`ensure_on`] and a retry fix it.
pub fn is_missing_partition(err: &diesel::result::Error) -> bool {
    matches!(err, diesel::result::Error::DatabaseError(_, info)
        if info.message().starts_with("no partition of relation"))
}

/// Runs [`ensure`] every [`ENSURE_INTERVAL`] until `cancel`.
pub async fn run(pool: DbPool, cancel: CancellationToken) {
    crate::periodic::every(ENSURE_INTERVAL, cancel, || async {
        match ensure(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(days = n, "created day partitions"),
            Err(err) => tracing::warn!(error = %err, "creating day partitions failed; will retry"),
        }
    })
    .await;
}

/// One partition day (or the legacy partitions): rows from `since` (the beginning of
/// time when `None`) up to `until`.
#[derive(Debug, diesel::QueryableByName)]
struct Day {
    #[diesel(sql_type = Text)]
    suffix: String,
    #[diesel(sql_type = Nullable<Date>)]
    since: Option<chrono::NaiveDate>,
    #[diesel(sql_type = Date)]
    until: chrono::NaiveDate,
}

/// Drops the partitions whose rows are all older than `cutoff` (a UUIDv7: every event id
/// below it is older); returns how many events they held, as PostgreSQL's statistics count
/// them (see [`event_count`]).
///
/// Deliveries the overview still counts (created in the last three days: the counters
/// keep two) are deleted through their table first, so the counters subtract them; with
/// any retention of three days or more there are none.
pub async fn drop_before(pool: &DbPool, cutoff: Uuid) -> anyhow::Result<u64> {
    #[derive(diesel::QueryableByName)]
    struct Locked {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        locked: bool,
    }
    let mut conn = pool.get().await?;
    let locked: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
        .bind::<BigInt, _>(DROP_LOCK)
        .get_result(&mut conn)
        .await?;
    if !locked.locked {
        return Ok(0);
    }
    let result = drop_days(&mut conn, cutoff).await;
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(DROP_LOCK)
        .execute(&mut conn)
        .await?;
    result
}

async fn drop_days(
    conn: &mut diesel_async::AsyncPgConnection,
    cutoff: Uuid,
) -> anyhow::Result<u64> {
    let days: Vec<Day> = diesel::sql_query(
        "SELECT suffix, since, until FROM herald_partitions \
          WHERE herald_day_id(until) <= $1 ORDER BY until",
    )
    .bind::<SqlUuid, _>(cutoff)
    .load(conn)
    .await?;
    let mut events = 0;
    for day in days {
        let started = std::time::Instant::now();
        diesel::sql_query(
            "DELETE FROM deliveries \
              WHERE ($1::date IS NULL OR event_id >= herald_day_id($1)) \
                AND event_id < herald_day_id($2) AND created_at >= now() - interval '3 days'",
        )
        .bind::<Nullable<Date>, _>(day.since)
        .bind::<Date, _>(day.until)
        .execute(conn)
        .await?;
        events += event_count(conn, &format!("events_{}", day.suffix)).await?;
        for table in TABLES {
            detach_and_drop(conn, table, &format!("{table}_{}", day.suffix)).await?;
        }
        diesel::sql_query("DELETE FROM herald_partitions WHERE suffix = $1")
            .bind::<Text, _>(&day.suffix)
            .execute(conn)
            .await?;
        tracing::info!(
            partition = %day.suffix,
            until = %day.until,
            elapsed_ms = started.elapsed().as_millis(),
            "dropped a day of history"
        );
    }
    Ok(events)
}

/// Rows in `partition` as `ANALYZE` counts them: exact for a table that fits its sample
/// (30,000 pages), an estimate from that sample for a larger one (a day of a busy
/// installation), read in about a second instead of a scan of the whole day.
async fn event_count(
    conn: &mut diesel_async::AsyncPgConnection,
    partition: &str,
) -> anyhow::Result<u64> {
    if reltuples(conn, partition).await?.is_none() {
        return Ok(0);
    }
    diesel::sql_query(format!("ANALYZE {}", quote_ident(partition)))
        .execute(conn)
        .await?;
    Ok(reltuples(conn, partition).await?.unwrap_or(0).max(0) as u64)
}

/// `pg_class.reltuples` of `table`, or `None` when there is no such table.
async fn reltuples(
    conn: &mut diesel_async::AsyncPgConnection,
    table: &str,
) -> diesel::QueryResult<Option<i64>> {
    #[derive(diesel::QueryableByName)]
    struct Rows {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let rows: Vec<Rows> =
        diesel::sql_query("SELECT reltuples::int8 AS n FROM pg_class WHERE oid = to_regclass($1)")
            .bind::<Text, _>(table)
            .load(conn)
            .await?;
    Ok(rows.as_slice().first().map(|r| r.n))
}

/// Takes `partition` out of `table` without blocking writers of `table`, then drops it.
/// Picks up where an interrupted run left off (a detach left pending, or a detached table
/// not yet dropped).
async fn detach_and_drop(
    conn: &mut diesel_async::AsyncPgConnection,
    table: &str,
    partition: &str,
) -> anyhow::Result<()> {
    #[derive(diesel::QueryableByName)]
    struct Attached {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        pending: bool,
    }
    let attached: Vec<Attached> = diesel::sql_query(
        "SELECT inhdetachpending AS pending FROM pg_inherits WHERE inhrelid = to_regclass($1)",
    )
    .bind::<Text, _>(partition)
    .load(conn)
    .await?;
    let (table, partition) = (quote_ident(table), quote_ident(partition));
    match attached.as_slice().first() {
        Some(Attached { pending: true }) => {
            diesel::sql_query(format!(
                "ALTER TABLE {table} DETACH PARTITION {partition} FINALIZE"
            ))
            .execute(conn)
            .await?;
        }
        Some(Attached { pending: false }) => {
            diesel::sql_query(format!(
                "ALTER TABLE {table} DETACH PARTITION {partition} CONCURRENTLY"
            ))
            .execute(conn)
            .await?;
        }
        None => {}
    }
    diesel::sql_query(format!("DROP TABLE IF EXISTS {partition}"))
        .execute(conn)
        .await?;
    Ok(())
}

/// A partition name as an SQL identifier (ours are plain, but quote anyway).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
