//! Subscriptions: the welcome (auto-subscriptions and what the transport asked for at
//! connect), subscribe with recovery, unsubscribe, presence join/leave, and evictions.
//!
//! Every subscription goes pending in the hub before the broker is read, then is activated at
//! the position the client is told: see `hub.rs` for why that gives no gap and no duplicate.

use std::sync::Arc;

use herald_core::broker::{HistoryQuery, HistoryResult};
use herald_core::protocol::{
    ChannelPosition, ClientInfo, ErrorBody, ErrorCode, FrameKind, PublicationView, ReplyBody,
    ServerFrame, Since, channel_error_frame, reply_ok,
};
use herald_core::{Position, Publication, Scope};
use tokio::time::Instant;

use super::limits::deadline_of;
use super::recover::recover;
use super::transport::{CursorUpdate, Outgoing, Own};
use super::{Opening, Presence, Session};
use crate::metrics::Gate;
use crate::node::broker_error;
use crate::prepared::Prepared;
use crate::proxy::SubscribeAsk;
use crate::webhook::{Event, channel_event, client_event};

/// The reason of the `unsubscribed` frame sent when a subscription token runs out.
pub const TOKEN_EXPIRED: &str = "token_expired";

/// What gate 2 granted one subscription.
struct Grant {
    /// A presence channel (join now, leave on unsubscribe).
    presence: bool,
    /// When the subscription token runs out (token-scoped channels).
    expires: Option<Instant>,
    /// What the backend attached to this member (subscribe proxy), shown in presence.
    info: Option<Arc<serde_json::value::RawValue>>,
}

/// One subscription made at connect, between its history read and its activation.
struct Opened {
    channel: Arc<str>,
    result: HistoryResult,
    since: Option<Since>,
    auto: bool,
}

