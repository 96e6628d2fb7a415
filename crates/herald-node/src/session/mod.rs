//! [`Session`]: one client, whatever the transport.
//!
//! A session owns the client's identity, its subscriptions, its rate buckets, its token
//! deadline and its outbox, and speaks protocol terms: [`Inbound`] commands in, [`Outgoing`]
//! frames out. [`Session::run`] is the one `select!` loop for every transport: the outbox (so
//! replies and publications leave in the order they were queued), the transport's next input,
//! the ping/silence timer, the token deadline and the shutdown drain.
//!
//! - `subscribe.rs`: the welcome and its subscriptions, subscribe/unsubscribe, presence
//!   join/leave, evictions (gate 2 is called from here).
//! - `commands.rs`: publish (the publish rate, then gate 3), presence, refresh, and the
//!   renewal of subscription tokens (`sub_refresh`).
//! - `recover.rs`: the recovery rule.
//! - `limits.rs`: token buckets and the expiry deadline.
//! - `transport.rs`: the seam.

mod commands;
pub(crate) mod limits;
pub mod recover;
mod subscribe;
pub mod transport;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use herald_core::Identity;
use herald_core::protocol::{
    ClientFrame, ErrorBody, ErrorCode, FrameKind, Goodbye, ReplyBody, ServerFrame, Since,
    error_frame, reply_err, reply_ok,
};
use rand::Rng;
use tokio::time::{Instant, sleep_until};

use crate::admission::{Admitted, Slot};
use crate::lock;
use crate::metrics::Gate;
use crate::node::Node;
use crate::outbox::Outbox;
use limits::{Bucket, deadline_of};
use transport::{Ending, Inbound, Outgoing, Transport};

/// The parts of a session other tasks touch: the hub (fan-out, evictions), kicks, routing.
#[derive(Debug)]
pub struct SessionHandle {
    /// The client id (`welcome.client`, presence entries), unique across nodes.
    pub id: Arc<str>,
    /// The authenticated user, `None` when anonymous.
    pub user: Option<Arc<str>>,
    /// The session's outbound queue.
    pub outbox: Outbox,
    /// The peer's address as the TCP connection shows it (a proxy's, behind one); `None`
    /// when the transport did not say. Shown on the admin dashboard.
    pub remote: Option<SocketAddr>,
    /// When gate 1 admitted the session.
    pub since: SystemTime,
    /// [`Transport::NAME`] once the session runs.
    pub transport: OnceLock<&'static str>,
    /// Channels the hub took away (continuity lost); the session forgets them.
    evicted: Mutex<Vec<Arc<str>>>,
}

impl SessionHandle {
    /// A handle with an empty outbox.
    pub fn new(id: Arc<str>, user: Option<Arc<str>>, outbox: Outbox) -> Self {
        Self {
            id,
            user,
            outbox,
            remote: None,
            since: SystemTime::now(),
            transport: OnceLock::new(),
            evicted: Mutex::new(Vec::new()),
        }
    }

    /// The same handle with the peer's address.
    pub fn with_remote(self, remote: Option<SocketAddr>) -> Self {
        Self { remote, ..self }
    }

    /// Records that the hub evicted this session from `channel`.
    pub(crate) fn evict(&self, channel: Arc<str>) {
        lock(&self.evicted).push(channel);
    }

    /// Takes the channels evicted since the last call.
    pub(crate) fn take_evicted(&self) -> Vec<Arc<str>> {
        std::mem::take(&mut *lock(&self.evicted))
    }
}

/// What a transport asks for beyond the auto-subscriptions, before the welcome (SSE takes
/// these from its URL; the WebSocket transport asks for nothing).
#[derive(Debug, Default)]
pub struct Opening {
    /// Channels to subscribe at connect (each through gate 2; a refused one is an `error`
    /// frame after the welcome, the others still work).
    pub channels: Vec<String>,
    /// Channels to resume from a position (a resume cursor): replayed like a v1 subscribe with
    /// `since`; the welcome says per channel whether it `recovered`.
    pub resume: Vec<(String, Since)>,
    /// The session id of a request-routed transport, announced in the welcome.
    pub session: Option<Arc<str>>,
    /// Recover every channel of `resume` or none (Socket.IO's `recovered` is one flag for the
    /// whole connection): when any cannot be recovered (a gap too long, history gone, gate 2
    /// now refusing), the session starts fresh like a new connection — the auto-subscriptions
    /// at their current position, nothing replayed, the welcome saying nothing `recovered`.
    pub all_or_nothing: bool,
}

