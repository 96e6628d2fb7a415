//! An echo server over Herald's WebSocket transport, for the Autobahn conformance suite only
//! (`scripts/autobahn.sh`). The product endpoint `/v1/ws` speaks protocol v1, not echo, so
//! this example upgrades with the same handshake and socket ([`ws::upgrade_key`],
//! [`ws::Socket`]), reads with the same codec and classification ([`ws::Socket::read`],
//! Herald's own RFC 6455 framing) and ends connections
//! with the same close logic ([`ws::finish`]) as `WsTransport`; only the middle differs: text
//! and binary messages are sent back instead of being handed to a session. It is an example so
//! that it is built by `cargo test` and never part of the `herald` binary.
//!
//! Usage: `cargo run -p herald-server --example ws_echo -- [ADDR]` (default `127.0.0.1:9001`);
//! it prints `listening on ADDR` once bound.

use axum::Router;
use axum::extract::Request;
use axum::http::header;
use axum::response::Response;
use axum::routing::get;
use herald_core::config::{Limits, WebSocketConfig};
use herald_node::Ending;
use herald_server::transport::deflate::Deflate;
use herald_server::transport::framing::OpCode;
use herald_server::transport::ws::{self, Upgrade, WsRead};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let app = Router::new().route("/", get(upgrade));
    axum::serve(listener, app).await
}

async fn upgrade(mut req: Request) -> Response {
    let key = match ws::upgrade_key(req.headers()) {
        Upgrade::Key(key) => key,
        Upgrade::Bad(res) => return res,
        Upgrade::No => return Response::new("send an upgrade".into()),
    };
    // permessage-deflate whenever the client offers it (Autobahn 12.*, 13.*), every message
    // compressed: the product's negotiation and transforms, with the threshold at 0.
    let config = WebSocketConfig {
        permessage_deflate: true,
        deflate_min_bytes: 0,
        ..WebSocketConfig::default()
    };
    let (deflate, extensions) = Deflate::negotiate(req.headers(), &config).unzip();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        // The product's default frame limit (128 KiB): Autobahn sections 1–7 stay under it;
        // the large-message sections (9, 10, 12, 13) are not run.
        let mut socket = ws::Socket::new(upgraded, Limits::default().max_frame_bytes);
        if deflate.is_some() {
            socket = socket.permessage_deflate();
        }
        echo(socket, deflate).await;
    });
    let mut res = ws::switching_protocols(&key);
    if let Some(extensions) = extensions {
        res.headers_mut()
            .insert(header::SEC_WEBSOCKET_EXTENSIONS, extensions);
    }
    res
}

/// Echoes until the connection ends, then closes it the product's way.
async fn echo(mut socket: ws::Socket, deflate: Option<Deflate>) {
    let ending = loop {
        let (opcode, data) = match socket.read().await {
            WsRead::Text(text) => (OpCode::Text, text.into_bytes()),
            WsRead::Binary(bytes) => (OpCode::Binary, bytes),
            WsRead::Control => continue,
            WsRead::Closed => break Ending::PeerClosed,
            WsRead::Violation(g) => break Ending::Goodbye(g),
            WsRead::Gone => break Ending::Gone,
        };
        match deflate.and_then(|d| d.own(&data)) {
            Some(packed) => socket.queue(opcode, true, &packed),
            None => socket.queue(opcode, false, &data),
        }
        if socket.flush().await.is_err() {
            break Ending::Gone;
        }
    };
    ws::finish(&mut socket, ending).await;
}
