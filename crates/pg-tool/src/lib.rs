//! pg-tool: what the tools here that talk to PostgreSQL share (job-pub's job table,
//! backend-sub's sink).
//!
//! - [`Database`]: a URL checked into a connection config, its password never from a flag
//!   (from the environment or a file), and a form without the password for reports and logs.
//! - [`pool`]: a deadpool of tokio-postgres connections, counted in [`CONNECTIONS_OPENED`].
//! - [`DbError`]: transient (the connection, the server restarting) told apart from fatal
//!   (the SQL, a missing table, bad credentials), and [`retry`] through the transient ones.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use mqtt_tool::Error;
use tokio_postgres::NoTls;

/// A database to connect to, checked.
#[derive(Debug, Clone)]
pub struct Database {
    pub config: tokio_postgres::Config,
    /// The URL without its password, for reports and errors.
    pub shown: String,
    /// The flag that bounds how long [`retry`] tries, named when it gives up.
    pub timeout_flag: &'static str,
}

impl Database {
    /// Checks `url` (given by `flag`, or by an environment variable when `url_from_env`): a
    /// password inside it only from the environment, else from `password_file` or
    /// `PGPASSWORD`; a database name required. `password_flag` names the file's flag.
    pub fn from_url(
        url: &str,
        flag: &str,
        url_from_env: bool,
        password_file: Option<&Path>,
        password_flag: &str,
    ) -> Result<Database, Error> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            Error::usage(format!(
                "{flag} is not a PostgreSQL URL ({e}); write postgres://USER@HOST:PORT/DB"
            ))
        })?;
        if config.get_password().is_some() && !url_from_env {
            return Err(Error::usage(format!(
                "{flag} holds a password, which would show in the process list; give it in PGPASSWORD or {password_flag}"
            )));
        }
        if let Some(f) = password_file {
            let text =
                mqtt_tool::out::read_bounded(f, 4096, &format!("password file {}", f.display()))?;
            let pw = text.lines().next().unwrap_or("").to_string();
            if pw.is_empty() {
                return Err(Error::usage(format!(
                    "password file {} is empty",
                    f.display()
                )));
            }
            config.password(pw);
        } else if config.get_password().is_none() {
            if let Ok(pw) = std::env::var("PGPASSWORD") {
                config.password(pw);
            }
        }
        if config.get_dbname().is_none() {
            return Err(Error::usage(format!(
                "{flag} names no database; write postgres://USER@HOST:PORT/DB"
            )));
        }
        // A server gone silent (a half-open connection) must fail a statement, not hang it.
        // (about 25 s; the URL's own settings win).
        if !url.contains("keepalives") {
            config.keepalives(true);
            config.keepalives_idle(Duration::from_secs(10));
            config.keepalives_interval(Duration::from_secs(5));
            config.keepalives_retries(3);
        }
        // Data sent and never acknowledged (a COPY into a network gone dead) fails within
        // this, not TCP's quarter of an hour of retransmissions.
        if !url.contains("tcp_user_timeout") {
            config.tcp_user_timeout(Duration::from_secs(30));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        Ok(Database {
            shown: show(&config),
            config,
            timeout_flag: "--db-timeout",
        })
    }
}

/// `postgres://user@host:port/db`, no password.
pub fn show(c: &tokio_postgres::Config) -> String {
    let host = c
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        c.get_user().unwrap_or(""),
        c.get_dbname().unwrap_or("")
    )
}

/// Checks that `name` (given by `flag`) is a plain table name, safe to put into SQL as is.
pub fn check_table_name(flag: &str, name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "{flag} '{}' is not a plain table name; use letters, digits and _",
            mqtt_tool::out::escape(name)
        )))
    }
}

/// Database connections opened by the pools of this process: more than one in a sequential
/// run means a lost connection was replaced.
pub static CONNECTIONS_OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn pool(db: &Database, size: usize) -> Result<Pool, Error> {
    let mgr = Manager::from_config(
        db.config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(Duration::from_secs(5)))
        .wait_timeout(Some(Duration::from_secs(10)))
        .post_create(deadpool_postgres::Hook::sync_fn(|_, _| {
            CONNECTIONS_OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }))
        .build()
        .map_err(|e| Error::Other(format!("cannot make the database pool: {e}")))
}

/// Whether an error may pass (the connection, the server restarting) or is for good (the
/// SQL, a missing table, bad credentials).
fn transient(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        // A closed connection, or one that failed on its socket; not a type or protocol
        // error, which would only fail again.
        None => {
            e.is_closed()
                || std::iter::successors(std::error::Error::source(e), |s| s.source())
                    .any(|s| s.is::<std::io::Error>())
                || e.to_string().contains("timed out")
        }
        Some(db) => {
            let code = db.code().code();
            // 08: connection exceptions; 57P: shutdown, crash, cannot connect now; 53:
            // insufficient resources; 40001/40P01: serialization, deadlock.
            code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code == "40001"
                || code == "40P01"
        }
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(c) = src {
                s.push_str(&format!(": {c}"));
                src = c.source();
            }
            s
        }
    }
}

/// What went wrong with the database.
#[derive(Debug)]
pub enum DbError {
    /// Lost or unreachable: try again.
    Transient(String),
    /// For good.
    Fatal(String),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        if transient(&e) {
            DbError::Transient(describe(&e))
        } else {
            DbError::Fatal(describe(&e))
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => DbError::Transient(other.to_string()),
        }
    }
}

/// Retries `op` through transient failures, with jittered exponential backoff from 100 ms
/// to 5 s, for at most `give_up`; counts each retry in `retries`. A fatal failure, or one
/// that lasts, is an error naming `db` and what was being done.
pub async fn retry<T, F, Fut>(
    db: &Database,
    what: &str,
    give_up: Duration,
    retries: &mut u64,
    mut op: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DbError>>,
{
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut said = false;
    loop {
        match op().await {
            Ok(v) => {
                if said {
                    mqtt_tool::errln!("the database is back ({what})");
                }
                return Ok(v);
            }
            Err(DbError::Fatal(why)) => {
                return Err(Error::Other(format!(
                    "database {}: {what}: {why}",
                    db.shown
                )))
            }
            Err(DbError::Transient(why)) => {
                if started.elapsed() >= give_up {
                    return Err(Error::DatabaseUnreachable {
                        database: db.shown.clone(),
                        reason: format!(
                            "{what}: {why} (for {}, {})",
                            humantime::format_duration(Duration::from_secs(
                                started.elapsed().as_secs()
                            )),
                            db.timeout_flag
                        ),
                    });
                }
                if !said {
                    mqtt_tool::errln!("database {}: {what}: {why}; retrying", db.shown);
                    said = true;
                }
                *retries += 1;
                let jitter = 0.5 + (started.elapsed().subsec_nanos() % 1000) as f64 / 1000.0;
                tokio::time::sleep(backoff.mul_f64(jitter)).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
