//! loadgen: one command, a subcommand per job. `loadgen pub` is the publisher (devices
//! `sensor-{i:05}`, client ids `loadgen-TOKEN-{i}`), `loadgen sub` the verifying subscriber,
//! `loadgen jobs` scheduled jobs from PostgreSQL to MQTT, `loadgen merge` adds up the reports
//! of a sharded run. `frontend1-pub`, `frontend2-pub`, `backend-sub` and `job-pub` are the
//! same tools under the seed's names and defaults (presets of the same flag definitions).
//!
//! [`check`] parses a command line of any of them without running it: the tests hold every
//! example in every `--help`, the README and `docs/` to it.

pub mod merge;
pub mod subfleet;

use std::ffi::OsString;
use std::process::ExitCode;

use mqtt_tool::config::ParseExit;

/// `loadgen --help`.
pub fn help() -> String {
    format!(
        "loadgen: an MQTT load generator that counts honestly

Usage: loadgen <COMMAND> [OPTIONS]

Commands:
  pub    Publish the data points of a fleet of simulated devices at an exact rate
  sub    Subscribe and prove that every point arrived, once, per device
  conn   Hold, churn or storm N connections: connect and keep-alive latency, recovery
  jobs   Scheduled jobs from PostgreSQL to MQTT (loadgen jobs migrate|seed|run)
  merge  Add up the reports of a sharded run or of a share group
  help   Print this help (loadgen <COMMAND> --help: the command's flags)

Examples:
  # with no broker around: an embedded one, 100,000 points, a verdict
  loadgen pub
  # a verified fleet run, one command, one verdict (docs/verify.md)
  loadgen pub --broker mqtt://127.0.0.1:1883 --devices 1000 --rate-per-device 10 \\
      --duration 60s --qos 1 --verify

The seed's tools are presets of these: frontend1-pub and frontend2-pub (loadgen pub with one
device, 1,000 points a message, client ids 1 and 2), backend-sub (loadgen sub routing
frontend1*/frontend2* devices), job-pub (loadgen jobs).

Environment: every flag can also be set as LOADGEN_<FLAG> (--max-inflight:
LOADGEN_MAX_INFLIGHT); the command line wins over the environment, the environment over
--config.

{}",
        mqtt_tool::error::exit_codes_help(&[])
    )
}

/// The commands `loadgen` dispatches to.
pub const COMMANDS: &[&str] = &["pub", "sub", "conn", "jobs", "merge"];

/// The whole `loadgen` program.
pub fn main() -> ExitCode {
    run(std::env::args_os().collect())
}

/// `loadgen` with the arguments given (the program's name first).
///
/// Started under a seed tool's name (a link named `backend-sub`, `frontend1-pub`,
/// `frontend2-pub` or `job-pub` to this binary), it runs that tool, as its own binary would:
/// one binary for an image that needs several tools, and what the benches run (one release
/// binary to link instead of four).
pub fn run(argv: Vec<OsString>) -> ExitCode {
    if let Some(code) = run_as_seed_tool(&argv) {
        return code;
    }
    let mut args = argv.into_iter();
    let _program = args.next();
    let command = args.next();
    let rest: Vec<OsString> = args.collect();
    let sub = |name: &str| -> Vec<OsString> {
        std::iter::once(OsString::from(format!("loadgen {name}")))
            .chain(rest.iter().cloned())
            .collect()
    };
    match command.as_ref().and_then(|c| c.to_str()) {
        Some("pub") => publisher_core::main_with(
            publisher_core::LOADGEN_PUB,
            sub("pub"),
            Some(&backend_core::pubverify::PubVerifier),
        ),
        // `--clients N`: a subscriber fleet on the engine; else backend-sub's one session.
        Some("sub") if subfleet::wants_fleet(&rest) => subfleet::main_with_args(sub("sub")),
        Some("sub") => backend_core::main_with_args(backend_core::LOADGEN_SUB, sub("sub")),
        Some("conn") => publisher_core::conn::main_with_args(sub("conn")),
        Some("jobs") => job_core::main_with_args(job_core::LOADGEN_JOBS, sub("jobs")),
        Some("merge") => merge::main(sub("merge")),
        // `loadgen help pub` is `loadgen pub --help`.
        Some("help")
            if rest
                .first()
                .and_then(|c| c.to_str())
                .is_some_and(|c| COMMANDS.contains(&c)) =>
        {
            let mut argv = vec![OsString::from("loadgen")];
            argv.extend(rest.iter().take(1).cloned());
            argv.push(OsString::from("--help"));
            run(argv)
        }
        Some("help" | "--help" | "-h") => {
            println!("{}", help());
            ExitCode::SUCCESS
        }
        Some("--version" | "-V") => {
            println!("loadgen {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("{}", help());
            ExitCode::from(mqtt_tool::error::code::USAGE)
        }
        Some(other) => {
            let hint = nearest_command(other)
                .map_or(String::new(), |c| format!("did you mean loadgen {c}? "));
            mqtt_tool::run::print_error(&format!(
                "unknown command '{}'; {hint}the commands are pub, sub, conn, jobs and merge (loadgen help)",
                mqtt_tool::out::escape(other)
            ));
            ExitCode::from(mqtt_tool::error::code::USAGE)
        }
    }
}

/// The seed tool `argv[0]` names, run with `argv` as its own binary runs it; `None` for any
/// other name.
fn run_as_seed_tool(argv: &[OsString]) -> Option<ExitCode> {
    let program = std::path::Path::new(argv.first()?).file_name()?.to_str()?;
    let argv = argv.to_vec();
    let verifier: Option<&'static dyn mqtt_tool::delivery::DeliveryCheck> =
        Some(&backend_core::pubverify::PubVerifier);
    Some(match program {
        "frontend1-pub" => publisher_core::main_with(publisher_core::FRONTEND1, argv, verifier),
        "frontend2-pub" => publisher_core::main_with(publisher_core::FRONTEND2, argv, verifier),
        "backend-sub" => backend_core::main_with_args(backend_core::BACKEND_SUB, argv),
        "job-pub" => job_core::main_with_args(job_core::JOB_PUB, argv),
        _ => return None,
    })
}

/// The command a mistyped one most likely meant (`publish` -> `pub`, `subscribe` -> `sub`).
fn nearest_command(typed: &str) -> Option<&'static str> {
    let t = typed.to_ascii_lowercase();
    let t = t.trim_start_matches('-');
    COMMANDS
        .iter()
        .copied()
        .find(|c| t.starts_with(c) || (t.len() >= 3 && c.starts_with(t)))
        .or(match t {
            "job" | "job-pub" => Some("jobs"),
            "backend-sub" | "subscriber" => Some("sub"),
            _ => None,
        })
}

