//! Protocol v1 over WebSocket: `GET /v1/ws`.
//!
//! Gate 1 runs on the HTTP request, before the upgrade: bad credentials get a 401 JSON body and
//! no WebSocket ever exists. After the upgrade one task owns the connection and `select!`s over
//! the socket, its outbox, its timers and the shutdown signal. Everything the task sends goes
//! through the outbox, so replies and publications leave in the order they were queued.
//!
//! Buffers are kept small on purpose: an idle connection costs a few KB (see
//! `docs/benchmarks.md`), because the read buffer is sized for client frames (small JSON), not
//! for the 128 KiB default.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use herald_core::broker::{HistoryQuery, HistoryResult};
use herald_core::identity::AuthError;
use herald_core::protocol::{
    ClientFrame, ClientInfo, ErrorBody, ErrorCode, FrameError, PublicationView, ReplyBody,
    ServerFrame, Since, channel_position, close, error_frame, parse_client_frame, reply_err,
    reply_ok,
};
use herald_core::{Identity, Position, Publication};
use rand::Rng;
use serde::Deserialize;
use tokio::time::{Instant, sleep_until};

use crate::api::ApiError;
use crate::gateway::{Gateway, broker_error};
use crate::hub::ConnHandle;
use crate::metrics::Gate;
use crate::outbox::{Closed, Frame, Outbox};

/// Read buffer per connection. Client frames are small JSON; larger frames still work (the
/// buffer grows up to `max_frame_bytes`), this only sets what an idle connection holds.
const READ_BUFFER: usize = 1024;

/// Frames are buffered up to this before a write syscall, so a burst goes out in few writes.
const WRITE_BUFFER: usize = 8 * 1024;

/// A write that makes no progress for this long means the peer is gone or stuck: drop it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
pub struct ConnectParams {
    token: Option<String>,
}

/// Where the credentials came from; cookie-borne ones need an origin check (CSRF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Header,
    Query,
    Cookie,
    None,
}

fn credentials<'a>(
    headers: &'a HeaderMap,
    query: &'a ConnectParams,
    cookie: Option<&str>,
) -> (Option<&'a str>, Via) {
    if let Some(t) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::http::bearer_token)
    {
        return (Some(t), Via::Header);
    }
    if let Some(t) = query.token.as_deref().filter(|t| !t.is_empty()) {
        return (Some(t), Via::Query);
    }
    if let Some(name) = cookie {
        for value in headers.get_all(header::COOKIE).iter() {
            let Ok(value) = value.to_str() else { continue };
            for pair in value.split(';') {
                if let Some((k, v)) = pair.trim().split_once('=')
                    && k == name
                    && !v.is_empty()
                {
                    return (Some(v), Via::Cookie);
                }
            }
        }
    }
    (None, Via::None)
}

/// Browser safety: an explicit allow-list applies to every upgrade that names an origin;
/// without one, only cookie-authenticated upgrades are checked (same origin required).
fn origin_allowed(gw: &Gateway, headers: &HeaderMap, via: Via) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let allowed = &gw.config.server.allowed_origins;
    match origin {
        Some(o) if !allowed.is_empty() => allowed
            .iter()
            .any(|a| a == "*" || crate::http::origin_matches(a, o)),
        Some(o) if via == Via::Cookie => {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
            host.is_some_and(|h| crate::http::same_origin(o, h))
        }
        _ => true,
    }
}

