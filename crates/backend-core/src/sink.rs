//! The PostgreSQL sink (`--sink postgres://...`): every unique point, stored.
//!
//! ```text
//! receive loop --push(point)--> the open batch: binary COPY rows, and the PUBACKs of its messages
//!     --seal--> queue --> writers (one per pooled connection): BEGIN, COPY .. FROM STDIN
//!                         BINARY, COMMIT, retried through a lost database (pg-tool)
//!     <--done(batch)-- : the batch's PUBACKs are written, in the order the messages came
//! ```
//!
//! - A batch's rows are written when its COMMIT is answered, not its COPY (whose "COPY n"
//!   comes before the commit). A COMMIT whose answer was lost is looked up by its
//!   transaction id before the batch is sent again: a batch is neither lost nor stored
//!   twice, and `rows_written` is what the table holds.
//! - A point is stored once: the first time the verifier sees its seq (a redelivery is a
//!   duplicate, counted, not stored again).
//! - A message is acknowledged only once its points are stored (or have failed for good), so
//!   at QoS 1 the broker holds whatever is not yet in the database, and redelivers it if this
//!   backend dies.
//! - Memory is bounded: at most [`SinkPlan::max_sealed`] sealed batches wait or are written,
//!   each of about `--sink-batch` rows. While that many do and the open batch is full too,
//!   the receive loop reads nothing more ([`Sink::full`]): the socket fills, and the broker
//!   holds the rest. That is the backpressure; the time spent so is reported.
//! - A batch is sealed when it is full, or as soon as a writer is idle, so that a trickle
//!   is stored at once and a flood in big batches.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use mqtt_tool::Error;
use point_format::Point;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The shipped migration: the table, an index, a hypertable under TimescaleDB.
pub const SCHEMA: &str = include_str!("sink.sql");

/// The columns, in the order of every COPY row.
pub const COLUMNS: &str = "device_id, seq, ts, value, temperature, humidity, received_at";

/// Rows not stored when the run ended this long after the last message are counted failed.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Messages whose PUBACKs wait behind a batch being written, at most: a flood of
/// duplicates (no rows) behind a stuck batch pauses reading too.
const MAX_PENDING: usize = 100_000;

/// Errors kept for the report.
const ERRORS_KEPT: usize = 5;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// Timestamps stored: 1970-01-01 up to 9999-12-31 (PostgreSQL refuses a whole COPY for one
/// out of its range; a hostile one is rejected alone).
const TS_MAX_S: f64 = 253_402_300_799.0;

/// The sink, checked.
#[derive(Debug, Clone)]
pub struct SinkPlan {
    pub database: pg_tool::Database,
    pub table: String,
    pub connections: usize,
    pub batch_rows: usize,
    /// How long a batch is retried through a lost database before its rows count as failed.
    pub timeout: Duration,
    pub migrate: bool,
}

impl SinkPlan {
    /// Sealed batches at most: two per connection, one written while one waits.
    pub fn max_sealed(&self) -> usize {
        2 * self.connections
    }
}

/// What the sink did, for the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkReport {
    /// The database, without its password.
    pub database: String,
    pub table: String,
    pub connections: u64,
    pub batch_rows: u64,
    /// Rows committed to the table.
    pub rows_written: u64,
    /// Rows whose COPY failed for good (an error of the database, or one that outlasted
    /// `--sink-timeout`: their messages were acknowledged), or that were not stored when the
    /// run ended (their messages were not: the broker keeps them).
    pub rows_failed: u64,
    /// Points the table cannot hold (a seq above 2^63-1, a timestamp outside 1970..9999, a
    /// NUL in a device id): not sent.
    pub rows_rejected: u64,
    /// Batches committed and failed.
    pub batches: u64,
    pub batches_failed: u64,
    /// Batches tried again after the database was lost.
    pub retries: u64,
    /// Rows written per second of the sink's busy window (first batch sealed to last done).
    pub rows_per_s: f64,
    /// Time the subscription was paused because the database lagged (backpressure).
    pub paused_s: f64,
    /// Most rows held in memory at once (open and sealed batches).
    pub max_buffered_rows: u64,
    /// The first errors, one line each.
    pub errors: Vec<String>,
}

