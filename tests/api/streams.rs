//! Reading streams: `GET /v1/streams/{stream}/events` and `GET /v1/streams/{stream}`.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, assert_problem, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_returns_the_events_after_the_cursor() {
    let app = spawn_app().await;
    for i in 1..=5 {
        app.publish("orders", "order.created", json!(i)).await;
    }
    let page: Value = app
        .get("/v1/streams/orders/events?after=2&limit=2")
        .await
        .json()
        .await
        .unwrap();
    let seqs: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 4]);
    assert_eq!(page["next_after"], 4);
    assert_eq!(page["events"][0]["payload"], 3);

    let rest: Value = app
        .get("/v1/streams/orders/events?after=4")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["events"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next_after"], 5);

    let caught_up: Value = app
        .get("/v1/streams/orders/events?after=5&wait=0")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(caught_up, json!({"events": [], "next_after": 5}));

    let from_start: Value = app
        .get("/v1/streams/orders/events")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(from_start["events"].as_array().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_stream_is_empty() {
    let app = spawn_app().await;
    let page: Value = app
        .get("/v1/streams/nothing-here/events?wait=0")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page, json!({"events": [], "next_after": 0}));
    let info: Value = app
        .get("/v1/streams/nothing-here")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        info,
        json!({"stream": "nothing-here", "last_seq": 0, "earliest_seq": null})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cursors_and_limits_are_422_naming_the_parameter() {
    let app = spawn_app().await;
    for (query, field) in [
        ("after=-1", "after"),
        ("after=abc", "after"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
    ] {
        let response = app.get(&format!("/v1/streams/s/events?{query}")).await;
        let problem = assert_problem(response, 422, "validation").await;
        assert_eq!(problem["field"], field, "for {query}");
    }
    let bad_name = app.get("/v1/streams/bad%20name/events").await;
    let problem = assert_problem(bad_name, 422, "validation").await;
    assert_eq!(problem["field"], "stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_names_with_slashes_work_raw_and_encoded() {
    let app = spawn_app().await;
    app.publish("tenant/42/orders", "t", json!(1)).await;
    for path in [
        "/v1/streams/tenant/42/orders",
        "/v1/streams/tenant%2F42%2Forders",
    ] {
        let info: Value = app.get(path).await.json().await.unwrap();
        assert_eq!(
            info,
            json!({"stream": "tenant/42/orders", "last_seq": 1, "earliest_seq": 1}),
            "{path}"
        );
        let page: Value = app
            .get(&format!("{path}/events"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(page["events"][0]["stream"], "tenant/42/orders", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_before_the_oldest_retained_event_is_410() {
    let app = spawn_app().await;
    for i in 1..=4 {
        app.publish("s", "t", json!(i)).await;
    }
    // What retention does: the oldest events go.
    app.db()
        .await
        .execute("DELETE FROM events WHERE stream = 's' AND seq <= 2", &[])
        .await
        .unwrap();
    let problem = assert_problem(
        app.get("/v1/streams/s/events?after=0").await,
        410,
        "cursor-expired",
    )
    .await;
    assert_eq!(problem["earliest_after"], 2);
    assert!(problem["detail"].as_str().unwrap().contains("after=2"));
    let page: Value = app
        .get("/v1/streams/s/events?after=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"][0]["seq"], 3);
    let info: Value = app.get("/v1/streams/s").await.json().await.unwrap();
    assert_eq!(info["earliest_seq"], 3);

    // Everything purged: the cursor to resume from is the end.
    app.db()
        .await
        .execute("DELETE FROM events", &[])
        .await
        .unwrap();
    let problem = assert_problem(
        app.get("/v1/streams/s/events?after=1").await,
        410,
        "cursor-expired",
    )
    .await;
    assert_eq!(problem["earliest_after"], 4);
}

/// 8 writers put 500 events each on one stream while two readers page through it: one
/// that reads the database (`wait=0`) and one whose polls are held and answered by the
/// stream hub (from events handed over at commit, or read when commits of different
/// committers arrive out of order). Seq order is commit order, so each reader sees
/// 1..=4000 exactly once, in order, never skipping a seq that commits later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_sees_every_seq_once_in_order_under_concurrent_writes() {
    const WRITERS: i64 = 8;
    const PER_WRITER: i64 = 500;
    let app = spawn_app().await;
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let client = app.client.clone();
        let url = format!("{}/v1/events", app.address);
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let response = client
                    .post(&url)
                    .bearer_auth(ADMIN_KEY)
                    .json(&json!({"stream": "race", "type": "t", "payload": [writer, i]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
            }
        }));
    }
    let read_all = |wait: &'static str| {
        let client = app.client.clone();
        let base = format!("{}/v1/streams/race/events", app.address);
        async move {
            let mut after = 0_i64;
            let mut seen = Vec::new();
            let mut payloads = HashSet::new();
            while after < WRITERS * PER_WRITER {
                let page: Value = client
                    .get(format!("{base}?after={after}&limit=37{wait}"))
                    .bearer_auth(ADMIN_KEY)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let Some(events) = page["events"].as_array() else {
                    panic!("after {after}: {page}");
                };
                for event in events {
                    let seq = event["seq"].as_i64().unwrap();
                    assert_eq!(seq, after + 1, "the reader{wait} skipped or repeated a seq");
                    after = seq;
                    seen.push(seq);
                    assert!(payloads.insert(event["payload"].to_string()));
                }
                assert_eq!(page["next_after"], after);
            }
            seen
        }
    };
    let (direct, held) = tokio::join!(read_all("&wait=0"), read_all("&wait=5"));
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(direct, (1..=WRITERS * PER_WRITER).collect::<Vec<_>>());
    assert_eq!(held, direct);
    assert!(
        app.metric("herald_hub_pushes_total").await > 0,
        "the held reader was served from commits handed to the hub"
    );
}
