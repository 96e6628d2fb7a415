//! One Herald node's live state, whatever the transport.
//!
//! This crate is the session core the transports stand on. It has no HTTP dependency on
//! purpose: "the four gates are the same for every transport" is a compile-time fact, because a
//! transport (WebSocket, Server-Sent Events, Socket.IO, in `herald-server` and later crates) can
//! only admit a request, translate its wire format and write what a session queues.
//!
//! # Layout
//! - [`node`]: [`Node`], the shared state of one gateway process: config, broker, hub,
//!   metrics, shutdown, readiness; the publish path every source takes (gate 3), gate 2's call,
//!   history, presence and kicks.
//! - [`admission`]: gate 1 for every door: a transport turns its request into a [`Handshake`];
//!   [`Node::admit`] answers [`Admitted`] (identity plus a per-user [`Slot`]) or a [`Refusal`].
//! - [`session`]: [`Session`], one client's identity, subscriptions, rate buckets, token expiry,
//!   recovery, timers and outbox; [`Session::run`] is the single `select!` loop, generic over the
//!   [`Transport`] seam (no box, no extra task or channel for WebSocket).
//! - [`hub`]: the node-local subscription table and the fan-out of [`Prepared`] publications.
//! - [`fanout`]: the FIFO and task between the memory broker and the hub, so a publish is
//!   answered before its fan-out (as with Redis and NATS).
//! - [`prepared`]: a publication encoded once per wire format (v1 JSON eagerly, others lazily).
//! - [`outbox`]: each session's byte-bounded queue (the slow-consumer policy).
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`proxy`]: gate 2 decided by the application's backend (the subscribe proxy), behind the
//!   [`proxy::Backend`] seam that `herald-server` implements over HTTP.
//! - [`admin`]: the admin dashboard's internal `$admin:` channels, the ticket its
//!   connection is admitted with, and the statistics every node publishes for it.
//! - [`webhook`]: events for the backend (connections, presence, occupancy), batched, signed
//!   and retried from a bounded queue per webhook.
//!
//! # The path of a publication
//! `Node::publish_as` (gate 3: resolve, authorize, validate) → `Broker::publish` (numbered and
//! retained; the publisher is answered here; a server API batch: `Node::publish_batch_as`, the
//! same gates per item → `Broker::publish_batch`) → the broker calls the hub's
//! `PublicationSink::deliver` on every node with subscribers, from its subscription task (Redis,
//! NATS) or through the [`fanout`] queue's task (memory) → the hub wraps it
//! in one `Arc<Prepared>` and pushes it to each subscriber's [`Outbox`] → each session's loop
//! drains its outbox and hands the batch to `Transport::send`, which writes the format it speaks.

pub mod admin;
pub mod admission;
pub mod fanout;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod prepared;
pub mod proxy;
pub mod session;
pub mod webhook;

pub use admission::{Admitted, Handshake, Refusal, Slot};
pub use node::{BatchItem, Node};
pub use outbox::Outbox;
pub use prepared::{Prepared, Wire};
pub use session::transport::{CursorUpdate, Ending, Inbound, Outgoing, Own, Transport};
pub use session::{Opening, Session, SessionHandle};

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, ignoring poisoning: every critical section here leaves its data consistent
/// before anything can panic, so a panic elsewhere must not take the node's tables with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
