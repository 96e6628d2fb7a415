//! Benchmarks for the Redis broker (1 node vs 2 nodes + Redis) and the Postgres outbox
//! (rows/s, commit → client latency). Starts its own redis-server / Postgres and real `herald`
//! processes (the release build, found through `cargo metadata` or `HERALD_BIN`, and built
//! when missing); prints Markdown tables.
//!
//! ```sh
//! cargo build --release -p herald
//! taskset -c 1 cargo run --release -p herald-bench --example bench_sources -- all
//! ```
//! Gateways run under `taskset -c 0` (set HERALD_BENCH_NO_PIN=1 to skip pinning).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use herald_core::identity::mint_hs256;
use herald_testkit::{HeraldBin, HeraldProcess, PostgresServer, RedisServer};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "bench-secret";
const KEY: &str = "bench-key";

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// One gateway process, pinned to CPU 0 unless `HERALD_BENCH_NO_PIN` is set.
struct Node {
    url: String,
    _process: HeraldProcess,
}

impl Node {
    fn start(extra: &str) -> Node {
        let config = format!(
            "[auth]\nhs256_secret = \"{SECRET}\"\n[api]\nkey = \"{KEY}\"\n\
             [limits]\nmax_connections_per_user = 100000\n{extra}\n\
             [[channel]]\nname = \"bench.feed\"\nscope = \"public\"\nschema = {{ type = \"object\" }}\n"
        );
        let bin = HeraldBin::locate(None);
        bin.build_if_missing();
        let mut builder = HeraldProcess::builder(config).bin(bin);
        if std::env::var_os("HERALD_BENCH_NO_PIN").is_none() {
            builder = builder.wrapper(["taskset", "-c", "0"]);
        }
        let process = builder.start();
        Node {
            url: process.url(),
            _process: process,
        }
    }
}

/// Opens `n` subscribers of bench.feed on `url`; each records latencies (µs) of payloads
/// stamped with `t` and counts deliveries.
async fn subscribers(
    url: &str,
    n: usize,
    lat: Arc<std::sync::Mutex<Vec<u64>>>,
    count: Arc<AtomicU64>,
) {
    let token = mint_hs256(SECRET, "bench", &[], "roles", Duration::from_secs(3600)).unwrap();
    for _ in 0..n {
        let mut req = format!("{}/v1/ws", url.replace("http://", "ws://"))
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        ws.next().await; // welcome
        ws.send(Message::Text(
            r#"{"type":"subscribe","id":1,"channel":"bench.feed"}"#.into(),
        ))
        .await
        .unwrap();
        ws.next().await; // reply
        let (lat, count) = (lat.clone(), count.clone());
        tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m {
                    if !t.contains("\"pub\"") {
                        continue;
                    }
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if let Some(sent) = v["data"]["t"].as_u64() {
                        lat.lock().unwrap().push(now_us().saturating_sub(sent));
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Open-loop publisher: `rate` publications/s for `secs`, alternating over `nodes`, each
/// stamped with its intended send time.
async fn publish_open_loop(nodes: &[String], rate: u64, secs: u64) -> u64 {
    let http = reqwest::Client::new();
    let start = Instant::now();
    let total = rate * secs;
    let mut tasks = Vec::new();
    for i in 0..total {
        let intended = start + Duration::from_micros(i * 1_000_000 / rate);
        tokio::time::sleep_until(intended.into()).await;
        let t = now_us();
        let url = format!("{}/v1/publish", nodes[i as usize % nodes.len()]);
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .bearer_auth(KEY)
                .json(&json!({"channel": "bench.feed", "data": {"t": t, "pad": "x".repeat(60)}}))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap_or(false) {
            ok += 1;
        }
    }
    ok
}

async fn multinode() {
    println!("\n### Redis broker: 1 node vs 2 nodes + Redis\n");
    println!(
        "500 subscribers of one channel (split evenly over the nodes), publications of ~100 B"
    );
    println!(
        "through the HTTP API at a fixed open-loop rate for 10 s, alternating over the nodes.\n"
    );
    println!("| setup | rate (pub/s) | published | deliveries/s | p50 ms | p99 ms | max ms |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let redis = RedisServer::start();
    let redis_cfg = format!("[broker]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url());
    for (label, nodes_n, cfg) in [
        ("1 node, memory", 1, String::new()),
        ("1 node, redis", 1, redis_cfg.clone()),
        ("2 nodes, redis", 2, redis_cfg.clone()),
    ] {
        for rate in [200u64, 1000] {
            let nodes: Vec<Node> = (0..nodes_n).map(|_| Node::start(&cfg)).collect();
            let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
            let count = Arc::new(AtomicU64::new(0));
            for n in &nodes {
                subscribers(&n.url, 500 / nodes_n, lat.clone(), count.clone()).await;
            }
            let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
            let started = Instant::now();
            let published = publish_open_loop(&urls, rate, 10).await;
            let expected = published * 500;
            let deadline = Instant::now() + Duration::from_secs(10);
            while count.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let elapsed = started.elapsed().as_secs_f64();
            let mut l = lat.lock().unwrap().clone();
            l.sort_unstable();
            println!(
                "| {label} | {rate} | {published} | {:.0} | {:.2} | {:.2} | {:.2} |",
                count.load(Ordering::Relaxed) as f64 / elapsed,
                pct(&l, 0.5),
                pct(&l, 0.99),
                pct(&l, 1.0)
            );
        }
    }
}

async fn outbox() {
    println!("\n### Postgres outbox\n");
    println!("4 writers each commit 2,500 transactions of one `herald_publish` (10,000 rows);");
    println!("one subscriber; latency is commit call → pub frame at the client.\n");
    let pg = PostgresServer::start();
    herald_postgres::apply_install(&pg.url(), "herald_outbox")
        .await
        .unwrap();
    let node = Node::start(&format!(
        "[[source.postgres]]\nurl = \"{}\"\npoll_interval = \"1s\"\nbatch_size = 500\n",
        pg.url()
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
    let count = Arc::new(AtomicU64::new(0));
    subscribers(&node.url, 1, lat.clone(), count.clone()).await;
    let started = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..4 {
        let url = pg.url();
        writers.push(tokio::spawn(async move {
            let (mut db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            for _ in 0..2500 {
                let tx = db.transaction().await.unwrap();
                let t = now_us();
                tx.execute(
                    "SELECT herald_publish('bench.feed', $1::text::jsonb)",
                    &[&json!({"t": t}).to_string()],
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let committed_in = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::Relaxed) < 10_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered_in = started.elapsed().as_secs_f64();
    let mut l = lat.lock().unwrap().clone();
    l.sort_unstable();
    println!(
        "| rows | commits/s (4 writers) | delivered | rows/s end to end | p50 ms | p99 ms | max ms |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| 10000 | {:.0} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
        10_000.0 / committed_in,
        count.load(Ordering::Relaxed),
        count.load(Ordering::Relaxed) as f64 / delivered_in,
        pct(&l, 0.5),
        pct(&l, 0.99),
        pct(&l, 1.0)
    );
}

#[tokio::main]
async fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    if what == "multinode" || what == "all" {
        multinode().await;
    }
    if what == "outbox" || what == "all" {
        outbox().await;
    }
}
