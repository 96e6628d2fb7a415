//! Herald's gateway server: the HTTP side of a node.
//!
//! [`run`] takes an already bound listener and a shutdown future, so tests bind port 0 and only
//! `main` touches real ports and signals. Inside:
//! - [`transport`]: the doors into the session core of `herald-node`: protocol v1 over
//!   WebSocket and Server-Sent Events, and Socket.IO v4, each a thin adapter (admit,
//!   translate, write);
//! - [`api`]: the server API for backends, health, readiness, metrics, the OpenAPI document;
//! - [`backend`]: the application's backend over HTTP (signed, pooled requests the gates
//!   make: the subscribe proxy);
//! - [`http`]: the JSON error envelope for every route, and header parsing by the RFCs;
//! - `demo`: the demo page (development only);
//! - [`admin`]: the admin dashboard at `/admin` (`[admin] enabled = true`): sign-in, its API,
//!   and the page, which watches the gateway through the gateway.
//!
//! Everything protocol-level (gates, sessions, the hub, outboxes, metrics) is in
//! `herald-node`, which has no HTTP dependency.
//!
//! Shutdown runs in phases: stop accepting and report not ready, tell every client to
//! reconnect (spread over `shutdown_spread`), then wait for connections to drain, at most
//! `shutdown_grace`.

pub mod admin;
pub mod api;
pub mod backend;
mod demo;
pub mod http;
pub mod transport;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use herald_core::{Broker, Config};
use herald_memory::{MemoryBroker, MemoryOptions};
use herald_nats::{NatsBroker, NatsOptions};
use herald_redis::{RedisBroker, RedisOptions, TlsFiles};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use herald_node::Node;
use herald_node::fanout::FanoutQueue;
use herald_node::hub::Hub;
use herald_node::metrics::Metrics;

/// hyper's per-connection buffer limit (see `serve`).
const HTTP_BUFFER: usize = 64 * 1024;

/// Errors that stop the server from starting. Each message includes its cause's, so the
/// cause is not also given as a `source` (a chain printed with `{:#}` would say it twice).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The broker could not be set up (a bad Redis URL…).
    #[error("broker: {0}")]
    Broker(herald_core::BrokerError),
    /// The HTTP client for the backend could not be built.
    #[error("backend client: {0}")]
    Backend(reqwest::Error),
    /// `[admin]` could not be set up (a password hash that does not parse).
    #[error("admin: {0}")]
    Admin(String),
}

impl From<herald_core::BrokerError> for ServerError {
    fn from(e: herald_core::BrokerError) -> Self {
        ServerError::Broker(e)
    }
}

impl From<reqwest::Error> for ServerError {
    fn from(e: reqwest::Error) -> Self {
        ServerError::Backend(e)
    }
}

/// Builds a node: hub, broker, metrics. Must run inside a Tokio runtime.
pub fn build(config: Config) -> Result<Arc<Node>, ServerError> {
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(metrics.clone()));
    // With the memory broker the fan-out runs in a task of its own behind a FIFO, so a publish
    // is answered once it is numbered and retained (as the Redis and NATS brokers answer before
    // their subscription task fans out); see `herald_node::fanout`.
    let mut fanout = None;
    let broker: Arc<dyn Broker> = match config.broker.kind {
        herald_core::config::BrokerKind::Memory => {
            let queue = FanoutQueue::spawn(hub.clone());
            fanout = Some(queue.clone());
            let b = MemoryBroker::with_options(
                queue,
                MemoryOptions {
                    idempotency_window: config.limits.idempotency_window,
                    history_budget_bytes: config.broker.history_budget_bytes,
                    max_idempotency_keys: config.broker.max_idempotency_keys,
                    max_idle_channels: config.broker.max_idle_channels,
                    stats: metrics.memory.clone(),
                },
            );
            b.spawn_sweeper();
            b
        }
        herald_core::config::BrokerKind::Redis => Arc::new(RedisBroker::start(
            RedisOptions {
                url: config.broker.url.clone().unwrap_or_default(),
                tls: TlsFiles {
                    ca_file: config.broker.tls_ca_file.clone(),
                    cert_file: config.broker.tls_cert_file.clone(),
                    key_file: config.broker.tls_key_file.clone(),
                },
                prefix: config.broker.prefix.clone(),
                presence_ttl: config.broker.presence_ttl,
                idempotency_window: config.limits.idempotency_window,
                stats: metrics.fanout.clone(),
            },
            hub.clone(),
        )?),
        herald_core::config::BrokerKind::Nats => {
            // The stream keeps as many publications per channel, and as long, as the most
            // demanding channel descriptor asks.
            let policies = config
                .registry
                .descriptors()
                .iter()
                .filter_map(|d| d.history);
            let (history_size, history_ttl) = policies.fold((1, Duration::ZERO), |(n, t), p| {
                (n.max(p.size), t.max(p.ttl))
            });
            Arc::new(NatsBroker::start(
                NatsOptions {
                    url: config.broker.url.clone().unwrap_or_default(),
                    prefix: config.broker.prefix.clone(),
                    presence_ttl: config.broker.presence_ttl,
                    idempotency_window: config.limits.idempotency_window,
                    history_size,
                    history_ttl,
                    replicas: config.broker.replicas,
                },
                hub.clone(),
            )?)
        }
    };
    let backend = match &config.backend.secret {
        Some(secret) => Some(Arc::new(backend::HttpBackend::new(secret)?)),
        None => None,
    };
    let node = Node::new(config, hub, broker, metrics);
    // A fresh node: the cells are empty.
    if let Some(b) = backend {
        let _ = node.backend.set(b);
    }
    if let Some(q) = fanout {
        let _ = node.fanout.set(q);
    }
    let node = Arc::new(node);
    node.start_webhooks();
    if node.config.admin.enabled {
        admin::install(&node).map_err(ServerError::Admin)?;
    }
    Ok(node)
}

