//! `herald.toml`: loading, environment overrides and validation.
//!
//! The file is read once into typed structs, merged with `HERALD_*` environment variables
//! (`HERALD_SERVER__LISTEN` sets `server.listen`), then validated as a whole before anything
//! binds a port. Every problem found is reported at once, each naming the file, the channel
//! (by position and name) and the field, so a broken deploy is fixed in one edit.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::identity::Authenticator;
use crate::registry::{Registry, Scope};

/// Config sections `HERALD_<SECTION>__<KEY>` may set. Other `HERALD_*` variables (the CLI's
/// `HERALD_CONFIG`, `HERALD_LOG`, or a deployment's own `HERALD_URL`…) are not config keys and
/// are left alone; inside a known section an unknown key is still an error.
const ENV_SECTIONS: &[&str] = &["server", "auth", "api", "broker", "limits"];

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
    pub sources: SourcesConfig,
    pub registry: Arc<Registry>,
    /// Gate 1's verifier, built from `[auth]` while validating (key files read, JWKS parsed),
    /// so a bad key is a config error like any other and is never built twice.
    pub authenticator: Arc<Authenticator>,
}

/// `[[source.postgres]]` tables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    pub postgres: Vec<PostgresSourceConfig>,
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
        }
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
    /// `redis://[user:pass@]host:port[/db]` (or `rediss://` for TLS builds); required for redis.
    pub url: Option<String>,
    /// Prefix of every Redis key and channel, so several gateways can share one Redis.
    pub prefix: String,
    /// A node refreshes its clients' presence entries; entries of a node that died without
    /// cleaning up disappear after this long.
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            kind: BrokerKind::Memory,
            url: None,
            prefix: "herald".into(),
            presence_ttl: Duration::from_secs(30),
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
    #[serde(default, rename = "channel")]
    channels: Vec<ChannelConfig>,
    #[serde(default)]
    source: SourcesConfig,
}

/// One thing wrong with the configuration, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `channel #3 "chat.room.{roomId}"`, or `None` outside the channel list.
    pub channel: Option<String>,
    /// Dotted field path, e.g. `schema.properties.id.type` or `server.listen`.
    pub field: String,
    pub message: String,
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
        write!(
            f,
            "{}: {n} problem{}",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}: ", self.file)?;
            if let Some(ch) = &p.channel {
                write!(f, "{ch}, ")?;
            }
            write!(f, "field `{}`: {}", p.field, p.message)?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn single(file: &str, field: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            problems: vec![Problem {
                channel: None,
                field: field.to_owned(),
                message: message.into(),
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
            channel,
            field: field.to_owned(),
            message: message.into(),
        });
    }
}

pub(crate) fn channel_label(index: usize, name: &str) -> String {
    format!("channel #{} {name:?}", index + 1)
}

impl Config {
    /// Loads `path` (required to exist when given), applies `HERALD_*` overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
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
        figment = figment.merge(Env::prefixed("HERALD_").split("__").filter(|key| {
            let section = key.as_str().split('.').next().unwrap_or_default();
            key.as_str().contains('.')
                && ENV_SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(section))
        }));
        let base = path
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Self::from_figment(figment, &label, &base, path.map(Path::to_path_buf))
    }

    /// Parses a TOML document held in memory (tests, `herald check -`); relative paths resolve
    /// against `base`. Environment variables are not consulted.
    pub fn from_toml_str(toml: &str, base: &Path) -> Result<Config, ConfigError> {
        let figment = Figment::new().merge(Toml::string(toml));
        Self::from_figment(figment, "<inline>", base, None)
    }

    fn from_figment(
        figment: Figment,
        label: &str,
        base: &Path,
        file: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = figment.extract().map_err(|err| ConfigError {
            file: label.to_owned(),
            problems: err
                .into_iter()
                .map(|e| figment_problem(&figment, e))
                .collect(),
        })?;
        let mut problems = Problems::default();
        let RawConfig {
            server,
            mut auth,
            api,
            broker,
            limits,
            channels,
            source,
        } = raw;
        auth.public_key_pem = auth.public_key_pem.map(|p| base.join(p));
        auth.jwks_file = auth.jwks_file.map(|p| base.join(p));
        validate_general(&server, &auth, &limits, &mut problems);
        validate_broker(&broker, &mut problems);
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
        let authenticator = match Authenticator::from_config(&auth) {
            Ok(a) => Some(a),
            Err(e) => {
                problems.push(None, e.field, e.message);
                None
            }
        };
        if let (true, Some(authenticator)) = (problems.0.is_empty(), authenticator) {
            Ok(Config {
                authenticator: Arc::new(authenticator),
                file,
                server,
                auth,
                api,
                broker,
                limits,
                sources: source,
                registry: Arc::new(registry),
            })
        } else {
            Err(ConfigError {
                file: label.to_owned(),
                problems: problems.0,
            })
        }
    }
}

fn validate_broker(broker: &BrokerConfig, p: &mut Problems) {
    if broker.kind == BrokerKind::Redis {
        match broker.url.as_deref() {
            None => p.push(None, "broker.url", "required when kind = \"redis\""),
            Some(u)
                if !(u.starts_with("redis://")
                    || u.starts_with("rediss://")
                    || u.starts_with("redis+unix://")
                    || u.starts_with("unix://")) =>
            {
                p.push(
                    None,
                    "broker.url",
                    "must be a redis:// (or rediss://, unix://) URL",
                )
            }
            _ => {}
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
}

fn validate_general(server: &ServerConfig, auth: &AuthConfig, limits: &Limits, p: &mut Problems) {
    let keys = [
        auth.hs256_secret.is_some(),
        auth.public_key_pem.is_some(),
        auth.jwks_file.is_some(),
    ];
    if keys.iter().filter(|k| **k).count() > 1 {
        p.push(
            None,
            "auth",
            "set only one of hs256_secret, public_key_pem, jwks_file",
        );
    }
    if keys.iter().all(|k| !k) && !auth.anonymous {
        p.push(
            None,
            "auth",
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
        p.push(
            None,
            "limits.max_payload_bytes",
            "must not exceed limits.max_frame_bytes",
        );
    }
}

/// Turns a figment error into a [`Problem`], naming the channel when the path goes through one.
fn figment_problem(figment: &Figment, e: figment::Error) -> Problem {
    let path = e.path.clone();
    let message = e.kind.to_string();
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
            channel: Some(channel_label(index, &name)),
            field: path[2..].join("."),
            message,
        };
    }
    Problem {
        channel: None,
        field: if path.is_empty() {
            "-".into()
        } else {
            path.join(".")
        },
        message,
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
    fn unknown_keys_are_refused() {
        let err = Config::from_toml_str(
            &format!("{MINIMAL}\n[server]\nlisen = \"x\""),
            Path::new("."),
        )
        .unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
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
}
