//! One Socket.IO connection: CONNECT, then the session core over [`SocketIoTransport`].
//!
//! Before CONNECT the engine is open but nobody is admitted: the task waits for a CONNECT to
//! `/` (other namespaces are refused as Node refuses them), runs gate 1 with the packet's
//! `auth.token` first, answers a refusal with CONNECT_ERROR (the engine stays open for another
//! try), and closes the engine when nothing valid arrives within `server.handshake_timeout`.
//!
//! After CONNECT the transport translates both ways: Socket.IO events with acks become
//! protocol v1 commands (the ack carries the v1 reply), and v1 frames become events
//! (publications under their channel's event name with `meta` and the recovery cursor,
//! presence and notices under `herald:*`). Recovery: the CONNECT reply carries a `pid`; the
//! session's subscriptions (each channel's position when it was subscribed) are kept under it
//! in the broker; a CONNECT with that `pid` and the last cursor the client received resumes
//! every channel, all or nothing (docs/socketio.md).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use herald_core::broker::random_id;
use herald_core::input::{KeyCheckError, check_unique_keys};
use herald_core::protocol::{ClientFrame, FrameKind, Goodbye, RawJson, Since};
use herald_node::{Admitted, Ending, Inbound, Node, Opening, Outgoing, Session, Transport, Wire};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::Credentials;
use super::engine::{Engine, Engines, Read};
use super::packet::{
    self, ConnectAuth, EnginePacket, Kind, connect_auth, parse_engine, parse_event, parse_socketio,
};
use crate::transport::cursor::{self, Cursor};

/// A broker call on the recovery path may take this long; past it recovery is skipped (the
/// connection goes on, `recovered: false`).
const BROKER_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs one engine: CONNECT, then the session. Removes the engine from `engines` at the end.
pub async fn run(node: Arc<Node>, engines: Arc<Engines>, mut engine: Engine, creds: Credentials) {
    let sid = engine.shared().map(|s| s.sid.clone());
    let connected = connect(&node, &mut engine, &creds).await;
    // Not needed after CONNECT: freed rather than held for the connection's life.
    drop(creds);
    match connected {
        Some((admitted, auth)) => {
            let (transport, opening) =
                SocketIoTransport::open(&node, engine, &admitted, auth).await;
            Session::new(admitted).run(transport, opening).await;
        }
        None => engine.close(Vec::new(), false).await,
    }
    if let Some(sid) = sid {
        engines.remove(&sid);
    }
}

/// Waits for a CONNECT to `/` that passes gate 1. `None`: the engine must close (timeout,
/// shutdown, a packet out of place, the client left).
async fn connect(
    node: &Arc<Node>,
    engine: &mut Engine,
    creds: &Credentials,
) -> Option<(Admitted, ConnectAuth)> {
    let server = &node.config.server;
    // No pings before CONNECT: the wait must end before the client expects its first one.
    let deadline = Instant::now() + server.handshake_timeout.min(server.ping_interval);
    loop {
        let read = tokio::select! {
            r = engine.next() => r,
            _ = tokio::time::sleep_until(deadline) => return None,
            _ = node.shutdown.cancelled() => return None,
        };
        let Read::Text(text) = read else {
            return None;
        };
        let message = match parse_engine(&text) {
            Ok(EnginePacket::Message(m)) => m,
            Ok(EnginePacket::Pong(_) | EnginePacket::Ping(_) | EnginePacket::Noop) => continue,
            _ => return None,
        };
        let Ok(p) = parse_socketio(message) else {
            return None;
        };
        if p.kind != Kind::Connect {
            // Node: "invalid state", the client is closed.
            return None;
        }
        if p.namespace != "/" {
            let mut out = vec![format!(
                r#"44{},{{"message":"Invalid namespace"}}"#,
                p.namespace
            )];
            if engine.write(&mut out).await.is_err() {
                return None;
            }
            continue;
        }
        let auth = connect_auth(p.data);
        match node.admit(&creds.handshake(auth.token.as_deref())).await {
            Ok(admitted) => return Some((admitted, auth)),
            Err(refusal) => {
                let mut out = vec![connect_error(&refusal.0)];
                if engine.write(&mut out).await.is_err() {
                    return None;
                }
            }
        }
    }
}

