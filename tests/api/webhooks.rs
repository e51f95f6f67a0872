//! Signed webhook delivery to real receivers on loopback.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use herald::config::Settings;
use herald::domain::destination::DestinationGuard;
use herald::domain::retry::RetrySchedule;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, TestApp, assert_problem, create_endpoint, spawn_app_with};
use crate::receiver::{Received, Receiver, Reply};

fn fast(settings: &mut Settings, schedule: &str) {
    settings.destinations = DestinationGuard::parse_allowed("127.0.0.0/8,::1/128").unwrap();
    settings.retry_schedule = RetrySchedule::parse(schedule).unwrap();
    settings.delivery_timeout = Duration::from_secs(2);
}

async fn webhook_app(schedule: &str) -> TestApp {
    let schedule = schedule.to_owned();
    spawn_app_with(move |s| fast(s, &schedule)).await
}

/// An instance that serves the API and attempts nothing.
async fn api_only_app(schedule: &str) -> TestApp {
    let schedule = schedule.to_owned();
    spawn_app_with(move |s| {
        fast(s, &schedule);
        s.delivery_concurrency = 0;
    })
    .await
}

/// Polls a delivery until its status is `status` (10 s at most).
async fn wait_for_status(app: &TestApp, delivery_id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let delivery: Value = app
            .get(&format!("/v1/deliveries/{delivery_id}"))
            .await
            .json()
            .await
            .unwrap();
        if delivery["status"] == status {
            return delivery;
        }
        assert!(
            Instant::now() < deadline,
            "delivery stayed {}: {delivery}",
            delivery["status"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn only_delivery(app: &TestApp) -> Value {
    let page: Value = app.get("/v1/deliveries").await.json().await.unwrap();
    let deliveries = page["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{page}");
    deliveries[0].clone()
}

/// Recovers the endpoint's events of the last five minutes and checks that `expected`
/// deliveries were made due, recorded as one `recover` replay.
async fn recover_last_five_minutes(app: &TestApp, endpoint: &Value, expected: i64) {
    let since = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let path = format!("/v1/endpoints/{}/recover", endpoint["id"].as_str().unwrap());
    let recovered: Value = app
        .post(&path, &json!({"since": since}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(recovered["recovered"], expected);
    let progress: Value = app
        .get(&format!(
            "/v1/replays/{}",
            recovered["replay_id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(progress["kind"], "recover");
    assert_eq!(progress["total"], expected);
    assert_eq!(progress["criteria"]["endpoint_id"], endpoint["id"]);
}

fn verify(secret: &str, request: &Received) -> bool {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &request.headers {
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&request.body, &headers)
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_arrives_signed_in_the_standard_format() {
    let app = webhook_app("1s").await;
    let receiver = Receiver::start().await;
    let endpoint = create_endpoint(
        &app,
        json!({"url": receiver.url, "headers": {"X-Team": "billing"}}),
    )
    .await;
    let secret = endpoint["secret"].as_str().unwrap();
    let event = app
        .publish(
            "payment:pay_1",
            "payment.succeeded",
            json!({"amount": 1000}),
        )
        .await;

    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    let request = &got[0];
    assert!(verify(secret, request), "the signature does not verify");
    assert_eq!(request.headers["webhook-id"], event["id"].as_str().unwrap());
    assert_eq!(request.headers["content-type"], "application/json");
    assert!(request.headers["user-agent"].starts_with("Herald/"));
    assert_eq!(request.headers["x-team"], "billing");
    let body = request.json();
    assert_eq!(body["id"], event["id"]);
    assert_eq!(body["type"], "payment.succeeded");
    assert_eq!(body["stream"], "payment:pay_1");
    assert_eq!(body["seq"], 1);
    assert_eq!(body["data"], json!({"amount": 1000}));
    assert!(chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok());

    let delivery = only_delivery(&app).await;
    let delivery = wait_for_status(&app, delivery["id"].as_str().unwrap(), "succeeded").await;
    assert_eq!(delivery["attempts"].as_array().unwrap().len(), 1);
    let raw = app
        .get(&format!(
            "/v1/deliveries/{}",
            delivery["id"].as_str().unwrap()
        ))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        raw.matches("\"attempts\":").count(),
        1,
        "one attempts key: {raw}"
    );
    let attempt = &delivery["attempts"][0];
    assert_eq!(attempt["response_status"], 200);
    assert_eq!(attempt["response_body"], "status 200");
    assert_eq!(attempt["trigger"], "schedule");
    assert_eq!(attempt["request_headers"]["webhook-id"], event["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rotation_both_secrets_verify() {
    let app = webhook_app("1s").await;
    let receiver = Receiver::start().await;
    let endpoint = create_endpoint(&app, json!({"url": receiver.url})).await;
    let old = endpoint["secret"].as_str().unwrap().to_owned();
    let id = endpoint["id"].as_str().unwrap();
    let rotated: Value = app
        .request(
            Method::POST,
            &format!("/v1/endpoints/{id}/rotate-secret"),
            ADMIN_KEY,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new = rotated["secret"].as_str().unwrap();
    app.publish("s", "t", json!(1)).await;
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert!(verify(new, &got[0]));
    assert!(verify(&old, &got[0]));
    assert_eq!(got[0].headers["webhook-signature"].split(' ').count(), 2);
}

/// A receiver's answer is third-party input: a body with a NUL byte (any binary error page)
/// is text PostgreSQL refuses. It must not stop that attempt, nor the others recorded in
/// the same batch, from being recorded (before, the whole batch was dropped: every delivery
/// in it stayed `delivering` and was sent again when its lease ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_with_a_nul_byte_is_recorded_with_the_batch_it_came_in() {
    let app = webhook_app("100ms").await;
    let binary = Receiver::start().await;
    binary.set_default(Reply {
        body: "GIF89a\0\u{1}binary".to_owned(),
        ..Reply::status(200)
    });
    let plain = Receiver::start().await;
    let binary_endpoint = create_endpoint(&app, json!({"url": binary.url})).await;
    let plain_endpoint = create_endpoint(&app, json!({"url": plain.url})).await;
    app.publish("s", "t", json!(1)).await;
    binary.wait_for(1, Duration::from_secs(5)).await;
    plain.wait_for(1, Duration::from_secs(5)).await;

    // The plain one first: it is recorded even if the other could not be.
    let mut bodies = Vec::new();
    for endpoint in [&plain_endpoint, &binary_endpoint] {
        let list: Value = app
            .get(&format!(
                "/v1/deliveries?endpoint_id={}",
                endpoint["id"].as_str().unwrap()
            ))
            .await
            .json()
            .await
            .unwrap();
        let id = list["deliveries"][0]["id"].as_str().unwrap().to_owned();
        let delivery = wait_for_status(&app, &id, "succeeded").await;
        let attempts = delivery["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{delivery}");
        bodies.push(attempts[0]["response_body"].as_str().unwrap().to_owned());
    }
    assert_eq!(bodies, ["status 200", "GIF89a\u{FFFD}\u{1}binary"]);
    app.wait_until_settled().await;
    assert_eq!(binary.received().len(), 1);
    assert_eq!(plain.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_twice_then_succeeding_takes_three_tries_with_one_webhook_id() {
    let app = webhook_app("100ms,100ms,100ms").await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500), Reply::status(503)]);
    create_endpoint(&app, json!({"url": receiver.url})).await;
    let event = app.publish("s", "t", json!(1)).await;

    let got = receiver.wait_for(3, Duration::from_secs(5)).await;
    assert!(
        got.iter()
            .all(|r| r.headers["webhook-id"] == event["id"].as_str().unwrap())
    );
    let delivery = only_delivery(&app).await;
    let delivery = wait_for_status(&app, delivery["id"].as_str().unwrap(), "succeeded").await;
    let codes: Vec<i64> = delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["response_status"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, vec![500, 503, 200]);
    assert_eq!(receiver.received().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_receiver_ends_failed_and_a_replay_then_succeeds() {
    let app = webhook_app("100ms,100ms").await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(500));
    create_endpoint(&app, json!({"url": receiver.url})).await;
    app.publish("s", "t", json!(1)).await;
    receiver.wait_for(3, Duration::from_secs(5)).await;
    let delivery = only_delivery(&app).await;
    let id = delivery["id"].as_str().unwrap().to_owned();
    let failed = wait_for_status(&app, &id, "failed").await;
    assert_eq!(failed["attempts"].as_array().unwrap().len(), 3);
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("no attempts left")
    );
    app.wait_until_settled().await;
    assert_eq!(
        receiver.received().len(),
        3,
        "no attempt after the schedule ended"
    );

    receiver.set_default(Reply::status(200));
    let replay = app
        .request(
            Method::POST,
            &format!("/v1/deliveries/{id}/replay"),
            ADMIN_KEY,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 202);
    receiver.wait_for(4, Duration::from_secs(5)).await;
    let done = wait_for_status(&app, &id, "succeeded").await;
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        4,
        "a replay adds an attempt and keeps the history"
    );
    assert_eq!(attempts[3]["trigger"], "replay");
    let keys: Value = app.get("/v1/keys").await.json().await.unwrap();
    assert_eq!(attempts[3]["triggered_by"], keys["keys"][0]["id"]);
    assert_eq!(attempts[0]["trigger"], "schedule");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_postpones_the_next_attempt() {
    let app = webhook_app("100ms,100ms").await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(429).header("Retry-After", "2")]);
    create_endpoint(&app, json!({"url": receiver.url})).await;
    app.publish("s", "t", json!(1)).await;
    let got = receiver.wait_for(2, Duration::from_secs(6)).await;
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(1900), "retried after {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_disables_the_endpoint_and_later_events_are_kept_as_failed() {
    let app = webhook_app("100ms").await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(410)]);
    let endpoint = create_endpoint(&app, json!({"url": receiver.url})).await;
    let path = format!("/v1/endpoints/{}", endpoint["id"].as_str().unwrap());
    app.publish("s", "t", json!(1)).await;
    receiver.wait_for(1, Duration::from_secs(5)).await;
    let first = only_delivery(&app).await;
    wait_for_status(&app, first["id"].as_str().unwrap(), "failed").await;
    let disabled = app.get_json(&path).await;
    assert_eq!(disabled["enabled"], false);
    assert!(
        disabled["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410")
    );

    app.publish("s", "t", json!(2)).await;
    let page: Value = app
        .get("/v1/deliveries?status=failed")
        .await
        .json()
        .await
        .unwrap();
    let deliveries = page["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries[0]["last_error"], "endpoint disabled");
    app.wait_until_settled().await;
    assert_eq!(receiver.received().len(), 1);

    // Fixed and re-enabled: the kept delivery can be replayed.
    let enabled = app
        .request(Method::PATCH, &path, ADMIN_KEY)
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(enabled.status(), 200);
    let id = deliveries[0]["id"].as_str().unwrap();
    app.request(
        Method::POST,
        &format!("/v1/deliveries/{id}/replay"),
        ADMIN_KEY,
    )
    .send()
    .await
    .unwrap();
    let got = receiver.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got[1].json()["data"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let app = webhook_app("100ms").await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(302).header("Location", "http://127.0.0.1:1/elsewhere"));
    create_endpoint(&app, json!({"url": receiver.url})).await;
    app.publish("s", "t", json!(1)).await;
    let delivery = only_delivery(&app).await;
    let failed = wait_for_status(&app, delivery["id"].as_str().unwrap(), "failed").await;
    assert_eq!(failed["last_status_code"], 302);
    assert_eq!(receiver.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_to_loopback_is_blocked_at_send_time() {
    // No allow-list: `localhost` passes registration (names are checked when resolved).
    let app = spawn_app_with(|s| {
        s.retry_schedule = RetrySchedule::parse("").unwrap();
        s.delivery_timeout = Duration::from_secs(2);
    })
    .await;
    let receiver = Receiver::start().await;
    let url = receiver.url.replace("127.0.0.1", "localhost");
    create_endpoint(&app, json!({"url": url})).await;
    app.publish("s", "t", json!(1)).await;
    let delivery = only_delivery(&app).await;
    let failed = wait_for_status(&app, delivery["id"].as_str().unwrap(), "failed").await;
    assert_eq!(failed["attempts"][0]["error_class"], "blocked_destination");
    assert!(receiver.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_does_not_delay_a_healthy_one() {
    let app = spawn_app_with(|s| {
        fast(s, "10s");
        // Long enough that no attempt times out (and frees its slot) during the test.
        s.delivery_timeout = Duration::from_secs(8);
    })
    .await;
    let stuck = Receiver::start().await;
    stuck.set_default(Reply::status(200).after(Duration::from_secs(30)));
    let healthy = Receiver::start().await;
    let stuck_endpoint = create_endpoint(&app, json!({"url": stuck.url, "max_in_flight": 2})).await;
    create_endpoint(&app, json!({"url": healthy.url})).await;
    for i in 0..20 {
        app.publish(&format!("s{i}"), "t", json!(i)).await;
    }
    healthy.wait_for(20, Duration::from_secs(30)).await;
    // Had the healthy endpoint's deliveries waited for a slot the stuck ones hold, they
    // would have come only after a stuck attempt timed out, which records a retry.
    app.wait_for_metric("herald_webhook_outcomes_total{outcome=\"succeeded\"}", 20)
        .await;
    assert_eq!(
        app.metric("herald_webhook_outcomes_total{outcome=\"retry\"}")
            .await,
        0,
        "no stuck attempt timed out before the healthy endpoint had everything"
    );
    // The stuck endpoint has at most its max_in_flight attempts open.
    assert!(
        stuck.received().len() <= 2,
        "{} attempts in flight",
        stuck.received().len()
    );
    // (Filtered by endpoint: the healthy endpoint's last attempts may not be recorded yet.)
    let page: Value = app
        .get(&format!(
            "/v1/deliveries?status=delivering&endpoint_id={}",
            stuck_endpoint["id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    let in_flight = page["deliveries"].as_array().unwrap().len();
    assert!(
        (1..=2).contains(&in_flight),
        "the stuck endpoint may hold at most its max_in_flight: {in_flight}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_endpoint_gets_each_stream_in_seq_order_despite_failures() {
    let app = webhook_app("50ms,50ms,50ms,50ms,50ms,50ms,50ms,50ms").await;
    let receiver = Receiver::start().await;
    // Every third request fails.
    receiver.script((0..300).map(|i| {
        if i % 3 == 1 {
            Reply::status(500)
        } else {
            Reply::status(200)
        }
    }));
    create_endpoint(&app, json!({"url": receiver.url, "ordered": true})).await;
    let events: Vec<Value> = (0..100)
        .map(|i| json!({"stream": "orders", "type": "t", "payload": i}))
        .collect();
    app.publish_batch(&events).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page: Value = app
            .get("/v1/deliveries?status=succeeded&limit=200")
            .await
            .json()
            .await
            .unwrap();
        if page["deliveries"].as_array().unwrap().len() == 100 {
            break;
        }
        assert!(Instant::now() < deadline, "not all delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The successful receipts, in arrival order, are seq 1..=100.
    let mut delivered = Vec::new();
    let script_failures: Vec<bool> = (0..receiver.received().len()).map(|i| i % 3 == 1).collect();
    for (request, failed) in receiver.received().iter().zip(script_failures) {
        let seq = request.json()["seq"].as_i64().unwrap();
        if !failed {
            delivered.push(seq);
        }
    }
    assert_eq!(delivered, (1..=100).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_listed_newest_first_with_filters_and_cursors() {
    let app = webhook_app("1s").await;
    let receiver = Receiver::start().await;
    let a = create_endpoint(&app, json!({"url": receiver.url, "streams": ["a:*"]})).await;
    create_endpoint(&app, json!({"url": receiver.url, "event_types": ["x.y"]})).await;
    for i in 0..5 {
        app.publish("a:1", "t", json!(i)).await;
    }
    app.publish("b:1", "x.y", json!(9)).await;
    app.publish("c:1", "z", json!(9)).await; // matches neither endpoint
    receiver.wait_for(6, Duration::from_secs(5)).await;

    let all: Value = app.get("/v1/deliveries").await.json().await.unwrap();
    let all = all["deliveries"].as_array().unwrap().clone();
    assert_eq!(all.len(), 6);
    assert_eq!(all[0]["stream"], "b:1", "newest first");
    // Delivery ids are UUIDv7, so new ones go to the right edge of the primary key's
    // index: their milliseconds do not increase along the newest-first list.
    let millis: Vec<u64> = all
        .iter()
        .map(|d| {
            let id = uuid::Uuid::parse_str(d["id"].as_str().unwrap()).unwrap();
            assert_eq!(id.get_version_num(), 7, "delivery id {id}");
            let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
            secs * 1000 + u64::from(nanos / 1_000_000)
        })
        .collect();
    assert!(millis.windows(2).all(|w| w[0] >= w[1]), "{millis:?}");

    let mine: Value = app
        .get(&format!(
            "/v1/deliveries?endpoint_id={}&limit=2",
            a["id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    let mut seen: Vec<i64> = mine["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["seq"].as_i64().unwrap())
        .collect();
    let mut cursor = mine["next_cursor"].as_str().map(str::to_owned);
    while let Some(c) = cursor {
        let page: Value = app
            .get(&format!(
                "/v1/deliveries?endpoint_id={}&limit=2&cursor={c}",
                a["id"].as_str().unwrap()
            ))
            .await
            .json()
            .await
            .unwrap();
        seen.extend(
            page["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["seq"].as_i64().unwrap()),
        );
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, vec![5, 4, 3, 2, 1]);

    let typed: Value = app
        .get("/v1/deliveries?event_type=x.y&stream=b:1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(typed["deliveries"].as_array().unwrap().len(), 1);
    let bad = app.get("/v1/deliveries?status=lost").await;
    assert_eq!(
        assert_problem(bad, 422, "validation").await["field"],
        "status"
    );
    let bad = app.get("/v1/deliveries?cursor=nonsense").await;
    assert_eq!(
        assert_problem(bad, 422, "validation").await["field"],
        "cursor"
    );
    assert_problem(
        app.get(&format!("/v1/deliveries/{}", uuid::Uuid::now_v7()))
            .await,
        404,
        "not-found",
    )
    .await;
}

/// One bulk replay makes at most 100,000 deliveries due, and the rest are left for the
/// next; its dry run counts up to 10,000 and says when more match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_replay_takes_at_most_its_cap_and_its_preview_says_so() {
    let app = api_only_app("").await;
    let receiver = Receiver::start().await;
    create_endpoint(&app, json!({"url": receiver.url})).await;
    app.publish("s", "t", json!(1)).await;
    let cap = herald::api::deliveries::MAX_BULK_REPLAY;
    // The one delivery, failed, and as many more for other endpoints as it takes to pass
    // the cap by two.
    app.db()
        .await
        .execute(
            "WITH one AS (UPDATE deliveries SET status = 'failed' RETURNING *) \
             INSERT INTO deliveries (id, event_id, endpoint_id, stream, seq, event_type, status, \
                                     created_at, updated_at) \
             SELECT herald_uuid7(), one.event_id, gen_random_uuid(), one.stream, one.seq, \
                    one.event_type, 'failed', now(), now() \
               FROM one, generate_series(1, $1::int8 + 1)",
            &[&cap],
        )
        .await
        .unwrap();
    let preview = json!({"filter": {"status": "failed"}, "dry_run": true});
    let counted: Value = app
        .post("/v1/deliveries/replay", &preview)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        counted,
        json!({"replayed": 0, "matched": 10_000, "more": true})
    );
    let replayed = app
        .post(
            "/v1/deliveries/replay",
            &json!({"filter": {"status": "failed"}}),
        )
        .await;
    assert_eq!(replayed.status(), 202);
    let replayed: Value = replayed.json().await.unwrap();
    assert_eq!(replayed["replayed"], cap);
    let left: Value = app
        .post("/v1/deliveries/replay", &preview)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(left, json!({"replayed": 0, "matched": 2, "more": false}));

    // A replay that searches (a filter no index answers) stops at the cap as well.
    let searched = app
        .post_expecting(
            "/v1/deliveries/replay",
            &json!({"filter": {"event_type": "t"}}),
            202,
        )
        .await;
    assert_eq!(searched["searching"], true, "{searched}");
    let id = searched["replay_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let progress = loop {
        let progress = app.get_json(&format!("/v1/replays/{id}")).await;
        if progress["searching"] == false {
            break progress;
        }
        assert!(Instant::now() < deadline, "{progress}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(progress["total"], cap, "{progress}");
}

/// Publishes a `rare.one` event in stream `s`, then more `common` ones than one bounded
/// search looks through (`SCAN_BUDGET`, which is also a replay's `SEARCH_STEP`), then a
/// second `rare.one`. Returns the second's seq (the first's is 1).
async fn publish_rare_behind_a_search_step(app: &TestApp) -> i64 {
    let budget = herald::db::models::delivery::SCAN_BUDGET as usize;
    assert_eq!(
        herald::db::models::replay::SEARCH_STEP,
        herald::db::models::delivery::SCAN_BUDGET
    );
    app.publish("s", "rare.one", json!("old")).await;
    let chunks = budget.div_ceil(1000) + 1;
    for chunk in 0..chunks {
        let events: Vec<Value> = (0..1000)
            .map(|i| json!({"stream": "s", "type": "common", "payload": chunk * 1000 + i}))
            .collect();
        app.publish_batch(&events).await;
    }
    app.publish("s", "rare.one", json!("new")).await;
    chunks as i64 * 1000 + 2
}

/// A filter no index answers (here the event type) looks through at most
/// `SCAN_BUDGET` candidates per call: a rare match behind more recent deliveries than
/// that comes on a later page, the pages before it saying how far back they searched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rare_filter_searches_history_in_bounded_steps_and_finds_every_match() {
    let app = api_only_app("1s").await;
    let receiver = Receiver::start().await;
    create_endpoint(&app, json!({"url": receiver.url})).await;
    let last = publish_rare_behind_a_search_step(&app).await;

    let mut found = Vec::new();
    let mut searched = Vec::new();
    let mut cursor = String::new();
    loop {
        let page: Value = app
            .get(&format!(
                "/v1/deliveries?event_type=rare.one&limit=5&cursor={cursor}"
            ))
            .await
            .json()
            .await
            .unwrap();
        for d in page["deliveries"].as_array().unwrap() {
            found.push(d["seq"].as_i64().unwrap());
        }
        if let Some(to) = page["searched_to"].as_str() {
            searched.push(to.to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
        assert!(searched.len() < 10, "the search does not end: {page}");
    }
    assert_eq!(found, vec![last, 1], "both matches, newest first");
    assert!(!searched.is_empty(), "the first page stopped at its budget");

    // The same filter with a status that is small by nature reads it whole at once.
    let failed: Value = app
        .get("/v1/deliveries?event_type=rare.one&status=pending&limit=5")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(failed["deliveries"].as_array().unwrap().len(), 2);
    assert!(failed["searched_to"].is_null());
}

/// Starts a second API-only instance on `app`'s database and stops `app`: what is left of
/// a searching replay must be taken up by the other.
async fn hand_over(app: &TestApp) -> TestApp {
    let mut settings = crate::helpers::test_settings();
    fast(&mut settings, "1s");
    settings.delivery_concurrency = 0;
    let other =
        crate::helpers::spawn_app_on(settings, app.db_name.clone(), app.database_url.clone()).await;
    app.stop.cancel();
    other
}

/// Polls the replay until it is no longer searching (within `timeout`), checking each view
/// of it while it is; returns the last.
async fn until_searched(
    app: &TestApp,
    replay_id: &str,
    timeout: Duration,
    while_searching: impl Fn(&Value),
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let progress = app.get_json(&format!("/v1/replays/{replay_id}")).await;
        if progress["searching"] == false {
            return progress;
        }
        while_searching(&progress);
        assert!(
            Instant::now() < deadline,
            "the search does not end: {progress}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A recover never handles its whole window in one transaction: the request takes the
/// window's oldest `RECOVER_STEP` events and answers `searching`, and the background takes
/// the rest step by step (here another instance, the first one stopped), until every
/// event of the window has its delivery, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recover_of_a_long_window_goes_on_in_steps_in_the_background() {
    let app = api_only_app("1s").await;
    let step = usize::try_from(herald::db::models::replay::RECOVER_STEP).unwrap();
    let published = step + 500;
    for chunk in 0..published.div_ceil(1000) {
        let events: Vec<Value> = (chunk * 1000..published.min((chunk + 1) * 1000))
            .map(|i| json!({"stream": "r", "type": "t", "payload": i}))
            .collect();
        app.publish_batch(&events).await;
    }
    // Created after the events: none of them has a delivery for it yet.
    let receiver = Receiver::start().await;
    let endpoint = create_endpoint(&app, json!({"url": receiver.url})).await;
    let since = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let path = format!("/v1/endpoints/{}/recover", endpoint["id"].as_str().unwrap());
    let recovered = app
        .post_expecting(&path, &json!({"since": since}), 202)
        .await;
    assert_eq!(recovered["recovered"], step, "{recovered}");
    assert_eq!(recovered["searching"], true, "{recovered}");
    let replay_id = recovered["replay_id"].as_str().unwrap().to_owned();

    let other = hand_over(&app).await;
    let progress = until_searched(&other, &replay_id, Duration::from_secs(20), |_| {}).await;
    assert_eq!(progress["total"], published, "{progress}");
    assert_eq!(progress["kind"], "recover");
    let counts = other
        .db()
        .await
        .query_one(
            "SELECT count(*), count(DISTINCT event_id), min(seq), max(seq), \
                    count(*) FILTER (WHERE replay_id::text = $1) \
               FROM deliveries WHERE endpoint_id::text = $2",
            &[&replay_id, &endpoint["id"].as_str().unwrap()],
        )
        .await
        .unwrap();
    let published = published as i64;
    assert_eq!(counts.get::<_, i64>(0), published);
    assert_eq!(counts.get::<_, i64>(1), published);
    assert_eq!(
        (counts.get::<_, i64>(2), counts.get::<_, i64>(3)),
        (1, published)
    );
    assert_eq!(counts.get::<_, i64>(4), published);
}

/// A bulk replay by a filter no index answers never reads the whole history in one
/// request: its preview counts among the newest candidates and says how far back, the
/// request takes the first step, and the background finds every older match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_replay_by_a_rare_filter_searches_history_in_steps_and_replays_every_match() {
    let app = api_only_app("1s").await;
    let receiver = Receiver::start().await;
    create_endpoint(&app, json!({"url": receiver.url})).await;
    let last = publish_rare_behind_a_search_step(&app).await;

    let preview = app
        .post_expecting(
            "/v1/deliveries/replay",
            &json!({"filter": {"event_type": "rare.one"}, "dry_run": true}),
            200,
        )
        .await;
    assert_eq!(preview["matched"], 1, "{preview}");
    assert_eq!(preview["more"], true, "{preview}");
    let searched_to = preview["searched_to"].as_str().expect("how far it looked");
    assert!(chrono::DateTime::parse_from_rfc3339(searched_to).is_ok());

    let replayed = app
        .post_expecting(
            "/v1/deliveries/replay",
            &json!({"filter": {"event_type": "rare.one"}}),
            202,
        )
        .await;
    assert_eq!(replayed["replayed"], 1, "the newest match, in the request");
    assert_eq!(replayed["searching"], true, "{replayed}");
    let replay_id = replayed["replay_id"].as_str().unwrap().to_owned();
    // The instance that took the request stops; a second one goes on with the search.
    let other = hand_over(&app).await;
    let progress = until_searched(&other, &replay_id, Duration::from_secs(10), |progress| {
        assert!(progress["searched_to"].is_string(), "{progress}");
        assert_eq!(progress["done"], false, "{progress}");
    })
    .await;
    assert_eq!(progress["total"], 2, "{progress}");
    assert!(progress["searched_to"].is_null(), "{progress}");
    assert_eq!(progress["criteria"], json!({"event_type": "rare.one"}));
    let of_replay = other
        .get_json(&format!("/v1/deliveries?replay_id={replay_id}&limit=10"))
        .await;
    let mut payloads: Vec<i64> = of_replay["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["seq"].as_i64().unwrap())
        .collect();
    payloads.sort_unstable();
    assert_eq!(payloads, vec![1, last], "both matches and nothing else");
    let due_now: i64 = other
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM deliveries WHERE replay_requested",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(due_now, 2, "no other delivery was touched");

    // With a small set to start from (pending here), the same filter needs no search.
    let narrow = other
        .post(
            "/v1/deliveries/replay",
            &json!({"filter": {"event_type": "rare.one", "status": "pending"}}),
        )
        .await;
    let narrow: Value = narrow.json().await.unwrap();
    assert_eq!(narrow["replayed"], 2, "{narrow}");
    assert_eq!(narrow["searching"], false, "{narrow}");
    let preview = other
        .post(
            "/v1/deliveries/replay",
            &json!({"filter": {"event_type": "rare.one", "status": "pending"}, "dry_run": true}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(preview, json!({"replayed": 0, "matched": 2, "more": false}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_replay_and_recover_replay_exactly_the_matching_deliveries() {
    let app = webhook_app("").await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(500));
    let endpoint = create_endpoint(&app, json!({"url": receiver.url})).await;
    for i in 0..4 {
        app.publish("orders", "order.created", json!(i)).await;
    }
    app.publish("invoices", "invoice.created", json!(9)).await;
    receiver.wait_for(5, Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while app
        .get("/v1/deliveries?status=failed")
        .await
        .json::<Value>()
        .await
        .unwrap()["deliveries"]
        .as_array()
        .unwrap()
        .len()
        < 5
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    receiver.set_default(Reply::status(200));
    let filter =
        json!({"filter": {"status": "failed", "event_type": "order.created"}, "dry_run": true});
    let preview: Value = app
        .post("/v1/deliveries/replay", &filter)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(preview, json!({"replayed": 0, "matched": 4, "more": false}));
    let filter = json!({"filter": {"status": "failed", "event_type": "order.created"}});
    let replayed = app.post("/v1/deliveries/replay", &filter).await;
    assert_eq!(replayed.status(), 202);
    let replayed: Value = replayed.json().await.unwrap();
    assert_eq!(replayed["replayed"], 4);
    let replay_id = replayed["replay_id"].as_str().unwrap().to_owned();
    let got = receiver.wait_for(9, Duration::from_secs(5)).await;
    app.wait_until_settled().await;
    assert_eq!(
        receiver.received().len(),
        9,
        "exactly the 4 matching ones were sent again"
    );
    assert!(got[5..].iter().all(|r| r.json()["type"] == "order.created"));

    // The replay's progress, until done, and its deliveries as a list filter.
    let deadline = Instant::now() + Duration::from_secs(5);
    let progress = loop {
        let progress: Value = app
            .get(&format!("/v1/replays/{replay_id}"))
            .await
            .json()
            .await
            .unwrap();
        if progress["done"] == true {
            break progress;
        }
        assert!(Instant::now() < deadline, "{progress}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(progress["kind"], "filter");
    assert_eq!(progress["total"], 4);
    assert_eq!(progress["succeeded"], 4);
    assert_eq!(progress["failed"], 0);
    assert_eq!(progress["pending"], 0);
    assert_eq!(
        progress["criteria"],
        json!({"status": "failed", "event_type": "order.created"})
    );
    let of_replay: Value = app
        .get(&format!("/v1/deliveries?replay_id={replay_id}"))
        .await
        .json()
        .await
        .unwrap();
    let of_replay = of_replay["deliveries"].as_array().unwrap();
    assert_eq!(of_replay.len(), 4);
    assert!(
        of_replay
            .iter()
            .all(|d| d["replay_id"] == replay_id.as_str())
    );
    let unknown = app
        .get(&format!("/v1/replays/{}", uuid::Uuid::now_v7()))
        .await;
    assert_problem(unknown, 404, "not-found").await;

    // Recover: the invoice (still failed) and an event from before the endpoint existed.
    recover_last_five_minutes(&app, &endpoint, 1).await;
    let got = receiver.wait_for(10, Duration::from_secs(5)).await;
    assert_eq!(got[9].json()["type"], "invoice.created");

    let empty = app
        .post("/v1/deliveries/replay", &json!({"filter": {}}))
        .await;
    assert_eq!(
        assert_problem(empty, 422, "validation").await["field"],
        "filter"
    );
    let unknown = app
        .post(
            "/v1/deliveries/replay",
            &json!({"filter": {"colour": "red"}}),
        )
        .await;
    assert_eq!(
        assert_problem(unknown, 422, "validation").await["field"],
        "filter.colour"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_sends_events_from_before_the_endpoint_existed() {
    let app = webhook_app("1s").await;
    let receiver = Receiver::start().await;
    app.publish("payment:1", "t", json!("early")).await;
    app.publish("other", "t", json!("not mine")).await;
    let endpoint =
        create_endpoint(&app, json!({"url": receiver.url, "streams": ["payment:*"]})).await;
    recover_last_five_minutes(&app, &endpoint, 1).await;
    let path = format!("/v1/endpoints/{}/recover", endpoint["id"].as_str().unwrap());
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].json()["data"], "early");
    let bad = app.post(&path, &json!({"since": "yesterday"})).await;
    assert_eq!(
        assert_problem(bad, 422, "validation").await["field"],
        "since"
    );
}

/// Reads the `herald:ops` stream.
async fn ops_events(app: &TestApp) -> Vec<Value> {
    let page: Value = app
        .get("/v1/streams/herald:ops/events?wait=0")
        .await
        .json()
        .await
        .unwrap();
    page["events"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_exhaustion_and_recovery_are_published_on_herald_ops() {
    let app = spawn_app_with(|s| {
        fast(s, "100ms");
        s.disable_after = Duration::from_secs(3600);
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500), Reply::status(500), Reply::status(500)]);
    let endpoint = create_endpoint(&app, json!({"url": receiver.url, "streams": ["orders"]})).await;
    app.publish("orders", "t", json!(1)).await;
    receiver.wait_for(2, Duration::from_secs(5)).await;
    let delivery = only_delivery(&app).await;
    wait_for_status(&app, delivery["id"].as_str().unwrap(), "failed").await;
    let failing: Value = app
        .get_json(&format!(
            "/v1/endpoints/{}",
            endpoint["id"].as_str().unwrap()
        ))
        .await;
    assert!(failing["failing_since"].is_string());

    // A success after failures is a recovery.
    app.publish("orders", "t", json!(2)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let ops = loop {
        let ops = ops_events(&app).await;
        if ops.len() >= 2 {
            break ops;
        }
        assert!(Instant::now() < deadline, "ops events: {ops:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ops[0]["type"], "delivery.failed");
    assert_eq!(ops[0]["payload"]["delivery_id"], delivery["id"]);
    assert_eq!(ops[0]["payload"]["attempts"], 2);
    assert_eq!(ops[1]["type"], "endpoint.recovered");
    assert_eq!(ops[1]["payload"]["endpoint_id"], endpoint["id"]);
    let healthy: Value = app
        .get_json(&format!(
            "/v1/endpoints/{}",
            endpoint["id"].as_str().unwrap()
        ))
        .await;
    assert!(healthy["failing_since"].is_null());
    assert!(healthy["last_success_at"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_longer_than_disable_after_is_disabled() {
    let app = spawn_app_with(|s| {
        fast(s, "100ms,100ms,100ms");
        s.disable_after = Duration::from_secs(60);
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(500));
    let endpoint = create_endpoint(&app, json!({"url": receiver.url, "streams": ["orders"]})).await;
    let id = endpoint["id"].as_str().unwrap();
    app.publish("orders", "t", json!(1)).await;
    receiver.wait_for(1, Duration::from_secs(5)).await;
    // Pretend the failures began long ago.
    app.db()
        .await
        .execute(
            "UPDATE endpoints SET failing_since = now() - interval '2 minutes' WHERE id::text = $1",
            &[&id],
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let current: Value = app
            .get(&format!("/v1/endpoints/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if current["enabled"] == false {
            assert_eq!(current["disabled_reason"], "no successful delivery for 1m");
            break;
        }
        assert!(Instant::now() < deadline, "not disabled: {current}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivery = only_delivery(&app).await;
    assert_eq!(delivery["status"], "failed");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ops_events(&app)
        .await
        .iter()
        .any(|e| e["type"] == "endpoint.disabled")
    {
        assert!(Instant::now() < deadline, "no endpoint.disabled event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ops events a receiver's behaviour causes are bounded: one flapping between failure
/// and success is announced recovered once (not with every success), and one answering
/// 410 to several deliveries in flight is disabled once, with one `endpoint.disabled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_receiver_recovers_once_and_repeated_410s_disable_once() {
    let app = spawn_app_with(|s| {
        fast(s, "100ms");
        s.disable_after = Duration::from_secs(3600);
    })
    .await;
    let flapping = Receiver::start().await;
    let endpoint = create_endpoint(&app, json!({"url": flapping.url, "streams": ["flap"]})).await;
    for n in 1..=4 {
        flapping.script([Reply::status(500), Reply::status(200)]);
        app.publish("flap", "t", json!(n)).await;
        flapping.wait_for(2 * n, Duration::from_secs(5)).await;
        // Newest first: this event's delivery.
        let list: Value = app
            .get("/v1/deliveries?stream=flap&limit=1")
            .await
            .json()
            .await
            .unwrap();
        let id = list["deliveries"][0]["id"].as_str().unwrap().to_owned();
        wait_for_status(&app, &id, "succeeded").await;
    }

    let gone = Receiver::start().await;
    gone.script((0..5).map(|i| Reply::status(410).after(Duration::from_millis(100 * i))));
    let gone_endpoint = create_endpoint(&app, json!({"url": gone.url, "streams": ["gone"]})).await;
    let events: Vec<Value> = (0..5)
        .map(|n| json!({"stream": "gone", "type": "t", "payload": n}))
        .collect();
    app.post_expecting("/v1/events/batch", &json!({"events": events}), 201)
        .await;
    gone.wait_for(5, Duration::from_secs(5)).await;
    app.wait_until_settled().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let ops = ops_events(&app).await;
    let count = |kind: &str, endpoint: &Value| {
        ops.iter()
            .filter(|e| e["type"] == kind && e["payload"]["endpoint_id"] == endpoint["id"])
            .count()
    };
    assert_eq!(count("endpoint.recovered", &endpoint), 1, "{ops:?}");
    assert_eq!(count("endpoint.disabled", &gone_endpoint), 1, "{ops:?}");
}

/// An error is classed by its causes, not by reqwest's message, which names the URL: a
/// refused connection to `/tls-handshake-certificate` is `connect`, not `tls`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_class_does_not_come_from_words_in_the_url() {
    let app = webhook_app("100ms").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("http://127.0.0.1:{port}/tls-handshake-certificate");
    create_endpoint(&app, json!({"url": url})).await;
    app.publish("s", "t", json!(1)).await;
    let delivery = only_delivery(&app).await;
    let failed = wait_for_status(&app, delivery["id"].as_str().unwrap(), "failed").await;
    for attempt in failed["attempts"].as_array().unwrap() {
        assert_eq!(attempt["error_class"], "connect", "{attempt}");
    }
}

/// What is kept of a receiver's headers is bounded like its body: each value to 1 KiB, all
/// of them to 16 KiB, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receivers_headers_are_kept_up_to_16_kib() {
    let app = webhook_app("100ms").await;
    let receiver = Receiver::start().await;
    let mut reply = Reply::status(200);
    for i in 0..40 {
        reply = reply.header(&format!("x-big-{i:02}"), &"v".repeat(1500));
    }
    receiver.set_default(reply);
    create_endpoint(&app, json!({"url": receiver.url})).await;
    app.publish("s", "t", json!(1)).await;
    let delivery = only_delivery(&app).await;
    let done = wait_for_status(&app, delivery["id"].as_str().unwrap(), "succeeded").await;
    let headers = done["attempts"][0]["response_headers"].as_object().unwrap();
    let kept = serde_json::to_string(headers).unwrap().len();
    assert!(kept < 18 * 1024, "{kept} bytes kept");
    let big: Vec<_> = headers
        .iter()
        .filter(|(name, _)| name.starts_with("x-big-"))
        .collect();
    assert!((5..40).contains(&big.len()), "{} kept", big.len());
    for (_, value) in big {
        assert_eq!(value, &format!("{}... (1500 bytes)", "v".repeat(1024)));
    }
    assert!(
        headers["herald-truncated"]
            .as_str()
            .unwrap()
            .starts_with("4"),
        "{headers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_endpoint_gets_no_more_than_its_rate() {
    let app = webhook_app("1s").await;
    let receiver = Receiver::start().await;
    create_endpoint(&app, json!({"url": receiver.url, "rate_limit": 5})).await;
    let events: Vec<Value> = (0..15)
        .map(|i| json!({"stream": format!("s{i}"), "type": "t", "payload": i}))
        .collect();
    app.publish_batch(&events).await;
    let got = receiver.wait_for(15, Duration::from_secs(10)).await;
    let span = got[14].at - got[0].at;
    // 5 at once, then 5 per second: the 15th no sooner than about 2 s after the first.
    assert!(
        span >= Duration::from_millis(1800),
        "15 deliveries in {span:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_counts_deliveries_backlog_and_endpoint_health() {
    let app = webhook_app("").await;
    let good = Receiver::start().await;
    let bad = Receiver::start().await;
    bad.set_default(Reply::status(500));
    let good_endpoint = create_endpoint(&app, json!({"url": good.url, "streams": ["a"]})).await;
    let bad_endpoint = create_endpoint(&app, json!({"url": bad.url, "streams": ["b"]})).await;
    for i in 0..3 {
        app.publish("a", "t", json!(i)).await;
    }
    app.publish("b", "t", json!(9)).await;
    good.wait_for(3, Duration::from_secs(5)).await;
    bad.wait_for(1, Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let overview = loop {
        let overview = app.get_json("/v1/overview").await;
        if overview["deliveries"]["last_hour"]["failed"] == 1
            && overview["deliveries"]["last_hour"]["succeeded"] == 3
        {
            break overview;
        }
        assert!(Instant::now() < deadline, "{overview}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(overview["deliveries"]["last_day"]["succeeded"], 3);
    assert_eq!(overview["deliveries"]["last_day"]["pending"], 0);
    assert_eq!(overview["backlog"]["due"], 0);
    assert!(overview["backlog"]["oldest_due_age_seconds"].is_null());
    let endpoints = overview["endpoints"].as_array().unwrap();
    let find = |id: &Value| endpoints.iter().find(|e| e["id"] == *id).unwrap().clone();
    let healthy = find(&good_endpoint["id"]);
    assert_eq!(healthy["success_rate_24h"], 1.0);
    let failing = find(&bad_endpoint["id"]);
    assert_eq!(failing["success_rate_24h"], 0.0);
    assert_eq!(failing["failed_24h"], 1);
    assert!(failing["last_error"].as_str().unwrap().contains("HTTP 500"));
    assert!(failing["failing_since"].is_string());

    let publisher = app.create_key("publisher", &[]).await;
    let denied = app
        .request(Method::GET, "/v1/overview", &publisher)
        .send()
        .await
        .unwrap();
    assert_problem(denied, 403, "forbidden").await;
}

/// The endpoint shows the last error an attempt met and when; it stays after the endpoint
/// recovers (its last success is then later), and a new error replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_keeps_its_last_error_and_when() {
    let app = webhook_app("").await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(503));
    let endpoint = create_endpoint(&app, json!({"url": receiver.url})).await;
    let path = format!("/v1/endpoints/{}", endpoint["id"].as_str().unwrap());
    assert!(endpoint["last_error"].is_null() && endpoint["last_error_at"].is_null());
    // Polls the endpoint until `shown` says so (10 s at most).
    let until = async |what: &str, shown: fn(&Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let endpoint = app.get_json(&path).await;
            if shown(&endpoint) {
                return endpoint;
            }
            assert!(Instant::now() < deadline, "{what}: {endpoint}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let time = |v: &Value| -> DateTime<Utc> { v.as_str().unwrap().parse().unwrap() };

    app.publish("s", "t", json!(1)).await;
    let failing = until("the 503", |e| e["last_error"].is_string()).await;
    assert!(
        failing["last_error"].as_str().unwrap().contains("HTTP 503"),
        "{failing}"
    );

    // The next event succeeds: the error stays, with a success after it.
    receiver.set_default(Reply::status(200));
    app.publish("s", "t", json!(2)).await;
    let recovered = until("the success", |e| e["last_success_at"].is_string()).await;
    assert_eq!(recovered["last_error"], failing["last_error"]);
    assert_eq!(recovered["last_error_at"], failing["last_error_at"]);
    assert!(time(&recovered["last_success_at"]) >= time(&failing["last_error_at"]));
    let overview = app.get_json("/v1/overview").await;
    let health = &overview["endpoints"][0];
    assert_eq!(health["last_error"], failing["last_error"]);
    assert_eq!(health["last_error_at"], failing["last_error_at"]);

    // A different error replaces it.
    receiver.set_default(Reply::status(500));
    app.publish("s", "t", json!(3)).await;
    let again = until("the 500", |e| {
        e["last_error"].as_str().unwrap().contains("HTTP 500")
    })
    .await;
    assert!(time(&again["last_error_at"]) >= time(&recovered["last_success_at"]));
}

/// An installation from before endpoints kept their last error: the migration takes each
/// endpoint's from its deliveries of the last week.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_finds_each_endpoints_last_error_in_its_deliveries() {
    let app = webhook_app("").await;
    let receiver = Receiver::start().await;
    let endpoint = create_endpoint(&app, json!({"url": receiver.url})).await;
    let quiet = create_endpoint(&app, json!({"url": receiver.url, "streams": ["none"]})).await;
    for i in 0..2 {
        app.publish("s", "t", json!(i)).await;
    }
    receiver.wait_for(2, Duration::from_secs(5)).await;
    app.wait_until_settled().await;
    app.revert_migrations(&["20261203000018", "20261203000017"])
        .await;
    let db = app.db().await;
    // Two deliveries with an error, the later one is the endpoint's last.
    db.batch_execute(
        "WITH d AS (SELECT id, row_number() OVER (ORDER BY id) AS k FROM deliveries) \
         UPDATE deliveries x SET status = 'failed', \
                last_error = CASE WHEN d.k = 1 THEN 'HTTP 502' ELSE 'timeout' END, \
                updated_at = now() - CASE WHEN d.k = 1 THEN interval '2 hours' ELSE interval '1 hour' END \
           FROM d WHERE d.id = x.id",
    )
    .await
    .unwrap();
    app.run_migrations().await;
    let shown: Value = app
        .get_json(&format!(
            "/v1/endpoints/{}",
            endpoint["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(shown["last_error"], "timeout", "{shown}");
    let at: DateTime<Utc> = shown["last_error_at"].as_str().unwrap().parse().unwrap();
    let age = Utc::now() - at;
    assert!(
        age > chrono::Duration::minutes(59) && age < chrono::Duration::minutes(61),
        "{age}"
    );
    let quiet: Value = app
        .get_json(&format!("/v1/endpoints/{}", quiet["id"].as_str().unwrap()))
        .await;
    assert!(quiet["last_error"].is_null() && quiet["last_error_at"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_event_goes_to_that_endpoint_only() {
    let app = webhook_app("").await;
    let target = Receiver::start().await;
    let other = Receiver::start().await;
    let endpoint = create_endpoint(&app, json!({"url": target.url})).await;
    // Subscribes to everything, Herald's own streams included: still gets no test event.
    let other_endpoint =
        create_endpoint(&app, json!({"url": other.url, "streams": ["herald:*"]})).await;
    let id = endpoint["id"].as_str().unwrap();

    let sent = app
        .request(Method::POST, &format!("/v1/endpoints/{id}/test"), ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    let sent: Value = sent.json().await.unwrap();
    assert_eq!(sent["stream"], "herald:test");
    let got = target.wait_for(1, Duration::from_secs(5)).await;
    let body = got[0].json();
    assert_eq!(body["type"], "herald.test");
    assert_eq!(body["data"]["endpoint_id"], id);
    assert!(verify(endpoint["secret"].as_str().unwrap(), &got[0]));
    let delivery = wait_for_status(&app, sent["delivery_id"].as_str().unwrap(), "succeeded").await;
    assert_eq!(delivery["endpoint_id"], id);
    assert_eq!(delivery["event_id"], sent["event_id"]);

    // A chosen type and payload.
    let custom = app
        .post(
            &format!("/v1/endpoints/{id}/test"),
            &json!({"event_type": "invoice.paid", "payload": {"amount": 5}}),
        )
        .await;
    assert_eq!(custom.status(), 202);
    let got = target.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got[1].json()["type"], "invoice.paid");
    assert_eq!(got[1].json()["data"], json!({"amount": 5}));
    // Deliveries are made in the test event's own commit, before its 202.
    let others: Value = app
        .get(&format!(
            "/v1/deliveries?endpoint_id={}",
            other_endpoint["id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(others["deliveries"], json!([]), "only the chosen endpoint");
    app.wait_until_settled().await;
    assert!(other.received().is_empty(), "only the chosen endpoint");

    let bad_type = app
        .post(
            &format!("/v1/endpoints/{id}/test"),
            &json!({"event_type": "a b"}),
        )
        .await;
    assert_eq!(
        assert_problem(bad_type, 422, "validation").await["field"],
        "event_type"
    );
    let unknown = app
        .post(
            &format!("/v1/endpoints/{}/test", uuid::Uuid::now_v7()),
            &json!({}),
        )
        .await;
    assert_problem(unknown, 404, "not-found").await;
    let disable = app
        .request(Method::PATCH, &format!("/v1/endpoints/{id}"), ADMIN_KEY)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(disable.status(), 200);
    let disabled = app
        .post(&format!("/v1/endpoints/{id}/test"), &json!({}))
        .await;
    assert_problem(disabled, 409, "conflict").await;
}

/// Reads server-sent events from `response` until one named `name` arrives (5 s at most).
async fn next_sse_event(
    stream: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buffer: &mut String,
    name: &str,
) {
    use futures_util::StreamExt as _;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(at) = buffer.find("\n\n") {
            let block: String = buffer.drain(..at + 2).collect();
            if block.lines().any(|l| l == format!("event: {name}")) {
                return;
            }
            continue;
        }
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no {name:?} event within 5 s; got {buffer:?}"))
            .expect("the feed ended")
            .unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_changes_feed_announces_new_and_attempted_deliveries() {
    let app = webhook_app("").await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(200).after(Duration::from_millis(600)));
    create_endpoint(&app, json!({"url": receiver.url})).await;
    let response = app
        .request(Method::GET, "/v1/deliveries/changes", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    next_sse_event(&mut stream, &mut buffer, "ready").await;

    app.publish("orders", "order.created", json!(1)).await;
    // Created (then, 600 ms later, attempted): two announcements.
    next_sse_event(&mut stream, &mut buffer, "changed").await;
    next_sse_event(&mut stream, &mut buffer, "changed").await;
    assert_eq!(only_delivery(&app).await["status"], "succeeded");

    let reader = app.create_key("subscriber", &["orders"]).await;
    let refused = app
        .request(Method::GET, "/v1/deliveries/changes", &reader)
        .send()
        .await
        .unwrap();
    assert_problem(refused, 403, "forbidden").await;
}

/// A fresh instance's first claim of a backlog takes only the endpoint's `max_in_flight`,
/// and its next, made while those are in flight, finds no room: it claims again as soon
/// as they end, not at the next poll (a second's stall in every drain before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_instance_drains_a_backlog_without_waiting_for_the_poll() {
    let api = api_only_app("").await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(200).after(Duration::from_millis(50)));
    create_endpoint(&api, json!({"url": receiver.url, "max_in_flight": 4})).await;
    let events: Vec<Value> = (0..40)
        .map(|i| json!({"stream": format!("s{i}"), "type": "t", "payload": i}))
        .collect();
    api.publish_batch(&events).await;

    let mut settings = crate::helpers::test_settings();
    fast(&mut settings, "");
    let _worker =
        crate::helpers::spawn_app_on(settings, api.db_name.clone(), api.database_url.clone()).await;
    let got = receiver.wait_for(40, Duration::from_secs(10)).await;
    let first = got.iter().map(|r| r.at).min().unwrap();
    let last = got.iter().map(|r| r.at).max().unwrap();
    // 40 at 4 in flight and 50 ms each take 0.5 s; one wait for the poll adds a second.
    assert!(
        last - first < Duration::from_millis(1200),
        "the backlog took {:?}",
        last - first
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_changes_feed_hears_about_attempts_recorded_by_another_instance() {
    // A sends; B has no webhook worker, so everything B's feed reports comes from A.
    let a = webhook_app("").await;
    let mut settings = crate::helpers::test_settings();
    fast(&mut settings, "");
    settings.delivery_concurrency = 0;
    let b = crate::helpers::spawn_app_on(settings, a.db_name.clone(), a.database_url.clone()).await;
    b.wait_for_metric("herald_listener_connects_total", 1).await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(200).after(Duration::from_millis(600)));
    create_endpoint(&a, json!({"url": receiver.url})).await;
    let response = b
        .request(Method::GET, "/v1/deliveries/changes", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    next_sse_event(&mut stream, &mut buffer, "ready").await;

    a.publish("orders", "order.created", json!(1)).await;
    // Created on A (its "due" NOTIFY), then attempted on A (its "changed" NOTIFY).
    next_sse_event(&mut stream, &mut buffer, "changed").await;
    receiver.wait_for(1, Duration::from_secs(5)).await;
    next_sse_event(&mut stream, &mut buffer, "changed").await;
    let delivery: Value = b.get("/v1/deliveries").await.json().await.unwrap();
    assert_eq!(delivery["deliveries"][0]["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_endpoint_never_has_two_of_one_stream_in_flight() {
    let app = webhook_app("50ms").await;
    let receiver = Receiver::start().await;
    let delay = Duration::from_millis(30);
    receiver.set_default(Reply::status(200).after(delay));
    create_endpoint(
        &app,
        json!({"url": receiver.url, "ordered": true, "max_in_flight": 50}),
    )
    .await;
    // Published one at a time, as a producer does: nothing about them is claimed at insert
    // (that path leaves ordered endpoints to the claim query).
    for i in 0..30 {
        app.publish(&format!("s{}", i % 3), "t", json!(i)).await;
    }
    let got = receiver.wait_for(30, Duration::from_secs(20)).await;
    let mut by_stream: std::collections::HashMap<String, Vec<(Instant, i64)>> =
        std::collections::HashMap::new();
    for request in &got {
        let body = request.json();
        by_stream
            .entry(body["stream"].as_str().unwrap().to_owned())
            .or_default()
            .push((request.at, body["seq"].as_i64().unwrap()));
    }
    assert_eq!(by_stream.len(), 3);
    for (stream, mut sent) in by_stream {
        sent.sort_by_key(|(at, _)| *at);
        let seqs: Vec<i64> = sent.iter().map(|(_, seq)| *seq).collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "{stream} in seq order");
        for pair in sent.windows(2) {
            assert!(
                pair[1].0 - pair[0].0 >= delay,
                "{stream}: seq {} started before seq {} was answered",
                pair[1].1,
                pair[0].1
            );
        }
    }
}
