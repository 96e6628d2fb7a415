//! Gates decided by the application's backend: the subscribe proxy (gate 2) and the connect
//! proxy (gate 1, for applications with session cookies instead of JWTs).
//!
//! A descriptor with `scope = { proxy = "rooms" }` makes the session ask the backend whether
//! this identity may subscribe. The request goes through the [`Backend`] seam, which
//! `herald-server` implements with a pooled, signed HTTP client (this crate has no HTTP
//! dependency); what comes back is judged here, so every transport gets the same rule:
//!
//! - HTTP 200 with `{"allow": true, "info": {…}}`: allowed (`info` is optional);
//! - HTTP 200 with `{"allow": false, "reason": "…"}`: `forbidden`, the reason in the message;
//! - anything else (another status, a body that is not that shape, a timeout, the backend
//!   unreachable): `unavailable`. The gate fails closed: no error ever becomes an allow.
//!
//! Answers (allow and deny, never failures) may be cached per (proxy, user, channel) for the
//! proxy's `cache_ttl`, so a reconnect storm does not become a backend storm. Only the session
//! that asked waits for the backend: each session is its own task, and nothing else on the
//! node takes a lock across the call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::name::Params;
use herald_core::protocol::{ErrorBody, ErrorCode};
use herald_core::{Identity, config::ProxyConfig};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::admission::{Handshake, Refusal};
use crate::lock;

/// Why a backend call produced no usable answer (each is a refusal with `unavailable`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The backend answered with a status other than 200.
    #[error("the backend answered HTTP {0}")]
    Status(u16),
    /// No complete answer within the proxy's `timeout`.
    #[error("the backend did not answer within {0:?}")]
    Timeout(Duration),
    /// Connection refused, reset, DNS, TLS…
    #[error("the backend is unreachable: {0}")]
    Unreachable(String),
}

/// The application's backend, as the gates see it. `herald-server` implements it over HTTP
/// (signed, pooled, with the proxy's timeout).
#[async_trait]
pub trait Backend: Send + Sync {
    /// POSTs `body` (JSON) to `proxy`'s URL and returns the body of a 200 answer.
    async fn post(&self, proxy: &ProxyConfig, body: Vec<u8>) -> Result<Vec<u8>, BackendError>;
}

/// The subscribe proxy's request body (docs/backend.md, docs/openapi.json).
#[derive(Debug, Serialize)]
pub struct SubscribeRequest<'a> {
    /// The connection's user, `null` when anonymous.
    pub user: Option<&'a str>,
    /// The connection's roles.
    pub roles: &'a [String],
    /// The concrete channel asked for.
    pub channel: &'a str,
    /// The template's placeholder values (`{"roomId":"42"}`); empty for exact names.
    pub params: HashMap<&'a str, &'a str>,
    /// The connection id (`welcome.client`).
    pub client: &'a str,
    /// `websocket`, `sse` or `socketio`.
    pub transport: &'a str,
}

/// The subscribe proxy's answer.
#[derive(Debug, Deserialize)]
struct SubscribeAnswer {
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
}

/// What the backend decided for one (user, channel).
#[derive(Debug, Clone)]
pub enum Decision {
    /// Allowed; the optional `info` the backend attached.
    Allow(Option<std::sync::Arc<RawValue>>),
    /// Refused, with the backend's reason.
    Deny(String),
}

/// A cache key: (proxy, user, channel).
type CacheKey = (String, Option<String>, String);

/// Decisions by (proxy, user, channel), each until its deadline.
#[derive(Debug, Default)]
pub struct DecisionCache {
    entries: Mutex<HashMap<CacheKey, (Instant, Decision)>>,
}

/// Most cached decisions per node: past it, expired entries are swept, and if none had
/// expired the cache is emptied (a cache miss costs one backend call; unbounded growth
/// would cost the node).
const CACHE_CAP: usize = 100_000;

