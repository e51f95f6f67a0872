//! `streams`: one row per stream that ever had an event, holding its seq counter.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::schema::{events, streams};

/// What a reader needs to know about a stream's extent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamBounds {
    /// Seq of the newest event (0 for a stream with no events).
    pub last_seq: i64,
    /// Seq of the oldest retained event, if any is retained.
    pub earliest_seq: Option<i64>,
}

/// The bounds of `stream`; a stream that never had an event has `last_seq` 0.
pub async fn bounds(conn: &mut AsyncPgConnection, stream: &str) -> QueryResult<StreamBounds> {
    let last_seq: Option<i64> = streams::table
        .find(stream)
        .select(streams::last_seq)
        .first(conn)
        .await
        .optional()?;
    let earliest_seq: Option<i64> = events::table
        .filter(events::stream.eq(stream))
        .select(diesel::dsl::min(events::seq))
        .first(conn)
        .await?;
    Ok(StreamBounds {
        last_seq: last_seq.unwrap_or(0),
        earliest_seq,
    })
}

/// The counters of these streams (streams that never had an event are left out).
pub async fn last_seqs(
    conn: &mut AsyncPgConnection,
    names: &[String],
) -> QueryResult<Vec<(String, i64)>> {
    streams::table
        .filter(streams::name.eq_any(names))
        .select((streams::name, streams::last_seq))
        .load(conn)
        .await
}
