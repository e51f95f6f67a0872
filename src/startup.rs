//! Wiring: `Application::build(settings)` migrates, bootstraps the admin key, starts the
//! background tasks and binds the listener; `run_until_stopped` serves until a signal (or a
//! test) stops it, then lets the background tasks finish what they hold.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Server, ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::{App, HttpMessage as _, HttpServer, ResponseError as _, middleware, web};
use diesel_async::AsyncConnection as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::KeyCache;
use crate::config::Settings;
use crate::db::models::api_key::{self, ApiKey};
use crate::db::{self, DbPool};
use crate::delivery::queue::LocalQueue;
use crate::delivery::sender::Sender;
use crate::delivery::worker::{Worker, WorkerParts, WorkerSettings, lease_for};
use crate::domain::{ApiKeySecret, Role};
use crate::error::ApiError;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::streams::disconnect::{self, DisconnectWatcher};
use crate::streams::hub::Hub;
use crate::streams::listener;
use crate::streams::notify::Notifier;

/// How long a stopping server lets in-flight requests finish.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A built, bound, not yet running Herald.
pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    committers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    background_stop: CancellationToken,
    stop_requested: CancellationToken,
    generated_admin_key: Option<ApiKeySecret>,
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
        // Today's partitions and the next days' exist before the first publish.
        crate::partitions::ensure(&pool).await?;
        let generated_admin_key = bootstrap_admin_key(&pool, settings.admin_key.as_ref()).await?;
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(pool.clone(), metrics.clone(), settings.max_waiters);
        let instance = uuid::Uuid::now_v7();
        let delivery_wake = Arc::new(tokio::sync::Notify::new());
        let delivery_nudge = Arc::new(tokio::sync::Notify::new());
        // Where this instance's ingest hands the deliveries it claims at insert to its
        // worker; none on an instance that sends no webhooks.
        let queue = (settings.delivery_concurrency > 0).then(|| {
            Arc::new(LocalQueue::new(
                lease_for(settings.delivery_timeout),
                settings.delivery_concurrency * 4,
                delivery_nudge.clone(),
            ))
        });
        let notifier = Notifier::new(
            instance,
            hub.clone(),
            metrics.clone(),
            delivery_wake.clone(),
            queue.clone(),
        );
        let committers = (settings.db_pool_size / 4).clamp(1, 4);
        let (ingest, committer_handles) = Ingest::start(
            database_url,
            settings.db_timeout,
            committers,
            notifier.clone(),
        );
        let background_stop = CancellationToken::new();
        let keys = Arc::new(KeyCache::default());
        let key_holds = Arc::new(crate::streams::holds::KeyHolds::new(keys.clone()));
        let background = vec![
            tokio::spawn(notifier.clone().run(pool.clone(), background_stop.clone())),
            tokio::spawn(listener::run_listener(
                database_url.to_owned(),
                settings.db_timeout,
                hub.clone(),
                metrics.clone(),
                notifier.clone(),
                background_stop.clone(),
            )),
            tokio::spawn(crate::retention::run(
                pool.clone(),
                settings.retention,
                metrics.clone(),
                background_stop.clone(),
            )),
            tokio::spawn(crate::rollup::run(pool.clone(), background_stop.clone())),
            tokio::spawn(crate::replay_search::run(
                pool.clone(),
                notifier.clone(),
                background_stop.clone(),
            )),
            tokio::spawn(crate::partitions::run(
                pool.clone(),
                background_stop.clone(),
            )),
            tokio::spawn(metrics.clone().run_upkeep(background_stop.clone())),
            tokio::spawn(
                key_holds
                    .clone()
                    .run_check(pool.clone(), background_stop.clone()),
            ),
            tokio::spawn(listener::run_fallback_check(
                pool.clone(),
                hub.clone(),
                settings.fallback_interval,
                background_stop.clone(),
            )),
        ];
        // Serve once this instance's LISTEN works and its announcement went round, so that
        // instances already running notify it from its first request (bounded: a pooler
        // that swallows LISTEN leaves the fallback check, which does not wait).
        if !notifier.wait_announced(settings.db_timeout).await {
            tracing::warn!(
                "no LISTEN confirmation; other instances' changes arrive through the fallback check"
            );
        }
        let mut background = background;
        if let Some(queue) = queue {
            let sender = Sender::new(settings.destinations.clone(), settings.delivery_timeout)?;
            let worker = Worker::new(
                WorkerParts {
                    sender,
                    wake: delivery_wake.clone(),
                    queue,
                    nudge: delivery_nudge,
                    metrics: metrics.clone(),
                    ops: ingest.clone(),
                    notifier: notifier.clone(),
                },
                WorkerSettings {
                    database_url: database_url.to_owned(),
                    connect_timeout: settings.db_timeout,
                    schedule: settings.retry_schedule.clone(),
                    timeout: settings.delivery_timeout,
                    concurrency: settings.delivery_concurrency,
                    disable_after: settings.disable_after,
                },
            );
            background.push(tokio::spawn(worker.run(background_stop.clone())));
        }
        let listener = TcpListener::bind(settings.listen)?;
        let port = listener.local_addr()?.port();
        let catch_up_reads = (settings.db_pool_size / 2).max(1);
        let state = web::Data::new(AppState {
            pool,
            settings: Arc::new(settings),
            ingest,
            keys,
            hub,
            notifier,
            metrics,
            disconnects: DisconnectWatcher::start()?,
            key_holds,
            auth_failures: crate::auth::failure_limiter(),
            sign_ins: crate::api::sessions::sign_in_limiter(),
            stopping: CancellationToken::new(),
            catch_up_reads: tokio::sync::Semaphore::new(catch_up_reads),
        });
        let app_state = state.clone();
        // Generated once from the same route registrations the workers use.
        let openapi = crate::api::openapi::document();
        let mut server = HttpServer::new(move || {
            use utoipa_actix_web::AppExt as _;
            let (app, _) = App::new()
                .app_data(app_state.clone())
                .wrap(middleware::from_fn(refuse_while_stopping))
                .wrap(middleware::from_fn(send_request_id))
                .wrap(tracing_actix_web::TracingLogger::<
                    crate::telemetry::RequestSpan,
                >::new())
                .into_utoipa_app()
                .configure(crate::api::routes)
                .split_for_parts();
            // `/openapi.json` and the offline Swagger UI at `/docs/`.
            app.service(
                utoipa_swagger_ui::SwaggerUi::new("/docs/{_:.*}")
                    .url("/openapi.json", openapi.clone()),
            )
        })
        .on_connect(on_connect)
        .disable_signals()
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
            background,
            background_stop,
            stop_requested: CancellationToken::new(),
            generated_admin_key,
        })
    }

    /// The port the server is bound to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the server abruptly (tests use it).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Cancelling this token shuts Herald down as SIGTERM does.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop_requested.clone()
    }

    /// The shared state (tests inspect it).
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// The admin key generated on an empty database, to be shown once.
    pub fn take_generated_admin_key(&mut self) -> Option<ApiKeySecret> {
        self.generated_admin_key.take()
    }

    /// Serves until SIGTERM, SIGINT or [`Application::stop_token`], then shuts down:
    /// held long-polls are answered at once (empty, same cursor, `Connection: close`), SSE
    /// streams end, new requests get `503`, in-flight requests get up to 10 s to finish,
    /// and queued events are committed before this returns.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Self {
            server,
            state,
            committers,
            background,
            background_stop,
            stop_requested,
            ..
        } = self;
        let handle = server.handle();
        let mut server = std::pin::pin!(server);
        let result = tokio::select! {
            result = &mut server => result,
            () = stop_signal(&stop_requested) => {
                tracing::info!("shutting down");
                state.stopping.cancel();
                drop(handle.stop(true));
                server.await
            }
        };
        state.stopping.cancel();
        drop(state);
        // Background tasks first: the webhook worker lets its attempts in flight finish
        // (each is bounded by HERALD_DELIVERY_TIMEOUT) and then lets go of its handle to the
        // committers, which end once every handle is gone and the queue is committed.
        background_stop.cancel();
        for handle in background {
            let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT * 6, handle).await;
        }
        for handle in committers {
            let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, handle).await;
        }
        result
    }
}

