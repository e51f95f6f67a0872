//! Keeps the delivery counters compact: the triggers of migration 000012 add a row per
//! writer, minute, endpoint and status; this task folds them (see
//! [`crate::db::models::overview::fold`]) so the overview reads a bounded number of rows
//! whatever the traffic. One instance folds at a time (an advisory lock); the counts are
//! exact before and after a fold, so when it runs only changes how many rows are read.

use std::time::Duration;

use diesel::sql_types::Bool;
use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
use tokio_util::sync::CancellationToken;

use crate::db::DbPool;
use crate::db::models::overview;

/// How often the counters are folded.
pub const INTERVAL: Duration = Duration::from_secs(15);

/// An arbitrary constant: the advisory lock of the fold.
const FOLD_LOCK_ID: i64 = 0x4845_5241_4c45; // "HERALE"

/// Folds once, unless another instance is folding. Returns the rows folded.
pub async fn fold_once(pool: &DbPool) -> anyhow::Result<usize> {
    #[derive(diesel::QueryableByName)]
    struct Locked {
        #[diesel(sql_type = Bool)]
        locked: bool,
    }
    let mut conn = pool.get().await?;
    let folded = conn
        .transaction(async |conn| {
            let lock: Locked = diesel::sql_query(format!(
                "SELECT pg_try_advisory_xact_lock({FOLD_LOCK_ID}) AS locked"
            ))
            .get_result(conn)
            .await?;
            if !lock.locked {
                return Ok::<_, diesel::result::Error>(0);
            }
            overview::fold(conn).await
        })
        .await?;
    Ok(folded)
}

/// Folds at startup and every [`INTERVAL`] until `cancel`.
pub async fn run(pool: DbPool, cancel: CancellationToken) {
    crate::periodic::every(INTERVAL, cancel, || async {
        if let Err(err) = fold_once(&pool).await {
            tracing::warn!(error = %err, "folding the delivery counters failed; will retry");
        }
    })
    .await;
}
