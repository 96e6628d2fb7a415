//! Benchmarks for the Redis broker (1 node vs 2 nodes + Redis), the Postgres outbox (rows/s,
//! commit → client latency) and the event-bus sources (NATS JetStream, Redis Streams,
//! RabbitMQ: messages/s drained, bus → client latency). Starts its own redis-server /
//! Postgres / nats-server / rabbitmq-server and real `herald` processes (the release build,
//! found through `cargo metadata` or `HERALD_BIN`, and built when missing); prints Markdown
//! tables. `bench_sources buses` runs only the bus sources.
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
use herald_testkit::{
    HeraldBin, HeraldProcess, NatsServer, PostgresServer, RabbitMqServer, RedisServer,
};
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

/// Messages drained per bus in the throughput phase.
const BUS_BURST: u64 = 5_000;
/// The paced phase: messages per second, and seconds.
const BUS_RATE: u64 = 200;
const BUS_SECS: u64 = 5;

/// A bus as the benchmark drives it: publish one message (stamped by the caller) on
/// `bench.x`, acknowledged by the bus when `confirm` is set (the burst confirms in batches).
enum BusClient {
    Nats(async_nats::jetstream::Context),
    Redis(redis::aio::MultiplexedConnection),
    Amqp(lapin::Channel),
}

impl BusClient {
    /// Publishes `n` messages built by `body`, waiting for the bus's acknowledgements every
    /// 100 messages (JetStream acks, RabbitMQ publisher confirms, Redis replies).
    async fn publish_many(&mut self, n: u64, body: impl Fn(u64) -> Vec<u8>) {
        let mut i = 0;
        while i < n {
            let batch = (n - i).min(100);
            match self {
                BusClient::Nats(js) => {
                    let mut acks = Vec::new();
                    for k in i..i + batch {
                        acks.push(js.publish("bench.x", body(k).into()).await.unwrap());
                    }
                    for a in acks {
                        a.await.unwrap();
                    }
                }
                BusClient::Redis(con) => {
                    let mut pipe = redis::pipe();
                    for k in i..i + batch {
                        pipe.cmd("XADD")
                            .arg("bench")
                            .arg("*")
                            .arg("subject")
                            .arg("bench.x")
                            .arg("data")
                            .arg(body(k))
                            .ignore();
                    }
                    let _: () = pipe.query_async(con).await.unwrap();
                }
                BusClient::Amqp(ch) => {
                    let mut confirms = Vec::new();
                    for k in i..i + batch {
                        let props = lapin::BasicProperties::default()
                            .with_message_id(k.to_string().as_str().into());
                        confirms.push(
                            ch.basic_publish(
                                "bench".into(),
                                "bench.x".into(),
                                lapin::options::BasicPublishOptions::default(),
                                &body(k),
                                props,
                            )
                            .await
                            .unwrap(),
                        );
                    }
                    for c in confirms {
                        c.await.unwrap();
                    }
                }
            }
            i += batch;
        }
    }

    /// Publishes one message and waits for the bus to accept it.
    async fn publish_one(&mut self, body: Vec<u8>, k: u64) {
        match self {
            BusClient::Nats(js) => {
                js.publish("bench.x", body.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
            BusClient::Redis(con) => {
                let _: String = redis::cmd("XADD")
                    .arg("bench")
                    .arg("*")
                    .arg("subject")
                    .arg("bench.x")
                    .arg("data")
                    .arg(body)
                    .query_async(con)
                    .await
                    .unwrap();
            }
            BusClient::Amqp(ch) => {
                let props = lapin::BasicProperties::default()
                    .with_message_id(format!("p{k}").as_str().into());
                ch.basic_publish(
                    "bench".into(),
                    "bench.x".into(),
                    lapin::options::BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await
                .unwrap()
                .await
                .unwrap();
            }
        }
    }
}

/// One bus: a gateway consuming it into `bench.feed`, one subscriber. First a burst of
/// `BUS_BURST` messages published as fast as the bus confirms them (throughput: messages/s
/// from the first publish to the last delivery); then `BUS_RATE`/s for `BUS_SECS` s, each
/// stamped with its send time (latency: publish call → pub frame, without a queue).
async fn bench_bus(label: &str, source: &str, mut bus: BusClient) {
    let node = Node::start(source);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
    let count = Arc::new(AtomicU64::new(0));
    subscribers(&node.url, 1, lat.clone(), count.clone()).await;

    let started = Instant::now();
    bus.publish_many(BUS_BURST, |k| json!({"k": k}).to_string().into_bytes())
        .await;
    let published_in = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120);
    while count.load(Ordering::Relaxed) < BUS_BURST && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drained = count.load(Ordering::Relaxed);
    let drained_in = started.elapsed().as_secs_f64();

    let paced = BUS_RATE * BUS_SECS;
    let start = Instant::now();
    for i in 0..paced {
        tokio::time::sleep_until((start + Duration::from_micros(i * 1_000_000 / BUS_RATE)).into())
            .await;
        let body = json!({"t": now_us()}).to_string().into_bytes();
        bus.publish_one(body, i).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while count.load(Ordering::Relaxed) < BUS_BURST + paced && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut l = lat.lock().unwrap().clone();
    l.sort_unstable();
    println!(
        "| {label} | {BUS_BURST} | {:.0} | {drained} | {:.0} | {} | {:.2} | {:.2} | {:.2} |",
        BUS_BURST as f64 / published_in,
        drained as f64 / drained_in,
        l.len(),
        pct(&l, 0.5),
        pct(&l, 0.99),
        pct(&l, 1.0)
    );
}

const BUS_ROUTE: &str = "match = \"bench.>\"\nchannel = \"bench.feed\"\n";

async fn buses() {
    println!("\n### Event-bus sources\n");
    println!(
        "One gateway consuming the bus into `bench.feed`, one subscriber. Burst: {BUS_BURST} messages"
    );
    println!(
        "published as fast as the bus confirms them (batches of 100); drained/s is first publish →"
    );
    println!(
        "last delivery. Then {BUS_RATE} messages/s for {BUS_SECS} s; latency is the publish call → the pub frame.\n"
    );
    println!(
        "| source | burst | published/s | delivered | drained/s | paced samples | p50 ms | p99 ms | max ms |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");

    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let source = format!(
        "[[source.nats]]\nurl = \"{}\"\nstream = \"BENCH\"\n[[source.nats.route]]\n{BUS_ROUTE}",
        nats.url()
    );
    bench_bus("nats (JetStream)", &source, BusClient::Nats(js)).await;

    let redis = RedisServer::start();
    let con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let source = format!(
        "[[source.redis_stream]]\nurl = \"{}\"\nstream = \"bench\"\nstart = \"0\"\n\
         [[source.redis_stream.route]]\n{BUS_ROUTE}",
        redis.url()
    );
    bench_bus("redis_stream", &source, BusClient::Redis(con)).await;

    let rabbit = RabbitMqServer::start();
    let conn = lapin::Connection::connect(&rabbit.url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.exchange_declare(
        "bench".into(),
        lapin::ExchangeKind::Topic,
        lapin::options::ExchangeDeclareOptions::default(),
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap();
    let source = format!(
        "[[source.amqp]]\nurl = \"{}\"\nqueue = \"bench\"\n\
         bindings = [{{ exchange = \"bench\", routing_key = \"#\" }}]\n[[source.amqp.route]]\n{BUS_ROUTE}",
        rabbit.url()
    );
    bench_bus("amqp (RabbitMQ)", &source, BusClient::Amqp(ch)).await;
    drop(conn);
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
    if what == "buses" || what == "all" {
        buses().await;
    }
}
