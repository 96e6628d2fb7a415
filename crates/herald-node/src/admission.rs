//! Gate 1 for every door: `/v1/ws`, `/v1/sse`, and the Socket.IO handshake all turn their
//! request into a [`Handshake`] and call [`Node::admit`], which answers [`Admitted`] or a
//! [`Refusal`] (a stable error code the transport renders its own way: an HTTP status and JSON
//! body, or a Socket.IO `CONNECT_ERROR`).
//!
//! Credentials, in this order: an `Authorization: Bearer` header (the scheme matched
//! case-insensitively, RFC 9110 §11.1), a token the transport's own handshake carries
//! (Socket.IO `auth`), `?token=` (browsers cannot set headers on a WebSocket), the configured
//! cookie. A cookie is sent by the browser on its own, so a cookie-authenticated request must
//! pass the origin check (CSRF).
//!
//! [`Sessions`] is the node's table of live sessions: by user (kicks, this node's share of the
//! per-user connection limit; the broker keeps the cluster-wide count) and, for transports whose commands arrive on separate HTTP requests (SSE), by an
//! unguessable session id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use herald_core::Identity;
use herald_core::broker::random_id;
use herald_core::protocol::{ClientInfo, ErrorBody, ErrorCode, Goodbye};
use tokio::sync::mpsc;

use crate::lock;
use crate::metrics::Gate;
use crate::node::Node;
use crate::outbox::Outbox;
use crate::session::SessionHandle;
use crate::session::transport::Inbound;

/// What gate 1 needs from a request, whatever the transport. Header values are passed raw
/// (every value of a repeated header), so the rules that read them live here, once.
#[derive(Debug, Default, Clone)]
pub struct Handshake<'a> {
    /// Every `Authorization` header value.
    pub authorization: Vec<&'a str>,
    /// A token carried by the transport's own handshake (Socket.IO CONNECT `auth.token`).
    pub auth_token: Option<&'a str>,
    /// The `token` query parameter.
    pub query_token: Option<&'a str>,
    /// Every `Cookie` header value.
    pub cookies: Vec<&'a str>,
    /// The `Origin` header.
    pub origin: Option<&'a str>,
    /// The `Host` header (the same-origin check for cookie credentials).
    pub host: Option<&'a str>,
    /// Every header as (name, value), for the connect proxy's `headers` (only those it names
    /// leave the gateway).
    pub headers: Vec<(&'a str, &'a str)>,
    /// The TCP peer's address, when the transport knows it (the admin dashboard shows it).
    pub remote: Option<std::net::SocketAddr>,
}

/// Why gate 1 refused a request: the code decides the HTTP status (401, 403, 429, 503).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub ErrorBody);

/// A request that passed gate 1: its identity and its place in the node's session table.
#[derive(Debug)]
pub struct Admitted {
    /// Who the client is.
    pub identity: Identity,
    /// The per-user slot, held for the session's lifetime.
    pub slot: Slot,
}

/// Where the credentials came from; cookie-borne ones need an origin check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Header,
    Handshake,
    Query,
    Cookie,
    None,
}

/// The token of an `Authorization` value in the `Bearer` scheme (RFC 6750 §2.1), read as RFC
/// 9110 says: the scheme name is case-insensitive (§11.1), one or more spaces separate it
/// from the credentials (§11.4; a tab is tolerated too), and whitespace around the field value
/// is not part of it (§5.5). `None` when the value is in another scheme; `Some("")` when it is
/// `Bearer` with nothing after it, which the caller refuses like any wrong token.
pub fn bearer_token(value: &str) -> Option<&str> {
    let is_ws = |c: char| c == ' ' || c == '\t';
    let value = value.trim_matches(is_ws);
    let (scheme, rest) = match value.find(is_ws) {
        Some(i) => (&value[..i], &value[i..]),
        None => (value, ""),
    };
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start_matches(is_ws))
}

