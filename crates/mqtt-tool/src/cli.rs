//! One flag and environment scheme for every tool: each flag `--some-flag` can also be set by
//! the variable `LOADGEN_SOME_FLAG`, derived here from its long name so that no tool can
//! forget one (backend-sub once ignored `LOADGEN_EXPECT`). A `LOADGEN_` variable that names
//! no flag of the tool is a warning naming the nearest one, never silence; the old
//! `JOB_PUB_*` names are read under their new names, with a warning.

use std::collections::BTreeSet;
use std::ffi::OsString;

use clap::Command;

/// The prefix of every tool's variables.
pub const ENV_PREFIX: &str = "LOADGEN_";

/// Variables the tools read that are not flags, and what they are.
pub const NOT_FLAGS: &[(&str, &str)] = &[
    ("LOADGEN_PASSWORD", "the MQTT password"),
    ("LOADGEN_LOG", "the log filter"),
    (
        "LOADGEN_AUTO_BROKER",
        "where --broker auto looks for a broker",
    ),
];

/// At most this many warnings about the environment: a polluted environment must not bury
/// the run's own output.
const MAX_WARNINGS: usize = 10;

/// What a tool's `--help` says about the environment, true for that tool: an example from
/// its own flags, the `--config` layer only where it has one, the password only where it
/// connects with one.
pub fn env_help(cmd: &Command) -> String {
    let mut longs = Vec::new();
    long_names(cmd, &mut longs);
    let has = |l: &str| longs.iter().any(|x| x == l);
    let example = ["max-inflight", "expect", "batch", "shards"]
        .into_iter()
        .find(|l| has(l))
        .map(str::to_string)
        .or_else(|| {
            longs
                .iter()
                .find(|l| l.contains('-') && !matches!(l.as_str(), "help" | "version"))
                .cloned()
        })
        .unwrap_or_else(|| "quiet".into());
    let mut text = format!(
        "Environment: every flag can also be set as LOADGEN_<FLAG> (--{example}: {}); the \
         command line wins over the environment",
        env_name(&example)
    );
    text.push_str(if has("config") {
        ", the environment over --config."
    } else {
        "."
    });
    if has("password-file") {
        text.push_str(
            " The MQTT password comes from LOADGEN_PASSWORD (or --password-file), never a flag.",
        );
    }
    if has("database-url") {
        text.push_str(
            " The database URL also comes from DATABASE_URL, its password from PGPASSWORD, as \
             libpq users expect.",
        );
    }
    text
}

fn long_names(cmd: &Command, out: &mut Vec<String>) {
    for a in cmd.get_arguments() {
        if let Some(l) = a.get_long() {
            if !a.is_hide_set() {
                out.push(l.to_string());
            }
        }
    }
    for s in cmd.get_subcommands() {
        long_names(s, out);
    }
}

/// `cmd` with the help of `--threshold` naming this tool's own fields, and examples on them
/// (the shared help once showed publisher fields in tools that reject them).
pub fn threshold_help(
    cmd: Command,
    fields: &crate::threshold::Fields,
    examples: &[&str],
) -> Command {
    let examples: Vec<String> = examples.iter().map(|e| format!("`{e}`")).collect();
    let help = format!(
        "A pass/fail check on a report field, repeatable: {}; a time takes a unit (ms, s), a \
         rate is per second; any failure exits 99 after the full report. The fields: {}",
        examples.join(", "),
        fields.names()
    );
    cmd.mut_arg("thresholds", |a| a.help(help))
}

/// [`adopt_environment`], its warnings printed on stderr.
pub fn warn_environment(cmd: &Command, aliases: &[Alias], argv: &[OsString]) {
    for w in adopt_environment(cmd, aliases, argv) {
        crate::errln!("{w}");
    }
}

/// The variable of `--long`: `LOADGEN_MAX_INFLIGHT` for `max-inflight`.
pub fn env_name(long: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        long.to_ascii_uppercase().replace('-', "_")
    )
}

/// `cmd` with `LOADGEN_<FLAG>` as the variable of every flag that names none, in every
/// subcommand. A flag with its own variable (`--database-url`: `DATABASE_URL` through
/// [`Alias`]) keeps it.
pub fn with_env_scheme(cmd: Command) -> Command {
    cmd.mut_args(|a| {
        // A switch from the environment reads as people write it: 1/0, yes/no, on/off,
        // true/false (clap's own reads only true/false from a variable).
        let a = if matches!(a.get_action(), clap::ArgAction::SetTrue) {
            a.value_parser(clap::builder::BoolishValueParser::new())
        } else {
            a
        };
        let Some(long) = a.get_long() else { return a };
        // A hidden flag (one a tool does not offer, such as job-pub's TLS files) reads no
        // variable: a LOADGEN_CA_FILE meant for another tool is then named as not this
        // tool's, not taken.
        if a.get_env().is_some() || a.is_hide_set() || matches!(long, "help" | "version") {
            return a;
        }
        let name = env_name(long);
        a.env(name)
    })
    .mut_subcommands(with_env_scheme)
}

