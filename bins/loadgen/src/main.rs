//! loadgen: one command, a subcommand per job. `loadgen pub` is the publisher without a
//! frontend's preset: devices `sensor-{i:05}`, client ids `loadgen-{i}`. Later jobs (merge,
//! probe) join as subcommands.

use std::ffi::OsString;
use std::process::ExitCode;

use publisher_core::Preset;

const PUB: Preset = Preset {
    name: "loadgen pub",
    about: "Publishes the data points of a fleet of simulated devices to MQTT at an exact rate and reports what the broker got",
    device_id: "sensor-{i:05}",
    client_id: "loadgen-{i}",
    batch: "1",
};

const HELP: &str = "loadgen: an MQTT load generator

Usage: loadgen <COMMAND> [OPTIONS]

Commands:
  pub    Publish a fleet of simulated devices (loadgen pub --help for its flags)
  help   Print this help

Exit codes: 0 success, 1 incomplete or other failure, 2 usage, 3 broker unreachable,
4 broker refused the connection, 129/130/143 stopped by SIGHUP/SIGINT/SIGTERM.";

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let _program = args.next();
    let command = args.next();
    let rest: Vec<OsString> = args.collect();
    match command.as_ref().and_then(|c| c.to_str()) {
        Some("pub") => {
            let argv = std::iter::once(OsString::from("loadgen pub"))
                .chain(rest)
                .collect();
            publisher_core::main_with_args(PUB, argv)
        }
        Some("help" | "--help" | "-h") => {
            println!("{HELP}");
            ExitCode::SUCCESS
        }
        Some("--version" | "-V") => {
            println!("loadgen {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("{HELP}");
            ExitCode::from(2)
        }
        Some(other) => {
            eprintln!("error: unknown command '{other}'; use loadgen pub (loadgen help lists the commands)");
            ExitCode::from(2)
        }
    }
}
