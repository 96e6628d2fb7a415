//! Identity and token verification (gate 1).
//!
//! An identity is `{ user, roles }` or anonymous. It comes from a JWT verified against exactly
//! one configured key source; the accepted `alg` is pinned to the key's type, so `none` and
//! algorithm confusion (an RS256 public key used as an HMAC secret) are refused. Token text is
//! never included in errors: callers may log these errors as they are.
//!
//! `jsonwebtoken` checks the signature, `alg`, `iss` and `aud`; the time claims (`exp`, `nbf`,
//! `iat`) are read here, by [`TimeClaims`], as RFC 7519 NumericDates. `jsonwebtoken` rounds a
//! fractional `exp`, ignores `iat`, accepts dates no clock reaches and overflows with a large
//! leeway; reading them in one place of our own means every token (connect, `refresh`, and
//! any later kind) follows one rule: a time claim is a NumericDate, fraction included, or the
//! token is refused. Every token reader goes through [`Authenticator::verify_claims`].
//! A claim name that appears twice is refused too (RFC 7519 §4), so no claim has two readings.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::config::AuthConfig;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `None` for anonymous connections.
    pub user: Option<Arc<str>>,
    pub roles: Vec<String>,
    /// When the identity stops being valid: the token's `exp`, with its fraction (rounded down
    /// to the microsecond, so a session never outlives its token). `None` without `exp`.
    pub expires_at: Option<SystemTime>,
    /// The admin dashboard's own connection (signed in with the `[admin]` credential, admitted
    /// with a one-time ticket, never with a JWT): it may subscribe to the internal `$admin:`
    /// channels and watch any registry channel. No token can set this.
    pub admin: bool,
}

impl Identity {
    /// A connection without credentials (only when `auth.anonymous = true`).
    pub fn anonymous() -> Self {
        Self {
            user: None,
            roles: Vec::new(),
            expires_at: None,
            admin: false,
        }
    }

    /// A user with these roles and no expiry.
    pub fn user(id: &str, roles: Vec<String>) -> Self {
        Self {
            user: Some(Arc::from(id)),
            roles,
            expires_at: None,
            admin: false,
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
    /// Signature, `alg`, `sub` presence, `iss`, `aud`; never the time claims (see the module
    /// docs).
    base: Validation,
    /// Clock skew forgiven on `exp`, `nbf` and `iat` (not rounded to seconds).
    leeway: Duration,
    require_exp: bool,
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
        // The time claims are ours (`TimeClaims`): jsonwebtoken must neither check nor require
        // them, or a token could be judged by two readings of one claim.
        base.leeway = 0;
        base.validate_nbf = false;
        base.validate_exp = false;
        base.set_required_spec_claims(&["sub"]);
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
            leeway: cfg.leeway,
            require_exp: cfg.require_exp,
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

    /// Verifies one token into the identity it carries.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let Verified { claims, expires_at } = self.verify_claims(token)?;
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
        Ok(Identity {
            user: Some(Arc::from(user)),
            roles,
            expires_at,
            admin: false,
        })
    }

    /// Verifies one token and returns its claims: signature with the pinned `alg`, `sub`
    /// present, `iss`/`aud` when configured, no repeated claim name, and the time claims read
    /// as NumericDates and checked against the clock. The one door for every kind of token.
    pub fn verify_claims(&self, token: &str) -> Result<Verified, AuthError> {
        self.verify_claims_at(token, SystemTime::now())
    }

    /// [`verify_claims`](Self::verify_claims) with the clock reading `now` (for tests).
    fn verify_claims_at(&self, token: &str, now: SystemTime) -> Result<Verified, AuthError> {
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
        let UniqueClaims(claims) = jsonwebtoken::decode::<UniqueClaims>(token, key, &validation)
            .map_err(map_err)?
            .claims;
        let times = TimeClaims::read(&claims)?;
        times.check(now, self.leeway, self.require_exp)?;
        Ok(Verified {
            claims,
            expires_at: times.exp,
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

/// A token that verified: its claims set and when it expires.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Every claim, as sent (names are unique).
    pub claims: Map<String, Value>,
    /// The `exp` claim (see [`Identity::expires_at`]).
    pub expires_at: Option<SystemTime>,
}

/// A claims set whose names are unique. RFC 7519 §4 lets a parser reject duplicates or keep
/// the last; jsonwebtoken rejects some (`exp`, `nbf`, `sub`…) and a plain map keeps the last
/// of the others (`iat`, the roles claim), so a claim could be read two ways. Rejecting every
/// duplicate leaves one reading.
struct UniqueClaims(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueClaims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Claims;
        impl<'de> Visitor<'de> for Claims {
            type Value = UniqueClaims;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of claims")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueClaims, A::Error> {
                let mut claims = Map::new();
                while let Some(name) = map.next_key::<String>()? {
                    let value = map.next_value::<Value>()?;
                    if claims.contains_key(&name) {
                        return Err(A::Error::custom("a claim name appears twice"));
                    }
                    claims.insert(name, value);
                }
                Ok(UniqueClaims(claims))
            }
        }
        deserializer.deserialize_map(Claims)
    }
}

/// The latest NumericDate accepted: 9999-12-31T23:59:59Z. Nothing an issuer means lies
/// beyond it; what does is usually milliseconds where seconds belong (an `exp` that would
/// never come), and such values overflow timers.
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

/// The time claims of a token, each read as an RFC 7519 §2 NumericDate: a JSON number of
/// seconds since 1970-01-01T00:00:00Z, possibly with a fraction, here from 0 to
/// [`MAX_NUMERIC_DATE`]. Anything else (a string, `null`, a negative or larger number) is
/// refused rather than ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeClaims {
    /// `exp`, rounded down below the microsecond (the token ends no later than it says).
    pub exp: Option<SystemTime>,
    /// `nbf`, rounded up below the microsecond (the token starts no earlier than it says).
    pub nbf: Option<SystemTime>,
    /// `iat`, rounded up below the microsecond.
    pub iat: Option<SystemTime>,
}

/// Which way a fraction below the microsecond goes: always toward refusing the token.
#[derive(Clone, Copy)]
enum Round {
    Down,
    Up,
}

impl TimeClaims {
    /// Reads `exp`, `nbf` and `iat` from a claims set; absent claims are `None`.
    pub fn read(claims: &Map<String, Value>) -> Result<Self, AuthError> {
        Ok(Self {
            exp: numeric_date(claims, "exp", Round::Down)?,
            nbf: numeric_date(claims, "nbf", Round::Up)?,
            iat: numeric_date(claims, "iat", Round::Up)?,
        })
    }

