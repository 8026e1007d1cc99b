//! Layering of flag values: defaults < config file < environment < command line.
//!
//! clap already puts the environment under the command line. The file goes in between by
//! parsing twice: the first parse finds `--config` and which flags the command line or the
//! environment set; the file's values for every other flag are then passed as `--flag=value`
//! ahead of the real arguments, and the second parse yields the final values. Keys are flag
//! names (`max-inflight` or `max_inflight`), so a new flag is configurable without code here.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command, FromArgMatches};

use crate::error::Error;

/// What parsing the command line ended in, besides a value.
#[derive(Debug)]
pub enum ParseExit {
    /// `--help` or `--version`: print and exit 0.
    Info(clap::Error),
    /// Bad input: a one-line message and exit code 2.
    Usage(String),
}

impl From<Error> for ParseExit {
    fn from(e: Error) -> Self {
        ParseExit::Usage(e.to_string())
    }
}

/// Longest config file read: settings, not data.
pub const MAX_CONFIG_FILE: u64 = 4 << 20;

/// Where each flag's value came from, so that an error found after parsing (when a plan is
/// built) can name the environment variable or the config file the user actually wrote.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Long flag name -> where its value was set, for values not from the command line.
    set: Vec<(String, String)>,
}

impl Sources {
    fn of(cmd: &Command, first: &ArgMatches, from_file: &[String], file: Option<&Path>) -> Sources {
        let mut set = Vec::new();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let from = match first.value_source(arg.get_id().as_str()) {
                Some(ValueSource::EnvVariable) => arg
                    .get_env()
                    .map(|e| format!("from {}", e.to_string_lossy())),
                Some(ValueSource::CommandLine) => None,
                _ if from_file.iter().any(|f| f == long) => {
                    file.map(|p| format!("from config file {}", p.display()))
                }
                _ => None,
            };
            if let Some(from) = from {
                set.push((long.to_string(), from));
            }
        }
        Sources { set }
    }

    /// Whether `--long`'s value came from the environment or the config file, not the
    /// command line (where everyone sees it: no place for a password).
    pub fn off_command_line(&self, long: &str) -> bool {
        self.set.iter().any(|(l, _)| l == long)
    }

    /// `msg` with the source of the first flag it names, when that value did not come from
    /// the command line: `--duration must be longer than 0s (from LOADGEN_DURATION)`.
    pub fn annotate(&self, msg: &str) -> String {
        let mut first: Option<(usize, &str)> = None;
        for (long, from) in &self.set {
            let flag = format!("--{long}");
            let mut at = 0;
            while let Some(i) = msg[at..].find(&flag) {
                let pos = at + i;
                let end = pos + flag.len();
                // A whole flag name, not the start of a longer one (--rate in --rate-per-device).
                let whole = msg[end..]
                    .chars()
                    .next()
                    .map_or(true, |c| !(c.is_ascii_alphanumeric() || c == '-'));
                if whole {
                    if first.map_or(true, |(p, _)| pos < p) {
                        first = Some((pos, from));
                    }
                    break;
                }
                at = end;
            }
        }
        match first {
            Some((_, from)) => format!("{msg} ({from})"),
            None => msg.to_string(),
        }
    }
}

/// Parses `argv` with `cmd` into `T`, layering in the `--config` file (the `config` arg).
pub fn parse_layered<T: FromArgMatches>(cmd: Command, argv: Vec<OsString>) -> Result<T, ParseExit> {
    parse_layered_sourced(cmd, argv).map(|(t, _)| t)
}

