//! `loadgen merge`: the reports of a sharded run (or of a share group's backends) added up
//! into one report, exported and judged like any run's.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use mqtt_tool::args::ExportArgs;
use mqtt_tool::{errln, Error};

/// Adds up the reports of one run's shards (publishers) or of a share group's members
/// (backend-sub): counts summed, histograms added (exact percentiles), the window from the
/// earliest start to the latest end; missing shards are named and fail the merge.
#[derive(Debug, Parser)]
#[command(
    name = "loadgen merge",
    version,
    after_help = "Exit codes: 0 merged and complete, 1 a shard missing, repeated or interrupted \
                  (before any threshold) or a run incomplete, 2 usage or unreadable report, \
                  5 the merged backend verification failed, 99 a --threshold failed."
)]
struct MergeArgs {
    /// Report files (--report-json of each shard or member), or directories: every *.json in
    /// them that is not a merged report
    #[arg(required = true, value_name = "REPORT")]
    inputs: Vec<PathBuf>,

    /// Shards the run had [default: what the reports say]
    #[arg(long, value_name = "N", value_parser = mqtt_tool::args::parse_count)]
    shards: Option<u64>,

    /// Backend reports: the points the whole group expected; then missing points count from
    /// seq 0 and the verdict needs exactly this many
    #[arg(long, value_name = "N", value_parser = mqtt_tool::args::parse_count)]
    expect: Option<u64>,

    #[command(flatten)]
    export: ExportArgs,
}

/// Report files of large fleets run to hundreds of MB; more is not a report.
const REPORT_LIMIT: u64 = 2 << 30;

pub fn main(argv: Vec<std::ffi::OsString>) -> ExitCode {
    mqtt_tool::init_tracing();
    let args = match MergeArgs::command()
        .try_get_matches_from(argv)
        .and_then(|m| MergeArgs::from_arg_matches(&m))
    {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            errln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// What a file is, read without building its whole tree.
#[derive(serde::Deserialize)]
struct Probe {
    schema_version: Option<u64>,
    points_sent: Option<serde::de::IgnoredAny>,
    points_received: Option<serde::de::IgnoredAny>,
    merged: Option<serde::de::IgnoredAny>,
    merged_reports: Option<serde::de::IgnoredAny>,
}

impl Probe {
    fn of(name: &str, text: &str) -> Result<Probe, Error> {
        serde_json::from_str(text).map_err(|e| {
            Error::usage(format!(
                "{name} is not JSON ({e}); give --report-json files"
            ))
        })
    }

    fn merged(&self) -> bool {
        self.merged.is_some() || self.merged_reports.is_some()
    }
}

fn run(a: MergeArgs) -> Result<ExitCode, Error> {
    let exports = a.export.exports(None)?;
    let files = expand(&a.inputs)?;
    let mut values = Vec::with_capacity(files.len());
    for f in &files {
        let name = f.display().to_string();
        let text = mqtt_tool::out::read_bounded(f, REPORT_LIMIT, &format!("report {name}"))?;
        let probe = Probe::of(&name, &text)?;
        values.push((name, probe, text));
    }
    let backend = values
        .iter()
        .filter(|(_, p, _)| p.points_received.is_some())
        .count();
    if backend > 0 && backend < values.len() {
        return Err(Error::usage(
            "these are publisher and backend reports mixed; merge each kind on its own",
        ));
    }
    if backend > 0 {
        if a.shards.is_some() {
            return Err(Error::usage(
                "--shards is for publisher reports; a share group's members are all given",
            ));
        }
        let reports = parse_all::<backend_core::report::Report>(values)?;
        let fields = backend_core::report::threshold_fields();
        let thresholds = mqtt_tool::threshold::parse_all(&a.export.thresholds, &fields)?;
        let mut m = backend_core::merge::merge(reports, a.expect)?;
        m.judge(&thresholds);
        exports.write(&m, &m.render_text())?;
        if let Some(failed) = mqtt_tool::threshold::failures(&m.thresholds) {
            if let Some(r) = &m.reason {
                errln!("verification failed: {}", mqtt_tool::out::escape(r));
            }
            return Err(Error::Thresholds(failed));
        }
        return Ok(match &m.reason {
            None => ExitCode::SUCCESS,
            Some(r) => {
                errln!("verification failed: {}", mqtt_tool::out::escape(r));
                ExitCode::from(backend_core::EXIT_VERIFY_FAILED)
            }
        });
    }
    if a.expect.is_some() {
        return Err(Error::usage("--expect is for backend-sub reports"));
    }
    for (name, p, _) in &values {
        if p.points_sent.is_none() {
            return Err(Error::usage(format!(
                "{name} is not a loadgen report (no points_sent or points_received)"
            )));
        }
    }
    let reports = parse_all::<publisher_core::Report>(values)?;
    let fields = publisher_core::report::threshold_fields();
    let thresholds = mqtt_tool::threshold::parse_all(&a.export.thresholds, &fields)?;
    let mut m = publisher_core::merge::merge(reports, a.shards)?;
    m.judge(&thresholds);
    exports.write(&m, &m.render_text())?;
    // A shard missing, repeated or interrupted fails the merge before any threshold:
    // figures without all of the run judge nothing.
    let partial = m
        .merged
        .as_ref()
        .is_some_and(|g| !g.shards_missing.is_empty() || !g.shards_duplicated.is_empty())
        || m.interrupted_by.is_some();
    let failed = mqtt_tool::threshold::failures(&m.thresholds);
    match (m.error, failed) {
        (Some(e), _) if partial => Err(Error::Incomplete(e)),
        (_, Some(failed)) => Err(Error::Thresholds(failed)),
        (Some(e), None) => Err(Error::Incomplete(e)),
        (None, None) => Ok(ExitCode::SUCCESS),
    }
}

fn parse_all<T: serde::de::DeserializeOwned>(
    values: Vec<(String, Probe, String)>,
) -> Result<Vec<(String, T)>, Error> {
    values
        .into_iter()
        .map(|(name, probe, text)| {
            let schema = probe.schema_version.unwrap_or(0);
            serde_json::from_str(&text)
                .map(|r| (name.clone(), r))
                .map_err(|e| {
                    Error::usage(format!(
                        "{name} is not a report this version can merge (schema {schema}: {e}); rerun it with loadgen {}",
                        env!("CARGO_PKG_VERSION")
                    ))
                })
        })
        .collect()
}

/// Files as given, and every `*.json` of a directory that is not a merged report.
fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| Error::usage(format!("cannot read directory {}: {e}", p.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "json") && f.is_file())
                .filter(|f| !is_merged(f))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(Error::usage(format!(
                    "directory {} has no report (*.json) to merge",
                    p.display()
                )));
            }
            out.extend(found);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(Error::usage(format!(
                "report {} does not exist; give report files or a directory of them",
                p.display()
            )));
        }
    }
    Ok(out)
}

/// A merged report in a directory of shard reports (an earlier merge's output) is skipped.
fn is_merged(f: &Path) -> bool {
    let Ok(text) = mqtt_tool::out::read_bounded(f, REPORT_LIMIT, "report") else {
        return false;
    };
    let merged = Probe::of("", &text).is_ok_and(|p| p.merged());
    if merged {
        errln!("skipping {}: a merged report", f.display());
    }
    merged
}
