//! Server-Sent Events on `GET /v1/streams/{stream}/sse`.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, TestApp, assert_problem, spawn_app, spawn_app_with};

/// One parsed SSE event.
#[derive(Debug, PartialEq)]
struct SseEvent {
    id: i64,
    event: String,
    data: Value,
}

/// Reads an SSE response, collecting events and comments.
struct SseReader {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    comments: usize,
    ended: bool,
}

impl SseReader {
    fn new(response: reqwest::Response) -> Self {
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
            comments: 0,
            ended: false,
        }
    }

    /// The next event, or `None` when the stream ends or `timeout` passes.
    async fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, None, Vec::new());
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v);
                    }
                }
                // As EventSource does: the data fields joined with LF.
                let data = serde_json::from_str(&data.join("\n")).ok();
                if let (Some(id), Some(event), Some(data)) = (id, event, data) {
                    return Some(SseEvent { id, event, data });
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(_) => {
                    self.ended = true;
                    return None;
                }
                Err(_) => return None,
            }
        }
    }
}

async fn open(app: &TestApp, path: &str, last_event_id: Option<i64>) -> reqwest::Response {
    let mut request = app.request(Method::GET, path, ADMIN_KEY);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_sends_past_and_new_events_in_order_and_resumes_with_last_event_id() {
    let app = spawn_app().await;
    for i in 1..=3 {
        app.publish("feed", "item.added", json!(i)).await;
    }
    let response = open(&app, "/v1/streams/feed/sse", None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    let mut reader = SseReader::new(response);
    for seq in 1..=3 {
        let event = reader.next_event(Duration::from_secs(5)).await.unwrap();
        assert_eq!((event.id, event.event.as_str()), (seq, "item.added"));
        assert_eq!(event.data["seq"], seq);
        assert_eq!(event.data["payload"], seq);
        assert_eq!(event.data["stream"], "feed");
    }
    for i in 4..=5 {
        app.publish("feed", "item.added", json!(i)).await;
    }
    for seq in 4..=5 {
        assert_eq!(
            reader.next_event(Duration::from_secs(5)).await.unwrap().id,
            seq
        );
    }
    drop(reader);

    // Missed while disconnected: exactly these come back, once.
    for i in 6..=7 {
        app.publish("feed", "item.added", json!(i)).await;
    }
    let mut resumed = SseReader::new(open(&app, "/v1/streams/feed/sse", Some(5)).await);
    assert_eq!(
        resumed.next_event(Duration::from_secs(5)).await.unwrap().id,
        6
    );
    assert_eq!(
        resumed.next_event(Duration::from_secs(5)).await.unwrap().id,
        7
    );
    // Nothing else came: the next event is the one published after.
    app.publish("feed", "item.added", json!(8)).await;
    assert_eq!(
        resumed.next_event(Duration::from_secs(5)).await.unwrap().id,
        8
    );

    let mut from_query = SseReader::new(open(&app, "/v1/streams/feed/sse?after=6", None).await);
    assert_eq!(
        from_query
            .next_event(Duration::from_secs(5))
            .await
            .unwrap()
            .id,
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_catches_up_across_many_events_without_gaps() {
    let app = spawn_app().await;
    let events: Vec<Value> = (0..1200)
        .map(|i| json!({"stream": "bulk", "type": "t", "payload": i}))
        .collect();
    for chunk in events.chunks(600) {
        app.publish_batch(chunk).await;
    }
    let mut reader = SseReader::new(open(&app, "/v1/streams/bulk/sse", None).await);
    for seq in 1..=1200 {
        assert_eq!(
            reader.next_event(Duration::from_secs(5)).await.unwrap().id,
            seq
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sse_streams_get_heartbeats_and_end_after_their_lifetime() {
    let app = spawn_app_with(|s| {
        s.sse_heartbeat = Duration::from_millis(200);
        s.sse_max_lifetime = Duration::from_millis(900);
    })
    .await;
    let started = Instant::now();
    let mut reader = SseReader::new(open(&app, "/v1/streams/idle/sse", None).await);
    assert_eq!(reader.next_event(Duration::from_secs(5)).await, None);
    assert!(reader.ended, "the stream should end after its lifetime");
    assert!(reader.comments >= 3, "heartbeats: {}", reader.comments);
    assert!(started.elapsed() >= Duration::from_millis(900));
    app.wait_for_metric("herald_waiters", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_checks_access_and_cursors() {
    let app = spawn_app().await;
    let key = app.create_key("subscriber", &["payment:"]).await;
    let denied = app
        .request(Method::GET, "/v1/streams/invoice:1/sse", &key)
        .send()
        .await
        .unwrap();
    assert_problem(denied, 403, "forbidden").await;
    let bad = open(&app, "/v1/streams/s/sse", None).await;
    assert_eq!(bad.status(), 200);
    let problem = assert_problem(
        app.request(Method::GET, "/v1/streams/s/sse", ADMIN_KEY)
            .header("Last-Event-ID", "abc")
            .send()
            .await
            .unwrap(),
        422,
        "validation",
    )
    .await;
    assert_eq!(problem["field"], "Last-Event-ID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_sse_streams() {
    let app = spawn_app().await;
    let mut reader = SseReader::new(open(&app, "/v1/streams/s/sse", None).await);
    app.wait_for_metric("herald_waiters", 1).await;
    app.stop.cancel();
    assert_eq!(reader.next_event(Duration::from_secs(5)).await, None);
    assert!(reader.ended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_event_id_older_than_retention_gets_410_with_where_to_resume() {
    let app = spawn_app().await;
    for i in 1..=3 {
        app.publish("s", "t", json!(i)).await;
    }
    // Events 1 and 2 are two days old; retention is one day.
    app.partitions_back(3).await;
    let db = app.db().await;
    let old = {
        let then = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            - Duration::from_secs(2 * 86_400);
        uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            then.as_secs(),
            0,
        ))
    };
    for seq in 1..=2_i64 {
        let id = uuid::Uuid::from_u128(old.as_u128() + seq as u128).to_string();
        db.execute(
            "UPDATE events SET id = $1::text::uuid WHERE stream = 's' AND seq = $2",
            &[&id, &seq],
        )
        .await
        .unwrap();
    }
    let pool = herald::db::build_pool(&app.database_url, 2, Duration::from_secs(5)).unwrap();
    let purged = herald::retention::purge_once(
        &pool,
        Duration::from_secs(86_400),
        &herald::metrics::Metrics::default(),
    )
    .await
    .unwrap();
    assert_eq!(purged, 2);

    let expired = open(&app, "/v1/streams/s/sse", Some(0)).await;
    let problem = assert_problem(expired, 410, "cursor-expired").await;
    assert_eq!(problem["earliest_after"], 2);
    let resumed = open(&app, "/v1/streams/s/sse", Some(2)).await;
    assert_eq!(resumed.status(), 200);
    let mut events = SseReader::new(resumed);
    let first = events.next_event(Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.id, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_frames_payloads_with_line_breaks_so_no_event_is_lost() {
    let app = spawn_app().await;
    let payloads = crate::helpers::MULTILINE_PAYLOADS;
    for payload in payloads {
        app.publish_raw("pretty", payload).await;
    }
    let response = open(&app, "/v1/streams/pretty/sse?after=0", None).await;
    let raw_reader = &mut SseReader::new(response);
    for (i, payload) in payloads.iter().enumerate() {
        let event = raw_reader
            .next_event(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("event {} was lost", i + 1));
        assert_eq!(event.id, i as i64 + 1);
        let expected: Value = serde_json::from_str(payload).unwrap();
        assert_eq!(event.data["payload"], expected, "payload {payload:?}");
    }
}
