//! `spawn_app()`: a Herald on a free port with a fresh database cloned from a migrated
//! template, plus small HTTP helpers.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use herald::config::Settings;
use herald::db::embedded::{EmbeddedOptions, EmbeddedPostgres};
use herald::startup::Application;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{Value, json};

/// The admin key every test app is bootstrapped with.
pub const ADMIN_KEY: &str = "hrld_test_admin_key_0123456789";

/// Builds the URL of a database on the test server from its name.
type UrlFor = Box<dyn Fn(&str) -> String + Send + Sync>;

/// Where test databases live: the server, and how to name a database on it.
struct TestCluster {
    /// URL of a database to run `CREATE DATABASE` from.
    maintenance_url: String,
    /// Builds the URL of another database on the same server.
    url_for: UrlFor,
    template: String,
    // Kept so the embedded cluster is not stopped; it is reused by the next run.
    _embedded: Option<EmbeddedPostgres>,
}

static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

fn cluster() -> &'static TestCluster {
    CLUSTER.get_or_init(|| {
        // Set up on a runtime of our own: the test that gets here first may be on a
        // current-thread runtime, and the migration harness needs to block.
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(set_up_cluster())
        })
        .join()
        .expect("test cluster setup panicked")
    })
}

async fn set_up_cluster() -> TestCluster {
    let (maintenance_url, url_for, embedded): (String, UrlFor, _) =
        match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
            Some(url) => {
                let base = url.clone();
                (url, Box::new(move |db| replace_database(&base, db)), None)
            }
            None => {
                let dir = test_cluster_dir();
                let pg = EmbeddedPostgres::start(
                    &dir,
                    EmbeddedOptions {
                        unsafe_fast: true,
                        max_connections: Some(1000),
                    },
                )
                .await
                .expect("start the embedded PostgreSQL for tests");
                let base = pg.database_url("postgres");
                (
                    base.clone(),
                    Box::new(move |db| replace_database(&base, db)),
                    Some(pg),
                )
            }
        };
    let pid = std::process::id();
    let template = format!("herald_tpl_{pid}");
    let client = connect(&maintenance_url).await;
    drop_stale_databases(&client).await;
    client
        .batch_execute(&format!("CREATE DATABASE {template}"))
        .await
        .expect("create the template database");
    let template_url = url_for(&template);
    tokio::task::spawn_blocking(move || herald::db::run_migrations(&template_url))
        .await
        .expect("join")
        .expect("migrate the template database");
    TestCluster {
        maintenance_url,
        url_for,
        template,
        _embedded: embedded,
    }
}

/// Where the test cluster lives: `HERALD_TEST_PG_DIR`, or a directory under the system
/// temp dir named after this checkout. (Not under `target/`: when the tests run as root the
/// cluster belongs to the `postgres` user, which may not be able to enter the checkout.)
fn test_cluster_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("HERALD_TEST_PG_DIR") {
        return dir.into();
    }
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    env!("CARGO_MANIFEST_DIR").hash(&mut hasher);
    std::env::temp_dir().join(format!("herald-test-pg-{:016x}", hasher.finish()))
}

/// Drops databases left by earlier test processes that are no longer running.
async fn drop_stale_databases(client: &tokio_postgres::Client) {
    let rows = client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'herald\\_t%'",
            &[],
        )
        .await
        .expect("list databases");
    for row in rows {
        let name: String = row.get(0);
        let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}

