//! [`Node`]: the state one gateway process shares between its transports, and the operations
//! every transport and source goes through (the same gates whatever the door).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use async_trait::async_trait;
use herald_core::broker::{HistoryQuery, HistoryResult, random_id};
use herald_core::input::accept_raw;
use herald_core::name::Params;
use herald_core::protocol::{ClientInfo, ErrorBody, ErrorCode, Goodbye};
use herald_core::registry::ResolveError;
use herald_core::source::{Publisher, SourceKind, SourceStats};
use herald_core::{
    Authenticator, Broker, BrokerError, Config, Descriptor, Identity, Position, PublishRequest,
};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Sessions;
use crate::hub::Hub;
use crate::lock;
use crate::metrics::{Gate, Metrics, Source};

/// A client publication: the identity gate 3 checks, and the `from` the gateway vouches for
/// (built with [`herald_core::protocol::client_from`]), delivered beside the payload.
#[derive(Debug, Clone, Copy)]
pub struct ClientPublish<'a> {
    /// The authenticated identity of the publishing connection.
    pub identity: &'a Identity,
    /// `{"user":…,"client":…}`.
    pub from: &'a Arc<RawValue>,
    /// The connection id (the publish proxy's `client`).
    pub client: &'a str,
    /// The transport's name (the publish proxy's `transport`).
    pub transport: &'a str,
}

/// One publication of [`Node::publish_batch_as`]: what [`Node::publish_as`] takes for the
/// server (no client).
#[derive(Debug, Clone)]
pub struct BatchItem<'a> {
    /// The channel's name (resolved, and refused with `unknown_channel`, per item).
    pub channel: &'a str,
    /// The payload, held to the channel's schema and the size limit.
    pub data: &'a RawValue,
    /// Already scoped to its source (`herald_core::source::scoped_key`).
    pub idempotency_key: Option<String>,
}

/// One gateway node: everything a request handler, a session or a source needs.
pub struct Node {
    /// The validated configuration (registry and authenticator included).
    pub config: Config,
    /// This node's subscription table and fan-out.
    pub hub: Arc<Hub>,
    /// Offsets, history, presence and the fan-out between nodes.
    pub broker: Arc<dyn Broker>,
    /// What `/metrics` exports.
    pub metrics: Arc<Metrics>,
    /// Live sessions by user (kicks, the per-user limit) and by session id (request-routed
    /// transports).
    pub sessions: Arc<Sessions>,
    /// Cancelled when shutdown begins: sessions then say goodbye, spread over
    /// `server.shutdown_spread`.
    pub shutdown: CancellationToken,
    /// Every session task and source task, so shutdown can wait for them to drain.
    pub tasks: TaskTracker,
    /// The application's backend (proxies), set once by the server that builds the node.
    pub backend: OnceLock<Arc<dyn crate::proxy::Backend>>,
    /// The queue between the memory broker and the hub, set by the server that builds the
    /// node when it uses one: publishers wait at its high-water mark
    /// ([`crate::fanout::FanoutQueue::ready`]) instead of growing it without bound.
    pub fanout: OnceLock<Arc<crate::fanout::FanoutQueue>>,
    /// Subscribe proxy decisions, per (proxy, user, channel), for each proxy's `cache_ttl`.
    pub decisions: crate::proxy::DecisionCache,
    /// The `[[webhook]]` queues ([`Node::emit`]).
    pub webhooks: crate::webhook::Webhooks,
    /// Redeems the admin dashboard's connection tickets; set by the server when `[admin]` is
    /// enabled (unset: a ticket is just a wrong token).
    pub admin_tickets: OnceLock<Arc<dyn crate::admin::AdminTickets>>,
    /// When the node was built (its uptime on the dashboard).
    pub started: SystemTime,
    draining: AtomicBool,
    next_conn: AtomicU64,
    /// A random name for this process; client ids are `<node>-<n>`, unique across nodes.
    id: String,
    readiness: Mutex<Vec<(String, Arc<AtomicBool>)>>,
}