impl DecisionCache {
    fn get(&self, key: &CacheKey) -> Option<Decision> {
        let entries = lock(&self.entries);
        match entries.get(key) {
            Some((until, d)) if *until > Instant::now() => Some(d.clone()),
            _ => None,
        }
    }

    fn put(&self, key: CacheKey, ttl: Duration, d: Decision) {
        let mut entries = lock(&self.entries);
        if entries.len() >= CACHE_CAP {
            let now = Instant::now();
            entries.retain(|_, (until, _)| *until > now);
            if entries.len() >= CACHE_CAP {
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now() + ttl, d));
    }
}

/// Reads a backend answer into a decision; a body of any other shape is `None`.
pub fn judge(body: &[u8]) -> Option<Decision> {
    let a: SubscribeAnswer = serde_json::from_slice(body).ok()?;
    Some(if a.allow {
        Decision::Allow(a.info.map(std::sync::Arc::from))
    } else {
        Decision::Deny(a.reason.unwrap_or_else(|| "refused by the backend".into()))
    })
}

/// Who asks, on which channel: what the subscribe and publish proxies are told.
#[derive(Debug)]
pub struct SubscribeAsk<'a> {
    /// The identity asking.
    pub identity: &'a Identity,
    /// The concrete channel.
    pub channel: &'a str,
    /// Its placeholder values.
    pub params: &'a Params,
    /// The connection id.
    pub client: &'a str,
    /// The transport's name.
    pub transport: &'a str,
}

impl crate::Node {
    /// Gate 2 through the subscribe proxy `name`. Errors: `forbidden` (the backend said no,
    /// with its reason), `unavailable` (no usable answer: fail closed).
    pub async fn proxy_subscribe(
        &self,
        name: &str,
        ask: SubscribeAsk<'_>,
    ) -> Result<Option<std::sync::Arc<RawValue>>, ErrorBody> {
        let unavailable = |m: String| ErrorBody::new(ErrorCode::Unavailable, m);
        // Validated at load: every proxy a descriptor names exists.
        let Some(proxy) = self.config.proxies.iter().find(|p| p.name == name) else {
            return Err(unavailable(format!("no proxy named {name:?}")));
        };
        let key = (
            proxy.name.clone(),
            ask.identity.user.as_deref().map(str::to_owned),
            ask.channel.to_owned(),
        );
        let cached = if proxy.cache_ttl.is_zero() {
            None
        } else {
            self.decisions.get(&key)
        };
        let decision = match cached {
            Some(d) => {
                self.metrics.proxy_cache_hit(name);
                d
            }
            None => {
                let d = self.ask_subscribe(proxy, &ask).await;
                self.metrics.proxy_call(
                    name,
                    d.as_ref().map_or("error", |d| match d {
                        Decision::Allow(_) => "allow",
                        Decision::Deny(_) => "deny",
                    }),
                );
                let d = d.map_err(|e| {
                    tracing::warn!(proxy = name, channel = ask.channel, error = %e, "subscribe proxy failed: refused");
                    unavailable(format!("the subscribe proxy {name:?} failed: {e}"))
                })?;
                if !proxy.cache_ttl.is_zero() {
                    self.decisions.put(key, proxy.cache_ttl, d.clone());
                }
                d
            }
        };
        match decision {
            Decision::Allow(info) => Ok(info),
            Decision::Deny(reason) => Err(ErrorBody::new(ErrorCode::Forbidden, reason)),
        }
    }

    async fn ask_subscribe(
        &self,
        proxy: &ProxyConfig,
        ask: &SubscribeAsk<'_>,
    ) -> Result<Decision, String> {
        let answer = self
            .call_backend(
                proxy,
                &SubscribeRequest {
                    user: ask.identity.user.as_deref(),
                    roles: &ask.identity.roles,
                    channel: ask.channel,
                    params: ask.params.iter().collect(),
                    client: ask.client,
                    transport: ask.transport,
                },
            )
            .await?;
        judge(&answer).ok_or_else(|| {
            "the answer is not {\"allow\": true|false, \"reason\"?, \"info\"?}".to_owned()
        })
    }

