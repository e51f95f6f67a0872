//! `Idempotency-Key`: the same request twice creates one event.

use reqwest::{Method, Response};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, TestApp, assert_problem, spawn_app};

async fn post_with_key(app: &TestApp, path: &str, key: &str, body: &Value) -> Response {
    app.request(Method::POST, path, ADMIN_KEY)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeating_a_request_returns_the_first_event_with_200() {
    let app = spawn_app().await;
    let body = json!({"stream": "s", "type": "t", "payload": {"a": 1}});
    let first = post_with_key(&app, "/v1/events", "order-1", &body).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    let again = post_with_key(&app, "/v1/events", "order-1", &body).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);

    let stream: Value = app.get("/v1/streams/s").await.json().await.unwrap();
    assert_eq!(stream["last_seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_key_with_another_body_is_409() {
    let app = spawn_app().await;
    let body = json!({"stream": "s", "type": "t", "payload": 1});
    assert_eq!(
        post_with_key(&app, "/v1/events", "k", &body).await.status(),
        201
    );
    let other = json!({"stream": "s", "type": "t", "payload": 2});
    let problem = assert_problem(
        post_with_key(&app, "/v1/events", "k", &other).await,
        409,
        "conflict",
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("different request")
    );
    // The same key on the batch route is another request too.
    let batch = json!({"events": [body]});
    assert_problem(
        post_with_key(&app, "/v1/events/batch", "k", &batch).await,
        409,
        "conflict",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_create_one_event() {
    let app = spawn_app().await;
    let body = json!({"stream": "s", "type": "t", "payload": "once"});
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let request = app
            .request(Method::POST, "/v1/events", ADMIN_KEY)
            .header("Idempotency-Key", "race")
            .json(&body);
        tasks.push(tokio::spawn(async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let event: Value = response.json().await.unwrap();
            (status, event["id"].as_str().unwrap().to_owned())
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    assert_eq!(
        results.iter().filter(|(status, _)| *status == 201).count(),
        1
    );
    assert_eq!(
        results.iter().filter(|(status, _)| *status == 200).count(),
        9
    );
    assert!(results.iter().all(|(_, id)| *id == results[0].1));
    let stream: Value = app.get("/v1/streams/s").await.json().await.unwrap();
    assert_eq!(stream["last_seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_batch_returns_all_its_events() {
    let app = spawn_app().await;
    let body = json!({"events": [
        {"stream": "a", "type": "t", "payload": 1},
        {"stream": "b", "type": "t", "payload": 2},
    ]});
    let first: Value = post_with_key(&app, "/v1/events/batch", "b1", &body)
        .await
        .json()
        .await
        .unwrap();
    let again = post_with_key(&app, "/v1/events/batch", "b1", &body).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_after_24_hours() {
    let app = spawn_app().await;
    let body = json!({"stream": "s", "type": "t", "payload": 1});
    assert_eq!(
        post_with_key(&app, "/v1/events", "old", &body)
            .await
            .status(),
        201
    );
    app.db()
        .await
        .execute(
            "UPDATE idempotency_records SET created_at = now() - interval '25 hours'",
            &[],
        )
        .await
        .unwrap();
    let response = post_with_key(&app, "/v1/events", "old", &body).await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.json::<Value>().await.unwrap()["seq"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_key_is_422() {
    let app = spawn_app().await;
    let body = json!({"stream": "s", "type": "t", "payload": 1});
    let response = post_with_key(&app, "/v1/events", &"k".repeat(256), &body).await;
    let problem = assert_problem(response, 422, "validation").await;
    assert_eq!(problem["field"], "Idempotency-Key");
}

async fn post_as(app: &TestApp, api_key: &str, idempotency_key: &str, body: &Value) -> Response {
    app.request(Method::POST, "/v1/events", api_key)
        .header("Idempotency-Key", idempotency_key)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_belong_to_the_api_key_that_used_them() {
    let app = spawn_app().await;
    let a = app.create_key("publisher", &[]).await;
    let b = app.create_key("publisher", &[]).await;
    let body_a = json!({"stream": "s", "type": "t", "payload": "a"});
    let body_b = json!({"stream": "s", "type": "t", "payload": "b"});

    let first_a = post_as(&app, &a, "order-1", &body_a).await;
    assert_eq!(first_a.status(), 201);
    let first_a: Value = first_a.json().await.unwrap();
    // B's request with the same key is its own: neither A's event back nor a conflict
    // that would reveal A's request.
    let first_b = post_as(&app, &b, "order-1", &body_b).await;
    assert_eq!(first_b.status(), 201);
    let first_b: Value = first_b.json().await.unwrap();
    assert_ne!(first_a["id"], first_b["id"]);
    // The same body under B's key is a new event too.
    let same_body = post_as(&app, &b, "order-2", &body_a).await;
    assert_eq!(same_body.status(), 201);
    // Each key's retry is recognised as its own.
    let again_a = post_as(&app, &a, "order-1", &body_a).await;
    assert_eq!(again_a.status(), 200);
    assert_eq!(again_a.json::<Value>().await.unwrap(), first_a);
    let again_b = post_as(&app, &b, "order-1", &body_b).await;
    assert_eq!(again_b.status(), 200);
    assert_eq!(again_b.json::<Value>().await.unwrap(), first_b);
    let stream: Value = app.get("/v1/streams/s").await.json().await.unwrap();
    assert_eq!(stream["last_seq"], 3);
}

/// A record as the previous version wrote it (global, in `idempotency_keys`, no owner) is
/// honoured for the very same request only: its retry is recognised, while a different
/// request under the same idempotency key is new (no `409` telling it about another key's
/// request, no squatting); once older than 24 h it no longer counts at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_before_keys_were_scoped_are_honoured_for_the_same_request_until_they_expire()
{
    let app = spawn_app().await;
    let writer = app.create_key("publisher", &[]).await;
    let body = json!({"stream": "s", "type": "t", "payload": 1});
    let first = post_as(&app, &writer, "legacy-1", &body).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    // Move its record to the old global table, as the previous version would have written it.
    let db = app.db().await;
    db.batch_execute(
        "INSERT INTO idempotency_keys (key, request_hash, event_ids, created_at) \
           SELECT key, request_hash, event_ids, created_at FROM idempotency_records; \
         DELETE FROM idempotency_records;",
    )
    .await
    .unwrap();

    let publisher = app.create_key("publisher", &[]).await;
    let retried = post_as(&app, &publisher, "legacy-1", &body).await;
    assert_eq!(retried.status(), 200);
    assert_eq!(retried.json::<Value>().await.unwrap(), first);
    let other = json!({"stream": "s", "type": "t", "payload": 2});
    let new = post_as(&app, &publisher, "legacy-1", &other).await;
    assert_eq!(new.status(), 201);
    assert_eq!(new.json::<Value>().await.unwrap()["seq"], 2);

    // Once it is older than 24 h it no longer counts.
    db.batch_execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'; \
         DELETE FROM idempotency_records;",
    )
    .await
    .unwrap();
    let after = post_as(&app, &publisher, "legacy-1", &body).await;
    assert_eq!(after.status(), 201);
    assert_eq!(after.json::<Value>().await.unwrap()["seq"], 3);
}