/// A session's subscriptions: channel → its [`Presence`], in a vector.
///
/// Most connections hold one to three subscriptions (the auto-subscribed user channel and a
/// broadcast or two), and `limits.max_subscriptions` bounds the rest (128 by default): a
/// linear search over at most that many names costs less than hashing, and one entry is 24 B
/// in one allocation, where a `HashMap`'s smallest table is four buckets and their control
/// bytes (115 B per idle connection measured by heaptrack; docs/benchmarks.md, issue 16).
#[derive(Debug, Default)]
struct Subscriptions(Vec<(Arc<str>, Presence)>);

/// Whether this session is a member of a subscribed channel's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    /// Not a presence channel (or the grant gave no presence).
    No,
    /// A presence channel whose member is not announced yet: the subscription may still be
    /// undone (a failed history read, an all-or-nothing resume) without a `join` ever sent,
    /// and then no `leave` must be either.
    Unannounced,
    /// Announced (`join`): undoing the subscription removes the member and says `leave`.
    Joined,
}

impl Presence {
    /// The state of a new subscription whose grant does (`true`) or does not give presence.
    fn granted(presence: bool) -> Self {
        if presence {
            Presence::Unannounced
        } else {
            Presence::No
        }
    }
}

impl Subscriptions {
    fn position(&self, channel: &str) -> Option<usize> {
        self.0.iter().position(|(c, _)| **c == *channel)
    }

    /// Whether `channel` is subscribed to.
    fn contains(&self, channel: &str) -> bool {
        self.position(channel).is_some()
    }

    /// The stored name of `channel` and its presence state.
    fn get(&self, channel: &str) -> Option<(&Arc<str>, Presence)> {
        self.position(channel).map(|i| (&self.0[i].0, self.0[i].1))
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds (or updates) `channel`. The first subscription reserves room for one entry, not
    /// the four a first `push` reserves.
    fn insert(&mut self, channel: Arc<str>, presence: Presence) {
        match self.position(&channel) {
            Some(i) => self.0[i].1 = presence,
            None => {
                if self.0.is_empty() {
                    self.0.reserve_exact(1);
                }
                self.0.push((channel, presence));
            }
        }
    }

    /// Sets the presence state of a subscribed `channel` (nothing when not subscribed).
    fn set_presence(&mut self, channel: &str, presence: Presence) {
        if let Some(i) = self.position(channel) {
            self.0[i].1 = presence;
        }
    }

    /// Removes `channel`; its presence state, `None` when not subscribed.
    fn remove(&mut self, channel: &str) -> Option<Presence> {
        let i = self.position(channel)?;
        let (_, presence) = self.0.swap_remove(i);
        if self.0.is_empty() {
            // A session that once held many keeps no table for none.
            self.0 = Vec::new();
        }
        Some(presence)
    }

    fn channels(&self) -> impl Iterator<Item = &Arc<str>> {
        self.0.iter().map(|(c, _)| c)
    }
}

impl Opening {
    /// Whether the transport asks for nothing beyond the auto-subscriptions.
    fn is_empty(&self) -> bool {
        let Opening {
            channels,
            resume,
            session,
            all_or_nothing,
        } = self;
        channels.is_empty() && resume.is_empty() && session.is_none() && !all_or_nothing
    }
}

/// One client's session.
pub struct Session {
    slot: Slot,
    identity: Identity,
    /// Channel → whether this session is (or will be) a presence member (to leave on unsubscribe).
    subscriptions: Subscriptions,
    frames: Bucket,
    publishes: Bucket,
    last_seen: Instant,
    expires: Option<Instant>,
    /// Token-scoped subscriptions and when their subscription token runs out (`sub_refresh`
    /// moves it). A Vec: few connections hold any, and an empty Vec costs no allocation.
    sub_expiry: Vec<(Arc<str>, Instant)>,
    /// [`Transport::NAME`] of the transport running the session.
    transport: &'static str,
    /// The subscribe proxy's `info` per channel, shown with this client in presence.
    presence_info: Vec<(Arc<str>, Arc<serde_json::value::RawValue>)>,
}

/// What woke the session's loop.
enum Event {
    /// The outbox had frames (moved into the batch), or closed with this goodbye.
    Batch(Option<Goodbye>),
    /// The transport's next input.
    Inbound(Inbound),
    /// The timer reached the earliest deadline.
    Deadline,
    /// The node began to shut down.
    Shutdown,
}

/// What the loop does after an event.
enum Flow {
    Continue,
    End(Ending),
}

impl Session {
    /// A session for a request that passed gate 1.
    pub fn new(admitted: Admitted) -> Self {
        let Admitted { identity, slot } = admitted;
        let limits = &slot.node().config.limits;
        Self {
            frames: Bucket::new(limits.frame_rate),
            publishes: Bucket::new(limits.publish_rate),
            expires: deadline_of(identity.expires_at),
            slot,
            identity,
            subscriptions: Subscriptions::default(),
            last_seen: Instant::now(),
            sub_expiry: Vec::new(),
            transport: "other",
            presence_info: Vec::new(),
        }
    }

