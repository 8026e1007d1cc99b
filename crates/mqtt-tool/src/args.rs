//! Flags every MQTT tool shares, defined once and flattened into each binary, and the value
//! parsers of every tool (counts, sizes, rates, durations).
//!
//! Each flag can also come from a TOML file (`--config`) or an environment variable
//! (`LOADGEN_<FLAG>`); [`crate::config`] layers them. Values are checked for shape here
//! and for meaning where a tool builds its plan ([`crate::connect`] for the connection).

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{ArgAction, Args, ValueEnum};

/// The one QoS type (`mqtt-wire`'s), for every tool's `--qos`.
pub use mqtt_wire::Qos;

/// The value parser of a `--qos` flag, as the one [`Qos`] type: the levels up to `max`, so
/// that a tool that cannot run QoS 2 lists 0 and 1 only and clap refuses 2 with the
/// possible values (a parser rather than a `ValueEnum` wrapper: mqtt-wire does not know
/// clap, and one type needs no conversions).
pub fn qos_parser(max: Qos) -> impl TypedValueParser<Value = Qos> {
    const HELP: [&str; 3] = [
        "At most once: no acknowledgement",
        "At least once: every message is acknowledged by a PUBACK",
        "Exactly once: PUBREC, PUBREL and PUBCOMP for every message",
    ];
    let levels = ["0", "1", "2"]
        .into_iter()
        .zip(HELP)
        .take(usize::from(max.level()) + 1)
        .map(|(name, help)| PossibleValue::new(name).help(help));
    PossibleValuesParser::new(levels).try_map(|s| -> Result<Qos, String> {
        let level: u8 = s.parse().map_err(|_| format!("'{s}' is not a QoS level"))?;
        Qos::try_from(level).map_err(|e| e.to_string())
    })
}

/// The MQTT protocol version a tool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MqttVersion {
    /// MQTT 3.1.1
    #[value(name = "3.1.1")]
    V311,
    /// MQTT 5: reason codes on every acknowledgement, Receive Maximum, session expiry,
    /// user properties
    #[value(name = "5")]
    V5,
}

/// How to reach the broker. Shared by every tool that opens an MQTT connection.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectionArgs {
    /// Broker: mqtt://host:port, host:port, `embedded` (in-process rumqttd) or `auto`
    /// (localhost:1883 when something listens there, else embedded)
    #[arg(
        long,
        value_name = "URL",
        default_value = "auto",
        env = "LOADGEN_BROKER"
    )]
    pub broker: String,

    /// CA certificates (PEM) to trust for an mqtts:// broker [default: the system's]
    #[arg(long, value_name = "FILE", env = "LOADGEN_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for an mqtts:// broker that asks for one; with --key
    #[arg(long, value_name = "FILE", env = "LOADGEN_CERT")]
    pub cert: Option<PathBuf>,

    /// The client certificate's private key (PEM)
    #[arg(long, value_name = "FILE", env = "LOADGEN_KEY")]
    pub key: Option<PathBuf>,

    /// Do not verify the broker's certificate (anyone in the path can then read and change
    /// the traffic): for test brokers only
    #[arg(long, env = "LOADGEN_INSECURE")]
    pub insecure: bool,

    /// MQTT protocol version
    #[arg(
        long,
        value_name = "VERSION",
        value_enum,
        default_value = "3.1.1",
        env = "LOADGEN_MQTT_VERSION"
    )]
    pub mqtt_version: MqttVersion,

    /// MQTT client id [default: the preset's]
    #[arg(long, value_name = "ID", env = "LOADGEN_CLIENT_ID")]
    pub client_id: Option<String>,

    /// User name; the password comes from LOADGEN_PASSWORD or --password-file, never a flag
    #[arg(long, value_name = "NAME", env = "LOADGEN_USERNAME")]
    pub username: Option<String>,

    /// File whose first line is the password
    #[arg(long, value_name = "FILE", env = "LOADGEN_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,

    /// MQTT keep-alive interval (0 disables, else at least 1s)
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, env = "LOADGEN_KEEP_ALIVE")]
    pub keep_alive: Duration,

    /// How long connecting (TCP and CONNACK) may take before the run fails with exit code 3
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration, env = "LOADGEN_CONNECT_TIMEOUT")]
    pub connect_timeout: Duration,

    /// Disable Nagle's algorithm on the connection
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "LOADGEN_TCP_NODELAY")]
    pub tcp_nodelay: bool,

    /// Port of the embedded broker on 127.0.0.1 (0 = any free port)
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 0,
        env = "LOADGEN_EMBEDDED_PORT"
    )]
    pub embedded_port: u16,

    /// After the run, keep the embedded broker up this long so subscribers get the last messages
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration, env = "LOADGEN_EMBEDDED_LINGER")]
    pub embedded_linger: Duration,

    /// Largest MQTT packet sent or accepted (accepts 10k, 4M) [default: sized to the batch]
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, env = "LOADGEN_MAX_PACKET_SIZE")]
    pub max_packet_size: Option<u64>,
}

