//! Sign-in for the admin dashboard: the credential, sessions, CSRF tokens and the one-time
//! tickets the dashboard's own gateway connection is admitted with.
//!
//! - **Credential**: one operator, `admin.user` and an Argon2 hash of the password in the PHC
//!   string format (`admin.password_hash`, printed by `herald admin hash-password`). A hash in
//!   the config, not a JWT role: a token minted by the application's login service would make
//!   every holder of its signing key an operator of the gateway, and the dashboard must keep
//!   working when that service is down. Argon2id (RFC 9106) is the password hash OWASP
//!   recommends first; the `argon2` crate verifies it in constant time.
//! - **Session**: a random 43-character id (about 256 bits) in the cookie `herald_admin`
//!   (`HttpOnly`, `SameSite=Strict`, `Path=/admin`, `Secure` over TLS), held in this node's
//!   memory: it ends after `admin.idle_timeout` without use, `admin.session_lifetime` after
//!   sign-in, at sign-out, and when the node restarts.
//! - **CSRF**: each session has a token of its own, given to the page at sign-in; every API
//!   call but sign-in and the session probe must carry it in `X-CSRF-Token` (compared in
//!   constant time). With `SameSite=Strict` a cross-site request carries no cookie anyway;
//!   the token also stops a same-site page of another application (a sibling subdomain).
//! - **Tickets**: the page cannot hand its HttpOnly cookie to a WebSocket URL, and the cookie
//!   is scoped to `/admin`; it asks for a ticket (30 s, one use) and connects to `/v1/ws` with
//!   `?token=<ticket>`. The connection's identity is the session's, marked admin.
//! - **Sign-in attempts**: at most [`MAX_FAILURES`] wrong passwords per minute per node; then
//!   429 until the minute is over, so the hash cannot be brute-forced through the page.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use herald_core::Identity;
use herald_core::broker::random_id;
use herald_core::config::AdminConfig;
use herald_core::protocol::Goodbye;
use herald_node::Node;
use herald_node::admin::{AdminTickets, TICKET_PREFIX};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "herald_admin";

/// How long a connection ticket stays valid.
pub const TICKET_TTL: Duration = Duration::from_secs(30);

/// Wrong passwords accepted per node per minute before sign-in answers 429.
pub const MAX_FAILURES: u32 = 10;

/// One signed-in operator.
#[derive(Debug, Clone)]
pub struct Session {
    /// The operator's name (`admin.user`).
    pub user: String,
    /// The session's CSRF token.
    pub csrf: String,
    /// The user id of the dashboard's gateway connections (`admin:<user>:<tag>`): closing it
    /// closes them.
    pub conn_user: Arc<str>,
    created: Instant,
    created_at: SystemTime,
    last_used: Instant,
}

struct Ticket {
    session: String,
    until: Instant,
}

/// Why a sign-in failed.
#[derive(Debug, PartialEq, Eq)]
pub enum SignInError {
    /// Wrong user or password.
    Wrong,
    /// Too many wrong passwords in the last minute.
    TooMany,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The admin sign-in of one node.
pub struct AdminAuth {
    user: String,
    hash: String,
    idle: Duration,
    lifetime: Duration,
    sessions: Mutex<HashMap<String, Session>>,
    tickets: Mutex<HashMap<String, Ticket>>,
    /// Start of the current minute and wrong passwords in it.
    failures: Mutex<(Instant, u32)>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl AdminAuth {
    /// From a validated `[admin]` section. Errors: the hash is not a PHC string.
    pub fn new(config: &AdminConfig) -> Result<Self, String> {
        let hash = config.password_hash.clone().unwrap_or_default();
        PasswordHash::new(&hash).map_err(|e| format!("admin.password_hash: {e}"))?;
        Ok(Self {
            user: config.user.clone(),
            hash,
            idle: config.idle_timeout,
            lifetime: config.session_lifetime,
            sessions: Mutex::default(),
            tickets: Mutex::default(),
            failures: Mutex::new((Instant::now(), 0)),
        })
    }

    /// The idle timeout (told to the page, which says when it will sign out).
    pub fn idle_timeout(&self) -> Duration {
        self.idle
    }

    /// Checks the credential; on success opens a session and returns its id.
    pub fn sign_in(&self, user: &str, password: &str) -> Result<(String, Session), SignInError> {
        {
            let mut f = lock(&self.failures);
            if f.0.elapsed() >= Duration::from_secs(60) {
                *f = (Instant::now(), 0);
            }
            if f.1 >= MAX_FAILURES {
                return Err(SignInError::TooMany);
            }
        }
        // The hash is verified even for a wrong user name, so the answer takes as long.
        let password_ok = PasswordHash::new(&self.hash).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        });
        let user_ok: bool = user.as_bytes().ct_eq(self.user.as_bytes()).into();
        if !(password_ok && user_ok) {
            lock(&self.failures).1 += 1;
            return Err(SignInError::Wrong);
        }
        let id = random_id(43);
        let now = Instant::now();
        let session = Session {
            user: self.user.clone(),
            csrf: random_id(32),
            conn_user: Arc::from(format!("admin:{}:{}", self.user, random_id(8))),
            created: now,
            created_at: SystemTime::now(),
            last_used: now,
        };
        lock(&self.sessions).insert(id.clone(), session.clone());
        Ok((id, session))
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_used) < self.idle && now.duration_since(s.created) < self.lifetime
    }

    /// The live session with this id; `touch` counts this as use (resets the idle timer).
    pub fn session(&self, id: &str, touch: bool) -> Option<Session> {
        let now = Instant::now();
        let mut sessions = lock(&self.sessions);
        let s = sessions.get_mut(id)?;
        if !self.live(s, now) {
            return None;
        }
        if touch {
            s.last_used = now;
        }
        Some(s.clone())
    }

    /// Whether `given` is the session's CSRF token (constant time).
    pub fn csrf_ok(session: &Session, given: &str) -> bool {
        session.csrf.as_bytes().ct_eq(given.as_bytes()).into()
    }

    /// Ends a session (sign-out); returns it so its connections can be closed.
    pub fn sign_out(&self, id: &str) -> Option<Session> {
        let s = lock(&self.sessions).remove(id);
        lock(&self.tickets).retain(|_, t| t.session != id);
        s
    }

    /// A one-time ticket for the session's gateway connection.
    pub fn ticket(&self, session_id: &str) -> String {
        let ticket = format!("{TICKET_PREFIX}{}", random_id(32));
        lock(&self.tickets).insert(
            ticket.clone(),
            Ticket {
                session: session_id.to_owned(),
                until: Instant::now() + TICKET_TTL,
            },
        );
        ticket
    }

    /// Drops ended sessions and tickets; returns the ended sessions (their connections are
    /// then closed).
    pub fn sweep(&self) -> Vec<Session> {
        let now = Instant::now();
        let mut ended = Vec::new();
        lock(&self.sessions).retain(|_, s| {
            let keep = self.live(s, now);
            if !keep {
                ended.push(s.clone());
            }
            keep
        });
        lock(&self.tickets).retain(|_, t| t.until > now);
        ended
    }
}

