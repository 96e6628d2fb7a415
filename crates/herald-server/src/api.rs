//! The server API (for backends) and the operational endpoints.
//!
//! Every error leaves as `{"error":{"code","message"[,"pointer"]}}` with a status derived from
//! its stable code, through the one [`ApiError`] type.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herald_core::broker::{HistoryQuery, Position};
use herald_core::input::{PublishRef, json_shape, parse_publish_ref};
use herald_core::protocol::{ErrorBody, ErrorCode, PublicationView};
use herald_core::source::{API_SCOPE, scoped_key};
use herald_node::metrics::Source;
use herald_node::{BatchItem, Node};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

/// Most items one batch may carry.
pub const MAX_BATCH: usize = 1000;

/// An API error: a stable code, a message, and the status the code implies.
#[derive(Debug)]
pub struct ApiError(pub ErrorBody);

impl From<ErrorBody> for ApiError {
    fn from(e: ErrorBody) -> Self {
        Self(e)
    }
}

impl ApiError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(ErrorBody::new(code, message))
    }
}

/// The HTTP status of each stable error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::UnknownChannel | ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::InvalidPayload => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited | ErrorCode::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::AlreadySubscribed
        | ErrorCode::NotSubscribed
        | ErrorCode::TooManySubscriptions => StatusCode::CONFLICT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        // Only in rpc replies; never an HTTP answer of the gateway's own.
        ErrorCode::RpcError => StatusCode::BAD_GATEWAY,
        ErrorCode::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (status_of(self.0.code), Json(json!({ "error": self.0 }))).into_response();
        if self.0.code == ErrorCode::Unauthorized {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static header"),
            );
        }
        res
    }
}

type Gw = State<Arc<Node>>;

/// Middleware: `Authorization: Bearer <api key>` (scheme case-insensitive, RFC 9110 §11.1),
/// compared in constant time.
pub async fn require_api_key(State(gw): Gw, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(herald_node::admission::bearer_token);
    let ok = match (&gw.config.api.key, presented) {
        (Some(expected), Some(given)) => bool::from(expected.as_bytes().ct_eq(given.as_bytes())),
        _ => false,
    };
    if ok {
        next.run(req).await
    } else {
        gw.metrics
            .reject(herald_node::metrics::Gate::publish, ErrorCode::Unauthorized);
        let message = if gw.config.api.key.is_none() {
            "the server API is disabled: no api.key configured"
        } else {
            "missing or wrong API key (Authorization: Bearer <api key>)"
        };
        ApiError::new(ErrorCode::Unauthorized, message).into_response()
    }
}

/// How far past its limit a body is still read (and dropped) before answering 413. A server
/// that answers while the client is still sending and then closes with unread bytes makes
/// the kernel reset the connection, and the client loses the 413 it was sent (RFC 9112 §9.6);
/// reading a bounded tail first lets the envelope arrive.
const DRAIN_PAST_LIMIT: usize = 16 << 20;

pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("could not read the request body: {e}"),
            )
        })?;
        total = total.saturating_add(chunk.len());
        if total <= limit {
            buf.extend_from_slice(&chunk);
        } else if total > limit.saturating_add(DRAIN_PAST_LIMIT) {
            break;
        }
    }
    if total > limit {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body larger than {limit} bytes"),
        ));
    }
    Ok(Bytes::from(buf))
}

fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
}

/// One publication through the one parser (`herald_core::input`), which each item of a batch
/// goes through too ([`publish_batch`]); its idempotency key is scoped to the API so it never
/// matches a key a source gave (see `herald_core::source::scoped_key`).
async fn publish_one(gw: &Node, text: &str) -> Result<Position, ErrorBody> {
    let input = parse_publish_ref(text)?;
    let key = input.idempotency_key.map(|k| scoped_key(API_SCOPE, &k));
    gw.publish_as(Source::api, &input.channel, input.data, key, None)
        .await
}

#[derive(Debug, Serialize)]
struct Published {
    offset: u64,
    epoch: Arc<str>,
}

fn single_body_limit(gw: &Node) -> usize {
    // The envelope and JSON escaping may add to `data`; its exact size is checked after parsing.
    gw.config.limits.max_payload_bytes * 2 + 4096
}

pub async fn publish(State(gw): Gw, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, single_body_limit(&gw)).await?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("invalid JSON: not UTF-8: {e}"),
        )
    })?;
    let pos = publish_one(&gw, text).await?;
    Ok(Json(Published {
        offset: pos.offset,
        epoch: pos.epoch,
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody<'a> {
    /// Kept as text so each item goes through the same parser as a single publish (a `Value`
    /// would already have dropped a repeated key).
    #[serde(borrow)]
    publications: Vec<&'a RawValue>,
}

pub async fn publish_batch(State(gw): Gw, body: Body) -> Result<Response, ApiError> {
    let limit = single_body_limit(&gw)
        .saturating_mul(MAX_BATCH)
        .min(64 << 20);
    let bytes = read_body(body, limit).await?;
    let batch: BatchBody<'_> = parse(&bytes).map_err(|e| {
        // serde reads a struct from an array too ("invalid type: map, expected a sequence"
        // for `[{…}]`): name the shape the endpoint wants instead.
        let message = match std::str::from_utf8(&bytes).map(json_shape) {
            Ok(Err(syntax)) => format!("invalid JSON body: {syntax}"),
            Ok(Ok(Some(kind))) => {
                format!("invalid JSON body: expected {{\"publications\":[…]}}, got {kind}")
            }
            _ => return e,
        };
        ApiError::new(ErrorCode::BadRequest, message)
    })?;
    if batch.publications.len() > MAX_BATCH {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("at most {MAX_BATCH} publications per batch"),
        ));
    }
    // Each item through the one parser, as a single publish; those that parse go to the
    // broker together, in batch order (one round trip on Redis; items on one channel keep
    // their batch order), and each answer goes back to its item's place.
    let parsed: Vec<Result<PublishRef<'_>, ErrorBody>> = batch
        .publications
        .iter()
        .map(|item| parse_publish_ref(item.get()))
        .collect();
    let items: Vec<BatchItem<'_>> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .map(|input| BatchItem {
            channel: &input.channel,
            data: input.data,
            idempotency_key: input
                .idempotency_key
                .as_ref()
                .map(|k| scoped_key(API_SCOPE, k)),
        })
        .collect();
    let mut published = gw.publish_batch_as(Source::api, items).await.into_iter();
    let results = parsed
        .into_iter()
        .map(|p| {
            let result = p.and_then(|_| {
                published
                    .next()
                    .expect("publish_batch_as answers one result per item")
            });
            match result {
                Ok(pos) => BatchResult::Published(Published {
                    offset: pos.offset,
                    epoch: pos.epoch,
                }),
                Err(error) => BatchResult::Failed { error },
            }
        })
        .collect();
    Ok(Json(BatchAnswer { results }).into_response())
}