    /// POSTs `body` to `proxy` and returns a 200 answer's body; any failure as its text.
    async fn call_backend<T: Serialize>(
        &self,
        proxy: &ProxyConfig,
        body: &T,
    ) -> Result<Vec<u8>, String> {
        let Some(backend) = self.backend.get() else {
            return Err("no backend client on this node".into());
        };
        let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        // The client bounds the call with the same timeout; this one also covers a client
        // that does not (a node's gate must never wait forever).
        tokio::time::timeout(proxy.timeout, backend.post(proxy, body))
            .await
            .map_err(|_| BackendError::Timeout(proxy.timeout).to_string())?
            .map_err(|e| e.to_string())
    }

    /// The publish proxy: the backend sees a client's publication (already schema-valid) and
    /// refuses it, accepts it, or returns replacement data. `Ok(None)`: publish as sent;
    /// `Ok(Some(data))`: publish `data` instead (the caller validates it again). Errors:
    /// `forbidden` with the backend's reason, `unavailable` (fail closed).
    pub(crate) async fn proxy_publish(
        &self,
        name: &str,
        ask: SubscribeAsk<'_>,
        data: &RawValue,
    ) -> Result<Option<Box<RawValue>>, ErrorBody> {
        #[derive(Serialize)]
        struct PublishRequest<'a> {
            #[serde(flatten)]
            ask: SubscribeRequest<'a>,
            data: &'a RawValue,
        }
        #[derive(Deserialize)]
        struct PublishAnswer {
            allow: bool,
            #[serde(default)]
            reason: Option<String>,
            #[serde(default)]
            data: Option<Box<RawValue>>,
        }
        let unavailable = |m: String| ErrorBody::new(ErrorCode::Unavailable, m);
        let Some(proxy) = self.config.proxies.iter().find(|p| p.name == name) else {
            return Err(unavailable(format!("no proxy named {name:?}")));
        };
        let body = PublishRequest {
            ask: SubscribeRequest {
                user: ask.identity.user.as_deref(),
                roles: &ask.identity.roles,
                channel: ask.channel,
                params: ask.params.iter().collect(),
                client: ask.client,
                transport: ask.transport,
            },
            data,
        };
        let answer = self.call_backend(proxy, &body).await.and_then(|a| {
            serde_json::from_slice::<PublishAnswer>(&a).map_err(|_| {
                "the answer is not {\"allow\": true|false, \"reason\"?, \"data\"?}".to_owned()
            })
        });
        match answer {
            Err(e) => {
                self.metrics.proxy_call(name, "error");
                tracing::warn!(proxy = name, channel = ask.channel, error = %e, "publish proxy failed: refused");
                Err(unavailable(format!(
                    "the publish proxy {name:?} failed: {e}"
                )))
            }
            Ok(a) if !a.allow => {
                self.metrics.proxy_call(name, "deny");
                Err(ErrorBody::new(
                    ErrorCode::Forbidden,
                    a.reason.unwrap_or_else(|| "refused by the backend".into()),
                ))
            }
            Ok(a) => {
                self.metrics.proxy_call(name, "allow");
                Ok(a.data)
            }
        }
    }

    /// An `rpc` call: `data` is checked against the method's request schema, sent to its
    /// proxy, and the answer's `data` checked against the response schema. Errors:
    /// `not_found` (no such method), `invalid_payload` (the request), `rpc_error` (the
    /// backend's own error, its message passed on), `unavailable` (no usable answer, or an
    /// answer that breaks the response schema).
    pub async fn rpc(
        &self,
        method: &str,
        ask: RpcAsk<'_>,
        data: &RawValue,
    ) -> Result<Box<RawValue>, ErrorBody> {
        #[derive(Serialize)]
        struct RpcRequest<'a> {
            user: Option<&'a str>,
            roles: &'a [String],
            client: &'a str,
            transport: &'a str,
            method: &'a str,
            data: &'a RawValue,
        }
        #[derive(Deserialize)]
        struct RpcAnswer {
            #[serde(default)]
            data: Option<Box<RawValue>>,
            #[serde(default)]
            error: Option<String>,
        }
        let unavailable = |m: String| ErrorBody::new(ErrorCode::Unavailable, m);
        let Some(m) = self.config.rpc.iter().find(|m| m.method == method) else {
            return Err(ErrorBody::new(
                ErrorCode::NotFound,
                format!("no rpc method {method:?}"),
            ));
        };
        let payload = herald_core::input::accept_payload(data)?;
        m.validate_request(&payload.value)
            .map_err(|(pointer, message)| ErrorBody {
                code: ErrorCode::InvalidPayload,
                message,
                pointer: Some(pointer),
            })?;
        let Some(proxy) = self.config.proxies.iter().find(|p| p.name == m.proxy) else {
            return Err(unavailable(format!("no proxy named {:?}", m.proxy)));
        };
        let name = proxy.name.as_str();
        let body = RpcRequest {
            user: ask.identity.user.as_deref(),
            roles: &ask.identity.roles,
            client: ask.client,
            transport: ask.transport,
            method,
            data: &payload.raw,
        };
        let fail = |e: String| {
            self.metrics.proxy_call(name, "error");
            tracing::warn!(proxy = name, method, error = %e, "rpc failed");
            unavailable(format!("rpc {method:?} failed: {e}"))
        };
        let answer = self.call_backend(proxy, &body).await.map_err(fail)?;
        let a: RpcAnswer = serde_json::from_slice(&answer)
            .map_err(|_| fail("the answer is not {\"data\": …} or {\"error\": \"…\"}".into()))?;
        match (a.data, a.error) {
            (_, Some(message)) => {
                self.metrics.proxy_call(name, "deny");
                Err(ErrorBody::new(ErrorCode::RpcError, message))
            }
            (Some(data), None) => {
                let value: serde_json::Value =
                    serde_json::from_str(data.get()).map_err(|e| fail(e.to_string()))?;
                m.validate_response(&value).map_err(|(pointer, message)| {
                    fail(format!(
                        "the answer breaks the response schema at {pointer:?}: {message}"
                    ))
                })?;
                self.metrics.proxy_call(name, "allow");
                Ok(data)
            }
            (None, None) => Err(fail("the answer has neither data nor error".into())),
        }
    }
}

