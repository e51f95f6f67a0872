//! Retention: days of history past retention are dropped as partitions, old idempotency
//! records are purged; readers of purged history get 410.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald::metrics::Metrics;
use reqwest::Method;
use serde_json::{Value, json};

use herald::domain::destination::DestinationGuard;

use crate::helpers::{ADMIN_KEY, assert_problem, spawn_app, spawn_app_with};
use crate::receiver::Receiver;

const DAY: u64 = 86_400;

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

    // Make the first three three days old, and the idempotency record 25 hours old.
    app.partitions_back(4).await;
    let db = app.db().await;
    for seq in 1..=3_i64 {
        db.execute(
            "UPDATE events SET id = $1::text::uuid WHERE stream = 's' AND seq = $2",
            &[&id_from(Duration::from_secs(3 * DAY)), &seq],
        )
        .await
        .unwrap();
    }
    let partitions = |days_ago: i32| {
        let db = &db;
        async move {
            let row = db
                .query_one(
                    "SELECT count(*) FROM pg_class WHERE relname IN \
                       (SELECT t || '_p' || to_char((now() AT TIME ZONE 'UTC')::date - $1::int4, 'YYYYMMDD') \
                          FROM unnest(ARRAY['events', 'deliveries', 'attempts']) AS t)",
                    &[&days_ago],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0)
        }
    };
    assert_eq!(partitions(3).await, 3);
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
    let purged = herald::retention::purge_once(&pool, Duration::from_secs(DAY), &metrics)
        .await
        .unwrap();
    assert_eq!(purged, 3);
    // Their day went as three tables; yesterday is within retention and stays.
    assert_eq!(partitions(3).await, 0);
    assert_eq!(partitions(1).await, 3);

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
        herald::retention::purge_once(&pool, Duration::from_secs(DAY), &metrics)
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
    // Events 1 to 4 on the days 5 to 2 days ago.
    app.partitions_back(6).await;
    let db = app.db().await;
    for seq in 1..=4_i64 {
        db.execute(
            "UPDATE events SET id = $1::text::uuid WHERE stream = 's' AND seq = $2",
            &[&id_from(Duration::from_secs((6 - seq as u64) * DAY)), &seq],
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
    let purged = herald::retention::purge_once(&pool, Duration::from_secs(DAY), &metrics)
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
    let purged = herald::retention::purge_once(&pool, Duration::from_secs(DAY), &metrics)
        .await
        .unwrap();
    assert_eq!(purged, 2);
}

/// An installation from before the day partitions, with history: the migration keeps it
/// all in `*_legacy` partitions (readable as before, today's new events join it), and
/// retention drops them whole once their last day is past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_keeps_history_in_legacy_partitions_that_retention_drops_whole() {
    let app = spawn_app().await;
    for i in 1..=3 {
        app.publish("s", "t", json!(i)).await;
    }
    app.revert_migrations(&["20261203000018", "20261203000017", "20261203000016"])
        .await;
    let db = app.db().await;
    let kind = |table: &'static str| {
        let db = &db;
        async move {
            db.query_one(
                "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)",
                &[&table],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
        }
    };
    assert_eq!(kind("events").await, "r", "back to a plain table");
    // History of that installation: its events, a delivery with a random id (before
    // migration 000014) and an attempt.
    db.batch_execute(
        "INSERT INTO deliveries (id, event_id, endpoint_id, stream, seq, event_type, status, \
                                 created_at, updated_at) \
         SELECT gen_random_uuid(), id, gen_random_uuid(), stream, seq, event_type, 'succeeded', \
                now(), now() FROM events WHERE seq = 1; \
         INSERT INTO attempts (id, delivery_id, started_at, duration_ms, trigger, request_headers, \
                               response_status) \
         SELECT herald_uuid7(), id, now(), 5, 'schedule', '{}', 200 FROM deliveries;",
    )
    .await
    .unwrap();

    app.run_migrations().await;
    assert_eq!(kind("events").await, "p");
    let legacy: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM events_legacy) + (SELECT count(*) FROM deliveries_legacy) \
                    + (SELECT count(*) FROM attempts_legacy)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(legacy, 3 + 1 + 1, "every row is in a legacy partition");
    let until: bool = db
        .query_one(
            "SELECT until = (now() AT TIME ZONE 'UTC')::date + 1 FROM herald_partitions \
              WHERE suffix = 'legacy'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        until,
        "the legacy partitions hold everything before tomorrow"
    );
    // Read as before, and today's events join them.
    let page: Value = app
        .get("/v1/streams/s/events?after=0&wait=0")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 3);
    let fourth = app.publish("s", "t", json!(4)).await;
    assert_eq!(fourth["seq"], 4);
    let home: String = db
        .query_one(
            "SELECT tableoid::regclass::text FROM events WHERE id = $1::text::uuid",
            &[&fourth["id"].as_str().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(home, "events_legacy");

    // Once tomorrow is past retention, the legacy partitions go whole.
    let pool = herald::db::build_pool(&app.database_url, 2, Duration::from_secs(5)).unwrap();
    let in_two_days = herald::retention::cutoff_id(
        SystemTime::now() + Duration::from_secs(2 * DAY),
        Duration::ZERO,
    );
    let dropped = herald::partitions::drop_before(&pool, in_two_days)
        .await
        .unwrap();
    assert_eq!(dropped, 4);
    let gone: bool = db
        .query_one(
            "SELECT to_regclass('events_legacy') IS NULL AND to_regclass('deliveries_legacy') IS NULL \
                AND to_regclass('attempts_legacy') IS NULL \
                AND NOT EXISTS (SELECT 1 FROM herald_partitions WHERE suffix = 'legacy')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(gone);
    // Today's and tomorrow's partitions went too; they are made again, and publishing goes on.
    assert!(herald::partitions::ensure(&pool).await.unwrap() >= 2);
    assert_eq!(app.publish("s", "t", json!(5)).await["seq"], 5);
}

/// Today's partitions and the next two days' exist once an instance serves; an event, its
/// delivery and the attempt land in today's; making them again is a no-op, also from two
/// instances at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_partitions_exist_ahead_and_each_row_lands_in_its_day() {
    let app = spawn_app_with(|s| {
        s.destinations = DestinationGuard::parse_allowed("127.0.0.0/8,::1/128").unwrap();
    })
    .await;
    let db = app.db().await;
    let days: Vec<String> = db
        .query("SELECT suffix FROM herald_partitions ORDER BY since", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<String> = db
        .query(
            "SELECT 'p' || to_char((now() AT TIME ZONE 'UTC')::date + d, 'YYYYMMDD') \
               FROM generate_series(0, 2) AS d",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(days, expected);

    let receiver = Receiver::start().await;
    let response = app
        .post("/v1/endpoints", &json!({"url": receiver.url}))
        .await;
    assert_eq!(response.status(), 201);
    let event = app.publish("s", "t", json!(1)).await;
    receiver.wait_for(1, Duration::from_secs(5)).await;
    let today = &expected[0];
    for (table, column) in [
        ("events", "id"),
        ("deliveries", "event_id"),
        (
            "attempts",
            "(SELECT event_id FROM deliveries d WHERE d.id = delivery_id)",
        ),
    ] {
        let home: Vec<String> = loop {
            let rows = db
                .query(
                    &format!(
                        "SELECT tableoid::regclass::text FROM {table} \
                          WHERE {column} = $1::text::uuid"
                    ),
                    &[&event["id"].as_str().unwrap()],
                )
                .await
                .unwrap();
            if !rows.is_empty() {
                break rows.iter().map(|r| r.get(0)).collect();
            }
            // The attempt is recorded just after the receiver answers.
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(home, vec![format!("{table}_{today}")]);
    }

    let pool = herald::db::build_pool(&app.database_url, 4, Duration::from_secs(5)).unwrap();
    let (a, b) = tokio::join!(
        herald::partitions::ensure(&pool),
        herald::partitions::ensure(&pool)
    );
    assert_eq!((a.unwrap(), b.unwrap()), (0, 0));
}

/// A publish whose day has no partition (the hourly check fell behind) makes it and is
/// stored, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_day_has_no_partition_makes_it_and_is_stored() {
    let app = spawn_app().await;
    assert_eq!(app.publish("s", "t", json!(1)).await["seq"], 1);
    // Drop today's partitions (and tomorrow's): everything before tomorrow is past.
    let pool = herald::db::build_pool(&app.database_url, 2, Duration::from_secs(5)).unwrap();
    let tomorrow =
        herald::retention::cutoff_id(SystemTime::now() + Duration::from_secs(DAY), Duration::ZERO);
    assert_eq!(
        herald::partitions::drop_before(&pool, tomorrow)
            .await
            .unwrap(),
        1
    );
    let db = app.db().await;
    let today_exists = || async {
        db.query_one(
            "SELECT to_regclass('events_p' || to_char((now() AT TIME ZONE 'UTC')::date, 'YYYYMMDD')) \
                    IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get::<_, bool>(0)
    };
    assert!(!today_exists().await);

    let event = app.publish("s", "t", json!(2)).await;
    assert_eq!(event["seq"], 2);
    assert!(today_exists().await);
    let page: Value = app
        .get("/v1/streams/s/events?after=1&wait=0")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"][0], event);
}
