//! Publishing one claimed batch: each job held until its fire_at, the batch pipelined, every
//! acknowledgement awaited until the batch's deadline (its last fire_at plus
//! `--ack-timeout`, inside its lease).
//!
//! A lost connection is replaced (with backoff) and what it left unacknowledged is published
//! again. A broker closes the connection for a message it will not take (a packet over its
//! own limit, a topic it refuses), so the same message would kill every new connection in
//! turn: after a loss, the jobs that were in flight go out one at a time, and a job that
//! was alone in flight at [`MAX_LOSSES_ALONE`] losses is given up (marked processed and
//! skipped by the caller, counted), as the publishers give up a connection after three
//! losses with no progress.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hdrhistogram::Histogram;
use mqtt_tool::Error;
use mqtt_wire::Backoff;

use crate::args::{JobIdMode, RunPlan};
use crate::db::Job;
use crate::link::{Ev, Link};
use crate::run::Counts;

/// Losses with a job alone in flight after which it is given up.
pub const MAX_LOSSES_ALONE: u8 = 3;

/// What became of a batch: the jobs acknowledged, rejected (refused for good) and given up,
/// and the failure that ended it early, if one did. The others failed (not acknowledged in
/// time, or refused for now): left leased, claimed again when their lease runs out.
pub struct Batch {
    pub acked: Vec<i64>,
    pub rejected: Vec<i64>,
    pub given_up: Vec<i64>,
    pub error: Option<Error>,
}

/// How the broker answered a job it did not take (an MQTT 5 reason code of 0x80 or more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// For good (not authorized, topic or payload invalid): marked processed and skipped,
    /// counted rejected, never tried again.
    ForGood,
    /// For now (quota exceeded, packet id in use): left leased and counted failed, so that
    /// a later claim publishes it again once the lease runs out.
    ForNow,
}

impl Refusal {
    fn of(code: u8) -> Refusal {
        match code {
            0x91 | 0x97 => Refusal::ForNow,
            _ => Refusal::ForGood,
        }
    }
}

/// Where a job of the batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Open,
    Acked,
    Refused(Refusal),
    GivenUp,
}

/// Why `job` cannot be published, if it cannot: what MQTT forbids in its topic (the check
/// the publishers make of `--topic`), or a message over `--max-packet-size`.
pub fn invalid(job: &Job, p: &RunPlan) -> Option<String> {
    if let Err(e) = mqtt_tool::topic::check_topic_name(&job.topic) {
        return Some(format!(
            "its topic '{}' {e}",
            mqtt_tool::out::escape(&job.topic)
        ));
    }
    // What goes out: the body as the job id mode makes it (a wrapper escapes the payload
    // as a JSON string, or base64), the topic, the fixed and variable headers, and a job id
    // property (its name and up to 20 digits).
    let property = if p.job_id == JobIdMode::Property {
        32
    } else {
        0
    };
    let size = job.topic.len() + body(job, p.job_id).len() + 64 + property;
    if size > p.connect.max_packet_size {
        return Some(format!(
            "its message of {size} bytes is over --max-packet-size {}",
            p.connect.max_packet_size
        ));
    }
    None
}

/// The message body of `job`.
fn body(job: &Job, mode: JobIdMode) -> Bytes {
    match mode {
        JobIdMode::Wrapper => {
            // The payload as a JSON string; bytes that are not UTF-8 in base64 instead.
            let doc = match std::str::from_utf8(&job.payload) {
                Ok(text) => serde_json::json!({"job_id": job.id, "payload": text}),
                Err(_) => {
                    use base64::Engine;
                    let b64 = base64::engine::general_purpose::STANDARD.encode(&job.payload);
                    serde_json::json!({"job_id": job.id, "payload_base64": b64})
                }
            };
            Bytes::from(doc.to_string())
        }
        _ => job.payload.clone(),
    }
}

/// What one connection was given of the batch.
#[derive(Default)]
struct Conn {
    /// Queued to the client, not yet written (written in this order).
    queued: VecDeque<usize>,
    /// Written, by packet id, awaiting their acknowledgement.
    by_pkid: HashMap<u16, usize>,
    /// Something was acknowledged on it.
    progress: bool,
}

/// How an attempt on one connection ended.
enum Ended {
    /// Every job is acknowledged, refused or given up.
    Settled,
    /// The batch's deadline passed first.
    Deadline,
    /// The connection was lost: why.
    Lost(String),
}

/// One batch being published.
struct Publishing<'a> {
    p: &'a RunPlan,
    jobs: &'a [Job],
    qos: u8,
    fate: Vec<Fate>,
    written_once: Vec<bool>,
    losses_alone: Vec<u8>,
    /// In flight at a loss: sent one at a time, before the rest, until each is settled.
    careful: VecDeque<usize>,
}