impl AdminTickets for AdminAuth {
    fn redeem(&self, ticket: &str) -> Option<Identity> {
        let t = lock(&self.tickets).remove(ticket)?;
        if t.until <= Instant::now() {
            return None;
        }
        let s = self.session(&t.session, false)?;
        Some(Identity {
            user: Some(s.conn_user.clone()),
            roles: Vec::new(),
            // The connection ends with the session's lifetime at the latest (4001).
            expires_at: Some(s.created_at + self.lifetime),
            admin: true,
        })
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

/// Every 5 s, ends sessions past their idle timeout or lifetime and closes their dashboard
/// connections (4001, "token expired": the page then asks for a ticket, is refused, and
/// shows the sign-in form).
pub async fn sweep_sessions(node: Arc<Node>, auth: Arc<AdminAuth>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for s in auth.sweep() {
            tracing::info!(target: "herald::admin", admin = %s.user, "admin session ended (idle or lifetime)");
            node.sessions
                .close_user(&s.conn_user, Goodbye::TokenExpired);
        }
    }
}

/// Hashes `password` with Argon2id (the crate's defaults: 19 MiB, 2 passes, 1 lane, as
/// RFC 9106 and OWASP recommend) and a random salt, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(idle: Duration) -> AdminAuth {
        AdminAuth::new(&AdminConfig {
            enabled: true,
            password_hash: Some(hash_password("s3cret").unwrap()),
            idle_timeout: idle,
            ..AdminConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn only_the_right_credential_signs_in() {
        let a = auth(Duration::from_secs(60));
        assert_eq!(a.sign_in("admin", "wrong").unwrap_err(), SignInError::Wrong);
        assert_eq!(a.sign_in("root", "s3cret").unwrap_err(), SignInError::Wrong);
        let (id, s) = a.sign_in("admin", "s3cret").unwrap();
        assert_eq!(s.user, "admin");
        assert!(a.session(&id, true).is_some());
        assert!(AdminAuth::csrf_ok(&s, &s.csrf));
        assert!(!AdminAuth::csrf_ok(&s, "nope"));
    }

    #[test]
    fn wrong_passwords_are_limited_per_minute() {
        let a = auth(Duration::from_secs(60));
        for _ in 0..MAX_FAILURES {
            assert_eq!(a.sign_in("admin", "x").unwrap_err(), SignInError::Wrong);
        }
        assert_eq!(
            a.sign_in("admin", "s3cret").unwrap_err(),
            SignInError::TooMany,
            "even the right password waits out the minute"
        );
    }

    #[test]
    fn idle_sessions_end_and_tickets_are_single_use() {
        let a = auth(Duration::from_millis(50));
        let (id, _) = a.sign_in("admin", "s3cret").unwrap();
        let t = a.ticket(&id);
        let identity = a.redeem(&t).expect("a fresh ticket");
        assert!(identity.admin);
        assert!(a.redeem(&t).is_none(), "a ticket works once");
        std::thread::sleep(Duration::from_millis(80));
        assert!(a.session(&id, true).is_none(), "idle past the timeout");
        let t = a.ticket(&id);
        assert!(a.redeem(&t).is_none(), "no ticket for an ended session");
        assert_eq!(a.sweep().len(), 1);
    }
}