/// The value of cookie `name` in `Cookie` header values (RFC 6265 §5.4: `name=value` pairs
/// separated by `; `); the first non-empty match wins. Emptiness is judged after removing the
/// optional quotes (RFC 6265 §4.1.1), so a cleared `name=""` never hides a later real value.
pub fn cookie_value<'a>(cookies: &[&'a str], name: &str) -> Option<&'a str> {
    cookies
        .iter()
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .find(|v| !v.is_empty())
}

/// An origin as RFC 6454 compares it: scheme and host lowercased, the port made explicit.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Splits `host[:port]` (RFC 9110 §7.2) (with `[v6]` literals); `None` when the port is not a number.
pub fn host_port(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        (format!("[{v6}]"), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) => Some(p.parse().ok()?),
    };
    if host.is_empty() {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

/// Parses `scheme://host[:port]` (a trailing `/` tolerated, for hand-written config); `None`
/// for anything else, including the opaque origin `null`.
fn parse_origin(s: &str) -> Option<Origin> {
    let (scheme, rest) = s.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return None;
    }
    let (host, port) = host_port(authority)?;
    let port = port.or_else(|| default_port(&scheme));
    Some(Origin { scheme, host, port })
}

/// Whether `origin` (an `Origin` header) is the configured `allowed` origin, compared as
/// RFC 6454 §4 serializes them: `https://App.Example.com` and `https://app.example.com:443`
/// are the same origin, `http://app.example.com` and `…:8443` are not.
pub fn origin_matches(allowed: &str, origin: &str) -> bool {
    match (parse_origin(allowed), parse_origin(origin)) {
        (Some(a), Some(o)) => a == o,
        _ => false,
    }
}

/// Whether `origin` names the host the request was sent to (`Host`, RFC 9110 §7.2), for
/// cookie-authenticated upgrades. The scheme is not compared (behind a TLS-terminating proxy
/// the gateway cannot know it), but it supplies the default port: `Host: example.com` is
/// `http://example.com:80` and `https://example.com:443`, not `http://example.com:8080`.
pub fn same_origin(origin: &str, host: &str) -> bool {
    let (Some(o), Some((host, port))) = (parse_origin(origin), host_port(host.trim())) else {
        return false;
    };
    o.host == host && o.port == port.or_else(|| default_port(&o.scheme))
}

#[cfg(test)]
mod header_rules {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Bearer\tabc"), Some("abc"));
        assert_eq!(bearer_token("Bearer"), Some(""));
        assert_eq!(bearer_token("Bearerabc"), None);
        assert_eq!(bearer_token("Basic abc"), None);
    }

    #[test]
    fn origins() {
        assert!(origin_matches(
            "https://App.Example.com",
            "https://app.example.com:443"
        ));
        assert!(origin_matches(
            "http://localhost:3000/",
            "http://LOCALHOST:3000"
        ));
        assert!(!origin_matches(
            "https://app.example.com",
            "http://app.example.com"
        ));
        assert!(!origin_matches(
            "https://a.example",
            "https://a.example.evil"
        ));
        assert!(!origin_matches("null", "null"));
        assert!(origin_matches("http://[::1]:8080", "http://[::1]:8080"));
        assert!(same_origin("http://EXAMPLE.com", "example.com"));
        assert!(same_origin("https://example.com", "example.com:443"));
        assert!(!same_origin("http://example.com:8080", "example.com"));
        assert!(!same_origin("null", "example.com"));
    }
}

impl Handshake<'_> {
    fn credentials(&self, cookie: Option<&str>) -> Result<(Option<&str>, Via), Refusal> {
        if self.authorization.len() > 1 {
            return Err(Refusal(ErrorBody::new(
                ErrorCode::Unauthorized,
                "more than one Authorization header",
            )));
        }
        if let Some(t) = self.authorization.first().and_then(|v| bearer_token(v)) {
            return Ok((Some(t), Via::Header));
        }
        if let Some(t) = self.auth_token.filter(|t| !t.is_empty()) {
            return Ok((Some(t), Via::Handshake));
        }
        if let Some(t) = self.query_token.filter(|t| !t.is_empty()) {
            return Ok((Some(t), Via::Query));
        }
        if let Some(t) = cookie.and_then(|name| cookie_value(&self.cookies, name)) {
            return Ok((Some(t), Via::Cookie));
        }
        Ok((None, Via::None))
    }
}