/// Every variable `cmd` (and its subcommands) reads for a flag, with the flag's long name.
pub fn flag_variables(cmd: &Command) -> Vec<(String, String)> {
    let mut out = Vec::new();
    collect(cmd, &mut out);
    out.sort();
    out.dedup();
    out
}

fn collect(cmd: &Command, out: &mut Vec<(String, String)>) {
    for a in cmd.get_arguments() {
        if let (Some(env), Some(long)) = (a.get_env(), a.get_long()) {
            out.push((env.to_string_lossy().into_owned(), long.to_string()));
        }
    }
    for s in cmd.get_subcommands() {
        collect(s, out);
    }
}

/// Another name a variable is read under.
#[derive(Debug, Clone, Copy)]
pub struct Alias {
    /// The other name: `DATABASE_URL`, or a prefix ending in `_` (`JOB_PUB_`) that stands
    /// for `LOADGEN_` before any flag's name.
    pub from: &'static str,
    /// The variable it stands for (`LOADGEN_DATABASE_URL`); unused for a prefix.
    pub to: &'static str,
    /// A deprecated name: read, with a warning to rename it.
    pub deprecated: bool,
}

/// job-pub's variables before the scheme: `JOB_PUB_POOL` is `LOADGEN_POOL`.
pub const JOB_PUB_NAMES: Alias = Alias {
    from: "JOB_PUB_",
    to: "",
    deprecated: true,
};

/// `DATABASE_URL`, as libpq users expect: `--database-url`'s value when
/// `LOADGEN_DATABASE_URL` is not set.
pub const DATABASE_URL: Alias = Alias {
    from: "DATABASE_URL",
    to: "LOADGEN_DATABASE_URL",
    deprecated: false,
};

/// Reads the environment for `cmd`: every alias in `aliases` set under the name the flag
/// reads (before any thread starts: call it first thing in `main`), then a warning for each
/// `LOADGEN_` variable that names no flag of `cmd` and for each deprecated name used.
/// Returns the warnings, each one line; the caller prints them.
pub fn adopt_environment(cmd: &Command, aliases: &[Alias], argv: &[OsString]) -> Vec<String> {
    let vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let running = running_subcommand(cmd, argv);
    let (sets, warnings) = plan_environment(cmd, aliases, &vars, running.as_deref());
    for (name, value) in sets {
        // Parsing runs before the runtime and any other thread (see `run::run_main`).
        std::env::set_var(name, value);
    }
    warnings
}

