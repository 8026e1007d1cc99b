//! One run frame and one report header for every tool.
//!
//! ```text
//! RunFrame::open(metrics, exports, thresholds, the tool's metric families)
//!   frame.broker(&connect)   -> the broker (given, or the embedded one), its version checked
//!   Observer::spawn(..)      -> progress, hdr log: stopped once the engine is done
//!   ... the tool's engine runs, the tool builds its report (a ReportHeader flattened in) ...
//!   frame.report(&mut report) -> final metrics pushed and counted, thresholds judged,
//!                                the summary printed, --report-json/-csv/-md written
//!   frame::exit(..)           -> the exit code: signal > failure > thresholds > shortfall
//! RunFrame::close(result)     -- --metrics-linger, then the exit code stands
//! ```
//!
//! [`ReportHeader`] is what every report starts with: tool, version, broker, window, run
//! id, pushes and thresholds. Each tool's report holds it with `#[serde(flatten)]`, so the
//! JSON keeps its flat field names; `loadgen merge` checks and adds headers in one place
//! ([`crate::merge`]).

use std::process::ExitCode;

use serde::{Deserialize, Serialize};

use crate::broker::BrokerTarget;
use crate::connect::ConnectPlan;
use crate::error::Error;
use crate::export::Exports;
use crate::live::{LiveMetrics, MetricsPlan};
use crate::metrics::Families;
use crate::shutdown::Shutdown;
use crate::summary::Summarize;
use crate::threshold::{Judged, Threshold};

/// What a run frame needs of a tool's report: its header, its judge (a tool may leave
/// large lists out of what thresholds read) and its text summary.
pub trait FramedReport: Serialize + Summarize {
    fn header_mut(&mut self) -> &mut ReportHeader;
    /// Judges `thresholds` on the report and records them in its header.
    fn judge(&mut self, thresholds: &[Threshold]);
    /// The text summary, printed on stdout (stderr when an export takes stdout).
    fn render_text(&self) -> String;
}

/// The frame of one run: its live metrics from [`RunFrame::open`] to [`RunFrame::close`],
/// its broker, its thresholds and exports, its exit code.
pub struct RunFrame {
    metrics: LiveMetrics,
    exports: Exports,
    thresholds: Vec<Threshold>,
}

impl RunFrame {
    /// Opens the frame before anything runs: `--metrics-addr` is bound (a port in use is a
    /// usage error now) and `families` served and pushed from here on. Needs a runtime.
    pub fn open(
        metrics: MetricsPlan,
        exports: Exports,
        thresholds: Vec<Threshold>,
        families: Families,
    ) -> Result<RunFrame, Error> {
        Ok(RunFrame {
            metrics: LiveMetrics::start(metrics, families)?,
            exports,
            thresholds,
        })
    }

    /// The run id every series and the report carry.
    pub fn run_id(&self) -> &str {
        self.metrics.run_id()
    }

    /// The broker of `connect`: the one given (its name looked up off the runtime) or the
    /// embedded one started now; refused when the run's MQTT version cannot work with it.
    pub async fn broker(&self, connect: &ConnectPlan) -> Result<BrokerTarget, Error> {
        let choice = connect.broker.clone();
        let tls = connect.tls.is_some();
        let (max_packet, port) = (connect.max_packet_size, connect.embedded_port);
        let target = tokio::task::spawn_blocking(move || {
            crate::broker::resolve(&choice, tls, max_packet, port)
        })
        .await
        .map_err(|e| Error::failed("broker lookup failed", e))??;
        crate::broker::check_version(&target, connect.mqtt5)?;
        Ok(target)
    }

    /// The report's figures are final: the metrics are finished (`loadgen_run_finished`,
    /// the final push, counted in the header), the thresholds judged, the text summary
    /// printed and every export written.
    pub async fn report<R: FramedReport>(&mut self, report: &mut R) -> Result<(), Error> {
        report.header_mut().pushed(self.metrics.finish().await);
        report.judge(&self.thresholds);
        let text = report.render_text();
        self.exports.write(report, &text)
    }

    /// After the report, an embedded broker outlives the run for `connect`'s
    /// `--embedded-linger` so that subscribers get the last messages; a signal ends it.
    pub async fn embedded_linger(
        &self,
        connect: &ConnectPlan,
        target: &BrokerTarget,
        shutdown: &Shutdown,
    ) {
        let linger = connect.embedded_linger;
        if target.embedded && !linger.is_zero() && !shutdown.stop.is_cancelled() {
            tokio::select! {
                _ = tokio::time::sleep(linger) => {}
                _ = shutdown.stop.cancelled() => {}
            }
        }
    }

    /// Closes the frame with the run's `result`: the final metrics are served for
    /// `--metrics-linger` (see [`LiveMetrics::linger`]); the result's exit code stands.
    pub async fn close(
        self,
        result: Result<ExitCode, Error>,
        shutdown: &Shutdown,
    ) -> Result<ExitCode, Error> {
        self.metrics.linger(result, shutdown).await
    }
}

/// The fields every tool's report shares, flattened into it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportHeader {
    /// The tool's report schema (each tool counts its own).
    pub schema_version: u32,
    pub tool: String,
    pub tool_version: String,
    pub broker: String,
    /// The run's window, RFC 3339 UTC (null: nothing happened, as each tool says);
    /// `loadgen merge` takes its window from these.
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// `--run-id`: the `run` label of the live metrics (default: `--start-at`, else the
    /// run's start, RFC 3339 UTC to the second).
    #[serde(default)]
    pub run_id: String,
    /// `--metrics-push`: pushes to the Pushgateway that succeeded and that failed.
    #[serde(default)]
    pub metrics_pushes: u64,
    #[serde(default)]
    pub metrics_push_failures: u64,
    /// `--threshold`s, judged on this report.
    pub thresholds: Vec<Judged>,
}

