//! `herald bench longpoll`: hold N long-polls over M streams against a running Herald and
//! report held connections, Herald's RSS, publish-to-answer latency at a steady publish
//! rate, and fan-out time (one event to F waiters on one stream).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use rand::Rng as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::domain::units::parse_duration;

/// Options of `herald bench longpoll`.
#[derive(Debug, Args)]
pub struct LongpollOptions {
    /// Herald's base URL.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An admin key (it reads the streams and publishes to them).
    #[arg(long, env = "HERALD_API_KEY")]
    pub key: String,
    /// Long-polls held at once.
    #[arg(long, default_value_t = 10_000)]
    pub waiters: usize,
    /// Streams the waiters are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub streams: usize,
    /// Events published per second during the latency phase.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Length of the latency phase.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Waiters on one stream for the fan-out phase (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    pub fanout: usize,
    /// Seconds each long-poll asks to wait.
    #[arg(long, default_value_t = 50)]
    pub wait: u32,
    /// Herald's pid, for its RSS (default: the one `herald serve` on this machine).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Events published to the first stream before anything else (its history).
    #[arg(long, default_value_t = 0)]
    pub history: usize,
    /// During the latency phase, a client also loops `after=0&limit=1&wait=1` on the first
    /// stream, as one catching up from the beginning (or a buggy one) does: it must not slow
    /// the other waiters down nor make the hub re-read history.
    #[arg(long)]
    pub catch_up_reader: bool,
}

