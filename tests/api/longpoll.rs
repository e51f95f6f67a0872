//! Long-poll: held requests, timeout tuning, wake-ups across instances, limits, shutdown.

use std::io::Write as _;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_KEY, TestApp, assert_problem, spawn_app, spawn_app_on, spawn_app_with, test_settings,
};

/// A second Herald on `a`'s database, with its settings adjusted by `adjust`.
async fn second_instance(
    a: &TestApp,
    adjust: impl FnOnce(&mut herald::config::Settings),
) -> TestApp {
    let mut settings = test_settings();
    adjust(&mut settings);
    spawn_app_on(settings, a.db_name.clone(), a.database_url.clone()).await
}

/// Starts a long-poll in the background; returns its handle (status, body, headers, when it was answered).
fn hold(
    app: &TestApp,
    path: &str,
) -> tokio::task::JoinHandle<(u16, Value, reqwest::header::HeaderMap, Instant)> {
    let request = app.request(Method::GET, path, ADMIN_KEY);
    tokio::spawn(async move {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body, headers, Instant::now())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_poll_is_answered_by_the_commit_itself() {
    let app = spawn_app_with(|s| s.fallback_interval = Duration::from_secs(60)).await;
    app.publish("payment:pay_1", "payment.created", json!(1))
        .await;
    let poll = hold(&app, "/v1/streams/payment:pay_1/events?after=1&wait=20");
    app.wait_for_metric("herald_waiters", 1).await;
    let reads_before = app.metric("herald_hub_reads_total").await;
    let pushes_before = app.metric("herald_hub_pushes_total").await;

    let event = app
        .publish("payment:pay_1", "payment.succeeded", json!({"ok": true}))
        .await;
    let (status, body, _, _) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["events"].as_array().unwrap().len(), 1);
    assert_eq!(body["events"][0], event);
    assert_eq!(body["next_after"], 2);
    // Handed over by the commit itself: no read, no timeout, no fallback check (60 s).
    // (How fast, in milliseconds, is the long-poll benchmark's to measure.)
    assert_eq!(app.metric("herald_hub_reads_total").await, reads_before);
    assert_eq!(app.metric("herald_longpolls_timed_out_total").await, 0);
    assert!(app.metric("herald_hub_pushes_total").await > pushes_before);
    app.wait_for_metric("herald_waiters", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_whose_wait_runs_out_answers_empty_with_the_same_cursor() {
    let app = spawn_app().await;
    for i in 0..3 {
        app.publish("s", "t", json!(i)).await;
    }
    let started = Instant::now();
    let response = app.get("/v1/streams/s/events?after=3&wait=1").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = response.json::<Value>().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(body, json!({"events": [], "next_after": 3}));
    // At least the wait (its jitter window, wait .. wait * 17/16, is the unit test of
    // `jittered`); answered by the wait running out, not by anything else.
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(app.metric("herald_longpolls_timed_out_total").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_are_jittered_within_a_sixteenth() {
    let app = spawn_app().await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let request = app.request(Method::GET, "/v1/streams/quiet/events?wait=1.6", ADMIN_KEY);
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            request.send().await.unwrap().bytes().await.unwrap();
            started.elapsed()
        }));
    }
    let mut waits = Vec::new();
    for task in tasks {
        waits.push(task.await.unwrap());
    }
    for wait in &waits {
        assert!(*wait >= Duration::from_millis(1600), "{wait:?}");
        assert!(*wait < Duration::from_secs(10), "{wait:?}");
    }
    let spread = *waits.iter().max().unwrap() - *waits.iter().min().unwrap();
    assert!(
        spread > Duration::from_millis(5),
        "8 clients came back in lockstep: {waits:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_wait_is_honoured_and_acknowledged() {
    let app = spawn_app().await;
    let started = Instant::now();
    let response = app
        .request(Method::GET, "/v1/streams/s/events", ADMIN_KEY)
        .header("Prefer", "respond-async, wait=1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["preference-applied"], "wait=1");
    response.bytes().await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    // An explicit `wait` parameter wins and no preference is reported applied.
    let response = app
        .request(Method::GET, "/v1/streams/s/events?wait=0", ADMIN_KEY)
        .header("Prefer", "wait=5")
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("preference-applied").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_are_clamped_to_the_maximum() {
    let app = spawn_app_with(|s| {
        s.longpoll_max_wait = Duration::from_secs(1);
        s.longpoll_default_wait = Duration::from_secs(1);
    })
    .await;
    let started = Instant::now();
    let response = app
        .request(Method::GET, "/v1/streams/s/events", ADMIN_KEY)
        .header("Prefer", "wait=30")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["preference-applied"], "wait=1");
    response.bytes().await.unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );

    let started = Instant::now();
    app.get("/v1/streams/s/events?wait=600")
        .await
        .bytes()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );

    // Too large for any duration: clamped too, not a crash.
    let started = Instant::now();
    let huge = app.get("/v1/streams/s/events?wait=1e308").await;
    assert_eq!(huge.status(), 200);
    huge.bytes().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let preferred = app
        .request(Method::GET, "/v1/streams/s/events", ADMIN_KEY)
        .header("Prefer", "wait=1e300")
        .send()
        .await
        .unwrap();
    assert_eq!(preferred.headers()["preference-applied"], "wait=1");
    preferred.bytes().await.unwrap();

    let problem = assert_problem(
        app.get("/v1/streams/s/events?wait=soon").await,
        422,
        "validation",
    )
    .await;
    assert_eq!(problem["field"], "wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_cursor_is_410_at_once() {
    let app = spawn_app().await;
    for i in 0..3 {
        app.publish("s", "t", json!(i)).await;
    }
    app.db()
        .await
        .execute("DELETE FROM events WHERE seq = 1", &[])
        .await
        .unwrap();
    let started = Instant::now();
    let problem = assert_problem(
        app.get("/v1/streams/s/events?after=0&wait=20").await,
        410,
        "cursor-expired",
    )
    .await;
    assert_eq!(problem["earliest_after"], 1);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not held for the wait"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_waiter_limit_polls_get_503_with_retry_after() {
    let app = spawn_app_with(|s| s.max_waiters = 2).await;
    let first = hold(&app, "/v1/streams/a/events?wait=5");
    let second = hold(&app, "/v1/streams/b/events?wait=5");
    app.wait_for_metric("herald_waiters", 2).await;
    let third = app.get("/v1/streams/c/events?wait=5").await;
    assert!(third.headers().contains_key("retry-after"));
    assert_problem(third, 503, "unavailable").await;
    // A plain poll holds nothing and is still served.
    assert_eq!(app.get("/v1/streams/c/events?wait=0").await.status(), 200);
    assert_eq!(app.metric("herald_longpolls_rejected_total").await, 1);
    app.publish("a", "t", json!(1)).await;
    assert_eq!(first.await.unwrap().0, 200);
    app.wait_for_metric("herald_waiters", 1).await;
    assert_eq!(app.get("/v1/streams/c/events?wait=0.1").await.status(), 200);
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_held_on_one_instance_is_answered_when_another_commits() {
    let slow_fallback =
        |s: &mut herald::config::Settings| s.fallback_interval = Duration::from_secs(60);
    let a = spawn_app_with(slow_fallback).await;
    let b = second_instance(&a, slow_fallback).await;
    b.wait_for_metric("herald_listener_connects_total", 1).await;
    a.wait_for_metric("herald_listener_connects_total", 1).await;

    let poll = hold(&a, "/v1/streams/orders/events?wait=20");
    a.wait_for_metric("herald_waiters", 1).await;
    let event = b.publish("orders", "order.created", json!({"id": 7})).await;
    // Within the 20 s wait, with the fallback check at 60 s: only B's NOTIFY can have
    // told A.
    let (status, body, _, _) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["events"][0], event);
    assert_eq!(a.metric("herald_longpolls_timed_out_total").await, 0);
    assert!(a.metric("herald_notifications_received_total").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_listen_connection_is_replaced_and_the_poll_still_gets_its_event() {
    let slow_fallback =
        |s: &mut herald::config::Settings| s.fallback_interval = Duration::from_secs(60);
    let a = spawn_app_with(slow_fallback).await;
    let b = second_instance(&a, slow_fallback).await;
    a.wait_for_metric("herald_listener_connects_total", 1).await;

    let poll = hold(&a, "/v1/streams/orders/events?wait=20");
    a.wait_for_metric("herald_waiters", 1).await;
    let killed: i64 = a
        .db()
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'herald-listener' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 2, "one listener per instance");
    // Published while A may still be reconnecting: its NOTIFY can be lost, the re-check
    // after reconnecting must find the event anyway.
    let event = b.publish("orders", "order.created", json!(1)).await;
    let (status, body, _, _) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["events"][0], event);
    a.wait_for_metric("herald_listener_connects_total", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_is_made_up_by_the_fallback_check() {
    let a = spawn_app_with(|s| s.fallback_interval = Duration::from_millis(300)).await;
    let poll = hold(&a, "/v1/streams/quiet/events?wait=20");
    a.wait_for_metric("herald_waiters", 1).await;
    // Written behind Herald's back: no hint, no NOTIFY.
    a.db()
        .await
        .batch_execute(
            "INSERT INTO streams (name, last_seq) VALUES ('quiet', 1); \
             INSERT INTO events (id, stream, seq, event_type, payload, created_at) \
             VALUES (herald_uuid7(), 'quiet', 1, 'sneaky', '{}', now());",
        )
        .await
        .unwrap();
    let (status, body, _, _) = tokio::time::timeout(Duration::from_secs(3), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["events"][0]["type"], "sneaky");
}

/// 200 waiters on one stream; one commit answers them all. Committed by their own
/// instance, it is handed to them without a read; committed by another instance, their
/// instance reads the stream once for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_commit_answers_200_waiters_with_one_read_or_none() {
    let slow_fallback =
        |s: &mut herald::config::Settings| s.fallback_interval = Duration::from_secs(60);
    let app = spawn_app_with(slow_fallback).await;
    let other = second_instance(&app, slow_fallback).await;
    app.wait_for_metric("herald_listener_connects_total", 1)
        .await;
    for (round, publisher) in [(1, &app), (2, &other)] {
        let polls: Vec<_> = (0..200)
            .map(|_| {
                hold(
                    &app,
                    &format!("/v1/streams/fanout/events?after={}&wait=30", round - 1),
                )
            })
            .collect();
        app.wait_for_metric("herald_waiters", 200).await;
        let reads_before = app.metric("herald_hub_reads_total").await;
        let pushes_before = app.metric("herald_hub_pushes_total").await;

        let event = publisher
            .publish("fanout", "t", json!({"round": round}))
            .await;
        assert_eq!(event["seq"], round);
        for poll in polls {
            let (status, body, _, _) = poll.await.unwrap();
            assert_eq!(status, 200);
            assert_eq!(body["events"], json!([event]));
        }
        let reads = app.metric("herald_hub_reads_total").await - reads_before;
        let pushes = app.metric("herald_hub_pushes_total").await - pushes_before;
        if round == 1 {
            assert_eq!((reads, pushes), (0, 1), "its own commit: no read");
        } else {
            assert_eq!(
                (reads, pushes),
                (1, 0),
                "another instance's commit: one read"
            );
        }
        app.wait_for_metric("herald_waiters", 0).await;
        assert_eq!(app.metric("herald_watched_streams").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_frees_its_waiter_at_once() {
    let app = spawn_app().await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut socket = std::net::TcpStream::connect(address).unwrap();
    write!(
        socket,
        "GET /v1/streams/s/events?wait=30 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n"
    )
    .unwrap();
    app.wait_for_metric("herald_waiters", 1).await;
    drop(socket);
    // Freed when the client left (within wait_for_metric's 10 s), not by the 30 s wait.
    app.wait_for_metric("herald_waiters", 0).await;
    assert_eq!(app.metric("herald_longpolls_timed_out_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_held_polls_at_once() {
    let app = spawn_app().await;
    app.publish("s", "t", json!(1)).await;
    let poll = hold(&app, "/v1/streams/s/events?after=1&wait=30");
    app.wait_for_metric("herald_waiters", 1).await;
    app.stop.cancel();
    // Answered by the shutdown, not by the 30 s wait.
    let (status, body, _, _) = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("answered at shutdown")
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, json!({"events": [], "next_after": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_long_poll_only_under_their_prefixes() {
    let app = spawn_app().await;
    let key = app.create_key("subscriber", &["payment:"]).await;
    let denied = app
        .request(Method::GET, "/v1/streams/invoice:1/events?wait=5", &key)
        .send()
        .await
        .unwrap();
    assert_problem(denied, 403, "forbidden").await;
    let started = Instant::now();
    let allowed = app
        .request(Method::GET, "/v1/streams/payment:1/events?wait=0.2", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    allowed.bytes().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_instance_sends_no_notifications_until_another_listens() {
    let slow_fallback =
        |s: &mut herald::config::Settings| s.fallback_interval = Duration::from_secs(60);
    let a = spawn_app_with(slow_fallback).await;
    // One stream each, so that each is one hint whatever the sender coalesces.
    for i in 0..5 {
        a.publish(&format!("orders-{i}"), "order.created", json!({"n": i}))
            .await;
    }
    a.wait_for_metric("herald_hints_unsent_alone_total", 5)
        .await;
    assert_eq!(
        a.metric("herald_notifications_sent_total").await,
        0,
        "nobody else listens: no NOTIFY per commit"
    );

    // A second instance says hello before it serves; from then on the first notifies it.
    let b = second_instance(&a, slow_fallback).await;
    let poll = hold(&b, "/v1/streams/orders/events?after=0&wait=20");
    b.wait_for_metric("herald_waiters", 1).await;
    let event = a.publish("orders", "order.created", json!({"n": 5})).await;
    // Within the 20 s wait, with the fallback check at 60 s: only A's NOTIFY can have
    // told B.
    let (status, body, _, _) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["events"][0], event);
    assert_eq!(b.metric("herald_longpolls_timed_out_total").await, 0);
    assert!(a.metric("herald_notifications_sent_total").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_take_the_units_the_document_offers() {
    let app = spawn_app().await;
    // The example the OpenAPI document gives for `wait` is accepted.
    let document: Value = app.get("/openapi.json").await.json().await.unwrap();
    let parameters = document["paths"]["/v1/streams/{stream}/events"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let wait = parameters.iter().find(|p| p["name"] == "wait").unwrap();
    let example = wait["example"].as_str().unwrap();
    app.publish("units", "t", json!(1)).await;
    let answer = app
        .get(&format!("/v1/streams/units/events?after=0&wait={example}"))
        .await;
    assert_eq!(answer.status(), 200, "wait={example}");

    // A unit scales the wait: 300ms holds about that long, not 300 s.
    for (raw, at_least, below) in [
        ("300ms", 280, 2000),
        ("0.3s", 280, 2000),
        ("0.3", 280, 2000),
    ] {
        let started = Instant::now();
        let answer = app
            .get(&format!("/v1/streams/units/events?after=1&wait={raw}"))
            .await;
        assert_eq!(answer.status(), 200, "wait={raw}");
        // The head comes at once; the body when the wait is over.
        let body: Value = answer.json().await.unwrap();
        let took = started.elapsed();
        assert_eq!(body["events"], json!([]));
        assert!(
            took >= Duration::from_millis(at_least) && took < Duration::from_millis(below),
            "wait={raw} took {took:?}"
        );
    }
    for bad in ["abc", "-1s", "25x", "s"] {
        let refused = app
            .get(&format!("/v1/streams/units/events?after=1&wait={bad}"))
            .await;
        assert_problem(refused, 422, "validation").await;
    }
}

/// Publishes `thousands` x 1,000 events to `stream`.
async fn publish_history(app: &TestApp, stream: &str, thousands: usize) {
    for chunk in 0..thousands {
        let events: Vec<Value> = (0..1000)
            .map(|i| json!({"stream": stream, "type": "t", "payload": chunk * 1000 + i}))
            .collect();
        app.publish_batch(&events).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_first_watched_from_an_old_cursor_is_read_from_its_tail_once() {
    let slow_fallback =
        |s: &mut herald::config::Settings| s.fallback_interval = Duration::from_secs(60);
    let app = spawn_app_with(slow_fallback).await;
    // The new event is committed through another instance, so that this one learns of it
    // by a notification and reads the stream (its own commits need no read).
    let other = second_instance(&app, slow_fallback).await;
    app.wait_for_metric("herald_listener_connects_total", 1)
        .await;
    publish_history(&app, "tail", 3).await;
    // The stream's first watcher is an SSE reader catching up from the beginning: the
    // stream's slot starts at its cursor, 0.
    let catching_up = app
        .request(Method::GET, "/v1/streams/tail/sse?after=0", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(catching_up.status(), 200);
    app.wait_for_metric("herald_waiters", 1).await;
    let at_end = hold(&app, "/v1/streams/tail/events?after=3000&wait=30");
    app.wait_for_metric("herald_waiters", 2).await;
    let reads_before = app.metric("herald_hub_reads_total").await;
    let event = other.publish("tail", "t", json!("new")).await;
    let (status, body, _, _) = at_end.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["events"], json!([event]));
    // One read of the stream's tail, not three pages of history from 0.
    assert_eq!(app.metric("herald_hub_reads_total").await - reads_before, 1);
    drop(catching_up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_catching_up_from_an_old_cursor_does_not_make_the_hub_reread_history() {
    let slow_fallback =
        |s: &mut herald::config::Settings| s.fallback_interval = Duration::from_secs(60);
    let app = spawn_app_with(slow_fallback).await;
    // The new event comes through another instance: this one reads the stream for it.
    let other = second_instance(&app, slow_fallback).await;
    app.wait_for_metric("herald_listener_connects_total", 1)
        .await;
    publish_history(&app, "history", 5).await;
    // Ten waiters at the head.
    let polls: Vec<_> = (0..10)
        .map(|_| hold(&app, "/v1/streams/history/events?after=5000&wait=30"))
        .collect();
    app.wait_for_metric("herald_waiters", 10).await;
    // A client loops from the beginning, one event at a time, as one catching up after a
    // day offline (or a buggy one) does.
    for _ in 0..20 {
        let page: Value = app
            .get("/v1/streams/history/events?after=0&limit=1&wait=1")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(page["events"][0]["seq"], 1);
    }
    let reads_before = app.metric("herald_hub_reads_total").await;
    let event = other.publish("history", "t", json!("new")).await;
    for poll in polls {
        let (status, body, _, _) = poll.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body["events"], json!([event]));
    }
    // One read for the commit, not five pages of history per catching-up request.
    assert_eq!(app.metric("herald_hub_reads_total").await - reads_before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_beyond_the_streams_end_does_not_hide_events_from_other_waiters() {
    let app = spawn_app_with(|s| s.fallback_interval = Duration::from_secs(60)).await;
    app.wait_for_metric("herald_listener_connects_total", 1)
        .await;
    for i in 0..5 {
        app.publish("ahead", "t", json!(i)).await;
    }
    // A made-up cursor far ahead holds first; then a reader at the real end.
    let ahead = hold(&app, "/v1/streams/ahead/events?after=1000&wait=2");
    app.wait_for_metric("herald_waiters", 1).await;
    let at_end = hold(&app, "/v1/streams/ahead/events?after=5&wait=30");
    app.wait_for_metric("herald_waiters", 2).await;
    let event = app.publish("ahead", "t", json!("sixth")).await;
    let (status, body, _, _) = at_end.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["events"], json!([event]));
    let (_, body, _, _) = ahead.await.unwrap();
    assert_eq!(body["events"], json!([]));
}
