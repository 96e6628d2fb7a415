//! The admin dashboard's server side, end to end on a real gateway: off by default; sign-in,
//! the cookie's attributes, the session and CSRF checks on every call; the internal
//! `$admin:` channels (refused to everyone but a ticket-admitted admin connection, fed with
//! every node's statistics); the admin watcher not joining presence; disconnects closing
//! exactly the right connections with 4403. (The page itself is tested in a real browser:
//! clients/typescript/test/admin.test.ts.)

mod common;

use std::time::Duration;

use common::{Client, TestServer, config_toml};
use reqwest::header;
use serde_json::{Value, json};

const PASSWORD: &str = common::ADMIN_PASSWORD;

fn admin_config() -> String {
    config_toml(&common::admin_section())
}

/// A signed-in operator: the session cookie and the CSRF token.
struct Operator {
    cookie: String,
    csrf: String,
}

async fn sign_in(s: &TestServer) -> Operator {
    let res = reqwest::Client::new()
        .post(s.url("/admin/api/login"))
        .json(&json!({ "user": "ops", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let set = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = res.json().await.unwrap();
    Operator {
        cookie: set.split(';').next().unwrap().to_owned(),
        csrf: body["csrf"].as_str().unwrap().to_owned(),
    }
}

async fn call(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    cookie: Option<&str>,
    csrf: Option<&str>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, s.url(path));
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    if let Some(t) = csrf {
        req = req.header("x-csrf-token", t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_dashboard_is_off_unless_enabled() {
    let s = TestServer::start().await;
    for path in ["/admin", "/admin/app.js", "/admin/api/session"] {
        let res = reqwest::get(s.url(path)).await.unwrap();
        assert_eq!(res.status(), 404, "{path}");
    }
    // And its internal channels do not exist for anyone.
    let mut alice = s.client_with_roles("alice", &["admin"]).await;
    let r = alice
        .request(json!({"type": "subscribe", "channel": "$admin:nodes"}))
        .await;
    assert_eq!(r["error"]["code"], "unknown_channel", "{r}");
}

#[tokio::test]
async fn sign_in_sessions_and_csrf() {
    let s = TestServer::with_config(&admin_config()).await;
    let http = reqwest::Client::new();
    // The page is served; its data is not.
    let page = http.get(s.url("/admin")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()[header::X_FRAME_OPTIONS], "DENY");

    for (user, password) in [("ops", "wrong"), ("root", PASSWORD), ("ops", "")] {
        let res = http
            .post(s.url("/admin/api/login"))
            .json(&json!({ "user": user, "password": password }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{user}/{password}");
        assert!(res.headers().get(header::SET_COOKIE).is_none());
    }
    let res = http
        .post(s.url("/admin/api/login"))
        .header("x-forwarded-proto", "https")
        .json(&json!({ "user": "ops", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let set = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/admin", "Secure"] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    let op = sign_in(&s).await;
    let plain = reqwest::Client::new()
        .post(s.url("/admin/api/login"))
        .json(&json!({ "user": "ops", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let set = plain.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(!set.contains("Secure"), "plain HTTP: no Secure ({set})");

    use reqwest::Method;
    let guarded = [
        (Method::GET, "/admin/api/overview"),
        (Method::GET, "/admin/api/registry"),
        (Method::GET, "/admin/api/users?q="),
        (Method::GET, "/admin/api/channels/blog.article.feed"),
        (Method::POST, "/admin/api/ticket"),
        (Method::POST, "/admin/api/users/alice/disconnect"),
    ];
    for (m, path) in &guarded {
        let (status, body) = call(&s, m.clone(), path, None, Some(&op.csrf)).await;
        assert_eq!(status, 401, "{m} {path} without the session: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        let (status, body) = call(&s, m.clone(), path, Some(&op.cookie), None).await;
        assert_eq!(status, 403, "{m} {path} without the CSRF token: {body}");
        let (status, _) = call(&s, m.clone(), path, Some(&op.cookie), Some("x")).await;
        assert_eq!(status, 403, "{m} {path} with a wrong CSRF token");
        let (status, body) = call(&s, m.clone(), path, Some(&op.cookie), Some(&op.csrf)).await;
        assert_eq!(status, 200, "{m} {path} signed in: {body}");
    }
    // Another origin is refused even with both.
    let res = http
        .post(s.url("/admin/api/ticket"))
        .header(header::COOKIE, &op.cookie)
        .header("x-csrf-token", &op.csrf)
        .header(header::ORIGIN, "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // Sign-out ends the session.
    let (status, _) = call(
        &s,
        Method::POST,
        "/admin/api/logout",
        Some(&op.cookie),
        Some(&op.csrf),
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(
        &s,
        Method::GET,
        "/admin/api/overview",
        Some(&op.cookie),
        Some(&op.csrf),
    )
    .await;
    assert_eq!(status, 401);
}

async fn ticket(s: &TestServer, op: &Operator) -> String {
    let (status, body) = call(
        s,
        reqwest::Method::POST,
        "/admin/api/ticket",
        Some(&op.cookie),
        Some(&op.csrf),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["ticket"].as_str().unwrap().to_owned()
}

async fn admin_client(s: &TestServer, op: &Operator) -> Client {
    let t = ticket(s, op).await;
    let mut c = Client::connect(&format!("{}?token={t}", s.ws_url()), None)
        .await
        .expect("a ticket admits");
    c.welcome = c.next().await;
    assert_eq!(c.welcome["type"], "welcome", "{}", c.welcome);
    c
}

#[tokio::test]
async fn internal_channels_are_the_admin_connections_alone() {
    let s = TestServer::with_config(&admin_config()).await;
    let op = sign_in(&s).await;
    // Not for a user, not even one with the admin role.
    let mut alice = s.client_with_roles("alice", &["admin"]).await;
    let r = alice
        .request(json!({"type": "subscribe", "channel": "$admin:nodes"}))
        .await;
    assert_eq!(r["error"]["code"], "unknown_channel", "{r}");
    // A ticket is not a JWT, and works once.
    let t = ticket(&s, &op).await;
    let _first = Client::connect(&format!("{}?token={t}", s.ws_url()), None)
        .await
        .unwrap();
    let again = Client::connect(&format!("{}?token={t}", s.ws_url()), None).await;
    assert!(again.is_err(), "a used ticket is refused");
    let forged = Client::connect(&format!("{}?token=herald-admin.forged", s.ws_url()), None).await;
    assert!(forged.is_err(), "an unknown ticket is refused");

    let mut admin = admin_client(&s, &op).await;
    let r = admin
        .request(json!({"type": "subscribe", "channel": "$admin:nodes"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let snapshot = loop {
        let f = admin.next().await;
        if f["type"] == "pub" && f["channel"] == "$admin:nodes" {
            break f["data"].clone();
        }
    };
    assert_eq!(snapshot["node"], s.gw.id());
    assert_eq!(snapshot["broker"], "memory");
    assert!(snapshot["connections"].as_i64().unwrap() >= 2, "{snapshot}");
    // The server API's channel list does not show the internal channel.
    let (_, channels) = s.get("/v1/channels").await;
    assert!(!channels.to_string().contains("$admin"), "{channels}");

    // The watcher tails any channel (even a role-scoped one) and is not a presence member.
    let r = admin
        .request(json!({"type": "subscribe", "channel": "ops.alerts"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = admin
        .request(json!({"type": "subscribe", "channel": "chat.room.x"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let mut bob = s.client("bob").await;
    bob.request(json!({"type": "subscribe", "channel": "chat.room.x"}))
        .await;
    let (_, presence) = s.get("/v1/channels/chat.room.x/presence").await;
    let users: Vec<&str> = presence["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["bob"], "the dashboard watches without joining");
}

#[tokio::test]
async fn disconnecting_a_user_closes_theirs_alone() {
    let s = TestServer::with_config(&admin_config()).await;
    let op = sign_in(&s).await;
    let mut alice = s.client("alice").await;
    let mut bob = s.client("bob").await;
    let (status, body) = call(
        &s,
        reqwest::Method::GET,
        "/admin/api/users/alice",
        Some(&op.cookie),
        Some(&op.csrf),
    )
    .await;
    assert_eq!(status, 200);
    let conn = &body["connections"][0];
    assert_eq!(conn["transport"], "websocket");
    assert!(
        conn["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{conn}"
    );
    assert_eq!(conn["subscriptions"], json!(["notifications.user.alice"]));
    let (status, body) = call(
        &s,
        reqwest::Method::POST,
        "/admin/api/users/alice/disconnect",
        Some(&op.cookie),
        Some(&op.csrf),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["disconnected"], 1);
    let bye = alice.goodbye(Duration::from_secs(5)).await;
    assert_eq!(u16::from(bye.close.unwrap().code), 4403);
    let r = bob.request(json!({"type": "ping"})).await;
    assert_eq!(r["ok"], true, "bob is still connected");

    // One connection by id.
    let (_, body) = call(
        &s,
        reqwest::Method::GET,
        "/admin/api/users/bob",
        Some(&op.cookie),
        Some(&op.csrf),
    )
    .await;
    let client = body["connections"][0]["client"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = call(
        &s,
        reqwest::Method::POST,
        &format!("/admin/api/connections/{client}/disconnect"),
        Some(&op.cookie),
        Some(&op.csrf),
    )
    .await;
    assert_eq!(status, 200);
    let bye = bob.goodbye(Duration::from_secs(5)).await;
    assert_eq!(u16::from(bye.close.unwrap().code), 4403);
}

/// The dashboard is served by the gateway: its connection comes from the gateway's own origin,
/// which `allowed_origins` (the application's pages) does not list; another origin is refused
/// even with a valid ticket.
#[tokio::test]
async fn tickets_come_from_the_gateways_own_origin() {
    let s = TestServer::with_config(&config_toml(&format!(
        "[server]\nallowed_origins = [\"https://app.example\"]\n{}",
        common::admin_section()
    )))
    .await;
    let op = sign_in(&s).await;
    let own = format!("http://{}", s.addr);
    let url = |t: &str| format!("{}?token={t}", s.ws_url());
    let t = ticket(&s, &op).await;
    let evil = Client::connect_with_headers(&url(&t), &[("origin", "https://app.example")]).await;
    assert!(evil.is_err(), "a ticket from another origin is refused");
    let t = ticket(&s, &op).await;
    let mut c = Client::connect_with_headers(&url(&t), &[("origin", &own)])
        .await
        .expect("the gateway's own origin");
    assert_eq!(c.next().await["type"], "welcome");
}

/// The history page's `limit` is refused outside its documented 1–100 (it was clamped), so
/// the dashboard and docs/openapi.json agree on what a page is.
#[tokio::test]
async fn the_history_page_limit_is_bounded_as_documented() {
    let s = TestServer::with_config(&admin_config()).await;
    let op = sign_in(&s).await;
    for n in 1..=3 {
        let (status, _) = s.publish("history.small", json!({ "n": n })).await;
        assert_eq!(status, 200);
    }
    let page = |limit: &str| {
        let path = format!("/admin/api/channels/history.small/history?limit={limit}");
        let (s, op) = (&s, &op);
        async move {
            call(
                s,
                reqwest::Method::GET,
                &path,
                Some(&op.cookie),
                Some(&op.csrf),
            )
            .await
        }
    };
    for bad in ["0", "101"] {
        let (status, body) = page(bad).await;
        assert_eq!(status, 400, "limit={bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("between 1 and 100"),
            "{body}"
        );
    }
    for (limit, expected) in [("1", 1), ("100", 3)] {
        let (status, body) = page(limit).await;
        assert_eq!(status, 200, "limit={limit}: {body}");
        assert_eq!(
            body["publications"].as_array().unwrap().len(),
            expected,
            "{body}"
        );
    }
}
