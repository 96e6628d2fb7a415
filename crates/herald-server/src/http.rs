//! HTTP details shared by every route: the JSON error envelope for responses the handlers did
//! not write themselves, and header parsing by the RFCs (RFC 9110 credentials, RFC 6454
//! origins).
//!
//! Handlers answer errors through `ApiError`, but some answers never reach a handler: the
//! router's 405 for a method a path does not serve, and extractor rejections (a query string
//! or path segment that does not parse, a `/v1/ws` request that is not an upgrade). Those leave
//! axum as `text/plain` or with no body at all; [`json_errors`] rewrites them into the
//! documented `{"error":{"code","message"}}`, keeping the status and headers such as `Allow`.

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
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