impl SinkReport {
    /// The verdict's line when points were not stored, with the first error.
    pub fn not_stored(&self) -> Option<String> {
        let lost = self.rows_failed + self.rows_rejected;
        (lost > 0).then(|| {
            format!(
                "{} unique points were not stored ({} failed, {} the table cannot hold){}",
                mqtt_tool::format::fmt_int(lost),
                mqtt_tool::format::fmt_int(self.rows_failed),
                mqtt_tool::format::fmt_int(self.rows_rejected),
                self.errors
                    .first()
                    .map_or(String::new(), |e| format!(": {e}"))
            )
        })
    }
}

/// How a sealed batch ended.
#[derive(Debug)]
struct Outcome {
    id: u64,
    written: u64,
    failed: u64,
    retries: u64,
    error: Option<String>,
}

/// A batch on its way to a writer.
struct Sealed {
    id: u64,
    rows: u64,
    data: Bytes,
}

/// A sealed batch not yet done, with the PUBACKs it holds back.
struct Pending {
    id: u64,
    rows: u64,
    acks: Vec<u8>,
    done: bool,
}

/// The receive loop's end of the sink.
pub struct Sink {
    plan: SinkPlan,
    /// Rows of the open batch, after the COPY header.
    data: BytesMut,
    rows: u64,
    /// PUBACKs of the messages whose points are in the open batch.
    acks: Vec<u8>,
    next_id: u64,
    pending: VecDeque<Pending>,
    /// Sealed and not done (the writers' share of `pending`).
    writing: usize,
    queue: mpsc::Sender<Sealed>,
    done: mpsc::UnboundedReceiver<Outcome>,
    writers: Vec<tokio::task::JoinHandle<()>>,
    report: SinkReport,
    first_sealed: Option<Instant>,
    last_done: Option<Instant>,
    paused_since: Option<Instant>,
    paused: Duration,
}

/// Binary COPY's header: signature, flags, no extension.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

impl Sink {
    /// Connects, applies the migration when asked, and starts the writers.
    pub async fn start(plan: SinkPlan) -> Result<Sink, Error> {
        // A COPY that waits longer than --sink-timeout (a lock, a stuck server) is cancelled
        // by the server and its rows counted failed, rather than holding the run forever.
        // And a commit is on the server's disk (WAL) before its PUBACKs go out, whatever
        // the server's default.
        let mut database = plan.database.clone();
        let options = format!(
            "{} -c statement_timeout={} -c synchronous_commit=on",
            database.config.get_options().unwrap_or(""),
            plan.timeout.as_millis().max(1)
        );
        database.config.options(options.trim_start());
        let pool = pg_tool::pool(&database, plan.connections)?;
        let mut retries = 0;
        if plan.migrate {
            let sql = SCHEMA.replace("{table}", &plan.table);
            pg_tool::retry(
                &plan.database,
                "applying the sink's migration",
                plan.timeout,
                &mut retries,
                || async {
                    let c = pool.get().await?;
                    c.batch_execute(&sql).await?;
                    Ok(())
                },
            )
            .await?;
        }
        // The table must take our rows, columns and types: said now, not at the first batch.
        let types = pg_tool::retry(
            &plan.database,
            "reading the sink table's columns",
            plan.timeout,
            &mut retries,
            || column_types(&pool, &plan.table),
        )
        .await?;
        check_columns(&plan.table, &types)?;
        let copy = format!("COPY {} ({COLUMNS}) FROM STDIN (FORMAT binary)", plan.table);
        // What the catalog cannot tell (a CHECK, a trigger, a policy, a privilege): one row
        // of the points' shape, copied and rolled back.
        let trial = Bytes::from(trial_copy());
        pg_tool::retry(
            &plan.database,
            "checking the sink's table",
            plan.timeout,
            &mut retries,
            || copy_rolled_back(&pool, &copy, trial.clone()),
        )
        .await?
        .map_err(|why| {
            Error::usage(format!(
                "the sink table {} refuses a row of the points' shape ({why}): every batch would fail; change the table or use another --sink-table",
                plan.table
            ))
        })?;
        // One more than may be sealed while running: `finish` seals the last past the cap.
        let (queue, rx) = mpsc::channel(plan.max_sealed() + 1);
        let (done_tx, done) = mpsc::unbounded_channel();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let writers = (0..plan.connections)
            .map(|_| {
                tokio::spawn(writer(
                    pool.clone(),
                    plan.database.clone(),
                    copy.clone(),
                    plan.timeout,
                    rx.clone(),
                    done_tx.clone(),
                ))
            })
            .collect();
        let report = SinkReport {
            database: plan.database.shown.clone(),
            table: plan.table.clone(),
            connections: plan.connections as u64,
            batch_rows: plan.batch_rows as u64,
            ..SinkReport::default()
        };
        let mut data = BytesMut::with_capacity(plan.batch_rows * 96 + 64);
        data.put_slice(COPY_HEADER);
        Ok(Sink {
            plan,
            data,
            rows: 0,
            acks: Vec::new(),
            next_id: 0,
            pending: VecDeque::new(),
            writing: 0,
            queue,
            done,
            writers,
            report,
            first_sealed: None,
            last_done: None,
            paused_since: None,
            paused: Duration::ZERO,
        })
    }

