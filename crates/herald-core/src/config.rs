//! `herald.toml`: loading, environment overrides and validation.
//!
//! The file is read once into typed structs, merged with `HERALD_*` environment variables
//! (`HERALD_SERVER__LISTEN` sets `server.listen`), then validated as a whole before anything
//! binds a port. Every problem found is reported at once, each naming where the value came
//! from (the file, or the environment variable that set it), the channel (by position and
//! name) and the field, so a broken deploy is fixed in one edit.
//!
//! Type errors are collected too: serde stops at the first one, so when the whole document
//! does not deserialize, each section and each `[[channel]]` is deserialized on its own, and a
//! bad field is reported and dropped (its default applies) until the rest goes through.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::error::Kind;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use serde::Deserialize;

use crate::identity::Authenticator;
use crate::registry::{Registry, Scope};

/// Config sections `HERALD_<SECTION>__<KEY>` may set. A variable with `__` in its name is a
/// config key: an unknown section (`HERALD_SERVR__LISTEN`) or key (`HERALD_SERVER__LISTN`)
/// is an error, like an unknown key in the file. Variables without `__` (the CLI's
/// `HERALD_CONFIG` and `HERALD_LOG`, a deployment's own `HERALD_URL`, the tests'
/// `HERALD_BIN`) are not config and are left alone.
const ENV_SECTIONS: &[&str] = &[
    "server",
    "auth",
    "api",
    "broker",
    "limits",
    "socketio",
    "websocket",
    "backend",
    "admin",
];

/// Sections that are arrays of tables, which one flat variable cannot express: the file only.
const FILE_ONLY_SECTIONS: &[&str] = &["channel", "source", "proxy", "rpc", "webhook"];

/// The top-level keys of `herald.toml`.
const SECTIONS: &[&str] = &[
    "server",
    "auth",
    "api",
    "broker",
    "limits",
    "socketio",
    "websocket",
    "channel",
    "source",
    "backend",
    "proxy",
    "rpc",
    "webhook",
    "admin",
];

/// The fully validated configuration of one gateway process.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, if any (`None` when built from defaults and env only).
    pub file: Option<PathBuf>,
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub api: ApiConfig,
    pub broker: BrokerConfig,
    pub limits: Limits,
    pub socketio: SocketIoConfig,
    /// `[websocket]`: `/v1/ws` options (permessage-deflate).
    pub websocket: WebSocketConfig,
    pub sources: SourcesConfig,
    pub registry: Arc<Registry>,
    /// Gate 1's verifier, built from `[auth]` while validating (key files read, JWKS parsed),
    /// so a bad key is a config error like any other and is never built twice.
    pub authenticator: Arc<Authenticator>,
    /// The verifier of subscription tokens when `[auth.subscription]` names a key of its own;
    /// `None`: subscription tokens are verified with the connection keys (`authenticator`).
    pub subscription_authenticator: Option<Arc<Authenticator>>,
    /// `[backend]`: how requests to the application's backend are signed.
    pub backend: BackendConfig,
    /// `[[proxy]]`: the backend endpoints gates may ask, by name.
    pub proxies: Vec<ProxyConfig>,
    /// `[[webhook]]`: endpoints told what happened (connections, presence, occupancy).
    pub webhooks: Vec<WebhookConfig>,
    /// `[[rpc]]`: the methods clients may call, each answered by a proxy.
    pub rpc: Arc<Vec<crate::rpc::RpcMethod>>,
    /// `[admin]`: the operators' dashboard at `/admin`.
    pub admin: AdminConfig,
    /// Things that are not errors but probably mistakes, e.g. `HERALD_API_KEY` (one
    /// underscore: not a config key) next to an intended `HERALD_API__KEY`. The binary logs them.
    pub warnings: Vec<String>,
}

/// `[[source.*]]` tables: the event sources.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    /// `[[source.postgres]]`: transactional outboxes and NOTIFY channels.
    pub postgres: Vec<PostgresSourceConfig>,
    /// `[[source.nats]]`: JetStream streams.
    pub nats: Vec<crate::bus::NatsSourceConfig>,
    /// `[[source.redis_stream]]`: Redis streams.
    pub redis_stream: Vec<crate::bus::RedisStreamSourceConfig>,
    /// `[[source.amqp]]`: RabbitMQ queues.
    pub amqp: Vec<crate::bus::AmqpSourceConfig>,
}

/// One Postgres database Herald consumes events from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// `postgres://user:pass@host:port/db`.
    pub url: String,
    /// The outbox table `herald postgres install` creates (and its `<table>_dead` twin).
    #[serde(default = "default_outbox_table")]
    pub outbox_table: String,
    /// Extra NOTIFY channels whose payloads (`{"channel","data"}`) are published directly.
    #[serde(default)]
    pub notify: Vec<String>,
    /// The outbox is polled this often even without a notification (a missed NOTIFY, a
    /// gateway that was down when it fired).
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Rows taken per transaction.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

fn default_outbox_table() -> String {
    "herald_outbox".into()
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_batch_size() -> usize {
    100
}

/// True for a plain SQL identifier we can interpolate without quoting surprises.
pub fn is_sql_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 50
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address `herald serve` binds.
    pub listen: SocketAddr,
    /// Origins allowed to open a WebSocket from a browser. Empty: any origin may connect with a
    /// token, but a connection authenticated by cookie must come from the same origin.
    pub allowed_origins: Vec<String>,
    /// Interval between server `ping` frames.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long past a missed ping a silent client is kept before it is closed.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Longest time an HTTP request (including the WebSocket upgrade) may take to arrive.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// On SIGTERM, clients are told to reconnect spread over this window (avoids a thundering
    /// herd on the other nodes).
    #[serde(with = "humantime_serde")]
    pub shutdown_spread: Duration,
    /// Hard limit for the whole shutdown; connections still open then are dropped.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Serve the demo page at `/` and its token endpoint (development only).
    pub demo: bool,
    /// Kernel send buffer per client socket, in bytes. Unset: the kernel autotunes (up to
    /// several MB per socket on Linux). Setting it bounds kernel memory per connection and
    /// makes a stalled client hit the outbound queue limit sooner.
    pub tcp_send_buffer: Option<usize>,
    /// The reconnection delay Server-Sent Events streams announce (`retry:`), which
    /// `EventSource` waits before reconnecting.
    #[serde(with = "humantime_serde")]
    pub sse_retry: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allowed_origins: Vec::new(),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            shutdown_spread: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(10),
            demo: false,
            sse_retry: Duration::from_secs(2),
            tcp_send_buffer: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Shared secret for HS256/HS384/HS512 tokens.
    pub hs256_secret: Option<String>,
    /// PEM file with an RSA (RS256) or EC P-256 (ES256) public key.
    pub public_key_pem: Option<PathBuf>,
    /// JWKS file (a `{"keys":[…]}` document); tokens pick their key by `kid`.
    pub jwks_file: Option<PathBuf>,
    /// Claim holding the roles: an array of strings or one string.
    pub roles_claim: String,
    /// Connections without credentials are accepted as anonymous.
    pub anonymous: bool,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat` (at connect and on `refresh`; the
    /// session itself still ends at `exp`).
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Refuse tokens without an `exp` claim.
    pub require_exp: bool,
    /// Name of a cookie that may carry the token (browsers on the same site). Off when unset.
    pub cookie: Option<String>,
    /// `[auth.subscription]`: a key of its own for subscription tokens (`scope = "token"`).
    /// Unset: they are verified with the connection keys above.
    pub subscription: Option<SubscriptionKeyConfig>,
    /// A `[[proxy]]` that authenticates connections without a token (session cookies): gate
    /// 1 forwards the request's cookies and the proxy's `headers`, the backend answers the
    /// user. Tokens, when a request carries one, are still verified with the keys above.
    pub connect_proxy: Option<String>,
}

/// `[auth.subscription]`: the key subscription tokens are signed with, when it is not the
/// connection key (e.g. the backend that mints them holds a secret the login service does
/// not). Exactly one of the three.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriptionKeyConfig {
    /// Shared secret for HS256/HS384/HS512 subscription tokens.
    pub hs256_secret: Option<String>,
    /// PEM file with an RSA (RS256) or EC P-256 (ES256) public key.
    pub public_key_pem: Option<PathBuf>,
    /// JWKS file; tokens pick their key by `kid`.
    pub jwks_file: Option<PathBuf>,
}

/// `[backend]`: requests Herald makes to the application's backend (proxies).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// The shared secret every request is signed with (`Herald-Signature`, docs/backend.md).
    /// Required when a `[[proxy]]` is configured.
    pub secret: Option<String>,
}

/// One `[[proxy]]`: a backend endpoint a gate asks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// How descriptors refer to it (`scope = { proxy = "rooms" }`).
    pub name: String,
    /// `http://` URL the signed JSON request is POSTed to.
    pub url: String,
    /// The whole request, connect to last byte of the answer; past it the gate refuses with
    /// `unavailable` (fail closed).
    #[serde(default = "default_proxy_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long an answer is reused for the same (user, channel); zero: never cached.
    #[serde(default, with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Connect proxies: request headers forwarded to the backend besides the cookies
    /// (case-insensitive names, e.g. `["x-forwarded-for", "user-agent"]`).
    #[serde(default)]
    pub headers: Vec<String>,
}

/// The kinds of events a `[[webhook]]` may receive.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "client_connect",
    "client_disconnect",
    "channel_occupied",
    "channel_vacated",
    "presence_join",
    "presence_leave",
];

