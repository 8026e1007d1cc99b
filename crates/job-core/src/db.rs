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

/// `job-pub migrate`: the columns in one transaction, checked before it commits (a table
/// job-pub could not use is left as it was), then the index, built concurrently (which no
/// transaction may hold); an invalid index a failed build left is built again.
pub async fn migrate(pool: &Pool, table: &str) -> Result<Result<(), String>, DbError> {
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    tx.batch_execute(&crate::SCHEMA.replace("{table}", table))
        .await?;
    let t: &tokio_postgres::Transaction = &tx;
    let cols = columns(t, table).await?;
    if let Err(problem) = judge(table, &cols) {
        tx.rollback().await?;
        return Ok(Err(problem));
    }
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
    Ok(Ok(()))
}

/// One column of the jobs table as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The type's name in the catalog (of a domain, its base type's): `int8`, `varchar`.
    pub typname: String,
    /// The type as SQL writes it: `bigint`, `character varying(20)`.
    pub shown: String,
    pub not_null: bool,
}

/// The columns of `table` (resolved as the statements resolve it); none if it does not exist.
pub async fn columns(
    c: &impl tokio_postgres::GenericClient,
    table: &str,
) -> Result<Vec<Column>, DbError> {
    let rows = c
        .query(
            "SELECT a.attname::text, coalesce(b.typname, t.typname)::text,
                    format_type(a.atttypid, a.atttypmod), a.attnotnull
               FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
               LEFT JOIN pg_type b ON t.typtype = 'd' AND b.oid = t.typbasetype
              WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            typname: r.get(1),
            shown: r.get(2),
            not_null: r.get(3),
        })
        .collect())
}

/// The columns of `table`, from a pooled connection.
pub async fn table_columns(pool: &Pool, table: &str) -> Result<Vec<Column>, DbError> {
    let c = pool.get().await?;
    let client: &tokio_postgres::Client = &c;
    columns(client, table).await
}

/// A column job-pub reads or writes: the types it takes, and whether a NULL there would
/// be a job it cannot publish.
struct Wanted {
    name: &'static str,
    types: &'static [&'static str],
    /// The accepted types as a user writes them, the first the one to convert to.
    needs: &'static str,
    not_null: bool,
    /// Added by `job-pub migrate` (missing: the table was not migrated).
    migrated: bool,
}

const WANTED: [Wanted; 10] = [
    Wanted {
        name: "id",
        types: &["int8", "int4", "int2"],
        needs: "bigint or integer",
        not_null: true,
        migrated: false,
    },
    Wanted {
        name: "topic",
        types: &["text", "varchar"],
        needs: "text or varchar",
        not_null: true,
        migrated: false,
    },
    Wanted {
        name: "payload",
        types: &["text", "varchar", "json", "jsonb", "bytea"],
        needs: "text, varchar, json, jsonb or bytea",
        not_null: true,
        migrated: false,
    },
    Wanted {
        name: "fire_at",
        types: &["timestamptz"],
        needs: "timestamptz",
        not_null: true,
        migrated: false,
    },
    Wanted {
        name: "processed",
        types: &["bool"],
        needs: "boolean",
        not_null: true,
        migrated: false,
    },
    Wanted {
        name: "processed_at",
        types: &["timestamptz", "timestamp"],
        needs: "timestamptz",
        not_null: false,
        migrated: false,
    },
    Wanted {
        name: "claimed_until",
        types: &["timestamptz"],
        needs: "timestamptz",
        not_null: false,
        migrated: true,
    },
    Wanted {
        name: "claimed_by",
        types: &["text", "varchar"],
        needs: "text",
        not_null: false,
        migrated: true,
    },
    Wanted {
        name: "attempts",
        types: &["int4", "int8", "int2"],
        needs: "integer",
        not_null: true,
        migrated: true,
    },
    Wanted {
        name: "skipped",
        types: &["bool"],
        needs: "boolean",
        not_null: true,
        migrated: true,
    },
];

