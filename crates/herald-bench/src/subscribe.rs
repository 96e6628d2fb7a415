//! `herald-bench subscribe`: what deciding gate 2 in the backend costs (issue 14). Starts a
//! `herald` binary and a minimal keep-alive HTTP backend that allows everything, then measures,
//! for each kind of channel:
//!
//! - **subscribe latency**: one connection subscribes to `--subscribes` channels one after the
//!   other (send to reply), per scope: `authenticated` (static, no I/O), a subscribe proxy
//!   without cache (one backend call each), the same proxy with a cache that is cold (every
//!   (user, channel) new: a miss) and then warm (each channel again after an unsubscribe: a hit;
//!   the static scope is measured again the same way, since a channel the broker has seen is
//!   cheaper to enter whatever the scope);
//! - **connects/s**: `--connections` connections by `--concurrency` workers, each connecting and
//!   subscribing to one channel of the scope, counted until its reply.
//!
//! The backend is in this process (one task per connection, `{"allow":true}` to everything,
//! HTTP/1.1 keep-alive), so what is measured is Herald's side: signing, the pooled client, the
//! round trip over loopback, the cache.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;

use crate::wire::{Client, Event, find, source_addr};

const SECRET: &str = "bench-secret";

/// Arguments of `herald-bench subscribe`.
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// The gateway binary (a release build for meaningful numbers).
    #[arg(long, default_value = "target/release/herald")]
    pub herald: PathBuf,
    /// Subscribes measured per scope (latency).
    #[arg(long, default_value_t = 2000)]
    pub subscribes: usize,
    /// Connections per scope (connects/s).
    #[arg(long, default_value_t = 2000)]
    pub connections: usize,
    /// Workers opening those connections at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

/// The minimal backend: answers every POST with `{"allow":true}`, keeping connections alive.
async fn backend() -> anyhow::Result<(SocketAddr, Arc<AtomicU64>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let calls = counted.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let mut stream = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 14\r\n\r\n{\"allow\":true}";
                    if stream.get_mut().write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, calls))
}

fn config(listen: SocketAddr, backend: SocketAddr) -> String {
    format!(
        r#"[server]
listen = "{listen}"
[auth]
hs256_secret = "{SECRET}"
[limits]
max_subscriptions = 100000
max_connections_per_user = 100000
frame_rate = 100000
[backend]
secret = "backend-secret"
[[proxy]]
name = "nocache"
url = "http://{backend}/subscribe"
[[proxy]]
name = "cached"
url = "http://{backend}/subscribe"
cache_ttl = "1h"
[[channel]]
name = "static.room.{{id}}"
scope = "authenticated"
schema = {{ type = "object" }}
[[channel]]
name = "proxy.room.{{id}}"
scope = {{ proxy = "nocache" }}
schema = {{ type = "object" }}
[[channel]]
name = "cached.room.{{id}}"
scope = {{ proxy = "cached" }}
schema = {{ type = "object" }}
"#
    )
}

/// Reads frames until the reply to `id` (welcome, pings skipped); errors on a refusal.
async fn reply(c: &mut Client, id: u64) -> anyhow::Result<()> {
    let want = format!("\"id\":{id},");
    loop {
        match c.next().await.map_err(|e| anyhow::anyhow!("{e:?}"))? {
            Event::Text(t) if find(t, want.as_bytes()).is_some() => {
                anyhow::ensure!(
                    find(t, b"\"ok\":true").is_some(),
                    "refused: {}",
                    String::from_utf8_lossy(t)
                );
                return Ok(());
            }
            Event::Close(code) => anyhow::bail!("closed: {code:?}"),
            _ => {}
        }
    }
}

/// Source addresses the connections spread over (127.0.0.1–16): thousands of short
/// connections from one address run out of ephemeral ports (TIME_WAIT).
const SPREAD: u8 = 16;

async fn connect(server: SocketAddr, user: &str, n: usize) -> anyhow::Result<Client> {
    let token =
        herald_core::identity::mint_hs256(SECRET, user, &[], "roles", Duration::from_secs(3600))?;
    let auth = format!("Bearer {token}");
    Client::connect(
        source_addr(n, SPREAD),
        server,
        "/v1/ws",
        &[("Authorization", &auth)],
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:?}"))
}

