//! `/healthz`, `/readyz`, unknown routes and a database outage.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{assert_problem, connect, maintenance_url, spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer_without_a_key() {
    let app = spawn_app().await;
    let health = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({"status": "ready"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_404_problems() {
    let app = spawn_app().await;
    assert_problem(app.get("/v1/nothing").await, 404, "not-found").await;
}

/// The database goes away (connections refused and existing ones killed): requests are
/// answered 503 with Retry-After within the configured timeout, never hang, and nothing is
/// acknowledged. When it comes back, Herald serves again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_503_with_retry_after_and_recovers() {
    let app = spawn_app_with(|s| s.db_timeout = Duration::from_secs(1)).await;
    app.publish("s", "t", json!(1)).await;

    let admin = connect(&maintenance_url()).await;
    let name = &app.db_name;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
        ))
        .await
        .unwrap();

    let started = Instant::now();
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.headers()["retry-after"], "2");
    assert_problem(ready, 503, "unavailable").await;
    for _ in 0..3 {
        let response = app
            .post(
                "/v1/events",
                &json!({"stream": "s", "type": "t", "payload": 2}),
            )
            .await;
        assert_eq!(response.headers()["retry-after"], "2");
        assert_problem(response, 503, "unavailable").await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    let event = app.publish("s", "t", json!(3)).await;
    assert_eq!(
        event["seq"], 2,
        "a refused request must not have been stored"
    );
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}
