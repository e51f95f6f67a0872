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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_from_the_binary_with_types_and_cache_headers() {
    let app = spawn_app().await;
    let get = |path: &str| app.client.get(format!("{}{path}", app.address)).send();
    let index = get("/admin/").await.unwrap();
    assert_eq!(index.status(), 200);
    assert_eq!(index.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(index.headers()["cache-control"], "no-cache");
    assert!(
        index.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    assert_eq!(index.headers()["x-content-type-options"], "nosniff");
    let etag = index.headers()["etag"].to_str().unwrap().to_owned();
    let html = index.text().await.unwrap();
    assert!(html.contains("<title>Herald console</title>"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing loaded from elsewhere"
    );

    let again = app
        .client
        .get(format!("{}/admin/", app.address))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    let script = get("/admin/app.js").await.unwrap();
    assert_eq!(script.status(), 200);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    let css = get("/admin/style.css").await.unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    // Console routes fall back to the page; missing files are 404.
    let route = get("/admin/deliveries").await.unwrap();
    assert_eq!(route.text().await.unwrap(), html);
    assert_problem(get("/admin/missing.png").await.unwrap(), 404, "not-found").await;
    let bare = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/admin", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 308);
    assert_eq!(bare.headers()["location"], "/admin/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_held_requests_webhooks_latency_backlog_and_the_pool() {
    use crate::receiver::{Receiver, Reply};
    let app = spawn_app_with(|s| {
        s.destinations =
            herald::domain::destination::DestinationGuard::parse_allowed("127.0.0.0/8").unwrap();
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(200));
    let created = app
        .post(
            "/v1/endpoints",
            &json!({"url": receiver.url, "streams": ["orders"]}),
        )
        .await;
    assert_eq!(created.status(), 201);

    // One held long-poll (answered by the publish) and one SSE stream.
    let poll = {
        let client = app.client.clone();
        let url = format!("{}/v1/streams/orders/events?after=0&wait=20", app.address);
        tokio::spawn(async move {
            client
                .get(url)
                .bearer_auth(crate::helpers::ADMIN_KEY)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    let sse = app
        .request(
            reqwest::Method::GET,
            "/v1/streams/news/sse",
            crate::helpers::ADMIN_KEY,
        )
        .send()
        .await
        .unwrap();
    app.wait_for_metric("herald_waiters", 2).await;
    assert_eq!(app.metric("herald_sse_streams").await, 1);
    assert_eq!(app.metric("herald_held_longpolls").await, 1);

    app.publish("orders", "order.created", json!(1)).await;
    poll.await.unwrap();
    receiver.wait_for(1, Duration::from_secs(5)).await;
    app.wait_for_metric("herald_webhook_outcomes_total{outcome=\"succeeded\"}", 1)
        .await;
    assert_eq!(app.metric("herald_events_ingested_total").await, 1);
    assert_eq!(
        app.metric("herald_webhook_attempt_duration_seconds_count")
            .await,
        1
    );
    assert_eq!(
        app.metric("herald_publish_to_delivery_seconds_count").await,
        1
    );
    assert_eq!(
        app.metric("herald_publish_to_answer_seconds_count").await,
        1
    );
    assert_eq!(app.metric("herald_deliveries_due").await, 0);
    assert_eq!(
        app.metric("herald_oldest_due_delivery_age_seconds").await,
        0
    );
    assert_eq!(
        app.metric("herald_db_pool_connections{state=\"max\"}")
            .await,
        8
    );
    assert!(app.metric("herald_listener_connects_total").await >= 1);
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains("# TYPE herald_webhook_attempt_duration_seconds histogram"),
        "{text}"
    );
    assert!(text.contains("herald_publish_to_delivery_seconds_bucket{le=\"0.1\"}"));

    drop(sse);
    app.wait_for_metric("herald_sse_streams", 0).await;
}
