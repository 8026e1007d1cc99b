//! End-to-end tests of `loadgen pub` fleets against a real Mosquitto, each proven by the
//! verifying backend (backend-sub) started on the same broker.

mod common;
mod faults;
mod fleet;
mod k8s;
mod merge;
mod observe;
mod shards;
mod takeover;
