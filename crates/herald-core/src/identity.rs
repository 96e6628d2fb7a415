//! Identity and token verification (gate 1).
//!
//! An identity is `{ user, roles }` or anonymous. It comes from a JWT verified against exactly
//! one configured key source; the accepted `alg` is pinned to the key's type, so `none` and
//! algorithm confusion (an RS256 public key used as an HMAC secret) are refused. Token text is
//! never included in errors: callers may log these errors as they are.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use crate::config::AuthConfig;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `None` for anonymous connections.
    pub user: Option<Arc<str>>,
    pub roles: Vec<String>,
    /// Unix seconds after which the identity is no longer valid (the token's `exp`).
    pub expires_at: Option<u64>,
}

impl Identity {
    pub fn anonymous() -> Self {
        Self {
            user: None,
            roles: Vec::new(),
            expires_at: None,
        }
    }

    pub fn user(id: &str, roles: Vec<String>) -> Self {
        Self {
            user: Some(Arc::from(id)),
            roles,
            expires_at: None,
        }
    }
}

/// Why a token was refused. Messages are safe to show to the client and to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("credentials required: send a token (Authorization: Bearer, ?token= or cookie)")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token algorithm is not accepted by this gateway")]
    BadAlgorithm,
    #[error("token is malformed")]
    Malformed,
    #[error("token claim check failed: {0}")]
    Claims(String),
    #[error("no key with this token's kid")]
    UnknownKey,
}

/// A problem with the configured key material, found at startup.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct KeyError {
    pub field: &'static str,
    pub message: String,
}

enum Keys {
    None,
    /// One key and the algorithms it may verify.
    Single(DecodingKey, Vec<Algorithm>),
    /// JWKS: keys by `kid`, each pinned to one algorithm.
    Set(HashMap<String, (DecodingKey, Algorithm)>),
}

/// Verifies tokens into identities. Built once from config; cheap to share.
pub struct Authenticator {
    keys: Keys,
    base: Validation,
    roles_claim: String,
    anonymous: bool,
    /// Kept only for `herald token` (development tokens); HMAC configs only.
    secret: Option<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("roles_claim", &self.roles_claim)
            .field("anonymous", &self.anonymous)
            .finish_non_exhaustive()
    }
}

const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

impl Authenticator {
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, KeyError> {
        let keys = if let Some(secret) = &cfg.hs256_secret {
            Keys::Single(DecodingKey::from_secret(secret.as_bytes()), HMAC.to_vec())
        } else if let Some(path) = &cfg.public_key_pem {
            load_pem(path)?
        } else if let Some(path) = &cfg.jwks_file {
            load_jwks(path)?
        } else {
            Keys::None
        };
        let mut base = Validation::new(Algorithm::HS256);
        base.leeway = cfg.leeway.as_secs();
        base.validate_nbf = true;
        base.validate_exp = true;
        let mut required = vec!["sub"];
        if cfg.require_exp {
            required.push("exp");
        }
        base.set_required_spec_claims(&required);
        if let Some(iss) = &cfg.issuer {
            base.set_issuer(&[iss]);
            base.required_spec_claims.insert("iss".into());
        }
        match &cfg.audience {
            Some(aud) => {
                base.set_audience(&[aud]);
                base.required_spec_claims.insert("aud".into());
            }
            None => base.validate_aud = false,
        }
        Ok(Self {
            keys,
            base,
            roles_claim: cfg.roles_claim.clone(),
            anonymous: cfg.anonymous,
            secret: cfg.hs256_secret.clone(),
        })
    }

    /// Whether connections without credentials are accepted (as anonymous).
    pub fn anonymous_allowed(&self) -> bool {
        self.anonymous
    }

    /// Gate 1 for a connection: `None` credentials mean anonymous, if allowed.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        match token {
            Some(t) => self.verify(t),
            None if self.anonymous => Ok(Identity::anonymous()),
            None => Err(AuthError::Missing),
        }
    }

    /// Verifies one token.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(map_err)?;
        let (key, algorithms) = match &self.keys {
            Keys::None => return Err(AuthError::BadAlgorithm),
            Keys::Single(key, algs) => (key, algs.clone()),
            Keys::Set(set) => {
                let kid = header.kid.as_deref().ok_or(AuthError::UnknownKey)?;
                let (key, alg) = set.get(kid).ok_or(AuthError::UnknownKey)?;
                (key, vec![*alg])
            }
        };
        if !algorithms.contains(&header.alg) {
            return Err(AuthError::BadAlgorithm);
        }
        let mut validation = self.base.clone();
        validation.algorithms = algorithms;
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation).map_err(map_err)?;
        let claims = data.claims;
        let user = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.as_str(),
            _ => return Err(AuthError::Claims("sub must be a non-empty string".into())),
        };
        let roles = match claims.get(&self.roles_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(r)) => vec![r.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    AuthError::Claims(format!("{} must be strings", self.roles_claim))
                })?,
            Some(_) => {
                return Err(AuthError::Claims(format!(
                    "{} must be a string or an array of strings",
                    self.roles_claim
                )));
            }
        };
        let expires_at = claims.get("exp").and_then(Value::as_u64);
        Ok(Identity {
            user: Some(Arc::from(user)),
            roles,
            expires_at,
        })
    }

    /// Mints a development token signed with the configured HMAC secret.
    pub fn mint(&self, sub: &str, roles: &[String], ttl: Duration) -> Result<String, KeyError> {
        let secret = self.secret.as_deref().ok_or_else(|| KeyError {
            field: "auth.hs256_secret",
            message: "minting development tokens needs an HMAC secret in the config".into(),
        })?;
        mint_hs256(secret, sub, roles, &self.roles_claim, ttl)
    }
}