/// One `[[webhook]]`: an endpoint the node POSTs batches of events to, signed like every
/// backend request, retried with backoff from a bounded queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Its label in `/metrics` (default: its position, `0`, `1`, …).
    #[serde(default)]
    pub name: Option<String>,
    /// `http://` URL the batches are POSTed to.
    pub url: String,
    /// The kinds of events sent (default: all of [`WEBHOOK_EVENTS`]).
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Most events per request.
    #[serde(default = "default_batch_size_hook")]
    pub batch_size: usize,
    /// How long an event may wait for others to fill its batch.
    #[serde(default = "default_batch_wait", with = "humantime_serde")]
    pub batch_wait: Duration,
    /// Events held while the endpoint is slow or down; past it new events are dropped and
    /// counted (`herald_webhook_dropped_total{reason="queue_full"}`).
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// One request, connect to last byte.
    #[serde(default = "default_hook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per batch (the first included) before it is dropped and counted
    /// (`reason="retries"`); between attempts the wait doubles from 250ms up to 30s.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_batch_size_hook() -> usize {
    100
}
fn default_batch_wait() -> Duration {
    Duration::from_millis(200)
}
fn default_queue_size() -> usize {
    10_000
}
fn default_hook_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_attempts() -> u32 {
    10
}

fn default_proxy_timeout() -> Duration {
    Duration::from_secs(1)
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            public_key_pem: None,
            jwks_file: None,
            roles_claim: "roles".into(),
            anonymous: false,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
            require_exp: false,
            cookie: None,
            subscription: None,
            connect_proxy: None,
        }
    }
}

/// `[admin]`: the live admin dashboard at `/admin` (docs/operations.md, "The admin dashboard").
///
/// The credential is one operator account: `user` and an Argon2 hash of its password in the
/// PHC string format (`herald admin hash-password` prints one), never the password itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve `/admin`, its API and the internal `$admin:` channels. Off by default.
    pub enabled: bool,
    /// The operator's sign-in name (also who the audit log names).
    pub user: String,
    /// `$argon2id$v=19$m=…,t=…,p=…$salt$hash` (PHC string format).
    pub password_hash: Option<String>,
    /// A session unused for this long is signed out (default 15 minutes).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A session ends this long after sign-in, used or not (default 8 hours).
    #[serde(with = "humantime_serde")]
    pub session_lifetime: Duration,
    /// Always mark the session cookie `Secure`. Without it the cookie is `Secure` when the
    /// request came over TLS as a proxy in front says (`X-Forwarded-Proto: https`).
    pub secure_cookie: bool,
    /// How often each node publishes its statistics on `$admin:nodes` (default 1 s).
    #[serde(with = "humantime_serde")]
    pub stats_interval: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            user: "admin".into(),
            password_hash: None,
            idle_timeout: Duration::from_secs(15 * 60),
            session_lifetime: Duration::from_secs(8 * 3600),
            secure_cookie: false,
            stats_interval: Duration::from_secs(1),
        }
    }
}

fn validate_admin(admin: &AdminConfig, p: &mut Problems) {
    if !admin.enabled {
        return;
    }
    if !crate::name::is_valid_segment(&admin.user) {
        p.push(
            None,
            "admin.user",
            "must be letters, digits, '_' or '-' (it names the operator in the audit log)",
        );
    }
    match admin.password_hash.as_deref() {
        None | Some("") => p.push_related(
            "admin.password_hash",
            &["admin.enabled"],
            "required when admin.enabled = true (print one with `herald admin hash-password`)",
        ),
        Some(h) if !h.starts_with("$argon2id$") && !h.starts_with("$argon2i$") => p.push(
            None,
            "admin.password_hash",
            "must be an Argon2 hash in the PHC format ($argon2id$v=19$...), not a password \
             (print one with `herald admin hash-password`)",
        ),
        Some(_) => {}
    }
    if admin.idle_timeout < Duration::from_secs(10) {
        p.push(None, "admin.idle_timeout", "must be at least 10s");
    }
    if admin.session_lifetime < admin.idle_timeout {
        p.push_related(
            "admin.session_lifetime",
            &["admin.idle_timeout"],
            "must be at least admin.idle_timeout",
        );
    }
    if admin.stats_interval < Duration::from_millis(200) {
        p.push(None, "admin.stats_interval", "must be at least 200ms");
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer key for the server API. When unset every API call is refused with 401.
    pub key: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub kind: BrokerKind,
    /// Where the broker is; required for redis and nats. For nats: `nats://[user:pass@]host:port`
    /// (or `tls://`), several comma-separated for a NATS cluster. For redis, one server: `redis://[user:pass@]host:port[/db]`
    /// (`rediss://` for TLS, `unix:///path`). A Redis Cluster:
    /// `redis+cluster://[user:pass@]host:port[,host:port…]` (seed nodes; `rediss+cluster://`).
    /// A Sentinel-managed master: `redis+sentinel://[user:pass@]host:port[,host:port…]/<master
    /// name>[/db]` (`rediss+sentinel://`). See docs/operations.md.
    pub url: Option<String>,
    /// Redis TLS (`rediss…` URLs): a PEM file of the CA to trust instead of the system's roots
    /// (a private CA, a managed Redis' own). Relative to the config file.
    pub tls_ca_file: Option<PathBuf>,
    /// Redis TLS: a PEM client certificate, for servers that authenticate clients
    /// (`tls-auth-clients yes`, Redis' default). Needs `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// Redis TLS: the PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Prefix of every Redis key and channel, so several gateways can share one Redis; for
    /// NATS, of every subject, stream and KV bucket (then only `[A-Za-z0-9_-]`).
    pub prefix: String,
    /// NATS broker: JetStream replicas of Herald's stream and KV buckets (1 on a single
    /// server; 3 on a clustered JetStream so they survive a server's loss). Applies when they
    /// are created.
    pub replicas: usize,
    /// A node refreshes its clients' presence entries; entries of a node that died without
    /// cleaning up disappear after this long.
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// Memory broker: most bytes of history held across all channels (payloads plus about
    /// 110 bytes of bookkeeping each). Past it the oldest publications are evicted first, and
    /// recovering across them answers `recovered: false`.
    pub history_budget_bytes: usize,
    /// Memory broker: most idempotency keys remembered at once; past it the oldest is
    /// forgotten before its window ends.
    pub max_idempotency_keys: usize,
    /// Memory broker: most channel records kept that retain no history (a channel's offset
    /// and epoch); past it the least recently used are dropped, and such a channel starts a
    /// new epoch when used again.
    pub max_idle_channels: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            kind: BrokerKind::Memory,
            url: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            prefix: "herald".into(),
            replicas: 1,
            presence_ttl: Duration::from_secs(30),
            history_budget_bytes: 256 << 20,
            max_idempotency_keys: 100_000,
            max_idle_channels: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// One node; history and offsets live in this process.
    Memory,
    /// Many nodes sharing offsets, history, presence and fan-out through Redis.
    Redis,
    /// Many nodes sharing them through NATS: core NATS fans out, JetStream keeps offsets,
    /// history, presence and sessions.
    Nats,
}

/// Per-connection and per-message limits. Every one has a default sized for a browser app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest inbound WebSocket frame; larger closes the connection with 4009.
    pub max_frame_bytes: usize,
    /// Largest publication `data` (JSON text), from clients and from the API.
    pub max_payload_bytes: usize,
    /// Subscriptions one connection may hold, auto-subscriptions included.
    pub max_subscriptions: usize,
    /// Simultaneous connections of one user; further upgrades get HTTP 429.
    pub max_connections_per_user: usize,
    /// Client publications per second per connection (token bucket, burst = 2×).
    pub publish_rate: u32,
    /// Any client frames per second per connection before the connection is closed with 4029.
    pub frame_rate: u32,
    /// Bytes queued for one connection before it counts as a slow consumer (closed with 4008).
    /// At least twice `max_payload_bytes`: a queue that cannot hold a publication of the
    /// largest size while the previous one is written would close every subscriber of it.
    pub outbound_queue_bytes: usize,
    /// Most publications a recovering subscribe may replay; beyond it `recovered: false`.
    pub max_recovery: usize,
    /// A repeated `idempotency_key` on a channel within this window returns the first result
    /// and publishes nothing.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 128 * 1024,
            max_payload_bytes: 64 * 1024,
            max_subscriptions: 128,
            max_connections_per_user: 64,
            publish_rate: 20,
            frame_rate: 200,
            outbound_queue_bytes: 1024 * 1024,
            max_recovery: 1000,
            idempotency_window: Duration::from_secs(120),
        }
    }
}

/// `[socketio]`: the Socket.IO compatibility endpoint (`/socket.io/`, docs/socketio.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketIoConfig {
    /// Serve `/socket.io/` (Engine.IO v4, Socket.IO v5).
    pub enabled: bool,
    /// How long after a connection ends its subscriptions are kept for connection state
    /// recovery (the `pid` of the CONNECT reply). Zero turns recovery off: no `pid` is sent.
    #[serde(with = "humantime_serde")]
    pub max_disconnection: Duration,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            // Socket.IO's own default for `connectionStateRecovery.maxDisconnectionDuration`.
            max_disconnection: Duration::from_secs(120),
        }
    }
}

/// `[websocket]`: options of the protocol v1 WebSocket endpoint `/v1/ws`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Offer `permessage-deflate` (RFC 7692) to clients that ask for it. Off by default: it
    /// trades server CPU (one compression per publication, and one per unicast message) for
    /// bytes on the wire; see docs/operations.md.
    pub permessage_deflate: bool,
    /// Messages shorter than this many bytes (v1 JSON text) are sent uncompressed even on a
    /// compressing connection: below it the saving is a few bytes and not worth the CPU.
    pub deflate_min_bytes: usize,
    /// DEFLATE level, 1 (fastest) to 9 (smallest). A broadcast is compressed once whatever its
    /// fan-out, but a unicast message or a reply is compressed per message.
    pub deflate_level: u32,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            permessage_deflate: false,
            // A `pub` frame's envelope alone is ~100 bytes; under ~256 bytes DEFLATE without a
            // shared window saves tens of bytes at best. (Centrifugo's
            // `websocket.compression_min_size` defaults to 0, Node ws's `threshold` to 1024.)
            deflate_min_bytes: 256,
            // zlib's default, and Node ws's: the like-for-like comparison in the benchmarks.
            deflate_level: 6,
        }
    }
}

