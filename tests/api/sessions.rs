//! Console sessions: admin key -> cookie, CSRF on changes, sign-out, throttled failures.

use reqwest::Method;
use serde_json::{Value, json};

use herald::throttle::TrustedProxies;

use crate::helpers::{ADMIN_KEY, TestApp, assert_problem, spawn_app, spawn_app_with};

/// Signs in; returns the cookie value, the CSRF token and the raw Set-Cookie header.
async fn sign_in(app: &TestApp, key: &str) -> (String, String, String) {
    let response = app
        .client
        .post(format!("{}/v1/sessions", app.address))
        .json(&json!({"key": key}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    let value = set_cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("herald_session=")
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    (
        value,
        body["csrf_token"].as_str().unwrap().to_owned(),
        set_cookie,
    )
}

fn with_cookie(app: &TestApp, method: Method, path: &str, cookie: &str) -> reqwest::RequestBuilder {
    app.client
        .request(method, format!("{}{path}", app.address))
        .header("Cookie", format!("herald_session={cookie}"))
}

/// Signs the session out (with its CSRF token).
async fn sign_out(app: &TestApp, cookie: &str, csrf: &str) -> reqwest::Response {
    with_cookie(app, Method::DELETE, "/v1/sessions/current", cookie)
        .header("X-CSRF-Token", csrf)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_key_signs_in_to_a_cookie_session_that_needs_csrf_to_change_things() {
    let app = spawn_app().await;
    let (cookie, csrf, set_cookie) = sign_in(&app, ADMIN_KEY).await;
    let attributes = set_cookie.to_ascii_lowercase();
    for attribute in ["httponly", "samesite=strict", "path=/", "max-age=43200"] {
        assert!(attributes.contains(attribute), "{set_cookie}");
    }
    assert!(!attributes.contains("secure"), "plain HTTP: no Secure flag");

    let listed = with_cookie(&app, Method::GET, "/v1/endpoints", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let current: Value = with_cookie(&app, Method::GET, "/v1/sessions/current", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(current["csrf_token"], csrf.as_str());

    let body = json!({"url": "https://example.com/hook"});
    let forged = with_cookie(&app, Method::POST, "/v1/endpoints", &cookie)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(forged, 403, "forbidden").await;
    let wrong = with_cookie(&app, Method::POST, "/v1/endpoints", &cookie)
        .header("X-CSRF-Token", "not-the-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(wrong, 403, "forbidden").await;
    let created = with_cookie(&app, Method::POST, "/v1/endpoints", &cookie)
        .header("X-CSRF-Token", &csrf)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // Sign-out needs the token too, then the cookie is dead.
    let refused = with_cookie(&app, Method::DELETE, "/v1/sessions/current", &cookie)
        .send()
        .await
        .unwrap();
    assert_problem(refused, 403, "forbidden").await;
    let signed_out = sign_out(&app, &cookie, &csrf).await;
    assert_eq!(signed_out.status(), 204);
    assert!(
        signed_out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = with_cookie(&app, Method::GET, "/v1/endpoints", &cookie)
        .send()
        .await
        .unwrap();
    assert_problem(after, 401, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_stored_hashed_and_expire() {
    let app = spawn_app().await;
    let (cookie, _, _) = sign_in(&app, ADMIN_KEY).await;
    let db = app.db().await;
    let dump: String = db
        .query_one("SELECT string_agg(s::text, ' ') FROM sessions s", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        !dump.contains(&cookie),
        "the session token is stored in clear"
    );
    db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second'",
        &[],
    )
    .await
    .unwrap();
    let expired = with_cookie(&app, Method::GET, "/v1/endpoints", &cookie)
        .send()
        .await
        .unwrap();
    assert_problem(expired, 401, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_are_refused_and_repeated_failures_slowed_down() {
    let app = spawn_app().await;
    let publisher = app.create_key("publisher", &[]).await;
    let attempt = |key: String| {
        app.client
            .post(format!("{}/v1/sessions", app.address))
            .json(&json!({"key": key}))
            .send()
    };
    let not_admin = attempt(publisher).await.unwrap();
    assert_problem(not_admin, 403, "forbidden").await;
    for _ in 0..4 {
        let wrong = attempt("hrld_definitely_not_a_key".into()).await.unwrap();
        let problem = assert_problem(wrong, 401, "unauthorized").await;
        assert_eq!(problem["detail"], "that is not a valid API key");
    }
    let throttled = attempt(ADMIN_KEY.into()).await.unwrap();
    assert!(throttled.headers().contains_key("retry-after"));
    assert_problem(throttled, 429, "too-many-requests").await;
    let missing = app
        .client
        .post(format!("{}/v1/sessions", app.address))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 429, "still throttled, whatever the body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_one_client_failing_does_not_lock_out_the_others() {
    // The test client connects from loopback, as a proxy on the same host would.
    let app = spawn_app_with(|s| {
        s.trusted_proxies = TrustedProxies::parse("127.0.0.1/32").unwrap();
    })
    .await;
    let attempt = |key: &str, client_ip: &str| {
        app.client
            .post(format!("{}/v1/sessions", app.address))
            .header("X-Forwarded-For", client_ip)
            .json(&json!({"key": key}))
            .send()
    };
    for _ in 0..5 {
        let wrong = attempt("hrld_definitely_not_a_key", "203.0.113.5")
            .await
            .unwrap();
        assert_problem(wrong, 401, "unauthorized").await;
    }
    let throttled = attempt(ADMIN_KEY, "203.0.113.5").await.unwrap();
    assert_problem(throttled, 429, "too-many-requests").await;
    let other = attempt(ADMIN_KEY, "198.51.100.7").await.unwrap();
    assert_eq!(
        other.status(),
        201,
        "another client behind the proxy signs in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_client_cannot_pick_its_address_to_dodge_the_sign_in_lockout() {
    // No HERALD_TRUSTED_PROXIES: X-Forwarded-For and Forwarded are the client's own words.
    let app = spawn_app().await;
    for n in 0..5 {
        let wrong = app
            .client
            .post(format!("{}/v1/sessions", app.address))
            .header("X-Forwarded-For", format!("203.0.113.{n}"))
            .header("Forwarded", format!("for=198.51.100.{n}"))
            .json(&json!({"key": "hrld_definitely_not_a_key"}))
            .send()
            .await
            .unwrap();
        assert_problem(wrong, 401, "unauthorized").await;
    }
    let throttled = app
        .client
        .post(format!("{}/v1/sessions", app.address))
        .header("X-Forwarded-For", "192.0.2.200")
        .json(&json!({"key": ADMIN_KEY}))
        .send()
        .await
        .unwrap();
    assert_problem(throttled, 429, "too-many-requests").await;
}

/// The console's live feed opened with a session ends within seconds of the session's
/// sign-out (on any instance: it checks the session itself), not at its 10-minute lifetime;
/// one opened with a key is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_ends_the_sessions_changes_feed() {
    let app = spawn_app().await;
    let (cookie, csrf, _) = sign_in(&app, ADMIN_KEY).await;
    let feed = with_cookie(&app, Method::GET, "/v1/deliveries/changes", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    let feed = tokio::spawn(async move { feed.text().await.unwrap() });
    let by_key = app
        .request(Method::GET, "/v1/deliveries/changes", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(by_key.status(), 200);
    let mut by_key = by_key.bytes_stream();

    let signed_out = sign_out(&app, &cookie, &csrf).await;
    assert_eq!(signed_out.status(), 204);
    let body = tokio::time::timeout(std::time::Duration::from_secs(10), feed)
        .await
        .expect("the session's feed ended")
        .unwrap();
    assert!(body.contains("event: ready"), "{body}");
    // The key's feed goes on: it still announces a change.
    use futures_util::StreamExt as _;
    let first = by_key.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: ready"));
    // An endpoint, so that a publish makes a delivery, which the feed announces.
    crate::helpers::create_endpoint(&app, json!({"url": "https://hooks.example.com/changes"}))
        .await;
    app.publish("s", "t", json!(1)).await;
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), by_key.next())
        .await
        .expect("the key's feed is still open")
        .expect("not ended")
        .unwrap();
    assert!(!next.is_empty());
}
