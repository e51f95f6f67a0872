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
            "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'",
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