/// A descriptor's `socketio` table: how its publications are named as Socket.IO events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketIoChannelConfig {
    /// One fixed event name for every publication of the channel.
    #[serde(default)]
    pub event: Option<String>,
    /// A JSON pointer (RFC 6901) into the payload: the string there names the event (a
    /// discriminated union's `/type`).
    #[serde(default)]
    pub event_from: Option<String>,
}

/// A `[[channel]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub name: String,
    #[serde(default)]
    pub scope: Option<Scope>,
    #[serde(default)]
    pub user_param: Option<String>,
    #[serde(default)]
    pub auto_subscribe: bool,
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    #[serde(default)]
    pub schema_file: Option<PathBuf>,
    #[serde(default)]
    pub history: Option<HistoryConfig>,
    #[serde(default)]
    pub presence: bool,
    #[serde(default)]
    pub publish: Option<Scope>,
    /// How Socket.IO clients see this channel's publications (docs/socketio.md).
    #[serde(default)]
    pub socketio: Option<SocketIoChannelConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Publications kept per channel.
    pub size: usize,
    /// Publications older than this are dropped from history.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    auth: AuthConfig,
    #[serde(default)]
    api: ApiConfig,
    #[serde(default)]
    broker: BrokerConfig,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    socketio: SocketIoConfig,
    #[serde(default)]
    websocket: WebSocketConfig,
    #[serde(default, rename = "channel")]
    channels: Vec<ChannelConfig>,
    #[serde(default)]
    source: SourcesConfig,
    #[serde(default)]
    backend: BackendConfig,
    #[serde(default)]
    proxy: Vec<ProxyConfig>,
    #[serde(default)]
    rpc: Vec<crate::rpc::RpcConfig>,
    #[serde(default)]
    webhook: Vec<WebhookConfig>,
    #[serde(default)]
    admin: AdminConfig,
}

/// One thing wrong with the configuration, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The environment variable that set the value, or `None` when it is the file's.
    pub variable: Option<String>,
    /// `channel #3 "chat.room.{roomId}"`, or `None` outside the channel list.
    pub channel: Option<String>,
    /// Dotted field path, e.g. `schema.properties.id.type` or `server.listen`.
    pub field: String,
    pub message: String,
    /// The other fields a rule between fields read (`limits.max_payload_bytes` for the
    /// outbound queue's minimum): when `field` is the file's and one of these came from the
    /// environment, the variable is what broke the rule and is named.
    pub related: Vec<String>,
}

/// Everything wrong with a configuration, with the file it came from.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        // Blame what is at fault: the file, the environment, or both.
        let in_file = self.problems.iter().any(|p| p.variable.is_none());
        let in_env = self.problems.iter().any(|p| p.variable.is_some());
        let origin = match (in_file, in_env) {
            (true, true) => format!("{} and the environment", self.file),
            (false, true) => "environment".to_owned(),
            _ => self.file.clone(),
        };
        write!(f, "{origin}: {n} problem{}", if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            match &p.variable {
                Some(var) => write!(f, "\n  environment variable {var}: ")?,
                None => write!(f, "\n  {}: ", self.file)?,
            }
            if let Some(ch) = &p.channel {
                write!(f, "{ch}, ")?;
            }
            if p.field == "-" {
                write!(f, "{}", p.message)?;
            } else {
                write!(f, "field `{}`: {}", p.field, p.message)?;
            }
        }
        Ok(())
    }
}

impl ConfigError {
    fn single(file: &str, field: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            problems: vec![Problem {
                variable: None,
                channel: None,
                field: field.to_owned(),
                message: message.into(),
                related: Vec::new(),
            }],
        }
    }
}

/// Collects problems during validation; passed down to the registry builder.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub(crate) Vec<Problem>);

impl Problems {
    pub(crate) fn push(
        &mut self,
        channel: Option<String>,
        field: &str,
        message: impl Into<String>,
    ) {
        self.0.push(Problem {
            variable: None,
            channel,
            field: field.to_owned(),
            message: message.into(),
            related: Vec::new(),
        });
    }

    /// A problem of `field` under a rule that also reads `related` (outside any channel).
    pub(crate) fn push_related(
        &mut self,
        field: &str,
        related: &[&str],
        message: impl Into<String>,
    ) {
        self.push(None, field, message);
        if let Some(p) = self.0.last_mut() {
            p.related = related.iter().map(|r| (*r).to_owned()).collect();
        }
    }
}

pub(crate) fn channel_label(index: usize, name: &str) -> String {
    format!("channel #{} {name:?}", index + 1)
}

/// One `HERALD_<SECTION>__<KEY>` variable that sets a config value.
#[derive(Debug, Clone)]
struct EnvSetting {
    /// The variable's name as written, for messages.
    name: String,
    /// The dotted config path it sets, lowercase (`server.listen`).
    path: String,
    value: String,
}

