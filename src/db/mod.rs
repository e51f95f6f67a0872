//! Storage: the connection pool, migrations, the embedded PostgreSQL and all SQL.
//!
//! All queries live in `models/` as plain async functions taking a connection; callers own
//! the transaction. Connections come from a deadpool pool whose waits and connects are
//! bounded by `HERALD_DB_TIMEOUT`, so an unreachable database turns into a `503`, not a hang.

pub mod embedded;
pub mod models;
mod prepared;
pub mod raw_json;
pub mod schema;

use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;

pub use prepared::{Prepared, prepared};
pub use raw_json::RawJson;

/// The pool every request and background task takes connections from.
pub type DbPool = Pool<AsyncPgConnection>;
/// A pooled connection.
pub type DbConn = Object<AsyncPgConnection>;
/// What getting a connection can fail with.
pub type PoolError = diesel_async::pooled_connection::deadpool::PoolError;

/// A database operation that failed: no connection could be had, or a statement failed.
/// Modules below the API return it; the API turns it into a problem (`ApiError`).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection from the pool (the database is unreachable, or the pool exhausted).
    #[error("no database connection: {0}")]
    Pool(#[from] PoolError),
    /// A statement failed.
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

/// The migrations under `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// An arbitrary constant: the advisory lock that serialises migrations across instances.
const MIGRATION_LOCK_ID: i64 = 0x4845_5241_4c44; // "HERALD"

/// Builds the pool. No connection is made until one is needed.
///
/// A connection is pinged (`SELECT 1`) when it is taken from the pool. Skipping the ping
/// (deadpool's `Fast` recycling) was measured: the webhook path barely noticed (its claims
/// and records run on connections of their own), but long-poll publish-to-answer p50 went
/// from 7 ms to 23-29 ms with 10,000 held polls (`herald bench longpoll`): without the
/// round trip, every re-poll read and hub fetch reached PostgreSQL at once, 16 at a time
/// on two cores, ahead of the publishes.
pub fn build_pool(database_url: &str, size: usize, timeout: Duration) -> anyhow::Result<DbPool> {
    let mut config = ManagerConfig::default();
    config.custom_setup = Box::new(move |url| establish(url, timeout));
    let manager = AsyncDieselConnectionManager::new_with_config(database_url, config);
    Ok(Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()?)
}

/// Opens one connection with a connect timeout and TCP keepalives, outside any pool.
pub fn establish(
    url: &str,
    timeout: Duration,
) -> BoxFuture<'_, diesel::ConnectionResult<AsyncPgConnection>> {
    establish_named(url, timeout, "herald")
}

/// [`establish`], with the `application_name` PostgreSQL shows for the connection.
pub fn establish_named<'a>(
    url: &'a str,
    timeout: Duration,
    application_name: &'a str,
) -> BoxFuture<'a, diesel::ConnectionResult<AsyncPgConnection>> {
    async move {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| ConnectionError::BadConnection(format!("bad DATABASE_URL: {e}")))?;
        config
            .connect_timeout(timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .application_name(application_name);
        let (client, connection) =
            tokio::time::timeout(timeout, config.connect(tokio_postgres::NoTls))
                .await
                .map_err(|_| {
                    ConnectionError::BadConnection("timed out connecting to PostgreSQL".into())
                })?
                .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await
    }
    .boxed()
}

/// Applies pending migrations under an advisory lock, so that several instances can start
/// at once. Blocking: call it from `spawn_blocking` (diesel's migration harness is sync).
pub fn run_migrations(database_url: &str) -> anyhow::Result<()> {
    use diesel::RunQueryDsl as _;
    use diesel::connection::Connection as _;
    use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;

    let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(database_url)?;
    require_utf8(&mut conn)?;
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_ID})"))
        .execute(&mut conn)?;
    let result = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|applied| {
            for version in applied {
                tracing::info!(%version, "applied migration");
            }
        })
        .map_err(|e| anyhow::anyhow!("migration failed: {e}"));
    diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})"))
        .execute(&mut conn)?;
    result
}

/// Refuses a database whose encoding is not UTF8: Herald stores text it does not choose
/// (receivers' answers, descriptions, event types) as UTF-8, and a database in another
/// encoding refuses some of it ("has no equivalent in encoding"), which would leave an
/// attempt unrecorded.
fn require_utf8(
    conn: &mut diesel_async::async_connection_wrapper::AsyncConnectionWrapper<AsyncPgConnection>,
) -> anyhow::Result<()> {
    use diesel::RunQueryDsl as _;

    #[derive(diesel::QueryableByName)]
    struct Encoding {
        #[diesel(sql_type = diesel::sql_types::Text)]
        encoding: String,
    }
    let found: Encoding =
        diesel::sql_query("SELECT current_setting('server_encoding') AS encoding")
            .get_result(conn)?;
    anyhow::ensure!(
        found.encoding == "UTF8",
        "the database's encoding is {}; Herald needs a UTF8 database \
         (CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0)",
        found.encoding
    );
    Ok(())
}

/// A connection of its own for one background task, outside the pool, opened on first use
/// with a session setup statement, and opened again after an error.
pub struct Dedicated {
    url: String,
    timeout: Duration,
    application_name: &'static str,
    setup: &'static str,
    slot: tokio::sync::Mutex<Option<AsyncPgConnection>>,
}

impl std::fmt::Debug for Dedicated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedicated")
            .field("application_name", &self.application_name)
            .finish_non_exhaustive()
    }
}

impl Dedicated {
    /// A connection to `url` that PostgreSQL shows as `application_name`, set up with
    /// `setup` (for example `SET enable_bitmapscan = off`) when opened.
    pub fn new(
        url: &str,
        timeout: Duration,
        application_name: &'static str,
        setup: &'static str,
    ) -> Self {
        Self {
            url: url.to_owned(),
            timeout,
            application_name,
            setup,
            slot: tokio::sync::Mutex::new(None),
        }
    }

    /// The connection, opened first if needed. Call [`DedicatedGuard::discard`] after an
    /// error, so the next use opens a fresh one.
    pub async fn lock(&self) -> anyhow::Result<DedicatedGuard<'_>> {
        use diesel_async::SimpleAsyncConnection as _;
        let mut slot = self.slot.lock().await;
        if slot.is_none() {
            let mut conn = establish_named(&self.url, self.timeout, self.application_name).await?;
            conn.batch_execute(self.setup).await?;
            *slot = Some(conn);
        }
        Ok(DedicatedGuard { slot })
    }
}

/// A locked [`Dedicated`] connection.
#[expect(
    missing_debug_implementations,
    reason = "holds a connection, which has no Debug"
)]
pub struct DedicatedGuard<'a> {
    slot: tokio::sync::MutexGuard<'a, Option<AsyncPgConnection>>,
}

impl DedicatedGuard<'_> {
    /// The connection.
    pub fn conn(&mut self) -> anyhow::Result<&mut AsyncPgConnection> {
        self.slot
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("the connection was discarded"))
    }

    /// Drops the connection (after an error): the next use opens a fresh one.
    pub fn discard(mut self) {
        *self.slot = None;
    }
}
