//! Wiring: `Application::build(settings)` migrates, bootstraps the admin key, starts the
//! background tasks and binds the listener; `run_until_stopped` serves until a signal (or a
//! test) stops it, then lets the background tasks finish what they hold.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, middleware, web};
use diesel_async::AsyncConnection as _;
use tokio::task::JoinHandle;

use crate::auth::KeyCache;
use crate::config::Settings;
use crate::db::models::api_key::{self, ApiKey};
use crate::db::{self, DbPool};
use crate::domain::{ApiKeySecret, Role};
use crate::ingest::Ingest;

/// How long a stopping server lets in-flight requests finish.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a handler may need, passed in explicitly (no globals).
pub struct AppState {
    /// Database connections.
    pub pool: DbPool,
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// The group committer for new events.
    pub ingest: Ingest,
    /// Recently authenticated keys.
    pub keys: KeyCache,
}

/// A built, bound, not yet running Herald.
pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    committers: Vec<JoinHandle<()>>,
    generated_admin_key: Option<ApiKeySecret>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Migrates the database at `database_url`, prepares the state and binds
    /// `settings.listen` (port 0 picks a free port, see [`Application::port`]).
    pub async fn build(settings: Settings, database_url: &str) -> anyhow::Result<Self> {
        let url = database_url.to_owned();
        tokio::task::spawn_blocking(move || db::run_migrations(&url)).await??;
        let pool = db::build_pool(database_url, settings.db_pool_size, settings.db_timeout)?;
        let generated_admin_key = bootstrap_admin_key(&pool, settings.admin_key.as_ref()).await?;
        let committers = (settings.db_pool_size / 4).clamp(1, 4);
        let (ingest, committer_handles) = Ingest::start(pool.clone(), committers);
        let listener = TcpListener::bind(settings.listen)?;
        let port = listener.local_addr()?.port();
        let state = web::Data::new(AppState {
            pool,
            settings: Arc::new(settings),
            ingest,
            keys: KeyCache::default(),
        });
        let app_state = state.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .wrap(middleware::Logger::new("%a \"%r\" %s %b %Dms"))
                .configure(crate::api::routes)
        })
        .shutdown_timeout(SHUTDOWN_TIMEOUT.as_secs());
        if let Some(workers) = state.settings.http_workers {
            server = server.workers(workers);
        }
        let server = server.listen(listener)?.run();
        Ok(Self {
            port,
            server,
            state,
            committers: committer_handles,
            generated_admin_key,
        })
    }

    /// The port the server is bound to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the server (tests use it; in production signals do).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// The shared state (tests inspect it).
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// The admin key generated on an empty database, to be shown once.
    pub fn take_generated_admin_key(&mut self) -> Option<ApiKeySecret> {
        self.generated_admin_key.take()
    }

    /// Serves until stopped, then waits for queued events to be committed.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Self {
            server,
            state,
            committers,
            ..
        } = self;
        let result = server.await;
        drop(state);
        for handle in committers {
            let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, handle).await;
        }
        result
    }
}

/// Makes sure an admin key exists: `HERALD_ADMIN_KEY` if given, otherwise a generated one
/// on a database that has no keys at all (returned so that it can be printed once).
/// Serialised by an advisory lock, so instances starting together create one key.
pub async fn bootstrap_admin_key(
    pool: &DbPool,
    configured: Option<&ApiKeySecret>,
) -> anyhow::Result<Option<ApiKeySecret>> {
    let mut conn = pool.get().await?;
    let generated = conn
        .transaction(async |conn| {
            api_key::lock_bootstrap(conn).await?;
            if let Some(secret) = configured {
                if api_key::find_by_hash(conn, &secret.hash()).await?.is_none() {
                    let key =
                        ApiKey::new(secret, Role::Admin, Vec::new(), "HERALD_ADMIN_KEY".into());
                    api_key::insert(conn, &key).await?;
                }
                return Ok(None);
            }
            if !api_key::list(conn).await?.is_empty() {
                return Ok(None);
            }
            let secret = ApiKeySecret::generate();
            let key = ApiKey::new(
                &secret,
                Role::Admin,
                Vec::new(),
                "generated at first start".into(),
            );
            api_key::insert(conn, &key).await?;
            Ok::<_, diesel::result::Error>(Some(secret))
        })
        .await?;
    Ok(generated)
}
