//! The ways the gateways under test talk: Herald protocol v1 over WebSocket and over
//! Server-Sent Events, Socket.IO v4 over the websocket transport only (the peers' rooms, and
//! Herald's own `/socket.io/` with its subscribe command), the Pusher Channels protocol
//! (Sockudo), and raw WebSocket text. Each knows its connect request, its handshake up to
//! "ready to receive", and how to tell a publication from a keep-alive.

use serde::{Deserialize, Serialize};

use crate::sse::SseClient;
use crate::wire::{Client, Event, WsError, find};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// Herald protocol v1 on `/v1/ws`, JWT in the Authorization header.
    Herald,
    /// Socket.IO v4: engine.io `EIO=4` over websocket, default namespace, `42[...]` events.
    Socketio,
    /// Raw WebSocket: every text frame is a payload.
    Raw,
    /// Herald protocol v1 over Server-Sent Events on `/v1/sse`, JWT in the Authorization
    /// header; the broadcast channel is asked for at connect (`?channel=`), the per-user
    /// channel is auto-subscribed. Publications are `event: pub` events whose data is the v1
    /// frame.
    Sse,
    /// Herald's Socket.IO v4 endpoint `/socket.io/` (engine.io `EIO=4` over websocket, token
    /// in the query): the per-user channel is auto-subscribed, the broadcast channel is asked
    /// for with a `subscribe` event and its ack (`421[...]` answered by `431[...]`).
    /// Publications are `42["<channel>",data,meta,cursor]` events.
    #[serde(rename = "herald-socketio")]
    HeraldSocketio,
    /// The Pusher Channels protocol, version 7 (Sockudo): `/app/<key>?protocol=7&…`, ready
    /// at `pusher:connection_established`; every connection subscribes to its user's private
    /// channel `private-<user channel prefix>.<user>` (signed by the client with the app
    /// secret, see [`PusherApp::channel_auth`]) and, for broadcast, to the public broadcast
    /// channel, each acknowledged by `pusher_internal:subscription_succeeded`. `pusher:ping`
    /// is answered with `pusher:pong`; any other event is a publication.
    Pusher,
}

/// A Pusher app's credentials (<https://pusher.com/docs/channels/library_auth_reference/>): the
/// key names the app on the WebSocket URL, the secret signs private-channel subscriptions and
/// HTTP API calls. The defaults are those of `bench/peers/sockudo/config.toml`.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct PusherApp {
    #[arg(long = "pusher-app-id", default_value = "bench-app")]
    pub app_id: String,
    #[arg(long = "pusher-key", default_value = "bench-key")]
    pub key: String,
    #[arg(long = "pusher-secret", default_value = "bench-secret")]
    pub secret: String,
}

impl Default for PusherApp {
    fn default() -> Self {
        PusherApp {
            app_id: "bench-app".into(),
            key: "bench-key".into(),
            secret: "bench-secret".into(),
        }
    }
}

impl PusherApp {
    /// The `auth` of a private-channel subscription: `<key>:<hex HMAC-SHA256(secret,
    /// "<socket_id>:<channel>")>` (Pusher's authorization reference, private channels).
    pub fn channel_auth(&self, socket_id: &str, channel: &str) -> String {
        format!(
            "{}:{}",
            self.key,
            hmac_sha256_hex(&self.secret, &format!("{socket_id}:{channel}"))
        )
    }

    /// The path and signed query of an HTTP API call (Pusher's REST API reference,
    /// "Authentication"): `auth_key`, `auth_timestamp` (Unix seconds), `auth_version=1.0` and
    /// `body_md5` (hex MD5 of the body), sorted by key, signed as `auth_signature` = hex
    /// `HMAC-SHA256(secret, "<METHOD>\n<path>\n<query>")`.
    pub fn signed_path(&self, method: &str, path: &str, body: &[u8], unix_secs: u64) -> String {
        use md5::Digest as _;
        let md5 = hex(&md5::Md5::digest(body));
        let query = format!(
            "auth_key={}&auth_timestamp={unix_secs}&auth_version=1.0&body_md5={md5}",
            self.key
        );
        let signature = hmac_sha256_hex(&self.secret, &format!("{method}\n{path}\n{query}"));
        format!("{path}?{query}&auth_signature={signature}")
    }