impl Node {
    /// Browser safety: an explicit allow-list applies to every request that names an origin;
    /// without one, only cookie-authenticated requests are checked (same origin required).
    fn origin_allowed(&self, h: &Handshake<'_>, via: Via) -> bool {
        let allowed = &self.config.server.allowed_origins;
        match h.origin {
            Some(o) if !allowed.is_empty() => {
                allowed.iter().any(|a| a == "*" || origin_matches(a, o))
            }
            Some(o) if via == Via::Cookie => h.host.is_some_and(|host| same_origin(o, host)),
            _ => true,
        }
    }

    /// Gate 1 without taking a slot: draining, origin, credentials. Used by [`Node::admit`],
    /// by command requests of request-routed transports, and by the plain-HTTP probe of a
    /// WebSocket endpoint (which tells a client why its upgrade would be refused).
    pub async fn authenticate(&self, h: &Handshake<'_>) -> Result<Identity, Refusal> {
        if self.is_draining() {
            return Err(Refusal(ErrorBody::new(
                ErrorCode::Unavailable,
                "server is shutting down",
            )));
        }
        let (token, mut via) = h
            .credentials(self.config.auth.cookie.as_deref())
            .inspect_err(|_| self.metrics.reject(Gate::connect, ErrorCode::Unauthorized))?;
        // The admin dashboard's ticket: never a JWT, so it is recognised before the JWT
        // verifier sees it, and only when the dashboard is on. The dashboard is served by the
        // gateway itself: its origin is the gateway's, whatever `allowed_origins` says about
        // the application's pages, and nothing else may present a ticket from a browser.
        if let Some(ticket) = token.filter(|t| t.starts_with(crate::admin::TICKET_PREFIX))
            && let Some(tickets) = self.admin_tickets.get()
        {
            let same = match (h.origin, h.host) {
                (None, _) => true,
                (Some(o), Some(host)) => same_origin(o, host),
                (Some(_), None) => false,
            };
            if !same {
                self.metrics.reject(Gate::connect, ErrorCode::Forbidden);
                return Err(Refusal(ErrorBody::new(
                    ErrorCode::Forbidden,
                    "origin not allowed",
                )));
            }
            return tickets.redeem(ticket).ok_or_else(|| {
                self.metrics.reject(Gate::connect, ErrorCode::Unauthorized);
                Refusal(ErrorBody::new(
                    ErrorCode::Unauthorized,
                    "admin ticket unknown, used or expired: sign in again",
                ))
            });
        }
        let proxy = match (token, &self.config.auth.connect_proxy) {
            // What the backend judges is the browser's cookies: the CSRF rule of cookies.
            (None, Some(name)) => {
                via = Via::Cookie;
                Some(name)
            }
            _ => None,
        };
        if !self.origin_allowed(h, via) {
            self.metrics.reject(Gate::connect, ErrorCode::Forbidden);
            return Err(Refusal(ErrorBody::new(
                ErrorCode::Forbidden,
                "origin not allowed",
            )));
        }
        if let Some(name) = proxy {
            return self.proxy_connect(name, h).await.inspect_err(|r| {
                self.metrics.reject(Gate::connect, r.0.code);
            });
        }
        self.auth().authenticate(token).map_err(|e| {
            self.metrics.reject(Gate::connect, ErrorCode::Unauthorized);
            tracing::debug!(reason = %e, "connection refused");
            Refusal(ErrorBody::new(ErrorCode::Unauthorized, e.to_string()))
        })
    }

