//! `herald bench webhooks`: drives webhook delivery against a running Herald, with its
//! own fast receiver on loopback, and reports drain rate, sustained rates, publish-to-
//! receive latency and Herald's RSS.
//!
//! Herald must allow the receiver's address: run it with
//! `HERALD_ALLOWED_DESTINATIONS=127.0.0.0/8`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::{Context as _, bail};
use clap::Args;
use rand::Rng as _;
use serde_json::{Value, json};

use crate::domain::units::parse_duration;

/// Options of `herald bench webhooks`.
#[derive(Debug, Args)]
pub struct WebhooksOptions {
    /// Herald's base URL.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An admin key.
    #[arg(long, env = "HERALD_API_KEY")]
    pub key: String,
    /// Events in the backlog to drain.
    #[arg(long, default_value_t = 20_000)]
    pub backlog: usize,
    /// Events per second for the sustained phases.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Events per second for the latency phase.
    #[arg(long, default_value_t = 200)]
    pub latency_rate: u32,
    /// Length of each timed phase.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Herald's pid, for its RSS (default: the one `herald serve` on this machine).
    #[arg(long)]
    pub pid: Option<u32>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[derive(Debug, Default)]
struct Seen {
    ids: HashSet<String>,
    requests: u64,
    latencies_us: Vec<u64>,
}

/// The receiver: answers 204 at once and notes what arrived.
async fn receive(
    req: actix_web::HttpRequest,
    body: web::Bytes,
    seen: web::Data<Mutex<Seen>>,
) -> HttpResponse {
    let received = now_us();
    let sent = std::str::from_utf8(&body)
        .ok()
        .and_then(|b| b.split("\"sent_us\":").nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok());
    let id = req
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    seen.requests += 1;
    seen.ids.insert(id);
    if let Some(sent) = sent {
        seen.latencies_us.push(received.saturating_sub(sent));
    }
    HttpResponse::NoContent().finish()
}

struct Bench {
    client: reqwest::Client,
    base: String,
    key: String,
    seen: Arc<Mutex<Seen>>,
    receiver_url: String,
    pid: Option<u32>,
}

impl Bench {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn reset(&self) {
        *self.seen() = Seen::default();
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let response = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{path}: HTTP {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn endpoint(&self, streams: Value, enabled: bool) -> anyhow::Result<String> {
        let created = self
            .call(
                reqwest::Method::POST,
                "/v1/endpoints",
                json!({"url": self.receiver_url, "streams": streams, "enabled": enabled, "max_in_flight": 256}),
            )
            .await?;
        Ok(created["id"].as_str().context("endpoint id")?.to_owned())
    }

    async fn publish_batch(&self, streams: &[String], count: usize) -> anyhow::Result<()> {
        let events: Vec<Value> = (0..count)
            .map(|i| json!({"stream": streams[i % streams.len()], "type": "bench.hook", "payload": {"n": i}}))
            .collect();
        self.call(
            reqwest::Method::POST,
            "/v1/events/batch",
            json!({"events": events}),
        )
        .await?;
        Ok(())
    }

    /// Publishes `rate` events/s for `duration` over `streams`, each stamped with its send time.
    async fn publish_at(&self, rate: u32, duration: Duration, streams: &[String]) -> u64 {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        let deadline = Instant::now() + duration;
        let mut tasks = Vec::new();
        while Instant::now() < deadline {
            ticker.tick().await;
            let stream = streams[rand::rng().random_range(0..streams.len())].clone();
            let (client, url, key) = (
                self.client.clone(),
                format!("{}/v1/events", self.base),
                self.key.clone(),
            );
            tasks.push(tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(key)
                    .json(&json!({"stream": stream, "type": "bench.hook", "payload": {"sent_us": now_us()}}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }));
        }
        let mut ok = 0;
        for task in tasks {
            ok += u64::from(task.await.unwrap_or(false));
        }
        ok
    }

    /// Waits until `n` distinct events have arrived (or `limit` passes); returns when.
    async fn wait_for(&self, n: usize, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if self.seen().ids.len() >= n {
                return Some(Instant::now());
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn rss(&self) -> String {
        self.pid
            .and_then(super::memory)
            .unwrap_or_else(|| "unknown (pass --pid)".to_owned())
    }
}

/// Runs the webhook benchmark.
pub async fn run(options: WebhooksOptions) -> anyhow::Result<()> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let data = web::Data::from(seen.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(receive))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")?;
    let port = server.addrs()[0].port();
    tokio::spawn(server.run());

    let client = super::client(512)?;
    let base = super::ready(&client, &options.url).await?;
    let run_id: u32 = rand::rng().random();
    let bench = Bench {
        client,
        base,
        key: options.key.clone(),
        seen,
        receiver_url: format!("http://127.0.0.1:{port}/hook"),
        pid: options.pid.or_else(super::find_herald_pid),
    };
    println!("herald RSS at start: {}", bench.rss());

    // 1. Drain a backlog: published while the endpoint is disabled (kept as failed), then
    //    enabled and replayed in bulk, so every delivery is due at once.
    let stream = vec![format!("wh-{run_id:08x}:drain")];
    let endpoint = bench.endpoint(json!(stream), false).await?;
    for chunk in (0..options.backlog).step_by(1000) {
        bench
            .publish_batch(&stream, (options.backlog - chunk).min(1000))
            .await?;
    }
    bench
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/endpoints/{endpoint}"),
            json!({"enabled": true}),
        )
        .await?;
    bench.reset();
    let started = Instant::now();
    bench
        .call(
            reqwest::Method::POST,
            "/v1/deliveries/replay",
            json!({"filter": {"endpoint_id": endpoint, "status": "failed"}}),
        )
        .await?;
    match bench
        .wait_for(options.backlog, Duration::from_secs(600))
        .await
    {
        Some(done) => {
            let secs = (done - started).as_secs_f64();
            println!(
                "drain: {} deliveries in {secs:.2} s = {:.0} deliveries/s (RSS {})",
                options.backlog,
                options.backlog as f64 / secs,
                bench.rss()
            );
        }
        None => println!("drain: did not finish within 600 s"),
    }
    bench
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/endpoints/{endpoint}"),
            Value::Null,
        )
        .await
        .ok();

