//! Socket.IO v4 compatibility: `/socket.io/` speaks Engine.IO v4 and Socket.IO v5, so existing
//! `socket.io-client` code connects to Herald unchanged (docs/socketio.md).
//!
//! - [`packet`]: the Engine.IO and Socket.IO codecs.
//! - [`engine`]: the Engine.IO wire (polling, WebSocket, the upgrade) and the engines of this
//!   node by `sid`.
//! - `connection`: CONNECT (gate 1 with the packet's `auth`, recovery by `pid`), then the
//!   session core with [`connection::SocketIoTransport`] translating between Socket.IO events
//!   and protocol v1 frames.
//!
//! This module is the HTTP door: it checks the Engine.IO query (`EIO`, `transport`, `sid`)
//! and answers errors with Engine.IO's codes and Node's messages, CORS for polling from other
//! origins, and routes each request: a handshake creates an engine, a poll or POST reaches
//! its engine, a WebSocket request either starts an engine or upgrades one.

pub mod connection;
pub mod engine;
pub mod packet;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::broker::random_id;
use herald_node::Node;
use herald_node::admission::origin_matches;

use super::framing::OpCode;
use super::ws::{self, Upgrade, WsRead};
use super::{query_pairs, query_value};
pub use engine::Engines;

/// How long the polling → WebSocket probe may take (Node's `upgradeTimeout`).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// Engine.IO's HTTP error codes (engine.io `Server.errors`), each with Node's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EioError {
    /// 0: `transport` is neither `polling` nor `websocket`.
    UnknownTransport = 0,
    /// 1: no engine with this `sid` on this node.
    UnknownSid = 1,
    /// 2: a handshake that is not a GET.
    BadHandshakeMethod = 2,
    /// 3: anything else malformed.
    BadRequest = 3,
    /// 4: the origin is not allowed.
    Forbidden = 4,
    /// 5: `EIO` is not 4.
    UnsupportedProtocolVersion = 5,
}

impl EioError {
    /// Node's message for the code.
    pub fn message(self) -> &'static str {
        match self {
            EioError::UnknownTransport => "Transport unknown",
            EioError::UnknownSid => "Session ID unknown",
            EioError::BadHandshakeMethod => "Bad handshake method",
            EioError::BadRequest => "Bad request",
            EioError::Forbidden => "Forbidden",
            EioError::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }
}

impl IntoResponse for EioError {
    fn into_response(self) -> Response {
        let status = if self == EioError::Forbidden {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::BAD_REQUEST
        };
        let body = format!(
            r#"{{"code":{},"message":"{}"}}"#,
            self as u8,
            self.message()
        );
        (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response()
    }
}

/// What gate 1 needs from the request that opened the engine, kept until CONNECT (the
/// token may come later, in the CONNECT packet's `auth`).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    authorization: Vec<String>,
    query_token: Option<String>,
    cookies: Vec<String>,
    origin: Option<String>,
    host: Option<String>,
    /// Every header (until CONNECT), for a connect proxy's `headers`.
    headers: Vec<(String, String)>,
    /// The TCP peer of the handshake request.
    remote: Option<std::net::SocketAddr>,
}

impl Credentials {
    fn of(
        headers: &HeaderMap,
        query_token: Option<&str>,
        remote: Option<std::net::SocketAddr>,
    ) -> Self {
        let h = super::handshake(headers, query_token, remote);
        Self {
            authorization: h.authorization.iter().map(|s| (*s).to_owned()).collect(),
            query_token: h.query_token.map(str::to_owned),
            cookies: h.cookies.iter().map(|s| (*s).to_owned()).collect(),
            origin: h.origin.map(str::to_owned),
            host: h.host.map(str::to_owned),
            headers: h
                .headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            remote,
        }
    }

    /// Gate 1's view, with the CONNECT packet's `auth.token` first.
    pub fn handshake<'a>(&'a self, auth_token: Option<&'a str>) -> herald_node::Handshake<'a> {
        herald_node::Handshake {
            authorization: self.authorization.iter().map(String::as_str).collect(),
            auth_token,
            query_token: self.query_token.as_deref(),
            cookies: self.cookies.iter().map(String::as_str).collect(),
            origin: self.origin.as_deref(),
            host: self.host.as_deref(),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            remote: self.remote,
        }
    }
}