    /// Gate 1: credentials, origin, and a per-user connection slot
    /// (`limits.max_connections_per_user`, counted across every node through the broker;
    /// anonymous connections are not counted). When the broker cannot be asked, the
    /// connection is refused with `unavailable` (503) rather than admitted past the limit.
    pub async fn admit(self: &Arc<Self>, h: &Handshake<'_>) -> Result<Admitted, Refusal> {
        let identity = self.authenticate(h).await?;
        let handle = Arc::new(
            SessionHandle::new(
                self.next_client_id(),
                identity.user.clone(),
                Outbox::new(self.config.limits.outbound_queue_bytes),
            )
            .with_remote(h.remote),
        );
        let max = self.config.limits.max_connections_per_user;
        let too_many = || {
            self.metrics
                .reject(Gate::connect, ErrorCode::TooManyConnections);
            Refusal(ErrorBody::new(
                ErrorCode::TooManyConnections,
                format!("at most {max} connections per user"),
            ))
        };
        // This node's own count first: no round trip to refuse what is over it here.
        if !self.sessions.register(&handle, max) {
            return Err(too_many());
        }
        // From here on, dropping the slot undoes both registrations.
        let mut slot = Slot {
            node: self.clone(),
            handle,
            route: None,
            shared: false,
        };
        match self.broker.session_open(&slot.client_info(), max).await {
            Ok(true) => slot.shared = true,
            Ok(false) => return Err(too_many()),
            Err(e) => {
                self.metrics.reject(Gate::connect, ErrorCode::Unavailable);
                return Err(Refusal(ErrorBody::new(
                    ErrorCode::Unavailable,
                    format!("the per-user connection count cannot be checked: {e}"),
                )));
            }
        }
        Ok(Admitted { identity, slot })
    }
}

/// A session's place in the node's tables; dropping it (also when an upgrade never
/// completes) frees the per-user slot and the session id.
#[derive(Debug)]
pub struct Slot {
    node: Arc<Node>,
    handle: Arc<SessionHandle>,
    route: Option<Arc<str>>,
    /// Registered with the broker (the cluster-wide count): unregistered on drop.
    shared: bool,
}

impl Slot {
    fn client_info(&self) -> ClientInfo {
        ClientInfo {
            client: self.handle.id.to_string(),
            user: self.handle.user.as_deref().map(str::to_owned),
            info: None,
        }
    }

    /// The node the session lives on.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The part of the session other tasks touch.
    pub fn handle(&self) -> &Arc<SessionHandle> {
        &self.handle
    }

    /// Gives the session an unguessable id (22 alphanumerics, about 131 bits) under which
    /// command requests reach it, and the inbox they are delivered to (`capacity` commands
    /// waiting at most; more are refused with 429).
    pub fn open_route(&mut self, capacity: usize) -> (Arc<str>, mpsc::Receiver<Inbound>) {
        let key: Arc<str> = Arc::from(random_id(22));
        let (tx, rx) = mpsc::channel(capacity);
        lock(&self.node.sessions.routes).insert(
            key.clone(),
            Route {
                handle: self.handle.clone(),
                inbox: tx,
            },
        );
        self.route = Some(key.clone());
        (key, rx)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.node.sessions.unregister(&self.handle);
        if self.shared
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            // Drop cannot wait; the broker retries by itself when Redis is away.
            let broker = self.node.broker.clone();
            let info = self.client_info();
            rt.spawn(async move {
                if let Err(e) = broker.session_close(&info).await {
                    tracing::debug!(error = %e, "session unregister deferred");
                }
            });
        }
        if let Some(key) = &self.route {
            lock(&self.node.sessions.routes).remove(key);
        }
    }
}

/// Where the commands of one request-routed session go.
#[derive(Debug, Clone)]
pub struct Route {
    /// The session they are for (its user decides who may post).
    pub handle: Arc<SessionHandle>,
    /// The session's inbox.
    pub inbox: mpsc::Sender<Inbound>,
}

/// The node's live sessions, by user and by session id.
#[derive(Debug, Default)]
pub struct Sessions {
    users: Mutex<HashMap<Arc<str>, Vec<Arc<SessionHandle>>>>,
    routes: Mutex<HashMap<Arc<str>, Route>>,
}