    // 2. Sustained rate to one endpoint, then to 100 endpoints (one stream each).
    for endpoints in [1_usize, 100] {
        let streams: Vec<String> = (0..endpoints)
            .map(|i| format!("wh-{run_id:08x}:s{endpoints}-{i}"))
            .collect();
        let mut ids = Vec::new();
        for stream in &streams {
            ids.push(bench.endpoint(json!([stream]), true).await?);
        }
        bench.reset();
        let started = Instant::now();
        let published = bench
            .publish_at(options.rate, options.duration, &streams)
            .await;
        let publish_secs = started.elapsed().as_secs_f64();
        let caught_up = bench
            .wait_for(
                usize::try_from(published).unwrap_or(0),
                Duration::from_secs(120),
            )
            .await;
        let mut latencies = std::mem::take(&mut bench.seen().latencies_us);
        latencies.sort_unstable();
        println!(
            "sustained to {endpoints} endpoint(s): published {published} in {publish_secs:.1} s ({:.0}/s), \
             delivered all {} after the last publish; publish-to-receive p50 {:.1} ms p99 {:.1} ms (RSS {})",
            published as f64 / publish_secs,
            caught_up.map_or_else(
                || "NOT".to_owned(),
                |t| format!("{:.2} s", (t - started).as_secs_f64() - publish_secs)
            ),
            super::percentile(&latencies, 50.0),
            super::percentile(&latencies, 99.0),
            bench.rss()
        );
        for id in ids {
            bench
                .call(
                    reqwest::Method::DELETE,
                    &format!("/v1/endpoints/{id}"),
                    Value::Null,
                )
                .await
                .ok();
        }
    }

    // 3. Latency at a moderate rate.
    let streams: Vec<String> = (0..10).map(|i| format!("wh-{run_id:08x}:lat{i}")).collect();
    let endpoint = bench
        .endpoint(json!([format!("wh-{run_id:08x}:lat*")]), true)
        .await?;
    bench.reset();
    let published = bench
        .publish_at(options.latency_rate, options.duration, &streams)
        .await;
    bench
        .wait_for(
            usize::try_from(published).unwrap_or(0),
            Duration::from_secs(60),
        )
        .await;
    let mut latencies = std::mem::take(&mut bench.seen().latencies_us);
    latencies.sort_unstable();
    println!(
        "latency at {}/s: {} events, publish-to-receive p50 {:.2} ms p99 {:.2} ms max {:.2} ms (RSS {})",
        options.latency_rate,
        published,
        super::percentile(&latencies, 50.0),
        super::percentile(&latencies, 99.0),
        super::percentile(&latencies, 100.0),
        bench.rss()
    );
    bench
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/endpoints/{endpoint}"),
            Value::Null,
        )
        .await
        .ok();
    Ok(())
}
