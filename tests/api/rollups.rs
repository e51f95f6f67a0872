//! The delivery counters behind the overview and endpoint health (`delivery_counts`,
//! migration 000012): they must say exactly what counting `deliveries` says, through
//! every way a delivery changes, before and after they are folded.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use herald::domain::destination::DestinationGuard;
use herald::domain::retry::RetrySchedule;
use herald::metrics::Metrics;
use serde_json::{Value, json};

use crate::helpers::{TestApp, create_endpoint, spawn_app_with};
use crate::receiver::{Receiver, Reply};

/// Day counts by status, by endpoint the day's succeeded and failed and its backlog, and
/// the whole backlog (pending, delivering).
#[derive(Debug, PartialEq, Eq, Default)]
struct Counts {
    by_status: BTreeMap<String, i64>,
    by_endpoint: BTreeMap<String, (i64, i64, i64)>,
    backlog: (i64, i64),
}

/// What the overview says.
async fn overview_counts(app: &TestApp) -> Counts {
    let overview: Value = app.get("/v1/overview").await.json().await.unwrap();
    let mut counts = Counts::default();
    for (status, n) in overview["deliveries"]["last_day"].as_object().unwrap() {
        if n.as_i64().unwrap() != 0 {
            counts.by_status.insert(status.clone(), n.as_i64().unwrap());
        }
    }
    for endpoint in overview["endpoints"].as_array().unwrap() {
        counts.by_endpoint.insert(
            endpoint["id"].as_str().unwrap().to_owned(),
            (
                endpoint["succeeded_24h"].as_i64().unwrap(),
                endpoint["failed_24h"].as_i64().unwrap(),
                endpoint["backlog"].as_i64().unwrap(),
            ),
        );
    }
    counts.backlog = (
        overview["backlog"]["pending"].as_i64().unwrap(),
        overview["backlog"]["delivering"].as_i64().unwrap(),
    );
    counts
}

/// What counting the deliveries table says, over the overview's day window.
async fn table_counts(app: &TestApp) -> Counts {
    let db = app.db().await;
    let window = "created_at >= date_trunc('hour', now() - interval '1 day')";
    let mut counts = Counts::default();
    for row in db
        .query(
            &format!("SELECT status, count(*) FROM deliveries WHERE {window} GROUP BY status"),
            &[],
        )
        .await
        .unwrap()
    {
        counts.by_status.insert(row.get(0), row.get(1));
    }
    for row in db
        .query(
            &format!(
                "SELECT e.id::text, \
                        count(d.id) FILTER (WHERE d.status = 'succeeded' AND d.{window}), \
                        count(d.id) FILTER (WHERE d.status = 'failed' AND d.{window}), \
                        count(d.id) FILTER (WHERE d.status IN ('pending', 'delivering')) \
                   FROM endpoints e LEFT JOIN deliveries d ON d.endpoint_id = e.id GROUP BY e.id"
            ),
            &[],
        )
        .await
        .unwrap()
    {
        counts
            .by_endpoint
            .insert(row.get(0), (row.get(1), row.get(2), row.get(3)));
    }
    let backlog = db
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'pending'), \
                    count(*) FILTER (WHERE status = 'delivering') FROM deliveries",
            &[],
        )
        .await
        .unwrap();
    counts.backlog = (backlog.get(0), backlog.get(1));
    counts
}