impl Session {
    /// Subscribes to the auto-subscribed channels and what `opening` asks for, and queues
    /// `welcome` before anything else. Fails (the session ends with 1013) only when an
    /// auto-subscription cannot be made; a refused or failed requested channel is an `error`
    /// frame after the welcome.
    pub(super) async fn welcome(&mut self, opening: Opening) -> Result<(), ErrorBody> {
        let node = self.node().clone();
        // (channel, since, auto)
        let mut wanted: Vec<(Arc<str>, Option<Since>, bool)> = Vec::new();
        if let Some(user) = self.identity.user.clone() {
            for d in node
                .config
                .registry
                .descriptors()
                .iter()
                .filter(|d| d.auto_subscribe)
            {
                match d.auto_channel_for(&user) {
                    Some(name) => wanted.push((Arc::from(name), None, true)),
                    None => {
                        tracing::debug!(channel = %d.pattern, "user id is not a valid segment; no auto-subscribe")
                    }
                }
            }
        }
        for channel in opening.channels {
            if !wanted.iter().any(|(c, ..)| **c == *channel) {
                wanted.push((Arc::from(channel), None, false));
            }
        }
        let resumed: Vec<Arc<str>> = opening
            .resume
            .iter()
            .map(|(c, _)| Arc::from(c.as_str()))
            .collect();
        for (channel, since) in opening.resume {
            match wanted.iter_mut().find(|(c, ..)| **c == *channel) {
                Some(w) => w.1 = Some(since),
                None => wanted.push((Arc::from(channel), Some(since), false)),
            }
        }

        let mut opened: Vec<Opened> = Vec::new();
        let mut refused: Vec<(Arc<str>, ErrorBody)> = Vec::new();
        for (channel, since, auto) in wanted {
            match self.open(&channel, since.as_ref(), auto).await {
                Ok(result) => opened.push(Opened {
                    channel,
                    result,
                    since,
                    auto,
                }),
                Err(e) if auto => return Err(e),
                Err(e) => {
                    node.metrics.reject(Gate::subscribe, e.code);
                    refused.push((channel, e));
                }
            }
        }

        let max = node.config.limits.max_recovery;
        if opening.all_or_nothing {
            let mut budget = replay_budget(self.handle().outbox.limit());
            let resumed_refused = refused.iter().any(|(c, _)| resumed.contains(c));
            let lost = opened.iter().any(|o| {
                o.since.is_some()
                    && !within_budget(
                        recover(o.since.as_ref(), &o.result, max),
                        &o.channel,
                        &mut budget,
                    )
                    .0
            });
            if resumed_refused || lost {
                // Not everything can be recovered: start fresh, as a new connection would
                // (the auto-subscriptions at their current position, nothing replayed).
                let mut fresh = Vec::new();
                for o in opened {
                    if o.auto {
                        fresh.push(Opened { since: None, ..o });
                    } else {
                        self.detach(&o.channel).await;
                    }
                }
                opened = fresh;
                refused.retain(|(c, _)| !resumed.contains(c));
            }
        }
        // One budget for every channel resumed at once: their replays share the outbox.
        let mut budget = replay_budget(self.handle().outbox.limit());
        let decided: Vec<(bool, &[Publication])> = opened
            .iter()
            .map(|o| {
                let decision = recover(o.since.as_ref(), &o.result, max);
                within_budget(decision, &o.channel, &mut budget)
            })
            .collect();
        let welcome = ServerFrame::Welcome {
            client: &self.handle().id,
            user: self.identity.user.as_deref(),
            ping_interval_ms: node.config.server.ping_interval.as_millis() as u64,
            subscriptions: opened
                .iter()
                .zip(&decided)
                .map(|(o, (recovered, _))| ChannelPosition {
                    channel: &o.channel,
                    offset: o.result.position.offset,
                    epoch: &o.result.position.epoch,
                    recovered: o.since.as_ref().map(|_| *recovered),
                })
                .collect(),
            session: opening.session.as_deref(),
        }
        .encode();
        // The cursor a resuming transport keeps: where the client stands once the welcome is
        // written; replayed `pub` frames then move it forward one by one.
        let cursor = opened
            .iter()
            .zip(&decided)
            .map(|(o, (recovered, _))| {
                let position = match (&o.since, recovered) {
                    (Some(s), true) => Position {
                        offset: s.offset,
                        epoch: o.result.position.epoch.clone(),
                    },
                    _ => o.result.position.clone(),
                };
                (o.channel.clone(), position)
            })
            .collect();
        let outbox = &self.handle().outbox;
        outbox.push(Outgoing::Own(Own {
            kind: FrameKind::Welcome,
            json: welcome,
            cursor: CursorUpdate::Set(cursor),
        }));
        for (channel, e) in &refused {
            outbox.push(Outgoing::own(
                FrameKind::Error,
                channel_error_frame(Some(channel), e),
            ));
        }
        for (o, (_, replay)) in opened.iter().zip(&decided) {
            for p in replay.iter() {
                outbox.push(Outgoing::Shared(Prepared::publication(p)));
            }
            node.hub
                .activate(&o.channel, self.handle(), &o.result.position, None);
        }
        for o in &opened {
            self.join(&o.channel).await;
        }
        Ok(())
    }

