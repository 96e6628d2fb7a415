//! The admin dashboard at `/admin` (only when `[admin] enabled = true`).
//!
//! The page is a React app built from `clients/typescript/admin` (`npm run build` there writes
//! `assets/admin/`), embedded like the demo page. It signs in through [`auth`], then reads
//! through the admin API below and watches through the gateway itself: its `@herald/client`
//! connection (admitted with a one-time ticket) subscribes to the internal channel
//! `$admin:nodes`, where every node publishes its statistics (`herald_node::admin`), and to
//! any channel it tails.
//!
//! The page's files carry no data and are served to anyone; every `/admin/api/*` call but
//! sign-in needs the session cookie and, except the session probe, the session's CSRF token
//! in `X-CSRF-Token`. Every action (sign-in, sign-out, publish, disconnect) is logged under
//! the `herald::admin` target with the operator's name.
//!
//! | route | what |
//! | --- | --- |
//! | `POST /admin/api/login` | `{"user","password"}` → `{"user","csrf","idle_timeout_ms"}` and the cookie |
//! | `POST /admin/api/logout` | ends the session, closes its connections |
//! | `GET /admin/api/session` | the signed-in operator and the CSRF token (401 otherwise) |
//! | `POST /admin/api/ticket` | a one-time ticket for `/v1/ws?token=` |
//! | `GET /admin/api/overview` | this node's statistics now |
//! | `GET /admin/api/registry` | every descriptor, and the config's warnings |
//! | `GET /admin/api/channels/{channel}` | descriptor, position, presence |
//! | `GET /admin/api/channels/{channel}/history?before=&limit=` | a page of history |
//! | `POST /admin/api/channels/{channel}/publish` | `{"data"}`, through gate 3 like the server API |
//! | `GET /admin/api/users?q=` | users with connections on this node |
//! | `GET /admin/api/users/{user}` | their connections here |
//! | `POST /admin/api/users/{user}/disconnect` | every connection of the user, cluster-wide (4403) |
//! | `POST /admin/api/connections/{client}/disconnect` | one connection on this node (4403) |

pub mod auth;

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use herald_core::broker::HistoryQuery;
use herald_core::protocol::{ErrorCode, Goodbye, PublicationView};
use herald_core::registry::{Descriptor, Scope};
use herald_node::Node;
use herald_node::admission::{cookie_value, same_origin};
use herald_node::metrics::Source;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::api::{ApiError, read_body};
pub use auth::AdminAuth;
use auth::{COOKIE, Session, SignInError};

const PAGE: &str = include_str!("../../assets/admin/index.html");
const APP_JS: &str = include_str!("../../assets/admin/app.js");
const APP_CSS: &str = include_str!("../../assets/admin/app.css");

/// The header the page sends on its periodic refreshes: they do not count as use, so an
/// unattended dashboard still reaches its idle timeout.
pub const BACKGROUND: &str = "x-herald-admin-background";

/// What the admin handlers share.
#[derive(Debug, Clone)]
pub struct Admin {
    node: Arc<Node>,
    auth: Arc<AdminAuth>,
}

/// Builds the admin side of `node` and wires its tickets into gate 1. Errors: a password
/// hash that does not parse.
pub fn install(node: &Arc<Node>) -> Result<Admin, String> {
    let auth = Arc::new(AdminAuth::new(&node.config.admin)?);
    // A fresh node: the cell is empty.
    let _ = node.admin_tickets.set(auth.clone());
    Ok(Admin {
        node: node.clone(),
        auth,
    })
}

impl Admin {
    /// The admin side [`install`] gave `node`, if the dashboard is enabled.
    pub fn of(node: &Arc<Node>) -> Option<Self> {
        let auth = node
            .admin_tickets
            .get()?
            .clone()
            .into_any()
            .downcast::<AdminAuth>()
            .ok()?;
        Some(Self {
            node: node.clone(),
            auth,
        })
    }

    /// Starts the statistics publisher and the session sweeper (both end at shutdown).
    pub fn spawn_tasks(&self) {
        tokio::spawn(herald_node::admin::publish_stats(
            self.node.clone(),
            self.node.config.admin.stats_interval,
        ));
        tokio::spawn(auth::sweep_sessions(self.node.clone(), self.auth.clone()));
    }

