//! The embedded PostgreSQL: with no `DATABASE_URL`, Herald runs its own cluster.
//!
//! It uses the PostgreSQL binaries installed on the machine (found on `PATH`, through
//! `pg_config --bindir`, or under `/usr/lib/postgresql/<version>/bin`), creates a cluster
//! under `<HERALD_DATA_DIR>/pg` on first run, and starts it listening only on a Unix socket
//! in `<HERALD_DATA_DIR>/run` (no TCP port, so nothing else on the machine can reach it
//! unless it can read that directory). Later runs reuse the cluster; a cluster that is
//! already running (another instance, or a crashed run) is used as it is and left running.
//!
//! `initdb` and `postgres` refuse to run as root, so when Herald runs as root the cluster
//! belongs to the `postgres` system user and its commands run through `runuser`.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context as _, anyhow, bail};
use tokio::process::Command;

/// The database Herald creates inside its cluster.
pub const DATABASE_NAME: &str = "herald";
/// The superuser `initdb` creates.
const SUPERUSER: &str = "herald";
/// Unix socket paths are limited to 107 bytes; the socket file name takes 16 of them.
const MAX_SOCKET_DIR_LEN: usize = 90;

/// How the cluster is tuned.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbeddedOptions {
    /// Turn off `fsync` and `synchronous_commit`: for throwaway test clusters only.
    pub unsafe_fast: bool,
    /// `max_connections` (PostgreSQL's default is 100).
    pub max_connections: Option<u32>,
}

/// A running embedded cluster.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    cluster_dir: PathBuf,
    socket_dir: PathBuf,
    run_as: Option<String>,
    started_here: bool,
}

impl EmbeddedPostgres {
    /// Creates (first run) and starts the cluster under `data_dir`, and makes sure the
    /// `herald` database exists.
    pub async fn start(data_dir: &Path, options: EmbeddedOptions) -> anyhow::Result<Self> {
        let bin_dir = find_bin_dir().await?;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create HERALD_DATA_DIR {}", data_dir.display()))?;
        let data_dir = data_dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", data_dir.display()))?;
        let cluster_dir = data_dir.join("pg");
        let socket_dir = data_dir.join("run");
        if socket_dir.as_os_str().len() > MAX_SOCKET_DIR_LEN {
            bail!(
                "HERALD_DATA_DIR {} is too long for a Unix socket path; choose a shorter one",
                data_dir.display()
            );
        }
        let run_as = if running_as_root() {
            Some("postgres".to_owned())
        } else {
            None
        };
        let pg = Self {
            bin_dir,
            cluster_dir,
            socket_dir,
            run_as,
            started_here: false,
        };
        pg.prepare_dirs(&data_dir)?;
        if !pg.cluster_dir.join("PG_VERSION").exists() {
            pg.initdb(options).await?;
        }
        let pg = pg.ensure_running(options).await?;
        pg.ensure_database().await?;
        Ok(pg)
    }