/// What the environment contributes: the settings, the variables that look like config keys
/// but cannot be (errors), and near misses that are probably mistakes (warnings).
#[derive(Debug, Default)]
struct EnvScan {
    settings: Vec<EnvSetting>,
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

/// Sorts `HERALD_*` variables into config settings, errors and warnings (see [`ENV_SECTIONS`]).
fn scan_env(vars: impl IntoIterator<Item = (OsString, OsString)>) -> EnvScan {
    let mut scan = EnvScan::default();
    let mut vars: Vec<(String, OsString)> = vars
        .into_iter()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
        .filter(|(k, _)| {
            k.len() > 7
                && k.get(..7)
                    .is_some_and(|p| p.eq_ignore_ascii_case("HERALD_"))
        })
        .collect();
    // The same order every run, so messages and precedence never depend on the platform.
    vars.sort();
    for (name, value) in vars {
        let rest = &name[7..];
        let problem = |message: String| Problem {
            variable: Some(name.clone()),
            channel: None,
            field: "-".into(),
            message,
            related: Vec::new(),
        };
        let Some((section, _)) = rest.split_once("__") else {
            // Not a config key. One underscore after a section name is probably meant as one.
            let lower = rest.to_ascii_lowercase();
            if let Some(section) = ENV_SECTIONS
                .iter()
                .find(|s| lower.len() > s.len() + 1 && lower.starts_with(&format!("{s}_")))
            {
                let fixed = format!(
                    "HERALD_{}__{}",
                    section.to_ascii_uppercase(),
                    &rest[section.len() + 1..]
                );
                scan.warnings.push(format!(
                    "environment variable {name} is not a config key and is ignored (config keys \
                     are HERALD_<SECTION>__<KEY>, with two underscores: {fixed})"
                ));
            }
            continue;
        };
        let section = section.to_ascii_lowercase();
        let path = rest.to_ascii_lowercase().replace("__", ".");
        if ENV_SECTIONS.contains(&section.as_str()) {
            if path.split('.').any(str::is_empty) {
                scan.problems.push(problem(
                    "malformed config key: an empty key between `__`".into(),
                ));
                continue;
            }
            match value.into_string() {
                Ok(value) => scan.settings.push(EnvSetting {
                    name: name.clone(),
                    path,
                    value,
                }),
                Err(_) => scan
                    .problems
                    .push(problem("the value is not valid UTF-8".into())),
            }
        } else if FILE_ONLY_SECTIONS.contains(&section.as_str()) {
            // Name the table the variable aimed at: HERALD_SOURCE__NATS__URL → source.nats.
            let table = match path.split('.').nth(1).filter(|k| !k.is_empty()) {
                Some(kind) if section == "source" => format!("source.{kind}"),
                _ => section.clone(),
            };
            scan.problems.push(problem(format!(
                "`[[{table}]]` tables are configured in the config file only, not from the \
                 environment (see docs/configuration.md)"
            )));
        } else {
            let mut message = format!(
                "`{section}` is not a config section (HERALD_<SECTION>__<KEY> with SECTION one \
                 of {})",
                ENV_SECTIONS.join(", ").to_ascii_uppercase()
            );
            if let Some(close) = closest(&section, ENV_SECTIONS) {
                let key = &rest[section.len() + 2..];
                message.push_str(&format!(
                    "; did you mean HERALD_{}__{key}?",
                    close.to_ascii_uppercase()
                ));
            }
            scan.problems.push(problem(message));
        }
    }
    scan
}

/// The candidate within a small edit distance of `word` (a typo), if any.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.len() / 3).clamp(1, 3);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance (bytes; config keys are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Config {
    /// Loads `path` (required to exist when given), applies `HERALD_*` overrides from the
    /// process environment and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars_os())
    }

    /// [`Config::load`] with the environment given explicitly (tests, embedding).
    pub fn load_with_env(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Config, ConfigError> {
        let label = path.map_or_else(|| "<defaults>".to_owned(), |p| p.display().to_string());
        let mut figment = Figment::new();
        if let Some(p) = path {
            if !p.is_file() {
                return Err(ConfigError::single(
                    &label,
                    "-",
                    "config file not found (pass --config or set HERALD_CONFIG)",
                ));
            }
            figment = figment.merge(Toml::file(p));
        }
        let base = path
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Self::with_env(figment, &label, &base, path.map(Path::to_path_buf), vars)
    }

    /// A TOML document held in memory (the binary's built-in example config) with `HERALD_*`
    /// overrides from `vars` applied, as [`Config::load`] applies them to a file: a deployment
    /// that runs on the built-in config and sets its secrets in the environment gets them.
    /// Relative paths resolve against `base`.
    pub fn from_toml_str_with_env(
        text: &str,
        base: &Path,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Config, ConfigError> {
        let figment = Figment::new().merge(Toml::string(text));
        Self::with_env(figment, "<built-in>", base, None, vars)
    }

    /// `file_only` (the TOML layer) merged with the `HERALD_*` settings among `vars`, then
    /// extracted and validated.
    fn with_env(
        file_only: Figment,
        label: &str,
        base: &Path,
        path: Option<PathBuf>,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Config, ConfigError> {
        let env = scan_env(vars);
        // Rebuilt from the TOML layer on every pass of the loop below.
        let mut figment;
        // Values are parsed the way figment's own `Env` provider does (`8080` is a number,
        // `true` a bool, `[a, b]` an array, anything else a string), except where the field
        // wants a string: an API key or secret that happens to be all digits is still a key.
        let mut verbatim: Vec<&str> = Vec::new();
        loop {
            figment = file_only.clone();
            for setting in &env.settings {
                let value: Value = if verbatim.contains(&setting.path.as_str()) {
                    Value::from(setting.value.clone())
                } else {
                    setting.value.parse().unwrap_or_else(|e| match e {})
                };
                figment = figment.merge(Serialized::default(&setting.path, value));
            }
            let Err(errors) = extract_all(&figment) else {
                break;
            };
            let wants_string: Vec<&str> = errors
                .iter()
                .filter(|e| {
                    matches!(&e.kind, Kind::InvalidType(_, expected) if expected.contains("string"))
                })
                .filter_map(|e| {
                    let path = e.path.join(".");
                    env.settings
                        .iter()
                        .find(|s| s.path == path && !verbatim.contains(&s.path.as_str()))
                        .map(|s| s.path.as_str())
                })
                .collect();
            if wants_string.is_empty() {
                break;
            }
            verbatim.extend(wants_string);
        }
        let settings = env.settings.clone();
        let merged = Self::from_figment(figment, label, base, path.clone(), env);
        let Err(mut error) = merged else {
            return merged;
        };
        // A rule between fields blamed on a variable through another field it reads: if the
        // file alone breaks it the same way, the variable changed nothing there (it may set
        // the value the file already had) and the file is at fault.
        let through_related = |p: &Problem| {
            p.variable.is_some() && p.field != "-" && setting_for(&p.field, &settings).is_none()
        };
        if !settings.is_empty() && error.problems.iter().any(through_related) {
            let file_alone =
                match Self::from_figment(file_only, label, base, path, EnvScan::default()) {
                    Err(e) => e.problems,
                    Ok(_) => Vec::new(),
                };
            for p in &mut error.problems {
                if through_related(p)
                    && file_alone.iter().any(|f| {
                        f.channel == p.channel && f.field == p.field && f.message == p.message
                    })
                {
                    p.variable = None;
                }
            }
        }
        Err(error)
    }

    /// Parses a TOML document held in memory (tests, `herald check -`); relative paths resolve
    /// against `base`. Environment variables are not consulted.
    pub fn from_toml_str(toml: &str, base: &Path) -> Result<Config, ConfigError> {
        let figment = Figment::new().merge(Toml::string(toml));
        Self::from_figment(figment, "<inline>", base, None, EnvScan::default())
    }

    fn from_figment(
        figment: Figment,
        label: &str,
        base: &Path,
        file: Option<PathBuf>,
        env: EnvScan,
    ) -> Result<Config, ConfigError> {
        let blame = |mut problems: Vec<Problem>| {
            for p in &mut problems {
                attribute_to_env(p, &env.settings);
            }
            let mut all = env.problems.clone();
            all.extend(problems);
            ConfigError {
                file: label.to_owned(),
                problems: all,
            }
        };
        let raw = match extract_all(&figment) {
            Ok(raw) => raw,
            Err(errors) => {
                return Err(blame(
                    errors
                        .into_iter()
                        .map(|e| figment_problem(&figment, e))
                        .collect(),
                ));
            }
        };
        let mut problems = Problems::default();
        let RawConfig {
            server,
            mut auth,
            api,
            mut broker,
            limits,
            socketio,
            websocket,
            channels,
            mut source,
            backend,
            proxy: proxies,
            rpc,
            webhook: mut webhooks,
            admin,
        } = raw;
        auth.public_key_pem = auth.public_key_pem.map(|p| base.join(p));
        auth.jwks_file = auth.jwks_file.map(|p| base.join(p));
        for (field, f) in [
            ("broker.tls_ca_file", &mut broker.tls_ca_file),
            ("broker.tls_cert_file", &mut broker.tls_cert_file),
            ("broker.tls_key_file", &mut broker.tls_key_file),
        ] {
            *f = f.take().map(|p| base.join(p));
            // Read when the broker starts; checked here so `herald check` finds a missing
            // one, as it finds a missing auth key file.
            match f.as_deref() {
                Some(p) if p == base => problems.push(None, field, "must not be empty"),
                Some(p) if !p.is_file() => {
                    problems.push(None, field, format!("no such file: {}", p.display()));
                }
                _ => {}
            }
        }
        if let Some(sub) = &mut auth.subscription {
            sub.public_key_pem = sub.public_key_pem.take().map(|p| base.join(p));
            sub.jwks_file = sub.jwks_file.take().map(|p| base.join(p));
        }
        validate_backend(&backend, &proxies, &mut problems);
        validate_webhooks(&backend, &mut webhooks, &mut problems);
        if let Some(name) = &auth.connect_proxy
            && !proxies.iter().any(|p| p.name == *name)
        {
            problems.push(
                None,
                "auth.connect_proxy",
                format!("no [[proxy]] is named {name:?}"),
            );
        }
        validate_general(&server, &auth, &limits, &mut problems);
        if !(1..=9).contains(&websocket.deflate_level) {
            problems.push(
                None,
                "websocket.deflate_level",
                "must be from 1 (fastest) to 9 (smallest)",
            );
        }
        validate_admin(&admin, &mut problems);
        validate_broker(&broker, &limits, &mut problems);
        for (i, pg) in source.postgres.iter().enumerate() {
            let field = |f: &str| format!("source.postgres.{i}.{f}");
            if !(pg.url.starts_with("postgres://") || pg.url.starts_with("postgresql://")) {
                problems.push(None, &field("url"), "must be a postgres:// URL");
            }
            if !is_sql_identifier(&pg.outbox_table) {
                problems.push(
                    None,
                    &field("outbox_table"),
                    "must be a lowercase SQL identifier",
                );
            }
            for n in &pg.notify {
                if !is_sql_identifier(n) {
                    problems.push(
                        None,
                        &field("notify"),
                        format!("{n:?} is not a lowercase SQL identifier"),
                    );
                }
            }
            if pg.batch_size == 0 {
                problems.push(None, &field("batch_size"), "must be greater than 0");
            }
        }
        let registry = Registry::build(&channels, base, &mut problems);
        validate_bus_sources(&mut source, &registry, &mut problems);
        let rpc = crate::rpc::build(&rpc, &proxies, base, &mut problems);
        for (index, d) in registry.descriptors().iter().enumerate() {
            for (field, scope) in [
                ("scope.proxy", Some(&d.scope)),
                ("publish.proxy", d.publish.as_ref()),
            ] {
                if let Some(Scope::Proxy(name)) = scope
                    && !proxies.iter().any(|p| p.name == *name)
                {
                    problems.push(
                        Some(channel_label(index, d.pattern.as_str())),
                        field,
                        format!("no [[proxy]] is named {name:?}"),
                    );
                }
            }
        }
        let authenticator = match Authenticator::from_config(&auth) {
            Ok(a) => Some(a),
            Err(e) => {
                problems.push(None, e.field, e.message);
                None
            }
        };
        let subscription_authenticator = match &auth.subscription {
            None => None,
            Some(sub) => {
                let keys = [
                    sub.hs256_secret.is_some(),
                    sub.public_key_pem.is_some(),
                    sub.jwks_file.is_some(),
                ];
                if keys.iter().filter(|k| **k).count() != 1 {
                    problems.push(
                        None,
                        "auth.subscription",
                        "set exactly one of hs256_secret, public_key_pem, jwks_file",
                    );
                }
                if sub.hs256_secret.as_deref().is_some_and(str::is_empty) {
                    problems.push(None, "auth.subscription.hs256_secret", "must not be empty");
                }
                // The same rules as connection tokens (leeway included); `iss`/`aud` belong to
                // the login service's tokens, not to the backend's.
                let cfg = AuthConfig {
                    hs256_secret: sub.hs256_secret.clone(),
                    public_key_pem: sub.public_key_pem.clone(),
                    jwks_file: sub.jwks_file.clone(),
                    leeway: auth.leeway,
                    ..AuthConfig::default()
                };
                match Authenticator::from_config(&cfg) {
                    Ok(a) => Some(Arc::new(a)),
                    Err(e) => {
                        problems.push(
                            None,
                            &format!("auth.subscription.{}", field_tail(e.field)),
                            e.message,
                        );
                        None
                    }
                }
            }
        };
        if let (true, true, Some(authenticator)) = (
            problems.0.is_empty(),
            env.problems.is_empty(),
            authenticator,
        ) {
            Ok(Config {
                warnings: env.warnings,
                authenticator: Arc::new(authenticator),
                subscription_authenticator,
                backend,
                proxies,
                rpc,
                webhooks,
                admin,
                file,
                server,
                auth,
                api,
                broker,
                limits,
                socketio,
                websocket,
                sources: source,
                registry: Arc::new(registry),
            })
        } else {
            Err(blame(problems.0))
        }
    }
}

/// Names the environment variable that set a problem's field, if one did: the environment
/// is merged last, so a variable naming the field (or a table above it) is where it came from.
///
/// A rule between fields (`related`) whose own field is the file's is blamed on the variable
/// that set one of the others: the file alone kept the rule, the variable broke it.
fn attribute_to_env(p: &mut Problem, settings: &[EnvSetting]) {
    if p.channel.is_some() || p.variable.is_some() {
        return;
    }
    if let Some(s) = setting_for(&p.field, settings)
        .or_else(|| p.related.iter().find_map(|r| setting_for(r, settings)))
    {
        p.variable = Some(s.name.clone());
    }
}

/// The variable that set `field` (or a table above it), if one did.
fn setting_for<'s>(field: &str, settings: &'s [EnvSetting]) -> Option<&'s EnvSetting> {
    let field = field.to_ascii_lowercase();
    settings
        .iter()
        .find(|s| field == s.path || field.starts_with(&format!("{}.", s.path)))
}

