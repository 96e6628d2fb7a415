//! `/socket.io/` under bad input, one test per class (issue 13, acceptance 4): the Engine.IO
//! HTTP errors, malformed Engine.IO and Socket.IO packets, unknown sids, oversize POST bodies,
//! overlapping and flooding polls, binary packets, namespaces and unknown events. Each is
//! answered as the Node server answers it, and a neighbour connection keeps receiving
//! throughout (`Neighbour`). Also CORS for polling from an allowed origin, and events named by
//! a payload field. The behaviours Socket.IO shares with every transport are in
//! `transports.rs`; the real `socket.io-client` runs in `clients/typescript/test`.

mod common;

use std::time::Duration;

use common::sio::SioClient;
use common::{Client, TestServer, config_toml, token};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn tok(user: &str) -> String {
    token(user, &[], Duration::from_secs(600))
}

/// A v1 WebSocket client on the same node that must keep receiving its notifications.
struct Neighbour {
    c: Client,
    n: u64,
}

impl Neighbour {
    async fn join(s: &TestServer) -> Self {
        let c = Client::connect(&s.ws_url(), Some(&tok("neighbour")))
            .await
            .unwrap();
        Neighbour { c, n: 0 }
    }

    /// A publication reaches the neighbour: the node is healthy.
    async fn still_served(&mut self, s: &TestServer) {
        self.n += 1;
        let text = format!("n{}", self.n);
        let (status, _) = s
            .publish(
                "notifications.user.neighbour",
                json!({"type": "system", "text": text}),
            )
            .await;
        assert_eq!(status, 200);
        let p = loop {
            let v = self.c.next().await;
            if v["type"] == "pub" {
                break v;
            }
        };
        assert_eq!(p["data"]["text"], text, "{p}");
        let (status, _) = reqwest::get(s.url("/healthz"))
            .await
            .map(|r| (r.status().as_u16(), ()))
            .unwrap();
        assert_eq!(status, 200);
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

fn polling(s: &TestServer, query: &str) -> String {
    s.url(&format!("/socket.io/?EIO=4&transport=polling{query}"))
}

/// Opens a polling engine: its sid.
async fn handshake(s: &TestServer) -> String {
    let res = http().get(polling(s, "")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    let open: Value = serde_json::from_str(body.strip_prefix('0').expect("open packet")).unwrap();
    assert_eq!(open["upgrades"], json!(["websocket"]));
    open["sid"].as_str().unwrap().to_owned()
}

async fn post(s: &TestServer, sid: &str, body: &str) -> (u16, String) {
    let res = http()
        .post(polling(s, &format!("&sid={sid}")))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

async fn get(s: &TestServer, sid: &str) -> (u16, String) {
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        http().get(polling(s, &format!("&sid={sid}"))).send(),
    )
    .await
    .expect("a poll answered within 10 s")
    .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// Polls until the engine says something other than a ping (answering pings).
async fn next_packets(s: &TestServer, sid: &str) -> (u16, String) {
    loop {
        let (status, body) = get(s, sid).await;
        if status == 200 && body == "2" {
            post(s, sid, "3").await;
            continue;
        }
        return (status, body);
    }
}

/// The engine ended: a poll gets the close packet while it lingers, then `Session ID unknown`.
async fn assert_ended(s: &TestServer, sid: &str) {
    let (status, body) = get(s, sid).await;
    if status == 200 {
        assert_eq!(body, "1", "only the close packet is left");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, body) = get(s, sid).await;
        assert_eq!((status, eio_error(&body).0), (400, 1));
    } else {
        assert_eq!((status, eio_error(&body).0), (400, 1), "{body}");
    }
}

fn eio_error(body: &str) -> (u64, String) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON error body: {body}"));
    (
        v["code"].as_u64().unwrap(),
        v["message"].as_str().unwrap().to_owned(),
    )
}

/// The Engine.IO HTTP errors: Node's codes, messages and statuses.
#[tokio::test]
async fn engine_io_http_errors() {
    let s = TestServer::with_config(&config_toml(
        "[server]\nallowed_origins = [\"https://app.example\"]",
    ))
    .await;
    let mut n = Neighbour::join(&s).await;
    let cases: Vec<(reqwest::RequestBuilder, u16, u64, &str)> = vec![
        (
            http().get(s.url("/socket.io/?EIO=3&transport=polling")),
            400,
            5,
            "Unsupported protocol version",
        ),
        (
            http().get(s.url("/socket.io/?transport=polling")),
            400,
            5,
            "Unsupported protocol version",
        ),
        (
            http().get(s.url("/socket.io/?EIO=4&transport=flashsocket")),
            400,
            0,
            "Transport unknown",
        ),
        (
            http().post(polling(&s, "")).body("40"),
            400,
            2,
            "Bad handshake method",
        ),
        (
            http().get(s.url("/socket.io/?EIO=4&transport=websocket")),
            400,
            3,
            "Bad request",
        ),
        (
            http().get(polling(&s, "&sid=nosuchsid")),
            400,
            1,
            "Session ID unknown",
        ),
        (
            http().post(polling(&s, "&sid=nosuchsid")).body("40"),
            400,
            1,
            "Session ID unknown",
        ),
        (
            http()
                .get(polling(&s, ""))
                .header("origin", "https://evil.example"),
            403,
            4,
            "Forbidden",
        ),
    ];
    for (req, status, code, message) in cases {
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), status);
        assert_eq!(
            eio_error(&res.text().await.unwrap()),
            (code, message.to_owned())
        );
    }
    n.still_served(&s).await;
}

