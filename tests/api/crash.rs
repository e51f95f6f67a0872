//! At-least-once delivery across a `kill -9`, and no concurrent duplicates across instances.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::Child;

use crate::embedded::{free_port, serve_command, wait_ready};
use crate::helpers::{ADMIN_KEY, spawn_app_with};
use crate::receiver::{Receiver, Reply};

const EVENTS: usize = 5000;
const REPLY_DELAY: Duration = Duration::from_millis(50);

/// No webhook-id was being sent twice at the same time: every receiver answer takes
/// `REPLY_DELAY`, so two starts of one id closer than that overlapped.
fn assert_never_sent_twice_at_once(requests: &[crate::receiver::Received]) {
    let mut starts: HashMap<&str, Vec<Instant>> = HashMap::new();
    for r in requests {
        starts
            .entry(r.headers["webhook-id"].as_str())
            .or_default()
            .push(r.at);
    }
    for (id, mut at) in starts {
        at.sort_unstable();
        for pair in at.windows(2) {
            assert!(
                pair[1] - pair[0] >= REPLY_DELAY,
                "{id} was sent twice concurrently"
            );
        }
    }
}

fn start_herald(database_url: &str, port: u16) -> Child {
    serve_command(database_url, port)
        .env("HERALD_ALLOWED_DESTINATIONS", "127.0.0.0/8")
        .env("HERALD_DELIVERY_TIMEOUT", "1s")
        .env("HERALD_RETRY_SCHEDULE", "200ms,200ms,200ms,200ms,200ms")
        .env("HERALD_DB_POOL_SIZE", "8")
        .spawn()
        .unwrap()
}

