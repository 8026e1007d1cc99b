//! frontend2-pub: publisher-core with frontend 2's device, topic and client id.

use std::process::ExitCode;

use publisher_core::Preset;

const PRESET: Preset = Preset {
    name: "frontend2-pub",
    about: "Publishes frontend 2's device data points to MQTT at an exact rate and reports what the broker got",
    device_id: "frontend2_ultra_high_perf_device",
    client_id: "2",
    batch: "1000",
};

fn main() -> ExitCode {
    publisher_core::main(PRESET)
}