/// Whether job-pub can use a (migrated) table of `cols`: every column it needs, of a type
/// it reads, NOT NULL where a NULL would be a job it cannot publish. `Ok`: whether the
/// payload is bytea (published as it is) rather than text-like (published as its UTF-8).
/// `Err`: the first problem and what to change, one line.
pub fn judge(table: &str, cols: &[Column]) -> Result<bool, String> {
    if cols.is_empty() {
        return Err(format!(
            "table {table} does not exist; run {tool} migrate first (it creates the table and what {tool} needs)", tool = crate::tool_name()
        ));
    }
    let mut problems = Vec::new();
    for w in &WANTED {
        let Some(c) = cols.iter().find(|c| c.name == w.name) else {
            problems.push(if w.migrated {
                format!(
                    "table {table} has no column {}; run {} migrate first (it adds it)",
                    w.name,
                    crate::tool_name()
                )
            } else {
                format!(
                    "table {table} has no column {} ({}), which job-pub needs; add it",
                    w.name, w.needs
                )
            });
            continue;
        };
        if !w.types.contains(&c.typname.as_str()) {
            let to = w.needs.split([',', ' ']).next().unwrap_or(w.needs);
            problems.push(format!(
                "table {table}: column {} is {}; job-pub needs {} (ALTER TABLE {table} ALTER COLUMN {} TYPE {to})",
                w.name, c.shown, w.needs, w.name
            ));
        } else if w.not_null && !c.not_null {
            problems.push(format!(
                "table {table}: column {} allows NULL, and a job without one cannot be published; ALTER TABLE {table} ALTER COLUMN {} SET NOT NULL (once no row holds NULL there)",
                w.name, w.name
            ));
        }
    }
    match problems.len() {
        0 => Ok(cols
            .iter()
            .any(|c| c.name == "payload" && c.typname == "bytea")),
        1 => Err(problems.remove(0)),
        n => Err(format!("{} (and {} more)", problems[0], n - 1)),
    }
}

/// A claimed row job-pub cannot publish as it stands (NULL, or text that is not UTF-8): set
/// aside by its id (None: the id itself could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub id: Option<i64>,
    pub why: String,
}

/// What a claim took: the jobs, in firing order, and the rows that cannot be published.
#[derive(Debug, Default)]
pub struct Claimed {
    pub jobs: Vec<Job>,
    pub unreadable: Vec<Unreadable>,
}

impl Claimed {
    pub fn len(&self) -> usize {
        self.jobs.len() + self.unreadable.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A column's bytes as the server sent them, whatever its type: a row is read in Rust,
/// column by column, so that one bad value fails its row and not the claim (a conversion
/// in SQL fails the whole statement, and a typed read of bytes that are not UTF-8 panics).
struct Raw<'a>(&'a [u8]);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw<'a> {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// `what` (a column's bytes) as UTF-8, or why not.
fn utf8<'a>(what: &str, raw: Option<Raw<'a>>) -> Result<&'a [u8], String> {
    let raw = raw.ok_or_else(|| format!("its {what} is NULL"))?.0;
    match std::str::from_utf8(raw) {
        Ok(_) => Ok(raw),
        Err(e) => Err(format!(
            "its {what} is not UTF-8 (byte 0x{:02x} at offset {})",
            raw[e.valid_up_to()],
            e.valid_up_to()
        )),
    }
}

