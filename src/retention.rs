//! Retention: history older than `HERALD_RETENTION` goes a UTC day at a time, and
//! idempotency records older than 24 hours are deleted in small batches.
//!
//! Events, deliveries and attempts are split into day partitions (`crate::partitions`):
//! once a whole day is older than the retention, its three partitions are detached and
//! dropped, which takes milliseconds whatever the day held and rewrites nothing. So history
//! is kept for at least `HERALD_RETENTION` and at most one day more (as Kafka keeps whole
//! log segments). Stream counters are never purged: a stream's seq keeps counting after its
//! events are gone, and readers holding an older cursor get `410` with the cursor to resume
//! from.
//!
//! Deliveries are partitioned by their event, so a day's deliveries (replays of its events
//! included) go with its events: a purge never leaves a delivery without its payload. A day
//! holding an event whose delivery is still pending or in flight is not dropped, and
//! neither is any later day (readers never meet a hole in a stream): a delivery is never
//! forgotten, and retention resumes once it has succeeded or failed for good.
//!
//! Idempotency records go in small batches (1,000 rows, `FOR UPDATE SKIP LOCKED`, a pause
//! between them), so several instances can purge at once.

use std::sync::Arc;
use std::time::Duration;

use diesel::sql_types::{BigInt, Uuid as SqlUuid};
use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::DbPool;
use crate::db::models::idempotency::RETENTION_HOURS;
use crate::metrics::Metrics;

/// Rows deleted per statement.
pub const BATCH: i64 = 1000;
/// Pause between batches, so a large purge does not monopolise the database.
const PAUSE: Duration = Duration::from_millis(50);
/// How often the purge runs.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// The smallest UUIDv7 of the millisecond `age` ago: every event id below it is older.
pub fn cutoff_id(now: std::time::SystemTime, age: Duration) -> Uuid {
    let millis = now
        .checked_sub(age)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    let mut bytes = [0_u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6] = 0x70; // version 7
    bytes[8] = 0x80; // RFC 4122 variant
    Uuid::from_bytes(bytes)
}

/// The oldest event that still has a webhook delivery pending or in flight.
async fn oldest_unfinished_event(pool: &DbPool) -> anyhow::Result<Option<Uuid>> {
    #[derive(diesel::QueryableByName)]
    struct Oldest {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
    }
    let mut conn = pool.get().await?;
    // Read from the small partial index of unfinished deliveries, then sorted (PostgreSQL
    // 15 has no min(uuid)). Written as a plain `ORDER BY event_id LIMIT 1`, the planner
    // walked the index of every delivery's event in order, skipping finished ones: after
    // a backlog's statistics it read 207,874 buffers (219 ms) on a 150,000-delivery
    // database, once a minute, and it grows with history. The materialized set cannot be
    // read in order, and with sequential scans off the partial index is the only cheap
    // way to it.
    let oldest: Vec<Oldest> = conn
        .transaction(async |conn| {
            diesel::sql_query("SET LOCAL enable_seqscan = off")
                .execute(conn)
                .await?;
            diesel::sql_query(
                "WITH unfinished AS MATERIALIZED ( \
                   SELECT event_id FROM deliveries WHERE status IN ('pending', 'delivering')) \
                 SELECT event_id AS id FROM unfinished ORDER BY event_id LIMIT 1",
            )
            .load(conn)
            .await
        })
        .await?;
    Ok(oldest.into_iter().next().map(|o| o.id))
}

async fn purge_idempotency_batch(pool: &DbPool) -> anyhow::Result<usize> {
    let mut conn = pool.get().await?;
    // Records written before keys were scoped per API key, then the current ones.
    let legacy = diesel::sql_query(format!(
        "DELETE FROM idempotency_keys WHERE key IN \
         (SELECT key FROM idempotency_keys WHERE created_at < now() - interval '{RETENTION_HOURS} hours' \
          LIMIT $1 FOR UPDATE SKIP LOCKED)"
    ))
    .bind::<BigInt, _>(BATCH)
    .execute(&mut conn)
    .await?;
    let current = diesel::sql_query(format!(
        "DELETE FROM idempotency_records WHERE (api_key_id, key) IN \
         (SELECT api_key_id, key FROM idempotency_records \
           WHERE created_at < now() - interval '{RETENTION_HOURS} hours' \
           LIMIT $1 FOR UPDATE SKIP LOCKED)"
    ))
    .bind::<BigInt, _>(BATCH)
    .execute(&mut conn)
    .await?;
    Ok(legacy.max(current))
}

/// One full purge: the days past retention, then idempotency records and bulk replays.
/// Returns the events dropped.
pub async fn purge_once(
    pool: &DbPool,
    retention: Duration,
    metrics: &Metrics,
) -> anyhow::Result<u64> {
    let cutoff = cutoff_id(std::time::SystemTime::now(), retention);
    let cutoff = match oldest_unfinished_event(pool).await? {
        Some(unfinished) if unfinished < cutoff => unfinished,
        _ => cutoff,
    };
    let events = crate::partitions::drop_before(pool, cutoff).await?;
    metrics.events_purged.increment(events);
    while purge_idempotency_batch(pool).await? as i64 == BATCH {
        tokio::time::sleep(PAUSE).await;
    }
    // Bulk replays are few (one row per operator action) and their ids are UUIDv7 too.
    let mut conn = pool.get().await?;
    diesel::sql_query("DELETE FROM replays WHERE id < $1")
        .bind::<SqlUuid, _>(cutoff)
        .execute(&mut conn)
        .await?;
    Ok(events)
}

/// Purges every [`INTERVAL`] until `cancel`.
pub async fn run(
    pool: DbPool,
    retention: Duration,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    crate::periodic::every(INTERVAL, cancel, || async {
        match purge_once(&pool, retention, &metrics).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "purged events past retention"),
            Err(err) => tracing::warn!(error = %err, "retention purge failed; will retry"),
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_sorts_between_ids_of_either_side() {
        let now = std::time::SystemTime::now();
        let cutoff = cutoff_id(now, Duration::from_secs(3600));
        let older = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 3601,
            0,
        ));
        let newer = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 3599,
            0,
        ));
        assert!(older < cutoff, "{older} !< {cutoff}");
        assert!(cutoff < newer, "{cutoff} !< {newer}");
        assert_eq!(cutoff.get_version_num(), 7);
    }
}
