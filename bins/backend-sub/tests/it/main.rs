//! End-to-end tests of backend-sub against a real Mosquitto: the frontend publishers and
//! crafted payloads (gaps, duplicates, reordering, malformed, mixed formats); the PostgreSQL
//! sink against a real PostgreSQL.

mod common;
mod crafted;
mod faults;
mod frontends;
mod hostile;
mod protocol;
mod reports;
mod sink;
mod stops;
mod takeover;
