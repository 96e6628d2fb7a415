//! The application's backend over HTTP: the [`Backend`] the gates ask (subscribe proxy).
//!
//! One pooled keep-alive client per node (connections to a backend are reused across every
//! session), each request bounded by its proxy's `timeout`, and every request signed so the
//! backend can tell it came from this gateway and refuse replays (docs/backend.md):
//!
//! ```text
//! Herald-Timestamp: 1767225600
//! Herald-Signature: v1=<hex HMAC-SHA256(backend.secret, "<timestamp>.<body>")>
//! ```
//!
//! The timestamp is inside the signed bytes, so a captured request cannot be replayed with a
//! fresh one; a backend refuses timestamps more than a few minutes away from its clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use herald_core::config::ProxyConfig;
use herald_node::proxy::{Backend, BackendError};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signing time (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "Herald-Timestamp";
/// The header carrying the signature (`v1=<hex>`).
pub const SIGNATURE_HEADER: &str = "Herald-Signature";

/// The largest backend answer read; a longer one is a malformed answer (fail closed), not
/// memory the backend may make the gateway spend.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The signature of `body` sent at `timestamp`: lowercase hex of
/// `HMAC-SHA256(secret, "<timestamp>.<body>")`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length: new_from_slice cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(tag.len() * 2);
    for b in tag {
        hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    hex
}

/// The HTTP [`Backend`]: a pooled client and the shared secret.
pub struct HttpBackend {
    client: reqwest::Client,
    secret: Vec<u8>,
}

impl std::fmt::Debug for HttpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("HttpBackend").finish_non_exhaustive()
    }
}

impl HttpBackend {
    /// A client signing with `secret`.
    pub fn new(secret: &str) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            // Keep-alive connections are what make a proxy call cheap; idle ones go after a
            // while so a backend restart is not met with a pool of dead sockets.
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            // Redirects would send the signed body somewhere the config does not name.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            secret: secret.as_bytes().to_vec(),
        })
    }
}

#[async_trait]
impl Backend for HttpBackend {
    async fn post(&self, proxy: &ProxyConfig, body: Vec<u8>) -> Result<Vec<u8>, BackendError> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = sign(&self.secret, timestamp, &body);
        let fail = |e: reqwest::Error| {
            if e.is_timeout() {
                BackendError::Timeout(proxy.timeout)
            } else {
                BackendError::Unreachable(e.to_string())
            }
        };
        let mut response = self
            .client
            .post(&proxy.url)
            .timeout(proxy.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, format!("v1={signature}"))
            .body(body)
            .send()
            .await
            .map_err(fail)?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(BackendError::Status(status));
        }
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(fail)? {
            if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(BackendError::Unreachable(format!(
                    "the answer is longer than {MAX_ANSWER_BYTES} bytes"
                )));
            }
            answer.extend_from_slice(&chunk);
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently:
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            sign(b"secret", 1_700_000_000, br#"{"a":1}"#),
            "49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}