    /// Checks the claims against the clock reading `now`, forgiving `leeway` of skew
    /// (RFC 7519 §4.1.4–4.1.6): valid while `now < exp + leeway`, from `nbf - leeway` on, and
    /// not issued after `now + leeway`. Sums that overflow the clock's range count as
    /// infinitely far, so no leeway can wrap around.
    pub fn check(
        &self,
        now: SystemTime,
        leeway: Duration,
        require_exp: bool,
    ) -> Result<(), AuthError> {
        match self.exp {
            None if require_exp => return Err(AuthError::Claims("exp is required".into())),
            Some(exp) if exp.checked_add(leeway).is_some_and(|end| now >= end) => {
                return Err(AuthError::Expired);
            }
            _ => {}
        }
        let latest_now = now.checked_add(leeway);
        let after_now = |t: SystemTime| latest_now.is_some_and(|late| t > late);
        if self.nbf.is_some_and(after_now) {
            return Err(AuthError::NotYetValid);
        }
        if self.iat.is_some_and(after_now) {
            return Err(AuthError::Claims("iat is in the future".into()));
        }
        Ok(())
    }
}

/// Reads claim `name` as a NumericDate, rounding below the microsecond the way `round` says.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
    round: Round,
) -> Result<Option<SystemTime>, AuthError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let malformed = || {
        AuthError::Claims(format!(
            "{name} must be a NumericDate: seconds since 1970 as a JSON number from 0 to \
             {MAX_NUMERIC_DATE}"
        ))
    };
    let Value::Number(n) = value else {
        return Err(malformed());
    };
    let since_epoch = if let Some(secs) = n.as_u64() {
        // Integers exactly, without a detour through f64.
        if secs > MAX_NUMERIC_DATE {
            return Err(malformed());
        }
        Duration::from_secs(secs)
    } else {
        let secs = n.as_f64().ok_or_else(malformed)?;
        // MAX_NUMERIC_DATE < 2^53, so its f64 is exact.
        let in_range = secs.is_finite() && (0.0..=MAX_NUMERIC_DATE as f64).contains(&secs);
        if !in_range {
            return Err(malformed());
        }
        let whole = secs.trunc();
        // `secs - whole` is exact in f64; the fraction is kept to the microsecond, which an
        // f64 of a present-day date still resolves (its step is about 0.25 µs).
        let micros = (secs - whole) * 1e6;
        let micros = match round {
            Round::Down => micros.floor(),
            Round::Up => micros.ceil(),
        };
        // Both are whole, non-negative and in range, so the casts are exact.
        Duration::from_secs(whole as u64) + Duration::from_micros(micros as u64)
    };
    Ok(Some(UNIX_EPOCH + since_epoch))
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

    /// A fixed clock for the NumericDate tests: 2023-11-14T22:13:20Z.
    const T: u64 = 1_700_000_000;

    fn at(secs: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(secs)
    }

    /// `require_exp = true`, the given leeway.
    fn strict(leeway: Duration) -> Authenticator {
        Authenticator::from_config(&AuthConfig {
            hs256_secret: Some("s3cret".into()),
            require_exp: true,
            leeway,
            ..AuthConfig::default()
        })
        .unwrap()
    }

    /// A token whose claims set is exactly `claims` (the JSON text), signed with "s3cret".
    fn raw(claims: &str) -> String {
        let claims = serde_json::value::RawValue::from_string(claims.to_owned()).unwrap();
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap()
    }

    /// Verifies `{"sub":"alice", <times>}` at clock `now` with `require_exp` and `leeway`.
    fn check(times: &str, now: SystemTime, leeway: Duration) -> Result<Verified, AuthError> {
        strict(leeway).verify_claims_at(&raw(&format!(r#"{{"sub":"alice",{times}}}"#)), now)
    }

    fn malformed(name: &str) -> AuthError {
        AuthError::Claims(format!(
            "{name} must be a NumericDate: seconds since 1970 as a JSON number from 0 to \
             {MAX_NUMERIC_DATE}"
        ))
    }

    const FIVE: Duration = Duration::from_secs(5);

    #[test]
    fn fractional_exp_is_read_with_its_fraction_and_expires_then() {
        let exp = format!(r#""exp":{T}.5"#);
        let v = check(&exp, at(T as f64), Duration::ZERO).unwrap();
        assert_eq!(v.expires_at, Some(at(T as f64 + 0.5)));
        // Valid strictly before exp + leeway, expired from then on (RFC 7519 §4.1.4).
        let end = at(T as f64 + 0.5) + FIVE;
        assert!(check(&exp, end - Duration::from_micros(1), FIVE).is_ok());
        assert_eq!(check(&exp, end, FIVE).unwrap_err(), AuthError::Expired);
    }

    #[test]
    fn the_reported_token_expires_in_3_5_s() {
        // exp = now + 3.5 with require_exp: accepted, and its identity expired never
        // (`expires_at: None`) because the fraction made `as_u64` fail.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let exp = now.as_secs() + 3;
        let id = strict(FIVE)
            .verify(&raw(&format!(r#"{{"sub":"alice","exp":{exp}.5}}"#)))
            .unwrap();
        assert_eq!(
            id.expires_at,
            Some(UNIX_EPOCH + Duration::from_millis(exp * 1000 + 500))
        );
    }

    #[test]
    fn exp_100_5_expires_at_100_5_not_101() {
        let v = check(r#""exp":100.5"#, at(100.0), Duration::ZERO).unwrap();
        assert_eq!(
            v.expires_at,
            Some(UNIX_EPOCH + Duration::from_millis(100_500))
        );
        assert_eq!(
            check(r#""exp":100.5"#, at(100.5), Duration::ZERO).unwrap_err(),
            AuthError::Expired
        );
    }

    #[test]
    fn whole_seconds_written_as_floats_are_numeric_dates() {
        for text in [format!("{T}.0"), "1.7e9".to_owned(), "17E8".to_owned()] {
            let v = check(&format!(r#""exp":{text}"#), at(T as f64 - 10.0), FIVE).unwrap();
            assert_eq!(
                v.expires_at,
                Some(UNIX_EPOCH + Duration::from_secs(T)),
                "{text}"
            );
        }
        let v = check(&format!(r#""exp":{T}"#), at(0.0), FIVE).unwrap();
        assert_eq!(v.expires_at, Some(UNIX_EPOCH + Duration::from_secs(T)));
    }

    #[test]
    fn fractions_round_toward_refusal() {
        // exp rounds down, nbf and iat round up, below the microsecond.
        let claims = format!(r#""exp":{T}.1234567,"nbf":{T}.1234561,"iat":{T}.1234561"#);
        let map: Map<String, Value> = serde_json::from_str(&format!("{{{claims}}}")).unwrap();
        let t = TimeClaims::read(&map).unwrap();
        let base = UNIX_EPOCH + Duration::from_secs(T);
        assert_eq!(t.exp, Some(base + Duration::from_micros(123_456)));
        assert_eq!(t.nbf, Some(base + Duration::from_micros(123_457)));
        assert_eq!(t.iat, Some(base + Duration::from_micros(123_457)));
    }

    #[test]
    fn exp_that_is_not_a_numeric_date_is_refused() {
        let now = at(T as f64);
        for text in [
            r#""9999999999""#, // a string holding a number
            r#""""#,
            "null",
            "true",
            "-1",
            "-0.5",
            "1800000000000",        // milliseconds: year 58,000
            "253402300800",         // one second past 9999-12-31T23:59:59Z
            "18446744073709551615", // u64::MAX: overflowed the session timer
            "18446744073709551616", // past u64: a float to serde_json
            "1e300",
        ] {
            assert_eq!(
                check(&format!(r#""exp":{text}"#), now, FIVE).map(|_| ()),
                Err(malformed("exp")),
                "exp = {text}"
            );
        }
        // Not even JSON serde_json can hold (1e400), or containers jsonwebtoken's own pass
        // over the claims stumbles on before ours: refused as malformed tokens.
        for text in ["1e400", "[1800000000]", r#"{"t":1800000000}"#] {
            assert_eq!(
                check(&format!(r#""exp":{text}"#), now, FIVE).map(|_| ()),
                Err(AuthError::Malformed),
                "exp = {text}"
            );
        }
    }

    #[test]
    fn the_range_ends_are_numeric_dates() {
        let max = format!(r#""exp":{MAX_NUMERIC_DATE}"#);
        let v = check(&max, at(T as f64), FIVE).unwrap();
        assert_eq!(
            v.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(MAX_NUMERIC_DATE))
        );
        // 0 and -0 are 1970: long expired, not malformed.
        for zero in ["0", "0.0", "-0.0"] {
            assert_eq!(
                check(&format!(r#""exp":{zero}"#), at(T as f64), FIVE).unwrap_err(),
                AuthError::Expired,
                "{zero}"
            );
        }
    }

    #[test]
    fn exp_missing_or_null_with_require_exp() {
        let now = at(T as f64);
        let a = strict(FIVE);
        assert_eq!(
            a.verify_claims_at(&raw(r#"{"sub":"alice"}"#), now)
                .unwrap_err(),
            AuthError::Claims("exp is required".into())
        );
        // Without require_exp a missing exp means no expiry, but null is still not a date.
        let lax = auth("s3cret");
        let v = lax
            .verify_claims_at(&raw(r#"{"sub":"alice"}"#), now)
            .unwrap();
        assert_eq!(v.expires_at, None);
        assert_eq!(
            lax.verify_claims_at(&raw(r#"{"sub":"alice","exp":null}"#), now)
                .unwrap_err(),
            malformed("exp")
        );
        assert_eq!(
            lax.verify_claims_at(&raw(r#"{"sub":"alice","exp":"1"}"#), now)
                .unwrap_err(),
            malformed("exp")
        );
    }

    #[test]
    fn exp_past_by_a_fraction_beyond_the_leeway_is_expired() {
        // jsonwebtoken rounded exp and floored now, so this passed whenever now's fraction
        // was at least 0.4.
        let now = at(T as f64 + 0.9);
        let exp = format!(r#""exp":{:.1}"#, T as f64 + 0.5);
        assert_eq!(
            check(&exp, now, Duration::ZERO).unwrap_err(),
            AuthError::Expired
        );
        assert_eq!(
            check(&format!(r#""exp":{}"#, T - 5), at(T as f64 + 0.1), FIVE).unwrap_err(),
            AuthError::Expired
        );
    }

    #[test]
    fn nbf_is_a_numeric_date_and_its_fraction_counts() {
        let exp = format!(r#""exp":{}"#, T + 600);
        let now = at(T as f64);
        // Valid from nbf - leeway on, to the microsecond: nbf = now + 5.25 is 0.25 s early.
        let early = format!(r#"{exp},"nbf":{T}.25"#);
        assert_eq!(
            check(&early, now - FIVE, FIVE).unwrap_err(),
            AuthError::NotYetValid
        );
        assert!(check(&early, now - FIVE + Duration::from_millis(250), FIVE).is_ok());
        // A future nbf without leeway.
        assert_eq!(
            check(&format!(r#"{exp},"nbf":{T}.000001"#), now, Duration::ZERO).unwrap_err(),
            AuthError::NotYetValid
        );
        assert!(check(&format!(r#"{exp},"nbf":{T}"#), now, Duration::ZERO).is_ok());
        for text in [r#""0""#, "null", "-1", "false", "253402300800", "1e20"] {
            assert_eq!(
                check(&format!(r#"{exp},"nbf":{text}"#), now, FIVE).map(|_| ()),
                Err(malformed("nbf")),
                "nbf = {text}"
            );
        }
    }

    #[test]
    fn iat_is_a_numeric_date_not_in_the_future() {
        // jsonwebtoken does not look at iat at all.
        let exp = format!(r#""exp":{}"#, T + 600);
        let now = at(T as f64);
        assert!(check(&format!(r#"{exp},"iat":{}"#, T - 60), now, FIVE).is_ok());
        assert!(check(&format!(r#"{exp},"iat":{}"#, T + 5), now, FIVE).is_ok());
        let future = AuthError::Claims("iat is in the future".into());
        assert_eq!(
            check(&format!(r#"{exp},"iat":{}.5"#, T + 5), now, FIVE).unwrap_err(),
            future
        );
        assert_eq!(
            check(&format!(r#"{exp},"iat":{}"#, T + 3600), now, FIVE).unwrap_err(),
            future
        );
        for text in [r#""2023-11-14""#, "null", "-5", "[]", "1700000000000"] {
            assert_eq!(
                check(&format!(r#"{exp},"iat":{text}"#), now, FIVE).map(|_| ()),
                Err(malformed("iat")),
                "iat = {text}"
            );
        }
    }

    #[test]
    fn a_huge_leeway_does_not_overflow() {
        // jsonwebtoken computed `now - leeway` in u64: a panic in debug builds, every token
        // expired in release ones.
        let a = strict(Duration::MAX);
        let t = raw(&format!(
            r#"{{"sub":"alice","exp":{T},"nbf":{MAX_NUMERIC_DATE},"iat":{MAX_NUMERIC_DATE}}}"#
        ));
        assert!(a.verify_claims_at(&t, at(T as f64 + 1e6)).is_ok());
        assert!(a.verify(&t).is_ok());
        // A leeway does not excuse a claim that is not a date, nor a missing exp.
        assert_eq!(
            a.verify_claims_at(&raw(r#"{"sub":"alice"}"#), at(T as f64))
                .unwrap_err(),
            AuthError::Claims("exp is required".into())
        );
        // Longer than the time since 1970 (the server test's "1000years").
        let years = strict(Duration::from_secs(1000 * 365 * 86_400));
        assert!(
            years
                .verify(&raw(&format!(r#"{{"sub":"alice","exp":{T},"nbf":{T}}}"#)))
                .is_ok()
        );
    }

    #[test]
    fn repeated_claim_names_are_refused() {
        // RFC 7519 §4: one claims set, one reading. jsonwebtoken refused a repeated exp but
        // not a repeated iat or roles claim, whose last value a map would silently keep.
        let now = at(T as f64);
        let exp = format!(r#""exp":{}"#, T + 600);
        for times in [
            format!(r#""exp":1,{exp}"#),
            format!(r#"{exp},"iat":1,"iat":{}"#, T + 3600),
            format!(r#"{exp},"nbf":1,"nbf":2"#),
            format!(r#"{exp},"roles":[],"roles":["admin"]"#),
        ] {
            assert_eq!(
                check(&times, now, FIVE).map(|_| ()),
                Err(AuthError::Malformed),
                "{times}"
            );
        }
        assert_eq!(
            strict(FIVE)
                .verify_claims_at(&raw(&format!(r#"{{"sub":"a","sub":"b",{exp}}}"#)), now)
                .map(|_| ()),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn minted_tokens_carry_exact_times() {
        let a = auth("s3cret");
        let before = SystemTime::now();
        let t = a.mint("alice", &[], Duration::from_secs(60)).unwrap();
        let exp = a.verify(&t).unwrap().expires_at.unwrap();
        let secs = exp.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(secs.subsec_nanos(), 0, "minted exp is whole seconds");
        assert!(exp <= before + Duration::from_secs(60));
        assert!(exp > before + Duration::from_secs(58));
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