/// Gate 1, then the upgrade.
pub async fn upgrade(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(params): Query<ConnectParams>,
    ws: WebSocketUpgrade,
) -> Response {
    if gw.is_draining() {
        return ApiError::new(ErrorCode::Unavailable, "server is shutting down").into_response();
    }
    let (token, via) = credentials(&headers, &params, gw.config.auth.cookie.as_deref());
    if !origin_allowed(&gw, &headers, via) {
        gw.metrics.reject(Gate::connect, ErrorCode::Forbidden);
        return ApiError::new(ErrorCode::Forbidden, "origin not allowed").into_response();
    }
    let identity = match gw.auth.authenticate(token) {
        Ok(id) => id,
        Err(e) => {
            gw.metrics.reject(Gate::connect, ErrorCode::Unauthorized);
            tracing::debug!(reason = %e, "connection refused");
            return ApiError::new(ErrorCode::Unauthorized, e.to_string()).into_response();
        }
    };
    let conn = Arc::new(ConnHandle::new(
        gw.next_client_id(),
        identity.user.clone(),
        Outbox::new(gw.config.limits.outbound_queue_bytes),
    ));
    if gw
        .hub
        .register(&conn, gw.config.limits.max_connections_per_user)
        .is_err()
    {
        gw.metrics
            .reject(Gate::connect, ErrorCode::TooManyConnections);
        return ApiError::new(
            ErrorCode::TooManyConnections,
            format!(
                "at most {} connections per user",
                gw.config.limits.max_connections_per_user
            ),
        )
        .into_response();
    }
    // Unregisters on drop, including when the upgrade never completes.
    let registration = Registration {
        gw: gw.clone(),
        conn: conn.clone(),
    };
    let max_frame = gw.config.limits.max_frame_bytes;
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| {
            let tracker = registration.gw.connections.clone();
            tracker.track_future(async move {
                let mut c = Connection::new(registration, identity, socket);
                c.run().await;
                c.cleanup().await;
            })
        })
}

struct Registration {
    gw: Arc<Gateway>,
    conn: Arc<ConnHandle>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.gw.hub.unregister(&self.conn);
    }
}

/// A token bucket: `rate` per second, bursts up to `2 × rate`.
struct Bucket {
    tokens: f64,
    rate: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        Self {
            tokens: f64::from(rate) * 2.0,
            rate: f64::from(rate),
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate * 2.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Connection {
    reg: Registration,
    identity: Identity,
    socket: WebSocket,
    /// Channel → whether it is a presence channel (to leave on unsubscribe).
    subscriptions: HashMap<Arc<str>, bool>,
    frames: Bucket,
    publishes: Bucket,
    last_seen: Instant,
    expires: Option<Instant>,
}

/// What the main loop does after handling an event.
enum Flow {
    Continue,
    /// Say goodbye with this reason, then close.
    Close(Closed),
    /// The peer is gone; nothing can be sent.
    Gone,
}

fn closed(code: u16, reason: &'static str, reconnect: bool) -> Closed {
    Closed {
        code,
        reason,
        reconnect,
    }
}

fn deadline_of(expires_at: Option<u64>) -> Option<Instant> {
    let exp = expires_at?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Instant::now() + Duration::from_secs(exp.saturating_sub(now)))
}

impl Connection {
    fn new(reg: Registration, identity: Identity, socket: WebSocket) -> Self {
        let limits = &reg.gw.config.limits;
        Self {
            frames: Bucket::new(limits.frame_rate),
            publishes: Bucket::new(limits.publish_rate),
            expires: deadline_of(identity.expires_at),
            reg,
            identity,
            socket,
            subscriptions: HashMap::new(),
            last_seen: Instant::now(),
        }
    }

    fn gw(&self) -> &Arc<Gateway> {
        &self.reg.gw
    }

    fn conn(&self) -> &Arc<ConnHandle> {
        &self.reg.conn
    }

    fn send(&self, text: String) {
        self.conn().outbox.push(Frame::from(text));
    }

