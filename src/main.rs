//! The `herald` command: wiring only.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use herald::config::Settings;
use herald::db::embedded::{DATABASE_NAME, EmbeddedOptions, EmbeddedPostgres};
use herald::startup::Application;

/// jemalloc keeps the resident memory of many idle connections low: their 8 KiB buffers
/// are allocated but mostly untouched, and jemalloc keeps its metadata apart from them,
/// while glibc's malloc writes headers beside each one and so touches every page
/// (measured in docs/benchmarks.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Durable notification delivery on PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default deployment).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Benchmarks against a running Herald.
    Bench {
        #[command(subcommand)]
        command: herald::bench::BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create a key and print it (it is shown only this once).
    Create {
        /// admin, publisher or subscriber.
        #[arg(long)]
        role: String,
        /// For subscribers: a stream-name prefix the key may read (repeatable).
        #[arg(long = "stream-prefix")]
        stream_prefixes: Vec<String>,
        /// Free text to tell keys apart.
        #[arg(long, default_value = "")]
        description: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("herald: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("herald: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Bench { command } = cli.command {
        return herald::bench::run(command).await;
    }
    let settings = Settings::from_env()?;
    herald::telemetry::init(settings.log_format);
    let (database_url, embedded) = database(&settings).await?;
    let result = match cli.command {
        Command::Serve => serve(settings, &database_url).await,
        Command::Migrate => {
            let url = database_url.clone();
            tokio::task::spawn_blocking(move || herald::db::run_migrations(&url)).await?
        }
        Command::Key {
            command:
                KeyCommand::Create {
                    role,
                    stream_prefixes,
                    description,
                },
        } => {
            create_key(
                &settings,
                &database_url,
                &role,
                &stream_prefixes,
                description,
            )
            .await
        }
        Command::Bench { .. } => Ok(()),
    };
    if let Some(pg) = embedded
        && let Err(err) = pg.stop().await
    {
        tracing::warn!(error = %err, "could not stop the embedded PostgreSQL");
    }
    result
}

/// `DATABASE_URL`, or the embedded cluster's URL after starting it.
async fn database(settings: &Settings) -> anyhow::Result<(String, Option<EmbeddedPostgres>)> {
    if let Some(url) = &settings.database_url {
        return Ok((url.expose().to_owned(), None));
    }
    let pg = EmbeddedPostgres::start(&settings.data_dir, EmbeddedOptions::default())
        .await
        .context("starting the embedded PostgreSQL (set DATABASE_URL to use your own server)")?;
    Ok((pg.database_url(DATABASE_NAME), Some(pg)))
}

async fn serve(settings: Settings, database_url: &str) -> anyhow::Result<()> {
    let listen = settings.listen;
    // Each held connection uses two file descriptors (see streams::disconnect): take what
    // the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open file limit"),
        Err(err) => tracing::warn!(error = %err, "could not raise the open file limit"),
    }
    let mut app = Application::build(settings, database_url).await?;
    if let Some(key) = app.take_generated_admin_key() {
        println!(
            "\nCreated the first admin API key. It is shown only this once; store it now:\n\n    {}\n",
            key.expose()
        );
    }
    tracing::info!(%listen, port = app.port(), "Herald is serving");
    app.run_until_stopped().await?;
    tracing::info!("Herald stopped");
    Ok(())
}

async fn create_key(
    settings: &Settings,
    database_url: &str,
    role: &str,
    prefixes: &[String],
    description: String,
) -> anyhow::Result<()> {
    use herald::db::models::api_key::{self, ApiKey};
    use herald::domain::ApiKeySecret;

    let (role, prefixes) =
        herald::api::keys::parse_grant(role, prefixes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || herald::db::run_migrations(&url)).await??;
    let mut conn = herald::db::establish(database_url, settings.db_timeout).await?;
    let secret = ApiKeySecret::generate();
    api_key::insert(
        &mut conn,
        &ApiKey::new(&secret, role, prefixes, description),
    )
    .await?;
    println!("{}", secret.expose());
    Ok(())
}
