//! job-pub: scheduled jobs from PostgreSQL to MQTT (see job-core).

fn main() -> std::process::ExitCode {
    job_core::main()
}