    /// Adds one unique point that arrived at `received_us` (wall clock, µs).
    pub fn push(&mut self, p: &Point<'_>, received_us: f64) {
        let Some(row) = Row::of(p, received_us) else {
            self.report.rows_rejected += 1;
            return;
        };
        row.encode(&mut self.data);
        self.rows += 1;
    }

    /// Takes the PUBACKs of the messages just handled: they are written once the points
    /// that came before them are stored.
    pub fn hold(&mut self, acks: &mut Vec<u8>) {
        self.acks.append(acks);
    }

    /// The open batch is full and no more may be sealed: read nothing until a writer is done.
    pub fn full(&self) -> bool {
        (self.rows as usize >= self.plan.batch_rows && self.writing >= self.plan.max_sealed())
            || self.pending.len() >= MAX_PENDING
    }

    /// Rows committed so far.
    pub fn written(&self) -> u64 {
        self.report.rows_written
    }

    /// Sealed batches not yet done.
    pub fn busy(&self) -> bool {
        self.writing > 0
    }

    /// Seals the open batch when it is full or a writer is idle, records what the writers
    /// finished, and returns the PUBACKs now due (in order; empty if none).
    pub fn step(&mut self, now: Instant) -> Vec<u8> {
        while let Ok(o) = self.done.try_recv() {
            self.finished(o, now);
        }
        let full = self.rows as usize >= self.plan.batch_rows;
        let room = self.writing < self.plan.max_sealed();
        if (full && room) || (self.rows > 0 && self.writing < self.plan.connections) {
            self.seal(now);
        } else if self.rows == 0 && !self.acks.is_empty() {
            // Messages without a new point (duplicates, malformed): due behind the batches
            // before them.
            self.pending.push_back(Pending {
                id: u64::MAX,
                rows: 0,
                acks: std::mem::take(&mut self.acks),
                done: true,
            });
        }
        self.buffered();
        match (self.full(), self.paused_since) {
            (true, None) => self.paused_since = Some(now),
            (false, Some(since)) => {
                self.paused += now - since;
                self.paused_since = None;
            }
            _ => {}
        }
        let mut due = Vec::new();
        while self.pending.front().is_some_and(|p| p.done) {
            if let Some(p) = self.pending.pop_front() {
                due.extend_from_slice(&p.acks);
            }
        }
        due
    }

    /// Waits until a writer is done with a batch (forever if none is writing).
    pub async fn next_done(&mut self) {
        if self.writing == 0 {
            return std::future::pending().await;
        }
        match self.done.recv().await {
            Some(o) => self.finished(o, Instant::now()),
            None => self.writers_gone(),
        }
    }

    /// The connection these PUBACKs were for is gone: the broker sends those messages again
    /// (and their points, stored or on their way, count as duplicates then).
    pub fn forget_acks(&mut self) {
        self.acks.clear();
        for p in &mut self.pending {
            p.acks.clear();
        }
    }

    fn buffered(&mut self) {
        let sealed: u64 = self
            .pending
            .iter()
            .filter(|p| !p.done)
            .map(|p| p.rows)
            .sum();
        self.report.max_buffered_rows = self.report.max_buffered_rows.max(sealed + self.rows);
    }