/// The TCP peer of the connection a request came on, put in every request's extensions by
/// [`serve`] (the admin dashboard shows it per connection).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// The HTTP routes.
pub fn router(gw: Arc<Node>) -> Router {
    let server_api = Router::new()
        .route("/v1/publish", post(api::publish))
        .route("/v1/publish/batch", post(api::publish_batch))
        .route("/v1/channels", get(api::channels))
        .route("/v1/channels/{channel}/history", get(api::history))
        .route("/v1/channels/{channel}/presence", get(api::presence))
        .route("/v1/users/{user}/disconnect", post(api::disconnect_user))
        .route_layer(from_fn_with_state(gw.clone(), api::require_api_key));
    let mut app = Router::new()
        .route("/v1/ws", get(transport::ws::upgrade))
        .route("/v1/sse", get(transport::sse::stream))
        .route("/v1/sse/{session}", post(transport::sse::command))
        .route(
            "/socket.io/",
            get(transport::socketio::handle)
                .post(transport::socketio::handle)
                .options(transport::socketio::preflight),
        )
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/v1/openapi.json", get(api::openapi))
        .merge(server_api);
    if gw.config.server.demo {
        app = app.merge(demo::routes());
    }
    if let Some(admin) = admin::Admin::of(&gw) {
        app = app.merge(admin.routes());
    }
    app.fallback(api::not_found)
        .layer(axum::Extension(Arc::new(
            transport::socketio::Engines::default(),
        )))
        .layer(axum::middleware::from_fn(http::check_singleton_headers))
        .layer(axum::middleware::from_fn(http::json_errors))
        .with_state(gw)
}

/// Serves on `listener` until `shutdown` completes, then shuts down gracefully.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let gw = build(config)?;
    serve(listener, gw, shutdown).await;
    Ok(())
}

/// Serves an already built node (tests use this to reach into the state).
pub async fn serve(
    listener: TcpListener,
    gw: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let app = router(gw.clone());
    if let Some(admin) = admin::Admin::of(&gw) {
        admin.spawn_tasks();
    }
    for (i, source) in gw.config.sources.postgres.iter().enumerate() {
        let name = format!("postgres source #{} ({})", i + 1, source.outbox_table);
        let ready = gw.readiness_flag(&name);
        let publisher: Arc<dyn herald_core::source::Publisher> = gw.clone();
        // Tracked, so shutdown waits for the consumer to finish its batch and commit.
        gw.tasks.spawn(herald_postgres::run(
            source.clone(),
            publisher,
            ready,
            gw.shutdown.clone(),
        ));
    }
    // The event-bus sources. Tracked too; each leaves its message in flight unacknowledged
    // at shutdown, for the bus to deliver again (deduplicated by its idempotency key).
    let sources = &gw.config.sources;
    for (i, source) in sources.nats.iter().enumerate() {
        let publisher: Arc<dyn herald_core::source::Publisher> = gw.clone();
        gw.tasks.spawn(herald_sources::nats::run(
            i,
            source.clone(),
            publisher,
            gw.shutdown.clone(),
        ));
    }
    for (i, source) in sources.redis_stream.iter().enumerate() {
        let publisher: Arc<dyn herald_core::source::Publisher> = gw.clone();
        gw.tasks.spawn(herald_sources::redis_stream::run(
            i,
            source.clone(),
            publisher,
            gw.shutdown.clone(),
        ));
    }
    for (i, source) in sources.amqp.iter().enumerate() {
        let publisher: Arc<dyn herald_core::source::Publisher> = gw.clone();
        gw.tasks.spawn(herald_sources::amqp::run(
            i,
            source.clone(),
            publisher,
            gw.shutdown.clone(),
        ));
    }
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(gw.config.server.handshake_timeout)
        // Bounds what hyper buffers per connection, both ways: a request head at most this big,
        // and at most this much of a streamed response (SSE) held beyond the session's outbox,
        // whose byte limit is the slow-consumer policy. hyper's default is ~408 KiB.
        .max_buf_size(HTTP_BUFFER);
    let http_conns = TaskTracker::new();
    tokio::pin!(shutdown);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Small frames must leave now, not after Nagle's delay.
                    let _ = stream.set_nodelay(true);
                    if let Some(size) = gw.config.server.tcp_send_buffer {
                        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(size);
                    }
                    let service = TowerToHyperService::new(app.clone().map_request(
                        move |mut req: hyper::Request<hyper::body::Incoming>| {
                            req.extensions_mut().insert(Peer(peer));
                            req
                        },
                    ));
                    let conn = http.serve_connection(TokioIo::new(stream), service).with_upgrades();
                    let stop = gw.shutdown.clone();
                    http_conns.spawn(async move {
                        tokio::pin!(conn);
                        tokio::select! {
                            _ = conn.as_mut() => {}
                            _ = stop.cancelled() => {
                                // Finish the request in flight, then close; upgraded
                                // connections are already detached and drain on their own.
                                conn.as_mut().graceful_shutdown();
                                let _ = conn.await;
                            }
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: keep serving who is connected.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    tracing::info!("shutting down: not ready, not accepting");
    gw.set_draining();
    drop(listener);
    gw.shutdown.cancel();
    gw.tasks.close();
    let grace = gw.config.server.shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        http_conns.close();
        http_conns.wait().await;
        gw.tasks.wait().await;
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!(
            remaining = gw.tasks.len(),
            "grace period over; dropping remaining connections"
        ),
    }
}