    async fn run(&mut self) {
        self.gw().metrics.connections.inc();
        if let Err(e) = self.welcome().await {
            tracing::warn!(client = %self.conn().id, error = %e.message, "auto-subscribe failed");
            self.goodbye(closed(1013, "temporarily unavailable", true))
                .await;
            return;
        }
        let server = &self.gw().config.server;
        let ping_interval = server.ping_interval;
        let silence_limit = ping_interval + server.pong_timeout;
        let spread = server.shutdown_spread;
        let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.gw().shutdown.clone();
        let mut draining_at: Option<Instant> = None;
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        let mut batch: Vec<Frame> = Vec::new();
        let conn = self.conn().clone();

        let flow = loop {
            let expiry = sleep_until(self.expires.unwrap_or(far));
            let drain = sleep_until(draining_at.unwrap_or(far));
            let flow = tokio::select! {
                biased;
                closed = conn.outbox.next_batch(&mut batch) => {
                    if !batch.is_empty() && !self.write_batch(&mut batch).await {
                        break Flow::Gone;
                    }
                    self.forget_evicted().await;
                    match closed {
                        Some(c) => Flow::Close(c),
                        None => Flow::Continue,
                    }
                }
                msg = self.socket.recv() => self.on_message(msg).await,
                _ = ping.tick() => {
                    if self.last_seen.elapsed() > silence_limit {
                        Flow::Close(closed(close::PING_TIMEOUT, "no pong from client", true))
                    } else {
                        self.send(ServerFrame::Ping.encode());
                        Flow::Continue
                    }
                }
                _ = expiry, if self.expires.is_some() => {
                    Flow::Close(closed(close::TOKEN_EXPIRED, "token expired", true))
                }
                _ = shutdown.cancelled(), if draining_at.is_none() => {
                    // Spread reconnects over the window so the other nodes are not stampeded.
                    let delay = rand::rng().random_range(0.0..=1.0) * spread.as_secs_f64();
                    draining_at = Some(Instant::now() + Duration::from_secs_f64(delay));
                    Flow::Continue
                }
                _ = drain, if draining_at.is_some() => {
                    conn.outbox.close(closed(close::GOING_AWAY, "server shutting down", true));
                    Flow::Continue
                }
            };
            if !matches!(flow, Flow::Continue) {
                break flow;
            }
        };
        if let Flow::Close(c) = flow {
            self.goodbye(c).await;
        }
    }