/// `url` with its database name replaced by `db`.
pub fn replace_database(url: &str, db: &str) -> String {
    let (head, query) = url
        .split_once('?')
        .map_or((url, None), |(h, q)| (h, Some(q)));
    let authority_start = head.find("://").map_or(0, |i| i + 3);
    let path_start = head[authority_start..]
        .find('/')
        .map_or(head.len(), |i| authority_start + i);
    let mut out = format!("{}/{db}", &head[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A plain client connection (for test setup and for inspecting tables).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// A fresh database cloned from the migrated template; returns its name and URL.
pub async fn create_database() -> (String, String) {
    let cluster = cluster();
    let name = format!(
        "herald_t_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    let client = connect(&cluster.maintenance_url).await;
    client
        .batch_execute(&format!(
            "CREATE DATABASE {name} TEMPLATE {}",
            cluster.template
        ))
        .await
        .expect("create a test database");
    let url = (cluster.url_for)(&name);
    (name, url)
}

/// The URL of a database on the test server.
pub fn maintenance_url() -> String {
    cluster().maintenance_url.clone()
}

/// A counter or gauge from `GET {base}/metrics` (any Herald, also a separate process).
pub async fn metric_at(client: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A running Herald for one test.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// The database's name on the test server.
    pub db_name: String,
    /// The database's URL.
    pub database_url: String,
    /// An HTTP client.
    pub client: reqwest::Client,
    /// Cancelling it shuts the app down as SIGTERM would.
    pub stop: tokio_util::sync::CancellationToken,
    handle: ServerHandle,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Sends the stop command now; the server finishes it on its own.
        drop(self.handle.stop(false));
    }
}

/// Settings for a test app: a free port, the test admin key, small pools.
pub fn test_settings() -> Settings {
    let mut settings = Settings::from_lookup(|_| None).expect("default settings");
    settings.listen = "127.0.0.1:0".parse().expect("addr");
    settings.admin_key = Some(herald::domain::ApiKeySecret::parse(ADMIN_KEY).expect("key"));
    settings.db_pool_size = 8;
    settings.http_workers = Some(2);
    settings
}

/// A Herald with default test settings on a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A Herald with adjusted settings on a fresh database.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let (db_name, database_url) = create_database().await;
    let mut settings = test_settings();
    adjust(&mut settings);
    spawn_app_on(settings, db_name, database_url).await
}

/// A Herald on an existing database (a second instance, or a restart).
pub async fn spawn_app_on(settings: Settings, db_name: String, database_url: String) -> TestApp {
    let app = Application::build(settings, &database_url)
        .await
        .expect("build the application");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let stop = app.stop_token();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        db_name,
        database_url,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .expect("client"),
        stop,
        handle,
    }
}

impl TestApp {
    /// A request with `key` as bearer.
    pub fn request(&self, method: Method, path: &str, key: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(key)
    }

    /// `POST path` with a JSON body as admin.
    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path, ADMIN_KEY)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// `GET path` as admin.
    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path, ADMIN_KEY)
            .send()
            .await
            .expect("request")
    }

    /// `GET path` as admin, its body as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.expect("a JSON body")
    }

    /// `POST body` to `path` as admin; checks the status and returns the body as JSON.
    pub async fn post_expecting(&self, path: &str, body: &Value, status: u16) -> Value {
        let response = self.post(path, body).await;
        assert_eq!(response.status(), status, "POST {path}");
        response.json().await.expect("a JSON body")
    }

    /// Publishes one event as admin and returns the stored event.
    pub async fn publish(&self, stream: &str, event_type: &str, payload: Value) -> Value {
        let response = self
            .post(
                "/v1/events",
                &json!({"stream": stream, "type": event_type, "payload": payload}),
            )
            .await;
        assert_eq!(response.status(), 201, "publish failed");
        response.json().await.expect("event json")
    }

    /// Publishes `events` (objects of stream, type, payload) as one batch; asserts `201`.
    pub async fn publish_batch(&self, events: &[Value]) {
        let response = self
            .post("/v1/events/batch", &json!({ "events": events }))
            .await;
        assert_eq!(response.status(), 201, "batch publish failed");
    }

    /// Publishes to `stream` with `payload` written into the body as it is (line breaks
    /// and all), as a producer that pretty-prints does.
    pub async fn publish_raw(&self, stream: &str, payload: &str) {
        let response = self
            .request(Method::POST, "/v1/events", ADMIN_KEY)
            .header("content-type", "application/json")
            .body(format!(
                "{{\"stream\":\"{stream}\",\"type\":\"t\",\"payload\":{payload}}}"
            ))
            .send()
            .await
            .expect("publish");
        assert_eq!(response.status(), 201, "publish failed");
    }

    /// Creates a key with this role and prefixes; returns the key in clear.
    pub async fn create_key(&self, role: &str, prefixes: &[&str]) -> String {
        let response = self
            .post(
                "/v1/keys",
                &json!({"role": role, "stream_prefixes": prefixes}),
            )
            .await;
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.expect("key json");
        body["key"].as_str().expect("key").to_owned()
    }

    /// The id of the first key with `role` (as `GET /v1/keys` lists them).
    pub async fn key_id_with_role(&self, role: &str) -> String {
        let keys: Value = self.get("/v1/keys").await.json().await.unwrap();
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["role"] == role)
            .unwrap_or_else(|| panic!("no {role} key"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A counter or gauge from `GET /metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        metric_at(&self.client, &self.address, name)
            .await
            .unwrap_or_else(|| panic!("no metric {name} at {}/metrics", self.address))
            as u64
    }

    /// Waits until a metric reaches `value` (up to 10 s).
    pub async fn wait_for_metric(&self, name: &str, value: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let current = self.metric(name).await;
            if current == value {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} stayed at {current}, expected {value}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (up to 10 s) until no delivery is pending or being attempted. The worker
    /// sends only deliveries it has claimed (`delivering`), and a receiver has recorded a
    /// request before its delivery can leave `delivering`: once every delivery is settled,
    /// nothing more is sent without a new event or a replay. What absence checks wait on,
    /// instead of a sleep.
    pub async fn wait_until_settled(&self) {
        let db = self.db().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let open: i64 = db
                .query_one(
                    "SELECT count(*) FROM deliveries WHERE status IN ('pending', 'delivering')",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if open == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{open} deliveries still pending or in flight"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A client connection to this app's database.
    pub async fn db(&self) -> tokio_postgres::Client {
        connect(&self.database_url).await
    }

    /// Reverts the newest migrations, one per entry of `versions` (newest first), checking
    /// that each is the one expected: the schema an older installation has.
    pub async fn revert_migrations(&self, versions: &'static [&'static str]) {
        let url = self.database_url.clone();
        tokio::task::spawn_blocking(move || {
            use diesel::Connection as _;
            use diesel_migrations::MigrationHarness as _;
            let mut conn = diesel_async::async_connection_wrapper::AsyncConnectionWrapper::<
                diesel_async::AsyncPgConnection,
            >::establish(&url)
            .unwrap();
            for expected in versions {
                let reverted = conn.revert_last_migration(herald::db::MIGRATIONS).unwrap();
                assert!(reverted.to_string().starts_with(expected), "{reverted}");
            }
        })
        .await
        .unwrap();
    }

    /// Applies the pending migrations, as an upgraded Herald does at its start.
    pub async fn run_migrations(&self) {
        let url = self.database_url.clone();
        tokio::task::spawn_blocking(move || herald::db::run_migrations(&url))
            .await
            .unwrap()
            .unwrap();
    }

    /// Makes the day partitions from `days` days ago to today (a running Herald makes
    /// today's and the next days' only), so that tests can move history into the past.
    pub async fn partitions_back(&self, days: i32) {
        self.db()
            .await
            .execute(
                "SELECT herald_ensure_partitions((now() AT TIME ZONE 'UTC')::date - $1::int4, \
                                                 (now() AT TIME ZONE 'UTC')::date)",
                &[&days],
            )
            .await
            .unwrap();
    }

    /// Moves every event, with its deliveries, `days` days into the past (ids are
    /// UUIDv7: the first 48 bits are the time), into partitions made for them.
    pub async fn age_history(&self, days: i32) {
        self.partitions_back(days + 1).await;
        self.db()
            .await
            .batch_execute(&format!(
                "CREATE FUNCTION pg_temp.back(u uuid) RETURNS uuid LANGUAGE sql AS $$ \
                   SELECT (lpad(to_hex(('x' || substr(replace(u::text, '-', ''), 1, 12))::bit(48)::int8 \
                                       - {days}::int8 * 86400000), 12, '0') \
                           || substr(replace(u::text, '-', ''), 13))::uuid $$; \
                 UPDATE deliveries SET event_id = pg_temp.back(event_id); \
                 UPDATE events SET id = pg_temp.back(id);"
            ))
            .await
            .unwrap();
    }
}

/// Asserts a problem+json response with this status and problem slug; returns the body.
/// Payloads whose JSON spans lines every way SSE must handle: LF, CRLF, CR, blank lines,
/// and U+2028 (not a line break for SSE).
pub const MULTILINE_PAYLOADS: [&str; 4] = [
    "{\"s\":\n\"lf\"}",
    "{\"s\":\r\n\"crlf\"}",
    "{\"s\":\r\"cr\"}",
    "{\"s\":\"\u{2028}\",\n\n\"n\": [1,\r\n2]}",
];

pub async fn assert_problem(response: Response, status: u16, slug: &str) -> Value {
    assert_eq!(response.status(), status, "unexpected status");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or_default().to_owned()),
        Some("application/problem+json".to_owned())
    );
    let body: Value = response.json().await.expect("problem json");
    assert_eq!(
        body["type"],
        format!("urn:herald:problem:{slug}"),
        "body: {body}"
    );
    assert_eq!(body["status"], status);
    assert!(body["title"].is_string());
    body
}

#[test]
fn replace_database_keeps_host_and_query() {
    assert_eq!(
        replace_database("postgresql://u@localhost/postgres?host=/tmp/x", "t1"),
        "postgresql://u@localhost/t1?host=/tmp/x"
    );
    assert_eq!(
        replace_database("postgres://u:p@h:5432/db", "t2"),
        "postgres://u:p@h:5432/t2"
    );
    assert_eq!(replace_database("postgres://h", "t3"), "postgres://h/t3");
}

/// Creates a webhook endpoint as admin (`201`) and returns it.
pub async fn create_endpoint(app: &TestApp, body: Value) -> Value {
    let response = app.post("/v1/endpoints", &body).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    response.json().await.unwrap()
}
