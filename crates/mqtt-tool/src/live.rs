//! The live metrics of one run, as every tool frames them: served at `--metrics-addr`,
//! pushed to `--metrics-push`, every series labelled with the run (`--run-id`), and kept up
//! after the run for `--metrics-linger` so that a scraper sees its end.
//!
//! ```text
//! tool's Families --render (run label, loadgen_run_finished)--> /metrics (metrics::serve)
//!                                                           +--> PUT every 5 s (push)
//! finish(): the figures are final -> loadgen_run_finished 1, the final push (counted)
//! linger(): the report and the exit code are settled; serve until the linger ends
//! ```
//!
//! A tool makes its [`LiveMetrics`] before anything runs (a port in use is a usage error at
//! once), calls [`LiveMetrics::finish`] once its report's figures are final (before writing
//! the report, which counts the pushes), and ends with [`LiveMetrics::linger`].

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::args::MetricsArgs;
use crate::error::Error;
use crate::metrics::{Exposition, Families};
use crate::push::{self, PushUrl};
use crate::shutdown::Shutdown;

/// How often the metrics are pushed during a run (the final figures are pushed at its end).
pub const PUSH_EVERY: Duration = Duration::from_secs(5);

/// The help of `loadgen_info`, the same in every tool: a Pushgateway refuses a family
/// whose help differs between its groups.
pub const INFO_HELP: &str = "The run: tool, version and (publishers) shard; 1.";

/// The longest `--run-id`, in bytes.
pub const MAX_RUN_ID: usize = 128;

/// The checked metrics flags of a run.
#[derive(Debug, Clone)]
pub struct MetricsPlan {
    pub addr: Option<SocketAddr>,
    pub linger: Duration,
    pub push: Option<PushUrl>,
    /// The `run` label, and the report's `run_id`.
    pub run_id: String,
    /// The Pushgateway group's `instance`: host:pid.
    pub instance: String,
    pub quiet: bool,
}

impl MetricsArgs {
    /// The plan: `start_at` is `--start-at` (the run's id when `--run-id` is not given;
    /// else the time now).
    pub fn plan(&self, start_at: Option<SystemTime>, quiet: bool) -> Result<MetricsPlan, Error> {
        let run_id = match &self.run_id {
            Some(id) => check_run_id(id)?,
            None => run_id_at(start_at.unwrap_or_else(SystemTime::now)),
        };
        let push = self
            .metrics_push
            .as_deref()
            .map(PushUrl::parse)
            .transpose()
            .map_err(Error::usage)?;
        Ok(MetricsPlan {
            addr: self.metrics_addr,
            linger: self.metrics_linger,
            push,
            run_id,
            instance: format!("{}:{}", hostname(), std::process::id()),
            quiet,
        })
    }
}

/// A run id as the default gives it: the instant in RFC 3339 UTC, to the second.
pub fn run_id_at(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn check_run_id(id: &str) -> Result<String, Error> {
    if id.is_empty() || id.len() > MAX_RUN_ID || id.chars().any(char::is_control) {
        return Err(Error::usage(format!(
            "--run-id must be 1 to {MAX_RUN_ID} bytes without control characters, e.g. nightly-2026-12-01"
        )));
    }
    Ok(id.to_string())
}

fn hostname() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let h: String = h
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .take(64)
        .collect();
    if h.is_empty() {
        "localhost".into()
    } else {
        h
    }
}

/// Pushes made and failed: the report's `metrics_pushes` and `metrics_push_failures`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pushes {
    pub ok: u64,
    pub failed: u64,
}

impl Pushes {
    /// The summary's line when pushes failed: "2 of 14 failed (see the warnings)".
    pub fn failures_line(ok: u64, failed: u64) -> Option<String> {
        (failed > 0).then(|| {
            format!(
                "{} of {} pushes failed (see the warnings above)",
                crate::format::fmt_int(failed),
                crate::format::fmt_int(ok + failed)
            )
        })
    }
}

/// What a scrape or a push shows: the tool's families under the run's label, and whether
/// the run has finished.
struct Render {
    run_id: String,
    families: Families,
    finished: AtomicBool,
}

