//! The database side: a pool (deadpool-postgres), retries through a lost connection, and
//! the SQL of claiming, completing and skipping jobs.
//!
//! A claim is one statement, committed at once: the due jobs in firing order, `FOR UPDATE
//! SKIP LOCKED` so that concurrent instances never wait on each other's rows, each given a
//! lease (`claimed_until`, `claimed_by`). No transaction stays open while publishing. A job
//! is done when `complete` marks it processed; one whose lease runs out first (its instance
//! died, or lost the database for longer than the lease) is claimed again by anyone.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use mqtt_tool::Error;
use tokio_postgres::NoTls;

use crate::args::DbPlan;

/// One claimed job.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub topic: String,
    pub payload: String,
    pub fire_at: SystemTime,
    /// Claims so far, this one included: more than one means republished.
    pub attempts: i32,
}

/// Database connections opened by the pools of this process: more than one in a sequential
/// run means a lost connection was replaced.
pub static CONNECTIONS_OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn pool(db: &DbPlan) -> Result<Pool, Error> {
    let mgr = Manager::from_config(
        db.config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(db.pool)
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
    db: &DbPlan,
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
                    return Err(Error::Unreachable {
                        broker: db.shown.clone(),
                        reason: format!(
                            "{what}: {why} (for {}, --db-timeout)",
                            humantime::format_duration(Duration::from_secs(
                                started.elapsed().as_secs()
                            ))
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

/// `job-pub migrate`: the schema, applied in one transaction.
pub async fn migrate(pool: &Pool, table: &str) -> Result<(), DbError> {
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    tx.batch_execute(&crate::SCHEMA.replace("{table}", table))
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Claims up to `batch` jobs due within `lookahead`, leased to `me` for `lease`; jobs overdue
/// by more than `skip_older` are returned apart, already marked processed and skipped.
pub async fn claim(
    pool: &Pool,
    table: &str,
    batch: usize,
    lookahead: Duration,
    lease: Duration,
    me: &str,
) -> Result<Vec<Job>, DbError> {
    let c = pool.get().await?;
    let sql = format!(
        "WITH due AS (
             SELECT id FROM {table}
             WHERE NOT processed
               AND fire_at <= now() + make_interval(secs => $2)
               AND (claimed_until IS NULL OR claimed_until < now())
             ORDER BY fire_at, id
             LIMIT $1
             FOR UPDATE SKIP LOCKED)
         UPDATE {table} j
            SET claimed_until = now() + make_interval(secs => $3), claimed_by = $4,
                attempts = j.attempts + 1
           FROM due WHERE j.id = due.id
         RETURNING j.id::bigint, j.topic, j.payload::text, j.fire_at, j.attempts::integer"
    );
    let stmt = c.prepare_cached(&sql).await?;
    let rows = c
        .query(
            &stmt,
            &[
                &(batch as i64),
                &lookahead.as_secs_f64(),
                &lease.as_secs_f64(),
                &me,
            ],
        )
        .await?;
    let mut jobs: Vec<Job> = rows
        .iter()
        .map(|r| Job {
            id: r.get(0),
            topic: r.get(1),
            payload: r.get(2),
            fire_at: r.get(3),
            attempts: r.get(4),
        })
        .collect();
    jobs.sort_by(|a, b| a.fire_at.cmp(&b.fire_at).then(a.id.cmp(&b.id)));
    Ok(jobs)
}

/// Marks `ids` processed (and `skipped` ones skipped) if the lease is still `me`'s; returns
/// how many were.
pub async fn complete(
    pool: &Pool,
    table: &str,
    ids: &[i64],
    skipped: bool,
    me: &str,
) -> Result<u64, DbError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let c = pool.get().await?;
    let sql = format!(
        "UPDATE {table} SET processed = true, processed_at = now(), skipped = $3,
                claimed_until = NULL
          WHERE id = ANY($1::bigint[]) AND claimed_by = $2 AND NOT processed"
    );
    let stmt = c.prepare_cached(&sql).await?;
    Ok(c.execute(&stmt, &[&ids, &me, &skipped]).await?)
}

/// Jobs due now and not processed (by anyone, leased or not): `--until-empty` waits for 0.
pub async fn due_left(pool: &Pool, table: &str) -> Result<i64, DbError> {
    let c = pool.get().await?;
    let sql = format!("SELECT count(*) FROM {table} WHERE NOT processed AND fire_at <= now()");
    let stmt = c.prepare_cached(&sql).await?;
    Ok(c.query_one(&stmt, &[]).await?.get(0))
}
