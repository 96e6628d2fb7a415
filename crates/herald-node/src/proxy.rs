//! Gate 2 decided by the application's backend: the subscribe proxy.
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

/// Everything gate 2 needs to ask a subscribe proxy.
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
        let Some(backend) = self.backend.get() else {
            return Err("no backend client on this node".into());
        };
        let body = serde_json::to_vec(&SubscribeRequest {
            user: ask.identity.user.as_deref(),
            roles: &ask.identity.roles,
            channel: ask.channel,
            params: ask.params.iter().collect(),
            client: ask.client,
            transport: ask.transport,
        })
        .map_err(|e| e.to_string())?;
        // The client bounds the call with the same timeout; this one also covers a client
        // that does not (a node's gate must never wait forever).
        let answer = tokio::time::timeout(proxy.timeout, backend.post(proxy, body))
            .await
            .map_err(|_| BackendError::Timeout(proxy.timeout).to_string())?
            .map_err(|e| e.to_string())?;
        judge(&answer).ok_or_else(|| {
            "the answer is not {\"allow\": true|false, \"reason\"?, \"info\"?}".to_owned()
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