impl ReportHeader {
    /// The header of a report of `tool` (schema `schema_version`) on `broker`, this build's
    /// version, labelled `run_id`; window, pushes and thresholds come later.
    pub fn new(tool: &str, schema_version: u32, broker: String, run_id: &str) -> ReportHeader {
        ReportHeader {
            schema_version,
            tool: tool.to_string(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            broker,
            run_id: run_id.to_string(),
            ..ReportHeader::default()
        }
    }

    /// Records the run's pushes to the Pushgateway.
    pub fn pushed(&mut self, p: crate::live::Pushes) {
        self.metrics_pushes = p.ok;
        self.metrics_push_failures = p.failed;
    }

    /// The thresholds' failures, one line (`None`: all passed, or none was given).
    pub fn thresholds_failed(&self) -> Option<String> {
        crate::threshold::failures(&self.thresholds)
    }

    /// The summary's line of failed pushes, if any failed.
    pub fn push_failures_line(&self) -> Option<String> {
        crate::live::Pushes::failures_line(self.metrics_pushes, self.metrics_push_failures)
    }
}

/// A task that watches a run while its engine works (the progress line, the hdr log, live
/// figures): spawned with its own stop token, stopped after the engine, its result kept.
pub struct Observer<T> {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<T>,
}

impl<T: Send + 'static> Observer<T> {
    /// Spawns `watch(stop)` on the runtime.
    pub fn spawn<F>(watch: impl FnOnce(tokio_util::sync::CancellationToken) -> F) -> Observer<T>
    where
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(watch(stop.clone()));
        Observer { stop, task }
    }

    /// Stops it and waits for its result (`None`: it panicked).
    pub async fn stop(self) -> Option<T> {
        self.stop.cancel();
        self.task.await.ok()
    }
}

/// A wall-clock time as every report writes it: RFC 3339 UTC to the microsecond.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// The exit code of a run whose report is written, in the order every tool takes: a signal
/// that stopped it; a `failure` that kept the run from happening as planned (the broker or
/// the database unreachable or refusing); a failed threshold; then the tool's own verdict
/// on what it measured (`shortfall`: incomplete, verification failed, or success).
pub fn exit(
    signal: Option<crate::shutdown::Signal>,
    failure: Option<Error>,
    header: &ReportHeader,
    shortfall: Result<ExitCode, Error>,
) -> Result<ExitCode, Error> {
    if let Some(sig) = signal {
        return Ok(ExitCode::from(sig.exit_code()));
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(failed) = header.thresholds_failed() {
        return Err(Error::Thresholds(failed));
    }
    shortfall
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    struct Tool {
        #[serde(flatten)]
        header: ReportHeader,
        points: u64,
    }

    #[test]
    fn the_header_flattens_into_a_tools_report_under_its_own_field_names() {
        let r = Tool {
            header: ReportHeader {
                started_at: Some("2026-12-01T12:00:00Z".into()),
                metrics_pushes: 3,
                ..ReportHeader::new("loadgen pub", 5, "mqtt://127.0.0.1:1883".into(), "r1")
            },
            points: 7,
        };
        let v = serde_json::to_value(&r).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "schema_version",
            "tool",
            "tool_version",
            "broker",
            "started_at",
            "ended_at",
            "run_id",
            "metrics_pushes",
            "metrics_push_failures",
            "thresholds",
            "points",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        assert!(!keys.contains(&"header"), "{keys:?}");
        assert_eq!(v["tool_version"], env!("CARGO_PKG_VERSION"));
        let back: Tool = serde_json::from_value(v).unwrap();
        assert_eq!(back.header, r.header);
    }

    #[test]
    fn a_report_from_before_run_ids_and_pushes_reads_with_them_zero() {
        let old = r#"{"schema_version": 4, "tool": "backend-sub", "tool_version": "0.1.0",
            "broker": "mqtt://b:1883", "started_at": null, "ended_at": null,
            "thresholds": [], "points": 1}"#;
        let r: Tool = serde_json::from_str(old).unwrap();
        assert_eq!(r.header.run_id, "");
        assert_eq!(
            (r.header.metrics_pushes, r.header.metrics_push_failures),
            (0, 0)
        );
        assert_eq!(r.points, 1);
    }

    #[test]
    fn a_signal_beats_a_failure_which_beats_thresholds_which_beat_the_tools_verdict() {
        use crate::shutdown::Signal;
        let failed = |pass| ReportHeader {
            thresholds: vec![Judged {
                expr: "x>1".into(),
                field: "x".into(),
                op: crate::threshold::Op::Gt,
                limit: 1.0,
                value: Some(0.0),
                pass,
                unit: None,
            }],
            ..ReportHeader::default()
        };
        let refused = || {
            Some(crate::Error::Refused {
                broker: "b".into(),
                reason: "r".into(),
            })
        };
        let short = || Err(crate::Error::Incomplete("lost".into()));
        let code = |r: Result<ExitCode, crate::Error>| match r {
            Ok(c) => format!("{c:?}"),
            Err(e) => format!("{:?}", ExitCode::from(e.exit_code())),
        };
        let c = |n: u8| format!("{:?}", ExitCode::from(n));
        let h = failed(false);
        assert_eq!(
            code(exit(Some(Signal::Terminate), refused(), &h, short())),
            c(143)
        );
        assert_eq!(code(exit(None, refused(), &h, short())), c(4));
        assert_eq!(code(exit(None, None, &h, short())), c(99));
        assert_eq!(code(exit(None, None, &failed(true), short())), c(1));
        assert_eq!(
            code(exit(None, None, &failed(true), Ok(ExitCode::SUCCESS))),
            c(0)
        );
    }
}
