//! `loadgen merge`: the reports of a sharded run (or of a share group's backends) added up
//! into one report, exported and judged like any run's.
//!
//! Reports are read one at a time, each streamed from its file (at most [`REPORT_LIMIT`]
//! bytes) into the running merge, so memory holds one report and the sums, never every
//! report's text. Each file is first probed for what it is, so that an error says which
//! case it is: not there, not a regular file, too large, not JSON, JSON but not a report.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use mqtt_tool::args::ExportArgs;
use mqtt_tool::config::Sources;
use mqtt_tool::out::escape;
use mqtt_tool::{errln, Error};
use serde::de::{self, Deserialize, IgnoredAny, MapAccess, Visitor};

/// Adds up the reports of one run's shards (publishers) or of a share group's members
/// (backend-sub): counts summed, histograms added (exact percentiles), the window from the
/// earliest start to the latest end; missing shards are named and fail the merge.
#[derive(Debug, Parser)]
#[command(name = "loadgen merge", version)]
struct MergeArgs {
    /// Report files (--report-json of each shard or member, at most 2 GiB each), or
    /// directories: every *.json in them that is not a merged report
    #[arg(required = true, value_name = "REPORT")]
    inputs: Vec<PathBuf>,

    /// Shards the run had, at most 100,000 [default: what the reports say]
    #[arg(long, value_name = "N", value_parser = mqtt_tool::args::parse_count)]
    shards: Option<u64>,

    /// Backend reports: the points the whole group expected; then missing points count from
    /// seq 0 and the verdict needs exactly this many
    #[arg(long, value_name = "N", value_parser = mqtt_tool::args::parse_count)]
    expect: Option<u64>,

    /// Reports whose windows (first to last message) leave a longer gap between them, none
    /// running, are of different runs and refused
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = mqtt_tool::args::parse_duration)]
    max_gap: Duration,

    #[command(flatten)]
    export: ExportArgs,
}

/// Report files of large fleets run to hundreds of MB; more is not a report. Stated in
/// `--help` and the README.
const REPORT_LIMIT: u64 = 2 << 30;

/// `loadgen merge`'s command: its flags with their `LOADGEN_<FLAG>` variables, examples.
pub fn command() -> clap::Command {
    // The merged report is a publisher's, a backend's or a subscriber fleet's: their fields.
    let mut fields = publisher_core::report::threshold_fields();
    let more = backend_core::report::threshold_fields()
        .0
        .into_iter()
        .chain(crate::subfleet::threshold_fields().0);
    for f in more {
        if fields.get(&f.name).is_none() {
            fields.0.push(f);
        }
    }
    let cmd = mqtt_tool::cli::threshold_help(
        MergeArgs::command(),
        &fields,
        &["point_rate>=29000", "points_missing==0"],
    );
    let env = mqtt_tool::cli::env_help(&cmd);
    let exit_codes = mqtt_tool::error::exit_codes_help(&[
        ("0", "merged and complete"),
        (
            "1",
            "a shard missing, repeated or interrupted (before any threshold) or a run incomplete",
        ),
        ("2", "usage or a report that cannot be merged"),
        ("3", ""),
        ("4", ""),
        ("5", "the merged backend verification failed"),
        ("129/130/143", ""),
    ]);
    mqtt_tool::cli::with_env_scheme(cmd.after_help(format!(
        "Examples:
  # the three shards' reports of one run, judged as one
  loadgen merge shard-0.json shard-1.json shard-2.json \\
      --threshold 'point_rate>=29000' --report-md merged.md
  # every report in a directory (a merged report there is skipped)
  loadgen merge reports/ --shards 3 --report-json merged.json

{}

{exit_codes}",
        env
    )))
}

/// Parses `argv` (the program's name first) without merging anything.
pub fn parse_args(argv: Vec<std::ffi::OsString>) -> Result<(), mqtt_tool::config::ParseExit> {
    mqtt_tool::config::parse_layered_sourced::<MergeArgs>(command(), argv).map(|_| ())
}

