//! The pub/sub side of the Redis broker: one task per node that holds the subscriptions for
//! the channels with local subscribers, hands every message to the sink, and after any break
//! (Redis restarted, a master failed over, a slot moved) subscribes again and asks the sink to
//! resync every channel, so subscribers that missed publications recover.
//!
//! One server and Sentinel use classic pub/sub (`SUBSCRIBE`, on a connection of its own). A
//! Cluster uses sharded pub/sub (`SSUBSCRIBE`, Redis ≥ 7): a channel's messages are published
//! by `SPUBLISH` on the master of the channel's slot and go only to the connections subscribed
//! there, instead of being broadcast over the cluster bus to every node as `PUBLISH` is. The
//! cluster connection (RESP3, with a push sender) routes each `SSUBSCRIBE` to the slot's
//! master; losing that master shows up as a `Disconnection` push, a moved slot as an
//! unrequested `sunsubscribe` push, and both make the task subscribe everything again.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use herald_core::broker::{FanoutPace, PresenceEvent, resync_channels};
use herald_core::protocol::ClientInfo;
use herald_core::{BrokerError, Publication};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::topology::Following;
use crate::{COMMAND_TIMEOUT, Inner, RedisBroker, lock, unavailable};

/// What the broker asks of its pub/sub task.
pub(crate) enum Control {
    /// SUBSCRIBE to the channel, then answer the waiters ([`crate::Interest::waiters`]) of
    /// this generation of the node's interest in it. A later generation (the channel was
    /// given up, its UNSUBSCRIBE queued, then wanted again) is not answered by this one's
    /// SUBSCRIBE: the UNSUBSCRIBE behind it would undo it.
    Subscribe(String, u64),
    Unsubscribe(String),
    /// The master moved (Sentinel): drop the connection and subscribe on the new one.
    Reconnect,
}

/// Where the classic pub/sub connection goes.
pub(crate) enum Source {
    Fixed(Box<redis::Client>),
    Sentinel(Arc<Following>),
}

/// `<prefix>:ch:{<channel>}`: the channel's pub/sub channel. The hash tag puts it in the slot
/// of the channel's keys, so the publish script may `SPUBLISH` to it on a Cluster.
pub(crate) fn pubsub_channel(prefix: &str, channel: &str) -> String {
    format!("{prefix}:ch:{{{channel}}}")
}

/// `{<prefix>}:ctl`: where kicks are published; every node listens. In the slot of the other
/// cluster-wide keys (`{<prefix>}:…`), so the kick script may publish to it.
pub(crate) fn control_channel(prefix: &str) -> String {
    format!("{{{prefix}}}:ctl")
}

/// Parses one pub/sub message and hands it to the sink; counts it in the fan-out stats.
pub(crate) fn dispatch(inner: &Inner, redis_channel: &str, payload: &[u8]) {
    let Some(channel) = redis_channel
        .strip_prefix(&inner.channel_prefix)
        .and_then(|c| c.strip_suffix('}'))
    else {
        if redis_channel == inner.control_channel
            && let Some(user) = payload.strip_prefix(b"k ")
            && let Ok(user) = std::str::from_utf8(user)
        {
            inner.sink.kick(user);
        }
        return;
    };
    inner.stats.messages.fetch_add(1, Ordering::Relaxed);
    if !lock(&inner.interest).contains_key(channel) {
        // Sharded or not, Redis sends a node only what it subscribed to; this counts the
        // stragglers of a channel just unsubscribed, and proves the rule in tests.
        inner.stats.unwanted.fetch_add(1, Ordering::Relaxed);
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        return;
    };
    let (kind, rest) = text.split_at(text.len().min(2));
    match kind {
        "p " => {
            let mut parts = rest.splitn(4, ' ');
            let (Some(o), Some(e), Some(f), Some(d)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return;
            };
            let from = match f {
                "-" => Ok(None),
                _ => RawValue::from_string(f.to_owned()).map(|f| Some(Arc::from(f))),
            };
            let (Ok(offset), Ok(data), Ok(from)) =
                (o.parse::<u64>(), RawValue::from_string(d.to_owned()), from)
            else {
                tracing::warn!(channel, "malformed publication from redis");
                return;
            };
            inner.sink.deliver(&Publication {
                channel: Arc::from(channel),
                offset,
                epoch: Arc::from(e),
                data: Arc::from(data),
                from,
            });
        }
        "j " | "l " => {
            let Ok(info) = serde_json::from_str::<ClientInfo>(rest) else {
                return;
            };
            let event = if kind == "j " {
                PresenceEvent::Join(info)
            } else {
                PresenceEvent::Leave(info)
            };
            inner.sink.presence(channel, &event);
        }
        _ => {}
    }
}