/// Publishes `jobs` (held until each fire_at) and waits for their acknowledgements.
pub async fn publish_batch(
    p: &RunPlan,
    target: &mqtt_tool::broker::BrokerTarget,
    link: &mut Link,
    jobs: &[Job],
    n: &mut Counts,
    lateness: &mut Histogram<u64>,
) -> Batch {
    let mut b = Publishing {
        p,
        jobs,
        qos: p.qos.level(),
        fate: vec![Fate::Open; jobs.len()],
        written_once: vec![false; jobs.len()],
        losses_alone: vec![0; jobs.len()],
        careful: VecDeque::new(),
    };
    let error = b.run(target, link, n, lateness).await;
    let ids = |want: fn(Fate) -> bool| -> Vec<i64> {
        (0..jobs.len())
            .filter(|&i| want(b.fate[i]))
            .map(|i| jobs[i].id)
            .collect()
    };
    Batch {
        acked: ids(|f| f == Fate::Acked),
        rejected: ids(|f| f == Fate::Refused(Refusal::ForGood)),
        given_up: ids(|f| f == Fate::GivenUp),
        error,
    }
}

impl Publishing<'_> {
    /// Attempts on one connection after another until the batch is settled or its deadline
    /// passes; the failure that ends it early, if one does.
    async fn run(
        &mut self,
        target: &mqtt_tool::broker::BrokerTarget,
        link: &mut Link,
        n: &mut Counts,
        lateness: &mut Histogram<u64>,
    ) -> Option<Error> {
        // The acknowledgements are awaited from the last job's fire_at (the batch is held
        // until then), so the whole batch stays within --lookahead + --ack-timeout, inside
        // its lease.
        let last_fire = self
            .jobs
            .iter()
            .map(|j| {
                j.fire_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
            })
            .max()
            .unwrap_or_default();
        let deadline = Instant::now() + last_fire + self.p.ack_timeout;
        // Backoff even when the last connection came up at once (a broker that closes every
        // connection must not be hammered); back to the start after progress.
        let mut backoff = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(5),
            u64::from(std::process::id()),
        );
        loop {
            let mut conn = Conn::default();
            let why = match self.attempt(link, &mut conn, deadline, n, lateness).await {
                Ended::Settled | Ended::Deadline => return None,
                Ended::Lost(why) => why,
            };
            self.after_loss(&conn, &why);
            if conn.progress {
                backoff.reset();
            }
            if self.fate.iter().all(|f| *f != Fate::Open) {
                // The job given up was the last: the next batch starts on a new connection.
                match self
                    .reconnect(target, deadline, &mut backoff, &mut n.phases)
                    .await
                {
                    Ok(Some(l)) => {
                        *link = l;
                        n.mqtt_reconnects += 1;
                    }
                    Ok(None) => {}
                    Err(e) => return Some(e),
                }
                return None;
            }
            mqtt_tool::errln!(
                "connection to the broker lost: {}; reconnecting",
                mqtt_tool::out::escape(&why)
            );
            match self.reconnect(target, deadline, &mut backoff, &mut n.phases).await {
                Ok(Some(l)) => {
                    *link = l;
                    n.mqtt_reconnects += 1;
                }
                // Past the deadline: what is unacknowledged is left for another claim.
                Ok(None) => {
                    return Some(Error::Incomplete(format!(
                        "the connection to broker {} was lost ({why}) and not back within --ack-timeout",
                        target.url()
                    )))
                }
                Err(e) => return Some(e),
            }
        }
    }

    /// Suspects after a loss: the jobs written and not acknowledged. One alone in flight
    /// is the likely cause, and counts a loss against it; several are sent one at a time
    /// from now on, to tell which.
    fn after_loss(&mut self, conn: &Conn, why: &str) {
        let mut in_flight: Vec<usize> = conn
            .by_pkid
            .values()
            .copied()
            .filter(|&i| self.fate[i] == Fate::Open)
            .collect();
        in_flight.sort_unstable();
        match in_flight[..] {
            [] => {}
            [i] => {
                self.losses_alone[i] += 1;
                if self.losses_alone[i] >= MAX_LOSSES_ALONE {
                    self.fate[i] = Fate::GivenUp;
                    mqtt_tool::errln!(
                        "job {} given up: the broker closed the connection each of the {MAX_LOSSES_ALONE} times it was sent alone (the last: {}); it is marked processed and skipped",
                        self.jobs[i].id,
                        mqtt_tool::out::escape(why)
                    );
                } else if !self.careful.contains(&i) {
                    self.careful.push_front(i);
                }
            }
            _ => {
                for i in in_flight {
                    if !self.careful.contains(&i) {
                        self.careful.push_back(i);
                    }
                }
                self.careful.make_contiguous().sort_unstable();
            }
        }
    }

    /// A new connection, after the backoff; `None` once the deadline has passed.
    async fn reconnect(
        &self,
        target: &mqtt_tool::broker::BrokerTarget,
        deadline: Instant,
        backoff: &mut Backoff,
        phases: &mut mqtt_tool::phases::Recorder,
    ) -> Result<Option<Link>, Error> {
        let inflight = self.p.batch.min(u16::MAX as usize) as u16;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            tokio::time::sleep(backoff.next_delay().min(left)).await;
            match Link::connect(&self.p.connect, target, inflight, phases).await {
                Ok(l) => return Ok(Some(l)),
                Err(e @ Error::Refused { .. }) => return Err(e),
                Err(_) => {}
            }
        }
    }

    /// One connection's attempt: the suspects one at a time, then the rest pipelined, and
    /// their acknowledgements awaited.
    async fn attempt(
        &mut self,
        link: &mut Link,
        conn: &mut Conn,
        deadline: Instant,
        n: &mut Counts,
        lateness: &mut Histogram<u64>,
    ) -> Ended {
        while let Some(&i) = self.careful.front() {
            if self.fate[i] == Fate::Open {
                if let Some(why) = self.send(link, conn, i, n, lateness).await {
                    return Ended::Lost(why);
                }
                match self
                    .wait(link, conn, deadline, n, lateness, |b| {
                        b.fate[i] != Fate::Open
                    })
                    .await
                {
                    Ended::Settled => {}
                    other => return other,
                }
            }
            self.careful.pop_front();
        }
        for i in 0..self.jobs.len() {
            if self.fate[i] != Fate::Open {
                continue;
            }
            if let Some(why) = self.send(link, conn, i, n, lateness).await {
                return Ended::Lost(why);
            }
        }
        self.wait(link, conn, deadline, n, lateness, |b| {
            b.fate.iter().all(|f| *f != Fate::Open)
        })
        .await
    }

    /// Queues job `i` once it is due, and takes in what the connection did meanwhile;
    /// why the connection went down, if it did.
    async fn send(
        &mut self,
        link: &mut Link,
        conn: &mut Conn,
        i: usize,
        n: &mut Counts,
        lateness: &mut Histogram<u64>,
    ) -> Option<String> {
        let j = &self.jobs[i];
        if let Ok(wait) = j.fire_at.duration_since(SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
        let id = (self.p.job_id == JobIdMode::Property).then_some(j.id);
        if let Err(e) = link
            .publish(
                &j.topic,
                self.qos,
                self.p.retain,
                body(j, self.p.job_id),
                id,
            )
            .await
        {
            return Some(e);
        }
        if self.written_once[i] {
            n.resent += 1;
        }
        conn.queued.push_back(i);
        while let Ok(ev) = link.events.try_recv() {
            if let Some(why) = self.absorb(ev, conn, n, lateness) {
                return Some(why);
            }
        }
        None
    }

    /// Takes in the connection's events until `done`, the deadline or a loss.
    async fn wait(
        &mut self,
        link: &mut Link,
        conn: &mut Conn,
        deadline: Instant,
        n: &mut Counts,
        lateness: &mut Histogram<u64>,
        done: impl Fn(&Self) -> bool,
    ) -> Ended {
        loop {
            if done(self) {
                return Ended::Settled;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ended::Deadline;
            }
            match tokio::time::timeout(left, link.events.recv()).await {
                Err(_) => return Ended::Deadline,
                Ok(None) => return Ended::Lost("the connection's event loop ended".into()),
                Ok(Some(ev)) => {
                    if let Some(why) = self.absorb(ev, conn, n, lateness) {
                        return Ended::Lost(why);
                    }
                }
            }
        }
    }

    /// Applies one event; returns why the connection went down, if it did.
    fn absorb(
        &mut self,
        ev: Ev,
        conn: &mut Conn,
        n: &mut Counts,
        lateness: &mut Histogram<u64>,
    ) -> Option<String> {
        match ev {
            Ev::Written(pkid) => {
                let i = conn.queued.pop_front()?;
                if !self.written_once[i] {
                    self.written_once[i] = true;
                    n.published += 1;
                    let late = SystemTime::now()
                        .duration_since(self.jobs[i].fire_at)
                        .unwrap_or_default();
                    record(lateness, late, n);
                    if late > self.p.late_after {
                        n.late += 1;
                    }
                }
                if self.qos == 0 {
                    self.fate[i] = Fate::Acked;
                } else {
                    conn.by_pkid.insert(pkid, i);
                }
                None
            }
            Ev::Acked(pkid, result) => {
                if let Some(i) = conn.by_pkid.remove(&pkid) {
                    conn.progress = true;
                    self.fate[i] = match result {
                        Ok(()) => Fate::Acked,
                        Err(code) => Fate::Refused(Refusal::of(code)),
                    };
                }
                None
            }
            Ev::Up(_) => None,
            Ev::Down(why) | Ev::Refused(why) => Some(why),
        }
    }
}

/// Records a job's lateness; past the histogram's ceiling it is recorded at the ceiling and
/// counted in `lateness_clamped`.
pub fn record(lateness: &mut Histogram<u64>, late: Duration, n: &mut Counts) {
    let us = late.as_micros().min(u64::MAX as u128) as u64;
    mqtt_tool::hist::record_clamped(lateness, us, &mut n.lateness_clamped);
}
