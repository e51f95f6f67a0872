//! `/v1/endpoints`: webhook subscriptions.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, assert_problem, spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_is_created_with_its_secret_shown_once() {
    let app = spawn_app().await;
    let response = app
        .post(
            "/v1/endpoints",
            &json!({
                "url": "https://hooks.example.com/herald",
                "description": "billing",
                "event_types": ["payment.succeeded"],
                "streams": ["payment:*"],
                "rate_limit": 50,
                "max_in_flight": 4,
                "ordered": true,
                "headers": {"X-Team": "billing"}
            }),
        )
        .await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));
    assert!(herald::domain::signature::SigningSecret::parse(secret).is_ok());
    assert_eq!(created["url"], "https://hooks.example.com/herald");
    assert_eq!(created["event_types"], json!(["payment.succeeded"]));
    assert_eq!(created["streams"], json!(["payment:*"]));
    assert_eq!(created["enabled"], true);
    assert_eq!(created["rate_limit"], 50);
    assert_eq!(created["max_in_flight"], 4);
    assert_eq!(created["ordered"], true);
    assert_eq!(created["headers"], json!({"x-team": "billing"}));

    let id = created["id"].as_str().unwrap();
    let fetched: Value = app
        .get(&format!("/v1/endpoints/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(fetched.get("secret").is_none());
    assert_eq!(fetched["description"], "billing");
    let listed: Value = app.get("/v1/endpoints").await.json().await.unwrap();
    assert_eq!(listed["endpoints"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_receive_everything() {
    let app = spawn_app().await;
    let created: Value = app
        .post("/v1/endpoints", &json!({"url": "https://example.com/hook"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(created["event_types"], json!([]));
    assert_eq!(created["streams"], json!([]));
    assert_eq!(created["rate_limit"], Value::Null);
    assert_eq!(created["max_in_flight"], 10);
    assert_eq!(created["ordered"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_endpoints_are_422_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({}), "url"),
        (json!({"url": "ftp://example.com"}), "url"),
        (json!({"url": "http://169.254.169.254/latest"}), "url"),
        (json!({"url": "http://10.0.0.1/"}), "url"),
        (json!({"url": "http://[::1]/"}), "url"),
        (json!({"url": "http://0x7f000001/"}), "url"),
        (json!({"url": "https://u:p@example.com/"}), "url"),
        (
            json!({"url": "https://example.com", "streams": ["pay*ment"]}),
            "streams[0]",
        ),
        (
            json!({"url": "https://example.com", "event_types": ["a b"]}),
            "event_types[0]",
        ),
        (
            json!({"url": "https://example.com", "rate_limit": 0}),
            "rate_limit",
        ),
        (
            json!({"url": "https://example.com", "max_in_flight": 5000}),
            "max_in_flight",
        ),
        (
            json!({"url": "https://example.com", "headers": {"webhook-id": "x"}}),
            "headers.webhook-id",
        ),
        (
            json!({"url": "https://example.com", "headers": {"X-A": 1}}),
            "headers.X-A",
        ),
        (
            json!({"url": "https://example.com", "secret": "nope"}),
            "secret",
        ),
        (
            json!({"url": "https://example.com", "colour": "red"}),
            "colour",
        ),
        (json!({"url": 42}), "url"),
    ];
    for (body, field) in cases {
        let problem =
            assert_problem(app.post("/v1/endpoints", &body).await, 422, "validation").await;
        assert_eq!(problem["field"], field, "for {body}");
    }
    let listed: Value = app.get("/v1/endpoints").await.json().await.unwrap();
    assert_eq!(listed["endpoints"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_destinations_may_be_registered() {
    let app = spawn_app_with(|s| {
        s.destinations =
            herald::domain::destination::DestinationGuard::parse_allowed("127.0.0.0/8").unwrap();
    })
    .await;
    let response = app
        .post(
            "/v1/endpoints",
            &json!({"url": "http://127.0.0.1:9999/hook"}),
        )
        .await;
    assert_eq!(response.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_can_be_patched_and_deleted() {
    let app = spawn_app().await;
    let created: Value = app
        .post(
            "/v1/endpoints",
            &json!({"url": "https://example.com/a", "rate_limit": 5}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/endpoints/{id}");
    let patched = app
        .request(Method::PATCH, &path, ADMIN_KEY)
        .json(&json!({"enabled": false, "rate_limit": null, "url": "https://example.com/b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["rate_limit"], Value::Null);
    assert_eq!(patched["url"], "https://example.com/b");
    assert_eq!(patched["created_at"], created["created_at"]);

    let bad = app
        .request(Method::PATCH, &path, ADMIN_KEY)
        .json(&json!({"url": "http://192.168.0.1/"}))
        .send()
        .await
        .unwrap();
    assert_problem(bad, 422, "validation").await;
    let unchanged: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(unchanged["url"], "https://example.com/b");

    let deleted = app
        .request(Method::DELETE, &path, ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_problem(app.get(&path).await, 404, "not-found").await;
    let again = app
        .request(Method::DELETE, &path, ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_problem(again, 404, "not-found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_secret_keeps_the_old_one_for_a_grace_period() {
    let app = spawn_app().await;
    let created: Value = app
        .post("/v1/endpoints", &json!({"url": "https://example.com/a"}))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let rotated = app
        .request(
            Method::POST,
            &format!("/v1/endpoints/{id}/rotate-secret"),
            ADMIN_KEY,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    let rotated: Value = rotated.json().await.unwrap();
    assert_ne!(rotated["secret"], created["secret"]);
    let expires = chrono::DateTime::parse_from_rfc3339(
        rotated["previous_secret_expires_at"].as_str().unwrap(),
    )
    .unwrap();
    let in_hours =
        (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_minutes() as f64 / 60.0;
    assert!((23.9..=24.0).contains(&in_hours), "{in_hours}");

    let row = app
        .db()
        .await
        .query_one(
            "SELECT secret, previous_secret FROM endpoints WHERE id::text = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (secret, previous): (Vec<u8>, Vec<u8>) = (row.get(0), row.get(1));
    let shown =
        |bytes: Vec<u8>| herald::domain::signature::SigningSecret::from_bytes(bytes).expose();
    assert_eq!(shown(secret), rotated["secret"].as_str().unwrap());
    assert_eq!(shown(previous), created["secret"].as_str().unwrap());

    let short = app
        .request(
            Method::POST,
            &format!("/v1/endpoints/{id}/rotate-secret"),
            ADMIN_KEY,
        )
        .json(&json!({"grace": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(short.status(), 200);
    let too_long = app
        .request(
            Method::POST,
            &format!("/v1/endpoints/{id}/rotate-secret"),
            ADMIN_KEY,
        )
        .json(&json!({"grace": "30d"}))
        .send()
        .await
        .unwrap();
    assert_problem(too_long, 422, "validation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_manage_endpoints() {
    let app = spawn_app().await;
    let publisher = app.create_key("publisher", &[]).await;
    let response = app
        .request(Method::POST, "/v1/endpoints", &publisher)
        .json(&json!({"url": "https://example.com"}))
        .send()
        .await
        .unwrap();
    assert_problem(response, 403, "forbidden").await;
    let response = app
        .request(Method::GET, "/v1/endpoints", &publisher)
        .send()
        .await
        .unwrap();
    assert_problem(response, 403, "forbidden").await;
}

/// A description is a note for people: NUL (which PostgreSQL's `text` cannot hold) and
/// other control characters are a 422 naming the field, on create and update, for endpoints
/// and for API keys; the limit counts characters, not bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptions_with_control_characters_are_422() {
    let app = spawn_app().await;
    let url = "https://hooks.example.com/notes";
    let endpoint = crate::helpers::create_endpoint(&app, json!({"url": url})).await;
    let patch_path = format!("/v1/endpoints/{}", endpoint["id"].as_str().unwrap());
    for bad in ["a\u{0}b", "bell\u{7}", "\u{1b}[31mred"] {
        let created = app
            .post("/v1/endpoints", &json!({"url": url, "description": bad}))
            .await;
        let problem = assert_problem(created, 422, "validation").await;
        assert_eq!(problem["field"], "description");
        let patched = app
            .request(Method::PATCH, &patch_path, ADMIN_KEY)
            .json(&json!({"description": bad}))
            .send()
            .await
            .unwrap();
        let problem = assert_problem(patched, 422, "validation").await;
        assert_eq!(problem["field"], "description");
        let key = app
            .post(
                "/v1/keys",
                &json!({"role": "publisher", "description": bad}),
            )
            .await;
        let problem = assert_problem(key, 422, "validation").await;
        assert_eq!(problem["field"], "description");
    }
    // Tabs and line breaks are fine, and 1,000 characters of two bytes each too.
    let note = format!("line one\n\tline two {}", "é".repeat(981));
    assert_eq!(note.chars().count(), 1000);
    let created = app
        .post_expecting(
            "/v1/endpoints",
            &json!({"url": url, "description": note}),
            201,
        )
        .await;
    assert_eq!(created["description"], note);
    let key = app
        .post_expecting(
            "/v1/keys",
            &json!({"role": "publisher", "description": note}),
            201,
        )
        .await;
    assert_eq!(key["description"], note);
    let too_long = "é".repeat(1001);
    let problem = assert_problem(
        app.post(
            "/v1/endpoints",
            &json!({"url": url, "description": too_long}),
        )
        .await,
        422,
        "validation",
    )
    .await;
    assert_eq!(problem["field"], "description");
}