    fn seal(&mut self, now: Instant) {
        let id = self.next_id;
        self.next_id += 1;
        let mut data = std::mem::replace(
            &mut self.data,
            BytesMut::with_capacity(self.plan.batch_rows * 96 + 64),
        );
        self.data.put_slice(COPY_HEADER);
        data.put_i16(-1);
        let rows = std::mem::take(&mut self.rows);
        self.buffered();
        self.pending.push_back(Pending {
            id,
            rows,
            acks: std::mem::take(&mut self.acks),
            done: false,
        });
        self.writing += 1;
        self.first_sealed.get_or_insert(now);
        // Never blocks: sealed batches are at most the queue's capacity.
        if let Err(e) = self.queue.try_send(Sealed {
            id,
            rows,
            data: data.freeze(),
        }) {
            let o = Outcome {
                id,
                written: 0,
                failed: rows,
                retries: 0,
                error: Some(format!("the sink's writers are gone ({e})")),
            };
            self.finished(o, now);
        }
    }

    /// Every writer ended (none should): what they held is failed, and nothing waits on them.
    fn writers_gone(&mut self) {
        let now = Instant::now();
        let undone: Vec<(u64, u64)> = self
            .pending
            .iter()
            .filter(|p| !p.done)
            .map(|p| (p.id, p.rows))
            .collect();
        for (id, rows) in undone {
            let o = Outcome {
                id,
                written: 0,
                failed: rows,
                retries: 0,
                error: Some("the sink's writers ended".into()),
            };
            self.finished(o, now);
        }
        self.writing = 0;
    }

    fn finished(&mut self, o: Outcome, now: Instant) {
        self.writing = self.writing.saturating_sub(1);
        self.last_done = Some(now);
        let r = &mut self.report;
        r.rows_written += o.written;
        r.rows_failed += o.failed;
        r.retries += o.retries;
        if o.failed > 0 {
            r.batches_failed += 1;
        } else {
            r.batches += 1;
        }
        if let Some(e) = o.error {
            if r.errors.len() < ERRORS_KEPT {
                mqtt_tool::errln!("sink: {}", mqtt_tool::out::escape(&e));
                r.errors.push(e);
            }
        }
        if let Some(p) = self.pending.iter_mut().find(|p| p.id == o.id) {
            p.done = true;
        }
    }

    /// Stores what is left, waiting at most `--sink-timeout` per queued batch plus a grace,
    /// or until `abandon` (a second signal) ends every wait at once; returns the PUBACKs now
    /// due and the report. Rows still not stored then count as failed, and the COPYs in
    /// flight are cancelled with their writers.
    pub async fn finish(mut self, abandon: &CancellationToken) -> (Vec<u8>, SinkReport) {
        let now = Instant::now();
        if self.rows > 0 {
            // Past the cap on sealed batches if need be: nothing more will be read.
            self.seal(now);
        }
        // Each writer may have a batch being written and more queued: a --sink-timeout each.
        let rounds = self.writing.div_ceil(self.plan.connections).max(1) as u32;
        let deadline = now + self.plan.timeout * rounds + DRAIN_GRACE;
        let mut abandoned = false;
        while self.writing > 0 {
            let done = tokio::select! {
                biased;
                _ = abandon.cancelled() => {
                    abandoned = true;
                    break;
                }
                d = tokio::time::timeout_at(deadline, self.done.recv()) => d,
            };
            match done {
                Ok(Some(o)) => self.finished(o, Instant::now()),
                Ok(None) => self.writers_gone(),
                Err(_) => break,
            }
        }
        let due = self.step(Instant::now());
        if let Some(since) = self.paused_since.take() {
            self.paused += Instant::now() - since;
        }
        let left: u64 = self
            .pending
            .iter()
            .filter(|p| !p.done)
            .map(|p| p.rows)
            .sum();
        if left > 0 {
            self.report.rows_failed += left;
            self.report.errors.push(if abandoned {
                format!("{left} rows were not stored: a second signal abandoned the wait for the database")
            } else {
                format!("{left} rows were not stored within --sink-timeout after the run ended")
            });
        }
        // The PUBACKs of what is not stored are not sent: the broker keeps those messages
        // (a persistent session sends them to the next run).
        self.pending.clear();
        for w in &self.writers {
            w.abort();
        }
        let r = &mut self.report;
        r.paused_s = (self.paused.as_secs_f64() * 1e3).round() / 1e3;
        if let (Some(a), Some(b)) = (self.first_sealed, self.last_done) {
            let s = (b - a).as_secs_f64();
            if s > 0.0 {
                r.rows_per_s = (r.rows_written as f64 / s * 1e3).round() / 1e3;
            }
        }
        (due, self.report)
    }
}