/// The overview agrees with the table (read before and after it, so that a delivery
/// changing meanwhile only makes it look again) once the table shows `settled` (the
/// step's deliveries recorded), within 10 s.
async fn assert_exact(app: &TestApp, step: &str, settled: impl Fn(&Counts) -> bool) -> Counts {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = table_counts(app).await;
        let shown = overview_counts(app).await;
        let after = table_counts(app).await;
        if before == after && shown == after && settled(&after) {
            return shown;
        }
        assert!(
            Instant::now() < deadline,
            "{step}: the overview says {shown:?}, the table {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn fold(app: &TestApp) -> usize {
    let pool = herald::db::build_pool(&app.database_url, 1, Duration::from_secs(5)).unwrap();
    herald::rollup::fold_once(&pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stay_exact_through_retries_replays_recover_deletion_folding_and_retention() {
    let app = spawn_app_with(|s| {
        s.destinations = DestinationGuard::parse_allowed("127.0.0.0/8,::1/128").unwrap();
        s.retry_schedule = RetrySchedule::parse("100ms,100ms").unwrap();
        s.delivery_timeout = Duration::from_secs(2);
    })
    .await;
    let good = Receiver::start().await;
    let bad = Receiver::start().await;
    bad.set_default(Reply::status(500));
    let doomed = Receiver::start().await;
    doomed.set_default(Reply::status(503));
    let good_endpoint = create_endpoint(&app, json!({"url": good.url, "streams": ["a"]})).await;
    let bad_endpoint = create_endpoint(&app, json!({"url": bad.url, "streams": ["b"]})).await;
    let doomed_endpoint = create_endpoint(&app, json!({"url": doomed.url, "streams": ["c"]})).await;

    // Deliveries that succeed, and ones that fail three times (retries) and end failed.
    for i in 0..5 {
        app.publish("a", "t", json!(i)).await;
    }
    for i in 0..3 {
        app.publish("b", "t", json!(i)).await;
    }
    good.wait_for(5, Duration::from_secs(5)).await;
    bad.wait_for(9, Duration::from_secs(10)).await;
    assert_exact(&app, "after retries", |c| {
        c.by_status.get("succeeded") == Some(&5) && c.by_status.get("failed") == Some(&3)
    })
    .await;

    // A replay of one failed delivery that now succeeds.
    bad.set_default(Reply::status(200));
    let failed: Value = app
        .get(&format!(
            "/v1/deliveries?status=failed&endpoint_id={}",
            bad_endpoint["id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    let one = failed["deliveries"][0]["id"].as_str().unwrap();
    let replay = app
        .post(&format!("/v1/deliveries/{one}/replay"), &json!({}))
        .await;
    assert_eq!(replay.status(), 202);
    bad.wait_for(10, Duration::from_secs(5)).await;
    assert_exact(&app, "after a replay", |c| {
        c.by_status.get("succeeded") == Some(&6) && c.by_status.get("failed") == Some(&2)
    })
    .await;

    // Recover: the endpoint's failed deliveries of the last five minutes are sent again.
    let since = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let recovered = app
        .post(
            &format!(
                "/v1/endpoints/{}/recover",
                bad_endpoint["id"].as_str().unwrap()
            ),
            &json!({"since": since}),
        )
        .await;
    assert_eq!(
        recovered.status(),
        202,
        "{}",
        recovered.text().await.unwrap()
    );
    bad.wait_for(12, Duration::from_secs(5)).await;
    // The two that had failed now succeeded.
    assert_exact(&app, "after recover", |c| {
        c.by_status.get("succeeded") == Some(&8) && !c.by_status.contains_key("failed")
    })
    .await;

    // An endpoint deleted with deliveries still being retried: they fail.
    doomed.set_default(Reply::status(503));
    for i in 0..2 {
        app.publish("c", "t", json!(i)).await;
    }
    doomed.wait_for(1, Duration::from_secs(5)).await;
    let deleted = app
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/endpoints/{}", doomed_endpoint["id"].as_str().unwrap()),
            crate::helpers::ADMIN_KEY,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_exact(&app, "after deleting an endpoint", |c| {
        c.by_status.get("failed") == Some(&2)
            && !c.by_status.contains_key("pending")
            && !c.by_status.contains_key("delivering")
    })
    .await;

    // Folding: the writers' shards of closed minutes become one row, minutes more than an
    // hour old become hours; the counts do not move. Move some deliveries two hours back
    // (their counts move with them) and the rest into a closed minute.
    let db = app.db().await;
    db.batch_execute(&format!(
        "UPDATE deliveries SET created_at = created_at - interval '2 hours' \
          WHERE endpoint_id = '{}'; \
         UPDATE deliveries SET created_at = created_at - interval '3 minutes' \
          WHERE endpoint_id <> '{}';",
        good_endpoint["id"].as_str().unwrap(),
        good_endpoint["id"].as_str().unwrap(),
    ))
    .await
    .unwrap();
    let before_fold = assert_exact(&app, "after moving deliveries back", |_| true).await;
    assert!(fold(&app).await > 0);
    let after_fold = assert_exact(&app, "after folding", |_| true).await;
    assert_eq!(before_fold, after_fold);
    let shards: i64 = db
        .query_one(
            "SELECT count(*) FROM delivery_counts WHERE shard >= 0 \
              AND bucket < date_trunc('minute', now()) - interval '1 minute'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(shards, 0, "closed minutes are folded");
    let hours: i64 = db
        .query_one("SELECT count(*) FROM delivery_counts WHERE span = 60", &[])
        .await
        .unwrap()
        .get(0);
    assert!(hours > 0, "minutes more than an hour old become hours");

    // Retention drops the events' day and, with it, their deliveries: the counts go too
    // (the deliveries are still in the counters' window, so they are deleted first).
    app.age_history(2).await;
    assert_exact(&app, "after moving events two days back", |_| true).await;
    let pool = herald::db::build_pool(&app.database_url, 2, Duration::from_secs(5)).unwrap();
    let purged = herald::retention::purge_once(&pool, Duration::ZERO, &Metrics::default())
        .await
        .unwrap();
    assert!(purged > 0);
    let left: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM deliveries)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    assert_exact(&app, "after retention", |c| c.by_status.is_empty()).await;
    fold(&app).await;
    assert_exact(&app, "after folding again", |c| c.by_status.is_empty()).await;
}

/// An installation from before the counters, with deliveries in it: the migration fills
/// the counters from them, so the overview is exact from its first call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_counts_the_deliveries_already_there() {
    let app = spawn_app_with(|s| {
        s.destinations = DestinationGuard::parse_allowed("127.0.0.0/8,::1/128").unwrap();
    })
    .await;
    let good = Receiver::start().await;
    create_endpoint(&app, json!({"url": good.url})).await;
    for i in 0..6 {
        app.publish("s", "t", json!(i)).await;
    }
    good.wait_for(6, Duration::from_secs(5)).await;
    assert_exact(&app, "before", |c| c.by_status.get("succeeded") == Some(&6)).await;

    // Back to the schema before the counters (000012), and so before the error index
    // (000013), time-ordered delivery ids (000014), WebSocket tickets (000015), day
    // partitions (000016), endpoints' last errors (000017) and searching replays (000018).
    app.revert_migrations(&[
        "20261203000018",
        "20261203000017",
        "20261203000016",
        "20261203000015",
        "20261202000014",
        "20261202000013",
        "20261202000012",
    ])
    .await;
    let db = app.db().await;
    let exists: bool = db
        .query_one("SELECT to_regclass('delivery_counts') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!exists);
    // History of that installation: two deliveries three hours old, one 30 hours old
    // (outside the day), one failed.
    db.batch_execute(
        "WITH d AS (SELECT id, row_number() OVER (ORDER BY id) AS k FROM deliveries) \
         UPDATE deliveries x SET \
           created_at = CASE WHEN d.k <= 2 THEN x.created_at - interval '3 hours' \
                             WHEN d.k = 3 THEN x.created_at - interval '30 hours' \
                             ELSE x.created_at END, \
           status = CASE WHEN d.k = 4 THEN 'failed' ELSE x.status END \
           FROM d WHERE d.id = x.id",
    )
    .await
    .unwrap();

    app.run_migrations().await;
    let counts = assert_exact(&app, "after the migration", |_| true).await;
    assert_eq!(counts.by_status.get("succeeded"), Some(&4));
    assert_eq!(counts.by_status.get("failed"), Some(&1));
    let hours: i64 = db
        .query_one(
            "SELECT coalesce(sum(n), 0)::int8 FROM delivery_counts WHERE span = 60",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(hours, 3, "older history is counted by the hour");
}
