//! `herald bench views`: how long the operator's calls take against a running Herald, the
//! console's pages and filters, the bulk-replay preview, endpoints with health and
//! `/metrics`. Each call is first made `--warmup` times (as many as Herald has pooled
//! connections, so each has the call's statements prepared and planned, as on a Herald
//! that has been serving), then `--repeat` times in a row; p50, p99 and max are reported
//! per call (the console's time filters are relative to when it starts). Run it against a database filled by `herald
//! bench fill` to see what history costs (and against an empty one to compare).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Value, json};

/// Options of `herald bench views`.
#[derive(Debug, Args)]
pub struct ViewsOptions {
    /// Herald's base URL.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An admin key.
    #[arg(long, env = "HERALD_API_KEY")]
    pub key: String,
    /// Timed calls of each kind.
    #[arg(long, default_value_t = 20)]
    pub repeat: usize,
    /// Untimed calls of each kind first (at least Herald's `HERALD_DB_POOL_SIZE`: each
    /// pooled connection plans a statement the first time it runs it).
    #[arg(long, default_value_t = 32)]
    pub warmup: usize,
}

/// One call: a name, a method, a path and a body.
struct Call {
    name: String,
    post: Option<Value>,
    path: String,
}

impl Call {
    fn get(path: &str) -> Self {
        Self {
            name: format!("GET {path}"),
            post: None,
            path: path.to_owned(),
        }
    }
}

async fn once(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    call: &Call,
) -> anyhow::Result<Duration> {
    let url = format!("{base}{}", call.path);
    let request = match &call.post {
        Some(body) => client.post(&url).json(body),
        None => client.get(&url),
    };
    let started = Instant::now();
    let response = request.bearer_auth(key).send().await?;
    let status = response.status();
    response.bytes().await?;
    let took = started.elapsed();
    if !status.is_success() {
        bail!("{}: HTTP {status}", call.name);
    }
    Ok(took)
}

/// Runs the views benchmark.
pub async fn run(options: ViewsOptions) -> anyhow::Result<()> {
    let client = super::client(4)?;
    let base = super::ready(&client, &options.url).await?;
    let get = async |path: &str| -> anyhow::Result<Value> {
        let response = client
            .get(format!("{base}{path}"))
            .bearer_auth(&options.key)
            .send()
            .await?;
        response.json().await.with_context(|| format!("GET {path}"))
    };
    let endpoints = get("/v1/endpoints?limit=1").await?;
    let endpoint = endpoints["endpoints"][0]["id"].as_str().map(str::to_owned);
    let mut calls = vec![
        Call::get("/v1/overview"),
        Call::get("/metrics"),
        Call::get("/v1/endpoints"),
        Call::get("/v1/deliveries"),
        Call::get("/v1/deliveries?status=failed"),
        Call::get("/v1/deliveries?status=pending"),
        Call::get("/v1/deliveries?status=failed&event_type=fill.0"),
        Call::get("/v1/deliveries?event_type=fill.3"),
        Call::get("/v1/deliveries?status_code=503"),
        Call::get("/v1/deliveries?stream=fill-42"),
        // Rare matches: nothing in the data has them, so a filter without an index of
        // its own would walk the whole history to fill a page.
        Call::get("/v1/deliveries?event_type=never.seen"),
        Call::get("/v1/deliveries?status_code=418"),
        Call::get("/v1/deliveries?stream=never-seen"),
    ];
    if let Some(id) = &endpoint {
        calls.push(Call::get(&format!("/v1/endpoints/{id}")));
        calls.push(Call::get(&format!("/v1/deliveries?endpoint_id={id}")));
        calls.push(Call::get(&format!(
            "/v1/deliveries?endpoint_id={id}&status=failed"
        )));
    }
    // The console's time filters: the last hour, and an hour and a day deep in history.
    let at = |ago: chrono::Duration| {
        (chrono::Utc::now() - ago).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let (hour, day) = (chrono::Duration::hours(1), chrono::Duration::days(1));
    calls.push(Call::get(&format!("/v1/deliveries?since={}", at(hour))));
    calls.push(Call::get(&format!(
        "/v1/deliveries?since={}&until={}",
        at(day * 15),
        at(day * 15 - hour)
    )));
    calls.push(Call::get(&format!(
        "/v1/deliveries?status=failed&since={}&until={}",
        at(day * 15),
        at(day * 14)
    )));
    // A failed delivery's page (the delivery with its attempts, its event), and the
    // failed list's second page.
    let failed = get("/v1/deliveries?status=failed").await?;
    if let Some(delivery) = failed["deliveries"].get(0) {
        let id = delivery["id"].as_str().unwrap_or_default();
        let event = delivery["event_id"].as_str().unwrap_or_default();
        calls.push(Call::get(&format!("/v1/deliveries/{id}")));
        calls.push(Call::get(&format!("/v1/events/{event}")));
    }
    if let Some(cursor) = failed["next_cursor"].as_str() {
        let mut call = Call::get(&format!("/v1/deliveries?status=failed&cursor={cursor}"));
        call.name = "GET /v1/deliveries?status=failed, second page".into();
        calls.push(call);
    }
    calls.push(Call {
        name: "POST /v1/deliveries/replay (dry run, status failed)".into(),
        post: Some(json!({"filter": {"status": "failed"}, "dry_run": true})),
        path: "/v1/deliveries/replay".into(),
    });
    // A filter no index answers: the preview counts among the newest candidates only.
    calls.push(Call {
        name: "POST /v1/deliveries/replay (dry run, event_type never.seen)".into(),
        post: Some(json!({"filter": {"event_type": "never.seen"}, "dry_run": true})),
        path: "/v1/deliveries/replay".into(),
    });
    calls.push(Call {
        name: "POST /v1/deliveries/replay (dry run, status_code 503)".into(),
        post: Some(json!({"filter": {"status_code": 503}, "dry_run": true})),
        path: "/v1/deliveries/replay".into(),
    });
    println!(
        "{:<70} {:>9} {:>9} {:>9}",
        "call", "p50 ms", "p99 ms", "max ms"
    );
    for call in &calls {
        for _ in 0..options.warmup.max(1) {
            once(&client, &base, &options.key, call).await?;
        }
        let mut times_us = Vec::with_capacity(options.repeat);
        for _ in 0..options.repeat {
            let took = once(&client, &base, &options.key, call).await?;
            times_us.push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        }
        times_us.sort_unstable();
        println!(
            "{:<70} {:>9.1} {:>9.1} {:>9.1}",
            call.name,
            super::percentile(&times_us, 50.0),
            super::percentile(&times_us, 99.0),
            super::percentile(&times_us, 100.0)
        );
    }
    Ok(())
}