/// Where results go.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    #[command(flatten)]
    pub export: ExportArgs,

    /// Write the latency histograms as an HdrHistogram interval log (one interval a second)
    #[arg(long, value_name = "PATH", env = "LOADGEN_HDR_LOG")]
    pub hdr_log: Option<PathBuf>,

    #[command(flatten)]
    pub metrics: MetricsArgs,

    /// No progress lines on stderr
    #[arg(long, short, action = ArgAction::SetTrue, env = "LOADGEN_QUIET")]
    pub quiet: bool,
}

/// Live metrics: served to Prometheus, pushed to a Pushgateway, labelled with the run. Part
/// of [`OutputArgs`]; job-pub flattens it on its own.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Metrics")]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics during the run (e.g. 127.0.0.1:9464)
    #[arg(long, value_name = "ADDR", env = "LOADGEN_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// After the run, keep serving the final figures this long so that Prometheus scrapes
    /// the end (loadgen_run_finished 1, the last acknowledgements): 2s is two scrapes at the
    /// 1 s interval of deploy/prometheus; give two of your intervals. 0 exits at once. The
    /// report and the exit code come first; a signal ends the linger
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub metrics_linger: Duration,

    /// Push the metrics to a Prometheus Pushgateway at this http:// URL: every 5 s during
    /// the run and the final figures at its end, grouped by job `loadgen`, `run` and
    /// `instance` (host:pid). A failed push is a warning and is counted in the report
    #[arg(long, value_name = "URL")]
    pub metrics_push: Option<String>,

    /// The `run` label of every metric and the report's `run_id` [default: a publisher's
    /// --start-at instant, which the shards of a run share; else the run's start, RFC 3339
    /// UTC]
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
}

/// The report's exports and the thresholds judged on it: every tool's, and `loadgen merge`'s.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Output")]
pub struct ExportArgs {
    /// Write the final report as JSON to this file (`-` = stdout; the text summary then goes
    /// to stderr)
    #[arg(long, value_name = "PATH", env = "LOADGEN_REPORT_JSON")]
    pub report_json: Option<PathBuf>,

    /// Write the report as CSV (a header row and a row of values) to this file (`-` = stdout)
    #[arg(long, value_name = "PATH", env = "LOADGEN_REPORT_CSV")]
    pub report_csv: Option<PathBuf>,

    /// Write a summary for people as Markdown to this file (`-` = stdout): the verdict, the
    /// figures that matter, the thresholds in their units; for a CI step summary
    #[arg(long, value_name = "PATH", env = "LOADGEN_REPORT_MD")]
    pub report_md: Option<PathBuf>,

    /// A pass/fail check on a report field, repeatable: `ack_latency_p99<5ms`,
    /// `point_rate>=9900`, `points_failed==0`; any failure exits 99 after the full report
    #[arg(
        long = "threshold",
        value_name = "EXPR",
        env = "LOADGEN_THRESHOLD",
        value_delimiter = ';'
    )]
    pub thresholds: Vec<String>,
}

impl ExportArgs {
    /// The exports, checked (each path writable, at most one `-`); `{shard}` in a path
    /// becomes `shard`.
    pub fn exports(&self, shard: Option<u64>) -> Result<crate::export::Exports, crate::Error> {
        let fill = |p: &Option<PathBuf>| {
            p.as_ref().map(|p| match shard {
                Some(i) => PathBuf::from(p.to_string_lossy().replace("{shard}", &i.to_string())),
                None => p.clone(),
            })
        };
        crate::export::Exports::new(
            fill(&self.report_json),
            fill(&self.report_csv),
            fill(&self.report_md),
        )
    }
}

/// `--start-at`: an instant, or `now` (no barrier). An empty value is an error: it is what a
/// failed `date` leaves in `LOADGEN_START_AT`, and shards that silently start at once are
/// no barrier (compose gives `now` when the variable is unset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartAt(pub Option<std::time::SystemTime>);

