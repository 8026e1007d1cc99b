//! job-pub's summary for people ([`Summarize`]): the verdict, the jobs and their fates
//! (only the fates this run had), the rate, how late jobs went out, the thresholds in their
//! units and the generator's health. `--report-md` renders it.

use mqtt_tool::format::{fmt_int, fmt_rate};
use mqtt_tool::summary::{fmt_ms, fmt_percentiles_ms, fmt_secs, Summarize, Summary};

use crate::report::{threshold_fields, Report};

impl Summarize for Report {
    fn summary(&self) -> Summary {
        let mut s = Summary::new(&self.header.tool);
        if let Some(sig) = &self.interrupted_by {
            s.fail(&format!("interrupted by {sig}"));
        }
        if let Some(e) = &self.error {
            s.fail(&format!("incomplete: {e}"));
        }
        s.passed(&format!(
            "{} jobs claimed, {} acknowledged",
            fmt_int(self.jobs_claimed),
            fmt_int(self.jobs_acked)
        ));
        s.row(
            "run",
            format!(
                "QoS {}, batch {}, {}",
                self.qos,
                fmt_int(self.batch),
                fmt_secs(self.elapsed_s)
            ),
        );
        s.row(
            "rate",
            format!("{} jobs/s acknowledged", fmt_rate(self.job_rate)),
        );
        let mut jobs = vec![
            format!("{} claimed", fmt_int(self.jobs_claimed)),
            format!("{} published", fmt_int(self.jobs_published)),
            format!("{} acknowledged", fmt_int(self.jobs_acked)),
        ];
        for (n, what) in [
            (self.jobs_failed, "failed (left for another claim)"),
            (self.jobs_rejected, "rejected"),
            (self.jobs_given_up, "given up"),
            (self.jobs_unreadable, "unreadable"),
            (self.jobs_skipped, "skipped (past --max-lateness)"),
            (self.jobs_late, "late (past --late-after)"),
            (
                self.jobs_republished_after_lease_expiry,
                "republished after their lease expired",
            ),
            (
                self.jobs_lease_lost,
                "acknowledged after their lease ran out",
            ),
            (self.jobs_unrecorded, "not marked in the database"),
        ] {
            if n > 0 {
                jobs.push(format!("{} {what}", fmt_int(n)));
            }
        }
        s.row("jobs", jobs.join(", "));
        if let Some(p) = &self.lateness_us {
            s.row("lateness", fmt_percentiles_ms(p));
        }
        if self.db_retries + self.mqtt_reconnects + self.messages_resent > 0
            || self.db_connections_opened > 1
        {
            s.row(
                "faults",
                format!(
                    "{} database retries, {} database connections opened, {} MQTT reconnects, {} messages resent",
                    fmt_int(self.db_retries),
                    fmt_int(self.db_connections_opened),
                    fmt_int(self.mqtt_reconnects),
                    fmt_int(self.messages_resent)
                ),
            );
        }

        // How the run ended matters to a reader: a capped horizon leaves jobs for later.
        if let Some(stop) = self.stop_line() {
            s.row("stopped by", stop);
        }

        s.thresholds(&self.header.thresholds, &threshold_fields());

        let mut health = Vec::new();
        if let Some(p) = &self.lateness_us {
            health.push(format!(
                "behind fire_at p99 {}, max {}",
                fmt_ms(p.p99 as f64),
                fmt_ms(p.max as f64)
            ));
        }
        health.push(match self.lateness_clamped {
            0 => "no sample clamped".into(),
            n => format!("{} jobs later than 366 days recorded at it", fmt_int(n)),
        });
        s.health("Generator", health.join("; "));
        s
    }
}
