//! `herald bench fill` writes history Herald can serve and build on: counters that new
//! events continue, deliveries the overview and filters count exactly.

use serde_json::{Value, json};

use crate::helpers::{create_database, spawn_app_on, test_settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filled_database_is_consistent_and_new_events_continue_its_streams() {
    let (db_name, database_url) = create_database().await;
    let filled = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "bench",
            "fill",
            "--events",
            "3000",
            "--streams",
            "10",
            "--endpoints",
            "5",
        ])
        .args([
            "--chunk",
            "1000",
            "--span",
            "12h",
            "--database-url",
            &database_url,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        filled.status.success(),
        "{}",
        String::from_utf8_lossy(&filled.stderr)
    );
    let app = spawn_app_on(test_settings(), db_name, database_url).await;

    // 3,000 events, 15% with a second delivery; about one event in 200 failed.
    let overview: Value = app.get("/v1/overview").await.json().await.unwrap();
    let day = &overview["deliveries"]["last_day"];
    let failed_count = day["failed"].as_u64().unwrap();
    assert_eq!(day["succeeded"].as_u64().unwrap() + failed_count, 3450);
    assert!((5..=30).contains(&failed_count), "{failed_count} failed");
    assert_eq!(overview["endpoints"].as_array().unwrap().len(), 5);
    let failed: Value = app
        .get("/v1/deliveries?status=failed&limit=500")
        .await
        .json()
        .await
        .unwrap();
    let failed = failed["deliveries"].as_array().unwrap();
    assert_eq!(failed.len() as u64, failed_count);
    assert!(failed.iter().all(|d| d["last_status_code"] == 503));
    let endpoints: std::collections::HashSet<_> =
        failed.iter().map(|d| d["endpoint_id"].clone()).collect();
    assert!(endpoints.len() > 1, "failures spread over endpoints");

    // Each stream holds 300 events, seq 1..300; a new one is 301.
    let page: Value = app
        .get("/v1/streams/fill-7/events?after=299")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"][0]["seq"], 300);
    let event = app.publish("fill-7", "fill.1", json!({"new": true})).await;
    assert_eq!(event["seq"], 301);
}