/// [`adopt_environment`] without the process: which variables to set and what to say.
pub fn plan_environment(
    cmd: &Command,
    aliases: &[Alias],
    vars: &[(OsString, OsString)],
    running: Option<&str>,
) -> (Vec<(String, OsString)>, Vec<String>) {
    // The flags of what runs: the tool's own and, with subcommands, the one given.
    let mut flags = Vec::new();
    for a in cmd.get_arguments() {
        if let (Some(env), Some(long)) = (a.get_env(), a.get_long()) {
            flags.push((env.to_string_lossy().into_owned(), long.to_string()));
        }
    }
    let mut elsewhere: Vec<(String, String)> = Vec::new();
    for sub in cmd.get_subcommands() {
        let vars = flag_variables(sub);
        if running.map_or(true, |r| r == sub.get_name()) {
            flags.extend(vars);
        } else {
            elsewhere.extend(
                vars.into_iter()
                    .map(|(e, _)| (e, sub.get_name().to_string())),
            );
        }
    }
    flags.sort();
    flags.dedup();
    let known: BTreeSet<&str> = flags.iter().map(|(e, _)| e.as_str()).collect();
    let tool = match running {
        Some(r) => format!("{} {r}", cmd.get_name()),
        None => cmd.get_name().to_string(),
    };
    let not_here = |key: &str, shown: &str| -> String {
        if let Some((_, sub)) = elsewhere.iter().find(|(e, _)| e == key) {
            return format!(
                "warning: {shown} is a flag of {} {sub}, not of {tool}, and is ignored",
                cmd.get_name()
            );
        }
        let rest = key.strip_prefix(ENV_PREFIX).unwrap_or(key);
        format!(
            "warning: {shown} names no flag of {tool} and is ignored; {}",
            nearest_hint(rest, &flags, &tool)
        )
    };
    let mut warnings = Vec::new();
    for (key, _) in vars {
        let Some(key) = key.to_str() else {
            if key.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes()) {
                warnings.push(format!(
                    "warning: a variable whose name is not UTF-8 starts with {ENV_PREFIX} and is ignored"
                ));
            }
            continue;
        };
        if key.starts_with(ENV_PREFIX)
            && !known.contains(key)
            && !NOT_FLAGS.iter().any(|(n, _)| *n == key)
        {
            let shown = crate::out::escape(&truncate(key, 64)).into_owned();
            warnings.push(not_here(key, &shown));
        }
    }
    // Other names, in the order of `aliases` (the first wins), never over the variable's own
    // name: LOADGEN_DATABASE_URL over DATABASE_URL over JOB_PUB_DATABASE_URL.
    let mut sets: Vec<(String, OsString)> = Vec::new();
    let mut winner: Vec<(String, String)> = Vec::new();
    for alias in aliases {
        for (key, value) in vars {
            let Some(key) = key.to_str() else { continue };
            let target = match alias.from.strip_suffix('_') {
                Some(_) if alias.to.is_empty() => match key.strip_prefix(alias.from) {
                    Some(rest) if !rest.is_empty() => format!("{ENV_PREFIX}{rest}"),
                    _ => continue,
                },
                _ if key == alias.from => alias.to.to_string(),
                _ => continue,
            };
            let shown = crate::out::escape(&truncate(key, 64)).into_owned();
            let set_as = vars
                .iter()
                .any(|(k, _)| k.to_str() == Some(target.as_str()))
                .then(|| target.clone())
                .or_else(|| {
                    winner
                        .iter()
                        .find(|(t, _)| *t == target)
                        .map(|(_, by)| by.clone())
                });
            if !known.contains(target.as_str()) {
                if alias.deprecated || elsewhere.iter().any(|(e, _)| *e == target) {
                    warnings.push(not_here(&target, &shown));
                }
            } else if let Some(by) = set_as {
                warnings.push(format!(
                    "warning: {shown} is ignored: {by} is set too and wins{}",
                    if alias.deprecated {
                        format!("; remove {shown}, a deprecated name")
                    } else {
                        String::new()
                    }
                ));
            } else {
                if alias.deprecated {
                    warnings.push(format!(
                        "warning: {shown} is a deprecated name; it is read as {target}: rename it"
                    ));
                }
                winner.push((target.clone(), shown.clone()));
                sets.push((target, value.clone()));
            }
        }
    }
    warnings.sort();
    if warnings.len() > MAX_WARNINGS {
        let more = warnings.len() - MAX_WARNINGS;
        warnings.truncate(MAX_WARNINGS);
        warnings.push(format!(
            "warning: {more} more variables name no flag of {tool} (see {tool} --help)"
        ));
    }
    (sets, warnings)
}

