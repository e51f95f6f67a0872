//! `herald bench ...`: load generators that report throughput, latency, memory and CPU.
//! `ingest`, `longpoll` and `websockets` drive a running Herald over HTTP; `webhooks` starts its own
//! Herald processes (one phase needs two in turn); `fill` writes history into a database; `views` times the operator's calls. They are tools, not tests: run them on a
//! release build and record the figures with the exact command in `docs/benchmarks.md`.

mod fill;
mod ingest;
mod longpoll;
mod views;
mod webhooks;
mod websockets;

use anyhow::Context as _;
use clap::Subcommand;

pub use fill::FillOptions;
pub use ingest::IngestOptions;
pub use longpoll::LongpollOptions;
pub use views::ViewsOptions;
pub use webhooks::WebhooksOptions;
pub use websockets::WebsocketsOptions;

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Fill a database with history (events, deliveries, attempts) through SQL, for
    /// measuring the operator views as tables grow.
    Fill(FillOptions),
    /// Publish events as fast as N concurrent clients can, singly or in batches.
    Ingest(IngestOptions),
    /// Hold N long-polls over M streams; measure RSS, publish-to-answer latency and fan-out.
    Longpoll(LongpollOptions),
    /// Webhook delivery as a user meets it: delivered throughput under saturating load,
    /// the drain of a backlog queued by another process, latency at a steady rate, and
    /// PostgreSQL CPU; starts its own Herald processes and receiver.
    Webhooks(WebhooksOptions),
    /// Hold N WebSockets following M streams each; measure memory per socket and per
    /// subscription, publish-to-receive latency at a steady rate, and fan-out.
    Websockets(WebsocketsOptions),
    /// Time the operator's calls (console pages, delivery filters, replay preview,
    /// endpoints, /metrics) against a running Herald: p50, p99 and max per call.
    Views(ViewsOptions),
}

/// Runs a benchmark.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Fill(options) => fill::run(options).await,
        BenchCommand::Ingest(options) => ingest::run(options).await,
        BenchCommand::Longpoll(options) => longpoll::run(options).await,
        BenchCommand::Webhooks(options) => webhooks::run(options).await,
        BenchCommand::Views(options) => views::run(options).await,
        BenchCommand::Websockets(options) => websockets::run(options).await,
    }
}

/// An HTTP client for load generation: no proxies, a connection per concurrent request.
fn client(connections: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .no_proxy()
        .build()?)
}

/// Microseconds since the Unix epoch: what benchmark events carry as `sent_us`.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Publishes one `bench.tick` event to `stream` carrying its send time; whether it was
/// stored.
async fn publish(client: &reqwest::Client, base: &str, key: &str, stream: &str) -> bool {
    client
        .post(format!("{base}/v1/events"))
        .bearer_auth(key)
        .json(&serde_json::json!({"stream": stream, "type": "bench.tick", "payload": {"sent_us": now_us()}}))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// A counter or gauge from Herald's `/metrics`.
async fn metric(client: &reqwest::Client, base: &str, name: &str) -> Option<u64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Checks `/readyz`; returns the base URL without a trailing slash.
async fn ready(client: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let base = url.trim_end_matches('/').to_owned();
    client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("Herald at {base} is not ready"))?;
    Ok(base)
}

/// The `p`th percentile of sorted microsecond samples, in milliseconds.
pub fn percentile(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted_us.len() as f64)).ceil() as usize;
    let index = rank.clamp(1, sorted_us.len()) - 1;
    sorted_us[index] as f64 / 1000.0
}

/// Resident memory of process `pid` in MiB, from `/proc`.
fn rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmRSS:")
}

/// The anonymous part of it (the heap and stacks: what Herald allocates), in MiB. The rest
/// is file-backed, mostly the executable's own pages, which the kernel may map in large
/// folios and can drop at will.
fn rss_anon_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "RssAnon:")
}

fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// CPU time process `pid` has run, in milliseconds: the sum over its threads of the
/// scheduler's nanosecond count (`/proc/<pid>/task/*/schedstat`), fine enough to time a
/// window of a few milliseconds (`/proc/<pid>/stat` counts in 10 ms ticks).
fn cpu_ms(pid: u32) -> Option<f64> {
    let mut ns = 0_u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(ns as f64 / 1e6)
}

/// CPU used over a window by Herald (when its pid is known) and by this process.
struct CpuWindow {
    herald: Option<(u32, f64)>,
    own: Option<f64>,
}

impl CpuWindow {
    /// Starts the window now.
    fn start(herald: Option<u32>) -> Self {
        Self {
            herald: herald.and_then(|pid| Some((pid, cpu_ms(pid)?))),
            own: cpu_ms(std::process::id()),
        }
    }

    /// Milliseconds of CPU since [`CpuWindow::start`]: Herald's, then this process's.
    fn elapsed(&self) -> (Option<f64>, Option<f64>) {
        let herald = self
            .herald
            .and_then(|(pid, before)| Some(cpu_ms(pid)? - before));
        let own = self
            .own
            .and_then(|before| Some(cpu_ms(std::process::id())? - before));
        (herald, own)
    }
}

/// "RSS 141.5 MiB (anonymous 130.2 MiB)".
fn memory(pid: u32) -> Option<String> {
    let rss = rss_mib(pid)?;
    Some(match rss_anon_mib(pid) {
        Some(anon) => format!("{rss:.1} MiB (anonymous {anon:.1} MiB)"),
        None => format!("{rss:.1} MiB"),
    })
}

/// The pid of the `herald serve` process on this machine, if exactly one runs.
fn find_herald_pid() -> Option<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_herald = args.first().is_some_and(|a| a.ends_with(b"herald"));
        if is_herald && args.iter().any(|a| *a == b"serve") {
            found.push(pid);
        }
    }
    (found.len() == 1).then(|| found[0])
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<u64> = (1..=100).map(|n| n * 1000).collect();
        assert_eq!(percentile(&samples, 50.0), 50.0);
        assert_eq!(percentile(&samples, 99.0), 99.0);
        assert_eq!(percentile(&samples, 100.0), 100.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