/// Signs an HS256 token with `sub`, `roles`, `iat` and `exp = now + ttl`.
pub fn mint_hs256(
    secret: &str,
    sub: &str,
    roles: &[String],
    roles_claim: &str,
    ttl: Duration,
) -> Result<String, KeyError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::String(sub.into()));
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl.as_secs()).into());
    if !roles.is_empty() {
        claims.insert(roles_claim.into(), roles.into());
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| KeyError {
        field: "auth.hs256_secret",
        message: e.to_string(),
    })
}

fn map_err(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => AuthError::BadAlgorithm,
        ErrorKind::InvalidIssuer => AuthError::Claims("iss does not match".into()),
        ErrorKind::InvalidAudience => AuthError::Claims("aud does not match".into()),
        ErrorKind::MissingRequiredClaim(c) => AuthError::Claims(format!("{c} is required")),
        ErrorKind::InvalidClaimFormat(c) => AuthError::Claims(format!("{c} is malformed")),
        _ => AuthError::Malformed,
    }
}

fn load_pem(path: &Path) -> Result<Keys, KeyError> {
    let err = |message: String| KeyError {
        field: "auth.public_key_pem",
        message,
    };
    let pem =
        std::fs::read(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok(Keys::Single(key, vec![Algorithm::RS256]));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok(Keys::Single(key, vec![Algorithm::ES256]));
    }
    Err(err(format!(
        "{} holds neither an RSA nor an EC P-256 public key in PEM form",
        path.display()
    )))
}

fn load_jwks(path: &Path) -> Result<Keys, KeyError> {
    let err = |message: String| KeyError {
        field: "auth.jwks_file",
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| err(format!("{} is not a JWKS document: {e}", path.display())))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| err("every key needs a kid".into()))?;
        // Pin the algorithm to the key type; a declared `alg` must agree with it.
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => {
                return Err(err(format!(
                    "key {kid}: only RSA and EC P-256 keys are supported"
                )));
            }
        };
        if let Some(declared) = jwk.common.key_algorithm
            && declared.to_string() != format!("{alg:?}")
        {
            return Err(err(format!(
                "key {kid}: alg {declared:?} does not fit the key type"
            )));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| err(format!("key {kid}: {e}")))?;
        keys.insert(kid, (key, alg));
    }
    if keys.is_empty() {
        return Err(err("the key set is empty".into()));
    }
    Ok(Keys::Set(keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(secret: &str) -> Authenticator {
        Authenticator::from_config(&AuthConfig {
            hs256_secret: Some(secret.into()),
            ..AuthConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn minted_tokens_verify() {
        let a = auth("s3cret");
        let t = a
            .mint("alice", &["admin".into()], Duration::from_secs(60))
            .unwrap();
        let id = a.verify(&t).unwrap();
        assert_eq!(id.user.as_deref(), Some("alice"));
        assert_eq!(id.roles, vec!["admin".to_owned()]);
        assert!(id.expires_at.is_some());
    }

    #[test]
    fn wrong_key_expired_and_none_are_refused() {
        let a = auth("s3cret");
        let other = auth("other")
            .mint("alice", &[], Duration::from_secs(60))
            .unwrap();
        assert_eq!(a.verify(&other), Err(AuthError::BadSignature));
        // exp an hour ago, well past the leeway.
        let mut claims = Map::new();
        claims.insert("sub".into(), "alice".into());
        claims.insert("exp".into(), 1_000_000u64.into());
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(a.verify(&expired), Err(AuthError::Expired));
        // {"alg":"none","typ":"JWT"}.{"sub":"alice"}.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSJ9.";
        assert!(a.verify(none).is_err());
        assert_eq!(a.verify("garbage"), Err(AuthError::Malformed));
        assert_eq!(a.authenticate(None), Err(AuthError::Missing));
    }
}
