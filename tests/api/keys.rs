//! API keys: roles, prefixes, storage and bootstrap.

use herald::startup::Application;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::helpers::{ADMIN_KEY, assert_problem, create_database, spawn_app, test_settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_known_key_are_401() {
    let app = spawn_app().await;
    let anonymous = app
        .client
        .get(format!("{}/v1/streams/s/events", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(
        anonymous.headers()["www-authenticate"],
        "Bearer realm=\"herald\""
    );
    assert_problem(anonymous, 401, "unauthorized").await;

    let unknown = app
        .request(
            Method::GET,
            "/v1/streams/s/events",
            "hrld_not_a_key_that_exists",
        )
        .send()
        .await
        .unwrap();
    assert_problem(unknown, 401, "unauthorized").await;

    let basic = app
        .client
        .get(format!("{}/v1/streams/s/events", app.address))
        .basic_auth("user", Some("pass"))
        .send()
        .await
        .unwrap();
    assert_problem(basic, 401, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_only_create_events() {
    let app = spawn_app().await;
    let publisher = app.create_key("publisher", &[]).await;
    let event = json!({"stream": "payment:1", "type": "t", "payload": 1});
    let created = app
        .request(Method::POST, "/v1/events", &publisher)
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let batch = json!({"events": [event]});
    let created = app
        .request(Method::POST, "/v1/events/batch", &publisher)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    for path in [
        "/v1/streams/payment:1/events",
        "/v1/streams/payment:1",
        "/v1/keys",
    ] {
        let response = app
            .request(Method::GET, path, &publisher)
            .send()
            .await
            .unwrap();
        assert_problem(response, 403, "forbidden").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_read_only_streams_under_their_prefixes() {
    let app = spawn_app().await;
    let mine = app.publish("payment:1", "t", json!(1)).await;
    let theirs = app.publish("invoice:1", "t", json!(2)).await;
    let subscriber = app.create_key("subscriber", &["payment:"]).await;

    let read = |path: String| app.request(Method::GET, &path, &subscriber).send();
    let page: Value = read("/v1/streams/payment:1/events".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"][0]["id"], mine["id"]);
    assert_eq!(
        read("/v1/streams/payment:1".into()).await.unwrap().status(),
        200
    );
    assert_eq!(
        read(format!("/v1/events/{}", mine["id"].as_str().unwrap()))
            .await
            .unwrap()
            .status(),
        200
    );

    assert_problem(
        read("/v1/streams/invoice:1/events".into()).await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    assert_problem(
        read("/v1/streams/invoice:1".into()).await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    // An event outside the prefixes is not revealed to exist.
    let hidden = read(format!("/v1/events/{}", theirs["id"].as_str().unwrap()))
        .await
        .unwrap();
    assert_problem(hidden, 404, "not-found").await;

    let publish = app
        .request(Method::POST, "/v1/events", &subscriber)
        .json(&json!({"stream": "payment:1", "type": "t", "payload": 1}))
        .send()
        .await
        .unwrap();
    assert_problem(publish, 403, "forbidden").await;
    let keys = app
        .request(Method::POST, "/v1/keys", &subscriber)
        .json(&json!({"role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_problem(keys, 403, "forbidden").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_shown_once_and_stored_only_as_a_hash() {
    let app = spawn_app().await;
    let response = app.post("/v1/keys", &json!({"role": "subscriber", "stream_prefixes": ["a:", "b:"], "description": "mobile"})).await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("hrld_"));
    assert_eq!(created["role"], "subscriber");
    assert_eq!(created["stream_prefixes"], json!(["a:", "b:"]));
    assert_eq!(created["description"], "mobile");

    let listed: Value = app.get("/v1/keys").await.json().await.unwrap();
    let entry = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == created["id"])
        .unwrap()
        .clone();
    assert!(entry.get("key").is_none());
    assert_eq!(entry["key_prefix"], key[..11]);
    assert!(!listed.to_string().contains(&key));

    let db = app.db().await;
    let rows = db.query("SELECT * FROM api_keys", &[]).await.unwrap();
    assert_eq!(rows.len(), 2);
    let dump = db
        .query_one("SELECT string_agg(t::text, ' ') FROM api_keys t", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    assert!(!dump.contains(&key), "the key is stored in clear");
    assert!(
        !dump.contains(ADMIN_KEY),
        "the admin key is stored in clear"
    );
    let hash: Vec<u8> = db
        .query_one(
            "SELECT key_hash FROM api_keys WHERE id::text = $1",
            &[&created["id"].as_str().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(hash, Sha256::digest(key.as_bytes()).to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_prefixes_must_go_together() {
    let app = spawn_app().await;
    for (body, field) in [
        (json!({"role": "subscriber"}), "stream_prefixes"),
        (
            json!({"role": "admin", "stream_prefixes": ["a:"]}),
            "stream_prefixes",
        ),
        (json!({"role": "root"}), "role"),
        (json!({}), "role"),
        (
            json!({"role": "subscriber", "stream_prefixes": ["bad prefix"]}),
            "stream_prefixes[0]",
        ),
    ] {
        let problem = assert_problem(app.post("/v1/keys", &body).await, 422, "validation").await;
        assert_eq!(problem["field"], field, "for {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_stops_working_at_once() {
    let app = spawn_app().await;
    let response = app.post("/v1/keys", &json!({"role": "publisher"})).await;
    let created: Value = response.json().await.unwrap();
    let key = created["key"].as_str().unwrap();
    let event = json!({"stream": "s", "type": "t", "payload": 1});
    assert_eq!(
        app.request(Method::POST, "/v1/events", key)
            .json(&event)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );

    let id = created["id"].as_str().unwrap();
    let deleted = app
        .request(Method::DELETE, &format!("/v1/keys/{id}"), ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let refused = app
        .request(Method::POST, "/v1/events", key)
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_problem(refused, 401, "unauthorized").await;

    let again = app
        .request(Method::DELETE, &format!("/v1/keys/{id}"), ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_problem(again, 404, "not-found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_admin_key_cannot_be_deleted() {
    let app = spawn_app().await;
    let listed: Value = app.get("/v1/keys").await.json().await.unwrap();
    let admin_id = listed["keys"][0]["id"].as_str().unwrap().to_owned();
    let response = app
        .request(Method::DELETE, &format!("/v1/keys/{admin_id}"), ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_problem(response, 409, "conflict").await;

    let second = app.create_key("admin", &[]).await;
    let response = app
        .request(Method::DELETE, &format!("/v1/keys/{admin_id}"), &second)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_database_gets_one_generated_admin_key() {
    let (_, url) = create_database().await;
    let mut settings = test_settings();
    settings.admin_key = None;
    let mut first = Application::build(settings.clone(), &url).await.unwrap();
    let key = first.take_generated_admin_key().expect("a generated key");
    let port = first.port();
    let _handle = first.handle();
    tokio::spawn(first.run_until_stopped());
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/v1/keys"))
        .bearer_auth(key.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // A restart on the same database does not make another.
    let mut second = Application::build(settings, &url).await.unwrap();
    assert!(second.take_generated_admin_key().is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["keys"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_keys_held_polls_and_sse_streams_end_within_seconds_on_every_instance() {
    let a = crate::helpers::spawn_app().await;
    let b = crate::helpers::spawn_app_on(
        crate::helpers::test_settings(),
        a.db_name.clone(),
        a.database_url.clone(),
    )
    .await;
    let reader = a.create_key("subscriber", &["orders"]).await;
    // A long-poll and an SSE stream on instance B, the deletion through instance A.
    let client = reqwest::Client::new();
    let poll = client
        .get(format!("{}/v1/streams/orders/events?wait=50", b.address))
        .bearer_auth(&reader)
        .send();
    let sse = client
        .get(format!("{}/v1/streams/orders/sse", b.address))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let poll = tokio::spawn(async move { poll.await.unwrap().text().await.unwrap() });
    let sse = tokio::spawn(async move { sse.text().await.unwrap() });
    b.wait_for_metric("herald_waiters", 2).await;

    let id = a.key_id_with_role("subscriber").await;
    let deleted = a
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/keys/{id}"),
            crate::helpers::ADMIN_KEY,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);

    let body = tokio::time::timeout(std::time::Duration::from_secs(10), poll)
        .await
        .expect("the held poll ended")
        .unwrap();
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["events"], serde_json::json!([]));
    tokio::time::timeout(std::time::Duration::from_secs(10), sse)
        .await
        .expect("the SSE stream ended")
        .unwrap();
    // Ended by the key check (every 2 s), seconds before the 50 s wait ran out.
    assert_eq!(b.metric("herald_longpolls_timed_out_total").await, 0);
    // And the key no longer reads anything.
    let refused = client
        .get(format!("{}/v1/streams/orders/events?wait=0", b.address))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
}

/// The console's live feed is held like any stream: deleting its key ends it within
/// seconds (it used to stay open, announcing changes, until its 10-minute lifetime).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_keys_changes_feed_ends_within_seconds() {
    let app = spawn_app().await;
    let created = app
        .post_expecting("/v1/keys", &serde_json::json!({"role": "admin"}), 201)
        .await;
    let feed = app
        .request(
            reqwest::Method::GET,
            "/v1/deliveries/changes",
            created["key"].as_str().unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    let feed = tokio::spawn(async move { feed.text().await.unwrap() });
    let deleted = app
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/keys/{}", created["id"].as_str().unwrap()),
            crate::helpers::ADMIN_KEY,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let body = tokio::time::timeout(std::time::Duration::from_secs(10), feed)
        .await
        .expect("the feed ended")
        .unwrap();
    assert!(body.contains("event: ready"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_holds_at_most_its_max_held_polls_and_streams() {
    let app = spawn_app().await;
    let created = app
        .post(
            "/v1/keys",
            &json!({"role": "subscriber", "stream_prefixes": ["orders"], "max_held": 2}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["max_held"], 2);
    let key = created["key"].as_str().unwrap().to_owned();
    let client = reqwest::Client::new();
    let poll = |client: reqwest::Client, base: String, key: String| async move {
        client
            .get(format!("{base}/v1/streams/orders/events?wait=30"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    };
    // One long-poll and one SSE stream: its two.
    let first = poll(client.clone(), app.address.clone(), key.clone()).await;
    assert_eq!(first.status(), 200);
    let sse = client
        .get(format!("{}/v1/streams/orders/sse", app.address))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    // A third is refused with 429 and Retry-After, while other keys are not.
    let third = poll(client.clone(), app.address.clone(), key.clone()).await;
    assert_eq!(third.headers()["retry-after"], "5");
    let problem = assert_problem(third, 429, "too-many-requests").await;
    assert!(problem["detail"].as_str().unwrap().contains("max_held"));
    let admin = poll(client.clone(), app.address.clone(), ADMIN_KEY.to_owned()).await;
    assert_eq!(admin.status(), 200);
    // A plain poll holds nothing and is not counted.
    let plain = client
        .get(format!("{}/v1/streams/orders/events?wait=0", app.address))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    // Once the stream is closed, there is room again.
    drop(sse);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let again = poll(client.clone(), app.address.clone(), key.clone()).await;
        if again.status() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no room after closing the stream"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Bad caps are refused.
    for bad in [json!(0), json!(-1), json!(2_000_000)] {
        let refused = app
            .post(
                "/v1/keys",
                &json!({"role": "subscriber", "stream_prefixes": ["orders"], "max_held": bad}),
            )
            .await;
        assert_problem(refused, 422, "validation").await;
    }
    drop(first);
}
