//! `herald bench ingest`: N concurrent clients publish as fast as they can.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use rand::Rng as _;
use serde_json::json;

use crate::domain::units::parse_duration;

/// Options of `herald bench ingest`.
#[derive(Debug, Args)]
pub struct IngestOptions {
    /// Herald's base URL.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A publisher or admin key.
    #[arg(long, env = "HERALD_API_KEY")]
    pub key: String,
    /// Concurrent clients, each with one request in flight at a time.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Events per request: 1 uses `POST /v1/events`, more uses `POST /v1/events/batch`.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// How long to measure (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long to run before measuring.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Events are spread over this many streams.
    #[arg(long, default_value_t = 100)]
    pub streams: usize,
    /// Approximate payload size in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
}

#[derive(Debug, Default)]
struct ClientTally {
    latencies_us: Vec<u64>,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Runs the ingest benchmark.
pub async fn run(options: IngestOptions) -> anyhow::Result<()> {
    if options.clients == 0 || options.batch == 0 || options.streams == 0 {
        bail!("--clients, --batch and --streams must be at least 1");
    }
    let client = super::client(options.clients)?;
    let base = super::ready(&client, &options.url).await?;

    let run_id: u32 = rand::rng().random();
    let filler = "x".repeat(options.payload_bytes.saturating_sub(60));
    let start = Instant::now();
    let measure_from = start + options.warmup;
    let deadline = measure_from + options.duration;
    let mut tasks = Vec::with_capacity(options.clients);
    for client_no in 0..options.clients {
        let client = client.clone();
        let key = options.key.clone();
        let filler = filler.clone();
        let (batch, streams) = (options.batch, options.streams);
        let url = if batch == 1 {
            format!("{base}/v1/events")
        } else {
            format!("{base}/v1/events/batch")
        };
        tasks.push(tokio::spawn(async move {
            let mut tally = ClientTally::default();
            let mut n: u64 = 0;
            loop {
                let sent_at = Instant::now();
                if sent_at >= deadline {
                    break;
                }
                let mut event = || {
                    n += 1;
                    let stream = format!(
                        "bench-{run_id:08x}:{}",
                        rand::rng().random_range(0..streams)
                    );
                    json!({"stream": stream, "type": "bench.event",
                           "payload": {"client": client_no, "n": n, "filler": filler}})
                };
                let body = if batch == 1 {
                    event()
                } else {
                    json!({"events": (0..batch).map(|_| event()).collect::<Vec<_>>()})
                };
                let result = client.post(&url).bearer_auth(&key).json(&body).send().await;
                let ok = match result {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                        true
                    }
                    Ok(response) => {
                        let status = response.status();
                        let text = response.text().await.unwrap_or_default();
                        tally.first_error.get_or_insert(format!("{status}: {text}"));
                        false
                    }
                    Err(err) => {
                        tally.first_error.get_or_insert(err.to_string());
                        false
                    }
                };
                if sent_at < measure_from {
                    continue;
                }
                if ok {
                    tally.requests += 1;
                    tally
                        .latencies_us
                        .push(sent_at.elapsed().as_micros() as u64);
                } else {
                    tally.errors += 1;
                }
            }
            tally
        }));
    }
    let mut total = ClientTally::default();
    for task in tasks {
        let tally = task.await?;
        total.requests += tally.requests;
        total.errors += tally.errors;
        total.latencies_us.extend(tally.latencies_us);
        if total.first_error.is_none() {
            total.first_error = tally.first_error;
        }
    }
    let secs = options.duration.as_secs_f64();
    let events = total.requests * options.batch as u64;
    total.latencies_us.sort_unstable();
    println!(
        "ingest: {} clients, batch {}, {} streams, {} B payloads, {:.0} s measured",
        options.clients, options.batch, options.streams, options.payload_bytes, secs
    );
    println!(
        "requests  {:>10}  {:>10.1}/s",
        total.requests,
        total.requests as f64 / secs
    );
    println!("events    {:>10}  {:>10.1}/s", events, events as f64 / secs);
    println!(
        "latency   p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        super::percentile(&total.latencies_us, 50.0),
        super::percentile(&total.latencies_us, 99.0),
        super::percentile(&total.latencies_us, 100.0)
    );
    println!("errors    {:>10}", total.errors);
    if let Some(err) = total.first_error {
        println!("first error: {err}");
    }
    Ok(())
}