/// After a break: every channel this node serves may have missed publications
/// ([`resync_channels`]; the positions travel pipelined on the multiplexed command connection).
fn resync_all(inner: Arc<Inner>, channels: Vec<String>) {
    let broker = RedisBroker { inner };
    tokio::spawn(async move {
        let sink = broker.inner.sink.clone();
        for (channel, e) in resync_channels(&broker, &*sink, channels).await {
            tracing::warn!(channel, error = %e, "resync failed");
        }
    });
}

/// At most this many queued subscribes (or unsubscribes) go out together: pipelined, one
/// round trip for all.
const SUBSCRIBE_BATCH: usize = 512;

/// Answers the subscribes waiting for `generation` of the node's interest in `channel` with
/// Redis' answer to its SUBSCRIBE; once acknowledged, later subscribes of that generation
/// return at once.
fn settle(weak: &Weak<Inner>, channel: &str, generation: u64, result: Result<(), BrokerError>) {
    let Some(inner) = weak.upgrade() else { return };
    let mut interest = lock(&inner.interest);
    if let Some(entry) = interest.get_mut(channel)
        && entry.generation == generation
    {
        if result.is_ok() {
            entry.acknowledged = true;
        }
        for waiter in entry.waiters.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }
}

/// Refuses a subscribe that will not be carried out on this connection.
fn refuse(weak: &Weak<Inner>, c: Option<Control>) {
    if let Some(Control::Subscribe(ch, generation)) = c {
        let refused = BrokerError::Unavailable("redis is unreachable".into());
        settle(weak, &ch, generation, Err(refused));
    }
}

/// Refuses the subscribes waiting in `control`: they must not wait for a Redis that is away.
fn refuse_pending(weak: &Weak<Inner>, control: &mut mpsc::UnboundedReceiver<Control>) {
    while let Ok(c) = control.try_recv() {
        refuse(weak, Some(c));
    }
}

/// Consecutive controls of one kind, carried out together.
enum Run {
    Subscribe(Vec<(String, u64)>),
    Unsubscribe(Vec<String>),
    Reconnect,
}

/// Takes `first` and the controls of its kind queued right behind it, up to
/// [`SUBSCRIBE_BATCH`]; the first control of another kind is returned, to be carried out
/// after them (order matters: an unsubscribe must not overtake the subscribe before it, nor a
/// subscribe the unsubscribe).
fn take_run(
    first: Control,
    control: &mut mpsc::UnboundedReceiver<Control>,
) -> (Run, Option<Control>) {
    let mut run = match first {
        Control::Subscribe(ch, generation) => Run::Subscribe(vec![(ch, generation)]),
        Control::Unsubscribe(ch) => Run::Unsubscribe(vec![ch]),
        Control::Reconnect => return (Run::Reconnect, None),
    };
    loop {
        let len = match &run {
            Run::Subscribe(b) => b.len(),
            Run::Unsubscribe(b) => b.len(),
            Run::Reconnect => unreachable!("never extended"),
        };
        if len >= SUBSCRIBE_BATCH {
            return (run, None);
        }
        match (&mut run, control.try_recv()) {
            (Run::Subscribe(batch), Ok(Control::Subscribe(ch, generation))) => {
                batch.push((ch, generation));
            }
            (Run::Unsubscribe(batch), Ok(Control::Unsubscribe(ch))) => batch.push(ch),
            (_, Ok(other)) => return (run, Some(other)),
            (_, Err(_)) => return (run, None),
        }
    }
}

/// A pub/sub connection as [`apply`] drives it: the classic one or a Cluster's sharded one.
trait PubSubConn {
    /// SUBSCRIBEs (SSUBSCRIBE) every name, one answer per name, in order. Each is its own
    /// command (a SUBSCRIBE of several channels gets one confirmation per channel, which the
    /// client would match to later requests), and [`SUBSCRIBE_BATCH`] of them are written
    /// before any answer is awaited, so many channels cost a round trip per batch, not one
    /// each.
    async fn subscribe_all(&mut self, names: Vec<String>) -> Vec<Result<(), BrokerError>>;