impl Sessions {
    /// Takes a per-user slot; false when the user already has `max`.
    fn register(&self, handle: &Arc<SessionHandle>, max: usize) -> bool {
        let Some(user) = &handle.user else {
            return true;
        };
        let mut users = lock(&self.users);
        let conns = users.entry(user.clone()).or_default();
        if conns.len() >= max {
            return false;
        }
        if conns.is_empty() {
            // Most users hold one connection on a node: room for one handle, not the four a
            // first `push` reserves.
            conns.reserve_exact(1);
        }
        conns.push(handle.clone());
        true
    }

    fn unregister(&self, handle: &Arc<SessionHandle>) {
        let Some(user) = &handle.user else { return };
        let mut users = lock(&self.users);
        if let Some(conns) = users.get_mut(user) {
            conns.retain(|c| !Arc::ptr_eq(c, handle));
            if conns.is_empty() {
                users.remove(user);
            }
        }
    }

    /// The sessions of one user on this node.
    pub fn of_user(&self, user: &str) -> Vec<Arc<SessionHandle>> {
        lock(&self.users).get(user).cloned().unwrap_or_default()
    }

    /// Users on this node whose id contains `query` (any user when it is empty), sorted, at
    /// most `limit`, each with its number of sessions here. For the admin dashboard's search.
    pub fn find_users(&self, query: &str, limit: usize) -> Vec<(Arc<str>, usize)> {
        let mut found: Vec<(Arc<str>, usize)> = lock(&self.users)
            .iter()
            .filter(|(u, _)| u.contains(query))
            .map(|(u, s)| (u.clone(), s.len()))
            .collect();
        found.sort();
        found.truncate(limit);
        found
    }

    /// Closes the session with client id `client` on this node with `goodbye`; false when
    /// no session here has that id.
    pub fn close_client(&self, client: &str, goodbye: Goodbye) -> bool {
        let users = lock(&self.users);
        let found = users.values().flatten().find(|s| &*s.id == client).cloned();
        drop(users);
        match found {
            Some(s) => {
                s.outbox.close(goodbye);
                true
            }
            None => false,
        }
    }

    /// Closes every session of `user` on this node with `goodbye`; returns how many.
    pub fn close_user(&self, user: &str, goodbye: Goodbye) -> usize {
        let sessions = self.of_user(user);
        for s in &sessions {
            s.outbox.close(goodbye);
        }
        sessions.len()
    }

    /// The session with this id, if it is live and request-routed.
    pub fn route(&self, key: &str) -> Option<Route> {
        lock(&self.routes).get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_whitespace_tolerant() {
        for v in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "Bearer   abc  ",
            " Bearer\tabc",
        ] {
            assert_eq!(bearer_token(v), Some("abc"), "{v:?}");
        }
        for v in ["Basic abc", "Bearerabc"] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
        // Bearer with nothing after it is refused like any wrong token.
        assert_eq!(bearer_token("Bearer "), Some(""));
    }

    #[test]
    fn cookies_are_found_among_pairs() {
        assert_eq!(
            cookie_value(&["a=1; herald=tok; b=2"], "herald"),
            Some("tok")
        );
        assert_eq!(cookie_value(&["a=1", "herald=tok"], "herald"), Some("tok"));
        assert_eq!(cookie_value(&["herald="], "herald"), None);
        assert_eq!(cookie_value(&["xherald=1"], "herald"), None);
        assert_eq!(cookie_value(&["herald=\"tok\""], "herald"), Some("tok"));
        // Found by the `admission` fuzz target: a quoted empty value counted as a credential
        // (an empty token), hiding the real one after it.
        assert_eq!(cookie_value(&[r#"herald="""#], "herald"), None);
        assert_eq!(cookie_value(&["herald=\"", "herald="], "herald"), None);
        assert_eq!(
            cookie_value(&[r#"herald=""; herald=tok"#], "herald"),
            Some("tok")
        );
    }
}
