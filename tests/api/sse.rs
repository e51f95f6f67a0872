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

/// Moves the events `seqs` of `stream` two days back (their ids, so their day partition)
/// and runs retention with one day: returns how many events it purged.
async fn age_and_purge(app: &TestApp, stream: &str, seqs: &[i64]) -> u64 {
    app.partitions_back(3).await;
    let db = app.db().await;
    let then = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        - Duration::from_secs(2 * 86_400);
    let old = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        then.as_secs(),
        0,
    ));
    for seq in seqs {
        let id = uuid::Uuid::from_u128(old.as_u128() + *seq as u128).to_string();
        db.execute(
            "UPDATE events SET id = $1::text::uuid WHERE stream = $2 AND seq = $3",
            &[&id, &stream, seq],
        )
        .await
        .unwrap();
    }
    let pool = herald::db::build_pool(&app.database_url, 2, Duration::from_secs(5)).unwrap();
    herald::retention::purge_once(
        &pool,
        Duration::from_secs(86_400),
        &herald::metrics::Metrics::default(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_event_id_older_than_retention_gets_410_with_where_to_resume() {
    let app = spawn_app().await;
    for i in 1..=3 {
        app.publish("s", "t", json!(i)).await;
    }
    // Events 1 and 2 are two days old; retention is one day.
    assert_eq!(age_and_purge(&app, "s", &[1, 2]).await, 2);

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

/// A live reader gets every event of a batch larger than one page (800 here) at once:
/// one commit wakes the stream once, and the reader takes page after page until it has
/// them all (it used to stop after the first 500 and wait for another event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_reader_gets_a_whole_batch_larger_than_a_page_at_once() {
    let app = spawn_app().await;
    app.publish("big", "t", json!(0)).await;
    let mut reader = SseReader::new(open(&app, "/v1/streams/big/sse", None).await);
    assert_eq!(
        reader.next_event(Duration::from_secs(5)).await.unwrap().id,
        1
    );
    let events: Vec<Value> = (1..=800)
        .map(|i| json!({"stream": "big", "type": "t", "payload": i}))
        .collect();
    app.publish_batch(&events).await;
    for seq in 2..=801 {
        let event = reader.next_event(Duration::from_secs(5)).await;
        assert_eq!(
            event.map(|e| e.id),
            Some(seq),
            "nothing more after {}",
            seq - 1
        );
    }
}

/// A stream's events can sit in two day partitions out of seq order (an id is made when
/// the request is read, its seq at commit), so retention can drop an event and keep the
/// one before it. A reader is never walked over that hole: the page stops before it and
/// the next read is `410` with where to resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_left_by_retention_inside_a_stream_is_a_410_not_a_skip() {
    let app = spawn_app().await;
    for i in 1..=4 {
        app.publish("s", "t", json!(i)).await;
    }
    // Event 2 alone is two days old (retention is one day); 1, 3 and 4 are today's.
    assert_eq!(age_and_purge(&app, "s", &[2]).await, 1);

    let page: Value = app.get_json("/v1/streams/s/events?after=0").await;
    let seqs: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1], "{page}");
    assert_eq!(page["next_after"], 1);
    let gone = app.get("/v1/streams/s/events?after=1").await;
    let problem = assert_problem(gone, 410, "cursor-expired").await;
    assert_eq!(problem["earliest_after"], 2);
    let resumed: Value = app.get_json("/v1/streams/s/events?after=2").await;
    assert_eq!(resumed["events"][0]["seq"], 3, "{resumed}");
}

/// A cursor beyond the stream's end (a made-up `Last-Event-ID`) must not hold up the
/// stream's other readers: one that caught up with a page of events (not an empty read)
/// still gets what is committed next, while the made-up one waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_beyond_the_end_does_not_hold_up_other_readers() {
    let app = spawn_app().await;
    for i in 1..=5 {
        app.publish("far", "t", json!(i)).await;
    }
    let mut ahead = SseReader::new(open(&app, "/v1/streams/far/sse", Some(1000)).await);
    assert!(ahead.next_event(Duration::from_millis(300)).await.is_none());
    let mut behind = SseReader::new(open(&app, "/v1/streams/far/sse", Some(3)).await);
    for seq in 4..=5 {
        assert_eq!(
            behind.next_event(Duration::from_secs(5)).await.unwrap().id,
            seq
        );
    }
    app.publish("far", "t", json!(6)).await;
    let next = behind.next_event(Duration::from_secs(5)).await;
    assert_eq!(
        next.map(|e| e.id),
        Some(6),
        "the reader at the end got nothing"
    );
    // A long-poll from the end gets it too.
    let page: Value = app.get_json("/v1/streams/far/events?after=5&wait=5").await;
    assert_eq!(page["events"][0]["seq"], 6, "{page}");
}
