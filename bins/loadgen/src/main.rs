//! loadgen: one command, a subcommand per job. `loadgen pub` is the publisher without a
//! frontend's preset: devices `sensor-{i:05}`, client ids `loadgen-{i}`. `loadgen merge`
//! adds up the reports of a sharded run.

mod merge;

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
  merge  Add up the reports of a sharded run or a share group (loadgen merge --help)
  help   Print this help

Exit codes: 0 success, 1 incomplete or other failure, 2 usage, 3 broker unreachable,
4 broker refused the connection, 5 backend verification failed, 99 a --threshold failed,
129/130/143 stopped by SIGHUP/SIGINT/SIGTERM.";

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
        Some("merge") => {
            let argv = std::iter::once(OsString::from("loadgen merge"))
                .chain(rest)
                .collect();
            merge::main(argv)
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
            mqtt_tool::run::print_error(&format!(
                "unknown command '{other}'; use loadgen pub or loadgen merge (loadgen help lists the commands)"
            ));
            ExitCode::from(2)
        }
    }
}