/// Resolves on SIGTERM, SIGINT, or when `token` is cancelled.
async fn stop_signal(token: &CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = token.cancelled() => {}
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Answers with the request's id in `X-Request-Id` (the one its log lines carry).
async fn send_request_id(
    req: ServiceRequest,
    next: middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut response = next.call(req).await?;
    let id = response
        .request()
        .extensions()
        .get::<crate::telemetry::RequestIdValue>()
        .and_then(|id| actix_web::http::header::HeaderValue::from_str(&id.0).ok());
    if let Some(id) = id {
        response.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static(crate::telemetry::REQUEST_ID_HEADER),
            id,
        );
    }
    Ok(response)
}

/// Every new connection: remembers its socket for the disconnect watcher, and turns off
/// Nagle's algorithm. A WebSocket sends an event as a small frame of its own; with Nagle on,
/// a frame that follows one not yet acknowledged waits for the client's delayed ACK (40 ms
/// on Linux), which showed as a 40 ms p99 in `herald bench websockets`.
fn on_connect(conn: &dyn std::any::Any, extensions: &mut actix_web::dev::Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        let _ = tcp.set_nodelay(true);
    }
    disconnect::on_connect(conn, extensions);
}

/// While shutting down, every request but `/healthz` is answered `503` with
/// `Connection: close`, so that clients go to another instance.
async fn refuse_while_stopping(
    req: ServiceRequest,
    next: middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let stopping = req
        .app_data::<web::Data<AppState>>()
        .is_some_and(|state| state.stopping.is_cancelled());
    if stopping && req.path() != "/healthz" {
        let mut response = ApiError::Unavailable {
            detail: "Herald is shutting down; retry on another instance".into(),
            retry_after: 1,
        }
        .error_response();
        response
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
        return Ok(req.into_response(response).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
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
