//! `GET /v1/ws`: many streams over one WebSocket, tickets, per-stream errors, other
//! instances, and clients that do not read.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{ADMIN_KEY, TestApp, spawn_app, spawn_app_on, spawn_app_with, test_settings};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(app: &TestApp, query: &str) -> String {
    format!(
        "{}/v1/ws{query}",
        app.address.replacen("http://", "ws://", 1)
    )
}

/// Opens a socket with `key` in the `Authorization` header.
async fn connect(app: &TestApp, key: &str) -> Ws {
    let mut request = ws_url(app, "").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// The HTTP status a handshake was refused with.
async fn refused(
    request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
) -> u16 {
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("refused how? {other}"),
        Ok(_) => panic!("the handshake was accepted"),
    }
}

async fn send(ws: &mut Ws, message: Value) {
    ws.send(Message::text(message.to_string())).await.unwrap();
}

/// The next JSON message (pings and pongs skipped), within 10 s.
async fn next(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket is open")
            .unwrap();
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn subscribe(ws: &mut Ws, stream: &str, after: i64) -> Value {
    send(
        ws,
        json!({"type": "subscribe", "stream": stream, "after": after, "id": stream}),
    )
    .await;
    next(ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_socket_follows_500_streams_each_in_order_once_and_unsubscribe_stops_one() {
    let app = spawn_app().await;
    let mut ws = connect(&app, ADMIN_KEY).await;
    for i in 0..500 {
        send(
            &mut ws,
            json!({"type": "subscribe", "stream": format!("s{i}"), "id": i}),
        )
        .await;
    }
    for _ in 0..500 {
        let reply = next(&mut ws).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        assert_eq!(reply["next_after"], 0);
        assert_eq!(reply["stream"], format!("s{}", reply["id"]));
    }
    app.wait_for_metric("herald_ws_subscriptions", 500).await;
    // Three events on each stream, in two batches.
    let events: Vec<Value> = (1..=3)
        .flat_map(|n| {
            (0..500).map(move |i| json!({"stream": format!("s{i}"), "type": "t", "payload": n}))
        })
        .collect();
    for batch in events.chunks(1000) {
        app.publish_batch(batch).await;
    }
    let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
    for _ in 0..1500 {
        let message = next(&mut ws).await;
        assert_eq!(message["type"], "event", "{message}");
        let stream = message["stream"].as_str().unwrap().to_owned();
        assert_eq!(message["event"]["stream"], stream);
        assert_eq!(message["event"]["seq"], message["seq"]);
        seen.entry(stream)
            .or_default()
            .push(message["seq"].as_i64().unwrap());
    }
    assert_eq!(seen.len(), 500);
    for (stream, seqs) in &seen {
        assert_eq!(seqs, &[1, 2, 3], "{stream}");
    }

    send(
        &mut ws,
        json!({"type": "unsubscribe", "stream": "s0", "id": "bye"}),
    )
    .await;
    let reply = next(&mut ws).await;
    assert_eq!(
        reply,
        json!({"type": "unsubscribed", "stream": "s0", "id": "bye"})
    );
    app.publish("s0", "t", json!(4)).await;
    app.publish("s1", "t", json!(4)).await;
    // The next message is s1's: nothing of s0 comes after its `unsubscribed`.
    let message = next(&mut ws).await;
    assert_eq!(
        (message["stream"].as_str(), message["seq"].as_i64()),
        (Some("s1"), Some(4))
    );
    app.wait_for_metric("herald_ws_subscriptions", 499).await;
    ws.close(None).await.unwrap();
    app.wait_for_metric("herald_ws_sockets", 0).await;
    app.wait_for_metric("herald_waiters", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_resume_exactly_and_per_stream_errors_leave_the_socket_open() {
    let app = spawn_app().await;
    let reader = app.create_key("subscriber", &["orders:"]).await;
    for n in 1..=3 {
        app.publish("orders:a", "t", json!(n)).await;
    }
    let mut ws = connect(&app, &reader).await;
    assert_eq!(
        subscribe(&mut ws, "orders:a", 0).await["type"],
        "subscribed"
    );
    for seq in 1..=3 {
        assert_eq!(next(&mut ws).await["seq"], seq);
    }
    ws.close(None).await.unwrap();
    // Missed while away: exactly these come back, from the cursor the client kept.
    for n in 4..=5 {
        app.publish("orders:a", "t", json!(n)).await;
    }
    let mut ws = connect(&app, &reader).await;
    let reply = subscribe(&mut ws, "orders:a", 3).await;
    assert_eq!(
        reply,
        json!({"type": "subscribed", "stream": "orders:a", "next_after": 3, "id": "orders:a"})
    );
    assert_eq!(next(&mut ws).await["seq"], 4);
    assert_eq!(next(&mut ws).await["seq"], 5);

    // Errors are replies about one stream; the socket and the other subscription go on.
    let forbidden = subscribe(&mut ws, "payments:x", 0).await;
    assert_eq!(
        (forbidden["type"].as_str(), forbidden["status"].as_u64()),
        (Some("error"), Some(403))
    );
    assert_eq!(forbidden["stream"], "payments:x");
    assert_eq!(forbidden["id"], "payments:x");
    app.publish("orders:b", "t", json!(1)).await;
    app.db()
        .await
        .execute(
            "DELETE FROM events WHERE stream = 'orders:b' AND seq = 1",
            &[],
        )
        .await
        .unwrap();
    app.publish("orders:b", "t", json!(2)).await;
    let expired = subscribe(&mut ws, "orders:b", 0).await;
    assert_eq!(expired["status"], 410, "{expired}");
    assert_eq!(expired["earliest_after"], 1);
    assert_eq!(subscribe(&mut ws, "orders:a", 5).await["status"], 409);
    assert_eq!(subscribe(&mut ws, "has space", 0).await["status"], 422);
    send(&mut ws, json!({"type": "dance"})).await;
    assert_eq!(next(&mut ws).await["status"], 422);
    ws.send(Message::text("not json")).await.unwrap();
    assert_eq!(next(&mut ws).await["status"], 400);
    app.publish("orders:a", "t", json!(6)).await;
    let event = next(&mut ws).await;
    assert_eq!(
        (event["stream"].as_str(), event["seq"].as_i64()),
        (Some("orders:a"), Some(6))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_subscriptions_is_429_for_that_stream() {
    let app = spawn_app_with(|s| s.ws_max_subscriptions = 2).await;
    let mut ws = connect(&app, ADMIN_KEY).await;
    assert_eq!(subscribe(&mut ws, "a", 0).await["type"], "subscribed");
    assert_eq!(subscribe(&mut ws, "b", 0).await["type"], "subscribed");
    let third = subscribe(&mut ws, "c", 0).await;
    assert_eq!(
        (third["status"].as_u64(), third["stream"].as_str()),
        (Some(429), Some("c"))
    );
    send(&mut ws, json!({"type": "unsubscribe", "stream": "a"})).await;
    assert_eq!(next(&mut ws).await["type"], "unsubscribed");
    assert_eq!(subscribe(&mut ws, "c", 0).await["type"], "subscribed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_works_once_expires_and_a_key_in_the_url_is_refused() {
    let app = spawn_app().await;
    let ticket: Value = app
        .post("/v1/ws/tickets", &json!({}))
        .await
        .json()
        .await
        .unwrap();
    let ticket = ticket["ticket"].as_str().unwrap().to_owned();
    let url = ws_url(&app, &format!("?ticket={ticket}"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    assert_eq!(subscribe(&mut ws, "s", 0).await["type"], "subscribed");
    assert_eq!(refused(url.as_str()).await, 401, "a ticket works once");

    let late: Value = app
        .post("/v1/ws/tickets", &json!({}))
        .await
        .json()
        .await
        .unwrap();
    app.db()
        .await
        .execute(
            "UPDATE ws_tickets SET expires_at = now() - interval '1 second'",
            &[],
        )
        .await
        .unwrap();
    let late = ws_url(
        &app,
        &format!("?ticket={}", late["ticket"].as_str().unwrap()),
    );
    assert_eq!(refused(late.as_str()).await, 401, "an expired ticket");
    assert_eq!(
        refused(ws_url(&app, &format!("?key={ADMIN_KEY}")).as_str()).await,
        401
    );
    assert_eq!(
        refused(ws_url(&app, &format!("?access_token={ADMIN_KEY}")).as_str()).await,
        401
    );
    assert_eq!(
        refused(ws_url(&app, "").as_str()).await,
        401,
        "no credentials"
    );
    let publisher = app.create_key("publisher", &[]).await;
    let mut request = ws_url(&app, "").into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {publisher}").parse().unwrap(),
    );
    assert_eq!(refused(request).await, 403, "publishers cannot read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_on_one_instance_gets_events_committed_through_another() {
    let slow_fallback =
        |s: &mut herald::config::Settings| s.fallback_interval = Duration::from_secs(60);
    let a = spawn_app_with(slow_fallback).await;
    let mut settings = test_settings();
    slow_fallback(&mut settings);
    let b = spawn_app_on(settings, a.db_name.clone(), a.database_url.clone()).await;
    b.wait_for_metric("herald_listener_connects_total", 1).await;
    a.wait_for_metric("herald_listener_connects_total", 1).await;
    let mut ws = connect(&a, ADMIN_KEY).await;
    assert_eq!(subscribe(&mut ws, "orders", 0).await["type"], "subscribed");
    let event = b.publish("orders", "order.created", json!({"id": 7})).await;
    // Within next()'s 10 s, with the fallback check at 60 s: B's NOTIFY told A.
    let message = next(&mut ws).await;
    assert_eq!(message["event"], event);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_the_others_go_on() {
    let app = spawn_app_with(|s| {
        s.ws_max_queue = 300;
        s.max_batch_bytes = 8 << 20;
    })
    .await;
    let mut slow = connect(&app, ADMIN_KEY).await;
    let mut fast = connect(&app, ADMIN_KEY).await;
    assert_eq!(subscribe(&mut slow, "big", 0).await["type"], "subscribed");
    assert_eq!(subscribe(&mut fast, "big", 0).await["type"], "subscribed");
    app.wait_for_metric("herald_ws_subscriptions", 2).await;
    // The slow client reads nothing from here on. 2,000 events of 8 KiB: far more than the
    // sockets' kernel buffers and the 300-message queue hold (a batch of 100 fits it).
    let payload = "x".repeat(8 * 1024);
    let fast_reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < 2000 {
            let message = next(&mut fast).await;
            seqs.push(message["seq"].as_i64().unwrap());
        }
        (seqs, fast)
    });
    for chunk in 0..20 {
        let events: Vec<Value> = (0..100)
            .map(|i| json!({"stream": "big", "type": "t", "payload": {"n": chunk * 100 + i, "pad": payload}}))
            .collect();
        app.publish_batch(&events).await;
    }
    let (seqs, _fast) = fast_reader.await.unwrap();
    assert_eq!(
        seqs,
        (1..=2000).collect::<Vec<i64>>(),
        "the reading client got everything"
    );
    // The slow one was dropped: its subscription at once, its socket with 4008.
    app.wait_for_metric("herald_ws_subscriptions", 1).await;
    let mut events = 0;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => events += 1,
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a close frame after {events} events: {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Library(4008)));
    assert!(events < 2000, "{events} events before the close");
}

/// The time one event takes from its publish to `ws`, which follows `stream` and has seen
/// every event before it.
async fn publish_to_receive(app: &TestApp, ws: &mut Ws, stream: &str, seq: i64) -> Duration {
    let sent = std::time::Instant::now();
    app.publish(stream, "t", json!({"probe": seq})).await;
    let message = next(ws).await;
    assert_eq!(message["seq"], seq, "{message}");
    sent.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_does_not_delay_another_on_the_same_stream() {
    // A queue that never overflows here: the stalled socket stays open with its backlog.
    let app = spawn_app_with(|s| {
        s.ws_max_queue = 1_000_000;
        s.max_batch_bytes = 8 << 20;
    })
    .await;
    let mut stalled = connect(&app, ADMIN_KEY).await;
    let mut reader = connect(&app, ADMIN_KEY).await;
    assert_eq!(
        subscribe(&mut stalled, "big", 0).await["type"],
        "subscribed"
    );
    assert_eq!(subscribe(&mut reader, "big", 0).await["type"], "subscribed");
    app.wait_for_metric("herald_ws_subscriptions", 2).await;
    let mut before = Vec::new();
    for seq in 1..=5 {
        before.push(publish_to_receive(&app, &mut reader, "big", seq).await);
    }
    // From here the stalled client reads nothing: 4,000 events of 8 KiB (32 MB) are more
    // than both sockets' kernel buffers hold, so most of them wait in its queue.
    let payload = "x".repeat(8 * 1024);
    for chunk in 0..40 {
        let events: Vec<Value> = (0..100)
            .map(|i| json!({"stream": "big", "type": "t", "payload": {"n": chunk * 100 + i, "pad": payload}}))
            .collect();
        app.publish_batch(&events).await;
    }
    for seq in 6..=4005 {
        assert_eq!(next(&mut reader).await["seq"], seq);
    }
    let mut during = Vec::new();
    for seq in 4006..=4010 {
        during.push(publish_to_receive(&app, &mut reader, "big", seq).await);
    }
    // The stalled socket is still open, its backlog unsent: had the reader waited for it,
    // it would have waited for ever.
    assert_eq!(
        app.metric("herald_ws_subscriptions").await,
        2,
        "the stalled socket is still subscribed"
    );
    before.sort();
    during.sort();
    // Same order of magnitude: milliseconds on a loaded test machine, not the stalled
    // client's backlog.
    assert!(
        during[2] < before[2] * 20 + Duration::from_millis(200),
        "median publish-to-receive {:?} beside a stalled socket, {:?} before",
        during[2],
        before[2]
    );
}

/// The close frame the socket ends with, within 15 s (events before it skipped).
async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("closed within 15 s")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_keys_socket_is_closed_4001_and_shutdown_closes_1001() {
    let app = spawn_app().await;
    let reader = app.create_key("subscriber", &["orders:"]).await;
    let mut doomed = connect(&app, &reader).await;
    assert_eq!(
        subscribe(&mut doomed, "orders:a", 0).await["type"],
        "subscribed"
    );
    let mut other = connect(&app, ADMIN_KEY).await;
    assert_eq!(
        subscribe(&mut other, "orders:a", 0).await["type"],
        "subscribed"
    );
    let id = app.key_id_with_role("subscriber").await;
    let deleted = app
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/keys/{id}"),
            ADMIN_KEY,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(
        close_code(&mut doomed).await,
        Some(CloseCode::Library(4001))
    );

    app.stop.cancel();
    assert_eq!(close_code(&mut other).await, Some(CloseCode::Away));
}

/// Sends `text` as one text message in fragments of `size` bytes (RFC 6455 continuation
/// frames).
async fn send_fragmented(ws: &mut Ws, text: &str, size: usize) {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let pieces: Vec<&[u8]> = text.as_bytes().chunks(size).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let opcode = OpCode::Data(if i == 0 { Data::Text } else { Data::Continue });
        let frame = Frame::message(piece.to_vec(), opcode, i + 1 == pieces.len());
        ws.send(Message::Frame(frame)).await.unwrap();
    }
}

/// A message may come in fragments: it is read whole and answered like any other. One over
/// 64 KiB, in one frame or in fragments, closes the socket with 1009 (message too big)
/// instead of dropping it without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_messages_are_read_whole_and_oversized_ones_close_1009() {
    let app = spawn_app().await;
    app.publish("frag", "t", json!(1)).await;
    let mut ws = connect(&app, ADMIN_KEY).await;
    let subscribe = json!({"type": "subscribe", "stream": "frag", "after": 0, "id": "f"});
    send_fragmented(&mut ws, &subscribe.to_string(), 10).await;
    let reply = next(&mut ws).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["id"], "f");
    assert_eq!(next(&mut ws).await["seq"], 1);

    let big = json!({"type": "subscribe", "stream": "frag", "pad": "a".repeat(70 * 1024)});
    ws.send(Message::text(big.to_string())).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Size));

    let mut fragmented = connect(&app, ADMIN_KEY).await;
    send_fragmented(&mut fragmented, &big.to_string(), 16 * 1024).await;
    assert_eq!(close_code(&mut fragmented).await, Some(CloseCode::Size));
}
