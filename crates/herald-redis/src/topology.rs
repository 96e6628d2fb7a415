//! Where Redis is and how to talk to it: one server, a Sentinel-managed master, or a Cluster.
//!
//! [`Topology::parse`] reads `broker.url`. [`Conn`] is the command connection the broker uses
//! whatever the topology: a reconnecting connection to one server, a cluster connection (which
//! routes each command to the master of its key's hash slot and follows `MOVED`/`ASK` and
//! topology changes itself), or a connection that follows the master Sentinel names. The
//! Sentinel case is ours: the `redis` crate resolves a master once, so [`Following`] asks the
//! Sentinels again every [`SENTINEL_POLL`] and after every failed command, and swaps its
//! connection (and tells the pub/sub task to reconnect) when the master moved.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use herald_core::BrokerError;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, TlsCertificates,
    TlsMode, Value,
};

/// How often a node asks the Sentinels where the master is (besides after a failed command).
pub const SENTINEL_POLL: Duration = Duration::from_millis(500);

/// A Redis deployment, from `broker.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// `redis://`, `rediss://`, `redis+unix://`, `unix://`: one server.
    Single(String),
    /// `redis+cluster://[user:pass@]host:port[,host:port…]` (`rediss+cluster://` for TLS):
    /// seed nodes of a Redis Cluster, each a `redis://` (or `rediss://`) URL.
    Cluster(Vec<String>),
    /// `redis+sentinel://[user:pass@]host:port[,host:port…]/<master name>[/<db>]`
    /// (`rediss+sentinel://` for TLS to the Sentinels and the master). The credentials are
    /// the master's; the Sentinels are asked without.
    Sentinel(SentinelTarget),
}

/// Where the Sentinels are and which master they watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    /// `(host, port)` of each Sentinel.
    pub sentinels: Vec<(String, u16)>,
    /// The master's name in the Sentinels' configuration (`sentinel monitor <name> …`).
    pub master: String,
    /// The master's database number (`/<db>` after the master name; 0 by default).
    pub db: i64,
    /// The master's ACL user, when the URL names one.
    pub username: Option<String>,
    /// The master's password, when the URL has one.
    pub password: Option<String>,
    /// `rediss+sentinel://`: TLS to the Sentinels and to the master.
    pub tls: bool,
}

impl Topology {
    /// Parses `broker.url`. Errors say what is wrong with it (never echoing a password).
    pub fn parse(url: &str) -> Result<Topology, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("must start with a scheme such as redis://")?;
        match scheme {
            "redis" | "rediss" | "redis+unix" | "unix" => Ok(Topology::Single(url.to_owned())),
            "redis+cluster" | "rediss+cluster" => {
                let base = if scheme == "rediss+cluster" {
                    "rediss"
                } else {
                    "redis"
                };
                let (auth, hosts, path) = split_authority(rest);
                let seeds: Vec<String> = hosts
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(|h| format!("{base}://{auth}{h}{path}"))
                    .collect();
                if seeds.is_empty() {
                    return Err("names no cluster node (redis+cluster://host:port,…)".into());
                }
                Ok(Topology::Cluster(seeds))
            }
            "redis+sentinel" | "rediss+sentinel" => {
                let (auth, hosts, path) = split_authority(rest);
                let mut sentinels = Vec::new();
                for h in hosts.split(',').filter(|h| !h.is_empty()) {
                    let (host, port) = match h.rsplit_once(':') {
                        Some((host, port)) => (
                            host,
                            port.parse::<u16>()
                                .map_err(|_| format!("sentinel port of {h:?} is not a number"))?,
                        ),
                        None => (h, 26379),
                    };
                    sentinels.push((host.to_owned(), port));
                }
                if sentinels.is_empty() {
                    return Err("names no sentinel (redis+sentinel://host:port,…/master)".into());
                }
                let mut segments = path.trim_start_matches('/').split('/');
                let master = segments.next().unwrap_or_default().to_owned();
                if master.is_empty() {
                    return Err("names no master (redis+sentinel://host:port/<master name>)".into());
                }
                let db = match segments.next() {
                    Some(d) if !d.is_empty() => d
                        .parse()
                        .map_err(|_| "the database after the master name is not a number")?,
                    _ => 0,
                };
                let auth = auth.trim_end_matches('@');
                let (username, password) = match auth.split_once(':') {
                    Some((u, p)) => (
                        (!u.is_empty()).then(|| u.to_owned()),
                        (!p.is_empty()).then(|| p.to_owned()),
                    ),
                    None => ((!auth.is_empty()).then(|| auth.to_owned()), None),
                };
                Ok(Topology::Sentinel(SentinelTarget {
                    sentinels,
                    master,
                    db,
                    username,
                    password,
                    tls: scheme == "rediss+sentinel",
                }))
            }
            other => Err(format!(
                "unknown scheme {other}:// (redis, rediss, redis+cluster, rediss+cluster, \
                 redis+sentinel, rediss+sentinel, unix)"
            )),
        }
    }

    /// Whether this is a Redis Cluster (sharded pub/sub, per-slot scripts).
    pub fn is_cluster(&self) -> bool {
        matches!(self, Topology::Cluster(_))
    }
}

