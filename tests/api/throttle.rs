//! Failed authentications of any kind are throttled per client address (`429` +
//! `Retry-After`), valid keys from the same address are not, and forwarded addresses are
//! believed only from `HERALD_TRUSTED_PROXIES`.

use reqwest::{RequestBuilder, StatusCode};
use serde_json::json;

use herald::auth::AUTH_FAILURE_BURST;
use herald::throttle::{ForwardedHeader, TrustedProxies};

use crate::helpers::{ADMIN_KEY, TestApp, assert_problem, spawn_app, spawn_app_with};

const WRONG_KEY: &str = "hrld_definitely_not_a_key_0000000000";

fn list_endpoints(app: &TestApp) -> RequestBuilder {
    app.client.get(format!("{}/v1/endpoints", app.address))
}

/// Spends an address's whole allowance of failures, each answered 401.
async fn fail_allowance(app: &TestApp, mut with: impl FnMut(RequestBuilder) -> RequestBuilder) {
    for _ in 0..AUTH_FAILURE_BURST {
        let refused = with(list_endpoints(app).bearer_auth(WRONG_KEY))
            .send()
            .await
            .unwrap();
        assert_problem(refused, 401, "unauthorized").await;
    }
}

/// A wrong key, with one forwarded-address header.
async fn wrong_key_from(app: &TestApp, header: &str, value: &str) -> reqwest::Response {
    list_endpoints(app)
        .bearer_auth(WRONG_KEY)
        .header(header, value)
        .send()
        .await
        .unwrap()
}

async fn assert_throttled(response: reqwest::Response) {
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry_after), "Retry-After {retry_after}");
    let problem = assert_problem(response, 429, "too-many-requests").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("too many failed authentications"),
        "{problem}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_of_any_kind_are_throttled_but_valid_keys_are_not() {
    let app = spawn_app().await;
    let publisher = app.create_key("publisher", &[]).await;
    // Without trusted proxies, forwarded headers are the client's own words: varying them
    // does not make a new client.
    let mut n = 0;
    fail_allowance(&app, |req| {
        n += 1;
        req.header("X-Forwarded-For", format!("203.0.113.{n}"))
    })
    .await;

    assert_throttled(
        list_endpoints(&app)
            .bearer_auth(WRONG_KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let malformed = list_endpoints(&app)
        .header("Authorization", "Basic YWRtaW46YWRtaW4=")
        .send()
        .await
        .unwrap();
    assert_throttled(malformed).await;
    let stale_session = list_endpoints(&app)
        .header("Cookie", "herald_session=not-a-session")
        .send()
        .await
        .unwrap();
    assert_throttled(stale_session).await;
    let sign_in = app
        .client
        .post(format!("{}/v1/sessions", app.address))
        .json(&json!({"key": WRONG_KEY}))
        .send()
        .await
        .unwrap();
    assert_throttled(sign_in).await;

    // Valid keys from the same address are served at once, every time.
    for _ in 0..5 {
        let ok = list_endpoints(&app)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }
    let published = app
        .client
        .post(format!("{}/v1/events", app.address))
        .bearer_auth(&publisher)
        .json(&json!({"stream": "orders", "type": "t", "payload": {}}))
        .send()
        .await
        .unwrap();
    assert!(published.status().is_success(), "{}", published.status());
    // No credentials at all is not a guess: still the plain 401.
    let anonymous = list_endpoints(&app).send().await.unwrap();
    assert_problem(anonymous, 401, "unauthorized").await;

    assert_eq!(
        app.metric("herald_auth_failures_total{outcome=\"refused\"}")
            .await,
        u64::from(AUTH_FAILURE_BURST)
    );
    assert_eq!(
        app.metric("herald_auth_failures_total{outcome=\"throttled\"}")
            .await,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_trusted_proxy_the_right_most_untrusted_hop_is_the_client() {
    // The test client connects from loopback, as a proxy on the same host would.
    let app = spawn_app_with(|s| {
        s.trusted_proxies = TrustedProxies::parse("127.0.0.1/32, 10.0.0.0/8").unwrap();
    })
    .await;
    fail_allowance(&app, |req| req.header("X-Forwarded-For", "203.0.113.5")).await;
    let again = wrong_key_from(&app, "X-Forwarded-For", "203.0.113.5").await;
    assert_throttled(again).await;
    // The client prepends an address of its choosing; the proxy appended the real one.
    let forged = wrong_key_from(&app, "X-Forwarded-For", "198.51.100.7, 203.0.113.5").await;
    assert_throttled(forged).await;
    // Through two trusted proxies.
    let two_hops = wrong_key_from(&app, "X-Forwarded-For", "203.0.113.5, 10.0.0.9").await;
    assert_throttled(two_hops).await;
    // Another client behind the proxy has its own allowance.
    let other = wrong_key_from(&app, "X-Forwarded-For", "198.51.100.7").await;
    assert_problem(other, 401, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_writes_forwarded_is_read_through_that_header_only() {
    let app = spawn_app_with(|s| {
        s.trusted_proxies = TrustedProxies::parse("127.0.0.1").unwrap();
        s.forwarded_header = ForwardedHeader::Forwarded;
    })
    .await;
    let client = r#"for="[2001:db8::1]:4711";proto=https"#;
    fail_allowance(&app, |req| req.header("Forwarded", client)).await;
    // X-Forwarded-For is not what this proxy writes: a client's own copy changes nothing.
    let dodge = list_endpoints(&app)
        .bearer_auth(WRONG_KEY)
        .header("Forwarded", client)
        .header("X-Forwarded-For", "198.51.100.7")
        .send()
        .await
        .unwrap();
    assert_throttled(dodge).await;
    // Same /64, same client.
    let neighbour = wrong_key_from(&app, "Forwarded", "for=\"[2001:db8::ffff]\"").await;
    assert_throttled(neighbour).await;
    let other = wrong_key_from(&app, "Forwarded", "for=198.51.100.7").await;
    assert_problem(other, 401, "unauthorized").await;
}
