//! `herald bench webhooks`: webhook delivery measured the way a user meets it.
//!
//! The benchmark runs its own receiver (answers 204 at once) and starts its own Herald
//! processes (this same binary, `herald serve`), each phase on a fresh database, so that
//! nothing warm is measured:
//!
//! - **load**: a delivering Herald; `--clients` publishers post single events back to back
//!   for `--load`. Reports events accepted/s, webhooks received/s *during* the load, and how
//!   long the backlog took to clear once the load stopped.
//! - **drain**: an API-only Herald (`HERALD_DELIVERY_CONCURRENCY=0`) queues `--backlog`
//!   events through the API and stops; a freshly started delivering Herald drains them.
//!   Reports deliveries/s from its start to the last webhook.
//! - **latency**: a delivering Herald; a steady `--latency-rate` events/s for
//!   `--latency-duration`. Reports publish-to-receive p50/p99.
//!
//! Each phase also reports the CPU used by Herald and by PostgreSQL (every `postgres`
//! process on the machine, read from `/proc`), and PostgreSQL's CPU per delivery. With
//! `--admin-url` each phase gets a scratch database on that server (dropped after);
//! without, Herald runs its embedded PostgreSQL in a fresh temporary directory.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::{Context as _, bail};
use clap::Args;
use rand::Rng as _;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::domain::units::parse_duration;

/// Options of `herald bench webhooks`.
#[derive(Debug, Args)]
pub struct WebhooksOptions {
    /// A PostgreSQL URL whose user may create databases (for example
    /// `postgres://postgres@127.0.0.1/postgres`): each phase runs on a scratch database
    /// there. Without it, each phase runs Herald's embedded PostgreSQL in a temporary
    /// directory.
    #[arg(long, env = "HERALD_BENCH_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// Phases to run, in order: `load`, `drain`, `latency`.
    #[arg(long, default_value = "load,drain,latency", value_delimiter = ',')]
    pub phases: Vec<String>,
    /// Publishers in the load phase, each posting back to back.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// How long the load phase publishes.
    #[arg(long, default_value = "25s", value_parser = parse_duration)]
    pub load: Duration,
    /// Events queued by the API-only instance in the drain phase.
    #[arg(long, default_value_t = 20_000)]
    pub backlog: usize,
    /// Events per second in the latency phase.
    #[arg(long, default_value_t = 200)]
    pub latency_rate: u32,
    /// How long the latency phase publishes.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub latency_duration: Duration,
}

/// What the receiver saw.
#[derive(Debug, Default)]
struct Seen {
    ids: HashSet<String>,
    latencies_us: Vec<u64>,
    /// When the latest new id arrived.
    last_new: Option<Instant>,
}

/// The receiver: answers 204 at once and notes what arrived.
async fn receive(
    req: actix_web::HttpRequest,
    body: web::Bytes,
    seen: web::Data<Mutex<Seen>>,
) -> HttpResponse {
    let received = super::now_us();
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
    if seen.ids.insert(id) {
        seen.last_new = Some(Instant::now());
    }
    if let Some(sent) = sent {
        seen.latencies_us.push(received.saturating_sub(sent));
    }
    HttpResponse::NoContent().finish()
}

/// CPU time (user + system) of processes, from `/proc/<pid>/stat`, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Total CPU seconds of every process named `postgres` (the server and its backends).
fn postgres_cpu() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "postgres")
        })
        .filter_map(cpu_seconds)
        .sum()
}

/// CPU use over a measured window.
struct CpuWindow {
    at: Instant,
    postgres: f64,
    herald: f64,
    herald_pid: u32,
}

impl CpuWindow {
    fn start(herald_pid: u32) -> Self {
        Self {
            at: Instant::now(),
            postgres: postgres_cpu(),
            herald: cpu_seconds(herald_pid).unwrap_or(0.0),
            herald_pid,
        }
    }

