//! HTTP details shared by every route: the JSON error envelope for responses the handlers did
//! not write themselves, and header parsing by the RFCs (RFC 9110 credentials and singleton
//! fields, RFC 6454 origins), shared by the server API and the `/v1/ws` upgrade.
//!
//! Handlers answer errors through `ApiError`, but some answers never reach a handler: the
//! router's 405 for a method a path does not serve, and extractor rejections (a query string
//! or path segment that does not parse, a `/v1/ws` request that is not an upgrade). Those leave
//! axum as `text/plain` or with no body at all; [`json_errors`] rewrites them into the
//! documented `{"error":{"code","message"}}`, keeping the status and headers such as `Allow`.

use axum::Json;
use axum::extract::Request;
use axum::http::uri::Authority;
use axum::http::{HeaderName, HeaderValue, StatusCode, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herald_core::protocol::{ErrorBody, ErrorCode};
use serde_json::json;

/// The stable code for a status nobody chose a code for.
fn code_for(status: StatusCode) -> ErrorCode {
    match status {
        StatusCode::BAD_REQUEST => ErrorCode::BadRequest,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        s if s.is_client_error() => ErrorCode::BadRequest,
        _ => ErrorCode::Internal,
    }
}

/// The longest plain-text rejection kept as the envelope's message.
const MAX_MESSAGE: usize = 1024;

/// Middleware: every 4xx/5xx that is not already JSON leaves as the JSON error envelope.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    // axum's rejection texts are short and say what was wrong ("Failed to deserialize query
    // string: since: invalid digit found in string"); keep them as the message.
    let text = axum::body::to_bytes(body, MAX_MESSAGE)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = match (text.is_empty(), status) {
        (false, _) => text,
        // The router adds `Allow` on the way out, after this layer.
        (true, StatusCode::METHOD_NOT_ALLOWED) => {
            "this path does not serve that method (see the Allow header)".to_owned()
        }
        (true, s) => s.canonical_reason().unwrap_or("error").to_owned(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = Json(json!({ "error": ErrorBody::new(code_for(status), message) }));
    let mut out = body.into_response();
    *out.status_mut() = status;
    // Everything else the original answer said (`Allow`, `WWW-Authenticate`, …) stays.
    *out.headers_mut() = parts.headers;
    out
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

/// Fields that are not lists (RFC 9110 §5.3): a request with two of them is ambiguous — a proxy
/// in front may have checked one while Herald would use the other — so it is refused.
const SINGLETONS: [HeaderName; 3] = [header::AUTHORIZATION, header::ORIGIN, header::HOST];

/// `uri-host [ ":" port ]` (RFC 9110 §7.2): an authority without userinfo, with a numeric port.
fn valid_host(value: &str) -> bool {
    value.parse::<Authority>().is_ok() && !value.contains('@') && host_port(value).is_some()
}

fn bad_request(message: String) -> Response {
    let body = ErrorBody::new(ErrorCode::BadRequest, message);
    (StatusCode::BAD_REQUEST, Json(json!({ "error": body }))).into_response()
}

/// Middleware: 400 `bad_request` for a request that repeats a singleton field, or (RFC 9112
/// §3.2) an HTTP/1.1 request without exactly one valid `Host`.
pub async fn check_singleton_headers(req: Request, next: Next) -> Response {
    for name in &SINGLETONS {
        if req.headers().get_all(name).iter().nth(1).is_some() {
            return bad_request(format!("more than one {name} header (RFC 9110 §5.3)"));
        }
    }
    match req.headers().get(header::HOST) {
        None if req.version() == Version::HTTP_11 => {
            return bad_request("an HTTP/1.1 request needs a Host header (RFC 9112 §3.2)".into());
        }
        Some(host) if !host.to_str().is_ok_and(valid_host) => {
            return bad_request("invalid Host header (RFC 9112 §3.2)".into());
        }
        _ => {}
    }
    next.run(req).await
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

/// Splits `host[:port]` (with `[v6]` literals); `None` when the port is not a number.
fn host_port(authority: &str) -> Option<(String, Option<u16>)> {
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
mod tests {
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
