//! End-to-end tests of the publisher binary against real brokers: a Mosquitto process each
//! test starts on a free port from `mosquitto/mosquitto.conf`, and the embedded rumqttd.
//! A subscriber in the test decodes every message and checks each `seq` arrived once.

mod common;
mod delivery;
mod disconnects;
mod embedded;
mod errors;
mod faults;
mod files;
mod mqtt5;
mod protocol;
mod report;
mod signals;
mod stall;
mod takeover;
mod tls;
