//! Faults survived with real processes: PostgreSQL restarted under load.

use std::collections::{BTreeSet, HashSet};
use std::os::unix::fs::PermissionsExt as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::db::embedded::{EmbeddedOptions, EmbeddedPostgres};
use herald::domain::destination::DestinationGuard;
use herald::domain::retry::RetrySchedule;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, spawn_app_on, test_settings};
use crate::receiver::{Receiver, Reply};

async fn private_cluster(dir: &std::path::Path) -> EmbeddedPostgres {
    EmbeddedPostgres::start(
        dir,
        EmbeddedOptions {
            unsafe_fast: true,
            max_connections: Some(200),
        },
    )
    .await
    .expect("start a private PostgreSQL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_restart_under_load_loses_no_acknowledged_event_or_delivery() {
    // Its own cluster: the shared test cluster cannot be restarted under other tests.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pg = private_cluster(dir.path()).await;
    let url = pg.database_url("herald");
    // Herald as a real process, as deployed.
    let port = crate::embedded::free_port();
    let mut herald = crate::embedded::serve_command(&url, port)
        .env("HERALD_ALLOWED_DESTINATIONS", "127.0.0.0/8")
        .env("HERALD_RETRY_SCHEDULE", "200ms,500ms,1s,1s,2s,2s,5s")
        .env("HERALD_DB_TIMEOUT", "2s")
        .env("HERALD_DB_POOL_SIZE", "8")
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    crate::embedded::wait_ready(&base, &mut herald).await;
    let client = reqwest::Client::new();
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(200));
    let created = client
        .post(format!("{base}/v1/endpoints"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"url": receiver.url, "streams": ["load"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let listens_before =
        crate::helpers::metric_at(&client, &base, "herald_listener_connects_total")
            .await
            .unwrap_or(0.0);

    // Publishers: record what was acknowledged, and how often Herald said 503.
    let acked: Arc<Mutex<Vec<(i64, String)>>> = Arc::default();
    let unavailable = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // They publish until told to stop: once ingest has resumed after the restart.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut publishers = Vec::new();
    for p in 0..4 {
        let client = client.clone();
        let url = format!("{base}/v1/events");
        let acked = acked.clone();
        let unavailable = unavailable.clone();
        let stop = stop.clone();
        publishers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let answer = client
                    .post(&url)
                    .bearer_auth(ADMIN_KEY)
                    .json(&json!({"stream": "load", "type": "tick", "payload": {"p": p, "n": n}}))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status() == 201 => {
                        let event: Value = r.json().await.unwrap();
                        acked.lock().unwrap().push((
                            event["seq"].as_i64().unwrap(),
                            event["id"].as_str().unwrap().to_owned(),
                        ));
                    }
                    Ok(r) if r.status() == 503 => {
                        assert!(r.headers().contains_key("retry-after"));
                        unavailable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(r) => panic!(
                        "unexpected answer {}: {}",
                        r.status(),
                        r.text().await.unwrap()
                    ),
                    // Not acknowledged: the client does not know, and does not count it.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // A long-poll reader that keeps going through the outage.
    let seen: Arc<Mutex<Vec<i64>>> = Arc::default();
    let reader = {
        let client = client.clone();
        let base = base.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut after = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                let answer = client
                    .get(format!(
                        "{base}/v1/streams/load/events?after={after}&wait=2"
                    ))
                    .bearer_auth(ADMIN_KEY)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                let Ok(answer) = answer else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if answer.status() != 200 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                let page: Value = answer.json().await.unwrap();
                for event in page["events"].as_array().unwrap() {
                    let seq = event["seq"].as_i64().unwrap();
                    assert_eq!(seq, after + 1, "long-poll answers are gapless and in order");
                    after = seq;
                    seen.lock().unwrap().push(seq);
                }
            }
        })
    };

    // Waits up to 60 s for `done`.
    let until = async |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    until("the load was running", &|| {
        acked.lock().unwrap().len() >= 50
    })
    .await;
    pg.stop().await.unwrap();
    let before_outage = acked.lock().unwrap().len();
    // Down until the publishers have been told so (503 with Retry-After) a few times.
    until("ingest answered 503 while PostgreSQL was down", &|| {
        unavailable.load(std::sync::atomic::Ordering::Relaxed) >= 8
    })
    .await;
    let pg = private_cluster(dir.path()).await;
    until("ingest resumed by itself after the restart", &|| {
        acked.lock().unwrap().len() >= before_outage + 50
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        unavailable.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "ingest answered 503 while PostgreSQL was down"
    );
    assert!(
        acked.len() > before_outage,
        "ingest resumed by itself after the restart"
    );

    // Every acknowledged event is there, read in order by the long-poll...
    let max_seq = acked.iter().map(|(seq, _)| *seq).max().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().last().copied().unwrap_or(0) < max_seq {
        assert!(
            Instant::now() < deadline,
            "the long-poll reader did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen: BTreeSet<i64> = seen.lock().unwrap().iter().copied().collect();
    for (seq, id) in &acked {
        assert!(
            seen.contains(seq),
            "acknowledged event {id} (seq {seq}) was not read"
        );
    }
    reader.abort();
    // The LISTEN connection was re-established by itself.
    assert!(
        crate::helpers::metric_at(&client, &base, "herald_listener_connects_total")
            .await
            .unwrap_or(0.0)
            > listens_before,
        "the LISTEN connection reconnected after the restart"
    );
    // ...and delivered by webhook (at least once; a few may be sent twice if their
    // attempt ended while the database was down).
    let ids: HashSet<String> = acked.iter().map(|(_, id)| id.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let got: HashSet<String> = receiver
            .received()
            .iter()
            .map(|r| r.json()["id"].as_str().unwrap().to_owned())
            .collect();
        let missing = ids.difference(&got).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged events were never delivered",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    crate::embedded::terminate(&mut herald).await;
    pg.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_then_back_gets_its_backlog_at_its_limits_without_a_retry_storm() {
    let mut settings = test_settings();
    settings.destinations = DestinationGuard::parse_allowed("127.0.0.0/8").unwrap();
    settings.retry_schedule = RetrySchedule::parse("1s,1s,1s,1s,1s,1s,1s,1s,1s,1s").unwrap();
    let (db, url) = crate::helpers::create_database().await;
    let app = spawn_app_on(settings, db, url).await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(503).after(Duration::from_millis(50)));
    let created = app
        .post(
            "/v1/endpoints",
            &json!({"url": receiver.url, "rate_limit": 10, "max_in_flight": 2}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let events: Vec<Value> = (0..30)
        .map(|i| json!({"stream": "orders", "type": "order.created", "payload": i}))
        .collect();
    let published = app
        .post("/v1/events/batch", &json!({"events": events}))
        .await;
    assert_eq!(published.status(), 201);

    // Down for 3 s, then back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let back_at = std::time::Instant::now();
    receiver.set_default(Reply::status(200).after(Duration::from_millis(50)));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let succeeded = app
            .get("/v1/deliveries?status=succeeded&limit=500")
            .await
            .json::<Value>()
            .await
            .unwrap()["deliveries"]
            .as_array()
            .unwrap()
            .len();
        if succeeded == 30 {
            break;
        }
        assert!(Instant::now() < deadline, "{succeeded} of 30 delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let received = receiver.received();
    let times: Vec<Instant> = received.iter().map(|r| r.at).collect();
    // The token bucket: in any window of w seconds, at most rate * (1 + w) requests.
    for (i, start) in times.iter().enumerate() {
        for w in [0.5_f64, 1.0, 2.0, 4.0] {
            let end = *start + Duration::from_secs_f64(w);
            let in_window = times[i..].iter().filter(|t| **t <= end).count();
            assert!(
                in_window as f64 <= 10.0 * (1.0 + w) + 1.0,
                "{in_window} requests within {w} s: over the endpoint's rate limit"
            );
        }
    }
    // max_in_flight 2: with every answer taking 50 ms, no three requests start within 50 ms.
    for window in times.windows(3) {
        assert!(
            window[2].duration_since(window[0]) >= Duration::from_millis(45),
            "three requests in flight at once"
        );
    }
    // No retry storm while it was down: each delivery was tried on its schedule (1 s
    // apart), so at most 4 to 5 times in those 3 s, not as fast as the worker could.
    let mut tries: std::collections::HashMap<String, usize> = Default::default();
    for r in received.iter().filter(|r| r.at < back_at) {
        *tries.entry(r.headers["webhook-id"].clone()).or_default() += 1;
    }
    let most = tries.values().copied().max().unwrap_or(0);
    assert!(most <= 5, "a delivery was tried {most} times in 3 s");
    assert!(
        most >= 2,
        "deliveries were retried while the receiver was down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_refuses_connections_then_comes_back_gets_everything() {
    let mut settings = test_settings();
    settings.destinations = DestinationGuard::parse_allowed("127.0.0.0/8").unwrap();
    settings.retry_schedule =
        RetrySchedule::parse("500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms")
            .unwrap();
    let (db, url) = crate::helpers::create_database().await;
    let app = spawn_app_on(settings, db, url).await;
    // Nothing listens on this port yet: every attempt is a refused connection.
    let port = crate::embedded::free_port();
    let created = app
        .post(
            "/v1/endpoints",
            &json!({"url": format!("http://127.0.0.1:{port}/hook")}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let events: Vec<Value> = (0..10)
        .map(|i| json!({"stream": "orders", "type": "order.created", "payload": i}))
        .collect();
    let started = Instant::now();
    app.publish_batch(&events).await;
    // Each delivery is tried on its 500 ms schedule (less up to 20 % jitter), not more
    // often: however long the first 20 retries take on a loaded machine, the count never
    // runs ahead of the schedule.
    let retry = "herald_webhook_outcomes_total{outcome=\"retry\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let retries = app.metric(retry).await;
        let allowed = 10 * (started.elapsed().as_millis() as u64 / 400 + 1);
        assert!(
            retries <= allowed,
            "{retries} retries in {:?} for 10 deliveries",
            started.elapsed()
        );
        if retries >= 20 {
            break;
        }
        assert!(Instant::now() < deadline, "{retries} retries in 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failed: Value = app
        .get("/v1/deliveries?limit=1")
        .await
        .json()
        .await
        .unwrap();
    let detail: Value = app
        .get(&format!(
            "/v1/deliveries/{}",
            failed["deliveries"][0]["id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["attempts"][0]["error_class"], "connect");

    // Back: everything arrives.
    let receiver = Receiver::start_on(port).await;
    receiver.wait_for(10, Duration::from_secs(10)).await;
    app.wait_for_metric("herald_webhook_outcomes_total{outcome=\"succeeded\"}", 10)
        .await;
}