/// Deserializes the merged config; when that fails, finds every type error, not only the
/// first (see the module docs).
fn extract_all(figment: &Figment) -> Result<RawConfig, Vec<figment::Error>> {
    let first = match figment.extract::<RawConfig>() {
        Ok(raw) => return Ok(raw),
        Err(e) => e,
    };
    let Ok(root) = figment.extract::<Dict>() else {
        // Not even a table (a TOML syntax error): nothing more to find.
        return Err(first.into_iter().collect());
    };
    let mut errors = Vec::new();
    for (key, value) in root {
        let at = vec![key.clone()];
        match key.as_str() {
            "server" => collect::<ServerConfig>(value, at, &mut errors),
            "auth" => collect::<AuthConfig>(value, at, &mut errors),
            "api" => collect::<ApiConfig>(value, at, &mut errors),
            "broker" => collect::<BrokerConfig>(value, at, &mut errors),
            "limits" => collect::<Limits>(value, at, &mut errors),
            "socketio" => collect::<SocketIoConfig>(value, at, &mut errors),
            "websocket" => collect::<WebSocketConfig>(value, at, &mut errors),
            "backend" => collect::<BackendConfig>(value, at, &mut errors),
            "admin" => collect::<AdminConfig>(value, at, &mut errors),
            "proxy" => match value {
                Value::Array(_, items) => {
                    for (i, item) in items.into_iter().enumerate() {
                        let at = vec![key.clone(), i.to_string()];
                        collect::<ProxyConfig>(item, at, &mut errors);
                    }
                }
                other => collect::<Vec<ProxyConfig>>(other, at, &mut errors),
            },
            "webhook" => match value {
                Value::Array(_, items) => {
                    for (i, item) in items.into_iter().enumerate() {
                        let at = vec![key.clone(), i.to_string()];
                        collect::<WebhookConfig>(item, at, &mut errors);
                    }
                }
                other => collect::<Vec<WebhookConfig>>(other, at, &mut errors),
            },
            "rpc" => match value {
                Value::Array(_, items) => {
                    for (i, item) in items.into_iter().enumerate() {
                        let at = vec![key.clone(), i.to_string()];
                        collect::<crate::rpc::RpcConfig>(item, at, &mut errors);
                    }
                }
                other => collect::<Vec<crate::rpc::RpcConfig>>(other, at, &mut errors),
            },
            "source" => {
                // Each `[[source.<kind>]]` on its own, like channels.
                let mut value = value;
                if let Value::Dict(_, dict) = &mut value {
                    let kinds: [(&str, CollectFn); 4] = [
                        ("postgres", collect::<PostgresSourceConfig>),
                        ("nats", collect::<crate::bus::NatsSourceConfig>),
                        (
                            "redis_stream",
                            collect::<crate::bus::RedisStreamSourceConfig>,
                        ),
                        ("amqp", collect::<crate::bus::AmqpSourceConfig>),
                    ];
                    for (kind, check) in kinds {
                        if let Some(Value::Array(_, items)) = dict.remove(kind) {
                            for (i, item) in items.into_iter().enumerate() {
                                let at = vec![key.clone(), kind.into(), i.to_string()];
                                check(item, at, &mut errors);
                            }
                        }
                    }
                }
                collect::<SourcesConfig>(value, at, &mut errors);
            }
            "channel" => match value {
                Value::Array(_, items) => {
                    for (i, item) in items.into_iter().enumerate() {
                        let at = vec![key.clone(), i.to_string()];
                        collect::<ChannelConfig>(item, at, &mut errors);
                    }
                }
                other => collect::<Vec<ChannelConfig>>(other, at, &mut errors),
            },
            _ => {
                let mut e = figment::Error::from(Kind::UnknownField(key.clone(), SECTIONS));
                e.path = at;
                errors.push(e);
            }
        }
    }
    if errors.is_empty() {
        // The piecewise pass disagrees with the whole: trust the whole.
        errors.extend(first);
    }
    Err(errors)
}

/// Deserializes one section as a `T`, recording each error under `at` and dropping the field
/// at fault (so its default applies) until the rest deserializes; gives up on a missing
/// required field or after 64 errors.
/// [`collect`] for one type, as a value.
type CollectFn = fn(Value, Vec<String>, &mut Vec<figment::Error>);

fn collect<T: serde::de::DeserializeOwned>(
    mut value: Value,
    at: Vec<String>,
    errors: &mut Vec<figment::Error>,
) {
    let mut removed: Vec<Vec<String>> = Vec::new();
    for _ in 0..64 {
        let Err(e) = value.deserialize::<T>() else {
            return;
        };
        let path = e.path.clone();
        // Dropping a required field makes it missing: that is the error already reported.
        let consequence = matches!(&e.kind, Kind::MissingField(f)
            if removed.iter().any(|r| r.len() == path.len() + 1
                && r[..path.len()] == path[..]
                && r[path.len()] == *f));
        if consequence {
            return;
        }
        let mut located = e;
        located.path = at.iter().chain(&path).cloned().collect();
        errors.push(located);
        if path.is_empty() || !remove(&mut value, &path) {
            return;
        }
        removed.push(path);
    }
}

/// Removes the value at `path`. Inside an array the whole array goes (removing one element
/// would shift the indices of the errors after it).
fn remove(value: &mut Value, path: &[String]) -> bool {
    let Value::Dict(_, dict) = value else {
        return false;
    };
    match path {
        [] => false,
        [key] => dict.remove(key).is_some(),
        [key, rest @ ..] => match dict.get_mut(key) {
            Some(Value::Array(..)) => dict.remove(key).is_some(),
            Some(inner) => remove(inner, rest),
            None => false,
        },
    }
}

/// The last part of a dotted field name (`auth.hs256_secret` → `hs256_secret`).
fn field_tail(field: &str) -> &str {
    field.rsplit('.').next().unwrap_or(field)
}

fn validate_backend(backend: &BackendConfig, proxies: &[ProxyConfig], p: &mut Problems) {
    if backend.secret.as_deref().is_some_and(str::is_empty) {
        p.push(None, "backend.secret", "must not be empty");
    }
    // Unsigned requests would let anyone who reaches the backend impersonate the gateway.
    if !proxies.is_empty() && backend.secret.is_none() {
        p.push(
            None,
            "backend.secret",
            "required when a [[proxy]] is configured: every request to the backend is signed",
        );
    }
    for (i, proxy) in proxies.iter().enumerate() {
        let field = |f: &str| format!("proxy.{i}.{f}");
        if proxy.name.is_empty() {
            p.push(None, &field("name"), "must not be empty");
        }
        if proxies[..i].iter().any(|o| o.name == proxy.name) {
            p.push(
                None,
                &field("name"),
                format!("duplicate proxy name {:?}", proxy.name),
            );
        }
        // The gateway's HTTP client is built without TLS (one less crypto stack to ship):
        // an https:// URL would fail on every call, so it fails here, once.
        if !proxy.url.starts_with("http://") {
            p.push(
                None,
                &field("url"),
                "must be an http:// URL (reach an https backend through a local proxy)",
            );
        }
        if proxy.timeout.is_zero() {
            p.push(None, &field("timeout"), "must be greater than 0");
        }
    }
}

/// Checks `[[webhook]]` tables and fills in their defaults (name, events).
fn validate_webhooks(backend: &BackendConfig, hooks: &mut [WebhookConfig], p: &mut Problems) {
    if !hooks.is_empty() && backend.secret.is_none() {
        p.push(
            None,
            "backend.secret",
            "required when a [[webhook]] is configured: every request to the backend is signed",
        );
    }
    for (i, h) in hooks.iter_mut().enumerate() {
        let field = |f: &str| format!("webhook.{i}.{f}");
        if !h.url.starts_with("http://") {
            p.push(None, &field("url"), "must be an http:// URL");
        }
        for e in h.events.iter().flatten() {
            if !WEBHOOK_EVENTS.contains(&e.as_str()) {
                p.push(
                    None,
                    &field("events"),
                    format!("unknown event {e:?}: one of {}", WEBHOOK_EVENTS.join(", ")),
                );
            }
        }
        for (f, v) in [
            ("batch_size", h.batch_size),
            ("queue_size", h.queue_size),
            ("max_attempts", h.max_attempts as usize),
        ] {
            if v == 0 {
                p.push(None, &field(f), "must be greater than 0");
            }
        }
        if h.timeout.is_zero() {
            p.push(None, &field("timeout"), "must be greater than 0");
        }
        h.name.get_or_insert_with(|| i.to_string());
        h.events
            .get_or_insert_with(|| WEBHOOK_EVENTS.iter().map(|e| (*e).to_owned()).collect());
    }
}