/// `{"results":[…]}`, serialized straight from the positions (a `Value` per item cost
/// several allocations per publication).
#[derive(Debug, Serialize)]
struct BatchAnswer {
    results: Vec<BatchResult>,
}

/// One item's answer: `{"offset","epoch"}` or `{"error":{…}}`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum BatchResult {
    Published(Published),
    Failed { error: ErrorBody },
}

pub async fn channels(State(gw): Gw) -> Json<Value> {
    let channels: Vec<Value> = gw
        .hub
        .channels()
        .into_iter()
        // The admin dashboard's internal channels are not part of the registry's surface.
        .filter(|(name, _)| !herald_node::admin::is_internal(name))
        .map(|(name, n)| json!({ "channel": name, "subscribers": n }))
        .collect();
    Json(json!({ "channels": channels }))
}

/// The most publications one `GET /v1/channels/{channel}/history` answers (its `limit`'s
/// `maximum` in docs/openapi.json).
pub const MAX_HISTORY_PAGE: usize = 1000;

/// A numeric query parameter: `default` when absent; outside `range` a 400 `bad_request`
/// naming the parameter and its bounds. Refused rather than clamped, so a caller asking for
/// more than a page learns it, as docs/openapi.json's `minimum`/`maximum` say.
pub fn bounded(
    name: &str,
    value: Option<usize>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, ApiError> {
    let v = value.unwrap_or(default);
    if range.contains(&v) {
        return Ok(v);
    }
    Err(ApiError::new(
        ErrorCode::BadRequest,
        format!(
            "query parameter `{name}` must be between {} and {} (got {v})",
            range.start(),
            range.end()
        ),
    ))
}

#[derive(Debug, Deserialize)]
pub struct HistoryParams {
    since: Option<u64>,
    limit: Option<usize>,
}

pub async fn history(
    State(gw): Gw,
    Path(channel): Path<String>,
    Query(params): Query<HistoryParams>,
) -> Result<Response, ApiError> {
    let (descriptor, _) = gw.resolve(&channel)?;
    if descriptor.history.is_none() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("channel {channel:?} keeps no history"),
        ));
    }
    let limit = bounded("limit", params.limit, 100, 0..=MAX_HISTORY_PAGE)?;
    let result = gw
        .history(
            &channel,
            HistoryQuery {
                after: Some(params.since.unwrap_or(0)),
                limit,
            },
        )
        .await?;
    /// Serialized directly (not through `json!`, whose `Value` would re-encode the payloads'
    /// raw bytes).
    #[derive(Serialize)]
    struct History<'a> {
        channel: &'a str,
        offset: u64,
        epoch: &'a str,
        publications: Vec<PublicationView<'a>>,
    }
    Ok(Json(History {
        channel: &channel,
        offset: result.position.offset,
        epoch: &result.position.epoch,
        publications: result
            .publications
            .iter()
            .map(PublicationView::from)
            .collect(),
    })
    .into_response())
}

pub async fn presence(State(gw): Gw, Path(channel): Path<String>) -> Result<Json<Value>, ApiError> {
    let (descriptor, _) = gw.resolve(&channel)?;
    let clients = gw.presence(&channel, descriptor).await?;
    Ok(Json(json!({ "channel": channel, "clients": clients })))
}

/// Closes every connection of the user on every node; `disconnected` is how many the user
/// had open cluster-wide (503 when the broker could not tell the other nodes).
pub async fn disconnect_user(
    State(gw): Gw,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "disconnected": gw.kick(&user).await? })))
}

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(gw): Gw) -> Response {
    // Not ready is an error like any other: the envelope sits beside the probe's `status`.
    let unavailable = |mut body: Value, message: String| {
        body["error"] = json!(ErrorBody::new(ErrorCode::Unavailable, message));
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    };
    if gw.is_draining() {
        return unavailable(json!({ "status": "draining" }), "shutting down".to_owned());
    }
    let down = gw.not_ready();
    if !down.is_empty() {
        let message = format!("sources not ready: {}", down.join(", "));
        return unavailable(json!({ "status": "unavailable", "sources": down }), message);
    }
    match gw.broker.health().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(e) => unavailable(
            json!({ "status": "unavailable", "broker": e.to_string() }),
            format!("broker: {e}"),
        ),
    }
}

pub async fn metrics(State(gw): Gw) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gw.metrics.render(),
    )
        .into_response()
}

/// The OpenAPI document of this API (kept true by a test that checks it against the router).
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}