/// The long help of every tool and subcommand, each with the arguments that reach it
/// (`["job-pub", "run"]`; examples in it start with the first): what the help tests read.
pub fn help_texts() -> Vec<(Vec<String>, String)> {
    let mut out = vec![(vec!["loadgen".to_string()], help())];
    let mut render = |name: &str, mut cmd: clap::Command| {
        let prefix: Vec<String> = name.split(' ').map(str::to_string).collect();
        out.push((prefix.clone(), cmd.render_long_help().to_string()));
        let subs: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .filter(|s| s != "help")
            .collect();
        for s in subs {
            if let Some(sc) = cmd.find_subcommand_mut(&s) {
                let mut p = prefix.clone();
                p.push(s.clone());
                out.push((p, sc.render_long_help().to_string()));
            }
        }
    };
    for p in [
        publisher_core::LOADGEN_PUB,
        publisher_core::FRONTEND1,
        publisher_core::FRONTEND2,
    ] {
        render(p.name, publisher_core::command(&p));
    }
    for p in [backend_core::LOADGEN_SUB, backend_core::BACKEND_SUB] {
        render(p.name, backend_core::command(&p));
    }
    for p in [job_core::LOADGEN_JOBS, job_core::JOB_PUB] {
        render(p.name, job_core::command(&p));
    }
    render("loadgen conn", publisher_core::conn::command());
    render("loadgen merge", merge::command());
    out
}

/// Parses a command line of any of the workspace's tools without running it: `argv[0]` is
/// the program (`loadgen`, `frontend1-pub`, `frontend2-pub`, `backend-sub`, `job-pub`).
/// `Ok` for a command that would run (or print its help); `Err` with the usage error it
/// would exit 2 with. Reads `LOADGEN_` variables as the tool would, but leaves the
/// environment alone: the other names the jobs tools adopt at start (`DATABASE_URL`,
/// `JOB_PUB_*`, see [`mqtt_tool::cli::adopt_environment`]) are the caller's to map. May check
/// that files it names are there: run it where the command's files are.
pub fn check(argv: Vec<OsString>) -> Result<(), String> {
    let mut it = argv.into_iter();
    let program = it.next().unwrap_or_default();
    let program = program.to_string_lossy().into_owned();
    let program = program.rsplit('/').next().unwrap_or(&program).to_string();
    let rest: Vec<OsString> = it.collect();
    let with = |name: &str, args: &[OsString]| -> Vec<OsString> {
        std::iter::once(OsString::from(name))
            .chain(args.iter().cloned())
            .collect()
    };
    let result = match program.as_str() {
        "frontend1-pub" => {
            publisher_core::parse_plan(&publisher_core::FRONTEND1, with(&program, &rest)).map(drop)
        }
        "frontend2-pub" => {
            publisher_core::parse_plan(&publisher_core::FRONTEND2, with(&program, &rest)).map(drop)
        }
        "backend-sub" => {
            backend_core::parse_plan(&backend_core::BACKEND_SUB, with(&program, &rest)).map(drop)
        }
        "job-pub" => job_core::parse_plan(&job_core::JOB_PUB, with(&program, &rest)).map(drop),
        "loadgen" => {
            let Some((command, args)) = rest.split_first() else {
                return Ok(());
            };
            let name = format!("loadgen {}", command.to_string_lossy());
            match command.to_str() {
                Some("pub") => {
                    publisher_core::parse_plan(&publisher_core::LOADGEN_PUB, with(&name, args))
                        .map(drop)
                }
                Some("sub") if subfleet::wants_fleet(args) => {
                    subfleet::parse_plan(with(&name, args)).map(drop)
                }
                Some("sub") => {
                    backend_core::parse_plan(&backend_core::LOADGEN_SUB, with(&name, args))
                        .map(drop)
                }
                Some("conn") => publisher_core::conn::parse_plan(with(&name, args)).map(drop),
                Some("jobs") => {
                    job_core::parse_plan(&job_core::LOADGEN_JOBS, with(&name, args)).map(drop)
                }
                Some("merge") => merge::parse_args(with(&name, args)),
                Some("help" | "--help" | "-h" | "--version" | "-V") => Ok(()),
                _ => Err(ParseExit::Usage(format!("unknown command {name}"))),
            }
        }
        other => return Err(format!("{other} is not one of the workspace's tools")),
    };
    match result {
        Ok(()) | Err(ParseExit::Info(_)) => Ok(()),
        Err(ParseExit::Usage(msg)) => Err(msg),
    }
}