/// CONNECT_ERROR for a gate 1 refusal: `message` is the error code (what `err.message` shows),
/// `data` Herald's error body (`err.data.code`, `err.data.message`).
fn connect_error(e: &herald_core::protocol::ErrorBody) -> String {
    #[derive(Serialize)]
    struct ConnectError<'a> {
        message: &'a str,
        data: &'a herald_core::protocol::ErrorBody,
    }
    let body = serde_json::to_string(&ConnectError {
        message: e.code.as_str(),
        data: e,
    })
    .unwrap_or_default();
    format!("44{body}")
}

/// What the broker keeps under a `pid`: whose session it was and where each channel stood
/// when it was subscribed (`channel`, `offset`, `epoch`).
#[derive(Debug, Serialize, Deserialize)]
struct Resumable {
    user: Option<String>,
    channels: Vec<(String, u64, String)>,
}

/// Where a recovery stands until the welcome says how it went.
#[derive(Debug)]
struct Resuming {
    /// The `pid` the client asked for.
    pid: Arc<str>,
    /// Channels asked to resume: all must come back recovered.
    channels: usize,
}

/// The Socket.IO wire of one session.
pub struct SocketIoTransport {
    engine: Engine,
    node: Arc<Node>,
    /// The socket id (`socket.id`), the session's client id.
    client: Arc<str>,
    user: Option<Arc<str>>,
    /// Where the client stands on each channel: the last argument of each publication.
    cursor: Cursor,
    /// Where each channel stood when it was subscribed: what the broker keeps under the pid.
    floors: Cursor,
    /// The recovery id, `None` when recovery is off.
    pid: Option<Arc<str>>,
    resuming: Option<Resuming>,
    /// Binary attachments announced and not yet read (dropped on arrival).
    attachments: usize,
    /// The client sent DISCONNECT: its state is not kept.
    left: bool,
    /// The node lost continuity on a subscribed channel (`unsubscribed`, reason
    /// `resubscribe`). A socket.io-client app cannot resubscribe with `since` (it never
    /// subscribed to its auto-subscribed channels at all), so the connection ends the
    /// reconnecting way and the reconnect is not recovered: fresh subscriptions, and the
    /// application refetches, as it does on `socket.recovered === false`.
    lost_continuity: bool,
    out: Vec<String>,
}

