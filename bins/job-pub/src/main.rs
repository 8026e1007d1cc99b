//! job-pub: `loadgen jobs` under the seed's name (see job-core): scheduled jobs from
//! PostgreSQL to MQTT.

fn main() -> std::process::ExitCode {
    job_core::main(job_core::JOB_PUB)
}