/// [`parse_layered`], and where each value came from.
pub fn parse_layered_sourced<T: FromArgMatches>(
    cmd: Command,
    argv: Vec<OsString>,
) -> Result<(T, Sources), ParseExit> {
    let first = cmd
        .clone()
        .try_get_matches_from(&argv)
        .map_err(|e| clap_exit_sourced(e, &cmd, &argv))?;
    // A command without a `--config` flag (`loadgen merge`) layers the environment alone.
    let config = first.try_get_one::<PathBuf>("config").ok().flatten();
    let Some(path) = config.cloned() else {
        let sources = Sources::of(&cmd, &first, &[], None);
        return T::from_arg_matches(&first)
            .map(|t| (t, sources))
            .map_err(clap_exit);
    };
    let injected = file_args(&cmd, &first, &path)?;
    let from_file: Vec<String> = injected
        .iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect();
    let sources = Sources::of(&cmd, &first, &from_file, Some(&path));
    let mut layered = Vec::with_capacity(argv.len() + injected.len());
    layered.extend(argv.first().cloned());
    layered.extend(injected.into_iter().map(OsString::from));
    layered.extend(argv.iter().skip(1).cloned());
    let matches = cmd
        .clone()
        .try_get_matches_from(layered)
        .map_err(|e| match clap_exit(e) {
            // The command line and the environment parsed: the file's values are at fault.
            ParseExit::Usage(msg) => {
                ParseExit::Usage(format!("in config file {}: {msg}", path.display()))
            }
            info => info,
        })?;
    T::from_arg_matches(&matches)
        .map(|t| (t, sources))
        .map_err(clap_exit)
}

/// Parses `argv` with `cmd` (no config file): the matches, or the exit a usage error or
/// `--help` ends in, an error about a value from the environment naming the variable.
pub fn matches(cmd: Command, argv: Vec<OsString>) -> Result<ArgMatches, ParseExit> {
    cmd.clone()
        .try_get_matches_from(&argv)
        .map_err(|e| clap_exit_sourced(e, &cmd, &argv))
}

/// Like [`clap_exit`], but an error about a value that came from the environment names the
/// variable (`LOADGEN_RATE`), not the flag the user never typed.
fn clap_exit_sourced(e: clap::Error, cmd: &Command, argv: &[OsString]) -> ParseExit {
    use clap::error::{ContextKind, ContextValue};
    let invalid = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let exit = clap_exit(e);
    let (ParseExit::Usage(msg), Some(invalid)) = (&exit, invalid) else {
        return exit;
    };
    let long = invalid
        .strip_prefix("--")
        .and_then(|rest| rest.split([' ', '=']).next())
        .unwrap_or("");
    fn find<'a>(cmd: &'a Command, long: &str) -> Option<&'a clap::Arg> {
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .or_else(|| cmd.get_subcommands().find_map(|s| find(s, long)))
    }
    let Some(arg) = find(cmd, long) else {
        return exit;
    };
    let on_command_line = argv.iter().skip(1).any(|a| {
        let a = a.to_string_lossy();
        a == format!("--{long}") || a.starts_with(&format!("--{long}="))
    });
    match arg.get_env() {
        Some(env) if !on_command_line && std::env::var_os(env).is_some() => {
            let env = env.to_string_lossy();
            ParseExit::Usage(msg.replace(
                &format!("'{invalid}'"),
                &format!("{env} (the variable of --{long})"),
            ))
        }
        _ => exit,
    }
}

/// The `--flag=value` arguments a config file contributes for flags nothing else set.
fn file_args(cmd: &Command, first: &ArgMatches, path: &Path) -> Result<Vec<String>, Error> {
    let text = crate::out::read_bounded(
        path,
        MAX_CONFIG_FILE,
        &format!("config file {} (--config)", path.display()),
    )?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        Error::usage(format!(
            "config file {} is not valid TOML: {}",
            path.display(),
            one_line(&e.to_string())
        ))
    })?;
    let keys: Vec<&str> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "config" | "help" | "version"))
        .collect();
    let mut out = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && keys.contains(&long.as_str()))
            .ok_or_else(|| {
                let hint = closest(&long, &keys)
                    .map_or(String::new(), |k| format!("did you mean '{k}'? "));
                Error::usage(format!(
                    "config file {}: unknown key '{}'; {hint}the keys of {} are its flag names: {}",
                    path.display(),
                    crate::out::escape(&key),
                    cmd.get_name(),
                    keys.join(", ")
                ))
            })?;
        let set_elsewhere = matches!(
            first.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable)
        );
        if set_elsewhere {
            continue;
        }
        // A switch (`--quiet`) takes no value: `quiet = true` turns it on, false leaves it off.
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            match value {
                toml::Value::Boolean(true) => out.push(format!("--{long}")),
                toml::Value::Boolean(false) => {}
                _ => {
                    return Err(Error::usage(format!(
                        "config file {}: key '{key}' is a switch; set it to true or false",
                        path.display()
                    )))
                }
            }
            continue;
        }
        let repeatable = matches!(arg.get_action(), ArgAction::Append);
        let values = match value {
            toml::Value::Array(items) if repeatable => items,
            toml::Value::Array(_) => {
                return Err(Error::usage(format!(
                "config file {}: key '{key}' takes one value, not an array; write {key} = <value>",
                path.display()
            )))
            }
            single => vec![single],
        };
        for v in values {
            let text = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(Error::usage(format!(
                    "config file {}: key '{key}' has a {} value; use a string, number or boolean",
                    path.display(),
                    other.type_str()
                )))
                }
            };
            out.push(format!("--{long}={text}"));
        }
    }
    Ok(out)
}