#[async_trait]
impl Publisher for Node {
    async fn publish(
        &self,
        source: SourceKind,
        channel: &str,
        data: &RawValue,
        idempotency_key: Option<String>,
    ) -> Result<Position, ErrorBody> {
        let source = match source {
            SourceKind::Outbox => Source::outbox,
            SourceKind::Notify => Source::notify,
            SourceKind::Nats => Source::nats,
            SourceKind::RedisStream => Source::redis_stream,
            SourceKind::Amqp => Source::amqp,
        };
        self.publish_as(source, channel, data, idempotency_key, None)
            .await
    }

    fn rejected(&self, _source: SourceKind, code: ErrorCode) {
        self.metrics.reject(Gate::publish, code);
    }

    fn readiness(&self, name: &str) -> Arc<AtomicBool> {
        self.readiness_flag(name)
    }

    fn source_stats(&self, name: &str) -> Arc<SourceStats> {
        self.metrics.source_stats(name)
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node over `broker`, whose sink must be `hub`.
    pub fn new(
        config: Config,
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let sessions = hub.sessions.clone();
        let webhooks = crate::webhook::Webhooks::new(&config.webhooks);
        Self {
            config,
            hub,
            broker,
            metrics,
            sessions,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            backend: OnceLock::new(),
            fanout: OnceLock::new(),
            decisions: Default::default(),
            webhooks,
            admin_tickets: OnceLock::new(),
            started: SystemTime::now(),
            draining: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            id: random_id(8).to_ascii_lowercase(),
            readiness: Mutex::new(Vec::new()),
        }
    }

    /// Gate 1's verifier.
    pub fn auth(&self) -> &Authenticator {
        &self.config.authenticator
    }

    /// This process's random name (the prefix of its client ids and webhook event ids).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A connection id unique across nodes and restarts.
    pub fn next_client_id(&self) -> Arc<str> {
        let n = self.next_conn.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{}-{n}", self.id))
    }

    /// Marks the node as shutting down: `/readyz` fails and new sessions are refused.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
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

    /// Gate 2: the channel exists and `identity` may subscribe to it (and so see its presence).
    /// Errors: `unknown_channel`, `forbidden`.
    pub fn authorize_subscribe(
        &self,
        channel: &str,
        identity: &Identity,
    ) -> Result<&Descriptor, ErrorBody> {
        let (descriptor, params) = self.resolve(channel)?;
        descriptor
            .authorize_subscribe(&params, identity)
            .map_err(|d| ErrorBody::new(ErrorCode::Forbidden, d.0))?;
        Ok(descriptor)
    }

    /// Gate 2 for `scope = "token"`: `token` is a JWT signed with the subscription key (or the
    /// connection keys), whose `channel` claim is exactly `channel`, whose `sub` is the
    /// connection's user, and which carries `exp`. Returns that `exp`, when the subscription
    /// ends unless renewed. Errors: `forbidden` (no token, or a valid token for another
    /// channel or user), `unauthorized` (the token does not verify, or has expired).
    pub fn verify_subscription_token(
        &self,
        channel: &str,
        identity: &Identity,
        token: Option<&str>,
    ) -> Result<SystemTime, ErrorBody> {
        let token = token.ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::Forbidden,
                format!("{channel:?} needs a subscription token (`token` in subscribe)"),
            )
        })?;
        let auth = self
            .config
            .subscription_authenticator
            .as_deref()
            .unwrap_or(&self.config.authenticator);
        let verified = auth.verify_claims(token).map_err(|e| {
            ErrorBody::new(ErrorCode::Unauthorized, format!("subscription token: {e}"))
        })?;
        // A grant without an end could never be taken back: `exp` is required.
        let exp = verified.expires_at.ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::Unauthorized,
                "subscription token: exp is required",
            )
        })?;
        match verified.claims.get("channel") {
            Some(serde_json::Value::String(c)) if c == channel => {}
            _ => {
                return Err(ErrorBody::new(
                    ErrorCode::Forbidden,
                    format!("the subscription token is not for {channel:?}"),
                ));
            }
        }
        match (verified.claims.get("sub"), identity.user.as_deref()) {
            (Some(serde_json::Value::String(sub)), Some(me)) if sub == me => Ok(exp),
            _ => Err(ErrorBody::new(
                ErrorCode::Forbidden,
                "the subscription token is for another user",
            )),
        }
    }

    /// Gate 3 and the publish itself, for every source. `client` is `None` for the server
    /// API and the event sources (trusted: only the schema applies), `Some` for clients (the
    /// descriptor must allow it). Counts the publication or the refusal under `source`.
    pub async fn publish_as(
        &self,
        source: Source,
        channel: &str,
        data: &RawValue,
        idempotency_key: Option<String>,
        client: Option<ClientPublish<'_>>,
    ) -> Result<Position, ErrorBody> {
        let result = self
            .publish_inner(channel, data, idempotency_key, client)
            .await;
        match &result {
            Ok(_) => self.metrics.published(source),
            Err(e) => self.metrics.reject(Gate::publish, e.code),
        }
        result
    }

    /// The server API's batch: every item through the gates of [`Node::publish_as`] with no
    /// client (resolve, schema, size), then the admitted ones to [`Broker::publish_batch`] in
    /// one call (one round trip on Redis), in batch order, so items on one channel get their
    /// offsets in that order. Answers one result per item, in order: a gate's refusal or the
    /// broker's error for that item alone, as [`Node::publish_as`] would have answered it.
    /// Each item is counted under `source` as [`Node::publish_as`] counts it. Client
    /// publications are not batched (a publish proxy answers each one by itself).
    pub async fn publish_batch_as(
        &self,
        source: Source,
        items: Vec<BatchItem<'_>>,
    ) -> Vec<Result<Position, ErrorBody>> {
        let mut admitted = Vec::with_capacity(items.len());
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            match self
                .admit_publication(item.channel, item.data, item.idempotency_key, None)
                .await
            {
                Ok(request) => {
                    admitted.push(request);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        self.fanout_ready().await;
        let mut published = self.broker.publish_batch(admitted).await.into_iter();
        results
            .into_iter()
            .map(|refused| {
                let result = refused.unwrap_or_else(|| match published.next() {
                    Some(r) => r.map_err(broker_error),
                    // A broker that answered fewer results than requests broke the trait's
                    // contract; the items it did not answer are not known to be published.
                    None => Err(ErrorBody::new(
                        ErrorCode::Internal,
                        "the broker gave no result for this publication",
                    )),
                });
                match &result {
                    Ok(_) => self.metrics.published(source),
                    Err(e) => self.metrics.reject(Gate::publish, e.code),
                }
                result
            })
            .collect()
    }

    /// A readiness flag, initially down; `/readyz` is 503 while any flag is false.
    pub fn readiness_flag(&self, name: &str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        lock(&self.readiness).push((name.to_owned(), flag.clone()));
        flag
    }

    /// Every readiness flag: (name, up).
    pub fn readiness(&self) -> Vec<(String, bool)> {
        lock(&self.readiness)
            .iter()
            .map(|(n, f)| (n.clone(), crate::admin::flag_up(f)))
            .collect()
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
        data: &RawValue,
        idempotency_key: Option<String>,
        client: Option<ClientPublish<'_>>,
    ) -> Result<Position, ErrorBody> {
        let request = self
            .admit_publication(channel, data, idempotency_key, client)
            .await?;
        self.fanout_ready().await;
        self.broker.publish(request).await.map_err(broker_error)
    }

    /// A publish is answered before its fan-out: while the fan-out queue is at its high-water
    /// mark, wait here, so a publisher faster than the fan-out is slowed down (as it was when
    /// the fan-out ran inside the publish) rather than queueing without bound. A batch waits
    /// once, so the queue may pass the mark by one batch (at most 1,000 items).
    async fn fanout_ready(&self) {
        if let Some(fanout) = self.fanout.get() {
            fanout.ready().await;
        }
    }

    /// Gate 3 (for clients), the schema, the publish proxy (for clients on a proxied
    /// channel) and the size limit: the request to give the broker, or why there is none.
    async fn admit_publication(
        &self,
        channel: &str,
        data: &RawValue,
        idempotency_key: Option<String>,
        client: Option<ClientPublish<'_>>,
    ) -> Result<PublishRequest, ErrorBody> {
        let (descriptor, params) = self.resolve(channel)?;
        let via_backend = match (&client, &descriptor.publish) {
            (Some(_), Some(herald_core::Scope::Proxy(name))) => Some(name.as_str()),
            _ => None,
        };
        if let Some(client) = &client
            && via_backend.is_none()
        {
            descriptor
                .authorize_publish(&params, client.identity)
                .map_err(|d| ErrorBody::new(ErrorCode::Forbidden, d.0))?;
        }
        // Validated against the schema, delivered as the bytes the publisher sent (whitespace
        // aside): the gateway vouches for the payload, it does not rewrite it. No `Value` is
        // built when the schema only names types (`Descriptor::validate_json`).
        let validate = |data: &RawValue| {
            let raw = accept_raw(data)?;
            descriptor.validate_json(raw.get()).map_err(|v| ErrorBody {
                code: ErrorCode::InvalidPayload,
                message: v.message,
                pointer: Some(v.pointer),
            })?;
            Ok::<_, ErrorBody>(raw)
        };
        let mut raw = validate(data)?;
        // The publish proxy sees only what the schema allows, and what it sends back in its
        // place is held to the same schema (a backend bug must not reach subscribers).
        if let (Some(name), Some(client)) = (via_backend, &client) {
            let ask = crate::proxy::SubscribeAsk {
                identity: client.identity,
                channel,
                params: &params,
                client: client.client,
                transport: client.transport,
            };
            if let Some(replacement) = self.proxy_publish(name, ask, &raw).await? {
                raw = validate(&replacement).map_err(|e| ErrorBody {
                    message: format!("the publish proxy's replacement data: {}", e.message),
                    ..e
                })?;
            }
        }
        let limit = self.config.limits.max_payload_bytes;
        if raw.get().len() > limit {
            return Err(ErrorBody::new(
                ErrorCode::PayloadTooLarge,
                format!("data is {} bytes; the limit is {limit}", raw.get().len()),
            ));
        }
        // `idempotency_key` arrives scoped to its source; the publisher's own key was checked
        // by the one parser (`herald_core::input`) before it was scoped.
        Ok(PublishRequest {
            channel: Arc::from(channel),
            data: raw,
            history: descriptor.history,
            idempotency_key,
            from: client.map(|c| c.from.clone()),
        })
    }

    /// The clients present on a presence channel. Errors: `bad_request` when the channel has
    /// no presence, `unavailable` when the broker is down.
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

    /// Closes every session of `user`, on every node, with 4403. Returns how many sessions
    /// the user had open cluster-wide when the kick was made (the broker's registry; see
    /// [`Broker::kick`]). This node's sessions are also closed directly, so they go even when
    /// the broker is down; the error then says that only this node was reached.
    ///
    /// With the memory broker the kick is queued behind the fan-out
    /// ([`crate::fanout::FanoutQueue`]): every publication answered before the kick reaches
    /// the user's sessions before their goodbye. Closing them here at once would overtake the
    /// publications still being fanned out (the publisher is answered before the fan-out).
    /// Redis and NATS deliver kicks apart from publications, so there the kick may overtake
    /// publications still in flight (docs/protocol.md, "Kicks").
    pub async fn kick(&self, user: &str) -> Result<usize, ErrorBody> {
        // The broker counts before anything closes here: a session closed first would
        // unregister itself and be missing from the count.
        let counted = self.broker.kick(user).await;
        if counted.is_ok() && self.fanout.get().is_some() {
            // The memory broker passed the kick to its sink, which is the fan-out queue: the
            // sessions close in order, after what was queued before.
            return counted.map_err(broker_error);
        }
        let here = self.sessions.close_user(user, Goodbye::Kicked);
        counted.map_err(|e| {
            ErrorBody::new(
                ErrorCode::Unavailable,
                format!(
                    "closed {} session(s) on this node, but other nodes could not be told: {e}",
                    here
                ),
            )
        })
    }
}

/// The error body a broker failure becomes: `unavailable` (503) or `internal` (500).
pub fn broker_error(e: BrokerError) -> ErrorBody {
    match e {
        BrokerError::Unavailable(m) => ErrorBody::new(ErrorCode::Unavailable, m),
        BrokerError::Internal(m) => ErrorBody::new(ErrorCode::Internal, m),
    }
}