/// Parses `--start-at`: RFC 3339 (`2026-12-01T12:00:00Z`, fractions allowed), seconds since
/// the epoch (`1764590400`, `1764590400.5`), or `now`.
pub fn parse_start_at(s: &str) -> Result<StartAt, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(
            "is empty; give an instant (RFC 3339 like 2026-12-01T12:00:00Z, or seconds since \
             the epoch) or now for no barrier (an empty LOADGEN_START_AT is what a failed date \
             command leaves)"
                .into(),
        );
    }
    if t == "now" {
        return Ok(StartAt(None));
    }
    if let Ok(secs) = t.parse::<f64>() {
        if !(0.0..1e11).contains(&secs) {
            return Err(format!(
                "'{s}' is not a time; give seconds since the epoch or RFC 3339"
            ));
        }
        return Ok(StartAt(Some(
            std::time::UNIX_EPOCH + Duration::from_secs_f64(secs),
        )));
    }
    // humantime reads UTC (`Z`) only: an offset (`+01:00`) is applied here.
    let (stamp, offset_s) = match t.rfind(['+', '-']) {
        Some(i) if t.len() - i == 6 && t[..i].contains('T') && t.as_bytes()[i + 3] == b':' => {
            let sign = if t.as_bytes()[i] == b'+' { 1i64 } else { -1 };
            let (h, m) = (t[i + 1..i + 3].parse::<i64>(), t[i + 4..].parse::<i64>());
            match (h, m) {
                (Ok(h), Ok(m)) if h < 24 && m < 60 => (&t[..i], sign * (h * 3600 + m * 60)),
                _ => return Err(format!("'{s}' has a bad UTC offset; write it like +01:00")),
            }
        }
        _ => (t, 0),
    };
    if offset_s != 0 || stamp.len() != t.len() {
        return humantime::parse_rfc3339_weak(&format!("{stamp}Z"))
            .map(|u| {
                let shift = Duration::from_secs(offset_s.unsigned_abs());
                StartAt(Some(if offset_s >= 0 { u - shift } else { u + shift }))
            })
            .map_err(|e| {
                format!("'{s}' is not a time ({e}); give RFC 3339 like 2026-12-01T12:00:00Z")
            });
    }
    humantime::parse_rfc3339_weak(t).map(|t| StartAt(Some(t))).map_err(|e| {
        format!("'{s}' is not a time ({e}); give RFC 3339 like 2026-12-01T12:00:00Z, seconds since the epoch, or now")
    })
}

/// A target rate in points per second, or as fast as possible.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    Unlimited,
    PerSecond(f64),
}

fn split_suffix(s: &str) -> (&str, &str) {
    let idx = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    (&s[..idx], &s[idx..])
}

fn parse_scaled(s: &str, binary: bool) -> Result<f64, String> {
    let cleaned: String = s.trim().chars().filter(|c| *c != '_').collect();
    let (num, suffix) = split_suffix(&cleaned);
    let base: f64 = if binary { 1024.0 } else { 1000.0 };
    let mult = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => base,
        "m" | "mb" | "mib" => base * base,
        "g" | "gb" | "gib" => base * base * base,
        other => {
            return Err(format!(
                "unknown suffix '{other}' in '{s}'; use a number with optional k, M or G"
            ))
        }
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a number; use e.g. 1000, 10k or 1.5M"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("'{s}' must be a non-negative number"));
    }
    Ok(v * mult)
}

/// Parses a count such as `100000`, `100k`, `1.5M` or `1_000_000`. Whole numbers are parsed
/// exactly, so anything above 2^64 - 1 is refused, never rounded or clamped.
pub fn parse_count(s: &str) -> Result<u64, String> {
    let cleaned: String = s.trim().chars().filter(|c| *c != '_').collect();
    let (num, suffix) = split_suffix(&cleaned);
    let too_large = || format!("'{s}' is larger than the largest count ({})", u64::MAX);
    if !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) {
        let mult: u64 = match suffix.to_ascii_lowercase().as_str() {
            "" => 1,
            "k" => 1_000,
            "m" => 1_000_000,
            "g" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown suffix '{other}' in '{s}'; use a number with optional k, M or G"
                ))
            }
        };
        let v: u64 = num.parse().map_err(|_| too_large())?;
        return v.checked_mul(mult).ok_or_else(too_large);
    }
    let v = parse_scaled(s, false)?;
    if v.fract() != 0.0 {
        return Err(format!("'{s}' is not a whole number"));
    }
    // 2^64 is the first f64 above u64::MAX (u64::MAX itself rounds up to it).
    if v >= 18_446_744_073_709_551_616.0 {
        return Err(too_large());
    }
    Ok(v as u64)
}