/// Polling from an allowed origin gets CORS headers (and its preflight an answer); other
/// origins get none.
#[tokio::test]
async fn cors_follows_allowed_origins() {
    let s = TestServer::with_config(&config_toml(
        "[server]\nallowed_origins = [\"https://app.example\"]",
    ))
    .await;
    let res = http()
        .get(polling(&s, ""))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    let res = http()
        .request(reqwest::Method::OPTIONS, polling(&s, ""))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        res.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    // Same-origin and non-browser requests: no CORS headers.
    let res = http().get(polling(&s, "")).send().await.unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
}

/// A full polling session by hand: CONNECT with auth, an event with an ack, a publication.
#[tokio::test]
async fn polling_by_hand() {
    let s = TestServer::start().await;
    let sid = handshake(&s).await;
    let (status, body) = post(&s, &sid, &format!("40{}", json!({"token": tok("alice")}))).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (_, body) = next_packets(&s, &sid).await;
    let connect: Value = serde_json::from_str(body.strip_prefix("40").unwrap()).unwrap();
    assert!(
        connect["sid"].is_string() && connect["pid"].is_string(),
        "{connect}"
    );
    // Two packets in one payload: an ack'd subscribe and a noop.
    post(
        &s,
        &sid,
        &format!(
            "421{}\x1e6",
            json!(["subscribe", {"channel": "blog.article.feed"}])
        ),
    )
    .await;
    let (_, body) = next_packets(&s, &sid).await;
    let ack: Vec<Value> = serde_json::from_str(body.strip_prefix("431").unwrap()).unwrap();
    assert_eq!(ack[0]["ok"], true, "{body}");
    s.publish("blog.article.feed", json!({"id": "1", "title": "t"}))
        .await;
    let (_, body) = next_packets(&s, &sid).await;
    let ev: Vec<Value> = serde_json::from_str(body.strip_prefix("42").unwrap()).unwrap();
    assert_eq!(ev[0], "blog.article.feed");
    assert_eq!(ev[1], json!({"id": "1", "title": "t"}));
    assert_eq!(ev[2]["offset"], 1);
    assert!(
        ev[3].as_str().unwrap().contains("blog.article.feed:1:"),
        "{body}"
    );
}

