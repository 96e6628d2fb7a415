//! `herald-bench`: the instrument behind `docs/benchmarks.md`.
//!
//! It opens many WebSocket (or Server-Sent Events) connections to a gateway (Herald, or one of the peers in
//! `bench/peers/`), publishes on an open-loop schedule and measures what arrives: latency from
//! the *intended* send time (so a stalled server cannot hide its stalls by slowing the
//! publisher down), loss and reordering from sequence numbers, and the server's CPU and memory
//! from `/proc`. Layout:
//!
//! - [`wire`]: a minimal WebSocket client (handshake and framing) written for throughput, so one
//!   load core can keep up with a server core;
//! - [`sse`]: a minimal Server-Sent Events client (HTTP/1.1, chunked), same budget as [`wire`];
//! - [`dialect`]: Herald protocol v1 over WebSocket and over SSE, Socket.IO v4 (websocket
//!   transport only; the peers' rooms and Herald's `/socket.io/`), the Pusher Channels
//!   protocol (Sockudo) and raw text;
//! - [`payload`]: the stamped payload and its cheap parser;
//! - [`stats`]: per-step histograms and counters, mergeable and serializable;
//! - [`procfs`]: CPU ticks and RSS of a process, and the fd limit;
//! - [`load`]: one load run (connect, publish in rate steps, drain, report);
//! - [`suite`]: the scenarios S1–S7 against every peer, and the markdown report;
//! - [`streams`]: a broadcast and a per-user stream on every connection at once, with the
//!   receivers and the publisher in separate processes (`herald-bench receive`, `publish`);
//! - [`cluster`]: S8, 100k connections over six nodes sharing one Redis, and the one-node
//!   comparison;
//! - [`soak`]: ten minutes at 19k connections with 1% churning per second;
//! - [`null`]: the null gateway, a server that only writes pre-framed bytes (the ceiling),
//!   naive or batching (the fair ceiling for Herald's model);
//! - [`subscribe`]: subscribe latency and connects/s with static scopes and the subscribe proxy.

pub mod cluster;
pub mod dialect;
pub mod load;
pub mod null;
pub mod payload;
pub mod procfs;
pub mod soak;
pub mod sse;
pub mod stats;
pub mod streams;
pub mod subscribe;
pub mod suite;
pub mod wire;
