//! mqtt-tool: what every MQTT tool of the workspace shares, so that no tool leans on
//! another's internals.
//!
//! ```text
//! args + config --> connect (ConnectPlan) --> broker (address, or the embedded rumqttd)
//!                                         --> mqtt (a rumqttc connection, for subscribers)
//! run: logging, parse, runtime, signals (shutdown) --> the tool --> exit code (error)
//! out: terminal and files, escaped and bounded; format: numbers for people
//! ```
//!
//! - [`args`]: the connection and output flags, and the value parsers of every tool.
//! - [`config`]: defaults < config file < environment < command line; [`cli`]: the
//!   `LOADGEN_<FLAG>` variable of every flag.
//! - [`connect`]: the validated connection settings; [`broker`]: the broker to use.
//! - [`mqtt`]: connecting with rumqttc and what a lost connection means.
//! - [`shutdown`]: signals; [`run`]: a binary's frame; [`error`]: errors and exit codes.
//! - [`frame`]: one run's frame (metrics, broker, thresholds, exports, exit code) and the
//!   header every report starts with.
//! - [`out`]: writing safely; [`format`]: figures as reports show them.
//! - [`export`]: a report's forms (text, JSON, CSV, Markdown); [`summary`]: the verdict and
//!   the figures that matter, which the Markdown summary shows; [`threshold`]: pass/fail
//!   checks on a report's fields.
//! - [`delivery`]: the seam between a publisher and its in-process verifier (`--verify`).
//! - [`hist`]: histograms in reports; [`phases`]: the phases of a connect (TCP, TLS,
//!   CONNACK) in reports; [`merge`]: what both kinds of `loadgen merge` share.
//! - [`topic`]: the topic names MQTT lets a client publish to.
//! - [`metrics`]: the Prometheus exposition and its server; [`push`]: the Pushgateway
//!   client; [`live`]: a run's metrics served, pushed, labelled and kept up after it.

pub mod args;
pub mod broker;
pub mod cli;
pub mod config;
pub mod connect;
pub mod delivery;
pub mod error;
pub mod export;
pub mod format;
pub mod frame;
pub mod gather;
pub mod hist;
pub mod live;
pub mod merge;
pub mod metrics;
pub mod mqtt;
pub mod out;
pub mod phases;
pub mod push;
pub mod run;
pub mod session;
pub mod shutdown;
pub mod summary;
pub mod threshold;
pub mod tls;
pub mod topic;

pub use error::Error;
pub use run::{init_tracing, run_main, run_sync};