pub fn main(argv: Vec<std::ffi::OsString>) -> ExitCode {
    mqtt_tool::run_sync(
        || {
            mqtt_tool::cli::warn_environment(&command(), &[], &argv);
            mqtt_tool::config::parse_layered_sourced::<MergeArgs>(command(), argv)
        },
        |(args, sources)| run(args, &sources),
    )
}

/// The two kinds of report a merge adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Publisher,
    Backend,
    /// `loadgen sub --clients`.
    SubFleet,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Publisher => "publisher (loadgen pub)",
            Kind::Backend => "backend-sub",
            Kind::SubFleet => "subscriber fleet (loadgen sub --clients)",
        }
    }
}

/// What a file is, read without building its tree: the few fields that tell the kind.
#[derive(Debug, Default)]
struct Probe {
    schema_version: Option<u64>,
    tool: Option<String>,
    points_sent: bool,
    points_received: bool,
    merged: bool,
}

impl<'de> Deserialize<'de> for Probe {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Probe, D::Error> {
        d.deserialize_any(ProbeVisitor)
    }
}

struct ProbeVisitor;

impl ProbeVisitor {
    fn not_an_object<E: de::Error>(what: &str) -> Result<Probe, E> {
        Err(E::custom(format_args!("{what}, not an object")))
    }
}