    /// UNSUBSCRIBEs (SUNSUBSCRIBE) every name, pipelined like [`Self::subscribe_all`]; false
    /// when the connection failed.
    async fn unsubscribe_all(&mut self, names: Vec<String>) -> bool;
}

/// Runs `op` on every name, [`SUBSCRIBE_BATCH`] at a time, all of a batch at once.
async fn pipelined<F, Fut>(names: Vec<String>, mut op: F) -> Vec<Result<(), BrokerError>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), BrokerError>>,
{
    let mut answers = Vec::with_capacity(names.len());
    let mut names = names.into_iter().peekable();
    while names.peek().is_some() {
        let batch: Vec<_> = names.by_ref().take(SUBSCRIBE_BATCH).map(&mut op).collect();
        answers.extend(futures_util::future::join_all(batch).await);
    }
    answers
}

/// The classic pub/sub connection (one server, Sentinel).
struct Classic<'a>(&'a mut redis::aio::PubSubSink);

impl PubSubConn for Classic<'_> {
    async fn subscribe_all(&mut self, names: Vec<String>) -> Vec<Result<(), BrokerError>> {
        let sink = &*self.0;
        pipelined(names, |name| {
            // The sink is a handle on the connection's request queue: each clone writes in
            // the order it is first polled, which `join_all` does in order.
            let mut sink = sink.clone();
            async move { sink.subscribe(name).await.map_err(unavailable) }
        })
        .await
    }

    async fn unsubscribe_all(&mut self, names: Vec<String>) -> bool {
        let sink = &*self.0;
        let answers = pipelined(names, |name| {
            let mut sink = sink.clone();
            async move { sink.unsubscribe(name).await.map_err(unavailable) }
        })
        .await;
        answers.iter().all(Result::is_ok)
    }
}

/// A Cluster's sharded pub/sub, and the SUNSUBSCRIBE confirmations still to come for our
/// own unsubscribes (they arrive as pushes, told apart from Redis' own).
struct Sharded<'a> {
    conn: &'a mut ClusterConnection,
    own_unsubscribes: &'a mut HashMap<String, usize>,
}

impl PubSubConn for Sharded<'_> {
    async fn subscribe_all(&mut self, names: Vec<String>) -> Vec<Result<(), BrokerError>> {
        let conn = &*self.conn;
        pipelined(names, |name| {
            let mut conn = conn.clone();
            async move { ssubscribe(&mut conn, name).await }
        })
        .await
    }

    async fn unsubscribe_all(&mut self, names: Vec<String>) -> bool {
        for name in &names {
            *self.own_unsubscribes.entry(name.clone()).or_default() += 1;
        }
        let conn = &*self.conn;
        let answers = pipelined(names, |name| {
            let mut conn = conn.clone();
            async move {
                match tokio::time::timeout(COMMAND_TIMEOUT, conn.sunsubscribe(name)).await {
                    Ok(r) => r.map_err(unavailable),
                    Err(_) => Err(BrokerError::Unavailable(
                        "redis: unsubscribing timed out".into(),
                    )),
                }
            }
        })
        .await;
        answers.iter().all(Result::is_ok)
    }
}

/// Carries out `c` and the controls of its kind queued behind it on `conn` (a connect or
/// disconnect storm costs a round trip per batch, not one per channel). False when the
/// connection must be dropped and made again.
async fn apply(
    weak: &Weak<Inner>,
    prefix: &str,
    conn: &mut impl PubSubConn,
    control: &mut mpsc::UnboundedReceiver<Control>,
    c: Control,
) -> bool {
    let mut next = Some(c);
    while let Some(c) = next.take() {
        let (run, after) = take_run(c, control);
        next = after;
        let ok = match run {
            Run::Subscribe(batch) => {
                let names = batch
                    .iter()
                    .map(|(ch, _)| pubsub_channel(prefix, ch))
                    .collect();
                let answers = conn.subscribe_all(names).await;
                let mut ok = true;
                for ((ch, generation), answer) in batch.iter().zip(answers) {
                    ok &= answer.is_ok();
                    settle(weak, ch, *generation, answer);
                }
                ok
            }
            Run::Unsubscribe(batch) => {
                let names = batch.iter().map(|ch| pubsub_channel(prefix, ch)).collect();
                conn.unsubscribe_all(names).await
            }
            Run::Reconnect => false,
        };
        if !ok {
            // Taken from the queue but not carried out on this connection.
            refuse(weak, next);
            return false;
        }
    }
    true
}