    /// (seconds, PostgreSQL CPU seconds, Herald CPU seconds) since the start.
    fn end(&self) -> (f64, f64, f64) {
        (
            self.at.elapsed().as_secs_f64(),
            postgres_cpu() - self.postgres,
            cpu_seconds(self.herald_pid).unwrap_or(self.herald) - self.herald,
        )
    }
}

/// A Herald process started by the benchmark.
struct Herald {
    child: Child,
    pid: u32,
    base: String,
}

/// Where a phase's Herald keeps its data.
struct Store {
    /// `DATABASE_URL` for Herald, or `None` for an embedded cluster in `dir`.
    database_url: Option<String>,
    dir: Option<TempDir>,
    /// The scratch database to drop afterwards.
    scratch: Option<(String, String)>,
}

/// A temporary directory, removed when dropped (the embedded cluster's home).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Bench {
    options: WebhooksOptions,
    client: reqwest::Client,
    key: String,
    seen: Arc<Mutex<Seen>>,
    receiver_url: String,
}

impl Bench {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn received(&self) -> usize {
        self.seen().ids.len()
    }

    async fn store(&self, name: &str) -> anyhow::Result<Store> {
        match &self.options.admin_url {
            Some(admin) => {
                let db = format!("herald_bench_{name}_{:08x}", rand::rng().random::<u32>());
                admin_sql(admin, &format!("CREATE DATABASE {db}")).await?;
                let mut url = url::Url::parse(admin).context("--admin-url is not a URL")?;
                url.set_path(&format!("/{db}"));
                Ok(Store {
                    database_url: Some(url.to_string()),
                    dir: None,
                    scratch: Some((admin.clone(), db)),
                })
            }
            None => {
                let dir = std::env::temp_dir().join(format!(
                    "herald-bench-{name}-{:08x}",
                    rand::rng().random::<u32>()
                ));
                std::fs::create_dir_all(&dir)?;
                Ok(Store {
                    database_url: None,
                    dir: Some(TempDir(dir)),
                    scratch: None,
                })
            }
        }
    }

    async fn drop_store(&self, store: Store) {
        if let Some((admin, db)) = &store.scratch
            && let Err(err) = admin_sql(admin, &format!("DROP DATABASE IF EXISTS {db}")).await
        {
            eprintln!("could not drop {db}: {err}");
        }
        drop(store);
    }

    /// Starts `herald serve` on `store` and waits until it is ready.
    async fn start(&self, store: &Store, deliver: bool) -> anyhow::Result<Herald> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("serve")
            .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
            .env("HERALD_ADMIN_KEY", &self.key)
            .env("HERALD_ALLOWED_DESTINATIONS", "127.0.0.0/8")
            .env("RUST_LOG", "warn")
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if !deliver {
            command.env("HERALD_DELIVERY_CONCURRENCY", "0");
        }
        match (&store.database_url, &store.dir) {
            (Some(url), _) => {
                command.env("DATABASE_URL", url);
            }
            (None, Some(dir)) => {
                command.env("HERALD_DATA_DIR", &dir.0);
            }
            (None, None) => bail!("no database for Herald"),
        }
        let child = command.spawn().context("could not start herald serve")?;
        let pid = child.id().context("herald exited at once")?;
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self
                .client
                .get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!("herald serve did not become ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Herald { child, pid, base })
    }