/// One claimed row as a job, or why it cannot be one.
fn read(r: &tokio_postgres::Row, raw_payload: bool) -> Result<Job, Unreadable> {
    let id = match r.try_get::<_, Option<i64>>(0) {
        Ok(Some(id)) => id,
        Ok(None) => {
            return Err(Unreadable {
                id: None,
                why: "its id is NULL".into(),
            })
        }
        Err(e) => {
            return Err(Unreadable {
                id: None,
                why: format!("its id cannot be read: {e}"),
            })
        }
    };
    let bad = |why: String| Unreadable { id: Some(id), why };
    let topic = utf8(
        "topic",
        r.try_get(1)
            .map_err(|e| bad(format!("its topic cannot be read: {e}")))?,
    )
    .map_err(bad)?;
    let topic = String::from_utf8_lossy(topic).into_owned();
    let payload: Option<Raw> = r
        .try_get(2)
        .map_err(|e| bad(format!("its payload cannot be read: {e}")))?;
    let payload = if raw_payload {
        payload.ok_or_else(|| bad("its payload is NULL".into()))?.0
    } else {
        utf8("payload", payload).map_err(|why| {
            bad(format!(
                "{why}: a text column's payload goes out as UTF-8 (binary payloads belong in a bytea column)"
            ))
        })?
    };
    let fire_at = r
        .try_get::<_, Option<SystemTime>>(3)
        .map_err(|e| bad(format!("its fire_at cannot be read: {e}")))?
        .ok_or_else(|| bad("its fire_at is NULL".into()))?;
    let attempts = r
        .try_get::<_, Option<i32>>(4)
        .map_err(|e| bad(format!("its attempts cannot be read: {e}")))?
        .unwrap_or(1);
    Ok(Job {
        id,
        topic,
        payload: bytes::Bytes::copy_from_slice(payload),
        fire_at,
        attempts,
    })
}

/// How the table's text comes out of the server as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The payload column is bytea: published as it is (else as its text's UTF-8).
    pub raw_payload: bool,
    /// The database is SQL_ASCII: its text is bytes the server never checked, which it
    /// would refuse to convert to UTF-8 for the client (failing the whole claim for one
    /// row); they are read as they are and checked here, row by row.
    pub sql_ascii: bool,
}

/// Whether the database's encoding is SQL_ASCII (text of any bytes, unchecked).
pub async fn sql_ascii(pool: &Pool) -> Result<bool, DbError> {
    let c = pool.get().await?;
    let enc: String = c
        .query_one("SELECT current_setting('server_encoding')", &[])
        .await?
        .get(0);
    Ok(enc.eq_ignore_ascii_case("SQL_ASCII"))
}

/// How far ahead a run claims, beyond `--lookahead`: jobs due after `horizon` are not
/// claimed before they are due (`--until-empty` does not wait for them, but publishes one
/// that falls due while it runs); jobs due after `deadline` (`--duration`'s end) never.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClaimBound {
    pub horizon: Option<SystemTime>,
    pub deadline: Option<SystemTime>,
}

/// Claims up to `batch` jobs due within `lookahead` and `bound`, leased to `me` for `lease`.
/// Each row is read on its own: one that cannot be published comes back apart, named by
/// its id.
#[allow(clippy::too_many_arguments)]
pub async fn claim(
    pool: &Pool,
    table: &str,
    batch: usize,
    lookahead: Duration,
    bound: ClaimBound,
    lease: Duration,
    me: &str,
    how: Reading,
) -> Result<Claimed, DbError> {
    let c = pool.get().await?;
    // Text as bytes: UTF-8 (converted from the database's encoding, which cannot fail), or
    // in an SQL_ASCII database the stored bytes as they are, checked in Rust per row.
    let enc = if how.sql_ascii { "SQL_ASCII" } else { "UTF8" };
    let topic = format!("convert_to(j.topic, '{enc}')");
    let payload = if how.raw_payload {
        "j.payload".to_string()
    } else {
        format!("convert_to(j.payload::text, '{enc}')")
    };
    let raw_payload = how.raw_payload;
    let sql = format!(
        "WITH due AS (
             SELECT id FROM {table}
             WHERE NOT processed
               AND fire_at <= least(now() + make_interval(secs => $2),
                                    greatest(coalesce($5::timestamptz, 'infinity'::timestamptz), now()),
                                    coalesce($6::timestamptz, 'infinity'::timestamptz))
               AND (claimed_until IS NULL OR claimed_until < now())
             ORDER BY fire_at, id
             LIMIT $1
             FOR UPDATE SKIP LOCKED)
         UPDATE {table} j
            SET claimed_until = now() + make_interval(secs => $3), claimed_by = $4,
                attempts = j.attempts + 1
           FROM due WHERE j.id = due.id
         RETURNING j.id::bigint, {topic}, {payload}, j.fire_at, j.attempts::integer"
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
                &bound.horizon,
                &bound.deadline,
            ],
        )
        .await?;
    let mut claimed = Claimed::default();
    for r in &rows {
        match read(r, raw_payload) {
            Ok(job) => claimed.jobs.push(job),
            Err(u) => claimed.unreadable.push(u),
        }
    }
    claimed
        .jobs
        .sort_by(|a, b| a.fire_at.cmp(&b.fire_at).then(a.id.cmp(&b.id)));
    Ok(claimed)
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