/// One point as a row of the table.
struct Row<'a> {
    device_id: &'a str,
    seq: i64,
    ts_us: i64,
    value: f64,
    temperature: Option<f64>,
    humidity: Option<f64>,
    received_us: i64,
}

impl<'a> Row<'a> {
    /// `None`: the table cannot hold it.
    fn of(p: &'a Point<'_>, received_us: f64) -> Option<Row<'a>> {
        let seq = i64::try_from(p.seq).ok()?;
        if !(p.timestamp.is_finite() && (0.0..=TS_MAX_S).contains(&p.timestamp)) {
            return None;
        }
        if p.device_id.contains('\0') {
            return None;
        }
        Some(Row {
            device_id: &p.device_id,
            seq,
            ts_us: (p.timestamp * 1e6).round() as i64 - PG_EPOCH_US,
            value: p.value,
            temperature: p.temperature,
            humidity: p.humidity,
            received_us: received_us as i64 - PG_EPOCH_US,
        })
    }

    /// Binary COPY: a field count, then each field as its length and its bytes (-1: NULL).
    fn encode(&self, b: &mut BytesMut) {
        b.put_i16(7);
        b.put_i32(self.device_id.len() as i32);
        b.put_slice(self.device_id.as_bytes());
        b.put_i32(8);
        b.put_i64(self.seq);
        b.put_i32(8);
        b.put_i64(self.ts_us);
        b.put_i32(8);
        b.put_f64(self.value);
        for v in [self.temperature, self.humidity] {
            match v {
                Some(v) => {
                    b.put_i32(8);
                    b.put_f64(v);
                }
                None => b.put_i32(-1),
            }
        }
        b.put_i32(8);
        b.put_i64(self.received_us);
    }
}

/// A column of the sink's table, as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Column {
    name: String,
    /// `format_type`'s text.
    ty: String,
    not_null: bool,
    /// The database fills it when a row leaves it out: a default, an identity, generated.
    filled: bool,
}

/// The table's columns, in order; empty if it is missing.
async fn column_types(
    pool: &deadpool_postgres::Pool,
    table: &str,
) -> Result<Vec<Column>, pg_tool::DbError> {
    let c = pool.get().await?;
    let rows = c
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''
               FROM pg_attribute a
              WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&table],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            ty: r.get(1),
            not_null: r.get(2),
            filled: r.get(3),
        })
        .collect())
}

/// The types binary COPY rows need, column by column.
const WANTED: [(&str, &[&str]); 7] = [
    ("device_id", &["text", "character varying"]),
    ("seq", &["bigint"]),
    ("ts", &["timestamp with time zone"]),
    ("value", &["double precision"]),
    ("temperature", &["double precision"]),
    ("humidity", &["double precision"]),
    ("received_at", &["timestamp with time zone"]),
];

/// Columns a point may leave empty (publishers without sensor fields).
const NULLABLE: [&str; 2] = ["temperature", "humidity"];

