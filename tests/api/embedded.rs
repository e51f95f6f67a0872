//! The `herald` binary itself: embedded PostgreSQL, settings errors, `migrate`, `key create`.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::helpers::{
    ADMIN_KEY, connect, create_database, maintenance_url, replace_database, spawn_app_on,
    test_settings,
};

pub fn herald() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// `herald serve` on `DATABASE_URL` and `127.0.0.1:port` with the test admin key, output
/// discarded; callers add their settings, then spawn.
pub fn serve_command(database_url: &str, port: u16) -> Command {
    let mut cmd = herald();
    cmd.arg("serve")
        .env("DATABASE_URL", database_url)
        .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
        .env("HERALD_ADMIN_KEY", ADMIN_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn wait_ready(base: &str, child: &mut Child) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status() == 200
        {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("herald exited early with {status}");
        }
        assert!(Instant::now() < deadline, "herald did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn terminate(child: &mut Child) {
    let pid = child.id().unwrap().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("herald did not stop within 30 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "herald exited with {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_database_url_runs_its_own_postgres_and_keeps_the_data() {
    let data = tempfile::tempdir().unwrap();
    // The cluster runs as the postgres user when the tests run as root: let it in.
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let start = || {
        let mut cmd = herald();
        cmd.arg("serve")
            .env("HERALD_DATA_DIR", data.path())
            .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
            .env("HERALD_ADMIN_KEY", ADMIN_KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn().unwrap()
    };

    let mut first = start();
    wait_ready(&base, &mut first).await;
    assert!(data.path().join("pg/PG_VERSION").exists());
    let client = reqwest::Client::new();
    let event: Value = client
        .post(format!("{base}/v1/events"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"stream": "s", "type": "t", "payload": {"kept": true}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // SIGTERM with a long-poll held: it is answered at once, and Herald exits promptly.
    let held = tokio::spawn({
        let client = client.clone();
        let url = format!("{base}/v1/streams/s/events?after=1&wait=50");
        async move {
            let response = client.get(url).bearer_auth(ADMIN_KEY).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::helpers::metric_at(&client, &base, "herald_waiters").await != Some(1.0) {
        assert!(Instant::now() < deadline, "the long-poll was not held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopping = Instant::now();
    terminate(&mut first).await;
    assert!(
        stopping.elapsed() < Duration::from_secs(40),
        "exited at once, not after the held poll's 50 s wait: {:?}",
        stopping.elapsed()
    );
    let (status, body) = held.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, json!({"events": [], "next_after": 1}));
    assert!(
        !data.path().join("pg/postmaster.pid").exists(),
        "the embedded PostgreSQL was left running"
    );

    let mut second = start();
    wait_ready(&base, &mut second).await;
    let fetched: Value = client
        .get(format!(
            "{base}/v1/events/{}",
            event["id"].as_str().unwrap()
        ))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, event);
    terminate(&mut second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_setting_stops_herald_with_a_message_naming_it() {
    let out = herald()
        .arg("serve")
        .env("HERALD_MAX_PAYLOAD", "huge")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HERALD_MAX_PAYLOAD: expected a size like 262144, 256KiB or 1MiB"),
        "{stderr}"
    );
}

/// Creates database `herald_t_<pid>_<suffix>` with `options` and runs `herald migrate` on
/// it; returns its URL and what `migrate` printed.
async fn migrate_new_database(suffix: &str, options: &str) -> (String, std::process::Output) {
    let name = format!("herald_t_{}_{suffix}", std::process::id());
    connect(&maintenance_url())
        .await
        .batch_execute(&format!("CREATE DATABASE {name} {options}"))
        .await
        .unwrap();
    let url = replace_database(&maintenance_url(), &name);
    let out = herald()
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .output()
        .await
        .unwrap();
    (url, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_schema_on_an_empty_database() {
    let (url, out) = migrate_new_database("empty", "").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tables = connect(&url)
        .await
        .query(
            "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('events', 'streams', 'api_keys', 'idempotency_keys')",
            &[],
        )
        .await
        .unwrap()[0]
        .get::<_, i64>(0);
    assert_eq!(tables, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_create_prints_a_key_that_works() {
    let (db_name, url) = create_database().await;
    let out = herald()
        .args([
            "key",
            "create",
            "--role",
            "subscriber",
            "--stream-prefix",
            "payment:",
        ])
        .env("DATABASE_URL", &url)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("hrld_"), "{key}");

    let app = spawn_app_on(test_settings(), db_name, url).await;
    let allowed = app
        .request(Method::GET, "/v1/streams/payment:1", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    let denied = app
        .request(Method::GET, "/v1/streams/invoice:1", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);

    let bad = herald()
        .args(["key", "create", "--role", "subscriber"])
        .env("DATABASE_URL", &app.database_url)
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("stream_prefixes"));
}

/// A database in another encoding than UTF8 would refuse some text Herald stores without
/// choosing it (a receiver's answer): `migrate` (and so `serve`) refuses it up front, saying
/// why, and creates nothing in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_not_in_utf8_is_refused_with_the_reason() {
    let (url, out) = migrate_new_database(
        "latin1",
        "ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the database's encoding is LATIN1; Herald needs a UTF8 database"),
        "{stderr}"
    );
    let tables = connect(&url)
        .await
        .query(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'events'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(tables[0].get::<_, i64>(0), 0);
}