    /// Stops a Herald with SIGTERM (it finishes what it has in flight) and waits for it.
    async fn stop(&self, mut herald: Herald) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(herald.pid.to_string())
            .status()
            .await?;
        if !status.success() {
            herald.child.kill().await?;
        }
        tokio::time::timeout(Duration::from_secs(60), herald.child.wait())
            .await
            .context("herald did not stop within 60 s")??;
        Ok(())
    }

    async fn create_endpoint(&self, herald: &Herald) -> anyhow::Result<()> {
        let response = self
            .client
            .post(format!("{}/v1/endpoints", herald.base))
            .bearer_auth(&self.key)
            .json(&json!({"url": self.receiver_url, "description": "herald bench webhooks"}))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("creating the endpoint: HTTP {}", response.status());
        }
        Ok(())
    }

    /// `clients` publishers posting single events back to back until `until`, or until
    /// `count` events were accepted in all. Returns how many were accepted.
    async fn publish_closed_loop(
        &self,
        herald: &Herald,
        clients: usize,
        until: Instant,
        count: Option<u64>,
    ) -> u64 {
        let accepted = Arc::new(AtomicU64::new(0));
        let issued = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (client, key, accepted, issued) = (
                    self.client.clone(),
                    self.key.clone(),
                    accepted.clone(),
                    issued.clone(),
                );
                let url = format!("{}/v1/events", herald.base);
                tokio::spawn(async move {
                    while Instant::now() < until {
                        if count.is_some_and(|c| issued.fetch_add(1, Ordering::Relaxed) >= c) {
                            return;
                        }
                        let ok = client
                            .post(&url)
                            .bearer_auth(&key)
                            .json(&json!({"stream": "bench", "type": "bench.event",
                                          "payload": {"sent_us": super::now_us(), "pad": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}}))
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success());
                        if ok {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
        accepted.load(Ordering::Relaxed)
    }

    /// Waits until `n` distinct events have arrived, or nothing new arrived for 30 s.
    /// Returns when the last one arrived, if all did.
    async fn wait_for(&self, n: usize) -> Option<Instant> {
        let mut last_progress = (self.received(), Instant::now());
        loop {
            let (got, last_new) = {
                let seen = self.seen();
                (seen.ids.len(), seen.last_new)
            };
            if got >= n {
                return last_new;
            }
            if got != last_progress.0 {
                last_progress = (got, Instant::now());
            } else if last_progress.1.elapsed() > Duration::from_secs(30) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn reset(&self) {
        *self.seen() = Seen::default();
    }

    async fn load(&self) -> anyhow::Result<()> {
        let store = self.store("load").await?;
        let herald = self.start(&store, true).await?;
        self.create_endpoint(&herald).await?;
        self.reset();
        let cpu = CpuWindow::start(herald.pid);
        let until = Instant::now() + self.options.load;
        let accepted = self
            .publish_closed_loop(&herald, self.options.clients, until, None)
            .await;
        let (secs, pg, server) = cpu.end();
        let during = self.received();
        let ended = Instant::now();
        let last = self.wait_for(usize::try_from(accepted).unwrap_or(0)).await;
        println!(
            "load: {} clients for {secs:.1} s: {accepted} events accepted ({:.0}/s); {during} webhooks \
             received during the load ({:.0}/s); backlog left {}; PostgreSQL {:.2} cores, Herald {:.2} \
             cores during the load; PostgreSQL {:.3} ms of CPU per event",
            self.options.clients,
            accepted as f64 / secs,
            during as f64 / secs,
            match last {
                Some(last) => format!(
                    "{:.3} s",
                    last.saturating_duration_since(ended).as_secs_f64()
                ),
                None => "NOT DRAINED".to_owned(),
            },
            pg / secs,
            server / secs,
            pg * 1000.0 / accepted.max(1) as f64,
        );
        self.stop(herald).await?;
        self.drop_store(store).await;
        Ok(())
    }

    async fn drain(&self) -> anyhow::Result<()> {
        let store = self.store("drain").await?;
        let api = self.start(&store, false).await?;
        self.create_endpoint(&api).await?;
        let until = Instant::now() + Duration::from_secs(3600);
        let backlog = self.options.backlog as u64;
        let queued = self
            .publish_closed_loop(&api, self.options.clients, until, Some(backlog))
            .await;
        self.stop(api).await?;
        self.reset();
        let started = Instant::now();
        let worker = self.start(&store, true).await?;
        let cpu = CpuWindow::start(worker.pid);
        let ready = started.elapsed();
        let last = self.wait_for(usize::try_from(queued).unwrap_or(0)).await;
        let (_, pg, server) = cpu.end();
        match last {
            Some(last) => {
                let secs = last.saturating_duration_since(started).as_secs_f64();
                println!(
                    "drain: {queued} events queued by an API-only instance, drained by a fresh one in \
                     {secs:.2} s from its start ({:.2} s to ready) = {:.0} deliveries/s; PostgreSQL \
                     {:.3} ms of CPU per delivery, Herald {:.3} ms",
                    ready.as_secs_f64(),
                    queued as f64 / secs,
                    pg * 1000.0 / queued.max(1) as f64,
                    server * 1000.0 / queued.max(1) as f64,
                );
            }
            None => println!(
                "drain: NOT DRAINED: {} of {queued} after no progress for 30 s",
                self.received()
            ),
        }
        self.stop(worker).await?;
        self.drop_store(store).await;
        Ok(())
    }

    async fn latency(&self) -> anyhow::Result<()> {
        let store = self.store("latency").await?;
        let herald = self.start(&store, true).await?;
        self.create_endpoint(&herald).await?;
        self.reset();
        let rate = self.options.latency_rate.max(1);
        let cpu = CpuWindow::start(herald.pid);
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        let deadline = Instant::now() + self.options.latency_duration;
        let mut tasks = Vec::new();
        while Instant::now() < deadline {
            ticker.tick().await;
            let (client, key) = (self.client.clone(), self.key.clone());
            let url = format!("{}/v1/events", herald.base);
            tasks.push(tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(key)
                    .json(&json!({"stream": "bench", "type": "bench.event",
                                  "payload": {"sent_us": super::now_us()}}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }));
        }
        let mut published = 0_u64;
        for task in tasks {
            published += u64::from(task.await.unwrap_or(false));
        }
        let (secs, pg, server) = cpu.end();
        self.wait_for(usize::try_from(published).unwrap_or(0)).await;
        let mut latencies = std::mem::take(&mut self.seen().latencies_us);
        latencies.sort_unstable();
        println!(
            "latency: {published} events at {rate}/s: publish-to-receive p50 {:.2} ms, p99 {:.2} ms, \
             max {:.2} ms; PostgreSQL {:.3} cores, Herald {:.3} cores",
            super::percentile(&latencies, 50.0),
            super::percentile(&latencies, 99.0),
            super::percentile(&latencies, 100.0),
            pg / secs,
            server / secs,
        );
        self.stop(herald).await?;
        self.drop_store(store).await;
        Ok(())
    }
}

/// Runs one statement on the admin connection.
async fn admin_sql(admin_url: &str, sql: &str) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .context("connecting to --admin-url")?;
    let task = tokio::spawn(connection);
    client.batch_execute(sql).await?;
    drop(client);
    let _ = task.await;
    Ok(())
}

/// Runs the webhook benchmark.
pub async fn run(options: WebhooksOptions) -> anyhow::Result<()> {
    for phase in &options.phases {
        if !["load", "drain", "latency"].contains(&phase.as_str()) {
            bail!("unknown phase {phase:?}: use load, drain, latency");
        }
    }
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
    let key: String = format!("hrld_bench_{:032x}", rand::rng().random::<u128>());
    let bench = Bench {
        client: super::client(options.clients.max(64))?,
        key,
        seen,
        receiver_url: format!("http://127.0.0.1:{port}/hook"),
        options,
    };
    let exe: PathBuf = std::env::current_exe()?;
    println!(
        "herald bench webhooks: {} (each phase on a fresh database and a fresh herald serve)",
        exe.display()
    );
    for phase in bench.options.phases.clone() {
        match phase.as_str() {
            "load" => bench.load().await?,
            "drain" => bench.drain().await?,
            _ => bench.latency().await?,
        }
    }
    Ok(())
}
