//! What a `job-pub run` did: every job it claimed ends acknowledged (processed), skipped
//! (past `--max-lateness`, processed without publishing), rejected (a topic MQTT forbids, a
//! message over the packet limit, an MQTT 5 reason code), given up (the broker closed the
//! connection each time it was sent), unreadable (a row job-pub cannot read) or failed (no
//! acknowledgement in time: left unprocessed, claimed again when its lease runs out).
//! Text summary and JSON (`schema/job-pub-report.schema.json`).

use mqtt_tool::format::{fmt_int, fmt_percentiles, Percentiles};
use mqtt_tool::frame::ReportHeader;
use mqtt_tool::threshold::{Fields, Unit};
use serde::{Deserialize, Serialize};

/// 2: `jobs_republished` named for what it counts (`jobs_republished_after_lease_expiry`);
/// `jobs_given_up`, `jobs_unreadable`, `jobs_unrecorded`, `lateness_clamped`.
/// 3: how the run ended: `stopped_by`, `horizon_end`, `horizon_s`, `horizon_capped`,
/// `jobs_left_after_horizon`, `duration_s`.
pub const SCHEMA_VERSION: u32 = 3;

pub fn threshold_fields() -> Fields {
    Fields::default()
        .numbers(
            &[
                "jobs_claimed",
                "jobs_published",
                "jobs_acked",
                "jobs_failed",
                "jobs_rejected",
                "jobs_given_up",
                "jobs_unreadable",
                "jobs_skipped",
                "jobs_late",
                "jobs_republished_after_lease_expiry",
                "jobs_lease_lost",
                "jobs_unrecorded",
                "jobs_left_after_horizon",
                "lateness_clamped",
            ],
            Unit::Number,
        )
        .numbers(&["job_rate"], Unit::Named("jobs/s"))
        .numbers(&["db_retries", "mqtt_reconnects"], Unit::Number)
        .numbers(&["elapsed_s"], Unit::Seconds)
        .latency("lateness", "/lateness_us")
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistogramsReport {
    pub lateness_us: Option<String>,
    /// The connect phases' (`tcp_us`, `tls_us`, `connack_us`; absent in older reports).
    #[serde(flatten)]
    pub phases: mqtt_tool::phases::PhaseHistograms,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// tool, version, broker, window (always both ends), run id, pushes, thresholds: every report's.
    #[serde(flatten)]
    pub header: ReportHeader,
    /// The database, without its password.
    pub database: String,
    pub table: String,
    /// This instance's name in `claimed_by`.
    pub instance: String,
    pub qos: u8,
    pub mqtt_version: String,
    /// How a message carries its job id: property, wrapper or none.
    pub job_id: String,
    pub batch: u64,
    /// Jobs this instance claimed.
    pub jobs_claimed: u64,
    /// PUBLISHes written to the socket (a job published again after a lost connection counts
    /// once here and in `messages_resent`).
    pub jobs_published: u64,
    /// Acknowledged (QoS 1, 2) or written (QoS 0) to the broker; marked processed unless
    /// counted in `jobs_unrecorded` too.
    pub jobs_acked: u64,
    /// Not acknowledged within --ack-timeout (or refused for now by an MQTT 5 reason code,
    /// or never sent because the database went away first): left unprocessed for another
    /// claim.
    pub jobs_failed: u64,
    /// Refused for good, marked processed and skipped: a topic MQTT forbids or a message over
    /// --max-packet-size (refused before sending), or an MQTT 5 reason code from the broker.
    pub jobs_rejected: u64,
    /// The broker closed the connection each of the three times the job was sent alone:
    /// marked processed and skipped.
    pub jobs_given_up: u64,
    /// Rows that cannot be read as a job (a NULL topic or payload, text that is not UTF-8):
    /// marked processed and skipped, each named by its id on stderr.
    pub jobs_unreadable: u64,
    /// Overdue past --max-lateness: marked processed without publishing.
    pub jobs_skipped: u64,
    /// Published more than --late-after after their fire_at.
    pub jobs_late: u64,
    /// Claimed before and left unprocessed until their lease expired (an instance that
    /// died, a batch not acknowledged in time, a database outage longer than the lease):
    /// published again.
    pub jobs_republished_after_lease_expiry: u64,
    /// Acknowledged, but their lease had run out and another instance claimed them: they
    /// may have been published twice.
    pub jobs_lease_lost: u64,
    /// Counted above, but their fate could not be written to the database (it was gone):
    /// still leased, claimed again when their lease runs out (those acknowledged are
    /// published again).
    pub jobs_unrecorded: u64,
    pub messages_resent: u64,
    pub claims: u64,
    pub db_retries: u64,
    /// Database connections opened (a lost one is replaced, the claimed jobs kept).
    pub db_connections_opened: u64,
    pub mqtt_reconnects: u64,
    pub elapsed_s: f64,
    /// Acknowledged jobs per second.
    pub job_rate: f64,
    /// Written to the socket minus fire_at, µs (0 when published on time).
    pub lateness_us: Option<Percentiles>,
    /// Jobs later than the lateness histogram's ceiling (366 days), recorded at it.
    pub lateness_clamped: u64,
    /// The phases of every MQTT connect that got its CONNACK (the first and each new
    /// connection): TCP connect (after the name lookup), CONNECT -> CONNACK; no TLS (job-pub
    /// speaks plain TCP). Older reports lack it and read as all null.
    #[serde(default)]
    pub connect_phases_us: mqtt_tool::phases::Phases,
    pub histograms: HistogramsReport,
    /// complete | interrupted | incomplete
    pub outcome: String,
    pub interrupted_by: Option<String>,
    /// empty (--until-empty: nothing left due within the horizon) | duration | signal | failed
    pub stopped_by: String,
    /// --until-empty: the last fire_at the run waited for (the database's clock).
    pub horizon_end: Option<String>,
    /// --until-empty: the horizon's end, seconds after the start.
    pub horizon_s: Option<f64>,
    /// The horizon was cut to --max-horizon: the table held jobs due later.
    pub horizon_capped: bool,
    /// --until-empty: jobs not processed and due after the horizon's end when the run ended
    /// (left for a later run; 0 without --until-empty).
    pub jobs_left_after_horizon: u64,
    /// --duration, seconds.
    pub duration_s: Option<f64>,
    pub error: Option<String>,
}

impl mqtt_tool::frame::FramedReport for Report {
    fn header_mut(&mut self) -> &mut ReportHeader {
        &mut self.header
    }
    fn judge(&mut self, thresholds: &[mqtt_tool::threshold::Threshold]) {
        Report::judge(self, thresholds)
    }
    fn render_text(&self) -> String {
        Report::render_text(self)
    }
}

impl Report {
    pub fn judge(&mut self, thresholds: &[mqtt_tool::threshold::Threshold]) {
        self.header.thresholds = mqtt_tool::threshold::judge_report(&*self, thresholds);
    }

    /// How the run ended, for the summary (a signal or a failure has its own line).
    pub(crate) fn stop_line(&self) -> Option<String> {
        let secs = |s: f64| crate::progress::fmt_span(std::time::Duration::from_secs_f64(s));
        match self.stopped_by.as_str() {
            "empty" => {
                let mut l = match self.horizon_s {
                    Some(h) if h > 0.0 => format!(
                        "--until-empty: nothing left due within the horizon ({} after the start)",
                        secs(h)
                    ),
                    _ => "--until-empty: nothing left due".to_string(),
                };
                if self.horizon_capped {
                    l.push_str(", capped by --max-horizon");
                }
                if self.jobs_left_after_horizon > 0 {
                    l.push_str(&format!(
                        "; {} due later left for a later run",
                        match self.jobs_left_after_horizon {
                            1 => "1 job".to_string(),
                            k => format!("{} jobs", fmt_int(k)),
                        }
                    ));
                }
                Some(l)
            }
            "duration" => Some(format!(
                "--duration {}",
                secs(self.duration_s.unwrap_or_default())
            )),
            _ => None,
        }
    }

    pub fn render_text(&self) -> String {
        let mut o = String::new();
        let mut line = |k: &str, v: String| o.push_str(&format!("{k:<20}{v}\n"));
        line(&format!("== {} summary", self.header.tool), String::new());
        line("broker", self.header.broker.clone());
        line(
            "database",
            format!("{} (table {})", self.database, self.table),
        );
        // What every run has, then only the fates some job had: a line of zeros says nothing.
        let mut jobs = format!(
            "{} claimed, {} published, {} acknowledged",
            fmt_int(self.jobs_claimed),
            fmt_int(self.jobs_published),
            fmt_int(self.jobs_acked)
        );
        for (n, what) in [
            (self.jobs_failed, "failed"),
            (self.jobs_rejected, "rejected"),
            (
                self.jobs_given_up,
                "given up (the broker closed the connection for each)",
            ),
            (self.jobs_unreadable, "unreadable rows"),
            (self.jobs_skipped, "skipped (past --max-lateness)"),
        ] {
            if n > 0 {
                jobs.push_str(&format!(", {} {what}", fmt_int(n)));
            }
        }
        line("jobs", jobs);
        if self.jobs_late > 0 {
            line(
                "late",
                format!(
                    "{} published more than --late-after after their fire_at",
                    fmt_int(self.jobs_late)
                ),
            );
        }
        if self.jobs_republished_after_lease_expiry + self.jobs_lease_lost + self.messages_resent
            > 0
        {
            line(
                "again",
                format!(
                    "{} republished after their lease expired, {} acknowledged after their lease ran out, {} resent after a lost connection",
                    fmt_int(self.jobs_republished_after_lease_expiry),
                    fmt_int(self.jobs_lease_lost),
                    fmt_int(self.messages_resent)
                ),
            );
        }
        if let Some(l) = self.header.push_failures_line() {
            line("metrics push", l);
        }
        if self.jobs_unrecorded > 0 {
            line(
                "unrecorded",
                format!(
                    "{} jobs not marked in the database (it was gone): still leased, they are claimed again when their lease runs out, and those acknowledged published again",
                    fmt_int(self.jobs_unrecorded)
                ),
            );
        }
        line(
            "rate",
            format!(
                "{} jobs/s over {:.3} s ({} claims, QoS {}, batch {})",
                fmt_int(self.job_rate.round() as u64),
                self.elapsed_s,
                fmt_int(self.claims),
                self.qos,
                fmt_int(self.batch)
            ),
        );
        if let Some(p) = &self.lateness_us {
            line("lateness", fmt_percentiles(p, true));
        }
        if self.lateness_clamped > 0 {
            line(
                "clamped",
                format!(
                    "{} later than the lateness histogram's ceiling (366 days), recorded at it",
                    match self.lateness_clamped {
                        1 => "1 job".to_string(),
                        k => format!("{} jobs", fmt_int(k)),
                    }
                ),
            );
        }
        for (k, v) in self.connect_phases_us.lines() {
            line(k, v);
        }
        if self.db_retries + self.mqtt_reconnects > 0 || self.db_connections_opened > 1 {
            line(
                "faults",
                format!(
                    "{} database retries, {} database connections opened, {} MQTT reconnects",
                    fmt_int(self.db_retries),
                    fmt_int(self.db_connections_opened),
                    fmt_int(self.mqtt_reconnects)
                ),
            );
        }
        if let Some(stop) = self.stop_line() {
            line("stopped by", stop);
        }
        if let Some(sig) = &self.interrupted_by {
            line("interrupted", format!("by {sig}"));
        }
        if let Some(e) = &self.error {
            line("problem", mqtt_tool::out::escape(e).into_owned());
        }
        for t in mqtt_tool::threshold::summary_lines(&self.header.thresholds) {
            line("threshold", t);
        }
        o
    }
}
