//! The WebSocket closing handshake on every path that ends a connection (RFC 6455 §5.5.1,
//! §7.1.1), and control frames under the frame-rate limit.
//!
//! A clean close means: the peer receives a close frame with the documented code, answers with
//! its own, and only then sees the TCP connection end. A server that drops the socket instead
//! (or while unread client data sits in its buffer, which makes the kernel send a reset) makes
//! client libraries report 1006 and treat a clean goodbye as a network failure.

mod common;

use std::time::Duration;

use common::{Client, TestServer, config_toml, token};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Reads until the server's close frame; returns the `disconnect` frame before it (if any) and
/// the close code, then checks the TCP connection ends cleanly after our reply.
async fn clean_close(c: &mut Client) -> (Option<Value>, u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut disconnect = None;
    loop {
        let msg = tokio::time::timeout_at(deadline, c.ws.next())
            .await
            .expect("a close frame within 10 s")
            .expect("a close frame before the end of the stream")
            .expect("no transport error before the close frame");
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "disconnect" {
                    disconnect = Some(v);
                }
            }
            Message::Close(frame) => {
                let code = u16::from(frame.expect("a close frame with a code").code);
                // The library queues our answering close frame; the next read flushes it,
                // and then the server ends TCP: a clean end of stream, not a reset.
                let end = tokio::time::timeout(Duration::from_secs(5), c.ws.next())
                    .await
                    .expect("the server ends TCP after the handshake");
                assert!(
                    end.is_none()
                        || matches!(end, Some(Err(ref e)) if e.to_string().contains("closed normally")),
                    "not a clean end after the close handshake: {end:?}"
                );
                return (disconnect, code);
            }
            _ => {}
        }
    }
}

fn tok(user: &str) -> String {
    token(user, &[], Duration::from_secs(600))
}

#[tokio::test]
async fn a_client_close_is_answered_with_the_same_code() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    c.ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), c.ws.next())
        .await
        .expect("an answer within 5 s");
    match reply {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected the server's close frame, got {other:?}"),
    }
    // And the other code a client commonly sends.
    let mut c = s.client("alice").await;
    c.ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "".into(),
    })))
    .await
    .unwrap();
    match c.ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected the server's close frame, got {other:?}"),
    }
}

/// Malformed input while the client keeps sending: the close frame still arrives (the server
/// reads and discards until the client's close instead of resetting the connection).
#[tokio::test]
async fn a_bad_frame_amid_a_stream_of_frames_still_closes_cleanly() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    let filler = json!({"type": "ping", "pad": "x".repeat(900)}).to_string();
    c.ws.feed(Message::Text("this is not json".into()))
        .await
        .unwrap();
    for _ in 0..300 {
        c.ws.feed(Message::Text(filler.clone().into()))
            .await
            .unwrap();
    }
    c.ws.flush().await.unwrap();
    let (d, code) = clean_close(&mut c).await;
    assert_eq!((d.unwrap()["code"].clone(), code), (json!(4400), 4400));
}

#[tokio::test]
async fn binary_and_oversized_frames_close_cleanly() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    c.ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let (_, code) = clean_close(&mut c).await;
    assert_eq!(code, 4400);

    let mut c = s.client("alice").await;
    let huge = format!(
        r#"{{"type":"publish","channel":"chat.room.1","data":{{"text":"{}"}}}}"#,
        "x".repeat(200 * 1024)
    );
    c.ws.send(Message::Text(huge.into())).await.unwrap();
    let (d, code) = clean_close(&mut c).await;
    assert_eq!((d.unwrap()["code"].clone(), code), (json!(4009), 4009));
}

/// Class 2: 20,000 WebSocket Ping frames in a burst are frames like any other: over
/// `limits.frame_rate` the connection closes with 4029, cleanly.
#[tokio::test]
async fn a_flood_of_ping_frames_is_rate_limited() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    let mut bystander = s.client("bob").await;
    let send = async {
        for _ in 0..20_000 {
            if c.ws.feed(Message::Ping(vec![0u8; 4].into())).await.is_err() {
                break;
            }
        }
        let _ = c.ws.flush().await;
    };
    tokio::time::timeout(Duration::from_secs(10), send)
        .await
        .expect("the flood is sent (the server keeps reading)");
    let (d, code) = clean_close(&mut c).await;
    assert_eq!((d.unwrap()["code"].clone(), code), (json!(4029), 4029));
    let metrics = s.metrics().await;
    assert!(
        metrics.contains(r#"herald_rejects_total{gate="frame",code="rate_limited"} 1"#),
        "{metrics}"
    );
    // The neighbour is unaffected.
    s.publish("notifications.user.bob", json!({"type": "system"}))
        .await;
    assert_eq!(bystander.next().await["channel"], "notifications.user.bob");
    // Pong frames count too.
    let mut c = s.client("alice").await;
    for _ in 0..1000 {
        if c.ws.feed(Message::Pong(vec![].into())).await.is_err() {
            break;
        }
    }
    let _ = c.ws.flush().await;
    let (_, code) = clean_close(&mut c).await;
    assert_eq!(code, 4029);
}

#[tokio::test]
async fn server_goodbyes_complete_the_handshake() {
    let mut s = TestServer::with_config(&config_toml(
        "[server]\nping_interval = \"300ms\"\npong_timeout = \"300ms\"\nshutdown_spread = \"50ms\"",
    ))
    .await;
    // Kick.
    let mut c = s.client("alice").await;
    s.post("/v1/users/alice/disconnect", json!({})).await;
    let (d, code) = clean_close(&mut c).await;
    assert_eq!((d.unwrap()["code"].clone(), code), (json!(4403), 4403));
    // Ping timeout: this client never answers the server's pings.
    let mut c = Client::connect(&s.ws_url(), Some(&tok("bob")))
        .await
        .unwrap();
    let (d, code) = clean_close(&mut c).await;
    assert_eq!((d.unwrap()["code"].clone(), code), (json!(4408), 4408));
    // Token expiry.
    let mut c = Client::connect(
        &s.ws_url(),
        Some(&token("carol", &[], Duration::from_secs(1))),
    )
    .await
    .unwrap();
    let answer_pings = async {
        let (d, code) = clean_close_answering_pings(&mut c).await;
        assert_eq!((d["code"].clone(), code), (json!(4001), 4001));
    };
    answer_pings.await;
    // Shutdown.
    let mut c = s.client("dave").await;
    s.shutdown();
    let (d, code) = clean_close_answering_pings(&mut c).await;
    assert_eq!((d["code"].clone(), code), (json!(1001), 1001));
}

/// Like [`clean_close`], answering the server's `ping` frames meanwhile.
async fn clean_close_answering_pings(c: &mut Client) -> (Value, u16) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), c.ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("a frame")
            .expect("no transport error");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            match v["type"].as_str() {
                Some("ping") => c.send_json(json!({"type": "pong"})).await,
                Some("disconnect") => {
                    let (_, code) = clean_close(c).await;
                    return (v, code);
                }
                _ => {}
            }
        }
    }
}