    fn node(&self) -> &Arc<Node> {
        self.slot.node()
    }

    fn handle(&self) -> &Arc<crate::SessionHandle> {
        self.slot.handle()
    }

    /// Queues one of this session's own frames.
    fn send(&self, kind: FrameKind, json: String) {
        self.handle().outbox.push(Outgoing::own(kind, json));
    }

    /// Runs the session over `transport` until it ends, then says goodbye the transport's way
    /// and releases every subscription, presence entry and slot.
    // Not an `async fn` on purpose: rustc keeps an async fn's arguments in the future *and*
    // moves them into locals of their own (rust-lang/rust#62958), so `self` and `transport`
    // were stored twice, 600 B more per idle connection. The `async move` block below uses
    // the captured values in place (S1 in docs/benchmarks.md: 6.48 → 5.88 KB per connection).
    #[allow(clippy::manual_async_fn)]
    pub fn run<T: Transport>(
        mut self,
        mut transport: T,
        opening: Opening,
    ) -> impl std::future::Future<Output = ()> {
        // Only the welcome reads the opening, but what the async block captures stays in the
        // future for the connection's whole life: 8 B (none of it allocated when the transport
        // asks for nothing, as `/v1/ws` does) instead of the 72 B of an `Opening`.
        let opening = (!opening.is_empty()).then(|| Box::new(opening));
        async move {
            self.transport = T::NAME;
            let _ = self.handle().transport.set(T::NAME);
            let node = self.node().clone();
            node.metrics.connections.inc();
            node.metrics.transport_connections(T::NAME).inc();
            node.emit("client_connect", || self.event("client_connect", None));
            // The welcome, the cleanup and the transport's close are boxed: a future is as
            // large as its largest state, and these (broker and gate-2 calls, the closing
            // handshake) would otherwise size the whole idle life of the connection.
            let ending = match Box::pin(self.welcome(opening.map_or_else(Opening::default, |o| *o)))
                .await
            {
                Ok(()) => self.serve(&mut transport).await,
                Err(e) => {
                    tracing::warn!(client = %self.handle().id, error = %e.message, "auto-subscribe failed");
                    Ending::Goodbye(Goodbye::Unavailable)
                }
            };
            // Release first: once the client sees the goodbye, its subscriptions, presence and
            // slot are gone (a reconnect is not refused for a slot still held by a closing socket).
            Box::pin(self.cleanup()).await;
            node.metrics.connections.dec();
            node.metrics.transport_connections(T::NAME).dec();
            node.emit("client_disconnect", || {
                self.event("client_disconnect", None)
            });
            let Session { slot, .. } = self;
            drop(slot);
            Box::pin(transport.close(ending)).await;
        }
    }

