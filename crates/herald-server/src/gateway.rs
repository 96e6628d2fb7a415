//! The state one gateway process shares between its transports, and the operations every
//! transport goes through (the same gates whatever the door).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use herald_core::source::{Publisher, SourceKind};

use herald_core::broker::{HistoryQuery, HistoryResult};
use herald_core::name::Params;
use herald_core::protocol::{ClientInfo, ErrorBody, ErrorCode, raw_json};
use herald_core::registry::ResolveError;
use herald_core::{
    Authenticator, Broker, BrokerError, Config, Descriptor, Identity, Position, PublishRequest,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::Hub;
use crate::metrics::{Gate, Metrics, Source};

/// Everything a request handler or connection task needs.
pub struct Gateway {
    pub config: Config,
    pub auth: Authenticator,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when shutdown begins.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them to drain.
    pub connections: TaskTracker,
    draining: AtomicBool,
    next_conn: AtomicU64,
    node: String,
    readiness: Mutex<Vec<(String, Arc<AtomicBool>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl Publisher for Gateway {
    async fn publish(
        &self,
        source: SourceKind,
        channel: &str,
        data: &Value,
        idempotency_key: Option<String>,
    ) -> Result<Position, ErrorBody> {
        let source = match source {
            SourceKind::Outbox => Source::outbox,
            SourceKind::Notify => Source::notify,
        };
        Gateway::publish(self, source, channel, data, idempotency_key, None).await
    }

    fn rejected(&self, _source: SourceKind, code: ErrorCode) {
        self.metrics.reject(Gate::publish, code);
    }

    fn readiness(&self, name: &str) -> Arc<AtomicBool> {
        self.readiness_flag(name)
    }
}

impl Gateway {
    pub fn new(
        config: Config,
        auth: Authenticator,
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config,
            auth,
            hub,
            broker,
            metrics,
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            draining: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            node: random_id(8),
            readiness: Mutex::new(Vec::new()),
        }
    }

    /// A connection id unique across nodes and restarts.
    pub fn next_client_id(&self) -> Arc<str> {
        let n = self.next_conn.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{}-{n}", self.node))
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resolves a channel name, mapping both invalid and unknown names to `unknown_channel`.
    pub fn resolve(&self, channel: &str) -> Result<(&Descriptor, Params), ErrorBody> {
        self.config.registry.resolve(channel).map_err(|e| match e {
            ResolveError::Unknown => ErrorBody::new(
                ErrorCode::UnknownChannel,
                format!("unknown channel {channel:?}"),
            ),
            ResolveError::Invalid(e) => {
                ErrorBody::new(ErrorCode::UnknownChannel, format!("unknown channel: {e}"))
            }
        })
    }

    /// Gate 3 and the publish itself, for every source. `identity` is `None` for the server
    /// API (trusted: only the schema applies), `Some` for clients (the descriptor must allow it).
    pub async fn publish(
        &self,
        source: Source,
        channel: &str,
        data: &Value,
        idempotency_key: Option<String>,
        identity: Option<&Identity>,
    ) -> Result<Position, ErrorBody> {
        let result = self
            .publish_inner(channel, data, idempotency_key, identity)
            .await;
        match &result {
            Ok(_) => self.metrics.published(source),
            Err(e) => self.metrics.reject(Gate::publish, e.code),
        }
        result
    }

    /// A readiness flag; `/readyz` is 503 while any flag is false.
    pub fn readiness_flag(&self, name: &str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        lock(&self.readiness).push((name.to_owned(), flag.clone()));
        flag
    }

    /// Names of the readiness flags that are down.
    pub fn not_ready(&self) -> Vec<String> {
        lock(&self.readiness)
            .iter()
            .filter(|(_, f)| !f.load(Ordering::SeqCst))
            .map(|(n, _)| n.clone())
            .collect()
    }

    async fn publish_inner(
        &self,
        channel: &str,
        data: &Value,
        idempotency_key: Option<String>,
        identity: Option<&Identity>,
    ) -> Result<Position, ErrorBody> {
        let (descriptor, params) = self.resolve(channel)?;
        if let Some(identity) = identity {
            descriptor
                .authorize_publish(&params, identity)
                .map_err(|d| ErrorBody::new(ErrorCode::Forbidden, d.0))?;
        }
        descriptor.validate(data).map_err(|v| ErrorBody {
            code: ErrorCode::InvalidPayload,
            message: v.message,
            pointer: Some(v.pointer),
        })?;
        let raw = raw_json(data);
        let limit = self.config.limits.max_payload_bytes;
        if raw.get().len() > limit {
            return Err(ErrorBody::new(
                ErrorCode::PayloadTooLarge,
                format!("data is {} bytes; the limit is {limit}", raw.get().len()),
            ));
        }
        // `idempotency_key` arrives scoped to its source; the publisher's own key was checked
        // by the one parser (`herald_core::input`) before it was scoped.
        self.broker
            .publish(PublishRequest {
                channel: Arc::from(channel),
                data: raw,
                history: descriptor.history,
                idempotency_key,
            })
            .await
            .map_err(broker_error)
    }

    /// The clients present on a presence channel.
    pub async fn presence(
        &self,
        channel: &str,
        descriptor: &Descriptor,
    ) -> Result<Vec<ClientInfo>, ErrorBody> {
        if !descriptor.presence {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("presence is not enabled on {channel:?}"),
            ));
        }
        self.broker.presence(channel).await.map_err(broker_error)
    }

    /// Reads a channel's position and retained publications.
    pub async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, ErrorBody> {
        self.broker
            .history(channel, query)
            .await
            .map_err(broker_error)
    }
}

pub fn broker_error(e: BrokerError) -> ErrorBody {
    match e {
        BrokerError::Unavailable(m) => ErrorBody::new(ErrorCode::Unavailable, m),
        BrokerError::Internal(m) => ErrorBody::new(ErrorCode::Internal, m),
    }
}

/// A random alphanumeric string (ids, not secrets).
pub fn random_id(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}