/// Malformed Engine.IO and Socket.IO packets, and packets out of place, close the engine (as
/// Node does): the client's later requests get `Session ID unknown`. Neighbours are fine.
#[tokio::test]
async fn malformed_packets_close_the_engine() {
    let s = TestServer::start().await;
    let mut n = Neighbour::join(&s).await;
    // Before CONNECT: garbage, an unknown Engine.IO type, an event, an empty packet.
    for bad in ["x", "9", "42[\"subscribe\",{}]", "", "4{not json"] {
        let sid = handshake(&s).await;
        let (status, _) = post(&s, &sid, bad).await;
        assert_eq!(status, 200, "the POST itself is read ({bad:?})");
        assert_ended(&s, &sid).await;
    }
    // After CONNECT: a broken Socket.IO packet, a second CONNECT, an event for a namespace
    // the client is not in. Each gets `herald:disconnect` and the engine closes.
    for bad in ["4{]", "40", "42/admin,[\"x\"]", "45-[\"x\"]", "7"] {
        let mut c = SioClient::connect(s.addr, json!({"token": tok("alice")}))
            .await
            .unwrap();
        c.send_raw(bad).await;
        let d = c.next_within(Duration::from_secs(5)).await;
        assert_eq!(
            d.as_ref().map(|d| d["type"].clone()),
            Some(json!("disconnect")),
            "{bad:?}: {d:?}"
        );
        assert!(
            c.next_within(Duration::from_secs(5)).await.is_none(),
            "{bad:?}"
        );
        assert!(c.closed);
    }
    n.still_served(&s).await;
}