/// Parses a size in bytes: `10240`, `10k` (KiB), `4M` (MiB).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let v = parse_scaled(s, true)?;
    if v >= 18_446_744_073_709_551_616.0 {
        return Err(format!("'{s}' is too large a size"));
    }
    Ok(v.round() as u64)
}

/// The highest `--rate` accepted: far beyond any broker, low enough that the schedule's
/// arithmetic stays exact.
pub const MAX_RATE: f64 = 1e12;

/// Parses a rate: `0`, `max` or `unlimited` mean as fast as possible; else points per second.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "max" | "unlimited" | "0" => Ok(Rate::Unlimited),
        _ => {
            let v = parse_scaled(s, false)?;
            if v == 0.0 {
                Ok(Rate::Unlimited)
            } else if v > MAX_RATE {
                Err(format!(
                    "'{s}' is above the highest rate (1e12 points/s); use max for as fast as possible"
                ))
            } else {
                Ok(Rate::PerSecond(v))
            }
        }
    }
}

/// The longest duration any flag accepts: a year. Longer ones would overflow the clock's
/// arithmetic and no load test means them.
/// How a lost connection comes back: shared by every tool that keeps a connection.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Faults")]
pub struct ReconnectArgs {
    /// Reconnect a connection lost mid-run (reset, broker restart, keep-alive timeout, a
    /// refused reconnect), with jittered exponential backoff; false: a lost connection stays
    /// lost. Refused credentials are never retried
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "LOADGEN_RECONNECT")]
    pub reconnect: bool,

    /// The first and the longest wait between reconnect attempts, MIN..MAX (each attempt
    /// waits about twice the one before, jittered over 0.5-1.5x)
    #[arg(long, value_name = "MIN..MAX", default_value = "100ms..10s", value_parser = parse_backoff,
          env = "LOADGEN_RECONNECT_BACKOFF")]
    pub reconnect_backoff: (Duration, Duration),

    /// Give a lost connection up once it has been down this long (a broker that never comes
    /// back must not hold the run for ever)
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration,
          env = "LOADGEN_RECONNECT_TIMEOUT")]
    pub reconnect_timeout: Duration,

    /// Start each connection with a clean session; false asks the broker to keep it (a
    /// persistent session: the broker holds QoS 1 state across a reconnect, and
    /// unacknowledged publishes are resent with DUP set)
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "LOADGEN_CLEAN_SESSION")]
    pub clean_session: bool,

    /// MQTT 5: how long the broker keeps a persistent session (`--clean-session false`)
    /// after the connection ends
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration,
          env = "LOADGEN_SESSION_EXPIRY")]
    pub session_expiry: Duration,
}

/// Parses `MIN..MAX` durations, such as `100ms..10s`.
pub fn parse_backoff(s: &str) -> Result<(Duration, Duration), String> {
    let Some((lo, hi)) = s.split_once("..") else {
        return Err(format!(
            "'{s}' is not a range; use MIN..MAX, e.g. 100ms..10s"
        ));
    };
    let (lo, hi) = (parse_duration(lo)?, parse_duration(hi)?);
    if lo.is_zero() || hi < lo {
        return Err(format!(
            "'{s}' must go from more than 0s up to at least its start, e.g. 100ms..10s"
        ));
    }
    Ok((lo, hi))
}

pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a duration such as `30s`, `1m30s`, `500ms`; a bare number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let d = match t.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => {
            Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
        }
        _ => humantime::parse_duration(t)
            .map_err(|e| format!("'{s}' is not a duration ({e}); use e.g. 30s, 500ms or 5m"))?,
    };
    if d > MAX_DURATION {
        return Err(format!("'{s}' is longer than a year; use at most 365d"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::{qos_parser, Qos};

    #[test]
    fn qos_flags_take_the_levels_a_tool_runs_and_refuse_the_rest_as_clap_did() {
        use clap::Parser;
        #[derive(Parser, Debug)]
        struct Pub {
            #[arg(long, default_value = "0", value_parser = qos_parser(Qos::AtLeastOnce))]
            qos: Qos,
        }
        #[derive(Parser, Debug)]
        struct Jobs {
            #[arg(long, default_value = "1", value_parser = qos_parser(Qos::ExactlyOnce))]
            qos: Qos,
        }
        // What the publishers' `ValueEnum` of 0 and 1 was, for the error it gave.
        #[derive(Debug, Clone, Copy, clap::ValueEnum)]
        enum Before {
            #[value(name = "0")]
            AtMostOnce,
            #[value(name = "1")]
            AtLeastOnce,
        }
        #[derive(Parser, Debug)]
        #[command(name = "pub")]
        struct PubBefore {
            #[arg(long, value_enum, default_value = "0")]
            qos: Before,
        }
        let parse = |args: &[&str]| Pub::try_parse_from([&["pub"], args].concat()).map(|p| p.qos);
        assert_eq!(parse(&[]).unwrap(), Qos::AtMostOnce);
        assert_eq!(parse(&["--qos", "1"]).unwrap(), Qos::AtLeastOnce);
        for bad in ["2", "3", "x", "01"] {
            let now = parse(&["--qos", bad]).unwrap_err().to_string();
            let before = PubBefore::try_parse_from(["pub", "--qos", bad])
                .unwrap_err()
                .to_string();
            assert_eq!(now, before, "--qos {bad}");
            assert!(now.contains("[possible values: 0, 1]"), "{now}");
        }
        assert!(
            PubBefore::try_parse_from(["pub"]).is_ok_and(|p| matches!(p.qos, Before::AtMostOnce))
        );
        let jobs = |q: &str| Jobs::try_parse_from(["jobs", "--qos", q]).map(|j| j.qos);
        assert_eq!(jobs("2").unwrap(), Qos::ExactlyOnce);
        assert!(jobs("3")
            .unwrap_err()
            .to_string()
            .contains("[possible values: 0, 1, 2]"));
        let _ = Before::AtLeastOnce;
    }

    #[test]
    fn start_times_read_rfc_3339_with_offsets_epoch_seconds_and_now() {
        use super::{parse_start_at, StartAt};

        let at = |s: &str| parse_start_at(s).unwrap().0.unwrap();
        let epoch = |secs: u64| std::time::UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(at("2026-12-01T12:00:00Z"), epoch(1_796_126_400));
        assert_eq!(at("2026-12-01T13:00:00+01:00"), epoch(1_796_126_400));
        assert_eq!(at("2026-12-01T07:00:00-05:00"), epoch(1_796_126_400));
        assert_eq!(at("1796126400"), epoch(1_796_126_400));
        assert_eq!(parse_start_at("now").unwrap(), StartAt(None));
        // Empty is what a failed `date` leaves: an error, not "no barrier".
        assert!(parse_start_at("").unwrap_err().contains("is empty"));
        assert!(parse_start_at("2026-12-01T12:00:00+25:00").is_err());
        assert!(parse_start_at("soon").is_err());
    }

    use super::*;

    #[test]
    fn counts_accept_suffixes_and_underscores() {
        assert_eq!(parse_count("100000"), Ok(100_000));
        assert_eq!(parse_count("10k"), Ok(10_000));
        assert_eq!(parse_count("1.5M"), Ok(1_500_000));
        assert_eq!(parse_count("1_000"), Ok(1_000));
        assert!(parse_count("1.5").is_err());
        assert!(parse_count("ten").is_err());
        assert!(parse_count("-3").is_err());
        assert!(parse_count("5x").is_err());
    }

    #[test]
    fn counts_beyond_u64_are_refused_not_clamped() {
        assert_eq!(parse_count("18446744073709551615"), Ok(u64::MAX));
        assert!(parse_count("18446744073709551616").is_err());
        assert!(parse_count("18446744073709551616.0").is_err());
        assert!(parse_count("18446744073709552k").is_err());
        assert!(parse_count("1e20").is_err());
        assert_eq!(
            parse_count("18446744073709551k"),
            Ok(18_446_744_073_709_551_000)
        );
    }

    #[test]
    fn rates_beyond_the_highest_are_refused() {
        assert!(parse_rate("18446744073709551616").is_err());
        assert!(parse_rate("2000G").is_err());
        assert_eq!(parse_rate("1000G"), Ok(Rate::PerSecond(1e12)));
    }

    #[test]
    fn rates_accept_max_and_zero_as_unlimited() {
        assert_eq!(parse_rate("max"), Ok(Rate::Unlimited));
        assert_eq!(parse_rate("0"), Ok(Rate::Unlimited));
        assert_eq!(parse_rate("10k"), Ok(Rate::PerSecond(10_000.0)));
        assert_eq!(parse_rate("0.5"), Ok(Rate::PerSecond(0.5)));
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn durations_beyond_a_year_are_refused_not_a_panic() {
        assert!(parse_duration("1e20").is_err());
        assert!(parse_duration("1e400").is_err());
        assert!(parse_duration("400d").is_err());
        assert_eq!(parse_duration("365d"), Ok(MAX_DURATION));
    }

    #[test]
    fn sizes_are_binary_and_durations_accept_units() {
        assert_eq!(parse_bytes("10k"), Ok(10 * 1024));
        assert_eq!(parse_bytes("4M"), Ok(4 * 1024 * 1024));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }
}
