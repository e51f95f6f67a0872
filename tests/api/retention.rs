//! Retention: old events and idempotency records are purged; readers of purged history get 410.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald::metrics::Metrics;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, assert_problem, spawn_app};

/// A UUIDv7 from `age` ago, as retention sees it.
fn id_from(age: Duration) -> String {
    let then = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() - age;
    uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        then.as_secs(),
        0,
    ))
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_past_retention_are_purged_and_readers_get_410() {
    let app = spawn_app().await;
    for i in 1..=3 {
        app.publish("s", "t", json!(i)).await;
    }
    let keep = app.publish("s", "t", json!(4)).await;
    let keyed = app
        .request(Method::POST, "/v1/events", ADMIN_KEY)
        .header("Idempotency-Key", "old-key")
        .json(&json!({"stream": "other", "type": "t", "payload": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), 201);

    // Make the first three two hours old, and the idempotency record 25 hours old.
    let db = app.db().await;
    for seq in 1..=3_i64 {
        db.execute(
            "UPDATE events SET id = $1::text::uuid WHERE stream = 's' AND seq = $2",
            &[&id_from(Duration::from_secs(7200)), &seq],
        )
        .await
        .unwrap();
    }
    for table in ["idempotency_keys", "idempotency_records"] {
        db.execute(
            &format!("UPDATE {table} SET created_at = now() - interval '25 hours'"),
            &[],
        )
        .await
        .unwrap();
    }

    let pool = herald::db::build_pool(&app.database_url, 2, Duration::from_secs(5)).unwrap();
    let metrics = Metrics::default();
    let purged = herald::retention::purge_once(&pool, Duration::from_secs(3600), &metrics)
        .await
        .unwrap();
    assert_eq!(purged, 3);

    let problem = assert_problem(
        app.get("/v1/streams/s/events?after=0&wait=0").await,
        410,
        "cursor-expired",
    )
    .await;
    assert_eq!(problem["earliest_after"], 3);
    let page: Value = app
        .get("/v1/streams/s/events?after=3&wait=0")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"][0], keep);
    let info: Value = app.get("/v1/streams/s").await.json().await.unwrap();
    assert_eq!(
        info,
        json!({"stream": "s", "last_seq": 4, "earliest_seq": 4})
    );
    // The counter survives the purge: the next event is seq 5.
    assert_eq!(app.publish("s", "t", json!(5)).await["seq"], 5);

    let keys: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM idempotency_keys) + (SELECT count(*) FROM idempotency_records)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(keys, 0);
    // Nothing left to purge.
    assert_eq!(
        herald::retention::purge_once(&pool, Duration::from_secs(3600), &metrics)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_with_a_pending_delivery_is_kept_and_so_is_everything_newer() {
    let app = spawn_app().await;
    for i in 1..=4 {
        app.publish("s", "t", json!(i)).await;
    }
    let db = app.db().await;
    for seq in 1..=4_i64 {
        db.execute(
            "UPDATE events SET id = $1::text::uuid WHERE stream = 's' AND seq = $2",
            &[&id_from(Duration::from_secs(7200 - 60 * seq as u64)), &seq],
        )
        .await
        .unwrap();
    }
    // Event 3 still has a delivery waiting for a retry; event 1 has a finished one.
    for (seq, status) in [(1_i64, "succeeded"), (3, "pending")] {
        db.execute(
            "INSERT INTO deliveries (id, event_id, endpoint_id, stream, seq, event_type, status, \
                                     next_attempt_at, created_at, updated_at) \
             SELECT gen_random_uuid(), id, gen_random_uuid(), stream, seq, event_type, $2, \
                    now() + interval '1 hour', now(), now() \
               FROM events WHERE stream = 's' AND seq = $1",
            &[&seq, &status],
        )
        .await
        .unwrap();
    }
    let pool = herald::db::build_pool(&app.database_url, 2, Duration::from_secs(5)).unwrap();
    let metrics = Metrics::default();
    let purged = herald::retention::purge_once(&pool, Duration::from_secs(3600), &metrics)
        .await
        .unwrap();
    assert_eq!(
        purged, 2,
        "events 1 and 2 go (with event 1's finished delivery)"
    );
    let left: Vec<i64> = db
        .query(
            "SELECT seq FROM events WHERE stream = 's' ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, vec![3, 4]);
    let deliveries: i64 = db
        .query_one("SELECT count(*) FROM deliveries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(deliveries, 1, "the finished delivery went with its event");

    // Once it is done, retention resumes.
    db.execute("UPDATE deliveries SET status = 'failed'", &[])
        .await
        .unwrap();
    let purged = herald::retention::purge_once(&pool, Duration::from_secs(3600), &metrics)
        .await
        .unwrap();
    assert_eq!(purged, 2);
}
