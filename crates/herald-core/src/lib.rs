//! Herald's core: everything about channels and clients that needs no network.
//!
//! - [`name`]: channel names and `{param}` templates (one segment per placeholder).
//! - [`config`]: `herald.toml` plus `HERALD_*` overrides, validated as a whole before serving.
//! - [`registry`]: the channel descriptors, name resolution, gates 2 and 3 (`authorize_*`,
//!   schema validation). Authorization is a pure function of descriptor, params and identity.
//! - [`identity`]: identities and JWT verification (gate 1).
//! - [`protocol`]: protocol v1 frames and error codes.
//! - [`broker`]: the `Broker` trait every fan-out backend implements.
//! - [`source`]: the `Publisher` interface event sources (Postgres, the buses) publish
//!   through, the scoping of redelivery keys to their source, and their counters.
//! - [`bus`]: the configuration of the event-bus sources (NATS JetStream, Redis Streams,
//!   RabbitMQ); [`route`]: their allowlist, subject pattern → channel and payload.
//! - [`input`]: the one parser every publication goes through (API, batch, sources).
//!
//! The server, the brokers and the CLI build on these types; nothing here opens a socket.

pub mod broker;
pub mod bus;
pub mod config;
pub mod identity;
pub mod input;
pub mod name;
pub mod protocol;
pub mod registry;
pub mod route;
pub mod rpc;
pub mod source;

pub use broker::{
    Broker, BrokerError, Position, PresenceEvent, Publication, PublicationSink, PublishRequest,
};
pub use config::{Config, ConfigError};
pub use identity::{AuthError, Authenticator, Identity};
pub use registry::{Descriptor, Registry, Scope};
