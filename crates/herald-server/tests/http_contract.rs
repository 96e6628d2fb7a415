//! The HTTP contract of issue 20 (classes 3 to 5), against a real gateway on port 0 with real
//! HTTP and WebSocket clients: one parser for every way a publication enters, the JSON error
//! envelope on every error of every route (walking `docs/openapi.json`), and the header
//! details RFC 9110 fixes.

mod common;

use std::time::Duration;

use common::{API_KEY, TestServer};
use serde_json::{Value, json};

async fn post_raw(s: &TestServer, path: &str, body: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(s.url(path))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

// ---------------------------------------------------------------------------------------------
// Class 3: one parser and one validation for every way a publication enters.

/// Bad publication objects, each sent as a `/v1/publish` body and as a `/v1/publish/batch`
/// item. Before the fix the batch published the first one to `bench.feed` (last key won) and
/// worded the other errors differently.
const BAD_PUBLICATIONS: &[&str] = &[
    r#"{"channel":"history.small","channel":"bench.feed","data":{"n":1}}"#,
    r#"{"channel":"bench.feed","data":{"n":1,"n":2}}"#,
    r#"{"channel":"bench.feed","data":{"deep":[{"k":1,"k":1}]}}"#,
    r#"{"channel":"bench.feed","data":{"n":1},"extra":true}"#,
    r#"{"channel":"bench.feed"}"#,
    r#"{"data":{}}"#,
    r#"{"channel":7,"data":{}}"#,
    r#"{"channel":"bench.feed","data":{},"idempotency_key":""}"#,
    r#"{"channel":"bench.feed","data":{},"idempotency_key":7}"#,
    r#"{"channel":"bench.feed","data":{},"idempotency_key":"a","idempotency_key":"b"}"#,
    "[]",
    "1",
    "null",
    r#""bench.feed""#,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_and_batch_publish_share_one_parser() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    assert_eq!(c.subscribe("bench.feed").await["ok"], true);
    assert_eq!(c.subscribe("history.small").await["ok"], true);
    for case in BAD_PUBLICATIONS {
        let (status, single) = post_raw(&s, "/v1/publish", case).await;
        assert_eq!(status, 400, "{case}: {single}");
        assert_eq!(single["error"]["code"], "bad_request", "{case}: {single}");
        let (status, batch) = post_raw(
            &s,
            "/v1/publish/batch",
            &format!(r#"{{"publications":[{case}]}}"#),
        )
        .await;
        assert_eq!(status, 200, "{case}: {batch}");
        assert_eq!(
            batch["results"][0], single,
            "{case}: the batch item and the single publish disagree"
        );
    }
    assert!(
        c.silent_for(Duration::from_millis(300)).await,
        "a refused publication was published"
    );
    // And the same good object publishes the same way through both.
    let good = r#"{"channel":"bench.feed","data":{"n":1}}"#;
    let (status, single) = post_raw(&s, "/v1/publish", good).await;
    assert_eq!((status, single["offset"].as_u64()), (200, Some(1)));
    let (_, batch) = post_raw(
        &s,
        "/v1/publish/batch",
        &format!(r#"{{"publications":[{good}]}}"#),
    )
    .await;
    assert_eq!(batch["results"][0]["offset"], 2);
}

/// The client publish (and every client frame) goes by the same rule: a repeated key is
/// refused, not resolved to its last value. Before the fix the first frame published to
/// `chat.room.b`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_frames_refuse_repeated_keys() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    for room in ["chat.room.a", "chat.room.b", "chat.room.c", "chat.room.d"] {
        assert_eq!(c.subscribe(room).await["ok"], true);
    }
    let frames = [
        (
            r#"{"type":"publish","id":91,"channel":"chat.room.a","channel":"chat.room.b","data":{"text":"x"}}"#,
            "duplicate field `channel`",
        ),
        (
            r#"{"type":"publish","id":92,"channel":"chat.room.a","data":{"text":"x","text":"y"}}"#,
            "duplicate key `text` in /data",
        ),
        (
            r#"{"type":"subscribe","id":93,"channel":"chat.room.c","channel":"chat.room.d"}"#,
            "duplicate field `channel`",
        ),
        (
            r#"{"type":"unsubscribe","type":"publish","id":94,"channel":"chat.room.a","data":{"text":"x"}}"#,
            "duplicate field `type`",
        ),
    ];
    for (frame, message) in frames {
        c.send_text(frame).await;
        let reply = c.next().await;
        assert_eq!(reply["type"], "reply", "{frame}: {reply}");
        assert_eq!(reply["ok"], false, "{frame}: {reply}");
        assert_eq!(reply["error"]["code"], "bad_request", "{frame}: {reply}");
        let got = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(got.ends_with(message), "{frame}: {got}");
    }
    // The API says the same about the same payload.
    let (_, api) = post_raw(
        &s,
        "/v1/publish",
        r#"{"channel":"chat.room.a","data":{"text":"x","text":"y"}}"#,
    )
    .await;
    assert!(
        api["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .ends_with("duplicate key `text` in /data"),
        "{api}"
    );
    assert!(c.silent_for(Duration::from_millis(300)).await);
    // Still subscribed to chat.room.a (the refused unsubscribe did nothing).
    let (status, _) = s
        .publish("chat.room.a", json!({"text": "still here"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(c.next().await["data"]["text"], "still here");
}

// ---------------------------------------------------------------------------------------------
// Class 4: every error of every route has the JSON envelope and a stable code.

/// What one bad request got, for the report of the walk.
struct Probe {
    what: String,
    status: u16,
    content_type: String,
    allow: Option<String>,
    www_authenticate: Option<String>,
    body: Value,
}

async fn probe(
    http: &reqwest::Client,
    what: String,
    method: reqwest::Method,
    url: String,
    auth: Option<&str>,
    body: Option<Vec<u8>>,
) -> Probe {
    let mut req = http.request(method, &url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let res = req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = res.status().as_u16();
    let header = |n: &str| {
        res.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type").unwrap_or_default();
    let allow = header("allow");
    let www_authenticate = header("www-authenticate");
    let text = res.text().await.unwrap_or_default();
    Probe {
        what,
        status,
        content_type,
        allow,
        www_authenticate,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// The stable code each status must carry.
fn code_for(status: u16) -> &'static [&'static str] {
    match status {
        400 => &["bad_request"],
        401 => &["unauthorized"],
        403 => &["forbidden"],
        404 => &["not_found", "unknown_channel"],
        405 => &["method_not_allowed"],
        413 => &["payload_too_large"],
        422 => &["invalid_payload"],
        429 => &["rate_limited", "too_many_connections"],
        503 => &["unavailable"],
        _ => &["internal"],
    }
}

/// Walks every path and method of `docs/openapi.json` with bad input (no or wrong credentials,
/// malformed query parameters and path segments, bad and oversized bodies, methods the path
/// does not serve) plus unknown routes, and checks that every answer is a documented error
/// status with `{"error":{"code","message"}}`, `application/json`, and the code that status
/// stands for. Before the fix, e.g. `GET /v1/channels/{channel}/history?since=abc` answered
/// `400 text/plain`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_walk_every_error_is_a_json_envelope() {
    let doc: Value = serde_json::from_str(include_str!("../../../docs/openapi.json")).unwrap();
    // The admin dashboard on: its API is in the document too (and answers in the envelope).
    let s = TestServer::with_config(&common::config_toml(&format!(
        "[limits]\nmax_payload_bytes = 1000\n{}",
        common::admin_section()
    )))
    .await;
    let served: Value = reqwest::get(s.url("/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, doc, "the served document is docs/openapi.json");
    let codes: Vec<&str> =
        doc["components"]["schemas"]["ErrorResponse"]["properties"]["error"]["properties"]["code"]
            ["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
    // No connection reuse: an early 413 closes the connection under the rest of the body.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let good = format!("Bearer {API_KEY}");
    let methods = ["get", "post", "put", "delete", "patch"];
    let mut probes: Vec<(Probe, Vec<u16>)> = Vec::new();

    for (path, item) in doc["paths"].as_object().unwrap() {
        let served_methods: Vec<&str> = methods
            .iter()
            .copied()
            .filter(|m| item.get(*m).is_some())
            .collect();
        for method in &served_methods {
            let op = &item[*method];
            let documented: Vec<u16> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .filter_map(|k| k.parse().ok())
                .collect();
            let m: reqwest::Method = method.to_uppercase().parse().unwrap();
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let path_value = |name: &str| match name {
                "channel" if path.ends_with("/presence") => "chat.room.x",
                "channel" => "history.small",
                _ => "alice",
            };
            let mut concrete = path.clone();
            for p in params.iter().filter(|p| p["in"] == "path") {
                let name = p["name"].as_str().unwrap();
                concrete = concrete.replace(&format!("{{{name}}}"), path_value(name));
            }
            let url = s.url(&concrete);
            let body = op
                .get("requestBody")
                .map(|_| br#"{"channel":"bench.feed","data":{}}"#.to_vec());
            // Credentials: missing and wrong, where the operation needs the API key.
            let security = op.get("security").unwrap_or(&doc["security"]);
            let needs_key = security
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s.get("apiKey").is_some()));
            if needs_key {
                for auth in [None, Some("Bearer wrong-key"), Some("Basic dGVzdA==")] {
                    let what = format!("{method} {path} with authorization {auth:?}");
                    let p = probe(&http, what, m.clone(), url.clone(), auth, body.clone()).await;
                    probes.push((p, documented.clone()));
                }
            }
            let needs_jwt = security
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s.get("jwt").is_some()));
            if needs_jwt {
                // Without upgrade headers, and with a token that is not a JWT.
                for auth in [None, Some("Bearer not-a-jwt")] {
                    let what =
                        format!("{method} {path} (plain request) with authorization {auth:?}");
                    let p = probe(&http, what, m.clone(), url.clone(), auth, None).await;
                    probes.push((p, documented.clone()));
                }
            }
            let auth = needs_key.then_some(good.as_str());
            // Bad query parameters: not a number, negative, repeated.
            for p in params.iter().filter(|p| p["in"] == "query") {
                let name = p["name"].as_str().unwrap();
                let mut bad: Vec<String> = Vec::new();
                if p["schema"]["type"] == "integer" {
                    bad.extend(["abc", "-1", "1.5", "99999999999999999999999"].map(String::from));
                    // Just outside the documented bounds: refused, never quietly clamped.
                    if let Some(max) = p["schema"]["maximum"].as_u64() {
                        bad.push((max + 1).to_string());
                    }
                    if let Some(min) = p["schema"]["minimum"].as_u64().filter(|m| *m > 0) {
                        bad.push((min - 1).to_string());
                    }
                }
                for value in bad {
                    let what = format!("{method} {path}?{name}={value}");
                    let u = format!("{url}?{name}={value}");
                    let p = probe(&http, what, m.clone(), u, auth, body.clone()).await;
                    probes.push((p, documented.clone()));
                }
                let what = format!("{method} {path}?{name}=1&{name}=2");
                let u = format!("{url}?{name}=1&{name}=2");
                let p = probe(&http, what, m.clone(), u, auth, body.clone()).await;
                probes.push((p, documented.clone()));
            }
            // Bad path segments: not UTF-8 once decoded, and (for channels) no such channel.
            for p in params.iter().filter(|p| p["in"] == "path") {
                let name = p["name"].as_str().unwrap();
                let mut bad = vec!["%FF"];
                if name == "channel" {
                    bad.extend(["no.such.channel", "bad..name", "%20"]);
                }
                for value in bad {
                    let u = s.url(&path.replace(&format!("{{{name}}}"), value));
                    let what = format!("{method} {path} with {name}={value}");
                    let p = probe(&http, what, m.clone(), u, auth, body.clone()).await;
                    probes.push((p, documented.clone()));
                }
            }
            // Bad bodies: not JSON, not UTF-8, wrong shape, larger than the limit.
            if body.is_some() {
                let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(8 << 20)).into_bytes();
                for (label, b) in [
                    ("truncated JSON", b"{".to_vec()),
                    ("not UTF-8", vec![b'"', 0xff, b'"']),
                    ("empty", Vec::new()),
                    ("wrong shape", br#"{"nope":1}"#.to_vec()),
                    ("8 MiB", big),
                ] {
                    let what = format!("{method} {path} with a {label} body");
                    let p = probe(&http, what, m.clone(), url.clone(), auth, Some(b)).await;
                    probes.push((p, documented.clone()));
                }
            }
        }
        // Methods the path does not serve. The admin API checks the session first: without
        // one, even an unserved method answers 401 (the surface stays hidden).
        let session_first = item.as_object().unwrap().values().any(|op| {
            op["security"]
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s.get("csrfToken").is_some()))
        });
        let concrete = path
            .replace("{channel}", "history.small")
            .replace("{user}", "alice");
        for method in methods.iter().filter(|m| !served_methods.contains(m)) {
            let what = format!("{method} {path} (not served)");
            let m: reqwest::Method = method.to_uppercase().parse().unwrap();
            let p = probe(&http, what, m, s.url(&concrete), Some(&good), None).await;
            if session_first {
                probes.push((p, vec![401]));
                continue;
            }
            let allow = p.allow.clone().unwrap_or_default().to_ascii_lowercase();
            for served in &served_methods {
                assert!(
                    allow.contains(served),
                    "{}: Allow {allow:?} lacks {served}",
                    p.what
                );
            }
            probes.push((p, vec![405]));
        }
    }
    // Routes that do not exist at all.
    for path in [
        "/nope",
        "/v1/nope",
        "/v1/channels/history.small/nope",
        "/v1/publish/x/y",
        "/v1/",
    ] {
        for m in [reqwest::Method::GET, reqwest::Method::POST] {
            let what = format!("{m} {path} (no such route)");
            let p = probe(&http, what, m, s.url(path), Some(&good), None).await;
            probes.push((p, vec![404]));
        }
    }

    // The broker down: readiness and publishing answer 503 in the envelope too.
    let dead = herald_testkit::free_port();
    let down = TestServer::with_config(&common::config_toml(&format!(
        "[broker]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{dead}\"\n"
    )))
    .await;
    let what = "get /readyz with the broker down".to_owned();
    let p = probe(
        &http,
        what,
        reqwest::Method::GET,
        down.url("/readyz"),
        None,
        None,
    )
    .await;
    probes.push((p, vec![503]));
    let what = "post /v1/publish with the broker down".to_owned();
    let body = br#"{"channel":"bench.feed","data":{}}"#.to_vec();
    let p = probe(
        &http,
        what,
        reqwest::Method::POST,
        down.url("/v1/publish"),
        Some(&good),
        Some(body),
    )
    .await;
    probes.push((p, vec![503]));

    let mut failures = Vec::new();
    for (p, allowed) in &probes {
        let code = p.body["error"]["code"].as_str().unwrap_or_default();
        let message = p.body["error"]["message"].as_str().unwrap_or_default();
        let problem = if !(400..600).contains(&p.status) {
            Some(format!("answered {} to bad input", p.status))
        } else if !allowed.contains(&p.status) {
            Some(format!(
                "status {} is not documented ({allowed:?})",
                p.status
            ))
        } else if !p.content_type.starts_with("application/json") {
            Some(format!("content-type {:?}", p.content_type))
        } else if !codes.contains(&code)
            || !code_for(p.status).contains(&code)
            || message.is_empty()
        {
            Some("not a {\"error\":{\"code\",\"message\"}} envelope with the status's code".into())
        } else if p.status == 405 && p.allow.is_none() {
            Some("405 without an Allow header (RFC 9110 §15.5.6)".into())
        } else if p.status == 401
            && !p
                .www_authenticate
                .as_deref()
                .is_some_and(|v| v.to_ascii_lowercase().starts_with("bearer"))
        {
            Some("401 without a Bearer challenge (RFC 9110 §11.6.1)".into())
        } else {
            None
        };
        if let Some(problem) = problem {
            failures.push(format!("{}: {problem}: {} {}", p.what, p.status, p.body));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad requests answered outside the contract:\n{}",
        failures.len(),
        probes.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Class 5: header details the RFCs fix.

async fn publish_with(s: &TestServer, authorization: &[&str]) -> (u16, Value) {
    let mut headers = reqwest::header::HeaderMap::new();
    for a in authorization {
        headers.append("authorization", a.parse().unwrap());
    }
    let res = reqwest::Client::new()
        .post(s.url("/v1/publish"))
        .headers(headers)
        .json(&json!({"channel": "bench.feed", "data": {}}))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// RFC 9110 §11.1: the auth scheme is case-insensitive; §11.4 / §5.5: one or more spaces
/// after it, and no surrounding whitespace is part of the value. Before the fix
/// `Authorization: bearer <key>` got 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_bearer_scheme_is_case_insensitive() {
    let s = TestServer::start().await;
    for ok in [
        format!("bearer {API_KEY}"),
        format!("BEARER {API_KEY}"),
        format!("BeArEr {API_KEY}"),
        format!("Bearer   {API_KEY}"),
        format!("Bearer\t{API_KEY}"),
        format!("Bearer {API_KEY}  "),
    ] {
        let (status, body) = publish_with(&s, &[&ok]).await;
        assert_eq!(status, 200, "{ok:?}: {body}");
    }
    for bad in [
        format!("Bearer{API_KEY}"),
        format!("Basic {API_KEY}"),
        format!("Bearer {API_KEY} extra"),
        format!("Bearer {API_KEY}x"),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        format!("Bearers {API_KEY}"),
        API_KEY.to_owned(),
    ] {
        let (status, body) = publish_with(&s, &[&bad]).await;
        assert_eq!(status, 401, "{bad:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
}

/// The same on the WebSocket upgrade, over a real socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_upgrade_bearer_scheme_is_case_insensitive() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let s = TestServer::start().await;
    let token = common::token("alice", &[], Duration::from_secs(60));
    for scheme in ["bearer", "BEARER", "Bearer "] {
        let mut req = s.ws_url().into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("{scheme} {token}").parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .unwrap_or_else(|e| panic!("{scheme:?}: upgrade refused: {e}"));
        use futures_util::StreamExt;
        let first = ws.next().await.unwrap().unwrap();
        let welcome: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["user"], "alice");
    }
}

/// Sends raw HTTP/1.1 and returns the status and the body (as JSON when it is). Reads the
/// head and then `Content-Length` bytes, so neither a 101 nor a kept-alive connection stalls.
async fn raw_http(addr: std::net::SocketAddr, request: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&out).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    return text;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&out).into_owned(),
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let text = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("an answer within 5 s");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
    )
}

/// RFC 9110 §5.3: `Authorization`, `Origin` and `Host` are not lists; a request carrying one of
/// them twice is ambiguous (a proxy may have checked the first while Herald used the other) and
/// is refused with 400, on the API and on the upgrade. RFC 9112 §3.2 requires it for `Host`.
/// Before the fix the first `Authorization` or `Origin` silently won.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_singleton_headers_are_refused() {
    let s = TestServer::with_config(&common::config_toml(
        "[server]\nallowed_origins = [\"https://app.example.com\"]\n",
    ))
    .await;
    let good = format!("Bearer {API_KEY}");
    let (status, body) = publish_with(&s, &[&good, "Bearer wrong"]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, body) = publish_with(&s, &[&good, &good]).await;
    assert_eq!(status, 400, "{body}");

    let token = common::token("alice", &[], Duration::from_secs(60));
    let upgrade = |extra: &str| {
        format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n",
            s.addr
        )
    };
    // Sanity: one of each is accepted.
    let one = format!("Authorization: Bearer {token}\r\nOrigin: https://app.example.com\r\n");
    let (status, body) = raw_http(s.addr, &upgrade(&one)).await;
    assert_eq!(status, 101, "{body}");
    for extra in [
        format!("Authorization: Bearer {token}\r\nAuthorization: Bearer {token}\r\n"),
        format!("Authorization: Bearer {token}\r\nAuthorization: Bearer nope\r\n"),
        format!(
            "Authorization: Bearer {token}\r\nOrigin: https://app.example.com\r\nOrigin: https://evil.example.com\r\n"
        ),
        format!("Authorization: Bearer {token}\r\nHost: evil.example.com\r\n"),
    ] {
        let (status, body) = raw_http(s.addr, &upgrade(&extra)).await;
        assert_eq!(status, 400, "{extra:?}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{extra:?}: {body}");
    }
    let (status, body) = raw_http(
        s.addr,
        "GET /healthz HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, or with an invalid one, gets 400. Before
/// the fix it was served (a missing `Host` also made the cookie same-origin check compare
/// against nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_requests_need_one_valid_host() {
    let s = TestServer::start().await;
    for request in [
        "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: a.example:port\r\nConnection: close\r\n\r\n",
    ] {
        let (status, body) = raw_http(s.addr, request).await;
        assert_eq!(status, 400, "{request:?}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{request:?}: {body}");
    }
    // HTTP/1.0 has no Host requirement; a valid Host is of course fine.
    for request in [
        "GET /healthz HTTP/1.0\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: a.example:8080\r\nConnection: close\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n",
    ] {
        let (status, body) = raw_http(s.addr, request).await;
        assert_eq!(status, 200, "{request:?}: {body}");
    }
}

/// RFC 6454 §4 and RFC 3986 §6.2: an origin's scheme and host compare case-insensitively and
/// an explicit default port is the same origin. Before the fix `allowed_origins` and the
/// cookie same-origin check compared strings byte for byte (and refused `Host: Example.com`
/// against `Origin: http://example.com`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_compare_by_rfc6454() {
    let token = common::token("alice", &[], Duration::from_secs(60));
    let upgrade = |extra: &str| {
        format!(
            "GET /v1/ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n\r\n"
        )
    };
    let listed = TestServer::with_config(&common::config_toml(
        "[server]\nallowed_origins = [\"https://App.Example.com\", \"http://localhost:3000/\"]\n",
    ))
    .await;
    for (origin, expected) in [
        ("https://app.example.com", 101),
        ("HTTPS://APP.EXAMPLE.COM", 101),
        ("https://app.example.com:443", 101),
        ("http://localhost:3000", 101),
        ("http://LOCALHOST:3000", 101),
        ("https://app.example.com:8443", 403),
        ("http://app.example.com", 403),
        ("https://evil.example.com", 403),
        ("https://app.example.com.evil.example", 403),
        ("null", 403),
    ] {
        let extra = format!(
            "Host: {}\r\nAuthorization: Bearer {token}\r\nOrigin: {origin}",
            listed.addr
        );
        let (status, body) = raw_http(listed.addr, &upgrade(&extra)).await;
        assert_eq!(status, expected, "Origin {origin}: {body}");
    }
    // Cookie credentials, no list: same origin required, compared the same way.
    let cookie = TestServer::with_config(&format!(
        "[auth]\nhs256_secret = \"{}\"\ncookie = \"herald\"\n{}",
        common::SECRET,
        common::CHANNELS
    ))
    .await;
    for (host, origin, expected) in [
        ("Example.COM", "http://example.com", 101),
        ("example.com", "http://EXAMPLE.com:80", 101),
        ("example.com:443", "https://example.com", 101),
        ("example.com:8080", "http://example.com:8080", 101),
        ("example.com", "http://example.com:8080", 403),
        ("example.com", "http://evil.example", 403),
    ] {
        let extra = format!("Host: {host}\r\nCookie: herald={token}\r\nOrigin: {origin}");
        let (status, body) = raw_http(cookie.addr, &upgrade(&extra)).await;
        assert_eq!(status, expected, "Host {host}, Origin {origin}: {body}");
    }
}

/// A body of the wrong JSON shape is named for what it is, not for its first element: serde
/// reads a struct from an array too, and used to answer `[{…}]` on the batch endpoint with
/// "invalid type: map, expected a sequence" and `[1,2]` on `/v1/publish` with "invalid type:
/// integer `1`, expected a string".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_the_wrong_shape_says_which_shape_is_wanted() {
    let s = TestServer::start().await;
    let cases = [
        (
            "/v1/publish/batch",
            r#"[{"channel":"chat.room.a","data":{"text":"x"}}]"#,
            r#"invalid JSON body: expected {"publications":[…]}, got an array"#,
        ),
        (
            "/v1/publish",
            "[1,2]",
            r#"invalid publication: expected a publication object {"channel", "data"[, "idempotency_key"]}, got an array"#,
        ),
    ];
    for (path, body, message) in cases {
        let (status, answer) = post_raw(&s, path, body).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
        assert_eq!(answer["error"]["message"], message, "{path} {body}");
    }
    // A syntax error is still reported as one.
    for (path, body, start) in [
        ("/v1/publish/batch", "[{", "invalid JSON body: EOF"),
        (
            "/v1/publish",
            "[1,",
            "invalid publication: invalid JSON: EOF",
        ),
    ] {
        let (status, answer) = post_raw(&s, path, body).await;
        assert_eq!(status, 400);
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(start), "{path} {body}: {answer}");
    }
}