    /// `/admin` and `/admin/api/*`.
    pub fn routes(&self) -> Router<Arc<Node>> {
        let guarded = Router::new()
            .route("/admin/api/logout", post(logout))
            .route("/admin/api/ticket", post(ticket))
            .route("/admin/api/overview", get(overview))
            .route("/admin/api/registry", get(registry))
            .route("/admin/api/channels/{channel}", get(channel))
            .route("/admin/api/channels/{channel}/history", get(history))
            .route("/admin/api/channels/{channel}/publish", post(publish))
            .route("/admin/api/users", get(users))
            .route("/admin/api/users/{user}", get(user))
            .route("/admin/api/users/{user}/disconnect", post(disconnect_user))
            .route(
                "/admin/api/connections/{client}/disconnect",
                post(disconnect_client),
            )
            .route_layer(from_fn_with_state(self.clone(), require_session));
        let open = Router::new()
            .route("/admin", get(page))
            .route("/admin/", get(page))
            .route("/admin/app.js", get(app_js))
            .route("/admin/app.css", get(app_css))
            .route("/admin/api/login", post(login))
            .route("/admin/api/session", get(session));
        // Providing the `Admin` state turns it into a router of the node's state type.
        guarded.merge(open).with_state(self.clone())
    }
}

type St = State<Admin>;

/// The signed-in operator, put in the request by [`require_session`].
#[derive(Debug, Clone)]
struct Operator(Session);

/// 401 in the envelope.
fn unauthorized(message: &str) -> Response {
    ApiError::new(ErrorCode::Unauthorized, message).into_response()
}

fn session_id(headers: &HeaderMap) -> Option<&str> {
    let cookies: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    cookie_value(&cookies, COOKIE)
}

/// A request from another origin than the one it was sent to is refused: the `Origin` a
/// browser sends must name the `Host` (defense in depth beside SameSite and the CSRF token).
fn cross_origin(headers: &HeaderMap) -> bool {
    match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => !same_origin(origin, host),
        (Some(_), None) => true,
        _ => false,
    }
}

/// Middleware: a live session (cookie), the same origin, and its CSRF token. Checked before
/// the method (an unauthenticated caller learns nothing of the surface, not even its 405s).
async fn require_session(State(a): St, mut req: Request, next: Next) -> Response {
    let refusal = {
        let headers = req.headers();
        let background = headers.contains_key(BACKGROUND);
        let session = session_id(headers).and_then(|id| a.auth.session(id, !background));
        let csrf = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        match session {
            _ if cross_origin(headers) => {
                ApiError::new(ErrorCode::Forbidden, "cross-origin request refused")
            }
            None => ApiError::new(
                ErrorCode::Unauthorized,
                "sign in first: no admin session, or it has ended",
            ),
            Some(s) if !AdminAuth::csrf_ok(&s, csrf) => {
                tracing::warn!(target: "herald::admin", admin = %s.user, path = %req.uri().path(), "admin call without a valid CSRF token refused");
                ApiError::new(
                    ErrorCode::Forbidden,
                    "missing or wrong X-CSRF-Token for this session",
                )
            }
            Some(s) => {
                req.extensions_mut().insert(Operator(s));
                return next.run(req).await;
            }
        }
    };
    // Read (a bounded amount of) what the client is still sending before answering, so the
    // refusal is not lost to a connection reset (RFC 9112 §9.6; see `api::read_body`).
    let _ = read_body(req.into_body(), 0).await;
    refusal.into_response()
}

async fn page() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            // The page is never framed (clickjacking) and loads only its own files.
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
            ),
        ],
        Html(PAGE),
    )
        .into_response()
}

async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
}

async fn app_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_CSS,
    )
}

#[derive(Debug, Deserialize)]
struct LoginBody {
    user: String,
    password: String,
}

fn session_body(a: &Admin, s: &Session) -> Value {
    json!({
        "user": s.user,
        "csrf": s.csrf,
        "node": a.node.id(),
        "idle_timeout_ms": a.auth.idle_timeout().as_millis() as u64,
    })
}

/// Whether the request came over TLS, as the proxy in front says (`X-Forwarded-Proto` or
/// RFC 7239 `Forwarded: proto=https`).
fn over_tls(headers: &HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"));
    forwarded_proto || forwarded
}