    /// The session's loop. One timer serves every deadline (the next ping, the token's
    /// expiry, the earliest subscription-token expiry, the shutdown drain): it is reset to the
    /// earliest, so an idle session holds one timer entry in tokio's wheel, not four.
    async fn serve<T: Transport>(&mut self, transport: &mut T) -> Ending {
        let server = &self.node().config.server;
        let ping_interval = server.ping_interval;
        let silence_limit = ping_interval + server.pong_timeout;
        let spread = server.shutdown_spread;
        let answers_pings = transport.answers_pings();
        let shutdown = self.node().shutdown.clone();
        // Shutdown: `draining` once the node's shutdown was seen; `drain_at` until the goodbye
        // is queued (then cleared, so the timer does not keep firing).
        let mut draining = false;
        let mut drain_at: Option<Instant> = None;
        let mut next_ping = Instant::now() + ping_interval;
        let timer = sleep_until(next_ping);
        tokio::pin!(timer);
        let mut batch: Vec<Outgoing> = Vec::new();
        let handle = self.handle().clone();

        loop {
            let sub_deadline = self.sub_expiry.iter().map(|(_, at)| *at).min();
            let deadline = [Some(next_ping), self.expires, sub_deadline, drain_at]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(next_ping);
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            // The select only says what happened; the work happens after it, once its futures
            // are dropped. A handler that awaits inside `select!` keeps every branch's future
            // alive beside its own, and the session's future is sized by that sum.
            let event = tokio::select! {
                biased;
                closed = handle.outbox.next_batch(&mut batch) => Event::Batch(closed),
                inbound = transport.recv() => Event::Inbound(inbound),
                () = &mut timer => Event::Deadline,
                _ = shutdown.cancelled(), if !draining => Event::Shutdown,
            };
            let flow = match event {
                Event::Batch(closed) => {
                    if !batch.is_empty() && transport.send(&mut batch).await.is_err() {
                        return Ending::Gone;
                    }
                    // A burst's batch is not kept for the next one: an idle session holds no
                    // queue memory (one allocation per burst instead).
                    batch = Vec::new();
                    self.forget_evicted().await;
                    match closed {
                        Some(g) => Flow::End(Ending::Goodbye(g)),
                        None => Flow::Continue,
                    }
                }
                Event::Inbound(inbound) => self.on_inbound(inbound).await,
                Event::Deadline => {
                    let now = Instant::now();
                    if self.expires.is_some_and(|at| at <= now) {
                        Flow::End(Ending::Goodbye(Goodbye::TokenExpired))
                    } else {
                        if drain_at.is_some_and(|at| at <= now) {
                            drain_at = None;
                            handle.outbox.close(Goodbye::GoingAway);
                        }
                        if sub_deadline.is_some_and(|at| at <= now) {
                            Box::pin(self.expire_subscriptions()).await;
                        }
                        if next_ping <= now {
                            // As `MissedTickBehavior::Delay`: a late tick moves the next one.
                            next_ping = now + ping_interval;
                            if answers_pings && self.last_seen.elapsed() > silence_limit {
                                return Ending::Goodbye(Goodbye::PingTimeout);
                            }
                            self.send(FrameKind::Ping, ServerFrame::Ping.encode());
                        }
                        Flow::Continue
                    }
                }
                Event::Shutdown => {
                    // Spread reconnects over the window so the other nodes are not stampeded.
                    let delay = rand::rng().random_range(0.0..=1.0) * spread.as_secs_f64();
                    draining = true;
                    drain_at = Some(Instant::now() + Duration::from_secs_f64(delay));
                    Flow::Continue
                }
            };
            if let Flow::End(ending) = flow {
                return ending;
            }
        }
    }