/// The subcommand `argv` runs (its first word that names one of `cmd`'s), if any.
pub fn running_subcommand(cmd: &Command, argv: &[OsString]) -> Option<String> {
    argv.iter().skip(1).find_map(|a| {
        let a = a.to_str()?;
        cmd.get_subcommands()
            .any(|s| s.get_name() == a)
            .then(|| a.to_string())
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// "did you mean LOADGEN_EXPECT (--expect)?", or where to look.
fn nearest_hint(rest: &str, flags: &[(String, String)], tool: &str) -> String {
    // A typo is short: a long name costs an edit distance of its length for nothing.
    if rest.len() > 64 {
        return format!("{tool} --help lists each flag's variable");
    }
    let wanted = rest.to_ascii_lowercase().replace('_', "-");
    let longs: Vec<&str> = flags.iter().map(|(_, l)| l.as_str()).collect();
    match crate::config::closest(&wanted, &longs) {
        Some(long) => {
            let env = flags
                .iter()
                .find(|(_, l)| l == long)
                .map_or(String::new(), |(e, _)| e.clone());
            format!("did you mean {env} (--{long})?")
        }
        None => format!("{tool} --help lists each flag's variable"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn tool() -> Command {
        with_env_scheme(
            Command::new("backend-sub")
                .arg(Arg::new("expect").long("expect"))
                .arg(Arg::new("max_devices").long("max-devices"))
                .arg(Arg::new("quiet").long("quiet").action(ArgAction::SetTrue)),
        )
    }

    fn vars(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn every_flag_reads_its_loadgen_variable() {
        let cmd = tool();
        let names: Vec<String> = flag_variables(&cmd).into_iter().map(|(e, _)| e).collect();
        assert_eq!(
            names,
            ["LOADGEN_EXPECT", "LOADGEN_MAX_DEVICES", "LOADGEN_QUIET"]
        );
    }

    #[test]
    fn a_variable_naming_no_flag_is_a_warning_naming_the_nearest() {
        let (sets, warnings) = plan_environment(
            &tool(),
            &[],
            &vars(&[
                ("LOADGEN_EXPCT", "5"),
                ("LOADGEN_EXPECT", "5"),
                ("LOADGEN_PASSWORD", "x"),
                ("PATH", "/bin"),
            ]),
            None,
        );
        assert!(sets.is_empty());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("LOADGEN_EXPCT names no flag of backend-sub")
                && warnings[0].contains("did you mean LOADGEN_EXPECT (--expect)?"),
            "{warnings:?}"
        );
    }

    #[test]
    fn deprecated_names_are_read_under_the_new_one_with_a_warning() {
        let (sets, warnings) = plan_environment(
            &tool(),
            &[JOB_PUB_NAMES],
            &vars(&[("JOB_PUB_EXPECT", "7"), ("JOB_PUB_NOPE", "1")]),
            None,
        );
        assert_eq!(sets, vec![("LOADGEN_EXPECT".into(), OsString::from("7"))]);
        assert!(warnings.iter().any(
            |w| w.contains("JOB_PUB_EXPECT is a deprecated name; it is read as LOADGEN_EXPECT")
        ));
        assert!(warnings
            .iter()
            .any(|w| w.contains("JOB_PUB_NOPE names no flag")));
        // The new name wins over the old.
        let (sets, warnings) = plan_environment(
            &tool(),
            &[JOB_PUB_NAMES],
            &vars(&[("JOB_PUB_EXPECT", "7"), ("LOADGEN_EXPECT", "8")]),
            None,
        );
        assert!(sets.is_empty());
        assert!(
            warnings[0].contains("LOADGEN_EXPECT is set too"),
            "{warnings:?}"
        );
    }

    fn jobs() -> Command {
        with_env_scheme(
            Command::new("job-pub")
                .subcommand(Command::new("seed").arg(Arg::new("count").long("count")))
                .subcommand(
                    Command::new("run")
                        .arg(Arg::new("database_url").long("database-url"))
                        .arg(Arg::new("batch").long("batch")),
                ),
        )
    }

    #[test]
    fn a_variable_of_another_subcommand_is_named_as_such() {
        let (_, warnings) =
            plan_environment(&jobs(), &[], &vars(&[("LOADGEN_COUNT", "5")]), Some("run"));
        assert_eq!(
            warnings,
            ["warning: LOADGEN_COUNT is a flag of job-pub seed, not of job-pub run, and is ignored"]
        );
        let (_, warnings) =
            plan_environment(&jobs(), &[], &vars(&[("LOADGEN_COUNT", "5")]), Some("seed"));
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn other_names_have_a_fixed_precedence_whatever_the_environments_order() {
        for order in [
            [("DATABASE_URL", "a"), ("JOB_PUB_DATABASE_URL", "b")],
            [("JOB_PUB_DATABASE_URL", "b"), ("DATABASE_URL", "a")],
        ] {
            let (sets, warnings) = plan_environment(
                &jobs(),
                &[DATABASE_URL, JOB_PUB_NAMES],
                &vars(&order),
                Some("run"),
            );
            assert_eq!(
                sets,
                vec![("LOADGEN_DATABASE_URL".into(), OsString::from("a"))]
            );
            assert_eq!(
                warnings,
                ["warning: JOB_PUB_DATABASE_URL is ignored: DATABASE_URL is set too and wins; remove JOB_PUB_DATABASE_URL, a deprecated name"]
            );
        }
    }

    #[test]
    fn a_flood_of_unknown_variables_is_a_bounded_warning() {
        let many: Vec<(String, String)> = (0..500)
            .map(|i| (format!("LOADGEN_{}", "X".repeat(200 + i)), "1".into()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (_, warnings) = plan_environment(&tool(), &[], &vars(&many), None);
        assert_eq!(warnings.len(), MAX_WARNINGS + 1);
        assert!(warnings.iter().all(|w| w.len() < 300));
    }
}