/// The Engine.IO open packet: `0{"sid","upgrades","pingInterval","pingTimeout","maxPayload"}`.
fn open_packet(node: &Node, sid: &str, upgrades: bool) -> String {
    let server = &node.config.server;
    format!(
        r#"0{{"sid":"{sid}","upgrades":[{}],"pingInterval":{},"pingTimeout":{},"maxPayload":{}}}"#,
        if upgrades { r#""websocket""# } else { "" },
        server.ping_interval.as_millis(),
        server.pong_timeout.as_millis(),
        node.config.limits.max_frame_bytes
    )
}

/// The CORS answer for `origin`: allowed when `server.allowed_origins` lists it.
fn allowed_origin(node: &Node, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    node.config
        .server
        .allowed_origins
        .iter()
        .any(|a| origin_matches(a, text))
        .then(|| origin.clone())
}

fn with_cors(mut res: Response, origin: Option<HeaderValue>) -> Response {
    if let Some(origin) = origin {
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    res
}

fn text(body: String, content_type: &'static str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// `OPTIONS /socket.io/`: the CORS preflight of a polling request from another origin.
pub async fn preflight(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let origin = allowed_origin(&node, &headers);
    let allowed = origin.is_some();
    let mut res = with_cors(StatusCode::NO_CONTENT.into_response(), origin);
    if allowed {
        let h = res.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    res
}

/// `GET` and `POST /socket.io/`: every Engine.IO request.
pub async fn handle(
    State(node): State<Arc<Node>>,
    Extension(engines): Extension<Arc<Engines>>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    let origin = allowed_origin(&node, req.headers());
    let res = route(&node, &engines, query.as_deref(), req).await;
    with_cors(res, origin)
}

async fn route(
    node: &Arc<Node>,
    engines: &Arc<Engines>,
    query: Option<&str>,
    mut req: Request,
) -> Response {
    let pairs = query_pairs(query);
    if query_value(&pairs, "EIO") != Some("4") {
        return EioError::UnsupportedProtocolVersion.into_response();
    }
    let websocket = match query_value(&pairs, "transport") {
        Some("polling") => false,
        Some("websocket") => true,
        _ => return EioError::UnknownTransport.into_response(),
    };
    let allowed = &node.config.server.allowed_origins;
    if let Some(origin) = req.headers().get(header::ORIGIN)
        && !allowed.is_empty()
        && !origin
            .to_str()
            .is_ok_and(|o| allowed.iter().any(|a| origin_matches(a, o)))
    {
        return EioError::Forbidden.into_response();
    }
    let upgrade = if websocket {
        match ws::upgrade_key(req.headers()) {
            Upgrade::No => return EioError::BadRequest.into_response(),
            Upgrade::Bad(res) => return res,
            Upgrade::Key(key) => Some(key),
        }
    } else {
        None
    };
    let Some(sid) = query_value(&pairs, "sid") else {
        if req.method() != Method::GET {
            return EioError::BadHandshakeMethod.into_response();
        }
        let remote = req.extensions().get::<crate::Peer>().map(|p| p.0);
        let creds = Credentials::of(req.headers(), query_value(&pairs, "token"), remote);
        return match upgrade {
            Some(key) => {
                let on_upgrade = hyper::upgrade::on(&mut req);
                let node = node.clone();
                let engines = engines.clone();
                node.tasks.clone().spawn(async move {
                    let Ok(upgraded) = on_upgrade.await else {
                        return;
                    };
                    let mut socket = ws::Socket::new(upgraded, node.config.limits.max_frame_bytes);
                    let open = open_packet(&node, &random_id(20), false);
                    socket.queue(OpCode::Text, false, open.as_bytes());
                    if socket.flush().await.is_err() {
                        return;
                    }
                    connection::run(node, engines, engine::Engine::websocket(socket), creds).await;
                });
                ws::switching_protocols(&key)
            }
            None => {
                let sid: Arc<str> = Arc::from(random_id(20));
                let (engine, _) = engine::Engine::polling(engines, sid.clone());
                node.tasks.spawn(connection::run(
                    node.clone(),
                    engines.clone(),
                    engine,
                    creds,
                ));
                text(open_packet(node, &sid, true), "text/plain; charset=UTF-8")
            }
        };
    };
    let Some(shared) = engines.get(sid) else {
        return EioError::UnknownSid.into_response();
    };
    match (upgrade, req.method().clone()) {
        (Some(key), Method::GET) => {
            if shared.on_websocket() {
                return EioError::BadRequest.into_response();
            }
            let on_upgrade = hyper::upgrade::on(&mut req);
            let max_frame = node.config.limits.max_frame_bytes;
            node.tasks.spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let socket = ws::Socket::new(upgraded, max_frame);
                probe(shared, socket).await;
            });
            ws::switching_protocols(&key)
        }
        (None, Method::GET) => match shared.poll().await {
            engine::Poll::Payload(body) => text(body, "text/plain; charset=UTF-8"),
            engine::Poll::Overlap | engine::Poll::Mismatch => EioError::BadRequest.into_response(),
        },
        (None, Method::POST) => {
            let bytes =
                match crate::api::read_body(req.into_body(), node.config.limits.max_frame_bytes)
                    .await
                {
                    Ok(b) => b,
                    // Node answers an oversize body 413 and keeps the engine.
                    Err(e) => return e.into_response(),
                };
            let Ok(body) = String::from_utf8(bytes.to_vec()) else {
                shared.closed.cancel();
                return EioError::BadRequest.into_response();
            };
            match shared.post(body).await {
                // text/html, as Node answers (text/plain makes some user agents download it).
                Ok(()) => text("ok".into(), "text/html"),
                Err(engine::PostError::Gone) => EioError::UnknownSid.into_response(),
                Err(_) => EioError::BadRequest.into_response(),
            }
        }
        _ => EioError::BadRequest.into_response(),
    }
}

/// The polling → WebSocket probe, on the upgrade request's own task: `2probe` → `3probe`,
/// pending polls answered with a noop, then `5` hands the socket to the engine. Anything
/// else, or [`UPGRADE_TIMEOUT`], drops the socket and polling goes on.
async fn probe(shared: Arc<engine::Shared>, mut socket: ws::Socket) {
    let handshake = async {
        match socket.read().await {
            WsRead::Text(t) if t == "2probe" => {}
            _ => return false,
        }
        socket.queue(OpCode::Text, false, b"3probe");
        if socket.flush().await.is_err() {
            return false;
        }
        shared.begin_upgrade();
        loop {
            match socket.read().await {
                WsRead::Text(t) if t == "5" => return true,
                WsRead::Control => {}
                _ => return false,
            }
        }
    };
    let upgraded = tokio::select! {
        ok = tokio::time::timeout(UPGRADE_TIMEOUT, handshake) => ok.unwrap_or(false),
        _ = shared.closed.cancelled() => false,
    };
    if upgraded {
        shared.complete_upgrade(socket);
    } else {
        shared.cancel_upgrade();
    }
}