    async fn on_inbound(&mut self, inbound: Inbound) -> Flow {
        let node = self.node().clone();
        match inbound {
            Inbound::Gone => return Flow::End(Ending::Gone),
            Inbound::Closed => return Flow::End(Ending::PeerClosed),
            Inbound::End(g) => return Flow::End(Ending::Goodbye(g)),
            Inbound::Violation(g) => {
                let code = if g == Goodbye::FrameTooLarge {
                    ErrorCode::PayloadTooLarge
                } else {
                    ErrorCode::BadRequest
                };
                node.metrics.reject(Gate::frame, code);
                return Flow::End(Ending::Goodbye(g));
            }
            _ => {}
        }
        self.last_seen = Instant::now();
        // Every frame counts, whatever it carries (control frames included): a flood of
        // anything is a flood.
        if !self.frames.take() {
            node.metrics.reject(Gate::frame, ErrorCode::RateLimited);
            return Flow::End(Ending::Goodbye(Goodbye::RateLimited));
        }
        match inbound {
            // Boxed: commands await the broker, gate 2 and the backend; their state must not
            // size the future every idle session sits in.
            Inbound::Frame(frame) => Box::pin(self.dispatch(frame)).await,
            Inbound::BadRequest { id, message } => {
                node.metrics.reject(Gate::frame, ErrorCode::BadRequest);
                self.fail(id, ErrorBody::new(ErrorCode::BadRequest, message));
            }
            _ => {}
        }
        Flow::Continue
    }

    async fn dispatch(&mut self, frame: ClientFrame) {
        match frame {
            ClientFrame::Subscribe {
                id,
                channel,
                since,
                token,
            } => {
                if let Err(e) = self.subscribe(id, channel, since, token.as_deref()).await {
                    self.node().metrics.reject(Gate::subscribe, e.code);
                    self.fail(id, e);
                }
            }
            ClientFrame::Unsubscribe { id, channel } => match self.unsubscribe(&channel).await {
                Ok(()) => {
                    if let Some(id) = id {
                        self.handle().outbox.push(Outgoing::Own(transport::Own {
                            kind: FrameKind::Reply,
                            json: reply_ok(id, ReplyBody::Empty {}),
                            cursor: transport::CursorUpdate::Forget(Arc::from(channel)),
                        }));
                    }
                }
                Err(e) => self.fail(id, e),
            },
            ClientFrame::Publish { id, channel, data } => {
                let r = self.publish(&channel, &data.0).await;
                self.answer(
                    id,
                    r.map(|pos| {
                        move |id| {
                            reply_ok(
                                id,
                                ReplyBody::Published {
                                    offset: pos.offset,
                                    epoch: &pos.epoch,
                                },
                            )
                        }
                    }),
                );
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
                self.answer(id, r.map(|()| |id| reply_ok(id, ReplyBody::Empty {})));
            }
            ClientFrame::Rpc { id, method, data } => {
                let r = self.rpc(&method, &data.0).await;
                self.answer(
                    id,
                    r.map(|data| move |id| reply_ok(id, ReplyBody::Rpc { data: &data })),
                );
            }
            ClientFrame::SubRefresh { id, channel, token } => {
                let r = self.sub_refresh(&channel, &token).await;
                self.answer(id, r.map(|()| |id| reply_ok(id, ReplyBody::Empty {})));
            }
            ClientFrame::Ping { id } => match id {
                Some(id) => self.send(FrameKind::Reply, reply_ok(id, ReplyBody::Empty {})),
                None => self.send(FrameKind::Pong, ServerFrame::Pong.encode()),
            },
            ClientFrame::Pong { .. } => {}
        }
    }

    /// Replies when the frame had an id; errors on id-less frames become `error` frames.
    fn answer<F: FnOnce(u64) -> String>(&self, id: Option<u64>, result: Result<F, ErrorBody>) {
        match (id, result) {
            (Some(id), Ok(make)) => self.send(FrameKind::Reply, make(id)),
            (Some(id), Err(e)) => self.send(FrameKind::Reply, reply_err(id, &e)),
            (None, Ok(_)) => {}
            (None, Err(e)) => self.send(FrameKind::Error, error_frame(&e)),
        }
    }

    fn fail(&self, id: Option<u64>, e: ErrorBody) {
        self.answer(id, Err::<fn(u64) -> String, _>(e));
    }

    async fn cleanup(&mut self) {
        let channels: Vec<Arc<str>> = self.subscriptions.channels().cloned().collect();
        for channel in channels {
            self.detach(&channel).await;
        }
    }
}

#[cfg(test)]
mod tests;
