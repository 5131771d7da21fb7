//! callback-dispatcher: consumes callback events from RabbitMQ and delivers them, signed, to
//! customers' callback URLs, with Advanced Authentication (OAuth 2.0 client credentials
//! against the customer's own auth server), endpoint protection and durable retries.
//!
//! The module map, in the order an event meets it:
//!
//! ```text
//! worker     supervisor: connections, consume loop, shutdown      (reload: config changes)
//! dispatch   the pipeline for one delivery:
//!   event      read the delivery into an Event (amqp::headers)
//!   profiles   resolve its profile's runtime: gate (limits, breaker), token slot, client
//!   auth       authenticate (static credentials, OAuth 2.0 tokens, shared cache)
//!   sign       Standard Webhooks signatures (v1 HMAC, v1a ed25519)
//!   send       the HTTP attempt                                     (guard: network guard)
//!   decide     what the answer means and the event's fate, pure    (retry: delay math)
//!   settle     carry the fate out with publisher confirms          (amqp: topology, headers)
//! ordered    ordered delivery per key: partitions, lanes, in-place retries
//! receipts   what became of each event, and operator events, told on the broker
//! cluster    replicas share their count, rate limits, concurrency and breakers (Redis)
//! config     YAML -> validated settings, one validation per section
//! metrics, server   Prometheus metrics, /metrics /healthz /readyz
//! telemetry  log output; trace: OpenTelemetry spans and trace context
//! ops        operator commands: check-config, token, publish, dead-letters, signing-key
//! ```

pub mod amqp;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod decide;
pub mod dispatch;
pub mod event;
pub mod guard;
pub mod http;
pub mod metrics;
pub mod ops;
pub mod ordered;
pub mod profiles;
pub mod proxy;
pub mod receipts;
pub mod reload;
pub mod retry;
pub mod send;
pub mod server;
pub mod settle;
pub mod sign;
pub mod telemetry;
pub mod trace;
pub mod worker;

pub use worker::{Worker, run};