/// Checks every `[[source.nats]]`, `[[source.redis_stream]]` and `[[source.amqp]]` and
/// compiles its routes against the registry.
fn validate_bus_sources(source: &mut SourcesConfig, registry: &Registry, p: &mut Problems) {
    let mut report = |kind: &str, i: usize, problems: Vec<(String, String)>| {
        for (field, message) in problems {
            p.push(None, &format!("source.{kind}.{i}.{field}"), message);
        }
    };
    let compile = |kind: &str, routes: &[crate::route::RouteConfig]| {
        if routes.is_empty() {
            return (
                crate::route::Routes::default(),
                vec![(
                    "route".to_owned(),
                    format!(
                        "no [[source.{kind}.route]]: a source publishes only what a route allows"
                    ),
                )],
            );
        }
        match crate::route::Routes::compile(routes, registry) {
            Ok(r) => (r, Vec::new()),
            Err(problems) => (crate::route::Routes::default(), problems),
        }
    };
    for (i, s) in source.nats.iter_mut().enumerate() {
        let (routes, mut problems) = compile("nats", &s.route);
        problems.extend(crate::bus::check_nats(s));
        s.routes = routes;
        report("nats", i, problems);
    }
    for (i, s) in source.redis_stream.iter_mut().enumerate() {
        let (routes, mut problems) = compile("redis_stream", &s.route);
        problems.extend(crate::bus::check_redis(s));
        s.routes = routes;
        report("redis_stream", i, problems);
    }
    for (i, s) in source.amqp.iter_mut().enumerate() {
        let (routes, mut problems) = compile("amqp", &s.route);
        problems.extend(crate::bus::check_amqp(s));
        s.routes = routes;
        report("amqp", i, problems);
    }
}

/// The URL schemes of the Redis topologies (one server, Cluster, Sentinel; TLS or not).
const REDIS_SCHEMES: [&str; 8] = [
    "redis://",
    "rediss://",
    "redis+unix://",
    "unix://",
    "redis+cluster://",
    "rediss+cluster://",
    "redis+sentinel://",
    "rediss+sentinel://",
];

fn validate_broker(broker: &BrokerConfig, limits: &Limits, p: &mut Problems) {
    if broker.kind == BrokerKind::Redis {
        match broker.url.as_deref() {
            None => p.push_related(
                "broker.url",
                &["broker.kind"],
                "required when kind = \"redis\"",
            ),
            Some(u) if !REDIS_SCHEMES.iter().any(|s| u.starts_with(s)) => p.push_related(
                "broker.url",
                &["broker.kind"],
                "must be a redis:// URL (or rediss://, unix://, redis+cluster://, \
                 redis+sentinel://, and their rediss+ forms)",
            ),
            _ => {}
        }
    }
    if broker.tls_cert_file.is_some() != broker.tls_key_file.is_some() {
        p.push_related(
            "broker.tls_cert_file",
            &["broker.tls_key_file"],
            "a client certificate needs both tls_cert_file and tls_key_file",
        );
    }
    if broker.kind == BrokerKind::Nats {
        match broker.url.as_deref() {
            None => p.push_related(
                "broker.url",
                &["broker.kind"],
                "required when kind = \"nats\"",
            ),
            Some(u)
                if !u.split(',').all(|u| {
                    let u = u.trim();
                    u.starts_with("nats://") || u.starts_with("tls://")
                }) =>
            {
                p.push_related(
                    "broker.url",
                    &["broker.kind"],
                    "must be nats:// (or tls://) URLs, comma-separated",
                )
            }
            _ => {}
        }
        if !crate::name::is_valid_segment(&broker.prefix) {
            p.push_related(
                "broker.prefix",
                &["broker.kind"],
                "with kind = \"nats\" may only contain A-Z, a-z, 0-9, '_' and '-' (it names subjects, streams and buckets)",
            );
        }
        if !(1..=5).contains(&broker.replicas) {
            p.push(
                None,
                "broker.replicas",
                "must be between 1 and 5 (JetStream's range)",
            );
        }
    }
    if broker.prefix.is_empty() || broker.prefix.contains(['{', '}', ' ']) {
        p.push(
            None,
            "broker.prefix",
            "must be non-empty, without braces or spaces",
        );
    }
    if broker.presence_ttl < Duration::from_secs(1) {
        p.push(None, "broker.presence_ttl", "must be at least 1s");
    }
    // A budget smaller than one publication would evict every publication as it is stored.
    if broker.history_budget_bytes < limits.max_payload_bytes {
        p.push_related(
            "broker.history_budget_bytes",
            &["limits.max_payload_bytes"],
            format!(
                "must be at least limits.max_payload_bytes ({})",
                limits.max_payload_bytes
            ),
        );
    }
    for (field, value) in [
        ("broker.max_idempotency_keys", broker.max_idempotency_keys),
        ("broker.max_idle_channels", broker.max_idle_channels),
    ] {
        if value == 0 {
            p.push(None, field, "must be greater than 0");
        }
    }
}

fn validate_general(server: &ServerConfig, auth: &AuthConfig, limits: &Limits, p: &mut Problems) {
    let keys = [
        auth.hs256_secret.is_some(),
        auth.public_key_pem.is_some(),
        auth.jwks_file.is_some(),
    ];
    if keys.iter().filter(|k| **k).count() > 1 {
        p.push_related(
            "auth",
            &["auth.hs256_secret", "auth.public_key_pem", "auth.jwks_file"],
            "set only one of hs256_secret, public_key_pem, jwks_file",
        );
    }
    if keys.iter().all(|k| !k) && !auth.anonymous && auth.connect_proxy.is_none() {
        p.push_related(
            "auth",
            &["auth.anonymous"],
            "no key configured (hs256_secret, public_key_pem or jwks_file) and anonymous = false: \
             nobody could connect",
        );
    }
    if auth.hs256_secret.as_deref().is_some_and(str::is_empty) {
        p.push(None, "auth.hs256_secret", "must not be empty");
    }
    if auth.roles_claim.is_empty() {
        p.push(None, "auth.roles_claim", "must not be empty");
    }
    if server.ping_interval < Duration::from_millis(100) {
        p.push(None, "server.ping_interval", "must be at least 100ms");
    }
    for (field, value) in [
        ("limits.max_frame_bytes", limits.max_frame_bytes),
        ("limits.max_payload_bytes", limits.max_payload_bytes),
        ("limits.max_subscriptions", limits.max_subscriptions),
        (
            "limits.max_connections_per_user",
            limits.max_connections_per_user,
        ),
        ("limits.publish_rate", limits.publish_rate as usize),
        ("limits.frame_rate", limits.frame_rate as usize),
        ("limits.outbound_queue_bytes", limits.outbound_queue_bytes),
    ] {
        if value == 0 {
            p.push(None, field, "must be greater than 0");
        }
    }
    if limits.max_payload_bytes > limits.max_frame_bytes {
        p.push_related(
            "limits.max_payload_bytes",
            &["limits.max_frame_bytes"],
            "must not exceed limits.max_frame_bytes",
        );
    }
    // (A zero is already reported as such above.)
    if limits.outbound_queue_bytes > 0
        && limits.outbound_queue_bytes < limits.max_payload_bytes.saturating_mul(2)
    {
        p.push_related(
            "limits.outbound_queue_bytes",
            &["limits.max_payload_bytes"],
            format!(
                "is {}, must be at least twice limits.max_payload_bytes ({}): a queue that \
                 cannot hold the largest publication while the previous one is written closes \
                 every subscriber of it as a slow consumer",
                limits.outbound_queue_bytes, limits.max_payload_bytes
            ),
        );
    }
}