impl Render {
    fn text(&self) -> String {
        let mut e = Exposition::with_labels(&[("run", &self.run_id)]);
        (self.families)(&mut e);
        e.gauge(
            "loadgen_run_finished",
            "1 once the run has ended and these figures are final.",
            if self.finished.load(Relaxed) {
                1.0
            } else {
                0.0
            },
        );
        e.finish()
    }
}

/// The live metrics of a run; serving and pushing stop when it is dropped.
pub struct LiveMetrics {
    plan: MetricsPlan,
    render: Arc<Render>,
    /// The address served, once bound.
    served: Option<SocketAddr>,
    pusher: Option<tokio::task::JoinHandle<Pushes>>,
    stop_pushing: CancellationToken,
    stop: CancellationToken,
    pushes: Pushes,
    finished_at: Option<Instant>,
}

impl Drop for LiveMetrics {
    fn drop(&mut self) {
        self.stop.cancel();
        self.stop_pushing.cancel();
    }
}

impl LiveMetrics {
    /// Binds `--metrics-addr` (a port in use is a usage error) and starts serving and
    /// pushing `families`. Needs a tokio runtime.
    pub fn start(plan: MetricsPlan, families: Families) -> Result<LiveMetrics, Error> {
        let render = Arc::new(Render {
            run_id: plan.run_id.clone(),
            families,
            finished: AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        let mut served = None;
        if let Some(addr) = plan.addr {
            let l = crate::metrics::bind(addr)?;
            served = l.local_addr().ok();
            let r = render.clone();
            tokio::spawn(crate::metrics::serve(
                l,
                Arc::new(move || r.text()),
                stop.clone(),
            ));
        }
        let stop_pushing = CancellationToken::new();
        let pusher = plan.push.clone().map(|url| {
            tokio::spawn(push_every(
                url,
                group_path(&plan),
                render.clone(),
                stop_pushing.clone(),
            ))
        });
        Ok(LiveMetrics {
            plan,
            render,
            served,
            pusher,
            stop_pushing,
            stop,
            pushes: Pushes::default(),
            finished_at: None,
        })
    }

    /// The run id every series carries.
    pub fn run_id(&self) -> &str {
        &self.plan.run_id
    }

    /// The exposition as a scrape would see it now.
    pub fn render(&self) -> String {
        self.render.text()
    }

    /// The figures are final: `loadgen_run_finished` becomes 1, the periodic pushes stop and
    /// the final figures are pushed (within [`push::PUSH_TIMEOUT`]). Returns the pushes of
    /// the run, for its report. A second call changes nothing.
    pub async fn finish(&mut self) -> Pushes {
        if self.finished_at.is_some() {
            return self.pushes;
        }
        self.render.finished.store(true, Relaxed);
        self.finished_at = Some(Instant::now());
        self.stop_pushing.cancel();
        if let Some(p) = self.pusher.take() {
            self.pushes = p.await.unwrap_or_default();
        }
        if let Some(url) = &self.plan.push {
            match push::put(url, &group_path(&self.plan), &self.render.text()).await {
                Ok(()) => self.pushes.ok += 1,
                Err(e) => {
                    self.pushes.failed += 1;
                    crate::errln!(
                        "warning: --metrics-push: the final figures were not pushed: {e}"
                    );
                }
            }
        }
        self.pushes
    }

    /// Ends the run: with `--metrics-addr` and a linger, the run's error (if any) is printed
    /// now, a line says the final figures are served (unless --quiet), and they are until
    /// the linger ends — counted from [`LiveMetrics::finish`] — or a signal comes (the
    /// second, when one stopped the run). The result's exit code stands.
    pub async fn linger(
        mut self,
        result: Result<ExitCode, Error>,
        shutdown: &Shutdown,
    ) -> Result<ExitCode, Error> {
        self.finish().await;
        let (Some(addr), Some(at)) = (self.served, self.finished_at) else {
            return result;
        };
        let until = at + self.plan.linger;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || shutdown.abort.is_cancelled() {
            return result;
        }
        let code = match result {
            Ok(c) => c,
            Err(e) => {
                crate::run::print_error(&e.to_string());
                ExitCode::from(e.exit_code())
            }
        };
        if !self.plan.quiet {
            crate::errln!(
                "serving the final metrics at http://{addr}/metrics for {:.1} s more (--metrics-linger); a signal ends this now",
                left.as_secs_f64()
            );
        }
        let signalled = shutdown.stop.is_cancelled();
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => {}
            _ = shutdown.abort.cancelled() => {}
            _ = shutdown.stop.cancelled(), if !signalled => {}
        }
        Ok(code)
    }
}

fn group_path(plan: &MetricsPlan) -> String {
    plan.push.as_ref().map_or_else(String::new, |u| {
        u.group_path(
            "loadgen",
            &[("run", &plan.run_id), ("instance", &plan.instance)],
        )
    })
}

/// Pushes every [`PUSH_EVERY`] until `stop`; the first failure is a warning, every one is
/// counted.
async fn push_every(
    url: PushUrl,
    path: String,
    render: Arc<Render>,
    stop: CancellationToken,
) -> Pushes {
    let mut pushes = Pushes::default();
    let mut tick = tokio::time::interval(PUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return pushes,
            _ = tick.tick() => {}
        }
        let body = render.text();
        let r = tokio::select! {
            _ = stop.cancelled() => return pushes,
            r = push::put(&url, &path, &body) => r,
        };
        match r {
            Ok(()) => pushes.ok += 1,
            Err(e) => {
                if pushes.failed == 0 {
                    crate::errln!(
                        "warning: --metrics-push: {e}; the run goes on, failed pushes are counted in the report"
                    );
                }
                pushes.failed += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn args(run_id: Option<&str>, push: Option<&str>) -> MetricsArgs {
        MetricsArgs {
            metrics_addr: None,
            metrics_linger: Duration::from_secs(2),
            metrics_push: push.map(Into::into),
            run_id: run_id.map(Into::into),
        }
    }

    #[test]
    fn the_run_id_is_the_flag_else_the_start_at_instant_to_the_second() {
        let at = UNIX_EPOCH + Duration::from_millis(1_796_126_400_250);
        let p = args(None, None).plan(Some(at), false).unwrap();
        assert_eq!(p.run_id, "2026-12-01T12:00:00Z");
        let p = args(Some("nightly-1"), None).plan(Some(at), false).unwrap();
        assert_eq!(p.run_id, "nightly-1");
        for bad in ["", "a\nb", &"x".repeat(MAX_RUN_ID + 1)] {
            let e = args(Some(bad), None).plan(None, false).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains("--run-id"), "{e}");
        }
        let e = args(None, Some("https://gw"))
            .plan(None, false)
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[tokio::test]
    async fn run_finished_turns_1_when_the_figures_are_final() {
        let plan = args(Some("r"), None).plan(None, true).unwrap();
        let mut m = LiveMetrics::start(
            plan,
            Arc::new(|e: &mut Exposition| {
                e.counter("x_total", "x", 1);
            }),
        )
        .unwrap();
        assert!(m.render().contains("loadgen_run_finished{run=\"r\"} 0\n"));
        assert_eq!(m.finish().await, Pushes::default());
        let text = m.render();
        assert!(text.contains("x_total{run=\"r\"} 1\n"), "{text}");
        assert!(
            text.contains("loadgen_run_finished{run=\"r\"} 1\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn after_a_stopping_signal_the_second_one_ends_the_linger_and_the_exit_code_stands() {
        let mut plan = args(Some("r"), None).plan(None, true).unwrap();
        plan.addr = Some("127.0.0.1:0".parse().unwrap());
        plan.linger = Duration::from_secs(3600);
        let m = LiveMetrics::start(plan, Arc::new(|_: &mut Exposition| {})).unwrap();
        let shutdown = Shutdown::new("stopping");
        shutdown.request(crate::shutdown::Signal::Interrupt);
        let s = shutdown.clone();
        let lingering = tokio::spawn(async move {
            m.linger(Err(Error::Incomplete("lost".into())), &s)
                .await
                .map(|c| format!("{c:?}"))
                .map_err(|e| e.to_string())
        });
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!lingering.is_finished(), "the first signal does not end it");
        shutdown.request(crate::shutdown::Signal::Interrupt);
        let code = tokio::time::timeout(Duration::from_secs(5), lingering)
            .await
            .expect("the second signal ends the linger")
            .unwrap();
        // The run's error was printed before the linger; its exit code stands.
        assert_eq!(code, Ok(format!("{:?}", ExitCode::from(1))));
    }
}
