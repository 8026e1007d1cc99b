//! mqtt-engine: many MQTT connections on a few worker threads.
//!
//! (Being built: see the modules.)

pub mod error;
pub mod outbox;
pub mod schedule;
pub mod template;