/// Everything one waiter saw.
#[derive(Debug, Default)]
struct Seen {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Long-polls `stream` from `after` until `stop`, recording publish-to-answer latencies
/// while `measuring` is set. Returns after its first answer when `once` is set.
async fn waiter(
    client: reqwest::Client,
    url: String,
    key: Arc<str>,
    measuring: Arc<AtomicBool>,
    stop: CancellationToken,
    once: bool,
) -> Seen {
    let mut seen = Seen::default();
    let mut after = 0_i64;
    loop {
        let request = client
            .get(format!("{url}&after={after}"))
            .bearer_auth(&*key)
            .send();
        let response = tokio::select! {
            () = stop.cancelled() => return seen,
            response = request => response,
        };
        let body: Result<Value, String> = match response {
            Ok(r) if r.status().is_success() => r.json().await.map_err(|e| e.to_string()),
            Ok(r) => Err(format!("HTTP {}", r.status())),
            Err(e) => Err(e.to_string()),
        };
        let received = super::now_us();
        match body {
            Ok(body) => {
                let events = body["events"].as_array().cloned().unwrap_or_default();
                if measuring.load(Ordering::Relaxed) {
                    for event in &events {
                        if let Some(sent) = event["payload"]["sent_us"].as_u64() {
                            seen.latencies_us.push(received.saturating_sub(sent));
                        }
                    }
                }
                after = body["next_after"].as_i64().unwrap_or(after);
                if once && !events.is_empty() {
                    return seen;
                }
            }
            Err(err) => {
                seen.errors += 1;
                seen.first_error.get_or_insert(err);
                tokio::select! {
                    () = stop.cancelled() => return seen,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

/// Waits until Herald holds `count` waiters (or 120 s pass); returns how many it holds.
async fn wait_for_waiters(client: &reqwest::Client, base: &str, count: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let held = super::metric(client, base, "herald_waiters")
            .await
            .unwrap_or(0);
        if held >= count || Instant::now() > deadline {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `count` waiters, in waves so that the listen backlog is not overrun.
async fn start_waiters(
    count: usize,
    url_for: impl Fn(usize) -> String,
    client: &reqwest::Client,
    key: &Arc<str>,
    measuring: &Arc<AtomicBool>,
    stop: &CancellationToken,
    once: bool,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        tasks.push(tokio::spawn(waiter(
            client.clone(),
            url_for(i),
            key.clone(),
            measuring.clone(),
            stop.clone(),
            once,
        )));
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tasks
}

/// Publishes `count` events to `stream` in batches of 1,000.
async fn publish_history(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    stream: &str,
    count: usize,
) -> anyhow::Result<()> {
    println!("publishing {count} events of history to {stream}...");
    let mut left = count;
    while left > 0 {
        let n = left.min(1_000);
        let events: Vec<Value> = (0..n)
            .map(|_| json!({"stream": stream, "type": "bench.history", "payload": {}}))
            .collect();
        let response = client
            .post(format!("{base}/v1/events/batch"))
            .bearer_auth(key)
            .json(&json!({ "events": events }))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("publishing history: {}", response.status());
        }
        left -= n;
    }
    Ok(())
}

fn report_rss(pid: Option<u32>, label: &str) {
    match pid.and_then(super::memory) {
        Some(rss) => println!("herald RSS {label}: {rss}"),
        None => println!("herald RSS {label}: unknown (pass --pid)"),
    }
}

/// Runs the long-poll benchmark.
pub async fn run(options: LongpollOptions) -> anyhow::Result<()> {
    if options.waiters == 0 || options.streams == 0 || options.rate == 0 {
        bail!("--waiters, --streams and --rate must be at least 1");
    }
    let client = super::client(options.waiters.max(options.fanout) + 64)?;
    let base = super::ready(&client, &options.url).await?;
    let pid = options.pid.or_else(super::find_herald_pid);
    let key: Arc<str> = options.key.clone().into();
    let run_id: u32 = rand::rng().random();
    let stream_name = |i: usize| format!("lp-{run_id:08x}:{i}");
    report_rss(pid, "before");
    if options.history > 0 {
        publish_history(&client, &base, &key, &stream_name(0), options.history).await?;
    }

    // 1. Hold.
    println!(
        "holding {} long-polls over {} streams (wait={}s)...",
        options.waiters, options.streams, options.wait
    );
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let started = Instant::now();
    let tasks = start_waiters(
        options.waiters,
        |i| {
            format!(
                "{base}/v1/streams/{}/events?wait={}",
                stream_name(i % options.streams),
                options.wait
            )
        },
        &client,
        &key,
        &measuring,
        &stop,
        false,
    )
    .await;
    let held = wait_for_waiters(&client, &base, options.waiters as u64).await;
    println!(
        "held connections: {held} (after {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    report_rss(
        pid,
        &format!("with {held} held long-polls, just after connecting"),
    );
    // The allocator returns the connection burst's freed pages after its decay time
    // (jemalloc: 10 s); what the held requests themselves cost shows after that.
    tokio::time::sleep(Duration::from_secs(15)).await;
    report_rss(pid, &format!("with {held} held long-polls, 15 s later"));

    // 2. Publish at a steady rate; waiters measure publish-to-answer latency.
    println!(
        "publishing {} events/s over {} streams for {:.0} s...",
        options.rate,
        options.streams,
        options.duration.as_secs_f64()
    );
    measuring.store(true, Ordering::Relaxed);
    let reads_before = super::metric(&client, &base, "herald_hub_reads_total").await;
    let catch_up = options.catch_up_reader.then(|| {
        let url = format!(
            "{base}/v1/streams/{}/events?after=0&limit=1&wait=1",
            stream_name(0)
        );
        let (client, key, stop) = (client.clone(), key.clone(), stop.clone());
        tokio::spawn(async move {
            let mut reads = 0_u64;
            while !stop.is_cancelled() {
                let ok = client.get(&url).bearer_auth(&*key).send().await;
                reads += u64::from(ok.is_ok_and(|r| r.status().is_success()));
            }
            reads
        })
    });
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(options.rate)));
    let deadline = Instant::now() + options.duration;
    let mut publishes = Vec::new();
    while Instant::now() < deadline {
        ticker.tick().await;
        let stream = stream_name(rand::rng().random_range(0..options.streams));
        let (client, base, key) = (client.clone(), base.clone(), key.clone());
        publishes.push(tokio::spawn(async move {
            super::publish(&client, &base, &key, &stream).await
        }));
    }
    let mut published = 0_u64;
    for p in publishes {
        published += u64::from(p.await.unwrap_or(false));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    measuring.store(false, Ordering::Relaxed);
    let reads_after = super::metric(&client, &base, "herald_hub_reads_total").await;
    report_rss(pid, "after the latency phase");
    stop.cancel();
    if let Some(catch_up) = catch_up {
        println!(
            "catch-up reader: {} reads of history from after=0 during the phase",
            catch_up.await?
        );
    }
    if let (Some(before), Some(after)) = (reads_before, reads_after) {
        println!(
            "hub reads during the phase: {} ({:.2} per published event)",
            after - before,
            (after - before) as f64 / published.max(1) as f64
        );
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let seen = task.await?;
        latencies.extend(seen.latencies_us);
        errors += seen.errors;
        first_error = first_error.or(seen.first_error);
    }
    latencies.sort_unstable();
    let per_event = options.waiters as f64 / options.streams as f64;
    println!(
        "published {published} events; answers received {} (expected about {:.0})",
        latencies.len(),
        published as f64 * per_event
    );
    println!(
        "publish-to-answer latency: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        super::percentile(&latencies, 50.0),
        super::percentile(&latencies, 99.0),
        super::percentile(&latencies, 100.0)
    );
    println!(
        "waiter errors: {errors}{}",
        first_error
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );

    // 3. Fan-out: one event to many waiters of one stream.
    if options.fanout > 0 {
        wait_for_waiters_to_drain(&client, &base).await;
        let fan_stream = format!("lp-{run_id:08x}:fanout");
        println!("fan-out: {} waiters on one stream...", options.fanout);
        let measuring = Arc::new(AtomicBool::new(true));
        let stop = CancellationToken::new();
        let tasks = start_waiters(
            options.fanout,
            |_| {
                format!(
                    "{base}/v1/streams/{fan_stream}/events?wait={}",
                    options.wait
                )
            },
            &client,
            &key,
            &measuring,
            &stop,
            true,
        )
        .await;
        let held = wait_for_waiters(&client, &base, options.fanout as u64).await;
        report_rss(pid, &format!("with {held} waiters on one stream"));
        // The connection burst settles before the event (and a profiler can attach).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu = super::CpuWindow::start(pid);
        let sent = Instant::now();
        if !super::publish(&client, &base, &key, &fan_stream).await {
            bail!("could not publish the fan-out event");
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await?.latencies_us);
        }
        let last = sent.elapsed();
        let (herald_cpu, own_cpu) = cpu.elapsed();
        latencies.sort_unstable();
        println!(
            "fan-out to {} waiters: all answered {:.1} ms after the publish was sent (p50 {:.1} ms, answers {})",
            held,
            last.as_secs_f64() * 1000.0,
            super::percentile(&latencies, 50.0),
            latencies.len()
        );
        if let (Some(herald), Some(own)) = (herald_cpu, own_cpu) {
            println!(
                "... CPU meanwhile: Herald {herald:.1} ms, this load generator {own:.1} ms \
                 ({:.1} + {:.1} us per waiter)",
                herald * 1000.0 / held.max(1) as f64,
                own * 1000.0 / held.max(1) as f64
            );
        }
    }
    Ok(())
}

async fn wait_for_waiters_to_drain(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if super::metric(client, base, "herald_waiters").await == Some(0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