impl SocketIoTransport {
    /// The transport of an admitted connection, and what the session opens with: the
    /// subscriptions of the `pid` in `auth`, when the broker still has them for this user.
    async fn open(
        node: &Arc<Node>,
        engine: Engine,
        admitted: &Admitted,
        auth: ConnectAuth,
    ) -> (Self, Opening) {
        let recovery = !node.config.socketio.max_disconnection.is_zero();
        let user = admitted.identity.user.clone();
        let client = admitted.slot.handle().id.clone();
        let mut resume = Vec::new();
        let mut resuming = None;
        if let (true, Some(pid)) = (recovery, auth.pid.as_deref()) {
            let ttl = node.config.socketio.max_disconnection;
            let take = node.broker.resume_take(pid, &client, ttl);
            let taken = tokio::time::timeout(BROKER_TIMEOUT, take).await;
            let state = match taken {
                Ok(Ok(Some(text))) => serde_json::from_str::<Resumable>(&text).ok(),
                Ok(Ok(None)) => None,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "socket.io recovery: broker read failed");
                    None
                }
                Err(_) => None,
            };
            if let Some(state) = state.filter(|s| s.user.as_deref() == user.as_deref()) {
                let held = auth
                    .offset
                    .as_deref()
                    .and_then(|o| cursor::parse(o).ok())
                    .unwrap_or_default();
                resume = resume_positions(state.channels, &held);
                resuming = Some(Resuming {
                    pid: Arc::from(pid),
                    channels: resume.len(),
                });
            }
        }
        let transport = Self {
            engine,
            node: node.clone(),
            client,
            user,
            cursor: Cursor::default(),
            floors: Cursor::default(),
            pid: recovery.then(|| Arc::from(random_id(20))),
            resuming,
            attachments: 0,
            left: false,
            lost_continuity: false,
            out: Vec::new(),
        };
        let opening = Opening {
            resume,
            all_or_nothing: true,
            ..Opening::default()
        };
        (transport, opening)
    }

    /// Keeps the subscriptions under the pid for `socketio.max_disconnection`. A future that
    /// does not borrow the transport (whose socket is not `Sync`).
    fn persist(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let write = self.pid.clone().and_then(|pid| {
            let state = Resumable {
                user: self.user.as_deref().map(str::to_owned),
                channels: self
                    .floors
                    .entries()
                    .iter()
                    .map(|(c, o, e)| (c.to_string(), *o, e.to_string()))
                    .collect(),
            };
            let text = serde_json::to_string(&state).ok()?;
            Some((pid, text, self.client.clone(), self.node.clone()))
        });
        async move {
            let Some((pid, text, client, node)) = write else {
                return;
            };
            let ttl = node.config.socketio.max_disconnection;
            let put = node.broker.resume_put(&pid, &client, &text, ttl);
            match tokio::time::timeout(BROKER_TIMEOUT, put).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "socket.io recovery: broker write failed"),
                Err(_) => tracing::warn!("socket.io recovery: broker write timed out"),
            }
        }
    }

    /// The CONNECT reply for the welcome: the socket id and the pid (the old one when every
    /// channel was recovered, so `socket.recovered` is true; a new one otherwise).
    fn connect_reply(&mut self, welcome: &str) -> String {
        #[derive(Deserialize)]
        struct Welcome {
            #[serde(default)]
            subscriptions: Vec<Sub>,
        }
        #[derive(Deserialize)]
        struct Sub {
            #[serde(default)]
            recovered: Option<bool>,
        }
        if let Some(r) = self.resuming.take() {
            let recovered = serde_json::from_str::<Welcome>(welcome)
                .map(|w| {
                    w.subscriptions
                        .iter()
                        .filter(|s| s.recovered == Some(true))
                        .count()
                })
                .unwrap_or(0);
            if recovered == r.channels {
                self.pid = Some(r.pid);
            }
        }
        let mut out = String::from("40{\"sid\":");
        packet::push_json_str(&mut out, &self.client);
        if let Some(pid) = &self.pid {
            out.push_str(",\"pid\":");
            packet::push_json_str(&mut out, pid);
        }
        out.push('}');
        out
    }

    /// One frame of the session as Engine.IO packets in `self.out`; true when the
    /// subscriptions changed (the state under the pid must be written).
    fn encode(&mut self, item: Outgoing) -> bool {
        match item {
            Outgoing::Shared(p) => match p.kind {
                FrameKind::Pub => {
                    let node = &self.node;
                    let built;
                    // Built once per publication, lent to every subscriber.
                    let prefix: &str = match p.cached_ref::<Arc<str>>(Wire::SocketIo, |p| {
                        Arc::from(publication_prefix(node, p))
                    }) {
                        Some(shared) => shared,
                        None => {
                            built = publication_prefix(node, &p);
                            &built
                        }
                    };
                    self.cursor.advance(&p.channel, p.offset, &p.epoch);
                    let mut text = String::with_capacity(prefix.len() + self.cursor.len_hint() + 4);
                    text.push_str(prefix);
                    text.push_str(",\"");
                    self.cursor.write_str(&mut text);
                    text.push_str("\"]");
                    self.out.push(text);
                    false
                }
                FrameKind::Join | FrameKind::Leave | FrameKind::Unsubscribed => {
                    let name = match p.kind {
                        FrameKind::Join => "herald:join",
                        FrameKind::Leave => "herald:leave",
                        _ => "herald:unsubscribed",
                    };
                    // Built once per event, lent to every subscriber (one copy each: the
                    // engine writes owned packets).
                    let text = match p.cached_ref::<Arc<str>>(Wire::SocketIo, |p| {
                        Arc::from(packet::event(name, &[p.v1()], false))
                    }) {
                        Some(shared) => shared.to_string(),
                        None => packet::event(name, &[p.v1()], false),
                    };
                    self.out.push(text);
                    if p.kind == FrameKind::Unsubscribed {
                        // Nothing of this session may be recovered any more: no state is
                        // written under the pid from now on, so a reconnect finds only what
                        // predates the gap (which cannot resume) or nothing.
                        self.lost_continuity = true;
                        self.pid = None;
                        self.cursor.forget(&p.channel);
                        self.floors.forget(&p.channel);
                        return false;
                    }
                    false
                }
                _ => false,
            },
            Outgoing::Own(o) => {
                self.cursor.apply(&o.cursor);
                let changed = self.floors.apply(&o.cursor);
                match o.kind {
                    FrameKind::Welcome => {
                        let reply = self.connect_reply(&o.json);
                        self.out.push(reply);
                    }
                    FrameKind::Reply => {
                        #[derive(Deserialize)]
                        struct Id {
                            id: u64,
                        }
                        if let Ok(Id { id }) = serde_json::from_str::<Id>(&o.json) {
                            self.out.push(packet::ack(id, &o.json));
                        }
                    }
                    FrameKind::Error => {
                        self.out
                            .push(packet::event("herald:error", &[&o.json], false))
                    }
                    FrameKind::Ping => self.out.push("2".into()),
                    // The session ended one subscription itself (its token ran out): the
                    // others, and the recovery state under the pid, carry on — unlike an
                    // eviction for lost continuity, which arrives as a shared frame.
                    FrameKind::Unsubscribed => {
                        self.out
                            .push(packet::event("herald:unsubscribed", &[&o.json], false))
                    }
                    _ => {}
                }
                changed
            }
        }
    }

    /// One Socket.IO packet from the client, in session terms. `None`: nothing for the
    /// session (an ack of ours, an attachment header handled here).
    fn inbound(&mut self, message: &str) -> Option<Inbound> {
        let Ok(p) = parse_socketio(message) else {
            return Some(Inbound::Violation(Goodbye::NotJson));
        };
        if p.namespace != "/" {
            // Node: a packet for a namespace the client is not connected to is an invalid
            // state, and the client is closed.
            return Some(Inbound::Violation(Goodbye::NotJson));
        }
        match p.kind {
            Kind::Event => Some(command(&self.node, p.id, p.data.unwrap_or("[]"))),
            Kind::BinaryEvent | Kind::BinaryAck => {
                self.attachments += p.attachments;
                match (p.kind, p.id) {
                    (Kind::BinaryEvent, Some(id)) => Some(Inbound::BadRequest {
                        id: Some(id),
                        message: "binary attachments cannot satisfy a JSON Schema: send JSON"
                            .into(),
                    }),
                    (Kind::BinaryEvent, None) => Some(Inbound::Violation(Goodbye::Binary)),
                    // An ack the server never asked for: dropped.
                    _ => None,
                }
            }
            Kind::Disconnect => {
                self.left = true;
                Some(Inbound::Closed)
            }
            Kind::Ack => None,
            // A second CONNECT, or a CONNECT_ERROR from a client: Node's "invalid state".
            Kind::Connect | Kind::ConnectError => Some(Inbound::Violation(Goodbye::NotJson)),
        }
    }
}