/// Who makes an `rpc` call.
#[derive(Debug)]
pub struct RpcAsk<'a> {
    /// The caller's identity.
    pub identity: &'a Identity,
    /// The connection id.
    pub client: &'a str,
    /// The transport's name.
    pub transport: &'a str,
}

/// The connect proxy's request body.
#[derive(Debug, Serialize)]
pub struct ConnectRequest<'a> {
    /// Every cookie of the request, by name (the first of a repeated name).
    pub cookies: HashMap<&'a str, &'a str>,
    /// The request headers the proxy's `headers` names, lowercase names.
    pub headers: HashMap<String, &'a str>,
}

/// The connect proxy's answer.
#[derive(Debug, Deserialize)]
struct ConnectAnswer {
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    /// Unix seconds (a fraction allowed): the session ends there with 4001, like a token's `exp`.
    #[serde(default)]
    expires_at: Option<f64>,
}

/// The latest `expires_at` accepted (9999-12-31T23:59:59Z, as for a token's `exp`).
const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

impl crate::Node {
    /// Gate 1 through the connect proxy `name`: the request's cookies and chosen headers go
    /// to the backend, which answers the identity. Errors: `unauthorized` (the backend said
    /// no, or answered an identity that cannot be used), `unavailable` (no usable answer:
    /// fail closed).
    pub async fn proxy_connect(&self, name: &str, h: &Handshake<'_>) -> Result<Identity, Refusal> {
        let unavailable = |m: String| Refusal(ErrorBody::new(ErrorCode::Unavailable, m));
        let unauthorized = |m: String| Refusal(ErrorBody::new(ErrorCode::Unauthorized, m));
        let Some(proxy) = self.config.proxies.iter().find(|p| p.name == name) else {
            return Err(unavailable(format!("no proxy named {name:?}")));
        };
        let Some(backend) = self.backend.get() else {
            return Err(unavailable("no backend client on this node".into()));
        };
        let mut cookies = HashMap::new();
        for (k, v) in h
            .cookies
            .iter()
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
        {
            cookies.entry(k).or_insert_with(|| v.trim_matches('"'));
        }
        let headers = h
            .headers
            .iter()
            .filter(|(n, _)| proxy.headers.iter().any(|w| w.eq_ignore_ascii_case(n)))
            .map(|(n, v)| (n.to_ascii_lowercase(), *v))
            .collect();
        let body = serde_json::to_vec(&ConnectRequest { cookies, headers })
            .map_err(|e| unavailable(e.to_string()))?;
        let answer = tokio::time::timeout(proxy.timeout, backend.post(proxy, body))
            .await
            .map_err(|_| BackendError::Timeout(proxy.timeout))
            .and_then(|r| r);
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.metrics.proxy_call(name, "error");
                tracing::warn!(proxy = name, error = %e, "connect proxy failed: refused");
                return Err(unavailable(format!(
                    "the connect proxy {name:?} failed: {e}"
                )));
            }
        };
        let Ok(a) = serde_json::from_slice::<ConnectAnswer>(&answer) else {
            self.metrics.proxy_call(name, "error");
            return Err(unavailable(format!(
                "the connect proxy {name:?} answered a body that is not \
                 {{\"allow\", \"user\"?, \"roles\"?, \"expires_at\"?, \"reason\"?}}"
            )));
        };
        if !a.allow {
            self.metrics.proxy_call(name, "deny");
            return Err(unauthorized(
                a.reason.unwrap_or_else(|| "refused by the backend".into()),
            ));
        }
        let user = match a.user {
            Some(u) if !u.is_empty() => u,
            // An allow without a user is a backend bug; anonymous has its own switch.
            _ => {
                self.metrics.proxy_call(name, "error");
                return Err(unavailable(format!(
                    "the connect proxy {name:?} allowed without a user"
                )));
            }
        };
        let expires_at = match a.expires_at {
            None => None,
            Some(t) if (0.0..=MAX_NUMERIC_DATE).contains(&t) => {
                let at = std::time::UNIX_EPOCH + Duration::from_secs_f64(t);
                if at <= std::time::SystemTime::now() {
                    self.metrics.proxy_call(name, "deny");
                    return Err(unauthorized("the backend's session has expired".into()));
                }
                Some(at)
            }
            Some(_) => {
                self.metrics.proxy_call(name, "error");
                return Err(unavailable(format!(
                    "the connect proxy {name:?} answered expires_at out of range (Unix seconds)"
                )));
            }
        };
        self.metrics.proxy_call(name, "allow");
        Ok(Identity {
            user: Some(std::sync::Arc::from(user)),
            roles: a.roles,
            expires_at,
            admin: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_judged_strictly() {
        assert!(matches!(
            judge(br#"{"allow":true}"#),
            Some(Decision::Allow(None))
        ));
        assert!(matches!(
            judge(br#"{"allow":true,"info":{"role":"guest"}}"#),
            Some(Decision::Allow(Some(i))) if i.get() == r#"{"role":"guest"}"#
        ));
        assert!(matches!(
            judge(br#"{"allow":false,"reason":"not invited"}"#),
            Some(Decision::Deny(r)) if r == "not invited"
        ));
        // Not the shape: never an allow.
        for bad in [
            &b""[..],
            b"null",
            b"{}",
            br#"{"allow":"yes"}"#,
            b"<html>",
            br#"{"allow":1}"#,
        ] {
            assert!(judge(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