/// The database's clock at a run's start, and the latest fire_at of the jobs not yet
/// processed (none: no such job), from which `--until-empty`'s horizon is drawn. Both ends
/// of the partial index: cheap on any table.
pub async fn start_point(
    pool: &Pool,
    table: &str,
) -> Result<(SystemTime, Option<SystemTime>), DbError> {
    let c = pool.get().await?;
    let sql = format!("SELECT now(), max(fire_at) FROM {table} WHERE NOT processed");
    let row = c.query_one(&sql, &[]).await?;
    Ok((row.get(0), row.get(1)))
}

/// Whether any job due by `until` is not processed yet (leased by anyone or not): what
/// `--until-empty` waits for. An `EXISTS`, stopping at the first row: cheap enough to ask
/// at every poll.
pub async fn any_left(pool: &Pool, table: &str, until: SystemTime) -> Result<bool, DbError> {
    let c = pool.get().await?;
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {table} WHERE NOT processed AND fire_at <= $1::timestamptz)"
    );
    let stmt = c.prepare_cached(&sql).await?;
    Ok(c.query_one(&stmt, &[&until]).await?.get(0))
}

/// Jobs counted by [`waiting`] at most: the count reads at most this many index entries.
pub const WAITING_COUNTED: u64 = 100_000;

/// What a run waits for: the jobs not processed and due by `until` (all of them: `None`),
/// read from the database's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// The database's clock.
    pub now: SystemTime,
    /// Due later than `now`.
    pub later: u64,
    /// Due by `now`, yet not claimable: leased (to another instance, or failed here and
    /// claimed again when the lease runs out).
    pub leased: u64,
    /// The earliest fire_at after `now`.
    pub next: Option<SystemTime>,
    /// [`WAITING_COUNTED`] were counted: there may be more.
    pub more: bool,
}

/// What is left to wait for, counted up to [`WAITING_COUNTED`] jobs in firing order (the
/// progress line's figures; asked at most once a second).
pub async fn waiting(
    pool: &Pool,
    table: &str,
    until: Option<SystemTime>,
) -> Result<Waiting, DbError> {
    let c = pool.get().await?;
    let sql = format!(
        "SELECT now(), count(*) FILTER (WHERE fire_at > now()),
                count(*) FILTER (WHERE fire_at <= now()),
                min(fire_at) FILTER (WHERE fire_at > now()), count(*)
           FROM (SELECT fire_at FROM {table}
                  WHERE NOT processed
                    AND fire_at <= coalesce($1::timestamptz, 'infinity'::timestamptz)
                  ORDER BY fire_at LIMIT $2) s"
    );
    let stmt = c.prepare_cached(&sql).await?;
    let row = c
        .query_one(&stmt, &[&until, &(WAITING_COUNTED as i64)])
        .await?;
    let count = |i: usize| row.get::<_, i64>(i).max(0) as u64;
    Ok(Waiting {
        now: row.get(0),
        later: count(1),
        leased: count(2),
        next: row.get(3),
        more: count(4) >= WAITING_COUNTED,
    })
}