/// Classic pub/sub (one server, Sentinel): (re)connects, resubscribes, applies control
/// messages and dispatches messages, until the broker is dropped.
pub(crate) async fn classic_task(
    weak: Weak<Inner>,
    source: Source,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    loop {
        if weak.strong_count() == 0 {
            return;
        }
        let client = match &source {
            Source::Fixed(c) => Some((**c).clone()),
            Source::Sentinel(f) => f.master_now().await.ok().map(|m| m.client),
        };
        let conn = match client {
            Some(c) => tokio::time::timeout(Duration::from_secs(2), c.get_async_pubsub())
                .await
                .ok()
                .and_then(Result::ok),
            None => None,
        };
        let Some(pubsub) = conn else {
            refuse_pending(&weak, &mut control);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        };
        let (mut sink, mut stream) = pubsub.split();
        let (channels, prefix) = match weak.upgrade() {
            Some(inner) => (
                lock(&inner.interest).keys().cloned().collect::<Vec<_>>(),
                inner.opts.prefix.clone(),
            ),
            None => return,
        };
        // Kicks come on the control channel, whatever channels this node serves.
        let names = std::iter::once(control_channel(&prefix))
            .chain(channels.iter().map(|ch| pubsub_channel(&prefix, ch)))
            .collect();
        let ok = Classic(&mut sink)
            .subscribe_all(names)
            .await
            .iter()
            .all(Result::is_ok);
        if !ok {
            continue;
        }
        backoff = Duration::from_millis(100);
        if let Some(inner) = weak.upgrade() {
            inner.pubsub_up.store(true, Ordering::SeqCst);
            if connected_before {
                tracing::info!(channels = channels.len(), "redis pub/sub reconnected");
                resync_all(inner, channels);
            }
        }
        connected_before = true;
        let mut pace = FanoutPace::default();
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let Some(inner) = weak.upgrade() else { return };
                    let payload = msg.get_payload_bytes();
                    dispatch(&inner, msg.get_channel_name(), payload);
                    drop(inner);
                    if pace.delivered(payload.len()) {
                        // Messages already read from the socket are decoded without touching
                        // it again, so nothing else would make this loop let writers run.
                        tokio::task::yield_now().await;
                    }
                }
                c = control.recv() => {
                    let Some(c) = c else { return };
                    if !apply(&weak, &prefix, &mut Classic(&mut sink), &mut control, c).await {
                        break;
                    }
                }
            }
        }
        if let Some(inner) = weak.upgrade() {
            inner.pubsub_up.store(false, Ordering::SeqCst);
        }
        tracing::warn!("redis pub/sub connection lost; reconnecting");
    }
}

/// The channel name and payload of a pushed message (`message`/`smessage`).
fn message(push: &PushInfo) -> Option<(&str, &[u8])> {
    match (push.data.first(), push.data.get(1)) {
        (Some(Value::BulkString(ch)), Some(Value::BulkString(payload))) => {
            Some((std::str::from_utf8(ch).ok()?, payload))
        }
        _ => None,
    }
}