fn cookie(a: &Admin, headers: &HeaderMap, value: &str, max_age: u64) -> HeaderValue {
    let secure = if a.node.config.admin.secure_cookie || over_tls(headers) {
        "; Secure"
    } else {
        ""
    };
    let text = format!(
        "{COOKIE}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    );
    HeaderValue::from_str(&text).expect("the cookie is ASCII")
}

async fn login(State(a): St, headers: HeaderMap, body: Body) -> Response {
    if cross_origin(&headers) {
        return ApiError::new(ErrorCode::Forbidden, "cross-origin request refused").into_response();
    }
    let bytes = match read_body(body, 4096).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let Ok(LoginBody { user, password }) = serde_json::from_slice(&bytes) else {
        return ApiError::new(ErrorCode::BadRequest, "expected {\"user\",\"password\"}")
            .into_response();
    };
    // Argon2 takes tens of milliseconds of CPU: off the async workers.
    let auth = a.auth.clone();
    let who = user.clone();
    let result = tokio::task::spawn_blocking(move || auth.sign_in(&who, &password)).await;
    match result {
        Ok(Ok((id, session))) => {
            tracing::info!(target: "herald::admin", admin = %session.user, "admin signed in");
            let lifetime = a.node.config.admin.session_lifetime.as_secs();
            let mut res = Json(session_body(&a, &session)).into_response();
            res.headers_mut()
                .insert(header::SET_COOKIE, cookie(&a, &headers, &id, lifetime));
            res
        }
        Ok(Err(SignInError::TooMany)) => {
            tracing::warn!(target: "herald::admin", user = %user, "admin sign-in refused: too many wrong passwords");
            ApiError::new(
                ErrorCode::RateLimited,
                "too many wrong passwords: try again in a minute",
            )
            .into_response()
        }
        Ok(Err(SignInError::Wrong)) => {
            tracing::warn!(target: "herald::admin", user = %user, "admin sign-in refused: wrong user or password");
            unauthorized("wrong user or password")
        }
        Err(_) => ApiError::new(ErrorCode::Internal, "sign-in failed").into_response(),
    }
}

async fn session(State(a): St, headers: HeaderMap) -> Response {
    let background = headers.contains_key(BACKGROUND);
    match session_id(&headers).and_then(|id| a.auth.session(id, !background)) {
        Some(s) => Json(session_body(&a, &s)).into_response(),
        None => unauthorized("not signed in"),
    }
}

async fn logout(State(a): St, headers: HeaderMap) -> Response {
    if let Some(s) = session_id(&headers).and_then(|id| a.auth.sign_out(id)) {
        tracing::info!(target: "herald::admin", admin = %s.user, "admin signed out");
        a.node.sessions.close_user(&s.conn_user, Goodbye::Kicked);
    }
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut()
        .insert(header::SET_COOKIE, cookie(&a, &headers, "", 0));
    res
}

async fn ticket(State(a): St, headers: HeaderMap) -> Response {
    let id = session_id(&headers).unwrap_or_default();
    Json(json!({ "ticket": a.auth.ticket(id), "ttl_ms": auth::TICKET_TTL.as_millis() as u64 }))
        .into_response()
}

async fn overview(State(a): St) -> Response {
    Json(json!({ "node": a.node.id(), "nodes": [herald_node::admin::snapshot(&a.node).await] }))
        .into_response()
}

fn scope_json(scope: &Scope) -> Value {
    match scope {
        Scope::Public => json!("public"),
        Scope::Authenticated => json!("authenticated"),
        Scope::Role(r) => json!({ "role": r }),
        Scope::User => json!("user"),
        Scope::Token => json!("token"),
        Scope::Proxy(p) => json!({ "proxy": p }),
    }
}

fn descriptor_json(d: &Descriptor) -> Value {
    json!({
        "name": d.pattern.as_str(),
        "scope": scope_json(&d.scope),
        "publish": d.publish.as_ref().map(scope_json),
        "auto_subscribe": d.auto_subscribe,
        "history": d.history.map(|h| json!({ "size": h.size, "ttl_ms": h.ttl.as_millis() as u64 })),
        "presence": d.presence,
        "schema": d.schema,
    })
}

async fn registry(State(a): St) -> Response {
    let channels: Vec<Value> = a
        .node
        .config
        .registry
        .descriptors()
        .iter()
        .map(descriptor_json)
        .collect();
    Json(json!({
        "channels": channels,
        "warnings": a.node.config.warnings,
        "config": a.node.config.file.as_ref().map(|f| f.display().to_string()),
    }))
    .into_response()
}

async fn channel(State(a): St, Path(name): Path<String>) -> Result<Response, ApiError> {
    let (descriptor, _) = a.node.resolve(&name)?;
    let position = a.node.history(&name, HistoryQuery::default()).await?;
    let presence = if descriptor.presence {
        Some(a.node.presence(&name, descriptor).await?)
    } else {
        None
    };
    let subscribers = a
        .node
        .hub
        .channels()
        .into_iter()
        .find(|(c, _)| **c == *name)
        .map_or(0, |(_, n)| n);
    Ok(Json(json!({
        "channel": name,
        "descriptor": descriptor_json(descriptor),
        "offset": position.position.offset,
        "epoch": position.position.epoch,
        "earliest": position.earliest,
        "subscribers_here": subscribers,
        "presence": presence,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct HistoryParams {
    before: Option<u64>,
    limit: Option<usize>,
}

/// The newest `limit` publications (default 20, at most 100) with offset below `before`
/// (default: all), oldest first.
async fn history(
    State(a): St,
    Path(name): Path<String>,
    Query(p): Query<HistoryParams>,
) -> Result<Response, ApiError> {
    let (descriptor, _) = a.node.resolve(&name)?;
    if descriptor.history.is_none() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("channel {name:?} keeps no history"),
        ));
    }
    let limit = crate::api::bounded("limit", p.limit, 20, 1..=100)?;
    let now = a.node.history(&name, HistoryQuery::default()).await?;
    let before = p
        .before
        .unwrap_or(now.position.offset + 1)
        .min(now.position.offset + 1);
    let after = before.saturating_sub(limit as u64 + 1);
    let result = a
        .node
        .history(
            &name,
            HistoryQuery {
                after: Some(after),
                limit,
            },
        )
        .await?;
    #[derive(Serialize)]
    struct Page<'a> {
        channel: &'a str,
        offset: u64,
        epoch: &'a str,
        earliest: u64,
        publications: Vec<PublicationView<'a>>,
    }
    Ok(Json(Page {
        channel: &name,
        offset: result.position.offset,
        epoch: &result.position.epoch,
        earliest: result.earliest,
        publications: result
            .publications
            .iter()
            .filter(|p| p.offset < before)
            .map(PublicationView::from)
            .collect(),
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
}

async fn publish(
    State(a): St,
    axum::Extension(Operator(op)): axum::Extension<Operator>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let limit = a.node.config.limits.max_payload_bytes * 2 + 4096;
    let bytes = read_body(body, limit).await?;
    let body: PublishBody<'_> = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("expected {{\"data\"}}: {e}")))?;
    let result = a
        .node
        .publish_as(Source::api, &name, body.data, None, None)
        .await;
    match &result {
        Ok(pos) => {
            tracing::info!(target: "herald::admin", admin = %op.user, channel = %name, offset = pos.offset, "admin published")
        }
        Err(e) => {
            tracing::info!(target: "herald::admin", admin = %op.user, channel = %name, code = e.code.as_str(), "admin publish refused")
        }
    }
    let pos = result?;
    Ok(Json(json!({ "offset": pos.offset, "epoch": pos.epoch })).into_response())
}

#[derive(Debug, Deserialize)]
struct UserQuery {
    #[serde(default)]
    q: String,
}

async fn users(State(a): St, Query(q): Query<UserQuery>) -> Response {
    let users: Vec<Value> = a
        .node
        .sessions
        .find_users(q.q.trim(), 100)
        .into_iter()
        .map(|(u, n)| json!({ "user": u, "connections": n }))
        .collect();
    Json(json!({ "node": a.node.id(), "users": users })).into_response()
}

async fn user(State(a): St, Path(user): Path<String>) -> Response {
    let connections: Vec<Value> = a
        .node
        .sessions
        .of_user(&user)
        .iter()
        .map(|s| {
            json!({
                "client": s.id,
                "transport": s.transport.get().copied().unwrap_or("connecting"),
                "remote": s.remote.map(|r| r.to_string()),
                "since_ms": s.since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                "subscriptions": a.node.hub.channels_of(s),
            })
        })
        .collect();
    Json(json!({ "node": a.node.id(), "user": user, "connections": connections })).into_response()
}

async fn disconnect_user(
    State(a): St,
    axum::Extension(Operator(op)): axum::Extension<Operator>,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    let n = a.node.kick(&user).await;
    tracing::info!(target: "herald::admin", admin = %op.user, user = %user, result = ?n.as_ref().map_err(|e| &e.message), "admin disconnected a user");
    Ok(Json(json!({ "disconnected": n? })).into_response())
}

async fn disconnect_client(
    State(a): St,
    axum::Extension(Operator(op)): axum::Extension<Operator>,
    Path(client): Path<String>,
) -> Result<Response, ApiError> {
    let found = a.node.sessions.close_client(&client, Goodbye::Kicked);
    tracing::info!(target: "herald::admin", admin = %op.user, client = %client, found, "admin disconnected a connection");
    if !found {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no connection {client:?} on this node"),
        ));
    }
    Ok(Json(json!({ "disconnected": 1 })).into_response())
}
