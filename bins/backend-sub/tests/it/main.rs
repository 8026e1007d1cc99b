//! End-to-end tests of backend-sub against a real Mosquitto: the frontend publishers and
//! crafted payloads (gaps, duplicates, reordering, malformed, mixed formats).

mod common;
mod crafted;
mod faults;
mod frontends;
mod hostile;
mod stops;