/// `user:pass@` (with the `@`, or empty), the comma-separated hosts, and the rest (`/…`, `?…`).
fn split_authority(rest: &str) -> (&str, &str, &str) {
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..], path),
        None => ("", authority, path),
    }
}

/// PEM files for TLS (`rediss://`): a CA to trust instead of the system's roots, and a client
/// certificate for servers that ask for one (`tls-auth-clients yes`, Redis' default).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The CA certificate(s) to trust (PEM), instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The client certificate (PEM); needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the files; `None` when none is configured (the system's roots are trusted).
    pub(crate) fn load(&self) -> Result<Option<TlsCertificates>, BrokerError> {
        if self.ca_file.is_none() && self.cert_file.is_none() {
            return Ok(None);
        }
        let read = |p: &PathBuf| {
            std::fs::read(p)
                .map_err(|e| BrokerError::Internal(format!("reading {}: {e}", p.display())))
        };
        let client_tls = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                client_cert: read(c)?,
                client_key: read(k)?,
            }),
            (None, None) => None,
            _ => {
                return Err(BrokerError::Internal(
                    "redis TLS: a client certificate needs both cert_file and key_file".into(),
                ));
            }
        };
        let root_cert = self.ca_file.as_ref().map(read).transpose()?;
        // The redis crate builds rustls configs from the process-wide provider; install ours
        // (ring) unless another part of the process already did.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// A `redis::Client` for one URL, with the custom certificates when there are some.
pub(crate) fn client(
    url: &str,
    certs: &Option<TlsCertificates>,
) -> Result<redis::Client, BrokerError> {
    if url.starts_with("rediss://") {
        // The system's roots when no CA is given.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let r = match certs {
        Some(c) if url.starts_with("rediss://") => redis::Client::build_with_tls(url, c.clone()),
        _ => redis::Client::open(url),
    };
    r.map_err(|e| BrokerError::Internal(format!("redis url: {e}")))
}

