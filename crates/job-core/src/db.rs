//! The database side: a pool (deadpool-postgres), retries through a lost connection, and
//! the SQL of claiming, completing and skipping jobs.
//!
//! A claim is one statement, committed at once: the due jobs in firing order, `FOR UPDATE
//! SKIP LOCKED` so that concurrent instances never wait on each other's rows, each given a
//! lease (`claimed_until`, `claimed_by`). No transaction stays open while publishing. A job
//! is done when `complete` marks it processed; one whose lease runs out first (its instance
//! died, or lost the database for longer than the lease) is claimed again by anyone.

use std::future::Future;
use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;
use mqtt_tool::Error;

use crate::args::DbPlan;

/// One claimed job.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub topic: String,
    /// The payload's bytes: a text (json, jsonb, varchar) column's UTF-8, a bytea's as they are.
    pub payload: bytes::Bytes,
    pub fire_at: SystemTime,
    /// Claims so far, this one included: more than one means republished.
    pub attempts: i32,
}

pub use pg_tool::{DbError, CONNECTIONS_OPENED};

/// The pool of `db`'s size.
pub fn pool(db: &DbPlan) -> Result<Pool, Error> {
    pg_tool::pool(&db.database, db.pool)
}

/// [`pg_tool::retry`] naming `db`.
pub async fn retry<T, F, Fut>(
    db: &DbPlan,
    what: &str,
    give_up: Duration,
    retries: &mut u64,
    op: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DbError>>,
{
    pg_tool::retry(&db.database, what, give_up, retries, op).await
}

/// `job-pub migrate`: the columns in one transaction, then the index, built concurrently
/// (which no transaction may hold); an invalid index a failed build left is built again.
pub async fn migrate(pool: &Pool, table: &str) -> Result<(), DbError> {
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    tx.batch_execute(&crate::SCHEMA.replace("{table}", table))
        .await?;
    tx.commit().await?;
    let index = format!("{table}_due");
    // Resolved as DROP and CREATE resolve it (search path, case folding).
    let invalid: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass($1) AND NOT indisvalid)",
            &[&index],
        )
        .await?
        .get(0);
    if invalid {
        c.batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"))
            .await?;
    }
    c.batch_execute(&format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {table} (fire_at, id) WHERE NOT processed"
    ))
    .await?;
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
    raw_payload: bool,
) -> Result<Vec<Job>, DbError> {
    let c = pool.get().await?;
    let payload = if raw_payload {
        "j.payload"
    } else {
        "convert_to(j.payload::text, 'UTF8')"
    };
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
         RETURNING j.id::bigint, j.topic, {payload}, j.fire_at, j.attempts::integer"
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
            payload: bytes::Bytes::from(r.get::<_, Vec<u8>>(2)),
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
    // Counted with those already processed under this lease: a retry after a commit whose
    // answer was lost finds its jobs done, not lost. (The count reads the snapshot from
    // before the update, so no job counts twice.)
    let sql = format!(
        "WITH done AS (
             UPDATE {table} SET processed = true, processed_at = now(), skipped = $3,
                    claimed_until = NULL
              WHERE id = ANY($1::bigint[]) AND claimed_by = $2 AND NOT processed
             RETURNING id)
         SELECT (SELECT count(*) FROM done)
              + (SELECT count(*) FROM {table}
                  WHERE id = ANY($1::bigint[]) AND claimed_by = $2 AND processed)"
    );
    let stmt = c.prepare_cached(&sql).await?;
    let n: i64 = c.query_one(&stmt, &[&ids, &me, &skipped]).await?.get(0);
    Ok(n.max(0) as u64)
}

/// Jobs due now and not processed (by anyone, leased or not): `--until-empty` waits for 0.
pub async fn due_left(pool: &Pool, table: &str) -> Result<i64, DbError> {
    let c = pool.get().await?;
    let sql = format!("SELECT count(*) FROM {table} WHERE NOT processed AND fire_at <= now()");
    let stmt = c.prepare_cached(&sql).await?;
    Ok(c.query_one(&stmt, &[]).await?.get(0))
}

/// Whether the table's `payload` column is bytea (published as it is) rather than text-like
/// (published as its UTF-8 text; `::text` of a bytea would be its hex form).
pub async fn payload_is_bytea(pool: &Pool, table: &str) -> Result<bool, DbError> {
    let c = pool.get().await?;
    let row = c
        .query_opt(
            "SELECT t.typname::text FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
              WHERE a.attrelid = to_regclass($1) AND a.attname = 'payload' AND NOT a.attisdropped",
            &[&table],
        )
        .await?;
    Ok(row.is_some_and(|r| r.get::<_, String>(0) == "bytea"))
}
