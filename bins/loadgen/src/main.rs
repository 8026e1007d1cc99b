//! loadgen: one command, a subcommand per job (see the library).

fn main() -> std::process::ExitCode {
    loadgen::main()
}
