//! Plan shapes of hot statements that run with a cached generic plan: they must stay index
//! lookups whatever the statistics said when the plan was made (a day partition analyzed
//! while it was small grows a hundredfold before the next analyze, and tomorrow's is empty
//! when the plan is made).

use serde_json::json;

use crate::helpers::{TestApp, spawn_app};

/// An app with 40 deliveries in today's partition, analyzed: statistics of a small table.
async fn small_and_analyzed() -> (TestApp, tokio_postgres::Client) {
    let app = spawn_app().await;
    let endpoint = app
        .post("/v1/endpoints", &json!({"url": "https://example.com/hook"}))
        .await;
    assert_eq!(endpoint.status(), 201);
    for i in 0..40 {
        app.publish(&format!("s{}", i % 4), "t", json!(i)).await;
    }
    let db = app.db().await;
    let deliveries: i64 = db
        .query_one("SELECT count(*) FROM deliveries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(deliveries, 40);
    db.batch_execute("ANALYZE deliveries, attempts, events")
        .await
        .unwrap();
    (app, db)
}

/// The generic plan of `sql` on a connection set up with `session`, executed with `args`.
async fn generic_plan(db: &tokio_postgres::Client, session: &str, sql: &str, args: &str) -> String {
    db.batch_execute(session).await.unwrap();
    db.batch_execute("SET plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    db.batch_execute(&format!("PREPARE hot AS {sql}"))
        .await
        .unwrap();
    let plan: Vec<String> = db
        .query(&format!("EXPLAIN EXECUTE hot({args})"), &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    plan.join("\n")
}

/// No sequential scan of `tables`' partitions, and every index scan of them bounded by an
/// index condition (never a walk of a whole index; a bitmap heap scan is bounded by its
/// bitmap index scan, checked as such). Returns how many scans were checked.
fn assert_bounded(plan: &str, tables: &[&str]) -> usize {
    let lines: Vec<&str> = plan.lines().collect();
    let mut scans = 0;
    for (i, line) in lines.iter().enumerate() {
        for table in tables {
            let on = format!(" on {table}_");
            if !line.contains(&on) {
                continue;
            }
            assert!(!line.contains("Seq Scan"), "{line}:\n{plan}");
            if line.contains("Scan") && !line.contains("Bitmap Heap Scan") {
                assert!(
                    lines
                        .get(i + 1)
                        .is_some_and(|next| next.contains("Index Cond:")),
                    "an unbounded scan, {line}:\n{plan}"
                );
                scans += 1;
            }
        }
    }
    scans
}

/// No join that reads an input whole to match it (merge, hash), and no inner side read
/// once and kept (materialized): each would read a partition whole as it grows.
fn assert_no_whole_reads(plan: &str) {
    for unwanted in ["Merge Join", "Hash Join", "Materialize"] {
        assert!(!plan.contains(unwanted), "{unwanted}:\n{plan}");
    }
}

/// The recorder's batch statement, planned on a connection set up as the recorder's, with
/// statistics from a small table: a nested loop probing each row's partition by index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorders_statement_probes_by_index_even_with_small_table_statistics() {
    let (_app, db) = small_and_analyzed().await;
    let plan = generic_plan(
        &db,
        herald::db::models::delivery::RECORD_SESSION,
        herald::db::models::delivery::RECORD_MANY,
        &vec!["NULL"; 19].join(", "),
    )
    .await;
    assert_no_whole_reads(&plan);
    assert!(assert_bounded(&plan, &["deliveries"]) >= 3, "{plan}");
}

/// The claim, planned on a connection set up as the worker's claim connection, with
/// statistics from a small table: index scans bounded by what they look for, in every
/// partition (tomorrow's empty one included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_reads_by_index_even_with_small_table_statistics() {
    let (_app, db) = small_and_analyzed().await;
    let plan = generic_plan(
        &db,
        herald::db::models::delivery::CLAIM_SESSION,
        herald::db::models::delivery::CLAIM,
        "10, 30, NULL, '{}', '{}'",
    )
    .await;
    assert!(
        assert_bounded(&plan, &["deliveries", "events"]) >= 12,
        "{plan}"
    );
}
