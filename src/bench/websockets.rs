//! `herald bench websockets`: N sockets each following M streams against a running Herald;
//! reports Herald's memory per socket and per subscription, publish-to-receive latency at
//! a steady publish rate, and fan-out time (one event to F sockets following one stream).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use futures_util::{SinkExt as _, StreamExt as _};
use rand::Rng as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::domain::units::parse_duration;

/// Options of `herald bench websockets`.
#[derive(Debug, Args)]
pub struct WebsocketsOptions {
    /// Herald's base URL.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An admin key (it reads the streams and publishes to them).
    #[arg(long, env = "HERALD_API_KEY")]
    pub key: String,
    /// Sockets open at once.
    #[arg(long, default_value_t = 5_000)]
    pub sockets: usize,
    /// Streams each socket follows.
    #[arg(long, default_value_t = 20)]
    pub per_socket: usize,
    /// Streams the subscriptions are spread over.
    #[arg(long, default_value_t = 10_000)]
    pub streams: usize,
    /// Events published per second during the latency phase.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u32,
    /// Length of the latency phase.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Sockets following one stream for the fan-out phase (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    pub fanout: usize,
    /// Events published one after another to the fan-out's sockets (each waits until
    /// every socket has the one before); the report gives each and their median.
    #[arg(long, default_value_t = 5)]
    pub fanout_rounds: usize,
    /// Herald's pid, for its memory (default: the one `herald serve` on this machine).
    #[arg(long)]
    pub pid: Option<u32>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The `sent_us` the benchmark put in an event's payload.
fn sent_us(text: &str) -> Option<u64> {
    let (_, rest) = text.split_once(r#""sent_us":"#)?;
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// Opens `count` sockets, 100 handshakes at a time.
async fn open(base: &str, key: &str, count: usize) -> anyhow::Result<Vec<Ws>> {
    let url = format!("{}/v1/ws", base.replacen("http", "ws", 1));
    let mut sockets = Vec::with_capacity(count);
    while sockets.len() < count {
        let wave = (count - sockets.len()).min(100);
        let handshakes = (0..wave).map(|_| {
            let url = url.clone();
            async move {
                let mut request = url.into_client_request()?;
                request
                    .headers_mut()
                    .insert("authorization", format!("Bearer {key}").parse()?);
                // tungstenite zero-fills its read buffer (128 KiB by default) before each
                // read: with messages of a few hundred bytes that was most of this load
                // generator's CPU, taken from the cores Herald runs on.
                let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
                anyhow::Ok(
                    tokio_tungstenite::connect_async_with_config(request, Some(config), true)
                        .await?
                        .0,
                )
            }
        });
        for socket in futures_util::future::join_all(handshakes).await {
            sockets.push(socket.context("could not open a WebSocket")?);
        }
    }
    Ok(sockets)
}

/// Replies received: subscriptions made, errors, and the first error.
#[derive(Debug, Default)]
struct Tally {
    subscribed: u64,
    errors: u64,
    first_error: Option<String>,
}

type Errors = Arc<Mutex<Tally>>;

/// Says how many error messages came, if any, with the first.
fn report_errors(errors: &Errors) {
    let tally = errors.lock().unwrap_or_else(PoisonError::into_inner);
    if tally.errors > 0 {
        println!(
            "{} error messages (first: {}); raise HERALD_MAX_WAITERS and HERALD_MAX_WAITERS_PER_KEY for this many subscriptions",
            tally.errors,
            tally.first_error.as_deref().unwrap_or("")
        );
    }
}

/// Subscribes every socket to its streams, then reads each on a task of its own that
/// records publish-to-receive latencies into `latencies` and counts events; returns the
/// tasks (each gives back its event count when `stop` is cancelled).
async fn follow(
    sockets: Vec<Ws>,
    streams_of: impl Fn(usize) -> Vec<String>,
    latencies: &Arc<Mutex<Vec<u64>>>,
    errors: &Errors,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<u64>>> {
    let mut tasks = Vec::with_capacity(sockets.len());
    for (i, mut ws) in sockets.into_iter().enumerate() {
        for stream in streams_of(i) {
            let subscribe = json!({"type": "subscribe", "stream": stream, "after": 0});
            ws.send(Message::text(subscribe.to_string())).await?;
        }
        let latencies = latencies.clone();
        let stop = stop.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut events = 0_u64;
            // One wait on the shared token for the task's life: made anew per message, it
            // would take the token's lock each time, shared by every task.
            let stopped = stop.cancelled();
            tokio::pin!(stopped);
            loop {
                let message = tokio::select! {
                    () = &mut stopped => return events,
                    message = ws.next() => message,
                };
                let Some(Ok(Message::Text(text))) = message else {
                    if matches!(message, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                        return events;
                    }
                    continue;
                };
                let received = super::now_us();
                // Events are most of the traffic: read their send time without parsing the
                // whole message (the load generator shares the machine with Herald).
                if text.starts_with(r#"{"type":"event""#) {
                    events += 1;
                    if let Some(sent) = sent_us(&text) {
                        latencies
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(received.saturating_sub(sent));
                    }
                    continue;
                }
                let Ok(value) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if value["type"] == "subscribed" {
                    errors
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .subscribed += 1;
                } else if value["type"] == "error" {
                    let mut tally = errors.lock().unwrap_or_else(PoisonError::into_inner);
                    tally.errors += 1;
                    tally.first_error.get_or_insert_with(|| text.to_string());
                }
            }
        }));
    }
    Ok(tasks)
}

/// Waits (up to two minutes) until `count` subscriptions are answered, `subscribed` or
/// `error`; returns how many were subscribed.
async fn wait_for_subscriptions(count: u64, errors: &Errors) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (subscribed, refused) = {
            let tally = errors.lock().unwrap_or_else(PoisonError::into_inner);
            (tally.subscribed, tally.errors)
        };
        if subscribed + refused >= count || Instant::now() > deadline {
            return subscribed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn anon_kib(pid: Option<u32>) -> Option<f64> {
    pid.and_then(super::rss_anon_mib).map(|mib| mib * 1024.0)
}

/// Runs the WebSocket benchmark.
pub async fn run(options: WebsocketsOptions) -> anyhow::Result<()> {
    if options.sockets == 0 || options.per_socket == 0 || options.streams == 0 {
        bail!("--sockets, --per-socket and --streams must be at least 1");
    }
    if options.per_socket > options.streams {
        bail!("--per-socket cannot be more than --streams");
    }
    let client = super::client(64)?;
    let base = super::ready(&client, &options.url).await?;
    let pid = options.pid.or_else(super::find_herald_pid);
    let run_id: u32 = rand::rng().random();
    let stream_name = |i: usize| format!("ws-{run_id:08x}:{i}");
    let before = anon_kib(pid);
    println!(
        "herald memory before: {}",
        pid.and_then(super::memory)
            .unwrap_or_else(|| "unknown (pass --pid)".into())
    );

    // 1. Sockets, then subscriptions.
    let started = Instant::now();
    let sockets = open(&base, &options.key, options.sockets).await?;
    println!(
        "{} sockets open after {:.1} s",
        sockets.len(),
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_sockets = anon_kib(pid);
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let errors = Errors::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let (per_socket, streams) = (options.per_socket, options.streams);
    let tasks = follow(
        sockets,
        |i| {
            (0..per_socket)
                .map(|j| stream_name((i * per_socket + j) % streams))
                .collect()
        },
        &latencies,
        &errors,
        &stop,
    )
    .await?;
    let wanted = (options.sockets * options.per_socket) as u64;
    let subscribed = wait_for_subscriptions(wanted, &errors).await;
    report_errors(&errors);
    println!(
        "{subscribed} subscriptions after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The allocator returns the burst's freed pages after its decay time (jemalloc: 10 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let with_subscriptions = anon_kib(pid);
    println!(
        "herald memory with {} sockets and {subscribed} subscriptions: {}",
        options.sockets,
        pid.and_then(super::memory)
            .unwrap_or_else(|| "unknown".into())
    );
    if let (Some(before), Some(sockets), Some(subs)) = (before, with_sockets, with_subscriptions) {
        println!(
            "per socket {:.1} KiB (anonymous, sockets alone); per subscription {:.2} KiB",
            (sockets - before) / options.sockets as f64,
            (subs - sockets) / subscribed.max(1) as f64
        );
    }

    // 2. A steady publish rate over the streams.
    println!(
        "publishing {} events/s over {} streams for {:.0} s...",
        options.rate,
        options.streams,
        options.duration.as_secs_f64()
    );
    let period = Duration::from_secs_f64(1.0 / f64::from(options.rate.max(1)));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + options.duration;
    let mut publishers = Vec::new();
    let mut n = 0_usize;
    while Instant::now() < end {
        ticker.tick().await;
        let (client, base, key, stream) = (
            client.clone(),
            base.clone(),
            options.key.clone(),
            stream_name(n % options.streams),
        );
        publishers.push(tokio::spawn(async move {
            super::publish(&client, &base, &key, &stream).await
        }));
        n += 1;
    }
    let mut published = 0_u64;
    for publisher in publishers {
        published += u64::from(publisher.await.unwrap_or(false));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let mut received = 0_u64;
    for task in tasks {
        received += task.await.unwrap_or(0);
    }
    let mut samples =
        std::mem::take(&mut *latencies.lock().unwrap_or_else(PoisonError::into_inner));
    samples.sort_unstable();
    let expected =
        published * (options.sockets * options.per_socket) as u64 / options.streams as u64;
    println!(
        "published {published}; received {received} event messages (about {expected} expected); \
         publish-to-receive p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        super::percentile(&samples, 50.0),
        super::percentile(&samples, 99.0),
        super::percentile(&samples, 100.0)
    );

    // 3. Fan-out: one event to many sockets following one stream.
    if options.fanout > 0 {
        // The latency phase's sockets are gone first, so that only the fan-out's count.
        let deadline = Instant::now() + Duration::from_secs(30);
        while super::metric(&client, &base, "herald_ws_subscriptions").await != Some(0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "fan-out: {} sockets following one stream...",
            options.fanout
        );
        let fan = stream_name(usize::MAX);
        let sockets = open(&base, &options.key, options.fanout).await?;
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let errors = Errors::default();
        let stop = tokio_util::sync::CancellationToken::new();
        let fan_streams = fan.clone();
        let tasks = follow(
            sockets,
            move |_| vec![fan_streams.clone()],
            &latencies,
            &errors,
            &stop,
        )
        .await?;
        let subscribed = wait_for_subscriptions(options.fanout as u64, &errors).await;
        report_errors(&errors);
        let mut rounds = Vec::new();
        for round in 1..=options.fanout_rounds.max(1) {
            let cpu = super::CpuWindow::start(pid);
            let sent = Instant::now();
            if !super::publish(&client, &base, &options.key, &fan).await {
                bail!("could not publish the fan-out event");
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while latencies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
                < subscribed as usize
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let all = sent.elapsed().as_secs_f64() * 1000.0;
            let (herald_cpu, own_cpu) = cpu.elapsed();
            let mut samples =
                std::mem::take(&mut *latencies.lock().unwrap_or_else(PoisonError::into_inner));
            samples.sort_unstable();
            let per_socket = |ms: Option<f64>| {
                ms.map_or_else(
                    || "unknown".to_owned(),
                    |ms| {
                        format!(
                            "{ms:.1} ms ({:.1} us per socket)",
                            ms * 1000.0 / subscribed.max(1) as f64
                        )
                    },
                )
            };
            println!(
                "fan-out {round} to {subscribed} sockets: {} received, all {all:.1} ms after the publish \
                 was sent (p50 {:.1} ms); CPU meanwhile: Herald {}, this load generator {}",
                samples.len(),
                super::percentile(&samples, 50.0),
                per_socket(herald_cpu),
                per_socket(own_cpu),
            );
            rounds.push(all);
            // The sockets settle before the next event.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        rounds.sort_by(f64::total_cmp);
        println!(
            "fan-out to {subscribed} sockets over {} rounds: median {:.1} ms, best {:.1} ms, worst {:.1} ms",
            rounds.len(),
            rounds[rounds.len() / 2],
            rounds[0],
            rounds[rounds.len() - 1]
        );
        stop.cancel();
        for task in tasks {
            let _ = task.await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_send_time_is_read_from_an_event_message() {
        let text = r#"{"type":"event","stream":"s","seq":1,"event":{"id":"x","payload":{"sent_us":1234567},"seq":1}}"#;
        assert_eq!(super::sent_us(text), Some(1_234_567));
        assert_eq!(super::sent_us(r#"{"type":"event"}"#), None);
    }
}