/// The key nearest to `key` by edit distance, if it is close enough to be a typo.
pub(crate) fn closest<'a>(key: &str, keys: &[&'a str]) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1; b.len() + 1];
            for (j, cb) in b.iter().enumerate() {
                cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1);
            }
            prev = cur;
        }
        prev[b.len()]
    }
    keys.iter()
        .map(|k| (distance(key, k), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min()
        .map(|(_, k)| k)
}

fn clap_exit(e: clap::Error) -> ParseExit {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ParseExit::Info(e),
        _ => ParseExit::Usage(one_line(&e.to_string())),
    }
}

/// Folds clap's multi-line error into one line, dropping the usage and help hints.
pub fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{parse_count, parse_rate, ConnectionArgs, OutputArgs, Rate};
    use clap::{Args, Parser};
    use std::io::Write;

    /// A tool's flags, as the binaries define them: a config flag, the shared groups, and
    /// some of its own.
    #[derive(Debug, Clone, Args)]
    struct ToolArgs {
        #[arg(long, env = "LOADGEN_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        connection: ConnectionArgs,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        output: OutputArgs,
    }

    #[derive(Debug, Clone, Args)]
    struct LoadArgs {
        #[arg(long, default_value = "10000", value_parser = parse_rate, env = "LOADGEN_RATE")]
        rate: Rate,
        #[arg(long, default_value = "1000", value_parser = parse_count, env = "LOADGEN_BATCH")]
        batch: u64,
        #[arg(long, value_enum, default_value = "0", env = "LOADGEN_QOS")]
        qos: Level,
        #[arg(long, env = "LOADGEN_MAX_INFLIGHT")]
        max_inflight: Option<u16>,
        #[arg(long, default_value_t = 1, env = "LOADGEN_SEED")]
        seed: u64,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    enum Level {
        #[value(name = "0")]
        Zero,
        #[value(name = "1")]
        One,
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ToolArgs,
    }

    /// Parses under the environment lock: a test that sets a variable holds it throughout.
    fn parse(argv: &[&str]) -> Result<ToolArgs, ParseExit> {
        let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
        parse_unlocked(argv)
    }

    fn parse_unlocked(argv: &[&str]) -> Result<ToolArgs, ParseExit> {
        let cmd = ToolArgs::augment_args(Command::new("t"));
        let argv = std::iter::once("t")
            .chain(argv.iter().copied())
            .map(OsString::from)
            .collect();
        parse_layered::<Cli>(cmd, argv).map(|c| c.args)
    }

    fn config_file(text: &str) -> tempfile_like::TempPath {
        tempfile_like::write(text)
    }

    /// A tiny temp-file helper, enough for these tests.
    mod tempfile_like {
        use super::*;
        pub struct TempPath(pub PathBuf);
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        pub fn write(text: &str) -> TempPath {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p =
                std::env::temp_dir().join(format!("loadgen-cfg-{}-{n}.toml", std::process::id()));
            std::fs::File::create(&p)
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            TempPath(p)
        }
    }

    // Environment variables are process-wide: every parse goes through this lock, and a test
    // that sets a variable holds it until the variable is removed again.
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn file_values_override_defaults() {
        let f = config_file("rate = \"20k\"\nbatch = 10\nqos = 1\ntcp-nodelay = false\n");
        let a = parse(&["--config", f.0.to_str().unwrap()]).unwrap();
        assert_eq!(a.load.rate, Rate::PerSecond(20_000.0));
        assert_eq!(a.load.batch, 10);
        assert_eq!(a.load.qos, Level::One);
        assert!(!a.connection.tcp_nodelay);
    }

    #[test]
    fn switches_are_set_from_the_file_with_booleans() {
        let on = config_file("quiet = true\n");
        assert!(
            parse(&["--config", on.0.to_str().unwrap()])
                .unwrap()
                .output
                .quiet
        );
        let off = config_file("quiet = false\n");
        assert!(
            !parse(&["--config", off.0.to_str().unwrap()])
                .unwrap()
                .output
                .quiet
        );
        let bad = config_file("quiet = \"yes\"\n");
        assert!(matches!(
            parse(&["--config", bad.0.to_str().unwrap()]),
            Err(ParseExit::Usage(m)) if m.contains("set it to true or false")
        ));
    }

    #[test]
    fn command_line_overrides_file() {
        let f = config_file("batch = 10\nmax_inflight = 100\n");
        let a = parse(&["--config", f.0.to_str().unwrap(), "--batch", "7"]).unwrap();
        assert_eq!(a.load.batch, 7);
        assert_eq!(a.load.max_inflight, Some(100));
    }

    #[test]
    fn environment_overrides_file_and_command_line_overrides_environment() {
        let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let f = config_file("seed = 5\n");
        std::env::set_var("LOADGEN_SEED", "6");
        let from_env = parse_unlocked(&["--config", f.0.to_str().unwrap()]);
        let from_cli = parse_unlocked(&["--config", f.0.to_str().unwrap(), "--seed", "7"]);
        std::env::remove_var("LOADGEN_SEED");
        assert_eq!(from_env.unwrap().load.seed, 6);
        assert_eq!(from_cli.unwrap().load.seed, 7);
    }

    #[test]
    fn unknown_key_and_bad_value_in_file_are_usage_errors() {
        let f = config_file("rat = 5\n");
        match parse(&["--config", f.0.to_str().unwrap()]) {
            Err(ParseExit::Usage(m)) => {
                assert!(m.contains("unknown key 'rat'"), "{m}");
                assert!(m.contains("did you mean 'rate'?"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        let f = config_file("qos = 3\n");
        match parse(&["--config", f.0.to_str().unwrap()]) {
            Err(ParseExit::Usage(m)) => {
                assert!(m.contains("in config file") && m.contains("--qos"), "{m}");
                assert!(!m.contains('\n'));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_array_for_a_single_valued_flag_says_so() {
        let f = config_file("rate = [\"10k\", \"20k\"]\n");
        match parse(&["--config", f.0.to_str().unwrap()]) {
            Err(ParseExit::Usage(m)) => assert!(m.contains("takes one value, not an array"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_environment_value_names_the_variable() {
        let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var("LOADGEN_BATCH", "lots");
        let from_env = parse_unlocked(&[]);
        let from_cli = parse_unlocked(&["--batch", "many"]);
        std::env::remove_var("LOADGEN_BATCH");
        match from_env {
            Err(ParseExit::Usage(m)) => {
                assert!(m.contains("LOADGEN_BATCH") && m.contains("'lots'"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        match from_cli {
            Err(ParseExit::Usage(m)) => {
                assert!(m.contains("--batch") && !m.contains("LOADGEN_"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_plan_error_names_where_the_value_came_from() {
        let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let f = config_file("batch = 7\n");
        std::env::set_var("LOADGEN_SEED", "9");
        let cmd = ToolArgs::augment_args(Command::new("t"));
        let argv: Vec<OsString> = ["t", "--config", f.0.to_str().unwrap(), "--qos", "1"]
            .iter()
            .map(OsString::from)
            .collect();
        let got = parse_layered_sourced::<Cli>(cmd, argv);
        std::env::remove_var("LOADGEN_SEED");
        let (_, sources) = got.unwrap();
        assert_eq!(
            sources.annotate("--seed must be odd"),
            "--seed must be odd (from LOADGEN_SEED)"
        );
        let m = sources.annotate("--batch 7 is too large");
        assert!(
            m.ends_with(&format!("(from config file {})", f.0.display())),
            "{m}"
        );
        assert_eq!(sources.annotate("--qos 1 needs more"), "--qos 1 needs more");
        assert_eq!(
            sources.annotate("--seeds is not a flag"),
            "--seeds is not a flag"
        );
    }

    #[test]
    fn clap_errors_fold_to_one_line() {
        match parse(&["--qos", "3"]) {
            Err(ParseExit::Usage(m)) => {
                assert!(!m.contains('\n'), "{m}");
                assert!(m.contains("'3'") && m.contains("possible values"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }
}
