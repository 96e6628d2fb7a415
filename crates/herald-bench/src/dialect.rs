//! The ways the gateways under test talk: Herald protocol v1 over WebSocket and over
//! Server-Sent Events, Socket.IO v4 over the websocket transport only (the peers' rooms, and
//! Herald's own `/socket.io/` with its subscribe command), and raw WebSocket text. Each knows
//! its connect request, its handshake up to "ready to receive", and how to tell a publication
//! from a keep-alive.

use serde::{Deserialize, Serialize};

use crate::sse::SseClient;
use crate::wire::{Client, Event, WsError};

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
    /// is the broadcast channel, for the dialects that name it in the request.
    pub fn request(
        self,
        user: &str,
        token: &str,
        subscribe: Option<&str>,
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
        }
    }

    /// Runs the dialect's handshake until publications can arrive. `subscribe` names a channel
    /// to subscribe to explicitly (Herald broadcast); the peers put every connection in the
    /// broadcast room and the user's own room at connect.
    pub async fn handshake(self, c: &mut Client, subscribe: Option<&str>) -> Result<(), WsError> {
        match self {
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
        let (path, headers) = Dialect::HeraldSocketio.request("u1", "TOKEN", Some("bench.fanout"));
        assert_eq!(path, "/socket.io/?EIO=4&transport=websocket&token=TOKEN");
        assert!(headers.is_empty());
    }
}