    /// Gate 2 (for requested channels), the limits, the pending hub entry and the history
    /// read of one subscription made at connect.
    async fn open(
        &mut self,
        channel: &Arc<str>,
        since: Option<&Since>,
        auto: bool,
    ) -> Result<HistoryResult, ErrorBody> {
        let node = self.node().clone();
        // At connect there is no subscription token to present: a token-scoped channel asked
        // for here (an SSE `?channel=`, a resume) is refused, and the client subscribes with
        // its token instead. A proxy-scoped one asks the backend like a subscribe.
        let grant = self.gate2(channel, None).await?;
        if !auto {
            self.check_limit(channel)?;
        }
        self.attach(channel, grant.presence).await?;
        self.set_info(channel, grant.info);
        match node.history(channel, history_query(since, &node)).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.detach(channel).await;
                Err(e)
            }
        }
    }

    /// Gate 2 for this session: the registry's pure rule, or the subscription token, or the
    /// backend (subscribe proxy), by the descriptor's scope. Errors: `unknown_channel`,
    /// `forbidden`, `unauthorized` (a token that does not verify), `unavailable` (the backend
    /// gave no usable answer).
    async fn gate2(&self, channel: &str, token: Option<&str>) -> Result<Grant, ErrorBody> {
        let node = self.node().clone();
        // The dashboard watches: internal channels are its alone (to anyone else they do not
        // exist), and it may tail any registry channel whatever its scope, without joining
        // its presence (an observer is not a member).
        let watcher = Grant {
            presence: false,
            expires: None,
            info: None,
        };
        if crate::admin::is_internal(channel) {
            return if self.identity.admin {
                Ok(watcher)
            } else {
                Err(ErrorBody::new(
                    ErrorCode::UnknownChannel,
                    format!("unknown channel {channel:?}"),
                ))
            };
        }
        let (descriptor, params) = node.resolve(channel)?;
        if self.identity.admin {
            return Ok(watcher);
        }
        let presence = descriptor.presence;
        match &descriptor.scope {
            Scope::Token => {
                let exp = node.verify_subscription_token(channel, &self.identity, token)?;
                Ok(Grant {
                    presence,
                    expires: deadline_of(Some(exp)),
                    info: None,
                })
            }
            Scope::Proxy(name) => {
                let ask = SubscribeAsk {
                    identity: &self.identity,
                    channel,
                    params: &params,
                    client: &self.handle().id,
                    transport: self.transport,
                };
                let info = node.proxy_subscribe(name, ask).await?;
                Ok(Grant {
                    presence,
                    expires: None,
                    info,
                })
            }
            _ => {
                node.authorize_subscribe(channel, &self.identity)?;
                Ok(Grant {
                    presence,
                    expires: None,
                    info: None,
                })
            }
        }
    }

    /// Ends every token-scoped subscription whose token has run out: the client gets
    /// `unsubscribed` with reason `token_expired` (after every publication it was owed, before
    /// none it was not) and may subscribe again with a fresh token.
    pub(super) async fn expire_subscriptions(&mut self) {
        let now = Instant::now();
        let due: Vec<Arc<str>> = self
            .sub_expiry
            .iter()
            .filter(|(_, at)| *at <= now)
            .map(|(c, _)| c.clone())
            .collect();
        for channel in due {
            self.detach(&channel).await;
            let json = ServerFrame::Unsubscribed {
                channel: &channel,
                reason: TOKEN_EXPIRED,
            }
            .encode();
            self.handle().outbox.push(Outgoing::Own(Own {
                kind: FrameKind::Unsubscribed,
                json,
                cursor: CursorUpdate::Forget(channel.clone()),
            }));
        }
    }

    /// Sets (or clears) when a subscription's token runs out.
    pub(super) fn set_expiry(&mut self, channel: &Arc<str>, at: Option<Instant>) {
        self.sub_expiry.retain(|(c, _)| c != channel);
        if let Some(at) = at {
            self.sub_expiry.push((channel.clone(), at));
        }
    }

    /// Keeps the backend's `info` for this member of `channel` (presence entries and `join`).
    fn set_info(&mut self, channel: &Arc<str>, info: Option<Arc<serde_json::value::RawValue>>) {
        self.presence_info.retain(|(c, _)| c != channel);
        if let Some(info) = info {
            self.presence_info.push((channel.clone(), info));
        }
    }

    fn check_limit(&self, channel: &str) -> Result<(), ErrorBody> {
        if self.subscriptions.contains(channel) {
            return Err(ErrorBody::new(
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to {channel:?}"),
            ));
        }
        let max = self.node().config.limits.max_subscriptions;
        if self.subscriptions.len() >= max {
            return Err(ErrorBody::new(
                ErrorCode::TooManySubscriptions,
                format!("at most {max} subscriptions per connection"),
            ));
        }
        Ok(())
    }

    /// Adds a pending hub subscription and this subscriber's interest at the broker.
    ///
    /// Every subscriber asks the broker, not only the node's first: the broker counts them and
    /// answers once this node receives the channel, also while the first subscriber's request
    /// is still on its way. The caller reads the channel's position next, and a publication
    /// falling between that read and the moment the node receives the channel would be missed
    /// until the next one revealed the gap.
    async fn attach(&mut self, channel: &Arc<str>, presence: bool) -> Result<(), ErrorBody> {
        let node = self.node().clone();
        node.hub.add(channel, self.handle());
        if let Err(e) = node.broker.subscribe(channel).await {
            // A failed subscribe counts nothing at the broker: only the hub's entry is undone
            // (and if others said the channel occupied and left meanwhile, it is vacated).
            if node.hub.remove(channel, self.handle()) && !crate::admin::is_internal(channel) {
                node.emit("channel_vacated", || {
                    channel_event("channel_vacated", channel)
                });
            }
            return Err(broker_error(e));
        }
        self.subscriptions
            .insert(channel.clone(), Presence::granted(presence));
        if node.hub.occupy(channel) && !crate::admin::is_internal(channel) {
            node.emit("channel_occupied", || {
                channel_event("channel_occupied", channel)
            });
        }
        Ok(())
    }

    /// Undoes [`Self::attach`] (and the presence entry, if this member joined): the hub's
    /// entry, the broker's interest, the session's record. Nothing when not subscribed.
    pub(super) async fn detach(&mut self, channel: &str) {
        let node = self.node().clone();
        self.sub_expiry.retain(|(c, _)| **c != *channel);
        self.presence_info.retain(|(c, _)| **c != *channel);
        let Some(presence) = self.subscriptions.remove(channel) else {
            return;
        };
        if presence == Presence::Joined {
            if let Err(e) = node
                .broker
                .presence_remove(channel, self.client_info())
                .await
            {
                tracing::warn!(channel, error = %e, "presence remove failed");
            }
            node.emit("presence_leave", || {
                self.event("presence_leave", Some(&Arc::from(channel)))
            });
        }
        let vacated = node.hub.remove(channel, self.handle());
        if let Err(e) = node.broker.unsubscribe(channel).await {
            tracing::warn!(channel, error = %e, "broker unsubscribe failed");
        }
        if vacated && !crate::admin::is_internal(channel) {
            node.emit("channel_vacated", || {
                channel_event("channel_vacated", &Arc::from(channel))
            });
        }
    }

    /// Drops the subscriptions the hub took away (the client was told to resubscribe).
    pub(super) async fn forget_evicted(&mut self) {
        let evicted = self.handle().take_evicted();
        if !evicted.is_empty() {
            // Boxed: rare, and its state would otherwise size every idle session's future.
            Box::pin(self.forget(evicted)).await;
        }
    }

    async fn forget(&mut self, evicted: Vec<Arc<str>>) {
        for channel in evicted {
            if self.subscriptions.contains(&channel) {
                self.detach(&channel).await;
            }
        }
    }

    /// `subscribe`: gate 2, limits, history (and recovery with `since`), then activation.
    pub(super) async fn subscribe(
        &mut self,
        id: Option<u64>,
        channel: String,
        since: Option<Since>,
        token: Option<&str>,
    ) -> Result<(), ErrorBody> {
        self.forget_evicted().await;
        let node = self.node().clone();
        let grant = self.gate2(&channel, token).await?;
        self.check_limit(&channel)?;
        let channel: Arc<str> = Arc::from(channel);
        self.attach(&channel, grant.presence).await?;
        self.set_expiry(&channel, grant.expires);
        self.set_info(&channel, grant.info);
        let result = match node
            .history(&channel, history_query(since.as_ref(), &node))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.detach(&channel).await;
                return Err(e);
            }
        };
        let (recovered, replay) = within_budget(
            recover(since.as_ref(), &result, node.config.limits.max_recovery),
            &channel,
            &mut replay_budget(self.handle().outbox.limit()),
        );
        let reply = id.map(|id| {
            Outgoing::Own(Own {
                kind: FrameKind::Reply,
                json: reply_ok(
                    id,
                    ReplyBody::Subscribed {
                        channel: &channel,
                        offset: result.position.offset,
                        epoch: &result.position.epoch,
                        recovered,
                        publications: replay.iter().map(PublicationView::from).collect(),
                    },
                ),
                cursor: CursorUpdate::Set(vec![(channel.clone(), result.position.clone())]),
            })
        });
        node.hub
            .activate(&channel, self.handle(), &result.position, reply);
        self.join(&channel).await;
        Ok(())
    }

    /// A webhook event about this connection (the node stamps `id` and `at`).
    pub(super) fn event(&self, kind: &'static str, channel: Option<&Arc<str>>) -> Event {
        let transport = channel.is_none().then_some(self.transport);
        client_event(
            kind,
            &self.handle().id,
            self.identity.user.as_ref(),
            channel,
            transport,
        )
    }

    pub(super) fn client_info(&self) -> ClientInfo {
        ClientInfo {
            client: self.handle().id.to_string(),
            user: self.identity.user.as_deref().map(str::to_owned),
            info: None,
        }
    }

    /// This client's presence entry on `channel`, with the backend's `info` if it gave one.
    fn client_info_for(&self, channel: &str) -> ClientInfo {
        ClientInfo {
            info: self
                .presence_info
                .iter()
                .find(|(c, _)| **c == *channel)
                .map(|(_, i)| i.clone()),
            ..self.client_info()
        }
    }

    /// Announces this session on a presence channel it just subscribed to.
    async fn join(&mut self, channel: &str) {
        if !self
            .subscriptions
            .get(channel)
            .is_some_and(|(_, presence)| presence == Presence::Unannounced)
        {
            return;
        }
        // Joined from here on, even if the broker fails to add the entry: the `join` is sent
        // below, so the `leave` must be too (removing an absent entry is harmless).
        self.subscriptions.set_presence(channel, Presence::Joined);
        let node = self.node().clone();
        if let Err(e) = node
            .broker
            .presence_add(channel, self.client_info_for(channel))
            .await
        {
            tracing::warn!(channel, error = %e, "presence add failed");
        }
        node.emit("presence_join", || {
            self.event("presence_join", Some(&Arc::from(channel)))
        });
    }

    /// `unsubscribe`. Errors: `not_subscribed`.
    pub(super) async fn unsubscribe(&mut self, channel: &str) -> Result<(), ErrorBody> {
        self.forget_evicted().await;
        if !self.subscriptions.contains(channel) {
            return Err(ErrorBody::new(
                ErrorCode::NotSubscribed,
                format!("not subscribed to {channel:?}"),
            ));
        }
        self.detach(channel).await;
        Ok(())
    }
}