/// Where each resumed channel starts: the client's cursor entry when it is at or past the
/// position the channel was subscribed at (same epoch), else that position — a channel the
/// cursor does not cover had no publication reach the client since it was subscribed.
fn resume_positions(
    floors: Vec<(String, u64, String)>,
    held: &[(String, Since)],
) -> Vec<(String, Since)> {
    floors
        .into_iter()
        .map(|(channel, offset, epoch)| {
            let since = held
                .iter()
                .find(|(c, s)| *c == channel && s.epoch == epoch && s.offset >= offset)
                .map(|(_, s)| s.clone())
                .unwrap_or(Since { offset, epoch });
            (channel, since)
        })
        .collect()
}

/// The shared part of a publication's EVENT, built once per publication: `42["<event>",
/// <data>,{"channel","offset","epoch","from"}` — each subscriber appends its cursor and `]`.
fn publication_prefix(node: &Node, p: &herald_node::Prepared) -> String {
    let data = p.data.as_deref().map_or("null", RawValue::get);
    let event = node
        .config
        .registry
        .resolve(&p.channel)
        .map(|(d, _)| d.socketio_event.name(&p.channel, data).into_owned())
        .unwrap_or_else(|_| p.channel.to_string());
    let mut meta = String::with_capacity(64 + p.channel.len());
    meta.push_str("{\"channel\":");
    packet::push_json_str(&mut meta, &p.channel);
    meta.push_str(",\"offset\":");
    meta.push_str(&p.offset.to_string());
    meta.push_str(",\"epoch\":");
    packet::push_json_str(&mut meta, &p.epoch);
    meta.push_str(",\"from\":");
    meta.push_str(
        p.from
            .as_deref()
            .map_or(r#"{"server":true}"#, RawValue::get),
    );
    meta.push('}');
    packet::event(&event, &[data, &meta], true)
}

/// An EVENT from the client as a protocol v1 command (docs/socketio.md, "Commands").
fn command(node: &Node, id: Option<u64>, data: &str) -> Inbound {
    let bad = |message: String| Inbound::BadRequest { id, message };
    // One rule for every way a publication enters (`herald_core::input`): no repeated keys.
    if let Err(KeyCheckError::Duplicate(d)) = check_unique_keys(data) {
        return bad(d.to_string());
    }
    let event = match parse_event(data) {
        Ok(e) => e,
        Err(e) => return bad(e.0.to_owned()),
    };
    let arg = event.args.first().map_or("null", |a| a.get());
    fn read<'a, T: Deserialize<'a>>(name: &str, arg: &'a str) -> Result<T, String> {
        serde_json::from_str(arg).map_err(|e| format!("{name}: {e}"))
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Subscribe {
        channel: String,
        #[serde(default)]
        since: Option<Since>,
        #[serde(default)]
        token: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rpc {
        method: String,
        data: RawJson,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SubRefresh {
        channel: String,
        token: String,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Channel {
        channel: String,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Publish {
        channel: String,
        data: RawJson,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Refresh {
        token: String,
    }
    let frame = match event.name.as_str() {
        "subscribe" => read::<Subscribe>("subscribe", arg).map(|s| ClientFrame::Subscribe {
            id,
            channel: s.channel,
            since: s.since,
            token: s.token,
        }),
        "rpc" => read::<Rpc>("rpc", arg).map(|r| ClientFrame::Rpc {
            id,
            method: r.method,
            data: r.data,
        }),
        "sub_refresh" => read::<SubRefresh>("sub_refresh", arg).map(|r| ClientFrame::SubRefresh {
            id,
            channel: r.channel,
            token: r.token,
        }),
        "unsubscribe" => read::<Channel>("unsubscribe", arg).map(|c| ClientFrame::Unsubscribe {
            id,
            channel: c.channel,
        }),
        "publish" => read::<Publish>("publish", arg).map(|p| ClientFrame::Publish {
            id,
            channel: p.channel,
            data: p.data,
        }),
        "presence" => read::<Channel>("presence", arg).map(|c| ClientFrame::Presence {
            id,
            channel: c.channel,
        }),
        "refresh" => {
            read::<Refresh>("refresh", arg).map(|r| ClientFrame::Refresh { id, token: r.token })
        }
        name if node.config.registry.resolve(name).is_ok() => match event.args.first() {
            Some(data) => Ok(ClientFrame::Publish {
                id,
                channel: name.to_owned(),
                data: RawJson((*data).to_owned()),
            }),
            None => Err(format!(
                "{name}: the payload is missing (emit(\"{name}\", data))"
            )),
        },
        name => Err(format!(
            "unknown event {name:?}: not a command (subscribe, unsubscribe, publish, presence, \
             refresh, sub_refresh, rpc) nor a registered channel"
        )),
    };
    match frame {
        Ok(frame) => Inbound::Frame(frame),
        Err(message) => bad(message),
    }
}

impl Transport for SocketIoTransport {
    const NAME: &'static str = "socketio";

    fn answers_pings(&self) -> bool {
        true
    }

    async fn recv(&mut self) -> Inbound {
        if self.lost_continuity {
            // Unavailable (1013) closes the engine: "transport close", the client reconnects.
            return Inbound::End(Goodbye::Unavailable);
        }
        loop {
            let text = match self.engine.next().await {
                Read::Text(text) => text,
                Read::Binary => {
                    if self.attachments > 0 {
                        self.attachments -= 1;
                        continue;
                    }
                    return Inbound::Violation(Goodbye::Binary);
                }
                Read::Closed => return Inbound::Closed,
                Read::Violation(g) => return Inbound::Violation(g),
                Read::Gone => return Inbound::Gone,
            };
            match parse_engine(&text) {
                Ok(EnginePacket::Pong(_) | EnginePacket::Ping(_)) => return Inbound::Alive,
                Ok(EnginePacket::Noop | EnginePacket::Upgrade) => {}
                Ok(EnginePacket::Close) => return Inbound::Closed,
                Ok(EnginePacket::Binary) => {
                    if self.attachments > 0 {
                        self.attachments -= 1;
                    } else {
                        return Inbound::Violation(Goodbye::Binary);
                    }
                }
                Ok(EnginePacket::Message(m)) => {
                    if let Some(inbound) = self.inbound(m) {
                        return inbound;
                    }
                }
                Err(_) => return Inbound::Violation(Goodbye::NotJson),
            }
        }
    }

    async fn send(&mut self, batch: &mut Vec<Outgoing>) -> io::Result<()> {
        let mut changed = false;
        for item in batch.drain(..) {
            changed |= self.encode(item);
        }
        let mut out = std::mem::take(&mut self.out);
        let written = self.engine.write(&mut out).await;
        self.out = out;
        if changed {
            let persist = self.persist();
            persist.await;
        }
        written
    }

    async fn close(self, ending: Ending) {
        let mut last = Vec::new();
        let mut broken = false;
        if let Ending::Goodbye(g) = ending {
            broken = g.fails_the_websocket();
            last.push(packet::event("herald:disconnect", &[&g.frame()], false));
            // The goodbyes a client must not retry unchanged: DISCONNECT, which the client
            // reports as "io server disconnect" and does not reconnect after. The others close
            // the engine ("transport close"), and the client reconnects and recovers.
            if matches!(
                g,
                Goodbye::Kicked | Goodbye::FrameTooLarge | Goodbye::Binary
            ) {
                last.push("41".into());
            }
        }
        let keep = !self.left && ending != Ending::Goodbye(Goodbye::Kicked);
        if keep {
            // Before the engine closes: a client reconnecting at once finds its state.
            let persist = self.persist();
            persist.await;
        }
        self.engine.close(last, broken).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn since(offset: u64, epoch: &str) -> Since {
        Since {
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn resume_starts_from_the_cursor_or_the_subscription() {
        let floors = vec![
            ("a".to_owned(), 5, "e".to_owned()),
            ("b".to_owned(), 3, "e".to_owned()),
            ("c".to_owned(), 9, "new".to_owned()),
            ("d".to_owned(), 4, "e".to_owned()),
        ];
        let held = vec![
            ("a".to_owned(), since(7, "e")),
            // Older than its subscription (re-subscribed since): the subscription wins.
            ("d".to_owned(), since(2, "e")),
            // Another epoch (the stream was reset since): the subscription wins.
            ("c".to_owned(), since(12, "old")),
            // Not subscribed any more: ignored.
            ("z".to_owned(), since(1, "e")),
        ];
        let r = resume_positions(floors, &held);
        assert_eq!(
            r,
            vec![
                ("a".to_owned(), since(7, "e")),
                ("b".to_owned(), since(3, "e")),
                ("c".to_owned(), since(9, "new")),
                ("d".to_owned(), since(4, "e")),
            ]
        );
    }
}
