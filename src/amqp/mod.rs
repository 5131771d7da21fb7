//! Everything AMQP: connecting and publishing with confirms, the broker objects the worker
//! declares, and the message headers it reads and writes.

pub mod acks;
pub mod connection;
pub mod headers;
pub mod topology;

pub use acks::Acks;
pub use connection::{
    PublishError, confirmed, connect, publish_confirmed, publish_mandatory, redacted,
};
pub use headers::{DeadInfo, RetryState};
pub use topology::{Topology, TopologyError};