/// An instance that sends no webhooks (set-up and watching only), allowing loopback
/// endpoints.
async fn api_only_app() -> crate::helpers::TestApp {
    spawn_app_with(|s| {
        s.delivery_concurrency = 0;
        s.destinations =
            herald::domain::destination::DestinationGuard::parse_allowed("127.0.0.0/8").unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_9_loses_no_delivery_and_two_instances_never_send_one_at_once() {
    // An API-only instance (it sends nothing) to set up and to watch.
    let app = api_only_app().await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(200).after(REPLY_DELAY));
    let created = app
        .post(
            "/v1/endpoints",
            &json!({"url": receiver.url, "max_in_flight": 200}),
        )
        .await;
    assert_eq!(created.status(), 201);
    for chunk in 0..EVENTS / 1000 {
        let events: Vec<Value> = (0..1000)
            .map(|i| json!({"stream": format!("s{}", i % 50), "type": "t", "payload": chunk * 1000 + i}))
            .collect();
        app.publish_batch(&events).await;
    }

    // The first worker instance gets going, then dies without warning mid-flight.
    let port = free_port();
    let mut first = start_herald(&app.database_url, port);
    wait_ready(&format!("http://127.0.0.1:{port}"), &mut first).await;
    receiver.wait_for(500, Duration::from_secs(30)).await;
    first.kill().await.unwrap();
    let at_kill = receiver.received().len();
    assert!(
        at_kill < EVENTS,
        "everything was delivered before the kill; the test proves nothing"
    );

    // Two instances take over on the same database.
    let (port_b, port_c) = (free_port(), free_port());
    let mut b = start_herald(&app.database_url, port_b);
    let mut c = start_herald(&app.database_url, port_c);
    wait_ready(&format!("http://127.0.0.1:{port_b}"), &mut b).await;
    wait_ready(&format!("http://127.0.0.1:{port_c}"), &mut c).await;

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = receiver.received();
        let mut ids: Vec<&str> = got
            .iter()
            .map(|r| r.headers["webhook-id"].as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() == EVENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {EVENTS} events delivered",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Attempts cut off by the kill (received, never recorded) are retried when their
    // lease ends (the 1 s timeout plus 5 s after they were claimed): with the two
    // instances still running, every delivery ends succeeded.
    let db = app.db().await;
    let unfinished = || async {
        db.query_one(
            "SELECT count(*) FROM deliveries WHERE status <> 'succeeded'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut not_done = unfinished().await;
    while not_done > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        not_done = unfinished().await;
    }
    assert_eq!(not_done, 0, "every delivery ended succeeded");
    let _ = b.kill().await;
    let _ = c.kill().await;
    let requests = receiver.received();
    assert_never_sent_twice_at_once(&requests);
    assert!(requests.len() >= EVENTS);
    println!(
        "{} requests for {EVENTS} events ({} before the kill); unfinished rows: {not_done}",
        requests.len(),
        at_kill
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_under_load_and_a_sigterm_deliver_everything_never_twice_at_once() {
    let (_, database_url) = crate::helpers::create_database().await;
    let ports = [free_port(), free_port(), free_port()];
    let mut instances = Vec::new();
    for port in ports {
        instances.push(start_herald(&database_url, port));
    }
    let bases: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    for (base, child) in bases.iter().zip(instances.iter_mut()) {
        wait_ready(base, child).await;
    }
    let client = reqwest::Client::new();
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(200).after(REPLY_DELAY));
    let created = client
        .post(format!("{}/v1/endpoints", bases[0]))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"url": receiver.url, "max_in_flight": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // A long-poll held on the third instance, which will be stopped.
    let held = {
        let client = client.clone();
        let url = format!("{}/v1/streams/quiet/events?after=0&wait=50", bases[2]);
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = client.get(url).bearer_auth(ADMIN_KEY).send().await.unwrap();
            let status = answer.status();
            let body: Value = answer.json().await.unwrap();
            (status, body, started.elapsed())
        })
    };

    // Publish load, round robin over the instances that are up.
    let stop_at = Instant::now() + Duration::from_secs(4);
    let sigterm_at = Instant::now() + Duration::from_millis(1500);
    let mut acked: Vec<String> = Vec::new();
    let mut n = 0usize;
    let mut terminated = false;
    while Instant::now() < stop_at {
        if !terminated && Instant::now() >= sigterm_at {
            // SIGTERM mid-load, with publishes to it in flight: each is either applied
            // and acknowledged, or refused (503 or a closed connection) and not applied.
            let stop_publishing = Arc::new(AtomicBool::new(false));
            let publishers: Vec<_> = (0..8)
                .map(|p| {
                    let client = client.clone();
                    let url = format!("{}/v1/events/batch", bases[2]);
                    let stop = stop_publishing.clone();
                    tokio::spawn(async move {
                        let mut acked = Vec::new();
                        let mut refused = 0;
                        let mut n = 0;
                        while !stop.load(Ordering::Relaxed) {
                            n += 1;
                            let events: Vec<Value> = (0..50)
                                .map(|i| json!({"stream": format!("c{p}"), "type": "t", "payload": [n, i]}))
                                .collect();
                            let answer = client
                                .post(&url)
                                .bearer_auth(ADMIN_KEY)
                                .json(&json!({"events": events}))
                                .send()
                                .await;
                            match answer {
                                Ok(r) if r.status() == 201 => {
                                    let page: Value = r.json().await.unwrap();
                                    acked.extend(page["events"].as_array().unwrap().iter().map(
                                        |e| e["id"].as_str().unwrap().to_owned(),
                                    ));
                                }
                                Ok(r) => {
                                    assert_eq!(r.status(), 503, "refused while stopping");
                                    refused += 1;
                                    break;
                                }
                                Err(_) => {
                                    refused += 1;
                                    break;
                                }
                            }
                        }
                        (acked, refused)
                    })
                })
                .collect();
            // Terminated with all eight publishing: once it has taken 400 events (a batch
            // of 50 from each) since they started.
            let ingested = async || {
                crate::helpers::metric_at(&client, &bases[2], "herald_events_ingested_total")
                    .await
                    .unwrap_or(0.0)
            };
            let before = ingested().await;
            let deadline = Instant::now() + Duration::from_secs(30);
            while ingested().await < before + 400.0 {
                assert!(Instant::now() < deadline, "the publishers made no progress");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut third = instances.pop().unwrap();
            crate::embedded::terminate(&mut third).await;
            stop_publishing.store(true, Ordering::Relaxed);
            let mut refused = 0;
            for publisher in publishers {
                let (ids, r) = publisher.await.unwrap();
                acked.extend(ids);
                refused += r;
            }
            assert!(refused > 0, "publishers were still sending when it stopped");
            terminated = true;
            let (status, body, took) = held.await.unwrap();
            assert_eq!(status, 200);
            assert_eq!(body["events"], json!([]));
            assert!(
                took < Duration::from_secs(40),
                "the held poll was answered at shutdown, not by its 50 s wait: {took:?}"
            );
            break;
        }
        let up = if terminated { 2 } else { 3 };
        let events: Vec<Value> = (0..20)
            .map(|i| json!({"stream": format!("s{}", (n + i) % 7), "type": "t", "payload": n + i}))
            .collect();
        n += 20;
        let answer = client
            .post(format!("{}/v1/events/batch", bases[n / 20 % up]))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"events": events}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 201);
        let page: Value = answer.json().await.unwrap();
        acked.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned()),
        );
    }
    assert!(terminated);
    // More load on the two that are left.
    while Instant::now() < stop_at {
        let events: Vec<Value> = (0..20)
            .map(|i| json!({"stream": "after", "type": "t", "payload": n + i}))
            .collect();
        n += 20;
        let answer = client
            .post(format!("{}/v1/events/batch", bases[n / 20 % 2]))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"events": events}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 201);
        let page: Value = answer.json().await.unwrap();
        acked.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned()),
        );
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    let requests = loop {
        let got = receiver.received();
        let ids: std::collections::HashSet<&str> = got
            .iter()
            .map(|r| r.headers["webhook-id"].as_str())
            .collect();
        let missing = acked.iter().filter(|id| !ids.contains(id.as_str())).count();
        if missing == 0 {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged events not delivered",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for mut child in instances {
        let _ = child.kill().await;
    }
    assert_never_sent_twice_at_once(&requests);
    println!(
        "{} events over three instances, {} requests",
        acked.len(),
        requests.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_claimed_at_insert_by_an_instance_killed_mid_attempt_are_delivered_by_another_after_the_lease()
 {
    // An API-only instance to set up and to watch.
    let app = api_only_app().await;
    let receiver = Receiver::start().await;
    // The first instance's attempts hang until it is killed.
    receiver.set_default(Reply::status(200).after(Duration::from_secs(60)));
    let created = app
        .post("/v1/endpoints", &json!({"url": receiver.url}))
        .await;
    assert_eq!(created.status(), 201);

    let port = free_port();
    let mut first = start_herald(&app.database_url, port);
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base, &mut first).await;
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..5 {
        let published: Value = client
            .post(format!("{base}/v1/events"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"stream": "orders", "type": "t", "payload": i}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(published["id"].as_str().unwrap().to_owned());
    }
    // Claimed by the publishing instance in the events' own statement: `delivering`, one
    // attempt counted, a claim token, and no claim query involved.
    let db = app.db().await;
    let claimed: i64 = db
        .query_one(
            "SELECT count(*) FROM deliveries \
              WHERE status = 'delivering' AND attempts = 1 AND claim_token IS NOT NULL \
                AND lease_until > now()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(claimed, 5, "every delivery was claimed at insert");
    receiver.wait_for(5, Duration::from_secs(10)).await;
    first.kill().await.unwrap();

    // Another instance picks them up once the lease (1 s timeout + 5 s) has run out.
    receiver.set_default(Reply::status(200).after(REPLY_DELAY));
    let killed_at = Instant::now();
    let port_b = free_port();
    let mut second = start_herald(&app.database_url, port_b);
    wait_ready(&format!("http://127.0.0.1:{port_b}"), &mut second).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done: i64 = db
            .query_one(
                "SELECT count(*) FROM deliveries WHERE status = 'succeeded'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if done == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "{done} of 5 delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = second.kill().await;
    let requests = receiver.received();
    assert_eq!(requests.len(), 10, "each event sent once by each instance");
    for id in &ids {
        let starts: Vec<Instant> = requests
            .iter()
            .filter(|r| &r.headers["webhook-id"] == id)
            .map(|r| r.at)
            .collect();
        assert_eq!(starts.len(), 2, "{id}");
        assert!(
            starts[1] >= killed_at && starts[1] - starts[0] >= Duration::from_secs(5),
            "{id}: the second attempt waited for the first one's lease"
        );
    }
    // The second attempt is recorded as attempt 2 of the delivery.
    let attempts: Vec<i32> = db
        .query("SELECT attempts FROM deliveries", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(attempts, vec![2; 5]);
}