    /// The user's private channel, the per-user channel every Pusher connection subscribes to.
    pub fn user_channel(prefix: &str, user: &str) -> String {
        format!("private-{prefix}.{user}")
    }
}

fn hmac_sha256_hex(secret: &str, message: &str) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(message.as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What a received text frame is.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Publication,
    /// A keep-alive that must be answered with this text.
    Ping(&'static str),
    Other,
}

impl Dialect {
    /// Path and query of the upgrade (or SSE) request, and its extra headers. `subscribe`
    /// is the broadcast channel, for the dialects that name it in the request; `pusher` names
    /// the app for the Pusher dialect.
    pub fn request(
        self,
        user: &str,
        token: &str,
        subscribe: Option<&str>,
        pusher: &PusherApp,
    ) -> (String, Vec<(String, String)>) {
        match self {
            Dialect::Sse => (
                match subscribe {
                    // Channel names are `[A-Za-z0-9_.-]`: nothing to percent-encode.
                    Some(channel) => format!("/v1/sse?channel={channel}"),
                    None => "/v1/sse".into(),
                },
                vec![("Authorization".into(), format!("Bearer {token}"))],
            ),
            Dialect::Herald => (
                "/v1/ws".into(),
                vec![("Authorization".into(), format!("Bearer {token}"))],
            ),
            Dialect::Socketio => (
                format!("/socket.io/?EIO=4&transport=websocket&token={token}&user={user}"),
                Vec::new(),
            ),
            Dialect::HeraldSocketio => (
                format!("/socket.io/?EIO=4&transport=websocket&token={token}"),
                Vec::new(),
            ),
            Dialect::Raw => (format!("/?token={token}&user={user}"), Vec::new()),
            Dialect::Pusher => (
                format!(
                    "/app/{}?protocol=7&client=herald-bench&version=1",
                    pusher.key
                ),
                Vec::new(),
            ),
        }
    }

    /// Runs the dialect's handshake until publications can arrive. `subscribe` names a channel
    /// to subscribe to explicitly (Herald broadcast, Pusher); the Socket.IO and raw peers put
    /// every connection in the broadcast room and the user's own room at connect. `user_channel`
    /// is what the Pusher dialect subscribes to for the user (its private channel).
    pub async fn handshake(
        self,
        c: &mut Client,
        subscribe: Option<&str>,
        user_channel: &str,
        pusher: &PusherApp,
    ) -> Result<(), WsError> {
        match self {
            Dialect::Pusher => {
                let hello =
                    expect_text(self, c, |t| find(t, CONNECTION_ESTABLISHED).is_some()).await?;
                let socket_id =
                    socket_id(&hello).ok_or(WsError::Protocol("no socket_id in the welcome"))?;
                let auth = pusher.channel_auth(&socket_id, user_channel);
                c.send_text(&format!(
                    r#"{{"event":"pusher:subscribe","data":{{"channel":"{user_channel}","auth":"{auth}"}}}}"#
                ))
                .await?;
                if let Some(channel) = subscribe {
                    c.send_text(&format!(
                        r#"{{"event":"pusher:subscribe","data":{{"channel":"{channel}"}}}}"#
                    ))
                    .await?;
                }
                // One acknowledgement per subscription; a refusal is `pusher:subscription_error`
                // (or `pusher:error`) and ends the handshake.
                for _ in 0..1 + usize::from(subscribe.is_some()) {
                    let reply = expect_text(self, c, |t| {
                        find(t, b"pusher_internal:subscription_succeeded").is_some()
                            || find(t, b"pusher:subscription_error").is_some()
                            || find(t, b"\"pusher:error\"").is_some()
                    })
                    .await?;
                    if !reply.contains("pusher_internal:subscription_succeeded") {
                        return Err(WsError::Protocol("subscribe refused"));
                    }
                }
                Ok(())
            }
            Dialect::Raw => Ok(()),
            Dialect::Sse => Err(WsError::Protocol("SSE is not a WebSocket dialect")),
            Dialect::Herald => {
                expect_text(self, c, |t| t.starts_with(br#"{"type":"welcome""#)).await?;
                if let Some(channel) = subscribe {
                    c.send_text(&format!(
                        r#"{{"type":"subscribe","id":1,"channel":"{channel}"}}"#
                    ))
                    .await?;
                    let reply =
                        expect_text(self, c, |t| t.starts_with(br#"{"type":"reply""#)).await?;
                    if !reply.contains(r#""ok":true"#) {
                        return Err(WsError::Protocol("subscribe refused"));
                    }
                }
                Ok(())
            }
            Dialect::Socketio | Dialect::HeraldSocketio => {
                expect_text(self, c, |t| t.starts_with(b"0{")).await?;
                c.send_text("40").await?;
                let ack =
                    expect_text(self, c, |t| t.starts_with(b"40") || t.starts_with(b"44")).await?;
                if ack.starts_with("44") {
                    return Err(WsError::Protocol("namespace connect refused"));
                }
                if let (Dialect::HeraldSocketio, Some(channel)) = (self, subscribe) {
                    // A command is an event with ack id 1; its ack carries the v1 reply body.
                    c.send_text(&format!(r#"421["subscribe",{{"channel":"{channel}"}}]"#))
                        .await?;
                    let reply = expect_text(self, c, |t| t.starts_with(b"431[")).await?;
                    if !reply.contains(r#""ok":true"#) {
                        return Err(WsError::Protocol("subscribe refused"));
                    }
                }
                Ok(())
            }
        }
    }

    /// What one received text frame (for SSE: one event's data) is.
    pub fn classify(self, text: &[u8]) -> Incoming {
        match self {
            Dialect::Pusher => {
                // Protocol events are named `pusher:…` and `pusher_internal:…`; the
                // publications are the app's own event (`bench`).
                if find(text, br#""pusher:ping""#).is_some() {
                    Incoming::Ping(r#"{"event":"pusher:pong","data":{}}"#)
                } else if find(text, br#""event":"pusher"#).is_some() {
                    Incoming::Other
                } else {
                    Incoming::Publication
                }
            }
            Dialect::Raw => Incoming::Publication,
            Dialect::Herald | Dialect::Sse => {
                if text.starts_with(br#"{"type":"pub""#) {
                    Incoming::Publication
                } else if text.starts_with(br#"{"type":"ping""#) {
                    Incoming::Ping(r#"{"type":"pong"}"#)
                } else {
                    Incoming::Other
                }
            }
            Dialect::Socketio | Dialect::HeraldSocketio => {
                // `42[` is an event without ack id: what both servers push. Acks are `43`.
                if text.starts_with(b"42") {
                    Incoming::Publication
                } else if text == b"2" {
                    Incoming::Ping("3")
                } else {
                    Incoming::Other
                }
            }
        }
    }
}

const CONNECTION_ESTABLISHED: &[u8] = b"pusher:connection_established";

/// The `socket_id` in `pusher:connection_established`, whose `data` is a JSON object encoded
/// as a string: `"data":"{\"socket_id\":\"123.456\",\"activity_timeout\":120}"` (Pusher
/// protocol, connection events). Socket ids are digits and one dot.
fn socket_id(hello: &str) -> Option<String> {
    let at = hello.find("socket_id")? + "socket_id".len();
    let rest = hello[at..].trim_start_matches(['\\', '"', ':', ' ']);
    let id: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!id.is_empty()).then_some(id)
}

/// The SSE handshake: the stream is ready once `welcome` arrives. A channel asked for in the
/// request and refused comes as an `error` event instead of being in the welcome's list.
pub async fn sse_handshake(c: &mut SseClient, subscribe: Option<&str>) -> Result<(), WsError> {
    loop {
        let ev = c.next().await?;
        match ev.kind {
            b"welcome" => {
                if let Some(channel) = subscribe {
                    let want = format!(r#""channel":"{channel}""#);
                    if crate::wire::find(ev.data, want.as_bytes()).is_none() {
                        return Err(WsError::Protocol("subscribe refused"));
                    }
                }
                return Ok(());
            }
            b"disconnect" => return Err(WsError::Protocol("disconnected during handshake")),
            _ => {}
        }
    }
}

/// Reads frames until a text frame satisfies `want`, answering keep-alives on the way.
async fn expect_text(
    d: Dialect,
    c: &mut Client,
    want: impl Fn(&[u8]) -> bool,
) -> Result<String, WsError> {
    loop {
        let reply: Option<(u8, Vec<u8>)> = match c.next().await? {
            Event::Text(t) if want(t) => return Ok(String::from_utf8_lossy(t).into_owned()),
            Event::Text(t) => match d.classify(t) {
                Incoming::Ping(pong) => Some((0x1, pong.as_bytes().to_vec())),
                _ => None,
            },
            Event::Ping(p) => Some((0xA, p.to_vec())),
            Event::Binary(_) => None,
            Event::Close(_) => return Err(WsError::Protocol("closed during handshake")),
        };
        if let Some((op, bytes)) = reply {
            c.send(op, &bytes).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herald_socketio_frames_are_told_apart() {
        let d = Dialect::HeraldSocketio;
        let publication = br#"42["bench.fanout",{"s":1,"t":2,"k":0,"p":""},{"channel":"bench.fanout","offset":1},"e:1"]"#;
        assert_eq!(d.classify(publication), Incoming::Publication);
        assert_eq!(d.classify(b"2"), Incoming::Ping("3"));
        assert_eq!(
            d.classify(br#"431[{"type":"reply","id":1,"ok":true}]"#),
            Incoming::Other
        );
        assert_eq!(d.classify(br#"40{"sid":"a","pid":"b"}"#), Incoming::Other);
        // The stamp is found inside the event's data, ahead of Herald's meta object.
        let stamp = crate::payload::parse(publication).expect("stamp");
        assert_eq!((stamp.seq, stamp.intended_ns, stamp.step), (1, 2, 0));
    }

    #[test]
    fn herald_socketio_puts_the_token_in_the_query() {
        let (path, headers) = Dialect::HeraldSocketio.request(
            "u1",
            "TOKEN",
            Some("bench.fanout"),
            &PusherApp::default(),
        );
        assert_eq!(path, "/socket.io/?EIO=4&transport=websocket&token=TOKEN");
        assert!(headers.is_empty());
    }

    #[test]
    fn pusher_frames_are_told_apart_and_the_socket_id_is_read() {
        let d = Dialect::Pusher;
        let hello = r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"123.456\",\"activity_timeout\":120}"}"#;
        assert_eq!(socket_id(hello).as_deref(), Some("123.456"));
        assert_eq!(d.classify(hello.as_bytes()), Incoming::Other);
        assert_eq!(
            d.classify(br#"{"event":"pusher:ping","data":{}}"#),
            Incoming::Ping(r#"{"event":"pusher:pong","data":{}}"#)
        );
        assert_eq!(
            d.classify(br#"{"event":"pusher_internal:subscription_succeeded","channel":"c"}"#),
            Incoming::Other
        );
        let publication = br#"{"event":"bench","channel":"bench.fanout","data":"{\"s\":1,\"t\":2,\"k\":0,\"p\":\"\"}"}"#;
        assert_eq!(d.classify(publication), Incoming::Publication);
        let stamp = crate::payload::parse(publication).expect("stamp");
        assert_eq!((stamp.seq, stamp.intended_ns, stamp.step), (1, 2, 0));
    }

    #[test]
    fn pusher_signatures_have_the_documented_shape() {
        let app = PusherApp::default();
        let auth = app.channel_auth("123.456", "private-bench.user.u1");
        let (key, sig) = auth.split_once(':').expect("key:signature");
        assert_eq!(key, "bench-key");
        assert_eq!(sig.len(), 64, "hex SHA-256");
        let path = app.signed_path("POST", "/apps/bench-app/events", b"{}", 1_700_000_000);
        assert!(
            path.starts_with(
                "/apps/bench-app/events?auth_key=bench-key&auth_timestamp=1700000000&auth_version=1.0&body_md5=99914b932bd37a50b983c5e7c90ae93b&auth_signature="
            ),
            "{path}"
        );
    }
}
