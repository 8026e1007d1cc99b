//! End-to-end tests of `loadgen pub` fleets against a real Mosquitto, each proven by the
//! verifying backend (backend-sub) started on the same broker.

mod common;
mod conn;
mod docs;
mod faults;
mod fleet;
mod help;
mod k8s;
mod merge;
mod observe;
mod qos2;
mod reports;
mod shards;
mod subfleet;
mod takeover;
mod verify;