/// Sharded pub/sub on a Cluster: `SSUBSCRIBE` through a cluster connection that delivers
/// messages as RESP3 pushes on `pushes`. Subscribes everything again after a lost node
/// connection or a moved slot, then resyncs every channel.
pub(crate) async fn sharded_task(
    weak: Weak<Inner>,
    client: redis::cluster::ClusterClient,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    let mut conn: Option<ClusterConnection> = None;
    loop {
        if weak.strong_count() == 0 {
            return;
        }
        if conn.is_none() {
            conn = tokio::time::timeout(COMMAND_TIMEOUT, client.get_async_connection())
                .await
                .ok()
                .and_then(Result::ok);
        }
        let Some(c) = conn.as_mut() else {
            refuse_pending(&weak, &mut control);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        };
        let (channels, prefix) = match weak.upgrade() {
            Some(inner) => (
                lock(&inner.interest).keys().cloned().collect::<Vec<_>>(),
                inner.opts.prefix.clone(),
            ),
            None => return,
        };
        // Subscribing again to a channel already subscribed on its node is a no-op there, so
        // everything is sent again: only the connections that broke really resubscribe.
        let names = std::iter::once(control_channel(&prefix))
            .chain(channels.iter().map(|ch| pubsub_channel(&prefix, ch)))
            .collect();
        let mut none_yet = HashMap::new();
        let mut sharded = Sharded {
            conn: c,
            own_unsubscribes: &mut none_yet,
        };
        let ok = sharded.subscribe_all(names).await.iter().all(Result::is_ok);
        if !ok {
            refuse_pending(&weak, &mut control);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        }
        backoff = Duration::from_millis(100);
        if let Some(inner) = weak.upgrade() {
            inner.pubsub_up.store(true, Ordering::SeqCst);
            if connected_before {
                tracing::info!(
                    channels = channels.len(),
                    "redis cluster sharded pub/sub subscribed again"
                );
                resync_all(inner, channels);
            }
        }
        connected_before = true;
        // `sunsubscribe` pushes still to come for our own SUNSUBSCRIBEs, per Redis channel.
        let mut own_unsubscribes: HashMap<String, usize> = HashMap::new();
        let mut pace = FanoutPace::default();
        loop {
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else { return };
                    let Some(inner) = weak.upgrade() else { return };
                    match push.kind {
                        PushKind::SMessage | PushKind::Message => {
                            if let Some((ch, payload)) = message(&push) {
                                dispatch(&inner, ch, payload);
                                if pace.delivered(payload.len()) {
                                    drop(inner);
                                    tokio::task::yield_now().await;
                                }
                            }
                        }
                        // A node connection broke (its master died or restarted).
                        PushKind::Disconnection => break,
                        // Our own SUNSUBSCRIBE's reply comes here too (the client clones
                        // replies that are pushes); any other means Redis unsubscribed us
                        // itself: the channel's slot moved (a failover, a migration). If the
                        // channel is still wanted, subscribe again where it is now and resync it.
                        PushKind::SUnsubscribe => {
                            let Some(ch) = message_channel(&push) else { continue };
                            if let Some(n) = own_unsubscribes.get_mut(ch) {
                                *n -= 1;
                                if *n == 0 {
                                    own_unsubscribes.remove(ch);
                                }
                                continue;
                            }
                            let channel = ch
                                .strip_prefix(&inner.channel_prefix)
                                .and_then(|c| c.strip_suffix('}'))
                                .filter(|c| lock(&inner.interest).contains_key(*c))
                                .map(str::to_owned);
                            if channel.is_none() && ch != inner.control_channel {
                                continue;
                            }
                            let again = ssubscribe(conn.as_mut().expect("connected"), ch.to_owned()).await;
                            if again.is_err() {
                                break;
                            }
                            if let Some(channel) = channel {
                                tracing::info!(channel, "redis unsubscribed a channel (its slot moved): subscribed again");
                                resync_all(inner, vec![channel]);
                            }
                        }
                        _ => {}
                    }
                }
                c = control.recv() => {
                    let Some(c) = c else { return };
                    let mut sharded = Sharded {
                        conn: conn.as_mut().expect("connected"),
                        own_unsubscribes: &mut own_unsubscribes,
                    };
                    if !apply(&weak, &prefix, &mut sharded, &mut control, c).await {
                        break;
                    }
                }
            }
        }
        if let Some(inner) = weak.upgrade() {
            inner.pubsub_up.store(false, Ordering::SeqCst);
        }
        tracing::warn!("redis cluster sharded pub/sub interrupted; subscribing again");
    }
}

fn message_channel(push: &PushInfo) -> Option<&str> {
    match push.data.first() {
        Some(Value::BulkString(ch)) => std::str::from_utf8(ch).ok(),
        _ => None,
    }
}

async fn ssubscribe(c: &mut ClusterConnection, channel: String) -> Result<(), BrokerError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, c.ssubscribe(channel)).await {
        Ok(r) => r.map_err(unavailable),
        Err(_) => Err(BrokerError::Unavailable(
            "redis: subscribing timed out".into(),
        )),
    }
}
