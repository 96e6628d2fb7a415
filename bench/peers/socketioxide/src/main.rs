//! Peer for herald-bench: socketioxide (the Rust Socket.IO server) with rooms, doing exactly
//! what the Node peer `bench/peers/socketio/server.js` does, so the two compare as servers and
//! not as applications. Every connection joins the broadcast room and its own user room; the
//! JWT (HS256) is verified in a connect middleware, like an app would.
//!
//! ```text
//! /socket.io/?EIO=4&transport=websocket&token=<jwt>   (or the token in the CONNECT auth)
//! POST /publish          body (JSON) emitted as event "pub" to room "bench.fanout"
//! POST /publish/batch    [{"user","data"}] each emitted to room "user:<user>"
//! ```
//!
//! Settings come from the environment as for the Node peers: `PORT` (0: any), `HOST`,
//! `JWT_SECRET`, `ROOM`. The first line on stdout is `listening on http://HOST:PORT`, which
//! is how the suite learns the address.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::handler::ConnectHandler;

/// What every handler needs: the room names and the key tokens are checked with.
struct Peer {
    io: SocketIo,
    room: String,
    key: DecodingKey,
    validation: Validation,
}

/// The verified user of a socket, set by the middleware, read by the connect handler.
#[derive(Clone)]
struct User(String);

/// The CONNECT packet's auth object (`io(url, { auth: { token } })`).
#[derive(Deserialize)]
struct Auth {
    token: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Value,
}

#[derive(Deserialize)]
struct Item {
    user: String,
    data: Value,
}

/// The refusal the client sees as `connect_error` with this message.
#[derive(Debug)]
struct Unauthorized;

impl std::fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unauthorized")
    }
}

/// `token=` from the handshake request's query string, when the auth object has none.
fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let secret = env("JWT_SECRET", "bench-secret");
    let room = env("ROOM", "bench.fanout");
    let host = env("HOST", "127.0.0.1");
    let port = env("PORT", "0");

    let (layer, io) = SocketIo::new_layer();
    let mut validation = Validation::new(Algorithm::HS256);
    // Like jsonwebtoken in Node: `exp` is checked when present; the bench's tokens carry it.
    validation.required_spec_claims.clear();
    let peer = Arc::new(Peer {
        io: io.clone(),
        room,
        key: DecodingKey::from_secret(secret.as_bytes()),
        validation,
    });

    let auth = {
        let peer = peer.clone();
        move |s: SocketRef, TryData(auth): TryData<Auth>| {
            let peer = peer.clone();
            async move {
                let from_auth = auth.ok().and_then(|a| a.token);
                let token = match &from_auth {
                    Some(t) => t.as_str(),
                    None => query_token(s.req_parts().uri.query()).unwrap_or_default(),
                };
                let data = jsonwebtoken::decode::<Claims>(token, &peer.key, &peer.validation)
                    .map_err(|_| Unauthorized)?;
                let user = match data.claims.sub {
                    Value::String(sub) => sub,
                    other => other.to_string(),
                };
                s.extensions.insert(User(user));
                Ok::<(), Unauthorized>(())
            }
        }
    };
    let connected = {
        let peer = peer.clone();
        move |s: SocketRef| {
            let peer = peer.clone();
            async move {
                s.join(peer.room.clone());
                if let Some(User(user)) = s.extensions.get::<User>() {
                    s.join(format!("user:{user}"));
                }
            }
        }
    };
    io.ns("/", connected.with(auth));

    let app = Router::new()
        .route("/publish", post(publish))
        .route("/publish/batch", post(publish_batch))
        .with_state(peer)
        .layer(layer);

    let listener = tokio::net::TcpListener::bind(format!("{host}:{port}")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}

/// Parses the body as JSON, as the Node peer's `JSON.parse` does, and emits it to the room.
async fn publish(State(peer): State<Arc<Peer>>, body: String) -> (StatusCode, &'static str) {
    let Ok(data) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "{}");
    };
    // Like `io.to(room).emit` in Node, a socket that cannot take the packet (its buffer is
    // full) does not fail the request: the receivers count what is missing.
    let _ = peer.io.to(peer.room.clone()).emit("pub", &data).await;
    (StatusCode::OK, "{}")
}

async fn publish_batch(State(peer): State<Arc<Peer>>, body: String) -> (StatusCode, &'static str) {
    let Ok(items) = serde_json::from_str::<Vec<Item>>(&body) else {
        return (StatusCode::BAD_REQUEST, "{}");
    };
    for item in items {
        // A user room with nobody in it is not an error, as in Socket.IO.
        let _ = peer
            .io
            .to(format!("user:{}", item.user))
            .emit("pub", &item.data)
            .await;
    }
    (StatusCode::OK, "{}")
}