    /// Writes the frames (buffered, one flush). False when the peer is gone or stuck.
    async fn write_batch(&mut self, batch: &mut Vec<Frame>) -> bool {
        let socket = &mut self.socket;
        let write = async {
            for frame in batch.drain(..) {
                socket.feed(Message::Text(frame)).await?;
            }
            socket.flush().await
        };
        matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())))
    }

    /// `disconnect`, then the close frame; best effort, bounded in time.
    async fn goodbye(&mut self, c: Closed) {
        let text = ServerFrame::Disconnect {
            code: c.code,
            reason: c.reason,
            reconnect: c.reconnect,
        }
        .encode();
        let socket = &mut self.socket;
        let bye = async {
            socket.feed(Message::Text(Utf8Bytes::from(text))).await?;
            socket
                .send(Message::Close(Some(CloseFrame {
                    code: c.code,
                    reason: Utf8Bytes::from(c.reason),
                })))
                .await
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), bye).await;
    }

    async fn on_message(&mut self, msg: Option<Result<Message, axum::Error>>) -> Flow {
        let msg = match msg {
            None => return Flow::Gone,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                return if is_capacity_error(&e) {
                    self.gw()
                        .metrics
                        .reject(Gate::frame, ErrorCode::PayloadTooLarge);
                    Flow::Close(closed(close::FRAME_TOO_LARGE, "frame too large", false))
                } else {
                    Flow::Gone
                };
            }
        };
        self.last_seen = Instant::now();
        match msg {
            Message::Text(text) => {
                if !self.frames.take() {
                    self.gw()
                        .metrics
                        .reject(Gate::frame, ErrorCode::RateLimited);
                    return Flow::Close(closed(close::RATE_LIMITED, "too many frames", true));
                }
                self.on_text(&text).await
            }
            Message::Binary(_) => {
                self.gw().metrics.reject(Gate::frame, ErrorCode::BadRequest);
                Flow::Close(closed(
                    close::BAD_FRAME,
                    "binary frames are not supported",
                    false,
                ))
            }
            Message::Ping(_) | Message::Pong(_) => Flow::Continue,
            Message::Close(_) => Flow::Gone,
        }
    }

    async fn on_text(&mut self, text: &str) -> Flow {
        let frame = match parse_client_frame(text) {
            Ok(f) => f,
            Err(FrameError::Unparseable(_)) => {
                self.gw().metrics.reject(Gate::frame, ErrorCode::BadRequest);
                return Flow::Close(closed(
                    close::BAD_FRAME,
                    "frame is not a JSON object",
                    false,
                ));
            }
            Err(FrameError::BadRequest { id, message }) => {
                self.gw().metrics.reject(Gate::frame, ErrorCode::BadRequest);
                self.fail(id, ErrorBody::new(ErrorCode::BadRequest, message));
                return Flow::Continue;
            }
        };
        match frame {
            ClientFrame::Subscribe { id, channel, since } => {
                let r = self.subscribe(id, channel, since).await;
                if let Err(e) = r {
                    self.gw().metrics.reject(Gate::subscribe, e.code);
                    self.fail(id, e);
                }
            }
            ClientFrame::Unsubscribe { id, channel } => {
                let r = self.unsubscribe(&channel).await;
                self.answer(id, r.map(|()| reply_ok_empty));
            }
            ClientFrame::Publish { id, channel, data } => {
                let r = self.publish(&channel, &data).await;
                self.answer(id, r.map(|pos| move |id| published(id, &pos)));
            }
            ClientFrame::Presence { id, channel } => {
                let r = self.presence(&channel).await;
                self.answer(
                    id,
                    r.map(|clients| {
                        move |id| {
                            reply_ok(
                                id,
                                ReplyBody::Presence {
                                    channel: &channel,
                                    clients: &clients,
                                },
                            )
                        }
                    }),
                );
            }
            ClientFrame::Refresh { id, token } => {
                let r = self.refresh(&token);
                self.answer(id, r.map(|()| reply_ok_empty));
            }
            ClientFrame::Ping { id } => match id {
                Some(id) => self.send(reply_ok(id, ReplyBody::Empty {})),
                None => self.send(ServerFrame::Pong.encode()),
            },
            ClientFrame::Pong { .. } => {}
        }
        Flow::Continue
    }

    /// Replies when the frame had an id; errors on id-less frames become `error` frames.
    fn answer<F: FnOnce(u64) -> String>(&self, id: Option<u64>, result: Result<F, ErrorBody>) {
        match (id, result) {
            (Some(id), Ok(make)) => self.send(make(id)),
            (Some(id), Err(e)) => self.send(reply_err(id, &e)),
            (None, Ok(_)) => {}
            (None, Err(e)) => self.send(error_frame(&e)),
        }
    }

    fn fail(&self, id: Option<u64>, e: ErrorBody) {
        self.answer(id, Err::<fn(u64) -> String, _>(e));
    }

    /// Subscribes to the auto-subscribed channels and queues `welcome` before anything else.
    async fn welcome(&mut self) -> Result<(), ErrorBody> {
        let gw = self.gw().clone();
        let mut positions: Vec<(Arc<str>, Position)> = Vec::new();
        if let Some(user) = self.identity.user.clone() {
            for d in gw
                .config
                .registry
                .descriptors()
                .iter()
                .filter(|d| d.auto_subscribe)
            {
                let Some(name) = d.auto_channel_for(&user) else {
                    tracing::debug!(channel = %d.pattern, "user id is not a valid segment; no auto-subscribe");
                    continue;
                };
                let channel: Arc<str> = Arc::from(name);
                self.attach(&channel, d.presence).await?;
                let r = gw.history(&channel, HistoryQuery::default()).await?;
                positions.push((channel, r.position));
            }
        }
        let welcome = ServerFrame::Welcome {
            client: &self.conn().id,
            user: self.identity.user.as_deref(),
            ping_interval_ms: gw.config.server.ping_interval.as_millis() as u64,
            subscriptions: positions
                .iter()
                .map(|(c, p)| channel_position(c, p))
                .collect(),
        }
        .encode();
        self.send(welcome);
        for (channel, pos) in &positions {
            gw.hub.activate(channel, self.conn(), pos, None);
            self.join(channel).await;
        }
        Ok(())
    }

    /// Adds a pending hub subscription (and node interest at the broker when first).
    async fn attach(&mut self, channel: &Arc<str>, presence: bool) -> Result<(), ErrorBody> {
        let gw = self.gw().clone();
        let first = gw.hub.add(channel, self.conn());
        self.subscriptions.insert(channel.clone(), presence);
        if first && let Err(e) = gw.broker.subscribe(channel).await {
            self.detach(channel).await;
            return Err(broker_error(e));
        }
        Ok(())
    }

    async fn detach(&mut self, channel: &str) {
        let gw = self.gw().clone();
        if self.subscriptions.remove(channel) == Some(true)
            && let Err(e) = gw.broker.presence_remove(channel, self.client_info()).await
        {
            tracing::warn!(channel, error = %e, "presence remove failed");
        }
        if self.gw().hub.remove(channel, self.conn())
            && let Err(e) = self.gw().broker.unsubscribe(channel).await
        {
            tracing::warn!(channel, error = %e, "broker unsubscribe failed");
        }
    }

    /// Drops the subscriptions the hub took away (the client was told to resubscribe).
    async fn forget_evicted(&mut self) {
        for channel in self.conn().take_evicted() {
            if self.subscriptions.contains_key(&channel) {
                self.detach(&channel).await;
            }
        }
    }

    async fn subscribe(
        &mut self,
        id: Option<u64>,
        channel: String,
        since: Option<Since>,
    ) -> Result<(), ErrorBody> {
        self.forget_evicted().await;
        let gw = self.gw().clone();
        let (descriptor, params) = gw.resolve(&channel)?;
        descriptor
            .authorize_subscribe(&params, &self.identity)
            .map_err(|d| ErrorBody::new(ErrorCode::Forbidden, d.0))?;
        if self.subscriptions.contains_key(channel.as_str()) {
            return Err(ErrorBody::new(
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to {channel:?}"),
            ));
        }
        let max = gw.config.limits.max_subscriptions;
        if self.subscriptions.len() >= max {
            return Err(ErrorBody::new(
                ErrorCode::TooManySubscriptions,
                format!("at most {max} subscriptions per connection"),
            ));
        }
        let presence = descriptor.presence;
        let channel: Arc<str> = Arc::from(channel);
        self.attach(&channel, presence).await?;
        let max_recovery = gw.config.limits.max_recovery;
        let query = match &since {
            Some(s) => HistoryQuery {
                after: Some(s.offset),
                limit: max_recovery + 1,
            },
            None => HistoryQuery::default(),
        };
        let result = match gw.history(&channel, query).await {
            Ok(r) => r,
            Err(e) => {
                self.detach(&channel).await;
                return Err(e);
            }
        };
        let (recovered, replay) = recover(since.as_ref(), &result, max_recovery);
        let reply = match id {
            Some(id) => Some(Frame::from(reply_ok(
                id,
                ReplyBody::Subscribed {
                    channel: &channel,
                    offset: result.position.offset,
                    epoch: &result.position.epoch,
                    recovered,
                    publications: replay.iter().map(PublicationView::from).collect(),
                },
            ))),
            None => None,
        };
        gw.hub
            .activate(&channel, self.conn(), &result.position, reply);
        self.join(&channel).await;
        Ok(())
    }

    fn client_info(&self) -> ClientInfo {
        ClientInfo {
            client: self.conn().id.to_string(),
            user: self.identity.user.as_deref().map(str::to_owned),
        }
    }

    /// Announces this connection on a presence channel it just subscribed to.
    async fn join(&mut self, channel: &str) {
        if self.subscriptions.get(channel) != Some(&true) {
            return;
        }
        if let Err(e) = self
            .gw()
            .broker
            .presence_add(channel, self.client_info())
            .await
        {
            tracing::warn!(channel, error = %e, "presence add failed");
        }
    }

    async fn unsubscribe(&mut self, channel: &str) -> Result<(), ErrorBody> {
        self.forget_evicted().await;
        if !self.subscriptions.contains_key(channel) {
            return Err(ErrorBody::new(
                ErrorCode::NotSubscribed,
                format!("not subscribed to {channel:?}"),
            ));
        }
        self.detach(channel).await;
        Ok(())
    }

    async fn publish(
        &mut self,
        channel: &str,
        data: &serde_json::Value,
    ) -> Result<Position, ErrorBody> {
        if !self.publishes.take() {
            self.gw()
                .metrics
                .reject(Gate::publish, ErrorCode::RateLimited);
            return Err(ErrorBody::new(
                ErrorCode::RateLimited,
                format!(
                    "at most {} publications per second",
                    self.gw().config.limits.publish_rate
                ),
            ));
        }
        let gw = self.gw().clone();
        gw.publish(
            crate::metrics::Source::client,
            channel,
            data,
            None,
            Some(&self.identity),
        )
        .await
    }

    /// Gate 2 applies: whoever may subscribe may see who is there.
    async fn presence(&mut self, channel: &str) -> Result<Vec<ClientInfo>, ErrorBody> {
        let gw = self.gw().clone();
        let (descriptor, params) = gw.resolve(channel)?;
        descriptor
            .authorize_subscribe(&params, &self.identity)
            .map_err(|d| ErrorBody::new(ErrorCode::Forbidden, d.0))?;
        gw.presence(channel, descriptor).await
    }

    /// Renews the identity's lifetime with a new token for the same user.
    fn refresh(&mut self, token: &str) -> Result<(), ErrorBody> {
        let fresh = self
            .gw()
            .auth
            .verify(token)
            .map_err(|e: AuthError| ErrorBody::new(ErrorCode::Unauthorized, e.to_string()))?;
        if fresh.user != self.identity.user {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                "a refresh token must be for the same user",
            ));
        }
        self.expires = deadline_of(fresh.expires_at);
        self.identity = fresh;
        Ok(())
    }

    async fn cleanup(&mut self) {
        let channels: Vec<Arc<str>> = self.subscriptions.keys().cloned().collect();
        for channel in channels {
            self.detach(&channel).await;
        }
        self.gw().metrics.connections.dec();
    }
}