    /// The connection URL for `database` in this cluster.
    pub fn database_url(&self, database: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}@localhost/{database}?host={}",
            self.socket_dir.display()
        )
    }

    /// Stops the cluster if this process started it; a cluster that was already running is
    /// left as it was.
    pub async fn stop(self) -> anyhow::Result<()> {
        if !self.started_here {
            return Ok(());
        }
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.cluster_dir)
            .args(["-m", "fast", "-w", "stop"])
            .output()
            .await?;
        check(&out, "pg_ctl stop")
    }

    fn prepare_dirs(&self, data_dir: &Path) -> anyhow::Result<()> {
        for dir in [&self.cluster_dir, &self.socket_dir] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        if let Some(user) = &self.run_as {
            let (uid, gid) = user_ids(user).with_context(|| {
                format!(
                    "Herald runs as root, so its embedded PostgreSQL must run as the `{user}` \
                     system user, which does not exist (install PostgreSQL from your \
                     distribution's packages, or set DATABASE_URL)"
                )
            })?;
            // The postgres user must be able to reach its directories.
            let mode = std::fs::metadata(data_dir)?.permissions().mode();
            if mode & 0o001 == 0 {
                std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(mode | 0o711))?;
            }
            for dir in [&self.cluster_dir, &self.socket_dir] {
                chown_tree(dir, uid, gid)?;
            }
            let reachable = std::process::Command::new("runuser")
                .args(["-u", user, "--", "test", "-x"])
                .arg(&self.cluster_dir)
                .status()
                .is_ok_and(|s| s.success());
            if !reachable {
                bail!(
                    "the `{user}` user cannot reach {}: every directory above it must be \
                     searchable by `{user}` (chmod o+x), or choose another HERALD_DATA_DIR",
                    self.cluster_dir.display()
                );
            }
        }
        Ok(())
    }

    async fn initdb(&self, options: EmbeddedOptions) -> anyhow::Result<()> {
        tracing::info!(dir = %self.cluster_dir.display(), "creating the embedded PostgreSQL cluster");
        let mut cmd = self.pg_command("initdb");
        cmd.arg("-D").arg(&self.cluster_dir).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        ]);
        if options.unsafe_fast {
            cmd.arg("--no-sync");
        }
        let out = cmd.output().await?;
        check(&out, "initdb")
    }

    async fn is_running(&self) -> anyhow::Result<bool> {
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.cluster_dir)
            .arg("status")
            .output()
            .await?;
        Ok(out.status.success())
    }

    async fn ensure_running(mut self, options: EmbeddedOptions) -> anyhow::Result<Self> {
        if self.is_running().await? {
            tracing::info!("using the embedded PostgreSQL that is already running");
            return Ok(self);
        }
        let mut server_options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c unix_socket_permissions=0700",
            self.socket_dir.display()
        );
        if let Some(max) = options.max_connections {
            server_options.push_str(&format!(" -c max_connections={max}"));
        }
        if options.unsafe_fast {
            server_options
                .push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.cluster_dir)
            .arg("-l")
            .arg(self.socket_dir.join("postgresql.log"))
            .args(["-w", "-t", "60", "-o", &server_options, "start"])
            .output()
            .await?;
        if !out.status.success() {
            // Another instance may have started it at the same moment.
            if self.is_running().await? {
                return Ok(self);
            }
            let log =
                std::fs::read_to_string(self.socket_dir.join("postgresql.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            check(&out, "pg_ctl start").with_context(|| {
                format!(
                    "the embedded PostgreSQL did not start; its log ends with:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })?;
        }
        tracing::info!(socket = %self.socket_dir.display(), "started the embedded PostgreSQL");
        self.started_here = true;
        Ok(self)
    }

    async fn ensure_database(&self) -> anyhow::Result<()> {
        let (client, connection) =
            tokio_postgres::connect(&self.database_url("postgres"), tokio_postgres::NoTls)
                .await
                .context("cannot connect to the embedded PostgreSQL")?;
        let driver = tokio::spawn(connection);
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&DATABASE_NAME],
            )
            .await?
            .is_some();
        if !exists {
            client
                .batch_execute(&format!("CREATE DATABASE {DATABASE_NAME}"))
                .await
                .or_else(|e| {
                    // A concurrent start created it first.
                    if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
        }
        drop(client);
        driver.abort();
        Ok(())
    }

    fn pg_command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(path);
                cmd
            }
            None => Command::new(path),
        };
        // pg_ctl start leaves the server running; it must not hold our stdout open.
        cmd.stdin(std::process::Stdio::null()).kill_on_drop(false);
        cmd
    }
}

fn check(out: &Output, what: &str) -> anyhow::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(anyhow!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    ))
}

fn running_as_root() -> bool {
    // /proc/self belongs to the effective user of this process.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn user_ids(user: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&user))
        .and_then(|fields| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
        .ok_or_else(|| anyhow!("no user {user} in /etc/passwd"))
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.uid() == uid {
            continue;
        }
        if meta.is_dir() {
            chown_tree(&entry.path(), uid, gid)?;
        } else {
            std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// Finds the directory holding `initdb`, `pg_ctl` and `postgres`.
async fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_all(&dir) {
                return Ok(dir);
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output().await
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_all(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_all(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or_else(|| {
        anyhow!(
            "no DATABASE_URL is set and no PostgreSQL server binaries (initdb, pg_ctl, postgres) \
             were found on PATH, through pg_config, or under /usr/lib/postgresql/*/bin.\n\
             Either install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`; \
             Fedora: `dnf install postgresql-server`; macOS: `brew install postgresql`) so that \
             Herald can run its own embedded cluster, or point Herald at an existing server \
             with DATABASE_URL=postgres://user:password@host/dbname"
        )
    })
}
