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

/// What every tool's `--help` says about the environment.
pub const ENV_HELP: &str =
    "Environment: every flag can also be set as LOADGEN_<FLAG> (--max-inflight: \
LOADGEN_MAX_INFLIGHT); the command line wins over the environment, the environment over \
--config. The MQTT password comes from LOADGEN_PASSWORD (or --password-file), never a flag.";

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
pub fn warn_environment(cmd: &Command, aliases: &[Alias]) {
    for w in adopt_environment(cmd, aliases) {
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
        let Some(long) = a.get_long() else { return a };
        if a.get_env().is_some() || matches!(long, "help" | "version") {
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
pub fn adopt_environment(cmd: &Command, aliases: &[Alias]) -> Vec<String> {
    let vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let (sets, warnings) = plan_environment(cmd, aliases, &vars);
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
) -> (Vec<(String, OsString)>, Vec<String>) {
    let flags = flag_variables(cmd);
    let known: BTreeSet<&str> = flags.iter().map(|(e, _)| e.as_str()).collect();
    let is_set = |name: &str| vars.iter().any(|(k, _)| k == name);
    let tool = cmd.get_name();
    let mut sets = Vec::new();
    let mut warnings = Vec::new();
    for (key, value) in vars {
        let Some(key) = key.to_str() else { continue };
        let shown = crate::out::escape(&truncate(key, 64)).into_owned();
        if let Some(rest) = key.strip_prefix(ENV_PREFIX) {
            if known.contains(key) || NOT_FLAGS.iter().any(|(n, _)| *n == key) {
                continue;
            }
            warnings.push(format!(
                "warning: {shown} names no flag of {tool} and is ignored; {}",
                nearest_hint(rest, &flags, tool)
            ));
            continue;
        }
        for alias in aliases {
            let target = match alias.from.strip_suffix('_') {
                Some(_) if alias.to.is_empty() => match key.strip_prefix(alias.from) {
                    Some(rest) if !rest.is_empty() => format!("{ENV_PREFIX}{rest}"),
                    _ => continue,
                },
                _ if key == alias.from => alias.to.to_string(),
                _ => continue,
            };
            if !known.contains(target.as_str()) {
                let rest = target.strip_prefix(ENV_PREFIX).unwrap_or(&target);
                warnings.push(format!(
                    "warning: {shown} names no flag of {tool} and is ignored; {}",
                    nearest_hint(rest, &flags, tool)
                ));
            } else if is_set(&target) {
                if alias.deprecated {
                    warnings.push(format!(
                        "warning: {shown} is a deprecated name and is ignored: {target} is set too; remove {shown}"
                    ));
                }
            } else {
                if alias.deprecated {
                    warnings.push(format!(
                        "warning: {shown} is a deprecated name; it is read as {target}: rename it"
                    ));
                }
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
        );
        assert!(sets.is_empty());
        assert!(
            warnings[0].contains("LOADGEN_EXPECT is set too"),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_flood_of_unknown_variables_is_a_bounded_warning() {
        let many: Vec<(String, String)> = (0..500)
            .map(|i| (format!("LOADGEN_{}", "X".repeat(200 + i)), "1".into()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (_, warnings) = plan_environment(&tool(), &[], &vars(&many));
        assert_eq!(warnings.len(), MAX_WARNINGS + 1);
        assert!(warnings.iter().all(|w| w.len() < 300));
    }
}