fn reply_ok_empty(id: u64) -> String {
    reply_ok(id, ReplyBody::Empty {})
}

fn published(id: u64, pos: &Position) -> String {
    reply_ok(
        id,
        ReplyBody::Published {
            offset: pos.offset,
            epoch: &pos.epoch,
        },
    )
}

/// True when tungstenite refused a frame or message over `max_frame_bytes`.
fn is_capacity_error(e: &axum::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())
        .is_some_and(|t| matches!(t, tungstenite::Error::Capacity(_)))
}

/// Decides whether a subscribe with `since` is a recovery, and what to replay.
///
/// Recovered means: same epoch, the client is not ahead of the stream, and every publication
/// after its offset is still retained (and there are at most `max` of them).
pub fn recover<'r>(
    since: Option<&Since>,
    result: &'r HistoryResult,
    max: usize,
) -> (bool, &'r [Publication]) {
    let Some(since) = since else {
        return (false, &[]);
    };
    let pos = &result.position;
    if since.epoch != *pos.epoch || since.offset > pos.offset {
        return (false, &[]);
    }
    let missing = pos.offset - since.offset;
    if missing == 0 {
        return (true, &[]);
    }
    let pubs = &result.publications;
    let complete = missing as usize <= max
        && pubs.len() as u64 == missing
        && pubs.first().is_some_and(|p| p.offset == since.offset + 1);
    if complete { (true, pubs) } else { (false, &[]) }
}