/// Turns a figment error into a [`Problem`], naming the channel when the path goes through one.
fn figment_problem(figment: &Figment, e: figment::Error) -> Problem {
    let mut path = e.path.clone();
    // Name the missing field itself, not the table that lacks it.
    if let Kind::MissingField(f) = &e.kind {
        path.push(f.to_string());
    }
    let message = match &e.kind {
        Kind::UnknownField(key, expected) => match closest(key, expected) {
            Some(close) => format!("unknown key `{key}`; did you mean `{close}`?"),
            None => format!(
                "unknown key `{key}`; expected one of {}",
                expected
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        Kind::MissingField(_) => "required, but missing".to_owned(),
        kind => kind.to_string(),
    };
    if path.first().map(String::as_str) == Some("channel")
        && let Some(index) = path.get(1).and_then(|i| i.parse::<usize>().ok())
    {
        let name = figment
            .find_value("channel")
            .ok()
            .and_then(|v| v.into_array())
            .and_then(|items| items.into_iter().nth(index))
            .and_then(|item| item.into_dict())
            .and_then(|dict| dict.get("name").and_then(|n| n.as_str().map(str::to_owned)))
            .unwrap_or_else(|| "?".into());
        return Problem {
            variable: None,
            channel: Some(channel_label(index, &name)),
            field: path[2..].join("."),
            message,
            related: Vec::new(),
        };
    }
    Problem {
        variable: None,
        channel: None,
        field: if path.is_empty() {
            "-".into()
        } else {
            path.join(".")
        },
        message,
        related: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [auth]
        hs256_secret = "s"
        [[channel]]
        name = "a.b"
        scope = "public"
        schema = { type = "object" }
    "#;

    #[test]
    fn minimal_config_loads_with_defaults() {
        let c = Config::from_toml_str(MINIMAL, Path::new(".")).unwrap();
        assert_eq!(c.server.listen.port(), 8080);
        assert_eq!(c.limits.max_subscriptions, 128);
        assert!(c.registry.resolve("a.b").is_ok());
    }

    #[test]
    fn type_errors_name_the_channel_and_field() {
        let toml = r#"
            [auth]
            hs256_secret = "s"
            [[channel]]
            name = "ok.one"
            scope = "public"
            schema = { type = "object" }
            [[channel]]
            name = "bad.one"
            scope = "public"
            schema = { type = "object" }
            history = { size = "many", ttl = "1m" }
        "#;
        let err = Config::from_toml_str(toml, Path::new(".")).unwrap_err();
        let p = &err.problems[0];
        assert_eq!(p.channel.as_deref(), Some("channel #2 \"bad.one\""));
        assert_eq!(p.field, "history.size");
        let text = err.to_string();
        assert!(text.contains("<inline>"), "{text}");
    }

    #[test]
    fn the_admin_dashboard_is_off_by_default_and_needs_a_hash_not_a_password() {
        let c = Config::from_toml_str(MINIMAL, Path::new(".")).unwrap();
        assert!(!c.admin.enabled);
        let err = Config::from_toml_str(
            &format!("{MINIMAL}\n[admin]\nenabled = true"),
            Path::new("."),
        )
        .unwrap_err();
        assert!(
            err.problems
                .iter()
                .any(|p| p.field == "admin.password_hash"),
            "{err}"
        );
        let err = Config::from_toml_str(
            &format!(
                "{MINIMAL}\n[admin]\nenabled = true\npassword_hash = \"hunter2\"\nidle_timeout = \"1s\""
            ),
            Path::new("."),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("not a password"), "{text}");
        assert!(text.contains("admin.idle_timeout"), "{text}");
        let ok = format!(
            "{MINIMAL}\n[admin]\nenabled = true\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA\""
        );
        assert!(
            Config::from_toml_str(&ok, Path::new("."))
                .unwrap()
                .admin
                .enabled
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::from_toml_str(
            &format!("{MINIMAL}\n[server]\nlisen = \"x\""),
            Path::new("."),
        )
        .unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn the_nats_broker_needs_nats_urls_a_token_prefix_and_replicas_in_range() {
        let load = |broker: &str| {
            Config::from_toml_str(&format!("{MINIMAL}\n[broker]\n{broker}"), Path::new("."))
        };
        let c = load("kind = \"nats\"\nurl = \"nats://a:4222, nats://b:4222\"").unwrap();
        assert_eq!(c.broker.kind, BrokerKind::Nats);
        assert_eq!(c.broker.replicas, 1);
        for (broker, field) in [
            ("kind = \"nats\"", "broker.url"),
            ("kind = \"nats\"\nurl = \"redis://a:6379\"", "broker.url"),
            (
                "kind = \"nats\"\nurl = \"nats://a:4222\"\nprefix = \"my.app\"",
                "broker.prefix",
            ),
            (
                "kind = \"nats\"\nurl = \"nats://a:4222\"\nreplicas = 7",
                "broker.replicas",
            ),
        ] {
            let err = load(broker).unwrap_err();
            assert!(
                err.problems.iter().any(|p| p.field == field),
                "{broker}: {err}"
            );
        }
    }

    #[test]
    fn memory_bounds_have_defaults_and_are_validated() {
        let c = Config::from_toml_str(MINIMAL, Path::new(".")).unwrap();
        assert_eq!(c.broker.history_budget_bytes, 256 << 20);
        let toml = format!(
            "{MINIMAL}\n[broker]\nhistory_budget_bytes = 1000\nmax_idempotency_keys = 0\n\
             max_idle_channels = 0"
        );
        let err = Config::from_toml_str(&toml, Path::new(".")).unwrap_err();
        let fields: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "broker.history_budget_bytes",
                "broker.max_idempotency_keys",
                "broker.max_idle_channels"
            ],
            "{err}"
        );
        assert!(
            err.to_string().contains("max_payload_bytes (65536)"),
            "{err}"
        );
    }

    #[test]
    fn the_outbound_queue_holds_two_of_the_largest_publications() {
        let toml =
            format!("{MINIMAL}\n[limits]\nmax_payload_bytes = 65536\noutbound_queue_bytes = 65536");
        let err = Config::from_toml_str(&toml, Path::new(".")).unwrap_err();
        let fields: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["limits.outbound_queue_bytes"], "{err}");
        assert!(
            err.to_string()
                .contains("twice limits.max_payload_bytes (65536)"),
            "{err}"
        );
        let toml =
            format!("{MINIMAL}\n[limits]\nmax_payload_bytes = 32768\noutbound_queue_bytes = 65536");
        Config::from_toml_str(&toml, Path::new(".")).unwrap();
    }

    #[test]
    fn redis_topologies_and_tls_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "").unwrap();
        std::fs::write(dir.path().join("c.pem"), "").unwrap();
        for url in [
            "redis+cluster://a:7000,b:7000",
            "rediss+sentinel://s1:26379/mymaster",
        ] {
            let toml = format!(
                "{MINIMAL}\n[broker]\nkind = \"redis\"\nurl = \"{url}\"\ntls_ca_file = \"ca.pem\""
            );
            let c = Config::from_toml_str(&toml, dir.path()).unwrap();
            assert_eq!(c.broker.url.as_deref(), Some(url));
            assert_eq!(
                c.broker.tls_ca_file.as_deref(),
                Some(dir.path().join("ca.pem").as_path()),
                "relative to the config file"
            );
        }
        let toml = format!(
            "{MINIMAL}\n[broker]\nkind = \"redis\"\nurl = \"http://x\"\ntls_cert_file = \"c.pem\""
        );
        let err = Config::from_toml_str(&toml, dir.path()).unwrap_err();
        let fields: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["broker.url", "broker.tls_cert_file"], "{err}");
        // A file that is not there is found by `herald check`, not when the broker starts;
        // an empty value (`HERALD_BROKER__TLS_KEY_FILE=`) is not a file either.
        let toml = format!(
            "{MINIMAL}\n[broker]\nkind = \"redis\"\nurl = \"rediss://x\"\ntls_ca_file = \"gone.pem\"\ntls_cert_file = \"c.pem\"\ntls_key_file = \"\""
        );
        let err = Config::from_toml_str(&toml, dir.path()).unwrap_err();
        let found: Vec<(&str, &str)> = err
            .problems
            .iter()
            .map(|p| (p.field.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(found.len(), 2, "{err}");
        assert_eq!(found[0].0, "broker.tls_ca_file");
        assert!(found[0].1.starts_with("no such file: ") && found[0].1.ends_with("gone.pem"));
        assert_eq!(found[1], ("broker.tls_key_file", "must not be empty"));
    }

    #[test]
    fn several_keys_or_none_are_refused() {
        let toml = r#"
            [auth]
            hs256_secret = "s"
            jwks_file = "x.json"
        "#;
        let err = Config::from_toml_str(toml, Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("only one"), "{err}");
        let err = Config::from_toml_str("", Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("nobody could connect"), "{err}");
    }

    /// serde stops at the first type error; `herald check` must list them all, in every
    /// section and every channel, and still name each channel and field.
    #[test]
    fn every_type_error_is_reported_at_once() {
        let toml = r#"
            [server]
            listen = 5
            ping_interval = "soon"
            [auth]
            hs256_secret = "s"
            anonymous = "yes"
            [limits]
            max_subscriptions = "many"
            [[channel]]
            name = "a.b"
            scope = "public"
            schema = { type = "object" }
            history = { size = "many", ttl = "1m" }
            [[channel]]
            scope = "public"
            [[channel]]
            name = "c.d"
            presence = "yes"
            [[source.postgres]]
            url = 5
            batch_size = "x"
        "#;
        let err = Config::from_toml_str(toml, Path::new(".")).unwrap_err();
        let located: Vec<(Option<&str>, &str)> = err
            .problems
            .iter()
            .map(|p| (p.channel.as_deref(), p.field.as_str()))
            .collect();
        for want in [
            (None, "server.listen"),
            (None, "server.ping_interval"),
            (None, "auth.anonymous"),
            (None, "limits.max_subscriptions"),
            (Some("channel #1 \"a.b\""), "history.size"),
            (Some("channel #2 \"?\""), "name"),
            (Some("channel #3 \"c.d\""), "presence"),
            (None, "source.postgres.0.url"),
            (None, "source.postgres.0.batch_size"),
        ] {
            assert!(located.contains(&want), "{want:?} missing from\n{err}");
        }
        // Dropping the bad `history.size` must not add a made-up "missing field" error.
        assert_eq!(located.len(), 9, "{err}");
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn file_with(toml: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("herald.toml"), toml).unwrap();
        dir
    }

    /// A bad value from the environment is blamed on its variable, not on the file.
    #[test]
    fn env_problems_name_the_variable() {
        let dir = file_with(MINIMAL);
        let path = dir.path().join("herald.toml");
        let err = Config::load_with_env(
            Some(&path),
            vars(&[
                ("HERALD_SERVER__LISTEN", "nonsense"),
                ("HERALD_SERVER__PING_INTERVAL", "soon"),
            ]),
        )
        .unwrap_err();
        let vars: Vec<_> = err.problems.iter().map(|p| p.variable.as_deref()).collect();
        assert_eq!(
            vars,
            [
                Some("HERALD_SERVER__LISTEN"),
                Some("HERALD_SERVER__PING_INTERVAL")
            ],
            "{err}"
        );
        let text = err.to_string();
        assert!(text.starts_with("environment: 2 problems"), "{text}");
        assert!(
            text.contains("environment variable HERALD_SERVER__LISTEN: field `server.listen`"),
            "{text}"
        );
        assert!(
            !text.contains("herald.toml"),
            "the file is not at fault: {text}"
        );
    }

    /// A rule between two fields that a variable broke is blamed on the variable, not on the
    /// file whose field the rule names (before: "herald.toml: field
    /// `limits.outbound_queue_bytes`" for a file that said nothing about either).
    #[test]
    fn a_rule_between_fields_broken_by_a_variable_names_it() {
        let dir = file_with(MINIMAL);
        let path = dir.path().join("herald.toml");
        for (var, value, field) in [
            (
                "HERALD_LIMITS__MAX_PAYLOAD_BYTES",
                "600000",
                "limits.outbound_queue_bytes",
            ),
            (
                "HERALD_LIMITS__MAX_FRAME_BYTES",
                "1000",
                "limits.max_payload_bytes",
            ),
            ("HERALD_BROKER__KIND", "redis", "broker.url"),
            ("HERALD_ADMIN__ENABLED", "true", "admin.password_hash"),
            ("HERALD_AUTH__JWKS_FILE", "jwks.json", "auth"),
        ] {
            let err = Config::load_with_env(Some(&path), vars(&[(var, value)])).unwrap_err();
            let text = err.to_string();
            let ours: Vec<_> = err.problems.iter().filter(|p| p.field == field).collect();
            assert_eq!(ours.len(), 1, "{var}: {text}");
            assert_eq!(ours[0].variable.as_deref(), Some(var), "{text}");
            assert!(
                text.contains(&format!("environment variable {var}: field `{field}`")),
                "{text}"
            );
        }
        // A URL the file gives for one kind, the kind from a variable.
        let dir = file_with(&format!(
            "{MINIMAL}\n[broker]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n"
        ));
        let err = Config::load_with_env(
            Some(&dir.path().join("herald.toml")),
            vars(&[("HERALD_BROKER__KIND", "nats")]),
        )
        .unwrap_err();
        assert!(
            err.problems
                .iter()
                .any(|p| p.field == "broker.url"
                    && p.variable.as_deref() == Some("HERALD_BROKER__KIND")),
            "{err}"
        );
        // The same rule broken by the file alone stays the file's, also when a variable
        // sets the other field to the value it had (here the default): it changed nothing.
        let dir = file_with(&format!(
            "{MINIMAL}\n[limits]\noutbound_queue_bytes = 100000\n"
        ));
        for env in [vec![], vec![("HERALD_LIMITS__MAX_PAYLOAD_BYTES", "65536")]] {
            let err = Config::load_with_env(Some(&dir.path().join("herald.toml")), vars(&env))
                .unwrap_err();
            let ours: Vec<_> = err
                .problems
                .iter()
                .filter(|p| p.field == "limits.outbound_queue_bytes")
                .collect();
            assert_eq!(ours.len(), 1, "{err}");
            assert_eq!(ours[0].variable, None, "{env:?}: {err}");
        }
    }

    /// `HERALD_<SECTION>__<KEY>` is a config key: a misspelled section or key is refused
    /// with a suggestion, like an unknown key in the file; channels and sources cannot come
    /// from the environment and say so; variables without `__` are not config.
    #[test]
    fn misspelled_variables_are_refused() {
        let dir = file_with(MINIMAL);
        let path = dir.path().join("herald.toml");
        let err = Config::load_with_env(
            Some(&path),
            vars(&[
                ("HERALD_SERVR__LISTEN", "127.0.0.1:1"),
                ("HERALD_SERVER__LISTN", "127.0.0.1:1"),
                ("HERALD_SOURCE__POSTGRES__URL", "postgres://x"),
            ]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 3, "{text}");
        assert!(
            text.contains("HERALD_SERVR__LISTEN: `servr` is not a config section")
                && text.contains("did you mean HERALD_SERVER__LISTEN?"),
            "{text}"
        );
        assert!(
            text.contains("HERALD_SERVER__LISTN: field `server.listn`: unknown key `listn`; did you mean `listen`?"),
            "{text}"
        );
        let proxy = Config::load_with_env(None, vars(&[("HERALD_PROXY__URL", "x")])).unwrap_err();
        assert!(
            proxy.to_string().contains(
                "HERALD_PROXY__URL: `[[proxy]]` tables are configured in the config file only"
            ),
            "{proxy}"
        );
        assert!(
            text.contains("HERALD_SOURCE__POSTGRES__URL: `[[source.postgres]]` tables are configured in the config file only"),
            "{text}"
        );

        let ok = Config::load_with_env(
            Some(&path),
            vars(&[
                ("HERALD_BIN", "/x"),
                ("HERALD_URL", "http://x"),
                ("HERALD_LOG_FORMAT", "json"),
                ("HERALD_API_KEY", "k"),
            ]),
        )
        .unwrap();
        assert_eq!(ok.warnings.len(), 1, "{:?}", ok.warnings);
        assert!(
            ok.warnings[0].contains("HERALD_API__KEY"),
            "{:?}",
            ok.warnings
        );
    }

    /// Values are typed like figment's: numbers for numbers, except where a string is
    /// wanted: an all-digit API key is still a key.
    #[test]
    fn env_values_are_typed_by_their_field() {
        let dir = file_with(MINIMAL);
        let path = dir.path().join("herald.toml");
        let c = Config::load_with_env(
            Some(&path),
            vars(&[
                ("HERALD_API__KEY", "123456"),
                ("HERALD_LIMITS__MAX_SUBSCRIPTIONS", "7"),
                ("HERALD_SERVER__DEMO", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(c.api.key.as_deref(), Some("123456"));
        assert_eq!(c.limits.max_subscriptions, 7);
        assert!(c.server.demo);
    }

    /// `[websocket]`: compression off unless asked for, from the file or the environment;
    /// a wrongly typed value is reported with its field.
    #[test]
    fn permessage_deflate_is_off_by_default_and_configurable() {
        let c = Config::from_toml_str(MINIMAL, Path::new(".")).unwrap();
        assert!(!c.websocket.permessage_deflate);
        assert_eq!(c.websocket.deflate_min_bytes, 256);
        assert_eq!(c.websocket.deflate_level, 6);
        let on =
            format!("{MINIMAL}\n[websocket]\npermessage_deflate = true\ndeflate_min_bytes = 0\n");
        let c = Config::from_toml_str(&on, Path::new(".")).unwrap();
        assert!(c.websocket.permessage_deflate);
        assert_eq!(c.websocket.deflate_min_bytes, 0);
        let dir = file_with(MINIMAL);
        let path = dir.path().join("herald.toml");
        let c = Config::load_with_env(
            Some(&path),
            vars(&[
                ("HERALD_WEBSOCKET__PERMESSAGE_DEFLATE", "true"),
                ("HERALD_WEBSOCKET__DEFLATE_MIN_BYTES", "1024"),
            ]),
        )
        .unwrap();
        assert!(c.websocket.permessage_deflate);
        assert_eq!(c.websocket.deflate_min_bytes, 1024);
        for bad in [
            "[websocket]\ndeflate_min_bytes = -1\n",
            "[websocket]\npermessage_deflate = \"yes\"\n",
            "[websocket]\ncompression = true\n",
            "[websocket]\ndeflate_level = 0\n",
            "[websocket]\ndeflate_level = 10\n",
        ] {
            let err =
                Config::from_toml_str(&format!("{MINIMAL}\n{bad}"), Path::new(".")).unwrap_err();
            assert!(
                err.problems
                    .iter()
                    .any(|p| p.field.starts_with("websocket")),
                "{bad}: {err}"
            );
        }
    }

    /// Bus sources: defaults applied, routes compiled against the registry, and every
    /// problem named by its source and field.
    #[test]
    fn bus_sources_are_validated_with_their_routes() {
        let channels = r#"
            [auth]
            hs256_secret = "s"
            [[channel]]
            name = "orders.{orderId}"
            scope = "public"
            schema = { type = "object" }
        "#;
        let good = format!(
            "{channels}
            [[source.nats]]
            url = \"nats://127.0.0.1:4222\"
            stream = \"EVENTS\"
            [[source.nats.route]]
            match = \"orders.{{orderId}}.>\"
            channel = \"orders.{{orderId}}\"
            [[source.redis_stream]]
            url = \"redis://127.0.0.1:6379\"
            stream = \"events\"
            [[source.redis_stream.route]]
            match = \"#\"
            channel = \"orders.{{orderId}}\"
            params = {{ orderId = \"/order/id\" }}
            "
        );
        let c = Config::from_toml_str(&good, Path::new(".")).unwrap();
        let nats = &c.sources.nats[0];
        assert_eq!(
            (nats.consumer.as_str(), nats.ack_wait),
            ("herald", Duration::from_secs(30))
        );
        assert_eq!(nats.routes.len(), 1);
        let routed = nats.routes.route("orders.9.paid", b"{}").unwrap().unwrap();
        assert_eq!(routed.channel, "orders.9");
        let redis = &c.sources.redis_stream[0];
        assert_eq!(
            (redis.group.as_str(), redis.payload_field.as_str()),
            ("herald", "data")
        );
        let routed = redis
            .routes
            .route("anything", br#"{"order":{"id":"x1"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(routed.channel, "orders.x1");

        let bad = format!(
            "{channels}
            [[source.amqp]]
            url = \"http://rabbit\"
            queue = \"q\"
            prefetch = 0
            [[source.amqp.route]]
            match = \"a.*\"
            channel = \"nope\"
            [[source.redis_stream]]
            url = \"redis://x\"
            stream = \"s\"
            start = \"now\"
            "
        );
        let err = Config::from_toml_str(&bad, Path::new(".")).unwrap_err();
        let fields: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
        for want in [
            "source.amqp.0.url",
            "source.amqp.0.prefetch",
            "source.amqp.0.route.0.channel",
            "source.redis_stream.0.route",
            "source.redis_stream.0.start",
        ] {
            assert!(fields.contains(&want), "{want} missing from\n{err}");
        }
        assert_eq!(fields.len(), 5, "{err}");
    }
}