/// Jobs not processed and due after `after`: what a run bounded by a horizon left.
pub async fn left_after(pool: &Pool, table: &str, after: SystemTime) -> Result<u64, DbError> {
    let c = pool.get().await?;
    let sql =
        format!("SELECT count(*) FROM {table} WHERE NOT processed AND fire_at > $1::timestamptz");
    let n: i64 = c.query_one(&sql, &[&after]).await?.get(0);
    Ok(n.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, typname: &str, shown: &str, not_null: bool) -> Column {
        Column {
            name: name.into(),
            typname: typname.into(),
            shown: shown.into(),
            not_null,
        }
    }

    /// The table `job-pub migrate` makes.
    fn migrated() -> Vec<Column> {
        vec![
            col("id", "int8", "bigint", true),
            col("topic", "text", "text", true),
            col("payload", "text", "text", true),
            col("fire_at", "timestamptz", "timestamp with time zone", true),
            col("processed", "bool", "boolean", true),
            col(
                "processed_at",
                "timestamptz",
                "timestamp with time zone",
                false,
            ),
            col(
                "claimed_until",
                "timestamptz",
                "timestamp with time zone",
                false,
            ),
            col("claimed_by", "text", "text", false),
            col("attempts", "int4", "integer", true),
            col("skipped", "bool", "boolean", true),
        ]
    }

    fn with(name: &str, c: Column) -> Vec<Column> {
        let mut cols = migrated();
        cols.retain(|c| c.name != name);
        cols.push(c);
        cols
    }

    #[test]
    fn a_table_job_pub_can_read_is_accepted_with_its_payload_kind() {
        assert_eq!(judge("jobs", &migrated()), Ok(false));
        let bytea = with("payload", col("payload", "bytea", "bytea", true));
        assert_eq!(judge("jobs", &bytea), Ok(true));
        let varchar = with(
            "topic",
            col("topic", "varchar", "character varying(200)", true),
        );
        assert_eq!(judge("jobs", &varchar), Ok(false));
    }

    #[test]
    fn a_column_of_another_type_or_that_allows_null_is_named_with_the_fix() {
        let e = judge(
            "jobs",
            &with("topic", col("topic", "int4", "integer", true)),
        )
        .unwrap_err();
        assert!(
            e.contains("column topic is integer; job-pub needs text or varchar")
                && e.contains("ALTER TABLE jobs ALTER COLUMN topic TYPE text"),
            "{e}"
        );
        let e = judge(
            "jobs",
            &with("payload", col("payload", "text", "text", false)),
        )
        .unwrap_err();
        assert!(
            e.contains("column payload allows NULL")
                && e.contains("ALTER TABLE jobs ALTER COLUMN payload SET NOT NULL"),
            "{e}"
        );
        let ts = col("fire_at", "timestamp", "timestamp without time zone", true);
        let e = judge("jobs", &with("fire_at", ts)).unwrap_err();
        assert!(e.contains("TYPE timestamptz"), "{e}");
        // Two problems: the first, and how many more.
        let mut cols = with("topic", col("topic", "int4", "integer", false));
        cols.retain(|c| c.name != "skipped");
        let e = judge("jobs", &cols).unwrap_err();
        assert!(e.ends_with("(and 1 more)"), "{e}");
    }

    #[test]
    fn a_missing_table_or_lease_column_asks_for_migrate() {
        let e = judge("jobs", &[]).unwrap_err();
        assert!(
            e.contains("does not exist; run job-pub migrate first"),
            "{e}"
        );
        let mut cols = migrated();
        cols.retain(|c| c.name != "claimed_until");
        let e = judge("jobs", &cols).unwrap_err();
        assert!(
            e.contains("no column claimed_until; run job-pub migrate first"),
            "{e}"
        );
        let mut cols = migrated();
        cols.retain(|c| c.name != "fire_at");
        let e = judge("jobs", &cols).unwrap_err();
        assert!(
            e.contains("no column fire_at (timestamptz)") && !e.contains("migrate"),
            "{e}"
        );
    }
}