/// Unknown namespaces get CONNECT_ERROR "Invalid namespace" and the engine stays for `/`;
/// a bad token gets CONNECT_ERROR with Herald's error body and the engine stays for a retry.
#[tokio::test]
async fn namespaces_and_refusals_keep_the_engine() {
    let s = TestServer::start().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(common::sio::url(s.addr))
        .await
        .unwrap();
    use futures_util::StreamExt;
    let next = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| -> String {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t.as_str().to_owned(),
            other => panic!("expected a text packet, got {other:?}"),
        }
    };
    assert!(next(&mut ws).await.starts_with("0{"));
    ws.send(Message::Text("40/admin,".into())).await.unwrap();
    assert_eq!(
        next(&mut ws).await,
        r#"44/admin,{"message":"Invalid namespace"}"#
    );
    ws.send(Message::Text(r#"40{"token":"nope"}"#.into()))
        .await
        .unwrap();
    let refused = next(&mut ws).await;
    let e: Value = serde_json::from_str(refused.strip_prefix("44").unwrap()).unwrap();
    assert_eq!(e["message"], "unauthorized");
    assert_eq!(e["data"]["code"], "unauthorized");
    assert!(e["data"]["message"].is_string());
    ws.send(Message::Text(
        format!("40{}", json!({"token": tok("alice")})).into(),
    ))
    .await
    .unwrap();
    assert!(next(&mut ws).await.starts_with("40{\"sid\":"));
}

/// An engine that never sends CONNECT is closed after `server.handshake_timeout`; a flood of
/// them costs the neighbours nothing.
#[tokio::test]
async fn silent_engines_time_out_and_floods_do_not_hurt() {
    let s = TestServer::with_config(&config_toml("[server]\nhandshake_timeout = \"1s\"")).await;
    let mut n = Neighbour::join(&s).await;
    let mut sids = Vec::new();
    for _ in 0..300 {
        sids.push(handshake(&s).await);
    }
    n.still_served(&s).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for sid in sids.iter().take(20) {
        assert_ended(&s, sid).await;
    }
    n.still_served(&s).await;
}

/// Two polls at once: Node answers the second 400 and closes the engine; so does Herald.
/// Two POSTs at once likewise.
#[tokio::test]
async fn overlapping_polls_close_the_engine() {
    let s = TestServer::start().await;
    let mut n = Neighbour::join(&s).await;
    let sid = handshake(&s).await;
    post(&s, &sid, &format!("40{}", json!({"token": tok("alice")}))).await;
    let (_, body) = next_packets(&s, &sid).await;
    assert!(body.starts_with("40"));
    let (first, second) = tokio::join!(get(&s, &sid), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        get(&s, &sid).await
    });
    assert_eq!(second.0, 400, "{second:?}");
    assert_eq!(eio_error(&second.1).0, 3);
    // The first poll learns the engine is over.
    assert!(first.1.ends_with('1'), "{first:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&s, &sid).await.0, 400);
    n.still_served(&s).await;
}

/// A POST over `maxPayload` (`limits.max_frame_bytes`, in the open packet) is answered 413,
/// as Node answers it, and the engine goes on.
#[tokio::test]
async fn oversize_post_is_413_and_the_engine_stays() {
    let s = TestServer::with_config(&config_toml(
        "[limits]\nmax_frame_bytes = 4096\nmax_payload_bytes = 2048",
    ))
    .await;
    let res = http().get(polling(&s, "")).send().await.unwrap();
    let open: Value = serde_json::from_str(&res.text().await.unwrap()[1..]).unwrap();
    assert_eq!(open["maxPayload"], 4096);
    let sid = open["sid"].as_str().unwrap().to_owned();
    post(&s, &sid, &format!("40{}", json!({"token": tok("alice")}))).await;
    assert!(next_packets(&s, &sid).await.1.starts_with("40"));
    let big = format!("42{}", json!(["chat.room.1", {"text": "x".repeat(5000)}]));
    assert_eq!(post(&s, &sid, &big).await.0, 413);
    post(
        &s,
        &sid,
        &format!(
            "421{}",
            json!(["subscribe", {"channel": "blog.article.feed"}])
        ),
    )
    .await;
    let (_, body) = next_packets(&s, &sid).await;
    assert!(body.starts_with("431[{"), "{body}");
}

/// Binary attachments cannot satisfy a JSON Schema: an event with an ack gets an error ack
/// (the attachments are read and dropped, the connection goes on); without an ack, or a
/// binary packet nobody announced, the connection ends with 4400 and DISCONNECT.
#[tokio::test]
async fn binary_packets() {
    let s = TestServer::start().await;
    let mut n = Neighbour::join(&s).await;
    let mut c = SioClient::connect(s.addr, json!({"token": tok("alice")}))
        .await
        .unwrap();
    c.send_raw(r#"451-0["chat.room.1",{"_placeholder":true,"num":0}]"#)
        .await;
    c.ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let ack = c.next_within(Duration::from_secs(5)).await.unwrap();
    assert_eq!(ack["ok"], false, "{ack}");
    assert_eq!(ack["error"]["code"], "bad_request");
    let r = c
        .request(json!({"type": "subscribe", "channel": "blog.article.feed"}))
        .await;
    assert_eq!(r["ok"], true, "the connection goes on: {r}");

    for (header, binary) in [
        (
            Some(r#"451-["chat.room.1",{"_placeholder":true,"num":0}]"#),
            true,
        ),
        (None, true),
    ] {
        let mut c = SioClient::connect(s.addr, json!({"token": tok("alice")}))
            .await
            .unwrap();
        if let Some(h) = header {
            c.send_raw(h).await;
        }
        if binary {
            c.ws.send(Message::Binary(vec![9; 16].into()))
                .await
                .unwrap();
        }
        let mut d = None;
        while let Some(v) = c.next_within(Duration::from_secs(5)).await {
            if v["type"] == "disconnect" {
                d = Some(v);
                break;
            }
        }
        let d = d.expect("told why");
        assert_eq!(
            (d["code"].clone(), d["reconnect"].clone()),
            (json!(4400), json!(false))
        );
        assert_eq!(
            c.next_within(Duration::from_secs(5)).await,
            Some(json!({"type": "sio_disconnect"})),
            "DISCONNECT: the client does not reconnect"
        );
    }
    // Over polling, a `b` packet nobody announced ends the session the same way.
    let sid = handshake(&s).await;
    post(&s, &sid, &format!("40{}", json!({"token": tok("alice")}))).await;
    assert!(next_packets(&s, &sid).await.1.starts_with("40"));
    post(&s, &sid, "bAQID").await;
    let (_, body) = next_packets(&s, &sid).await;
    assert!(
        body.contains("herald:disconnect") && body.contains("4400"),
        "{body}"
    );
    n.still_served(&s).await;
}

/// Unknown events and malformed command arguments get `bad_request` in the ack, and without
/// an ack a `herald:error` event; the connection goes on.
#[tokio::test]
async fn unknown_events_and_bad_arguments() {
    let s = TestServer::start().await;
    let mut c = SioClient::connect(s.addr, json!({"token": tok("alice")}))
        .await
        .unwrap();
    for (event, arg) in [
        ("no.such.channel", json!({})),
        ("subscribe", json!({"room": "x"})),
        ("subscribe", json!("blog.article.feed")),
        ("publish", json!({"channel": "chat.room.1"})),
    ] {
        let r = c.emit_with_ack(event, arg.clone()).await;
        assert_eq!(r["error"]["code"], "bad_request", "{event} {arg}: {r}");
    }
    c.send_raw(r#"42["chat.room.1",{"text":"a","text":"b"}]"#)
        .await;
    let e = c.next_within(Duration::from_secs(5)).await.unwrap();
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["error"]["code"], "bad_request");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate"),
        "{e}"
    );
    c.send_raw(r#"42["nope",1]"#).await;
    let e = c.next_within(Duration::from_secs(5)).await.unwrap();
    assert_eq!(e["error"]["code"], "bad_request", "{e}");
    let r = c
        .request(json!({"type": "subscribe", "channel": "blog.article.feed"}))
        .await;
    assert_eq!(r["ok"], true);
}

/// `socketio.event_from` names each publication's event by a payload field; a payload
/// without a string there (or naming a reserved event) is delivered under the channel name.
#[tokio::test]
async fn events_named_by_a_payload_field() {
    let s = TestServer::with_config(&config_toml(
        "[[channel]]\nname = \"orders.user.{userId}\"\nscope = \"user\"\nauto_subscribe = true\nsocketio = { event_from = \"/type\" }\nschema = { type = \"object\" }",
    ))
    .await;
    let mut c = SioClient::connect(s.addr, json!({"token": tok("alice")}))
        .await
        .unwrap();
    for (data, event) in [
        (json!({"type": "order.updated", "id": 1}), "order.updated"),
        (json!({"type": 5}), "orders.user.alice"),
        (json!({"id": 2}), "orders.user.alice"),
        (json!({"type": "disconnect"}), "orders.user.alice"),
        (json!({"type": "herald:join"}), "orders.user.alice"),
    ] {
        let (status, _) = s.publish("orders.user.alice", data.clone()).await;
        assert_eq!(status, 200);
        let p = c.next_within(Duration::from_secs(5)).await.unwrap();
        assert_eq!((p["event"].as_str().unwrap(), &p["data"]), (event, &data));
        assert_eq!(p["channel"], "orders.user.alice");
    }
}

/// The upgrade from polling, by hand: `2probe` → `3probe`, the pending poll is answered with a
/// noop, a publication made while no poll is waiting is not lost, `5` moves the engine to the
/// socket (where that publication arrives), and polling is refused from then on.
#[tokio::test]
async fn upgrade_from_polling() {
    use futures_util::StreamExt;
    let s = TestServer::start().await;
    let sid = handshake(&s).await;
    post(&s, &sid, &format!("40{}", json!({"token": tok("alice")}))).await;
    assert!(next_packets(&s, &sid).await.1.starts_with("40"));
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid={sid}",
        s.addr
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let pending = tokio::spawn({
        let url = polling(&s, &format!("&sid={sid}"));
        async move { http().get(url).send().await.unwrap().text().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    ws.send(Message::Text("2probe".into())).await.unwrap();
    let text = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "2" => {
                ws.send(Message::Text("3".into())).await.unwrap()
            }
            Ok(Some(Ok(Message::Text(t)))) => return t.as_str().to_owned(),
            other => panic!("expected a text packet, got {other:?}"),
        }
    };
    assert_eq!(text(&mut ws).await, "3probe");
    assert_eq!(
        pending.await.unwrap(),
        "6",
        "the pending poll ends with a noop"
    );
    // Published while no poll waits and the socket is not in use yet.
    s.publish(
        "notifications.user.alice",
        json!({"type": "system", "text": "during the upgrade"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    ws.send(Message::Text("5".into())).await.unwrap();
    let ev = text(&mut ws).await;
    assert!(
        ev.starts_with(r#"42["notifications.user.alice",{"#) && ev.contains("during the upgrade"),
        "{ev}"
    );
    let (status, body) = get(&s, &sid).await;
    assert_eq!((status, eio_error(&body).0), (400, 3), "polling is over");
    ws.send(Message::Text(
        format!(
            "421{}",
            json!(["subscribe", {"channel": "blog.article.feed"}])
        )
        .into(),
    ))
    .await
    .unwrap();
    assert!(text(&mut ws).await.starts_with("431[{"));
}
