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
use herald_node::admission::host_port;
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