fn row(name: &str, h: &Histogram<u64>, calls: u64) -> String {
    let us = |q: f64| h.value_at_quantile(q) as f64;
    format!(
        "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {calls} |",
        h.len(),
        us(0.5),
        us(0.99),
        us(0.999),
        h.max() as f64
    )
}

/// Runs the measurements and prints two Markdown tables.
pub async fn run(args: SubscribeArgs) -> anyhow::Result<()> {
    let (backend, calls) = backend().await?;
    let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = std::env::temp_dir().join(format!("herald-bench-subscribe-{port}"));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("herald.toml");
    std::fs::write(&file, config(listen, backend))?;
    let mut child = Command::new(&args.herald)
        .args(["serve", "--config"])
        .arg(&file)
        .env("HERALD_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let ready = Instant::now();
    while reqwest::get(format!("http://{listen}/readyz"))
        .await
        .is_err()
    {
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(20),
            "herald did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Subscribe latency: one connection, one subscribe after the other.
    println!("| subscribe to | subscribes | p50 µs | p99 µs | p99.9 µs | max µs | backend calls |");
    println!("|---|---|---|---|---|---|---|");
    let mut c = connect(listen, "lat", 0).await?;
    let mut id = 0u64;
    let mut measure = async |c: &mut Client,
                             prefix: &str,
                             unsubscribe_first: bool|
           -> anyhow::Result<(Histogram<u64>, u64)> {
        let mut h = Histogram::<u64>::new(3)?;
        let before = calls.load(Ordering::Relaxed);
        for i in 0..args.subscribes {
            let channel = format!("{prefix}.room.{i}");
            if unsubscribe_first {
                id += 1;
                c.send_text(&format!(
                    r#"{{"type":"unsubscribe","id":{id},"channel":"{channel}"}}"#
                ))
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                reply(c, id).await?;
            }
            id += 1;
            let t = Instant::now();
            c.send_text(&format!(
                r#"{{"type":"subscribe","id":{id},"channel":"{channel}"}}"#
            ))
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            reply(c, id).await?;
            h.record(t.elapsed().as_micros() as u64)?;
        }
        Ok((h, calls.load(Ordering::Relaxed) - before))
    };
    for (name, prefix, again) in [
        ("`authenticated` (static)", "static", false),
        // Beside the warm cache: the same channels again, known to the broker this time.
        ("`authenticated`, again", "static", true),
        ("proxy, no cache", "proxy", false),
        ("proxy, cache cold", "cached", false),
        ("proxy, cache warm", "cached", true),
    ] {
        let (h, n) = measure(&mut c, prefix, again).await?;
        println!("{}", row(name, &h, n));
    }
    drop(c);

    // Connects/s: connect + one subscribe, `concurrency` at a time.
    println!();
    println!(
        "| connect + subscribe to | connections | connects/s | p50 µs | p99 µs | max µs | backend calls |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, prefix, users) in [
        ("`authenticated` (static)", "static", "s"),
        ("proxy, no cache", "proxy", "p"),
        ("proxy, cache cold", "cached", "c"),
        ("proxy, cache warm", "cached", "c"),
    ] {
        let before = calls.load(Ordering::Relaxed);
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..args.concurrency {
            let next = next.clone();
            let total = args.connections as u64;
            let (prefix, users) = (prefix.to_owned(), users.to_owned());
            workers.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3)?;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return Ok::<_, anyhow::Error>(h);
                    }
                    let t = Instant::now();
                    // The same (user, channel) pairs in the cold and the warm round.
                    let mut c = connect(listen, &format!("{users}{i}"), i as usize).await?;
                    c.send_text(&format!(
                        r#"{{"type":"subscribe","id":1,"channel":"{prefix}.room.{i}"}}"#
                    ))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                    reply(&mut c, 1).await?;
                    h.record(t.elapsed().as_micros() as u64)?;
                }
            }));
        }
        let mut h = Histogram::<u64>::new(3)?;
        for w in workers {
            h.add(w.await??)?;
        }
        let rate = args.connections as f64 / started.elapsed().as_secs_f64();
        println!(
            "| {name} | {} | {rate:.0} | {} | {} | {} | {} |",
            args.connections,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max(),
            calls.load(Ordering::Relaxed) - before
        );
    }
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