impl<'de> Visitor<'de> for ProbeVisitor {
    type Value = Probe;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a report (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Probe, A::Error> {
        let mut p = Probe::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "schema_version" => {
                    p.schema_version = map.next_value::<serde_json::Value>()?.as_u64();
                }
                "tool" => {
                    p.tool = map
                        .next_value::<serde_json::Value>()?
                        .as_str()
                        .map(str::to_string);
                }
                "points_sent" => {
                    map.next_value::<IgnoredAny>()?;
                    p.points_sent = true;
                }
                "points_received" => {
                    map.next_value::<IgnoredAny>()?;
                    p.points_received = true;
                }
                "merged" | "merged_reports" => {
                    p.merged |= map.next_value::<Option<IgnoredAny>>()?.is_some();
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(p)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Probe, A::Error> {
        Self::not_an_object("an array")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Probe, E> {
        Self::not_an_object("a string")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Probe, E> {
        Self::not_an_object("true or false")
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Probe, E> {
        Self::not_an_object("a number")
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Probe, E> {
        Self::not_an_object("a number")
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Probe, E> {
        Self::not_an_object("a number")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Probe, E> {
        Self::not_an_object("null")
    }
}

const GIVE: &str = "give the --report-json files of loadgen pub shards or of backend-sub members";

/// The open file of report `path`, bounded ([`REPORT_LIMIT`]) and classified.
fn open(path: &Path, name: &str) -> Result<BufReader<std::fs::File>, Error> {
    mqtt_tool::out::open_regular(path, REPORT_LIMIT, &format!("report {name}"))
        .map(|f| BufReader::with_capacity(1 << 16, f))
}

/// A JSON error of report `name`: not JSON, unreadable, or `data` (JSON of another shape).
fn json_error(name: &str, e: serde_json::Error, data: impl FnOnce(String) -> String) -> Error {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => Error::usage(format!("cannot read report {name}: {e}")),
        Category::Syntax | Category::Eof => {
            Error::usage(format!("{name} is not JSON ({e}); {GIVE}"))
        }
        Category::Data => Error::usage(data(plain(&e.to_string()))),
    }
}

/// serde's message without our type names (`expected struct Report`): people need the
/// field and the value, not the name of a type inside the tool.
fn plain(msg: &str) -> String {
    let words: Vec<&str> = msg.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let named = words
            .get(i + 1)
            .is_some_and(|w| w.starts_with(|c: char| c.is_ascii_uppercase()));
        match words[i] {
            "struct" if named => {
                out.push("an object");
                i += 2;
            }
            "enum" if named => {
                out.push("one of the values this version knows");
                i += 2;
            }
            w => {
                out.push(w);
                i += 1;
            }
        }
    }
    out.join(" ")
}

impl Probe {
    fn read(path: &Path, name: &str) -> Result<Probe, Error> {
        serde_json::from_reader(open(path, name)?).map_err(|e| {
            json_error(name, e, |why| {
                format!("{name} is JSON but not a report ({why}); {GIVE}")
            })
        })
    }

    /// The kind of report, or why it is none that merge adds up.
    fn kind(&self, name: &str) -> Result<Kind, Error> {
        if self.tool.as_deref() == Some(crate::subfleet::TOOL) {
            return Ok(Kind::SubFleet);
        }
        match (self.points_sent, self.points_received) {
            (true, false) => Ok(Kind::Publisher),
            (false, true) => Ok(Kind::Backend),
            _ => Err(Error::usage(format!(
                "{name} is JSON but not a report loadgen merge adds up ({}); {GIVE}",
                match self.tool.as_deref() {
                    Some(t) => format!("a report of {}", escape(t)),
                    None => "it has neither points_sent nor points_received".into(),
                }
            ))),
        }
    }
}

/// The full parse of report `name`, streamed from its file.
fn parse<T: serde::de::DeserializeOwned>(
    path: &Path,
    name: &str,
    probe: &Probe,
    kind: Kind,
) -> Result<T, Error> {
    serde_json::from_reader(open(path, name)?).map_err(|e| {
        json_error(name, e, |why| {
            format!(
                "{name} is not a {} report this version can merge (schema {}: {why}); rerun it with loadgen {}",
                kind.name(),
                probe.schema_version.unwrap_or(0),
                env!("CARGO_PKG_VERSION")
            )
        })
    })
}

/// A merge of either kind, in progress (each holds a report and its sums).
enum Merging {
    Publisher(Box<publisher_core::merge::Merge>),
    Backend(Box<backend_core::merge::Merge>),
    SubFleet(Vec<(String, crate::subfleet::Report)>),
}

fn run(a: MergeArgs, sources: &Sources) -> Result<ExitCode, Error> {
    // An error about a flag set by the environment names the variable.
    let named = |e: Error| match e {
        Error::Usage(m) => Error::Usage(sources.annotate(&m)),
        e => e,
    };
    let exports = a.export.exports(None).map_err(named)?;
    let files = expand(&a.inputs)?;
    let mut merging: Option<(Kind, String, Merging)> = None;
    let mut thresholds = Vec::new();
    for (path, in_dir) in files {
        let name = path.display().to_string();
        let probe = Probe::read(&path, &name)?;
        if probe.merged {
            if in_dir {
                // An earlier merge's output beside the shards' reports.
                errln!("skipping {name}: a merged report");
                continue;
            }
            return Err(Error::usage(format!(
                "{name} is a merged report already; merge the shards' or members' own reports"
            )));
        }
        let kind = probe.kind(&name)?;
        if let Some((first_kind, first, _)) = &merging {
            if kind != *first_kind {
                return Err(Error::usage(format!(
                    "{name} is a {} report but {first} a {} report: merge each kind on its own",
                    kind.name(),
                    first_kind.name()
                )));
            }
        } else {
            let (m, fields) = match kind {
                Kind::Publisher => {
                    if a.expect.is_some() {
                        return Err(Error::usage("--expect is for backend-sub reports"));
                    }
                    (
                        Merging::Publisher(Box::new(publisher_core::merge::Merge::new(
                            a.shards, a.max_gap,
                        )?)),
                        publisher_core::report::threshold_fields(),
                    )
                }
                Kind::Backend => {
                    if a.shards.is_some() {
                        return Err(Error::usage(
                            "--shards is for publisher reports; a share group's members are all given",
                        ));
                    }
                    (
                        Merging::Backend(Box::new(backend_core::merge::Merge::new(
                            a.expect, a.max_gap,
                        ))),
                        backend_core::report::threshold_fields(),
                    )
                }
                Kind::SubFleet => {
                    if a.shards.is_some() {
                        return Err(Error::usage(
                            "--shards is not for subscriber-fleet reports; give every shard's report",
                        ));
                    }
                    // The SUBACK latencies add up from each report's histogram.
                    let fields = crate::subfleet::threshold_fields();
                    (Merging::SubFleet(Vec::new()), fields)
                }
            };
            thresholds =
                mqtt_tool::threshold::parse_all(&a.export.thresholds, &fields).map_err(named)?;
            merging = Some((kind, name.clone(), m));
        }
        match &mut merging {
            Some((_, _, Merging::Publisher(m))) => {
                m.add(name.clone(), parse(&path, &name, &probe, kind)?)?
            }
            Some((_, _, Merging::Backend(m))) => {
                m.add(name.clone(), parse(&path, &name, &probe, kind)?)?
            }
            Some((_, _, Merging::SubFleet(v))) => {
                v.push((name.clone(), parse(&path, &name, &probe, kind)?))
            }
            None => {}
        }
    }
    match merging {
        None => Err(Error::usage(format!(
            "no report to merge (every one given is a merged report); {GIVE}"
        ))),
        Some((_, _, Merging::Backend(m))) => {
            let mut m = m.finish()?;
            m.judge(&thresholds);
            exports.write(&m, &m.render_text())?;
            verified_exit(&m.header.thresholds, m.reason.as_deref())
        }
        Some((_, _, Merging::SubFleet(v))) => {
            let mut m = crate::subfleet::merge(v, a.expect)?;
            mqtt_tool::frame::FramedReport::judge(&mut m, &thresholds);
            exports.write(&m, &mqtt_tool::frame::FramedReport::render_text(&m))?;
            verified_exit(&m.header.thresholds, m.failure.as_deref())
        }
        Some((_, _, Merging::Publisher(m))) => {
            let mut m = m.finish()?;
            m.judge(&thresholds);
            exports.write(&m, &m.render_text())?;
            // A shard missing, repeated or interrupted fails the merge before any threshold:
            // figures without all of the run judge nothing.
            let partial =
                m.merged.as_ref().is_some_and(|g| {
                    !g.shards_missing.is_empty() || !g.shards_duplicated.is_empty()
                }) || m.interrupted_by.is_some();
            let failed = mqtt_tool::threshold::failures(&m.header.thresholds);
            match (m.error, failed) {
                (Some(e), _) if partial => Err(Error::Incomplete(e)),
                (_, Some(failed)) => Err(Error::Thresholds(failed)),
                (Some(e), None) => Err(Error::Incomplete(e)),
                (None, None) => Ok(ExitCode::SUCCESS),
            }
        }
    }
}

/// Files as given, and every `*.json` of a directory (`true`: found in a directory, where
/// a merged report is skipped rather than refused).
fn expand(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, bool)>, Error> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| Error::usage(format!("cannot read directory {}: {e}", p.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "json") && f.is_file())
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(Error::usage(format!(
                    "directory {} has no report (*.json) to merge",
                    p.display()
                )));
            }
            out.extend(found.into_iter().map(|f| (f, true)));
        } else {
            out.push((p.clone(), false));
        }
    }
    Ok(out)
}

/// The exit of a merged verifying report (a backend's or a subscriber fleet's): a failed
/// threshold (99) before the verdict (5), whose line is printed either way.
fn verified_exit(
    judged: &[mqtt_tool::threshold::Judged],
    failure: Option<&str>,
) -> Result<ExitCode, Error> {
    if let Some(r) = failure {
        errln!(
            "{}",
            mqtt_tool::run::bounded(
                format!("verification failed: {}", escape(r)),
                mqtt_tool::run::MAX_ERROR_LINE
            )
        );
    }
    if let Some(failed) = mqtt_tool::threshold::failures(judged) {
        return Err(Error::Thresholds(failed));
    }
    Ok(match failure {
        None => ExitCode::SUCCESS,
        Some(_) => ExitCode::from(backend_core::EXIT_VERIFY_FAILED),
    })
}
