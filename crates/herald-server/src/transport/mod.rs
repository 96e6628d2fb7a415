//! The HTTP doors into the session core: each transport admits its request through gate 1
//! ([`herald_node::Node::admit`]), translates its wire format and writes what the session
//! queues. Nothing protocol-level lives here.
//!
//! - [`ws`]: protocol v1 over WebSocket, `GET /v1/ws`, on Herald's own RFC 6455 [`framing`].
//! - [`deflate`]: `permessage-deflate` (RFC 7692) for it: negotiation, compression shared per
//!   publication, bounded inflation.
//! - [`sse`]: Server-Sent Events (and NDJSON), `GET /v1/sse` and `POST /v1/sse/{session}`.
//! - [`socketio`]: Socket.IO v4 (Engine.IO v4 polling and WebSocket), `/socket.io/`.
//! - [`cursor`]: the all-channel resume cursor SSE and Socket.IO hand their clients.

pub mod cursor;
pub mod deflate;
pub mod framing;
pub mod socketio;
pub mod sse;
pub mod ws;

use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use herald_node::{Handshake, Refusal};

use crate::api::ApiError;

/// Gate 1's view of an HTTP request: every `Authorization` and `Cookie` value, `Origin`,
/// `Host`, the `token` query parameter, and the TCP peer when known.
pub fn handshake<'a>(
    headers: &'a HeaderMap,
    query_token: Option<&'a str>,
    remote: Option<std::net::SocketAddr>,
) -> Handshake<'a> {
    let all = |name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
    };
    let one = |name| headers.get(name).and_then(|v| v.to_str().ok());
    Handshake {
        authorization: all(header::AUTHORIZATION),
        auth_token: None,
        query_token,
        cookies: all(header::COOKIE),
        origin: one(header::ORIGIN),
        host: one(header::HOST),
        headers: headers
            .iter()
            .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
            .collect(),
        remote,
    }
}

/// A gate 1 refusal as the same HTTP status and JSON body on every door.
pub fn refused(r: Refusal) -> Response {
    ApiError(r.0).into_response()
}

/// The decoded pairs of a query string (`application/x-www-form-urlencoded`), in order;
/// repeated keys stay repeated.
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The first value of `key`, if any.
pub fn query_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}
