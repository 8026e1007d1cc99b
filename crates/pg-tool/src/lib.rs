//! pg-tool: what the tools here that talk to PostgreSQL share (job-pub's job table,
//! backend-sub's sink).
//!
//! - [`Database`]: a URL checked into a connection config, its password never from a flag
//!   (from the environment or a file), and a form without the password for reports and logs.
//! - [`pool`]: a deadpool of tokio-postgres connections, counted in [`CONNECTIONS_OPENED`].
//! - [`DbError`]: transient (the connection, the server restarting) told apart from a
//!   refusal (the password, the role, the database: by SQLSTATE, each with what to change)
//!   and from fatal (the SQL, a missing table), and [`retry`] through the transient ones.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use mqtt_tool::Error;
use mqtt_wire::Backoff;
use tokio_postgres::NoTls;

/// A database to connect to, checked.
#[derive(Debug, Clone)]
pub struct Database {
    pub config: tokio_postgres::Config,
    /// The URL without its password, for reports and errors.
    pub shown: String,
    /// The flag that gave the URL, and the one of the password file: errors say what to
    /// change by them.
    pub url_flag: String,
    pub password_flag: String,
    /// The flag of how long [`retry`] waits through an outage, when the tool has one.
    pub timeout_flag: Option<String>,
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
            url_flag: flag.to_string(),
            password_flag: password_flag.to_string(),
            timeout_flag: None,
        })
    }

    /// Names `flag` as the bound of [`retry`]'s wait in its errors.
    pub fn with_timeout_flag(mut self, flag: &str) -> Database {
        self.timeout_flag = Some(flag.to_string());
        self
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
    /// The server turned the connection away, and will again until something changes.
    Refused(Refusal),
    /// For good.
    Fatal(String),
}

/// Why the server turned a connection away: its SQLSTATE and message, or (no SQLSTATE) a
/// password the client had none to give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub sqlstate: String,
    pub message: String,
}

/// SQLSTATEs of a server refusing a connection: invalid authorization specification (a
/// role that does not exist or may not log in, pg_hba.conf), invalid password, no such
/// database.
const REFUSALS: [&str; 3] = ["28000", "28P01", "3D000"];

impl Refusal {
    /// The refusal and what to change, naming `db`'s flags.
    pub fn explain(&self, db: &Database) -> String {
        let user = db.config.get_user().unwrap_or("");
        let dbname = db.config.get_dbname().unwrap_or("");
        let (url, pw) = (&db.url_flag, &db.password_flag);
        let change = match self.sqlstate.as_str() {
            "" => format!("give the password in PGPASSWORD or {pw}"),
            "28P01" => format!("check the user in {url} and its password (PGPASSWORD or {pw})"),
            "3D000" => format!("create it (CREATE DATABASE {dbname}) or name another in {url}"),
            // One SQLSTATE for several causes: told apart by the server's (English) words,
            // with advice that fits them all otherwise.
            _ if self.message.contains("not permitted to log in") => {
                format!("let it log in (ALTER ROLE {user} LOGIN) or name another user in {url}")
            }
            _ if self.message.contains("does not exist") => format!(
                "create the role (CREATE ROLE {user} LOGIN PASSWORD '...') or name another user in {url}"
            ),
            _ if self.message.contains("pg_hba.conf") => format!(
                "add a line for this user, database and address to the server's pg_hba.conf, or connect as another user in {url}"
            ),
            _ => format!("check the user in {url} and the server's pg_hba.conf"),
        };
        if self.sqlstate.is_empty() {
            format!("{}; {change}", self.message)
        } else {
            format!("{} ({}); {change}", self.message, self.sqlstate)
        }
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            if REFUSALS.contains(&db.code().code()) {
                return DbError::Refused(Refusal {
                    sqlstate: db.code().code().to_string(),
                    message: db.message().to_string(),
                });
            }
        } else if e.to_string().contains("password missing") {
            // The server asked for a password and none was given.
            return DbError::Refused(Refusal {
                sqlstate: String::new(),
                message: "the server asks for a password and none was given".into(),
            });
        }
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
/// to 5 s, for at most `give_up`; counts each retry in `retries`. A refusal, a fatal
/// failure, or one that lasts, is an error naming `db` (and what was being done).
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
    // Jitter that differs between processes and between calls.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let seed = u64::from(std::process::id()) << 32 ^ nanos;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), seed);
    let mut said = false;
    loop {
        match op().await {
            Ok(v) => {
                if said {
                    mqtt_tool::errln!("the database is back ({what})");
                }
                return Ok(v);
            }
            Err(DbError::Refused(r)) => {
                return Err(Error::DatabaseRefused {
                    database: db.shown.clone(),
                    reason: r.explain(db),
                })
            }
            Err(DbError::Fatal(why)) => {
                return Err(Error::Other(format!(
                    "database {}: {what}: {why}",
                    db.shown
                )))
            }
            Err(DbError::Transient(why)) => {
                if started.elapsed() >= give_up {
                    let waited = humantime::format_duration(Duration::from_secs(
                        started.elapsed().as_secs(),
                    ));
                    return Err(Error::DatabaseUnreachable {
                        database: db.shown.clone(),
                        reason: match &db.timeout_flag {
                            Some(flag) => format!("{what}: {why} (for {waited}, {flag})"),
                            None => format!("{what}: {why} (for {waited})"),
                        },
                    });
                }
                if !said {
                    mqtt_tool::errln!("database {}: {what}: {why}; retrying", db.shown);
                    said = true;
                }
                *retries += 1;
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Database {
        Database::from_url(
            "postgres://app@db:5432/jobs",
            "--database-url",
            false,
            None,
            "--database-password-file",
        )
        .unwrap()
    }

    fn explain(sqlstate: &str, message: &str) -> String {
        Refusal {
            sqlstate: sqlstate.into(),
            message: message.into(),
        }
        .explain(&db())
    }

    #[test]
    fn each_refusal_says_what_to_change() {
        let e = explain("3D000", "database \"jobs\" does not exist");
        assert!(
            e.ends_with(
                "(3D000); create it (CREATE DATABASE jobs) or name another in --database-url"
            ),
            "{e}"
        );
        let e = explain("28000", "role \"app\" does not exist");
        assert!(
            e.contains("CREATE ROLE app LOGIN") && !e.contains("DATABASE"),
            "{e}"
        );
        let e = explain("28000", "role \"app\" is not permitted to log in");
        assert!(e.contains("ALTER ROLE app LOGIN"), "{e}");
        let e = explain(
            "28000",
            "no pg_hba.conf entry for host \"10.0.0.1\", user \"app\"",
        );
        assert!(e.contains("add a line") && e.contains("pg_hba.conf"), "{e}");
        let e = explain("28P01", "password authentication failed for user \"app\"");
        assert!(e.contains("PGPASSWORD or --database-password-file"), "{e}");
        for e in [e, explain("28000", "x")] {
            assert!(!e.contains("migrate") && !e.contains("broker"), "{e}");
        }
    }
}