/// A one-line usage error naming the first column that is missing, of another type, or
/// one that would make every row fail: NOT NULL where a point may have nothing, or a
/// column of the table's own that must be set and that the database does not fill.
fn check_columns(table: &str, have: &[Column]) -> Result<(), Error> {
    if have.is_empty() {
        return Err(Error::usage(format!(
            "the sink table {table} does not exist; let backend-sub create it (--sink-migrate true) or apply crates/backend-core/src/sink.sql"
        )));
    }
    for c in have {
        let ours = WANTED.iter().any(|(n, _)| *n == c.name);
        if ours && c.not_null && NULLABLE.contains(&c.name.as_str()) {
            return Err(Error::usage(format!(
                "the sink table {table} has {} NOT NULL, but a point may come without one and would fail its whole batch; drop NOT NULL or use another --sink-table",
                c.name
            )));
        }
        if !ours && c.not_null && !c.filled {
            return Err(Error::usage(format!(
                "the sink table {table} has a column {} ({} NOT NULL, no default) that the sink does not write, so every row would fail; give it a default, drop NOT NULL or use another --sink-table",
                escape_ident(&c.name),
                c.ty
            )));
        }
    }
    for (name, types) in WANTED {
        match have.iter().find(|c| c.name == name).map(|c| (&c.name, &c.ty)) {
            None => {
                return Err(Error::usage(format!(
                    "the sink table {table} has no column {name} ({}); use the shipped migration's table or another --sink-table",
                    types[0]
                )))
            }
            // The type without its modifier: varchar(64), timestamp(3) with time zone.
            Some((_, t)) if !types.iter().any(|w| base_type(t) == *w) => {
                return Err(Error::usage(format!(
                    "the sink table {table} has {name} as {t}, not {}; use the shipped migration's table or another --sink-table",
                    types[0]
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// `format_type`'s text without a type modifier: `timestamp(3) with time zone` is
/// `timestamp with time zone`, `character varying(64)` is `character varying`; an array
/// keeps its `[]` (and matches nothing wanted).
fn base_type(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    let mut depth = 0;
    for ch in t.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A column name from the catalog, shown safely (it may hold anything).
fn escape_ident(name: &str) -> String {
    mqtt_tool::out::escape(name).into_owned()
}

/// A whole binary COPY of one row as the publishers write points, at the current time.
fn trial_copy() -> Vec<u8> {
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let p = Point {
        device_id: std::borrow::Cow::Borrowed("backend-sub-start-check"),
        seq: 0,
        timestamp: now_s,
        value: 50.12,
        temperature: Some(21.53),
        humidity: Some(45.2),
    };
    let mut b = BytesMut::from(COPY_HEADER);
    if let Some(row) = Row::of(&p, now_s * 1e6) {
        row.encode(&mut b);
    }
    b.put_i16(-1);
    b.to_vec()
}

/// SQLSTATE classes of a row the table refuses (data, integrity, a trigger's RAISE, access
/// rules and privileges, a policy's check): the table's doing, not the connection's.
const REFUSALS: [&str; 5] = ["22", "23", "P0", "42", "44"];

/// Copies `data` in a transaction that is rolled back: `Ok(Err(why))` when the table
/// refuses it.
async fn copy_rolled_back(
    pool: &deadpool_postgres::Pool,
    sql: &str,
    data: Bytes,
) -> Result<Result<(), String>, pg_tool::DbError> {
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    let copied = async {
        let sink = tx.copy_in::<_, Bytes>(sql).await?;
        let mut sink = std::pin::pin!(sink);
        sink.send(data).await?;
        sink.as_mut().finish().await
    }
    .await;
    match copied {
        Ok(_) => {
            tx.rollback().await?;
            Ok(Ok(()))
        }
        Err(e) => match e.as_db_error() {
            Some(db) if REFUSALS.iter().any(|c| db.code().code().starts_with(c)) => {
                Ok(Err(format!("{} ({})", db.message(), db.code().code())))
            }
            _ => Err(e.into()),
        },
    }
}

/// A batch whose COMMIT was sent and never answered: its transaction, and the rows its
/// COPY took.
#[derive(Debug, Clone, Copy)]
struct Unanswered {
    xid: i64,
    rows: u64,
}

/// One COPY of a whole batch (header, rows, trailer) in a transaction of its own; its rows
/// count once the COMMIT is answered, not when the COPY is.
///
/// A COPY's "COPY n" is no commit: tokio-postgres's `finish` returns at it, while the
/// implicit transaction of the extended protocol commits only at the Sync after it, so a
/// session ended in between (a fast shutdown, a crash, a deferred trigger's error) answers
/// "COPY n" and stores nothing. Hence BEGIN, COPY, COMMIT. And a COMMIT whose answer was
/// lost may have committed or not: `unanswered` keeps its transaction id, and the next
/// attempt asks the server (`txid_status`) before it copies the batch again, so that a
/// batch is neither lost nor stored twice.
async fn copy_batch(
    pool: &deadpool_postgres::Pool,
    sql: &str,
    data: Bytes,
    unanswered: &std::sync::Mutex<Option<Unanswered>>,
) -> Result<u64, pg_tool::DbError> {
    let mut c = pool.get().await?;
    let earlier = *unanswered.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(u) = earlier {
        match xact_status(&c, u.xid).await?.as_deref() {
            Some("committed") => {
                *unanswered.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return Ok(u.rows);
            }
            Some("aborted") => {
                *unanswered.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            // Its session has not ended yet (a network cut, not a restart): asked again.
            Some("in progress") => {
                return Err(pg_tool::DbError::Transient(format!(
                    "the batch's earlier transaction {} has not ended yet",
                    u.xid
                )))
            }
            other => {
                return Err(pg_tool::DbError::Fatal(format!(
                "the server cannot tell whether the batch's transaction {} committed ({other:?})",
                u.xid
            )))
            }
        }
    }
    let tx = c.transaction().await?;
    let xid = first_int(&tx.simple_query("SELECT txid_current()").await?)
        .ok_or_else(|| pg_tool::DbError::Fatal("txid_current() gave no number".into()))?;
    let sink = tx.copy_in::<_, Bytes>(sql).await?;
    let mut sink = std::pin::pin!(sink);
    sink.send(data).await?;
    let rows = sink.as_mut().finish().await?;
    // From here the COMMIT may take effect without its answer reaching us.
    *unanswered.lock().unwrap_or_else(|e| e.into_inner()) = Some(Unanswered { xid, rows });
    tx.commit().await?;
    *unanswered.lock().unwrap_or_else(|e| e.into_inner()) = None;
    Ok(rows)
}

/// `txid_status(xid)`: committed, aborted, in progress, or `None` when too old to tell.
async fn xact_status(
    c: &deadpool_postgres::Client,
    xid: i64,
) -> Result<Option<String>, pg_tool::DbError> {
    let rows = c
        .simple_query(&format!("SELECT txid_status({xid})"))
        .await?;
    Ok(rows.iter().find_map(|m| match m {
        deadpool_postgres::tokio_postgres::SimpleQueryMessage::Row(r) => {
            r.get(0).map(str::to_string)
        }
        _ => None,
    }))
}

/// The first column of the first row of a simple query, as an integer.
fn first_int(msgs: &[deadpool_postgres::tokio_postgres::SimpleQueryMessage]) -> Option<i64> {
    msgs.iter().find_map(|m| match m {
        deadpool_postgres::tokio_postgres::SimpleQueryMessage::Row(r) => {
            r.get(0).and_then(|v| v.parse().ok())
        }
        _ => None,
    })
}

async fn writer(
    pool: deadpool_postgres::Pool,
    database: pg_tool::Database,
    sql: String,
    timeout: Duration,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Sealed>>>,
    done: mpsc::UnboundedSender<Outcome>,
) {
    loop {
        let next = queue.lock().await.recv().await;
        let Some(batch) = next else { return };
        let mut retries = 0;
        let unanswered = std::sync::Mutex::new(None);
        let r = pg_tool::retry(&database, "storing points", timeout, &mut retries, || {
            copy_batch(&pool, &sql, batch.data.clone(), &unanswered)
        })
        .await;
        let o = match r {
            Ok(n) => Outcome {
                id: batch.id,
                written: n,
                failed: batch.rows.saturating_sub(n),
                retries,
                error: None,
            },
            Err(e) => Outcome {
                id: batch.id,
                written: 0,
                failed: batch.rows,
                retries,
                error: Some(e.to_string()),
            },
        };
        if done.send(o).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn point(seq: u64, ts: f64, id: &str) -> Point<'static> {
        Point {
            device_id: Cow::Owned(id.to_string()),
            seq,
            timestamp: ts,
            value: 1.5,
            temperature: Some(21.25),
            humidity: None,
        }
    }

    #[test]
    fn a_row_is_encoded_as_binary_copy_fields() {
        let p = point(7, 946_684_801.5, "dev");
        let row = Row::of(&p, 946_684_802_000_000.0).expect("storable");
        let mut b = BytesMut::new();
        row.encode(&mut b);
        let mut want = Vec::new();
        want.extend_from_slice(&7i16.to_be_bytes());
        want.extend_from_slice(&3i32.to_be_bytes());
        want.extend_from_slice(b"dev");
        for v in [7i64.to_be_bytes(), 1_500_000i64.to_be_bytes()] {
            want.extend_from_slice(&8i32.to_be_bytes());
            want.extend_from_slice(&v);
        }
        want.extend_from_slice(&8i32.to_be_bytes());
        want.extend_from_slice(&1.5f64.to_be_bytes());
        want.extend_from_slice(&8i32.to_be_bytes());
        want.extend_from_slice(&21.25f64.to_be_bytes());
        want.extend_from_slice(&(-1i32).to_be_bytes());
        want.extend_from_slice(&8i32.to_be_bytes());
        want.extend_from_slice(&2_000_000i64.to_be_bytes());
        assert_eq!(&b[..], &want[..]);
    }

    #[test]
    fn a_table_of_other_types_is_a_usage_error_naming_the_column() {
        let cols = |seq: &str| -> Vec<Column> {
            WANTED
                .iter()
                .map(|(n, t)| {
                    let t = if *n == "seq" { seq } else { t[0] };
                    column(n, t, false, false)
                })
                .collect()
        };
        assert!(check_columns("points", &cols("bigint")).is_ok());
        let e = check_columns("points", &cols("integer"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("seq as integer, not bigint"), "{e}");
        assert!(check_columns("points", &cols("bigint[]")).is_err());
        assert_eq!(
            base_type("timestamp(3) with time zone"),
            "timestamp with time zone"
        );
        assert_eq!(base_type("character varying(64)"), "character varying");
        let e = check_columns("points", &[]).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    fn column(name: &str, ty: &str, not_null: bool, filled: bool) -> Column {
        Column {
            name: name.into(),
            ty: ty.into(),
            not_null,
            filled,
        }
    }

    #[test]
    fn a_column_that_would_fail_every_row_is_a_usage_error_naming_it() {
        let ours = || -> Vec<Column> {
            WANTED
                .iter()
                .map(|(n, t)| column(n, t[0], !NULLABLE.contains(n), false))
                .collect()
        };
        assert!(check_columns("points", &ours()).is_ok());
        let mut t = ours();
        t.push(column("tenant", "text", true, false));
        let e = check_columns("points", &t).unwrap_err().to_string();
        assert!(
            e.contains("column tenant (text NOT NULL, no default)"),
            "{e}"
        );
        // Filled by the database (a default, an identity, generated), or nullable: fine.
        for c in [
            column("tenant", "text", true, true),
            column("note", "text", false, false),
        ] {
            let mut t = ours();
            t.push(c);
            assert!(check_columns("points", &t).is_ok());
        }
        let mut t = ours();
        t[4].not_null = true;
        let e = check_columns("points", &t).unwrap_err().to_string();
        assert!(e.contains("temperature NOT NULL"), "{e}");
        // A hostile column name reaches the terminal escaped.
        let mut t = ours();
        t.push(column("evil\u{1b}[2J", "text", true, false));
        let e = check_columns("points", &t).unwrap_err().to_string();
        assert!(!e.contains('\u{1b}'), "{e}");
    }

    #[test]
    fn the_start_up_row_is_a_whole_copy_of_one_storable_point() {
        let b = trial_copy();
        assert!(b.starts_with(COPY_HEADER));
        assert!(b.ends_with(&(-1i16).to_be_bytes()));
        // Header, one row of 7 fields (the id is 23 bytes), trailer.
        assert_eq!(b.len(), COPY_HEADER.len() + 2 + 4 + 23 + 6 * 12 + 2);
    }

    #[test]
    fn points_the_table_cannot_hold_are_rejected() {
        assert!(Row::of(&point(u64::MAX, 1.0, "d"), 0.0).is_none());
        assert!(Row::of(&point(1, f64::NAN, "d"), 0.0).is_none());
        assert!(Row::of(&point(1, -1.0, "d"), 0.0).is_none());
        assert!(Row::of(&point(1, 1e15, "d"), 0.0).is_none());
        assert!(Row::of(&point(1, 1.0, "a\0b"), 0.0).is_none());
        assert!(Row::of(&point(1, 1.0, "ok"), 0.0).is_some());
    }
}
