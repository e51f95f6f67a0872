//! Publishing and reading events.

use std::io::{Read as _, Write as _};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, assert_problem, spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_an_event_returns_201_with_the_stored_event() {
    let app = spawn_app().await;
    let response = app
        .post(
            "/v1/events",
            &json!({"stream": "payment:pay_123", "type": "payment.succeeded", "payload": {"amount": 1000}}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let event: Value = response.json().await.unwrap();
    assert_eq!(event["stream"], "payment:pay_123");
    assert_eq!(event["type"], "payment.succeeded");
    assert_eq!(event["seq"], 1);
    assert_eq!(event["payload"], json!({"amount": 1000}));
    let id = event["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    assert_eq!(location, format!("/v1/events/{id}"));
    assert!(chrono::DateTime::parse_from_rfc3339(event["created_at"].as_str().unwrap()).is_ok());

    let fetched: Value = app.get(&location).await.json().await.unwrap();
    assert_eq!(fetched, event);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seqs_count_up_per_stream_independently() {
    let app = spawn_app().await;
    for expected in 1..=3 {
        assert_eq!(
            app.publish("a", "t", json!(expected)).await["seq"],
            expected
        );
    }
    assert_eq!(app.publish("b", "t", json!(0)).await["seq"], 1);
    assert_eq!(app.publish("a", "t", json!(4)).await["seq"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payload_is_kept_byte_for_byte_and_null_is_a_payload() {
    let app = spawn_app().await;
    let body = r#"{"stream":"s","type":"t","payload":{"z": 1, "a": 1.50, "n": [1e3]}}"#;
    let response = app
        .request(Method::POST, "/v1/events", ADMIN_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let text = response.text().await.unwrap();
    assert!(
        text.contains(r#""payload":{"z": 1, "a": 1.50, "n": [1e3]}"#),
        "{text}"
    );

    let null = app.publish("s", "t", Value::Null).await;
    assert_eq!(null["payload"], Value::Null);
    assert_eq!(null["seq"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_event_ids_are_404() {
    let app = spawn_app().await;
    let unknown = app
        .get(&format!("/v1/events/{}", uuid::Uuid::now_v7()))
        .await;
    assert_problem(unknown, 404, "not-found").await;
    assert_problem(app.get("/v1/events/not-a-uuid").await, 404, "not-found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    let response = app
        .request(Method::POST, "/v1/events", ADMIN_KEY)
        .header("content-type", "application/json")
        .body(r#"{"stream": "s", "type": "#)
        .send()
        .await
        .unwrap();
    let body = assert_problem(response, 400, "malformed-request").await;
    assert!(body["detail"].as_str().unwrap().contains("not valid JSON"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_is_415() {
    let app = spawn_app().await;
    let response = app
        .request(Method::POST, "/v1/events", ADMIN_KEY)
        .header("content-type", "text/csv")
        .body("a,b")
        .send()
        .await
        .unwrap();
    assert_problem(response, 415, "unsupported-media-type").await;
}

/// `[[[...]]]`, `depth` levels deep.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// A payload nested deeper than PostgreSQL's JSON parser recurses (100,000 levels in 200 KB,
/// under the size limit) is refused with a 422 on every route that takes one, instead of
/// failing in the database (a 500, and a failed group commit for the requests beside it);
/// 64 levels are stored and come back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_nested_deeper_than_64_levels_are_422() {
    let app = spawn_app().await;
    let post_raw = |path: &str, body: String| {
        app.request(Method::POST, path, ADMIN_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let endpoint =
        crate::helpers::create_endpoint(&app, json!({"url": "https://hooks.example.com/deep"}))
            .await;
    let test_path = format!("/v1/endpoints/{}/test", endpoint["id"].as_str().unwrap());
    for depth in [65, 100_000] {
        let deep = nested(depth);
        let cases = [
            (
                "/v1/events".to_owned(),
                format!(r#"{{"stream": "s", "type": "t", "payload": {deep}}}"#),
                "payload",
            ),
            (
                "/v1/events/batch".to_owned(),
                format!(r#"{{"events": [{{"stream": "s", "type": "t", "payload": {deep}}}]}}"#),
                "events[0].payload",
            ),
        ];
        for (path, body, field) in cases {
            let problem =
                assert_problem(post_raw(&path, body).await.unwrap(), 422, "validation").await;
            assert_eq!(problem["field"], field, "{path} at depth {depth}");
        }
        if depth == 65 {
            // The test route's body is limited to 64 KiB: only the shallower one fits.
            let body = format!(r#"{{"payload": {deep}}}"#);
            let problem =
                assert_problem(post_raw(&test_path, body).await.unwrap(), 422, "validation").await;
            assert_eq!(problem["field"], "payload");
        }
    }
    let stream: Value = app.get("/v1/streams/s").await.json().await.unwrap();
    assert_eq!(stream["last_seq"], 0, "nothing stored");

    let deepest = nested(64);
    let response = post_raw(
        "/v1/events",
        format!(r#"{{"stream": "s", "type": "t", "payload": {deepest}}}"#),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    let page = app
        .get("/v1/streams/s/events?after=0")
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains(&format!(r#""payload":{deepest}"#)), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_fields_are_422_naming_the_field() {
    let app = spawn_app().await;
    let long_type = "t".repeat(101);
    let cases = [
        (json!({"type": "t", "payload": 1}), "stream"),
        (
            json!({"stream": "has space", "type": "t", "payload": 1}),
            "stream",
        ),
        (
            json!({"stream": "s".repeat(201), "type": "t", "payload": 1}),
            "stream",
        ),
        (json!({"stream": 42, "type": "t", "payload": 1}), "stream"),
        (json!({"stream": "s", "payload": 1}), "type"),
        (
            json!({"stream": "s", "type": long_type, "payload": 1}),
            "type",
        ),
        (json!({"stream": "s", "type": "t"}), "payload"),
    ];
    for (body, field) in cases {
        let response = app.post("/v1/events", &body).await;
        let problem = assert_problem(response, 422, "validation").await;
        assert_eq!(problem["field"], field, "for {body}");
    }
    // Nothing was stored along the way.
    let stream: Value = app.get("/v1/streams/s").await.json().await.unwrap();
    assert_eq!(stream["last_seq"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_over_the_limit_is_413() {
    let app = spawn_app_with(|s| s.max_payload = 1024).await;
    let fits = json!({"stream": "s", "type": "t", "payload": "x".repeat(1000)});
    assert_eq!(app.post("/v1/events", &fits).await.status(), 201);
    let over = json!({"stream": "s", "type": "t", "payload": "x".repeat(1100)});
    let problem = assert_problem(
        app.post("/v1/events", &over).await,
        413,
        "payload-too-large",
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("HERALD_MAX_PAYLOAD")
    );
    // Far over the limit: refused as a whole body, before it is parsed.
    let huge = json!({"stream": "s", "type": "t", "payload": "x".repeat(1 << 20)});
    assert_problem(
        app.post("/v1/events", &huge).await,
        413,
        "payload-too-large",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_oversized_body_is_refused_before_it_is_sent() {
    let app = spawn_app_with(|s| s.max_payload = 1024).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    // Announce 100 MB and send none of it: the answer must come without waiting for it.
    let response = tokio::task::spawn_blocking(move || {
        let mut socket = std::net::TcpStream::connect(address).unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            socket,
            "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
        )
        .unwrap();
        let mut buf = [0_u8; 1024];
        let n = socket.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("application/problem+json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_stored_whole_in_order() {
    let app = spawn_app().await;
    let events: Vec<Value> = (0..5)
        .map(|i| json!({"stream": if i % 2 == 0 { "even" } else { "odd" }, "type": "n", "payload": i}))
        .collect();
    let response = app
        .post("/v1/events/batch", &json!({"events": events}))
        .await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    let stored = body["events"].as_array().unwrap();
    let seen: Vec<(String, i64, i64)> = stored
        .iter()
        .map(|e| {
            (
                e["stream"].as_str().unwrap().to_owned(),
                e["seq"].as_i64().unwrap(),
                e["payload"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("even".into(), 1, 0),
            ("odd".into(), 1, 1),
            ("even".into(), 2, 2),
            ("odd".into(), 2, 3),
            ("even".into(), 3, 4)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_bad_event_stores_nothing() {
    let app = spawn_app().await;
    let body = json!({"events": [
        {"stream": "s", "type": "t", "payload": 1},
        {"stream": "bad stream", "type": "t", "payload": 2},
    ]});
    let problem =
        assert_problem(app.post("/v1/events/batch", &body).await, 422, "validation").await;
    assert_eq!(problem["field"], "events[1].stream");
    let stream: Value = app.get("/v1/streams/s").await.json().await.unwrap();
    assert_eq!(stream["last_seq"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_must_hold_1_to_1000_events() {
    let app = spawn_app().await;
    let event = json!({"stream": "s", "type": "t", "payload": 1});
    let full = json!({"events": vec![event.clone(); 1000]});
    let response = app.post("/v1/events/batch", &full).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["events"][999]["seq"], 1000);

    for events in [vec![], vec![event.clone(); 1001]] {
        let body = json!({"events": events});
        let problem =
            assert_problem(app.post("/v1/events/batch", &body).await, 422, "validation").await;
        assert_eq!(problem["field"], "events");
    }
    let problem = assert_problem(
        app.post("/v1/events/batch", &json!({})).await,
        422,
        "validation",
    )
    .await;
    assert_eq!(problem["field"], "events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_get_distinct_gapless_seqs() {
    let app = spawn_app().await;
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let client = app.client.clone();
        let url = format!("{}/v1/events", app.address);
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                let response = client
                    .post(&url)
                    .bearer_auth(ADMIN_KEY)
                    .json(&json!({"stream": "shared", "type": "t", "payload": [writer, i]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
                let event: Value = response.json().await.unwrap();
                seqs.push(event["seq"].as_i64().unwrap());
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=200).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_herald_streams_is_refused_singly_and_in_batches() {
    let app = spawn_app().await;
    for stream in ["herald:ops", "herald:test"] {
        let refused = app
            .post(
                "/v1/events",
                &json!({"stream": stream, "type": "endpoint.disabled", "payload": {}}),
            )
            .await;
        let problem = assert_problem(refused, 422, "validation").await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("herald:") && detail.contains("reserved"),
            "{detail}"
        );
    }
    // A batch with one such event is refused whole, naming the event.
    let events = json!({"events": [
        {"stream": "orders", "type": "order.created", "payload": 1},
        {"stream": "herald:ops", "type": "endpoint.disabled", "payload": 2}
    ]});
    let problem = assert_problem(
        app.post("/v1/events/batch", &events).await,
        422,
        "validation",
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("events[1].stream"),
        "{problem}"
    );
    let orders: Value = app
        .get("/v1/streams/orders/events?wait=0")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        orders["events"],
        json!([]),
        "nothing of the batch was stored"
    );
    // Streams that merely contain the word are anyone's.
    app.publish("heraldry:x", "t", json!(1)).await;
}