/// The reconnect policy of every command connection: fail fast, so a dead Redis answers 503.
pub(crate) fn manager_config(command_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(command_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

/// A Sentinel-managed master, followed through failovers.
pub(crate) struct Following {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// The master's address and connections, once known.
    current: RwLock<Option<Master>>,
    command_timeout: Duration,
    /// Woken when a command failed: the master may have moved.
    pub(crate) suspect: tokio::sync::Notify,
}

#[derive(Clone)]
pub(crate) struct Master {
    pub(crate) addr: String,
    pub(crate) client: redis::Client,
    pub(crate) cmd: ConnectionManager,
}

impl Following {
    pub(crate) fn new(
        target: &SentinelTarget,
        certs: &Option<TlsCertificates>,
        command_timeout: Duration,
    ) -> Result<Following, BrokerError> {
        let bad = |e: RedisError| BrokerError::Internal(format!("redis sentinel: {e}"));
        let addrs = target.sentinels.iter().map(|(h, p)| {
            if target.tls {
                ConnectionAddr::TcpTls {
                    host: h.clone(),
                    port: *p,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(h.clone(), *p)
            }
        });
        let mut b = SentinelClientBuilder::new(addrs, &target.master, SentinelServerType::Master)
            .map_err(bad)?
            .set_client_to_redis_db(target.db);
        if let Some(u) = &target.username {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = &target.password {
            b = b.set_client_to_redis_password(p);
        }
        if target.tls {
            let _ = rustls::crypto::ring::default_provider().install_default();
            b = b
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if let Some(c) = certs {
                b = b
                    .set_client_to_redis_certificates(c.clone())
                    .set_client_to_sentinel_certificates(c.clone());
            }
        }
        Ok(Following {
            sentinel: tokio::sync::Mutex::new(b.build().map_err(bad)?),
            current: RwLock::new(None),
            command_timeout,
            suspect: tokio::sync::Notify::new(),
        })
    }

    pub(crate) fn master(&self) -> Option<Master> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The master, asking the Sentinels first when none is known yet (the first commands).
    pub(crate) async fn master_now(&self) -> Result<Master, RedisError> {
        if let Some(m) = self.master() {
            return Ok(m);
        }
        let _ = self.refresh().await;
        self.master().ok_or_else(no_master)
    }

    /// Asks the Sentinels where the master is; when it moved, switches to it and answers
    /// `true` (the pub/sub connection must follow). Finding the first master is not a move:
    /// whoever connected meanwhile found the same one, and a needless reconnect could miss
    /// publications.
    pub(crate) async fn refresh(&self) -> Result<bool, BrokerError> {
        let client = {
            let mut s = self.sentinel.lock().await;
            tokio::time::timeout(self.command_timeout, s.async_get_client())
                .await
                .map_err(|_| BrokerError::Unavailable("redis sentinel: timed out".into()))?
                .map_err(|e| BrokerError::Unavailable(format!("redis sentinel: {e}")))?
        };
        let addr = client.get_connection_info().addr().to_string();
        let known = self.master();
        if known.as_ref().is_some_and(|m| m.addr == addr) {
            return Ok(false);
        }
        let cmd = ConnectionManager::new_lazy_with_config(
            client.clone(),
            manager_config(self.command_timeout),
        )
        .map_err(|e| BrokerError::Internal(format!("redis: {e}")))?;
        tracing::info!(master = %addr, "redis sentinel: following the master");
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        // Two first refreshes may race: the later one finds the master already set.
        let moved = current.as_ref().is_some_and(|m| m.addr != addr) || known.is_some();
        if current.as_ref().is_none_or(|m| m.addr != addr) {
            *current = Some(Master { addr, client, cmd });
        }
        Ok(moved)
    }
}

/// A cluster connection made at the first command (and again after a failed first attempt):
/// the node starts, not ready, while the Cluster is down. Once made, the connection itself
/// reconnects to nodes and follows slot moves and failovers.
pub(crate) struct LazyCluster {
    client: ClusterClient,
    conn: RwLock<Option<ClusterConnection>>,
    connecting: tokio::sync::Mutex<()>,
}

impl LazyCluster {
    pub(crate) fn new(client: ClusterClient) -> Arc<LazyCluster> {
        Arc::new(LazyCluster {
            client,
            conn: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    fn ready(&self) -> Option<ClusterConnection> {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn get(&self) -> Result<ClusterConnection, RedisError> {
        if let Some(c) = self.ready() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.ready() {
            return Ok(c);
        }
        let c = self.client.get_async_connection().await?;
        *self.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        Ok(c)
    }
}

/// The command connection, whatever the topology. Cheap to clone.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(Arc<LazyCluster>),
    Sentinel(Arc<Following>),
}

fn no_master() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "no redis master known yet (asking the sentinels)",
    ))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(lazy) => {
                let lazy = lazy.clone();
                Box::pin(async move { lazy.get().await?.req_packed_command(cmd).await })
            }
            Conn::Sentinel(f) => {
                let f = f.clone();
                Box::pin(async move {
                    let mut m = f.master_now().await?;
                    let r = m.cmd.req_packed_command(cmd).await;
                    if r.is_err() {
                        f.suspect.notify_one();
                    }
                    r
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(lazy) => {
                let lazy = lazy.clone();
                Box::pin(async move {
                    lazy.get()
                        .await?
                        .req_packed_commands(cmd, offset, count)
                        .await
                })
            }
            Conn::Sentinel(f) => {
                let f = f.clone();
                Box::pin(async move {
                    let mut m = f.master_now().await?;
                    let r = m.cmd.req_packed_commands(cmd, offset, count).await;
                    if r.is_err() {
                        f.suspect.notify_one();
                    }
                    r
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(_) => 0,
            Conn::Sentinel(f) => f.master().map_or(0, |m| m.cmd.get_db()),
        }
    }
}

/// Seeds as connection infos (checked here, so a bad URL fails at start).
pub(crate) fn seeds(urls: &[String]) -> Result<Vec<redis::ConnectionInfo>, BrokerError> {
    urls.iter()
        .map(|u| {
            u.as_str()
                .into_connection_info()
                .map_err(|e| BrokerError::Internal(format!("redis url: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_topology() {
        assert_eq!(
            Topology::parse("redis://127.0.0.1:6379/2").unwrap(),
            Topology::Single("redis://127.0.0.1:6379/2".into())
        );
        assert_eq!(
            Topology::parse("rediss+cluster://u:p@a:7000,b:7001").unwrap(),
            Topology::Cluster(vec![
                "rediss://u:p@a:7000".into(),
                "rediss://u:p@b:7001".into()
            ])
        );
        assert_eq!(
            Topology::parse("redis+sentinel://:secret@s1:26379,s2/mymaster/3").unwrap(),
            Topology::Sentinel(SentinelTarget {
                sentinels: vec![("s1".into(), 26379), ("s2".into(), 26379)],
                master: "mymaster".into(),
                db: 3,
                username: None,
                password: Some("secret".into()),
                tls: false,
            })
        );
        assert!(Topology::parse("redis+sentinel://s1:26379").is_err());
        assert!(Topology::parse("redis+sentinel://s1:x/m").is_err());
        assert!(Topology::parse("redis+cluster://").is_err());
        assert!(Topology::parse("http://x").is_err());
    }
}