/// Bytes of replay one subscribe (or one resume of several channels) may queue: half the
/// outbox, leaving the rest for live publications arriving meanwhile.
fn replay_budget(outbox_limit: usize) -> usize {
    outbox_limit / 2
}

/// A replay the outbox cannot hold would close the client as a slow consumer (4008), and it
/// would come back with the same `since` and be closed again, forever; encoding it would also
/// cost up to `max_recovery` × `max_payload_bytes` at once. So past `budget` a gap is not
/// recovered, as past `max_recovery`: `recovered: false`, nothing replayed. What a replay
/// does queue is taken from `budget`.
fn within_budget<'r>(
    (recovered, replay): (bool, &'r [Publication]),
    channel: &str,
    budget: &mut usize,
) -> (bool, &'r [Publication]) {
    // The frame around each payload: `{"type":"pub","channel":…,"offset":…,"data":}`.
    let frame = 64 + channel.len();
    let bytes: usize = replay.iter().map(|p| p.data.get().len() + frame).sum();
    if bytes > *budget {
        return (false, &[]);
    }
    *budget -= bytes;
    (recovered, replay)
}

/// What to read from history: only the position, or everything after `since` (one more than
/// the recovery cap, so an over-long gap is recognised as such).
fn history_query(since: Option<&Since>, node: &crate::Node) -> HistoryQuery {
    match since {
        Some(s) => HistoryQuery {
            after: Some(s.offset),
            limit: node.config.limits.max_recovery + 1,
        },
        None => HistoryQuery::default(),
    }
}
