//! Postgres as an event source, against a real Postgres each test starts (`initdb` +
//! `pg_ctl` on a free port) and real WebSocket subscribers.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Client, TestServer, config_toml};
use herald_testkit::{PostgresServer, RedisServer};
use serde_json::{Value, json};
use tokio_postgres::NoTls;

async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

async fn setup() -> PostgresServer {
    let server = PostgresServer::start();
    herald_postgres::apply_install(&server.url(), "herald_outbox")
        .await
        .unwrap();
    server
}

fn source(url: &str) -> String {
    format!(
        "[[source.postgres]]\nurl = \"{url}\"\npoll_interval = \"200ms\"\nnotify = [\"app_events\"]\n"
    )
}

async fn gateway(pg: &PostgresServer, extra: &str) -> TestServer {
    let s = TestServer::with_config(&config_toml(&format!("{extra}\n{}", source(&pg.url())))).await;
    wait_ready(&s).await;
    s
}

async fn wait_ready(s: &TestServer) {
    for _ in 0..100 {
        if reqwest::get(s.url("/readyz")).await.unwrap().status() == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway never became ready");
}

async fn collect(c: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = c
            .next_within(Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("only {} of {n} publications arrived", out.len()));
        if v["type"] == "pub" {
            out.push(v);
        }
    }
    out
}

/// Acceptance 1: committed → delivered; rolled back → never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_publishes_and_rollback_does_not() {
    let server = setup().await;
    let s = gateway(&server, "").await;
    let mut c = s.client("alice").await;
    assert_eq!(c.subscribe("bench.feed").await["ok"], true);
    let mut db = pg(&server.url()).await;
    db.batch_execute("CREATE TABLE orders (id int primary key, status text)")
        .await
        .unwrap();

    let tx = db.transaction().await.unwrap();
    tx.execute("INSERT INTO orders VALUES (1, 'paid')", &[])
        .await
        .unwrap();
    tx.execute(
        "SELECT herald_publish('bench.feed', '{\"order\": 1}'::jsonb)",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let p = c.next().await;
    assert_eq!(
        (p["channel"].as_str(), p["data"]["order"].as_u64()),
        (Some("bench.feed"), Some(1))
    );

    let tx = db.transaction().await.unwrap();
    tx.execute("INSERT INTO orders VALUES (2, 'paid')", &[])
        .await
        .unwrap();
    tx.execute(
        "SELECT herald_publish('bench.feed', '{\"order\": 2}'::jsonb)",
        &[],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert!(
        c.silent_for(Duration::from_millis(1000)).await,
        "a rolled-back publish leaked"
    );
    let left: i64 = db
        .query_one("SELECT count(*) FROM herald_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

/// Acceptance 2: 1,000 rows from 4 concurrent writers: each delivered once, in commit order
/// per channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_keep_commit_order() {
    let server = setup().await;
    let s = gateway(&server, "").await;
    let mut a = s.client("alice").await;
    let mut b = s.client("bob").await;
    assert_eq!(a.subscribe("bench.feed").await["ok"], true);
    assert_eq!(b.subscribe("history.small").await["ok"], true);

    let mut writers = Vec::new();
    for w in 0..4u32 {
        let url = server.url();
        writers.push(tokio::spawn(async move {
            let mut db = pg(&url).await;
            let mut ids = Vec::new();
            for i in 0..250u32 {
                let channel = if i % 2 == 0 {
                    "bench.feed"
                } else {
                    "history.small"
                };
                let tx = db.transaction().await.unwrap();
                let id: i64 = tx
                    .query_one(
                        "SELECT herald_publish($1, $2::text::jsonb)",
                        &[&channel, &json!({"w": w, "i": i}).to_string()],
                    )
                    .await
                    .unwrap()
                    .get(0);
                tx.commit().await.unwrap();
                ids.push((channel, id));
            }
            ids
        }));
    }
    let mut committed = Vec::new();
    for w in writers {
        committed.extend(w.await.unwrap());
    }
    assert_eq!(committed.len(), 1000);
    for (client, channel) in [(&mut a, "bench.feed"), (&mut b, "history.small")] {
        let pubs = collect(client, 500).await;
        let offsets: Vec<u64> = pubs.iter().map(|p| p["offset"].as_u64().unwrap()).collect();
        assert_eq!(offsets, (1..=500).collect::<Vec<_>>(), "{channel}");
        // Commit order per channel: each writer's rows arrive in the order it committed them.
        for w in 0..4 {
            let seq: Vec<u64> = pubs
                .iter()
                .filter(|p| p["data"]["w"] == w)
                .map(|p| p["data"]["i"].as_u64().unwrap())
                .collect();
            let mut sorted = seq.clone();
            sorted.sort_unstable();
            assert_eq!(seq, sorted, "writer {w} on {channel}");
            assert_eq!(seq.len(), 125);
        }
        let unique: HashSet<String> = pubs.iter().map(|p| p["data"].to_string()).collect();
        assert_eq!(unique.len(), 500, "no row twice");
    }
    assert!(a.silent_for(Duration::from_millis(300)).await);
}

/// Acceptance 3: two gateways (one Redis) consume one outbox: nothing twice, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_outbox() {
    let server = setup().await;
    let redis = RedisServer::start();
    let broker = format!("[broker]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url());
    let s1 = gateway(&server, &broker).await;
    let s2 = gateway(&server, &broker).await;
    let mut on1 = s1.client("alice").await;
    let mut on2 = s2.client("bob").await;
    assert_eq!(on1.subscribe("bench.feed").await["ok"], true);
    assert_eq!(on2.subscribe("bench.feed").await["ok"], true);
    let db = pg(&server.url()).await;
    db.batch_execute(
        "SELECT herald_publish('bench.feed', jsonb_build_object('n', g)) FROM generate_series(1, 300) g",
    )
    .await
    .unwrap();
    for c in [&mut on1, &mut on2] {
        let pubs = collect(c, 300).await;
        let ns: Vec<u64> = pubs
            .iter()
            .map(|p| p["data"]["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, (1..=300).collect::<Vec<_>>());
        assert!(
            c.silent_for(Duration::from_millis(500)).await,
            "a row was delivered twice"
        );
    }
    let metrics = format!("{}{}", s1.metrics().await, s2.metrics().await);
    let total: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("herald_publications_total{source=\"outbox\"}"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 300, "each row published by exactly one gateway");
}

/// Acceptance 4: a schema-violating row goes to the dead-letter table; later rows flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_dead_lettered() {
    let server = setup().await;
    let s = gateway(&server, "").await;
    let mut c = s.client("alice").await;
    assert_eq!(c.subscribe("blog.article.feed").await["ok"], true);
    let db = pg(&server.url()).await;
    db.batch_execute(
        "SELECT herald_publish('blog.article.feed', '{\"id\":\"1\",\"title\":\"first\"}');
         SELECT herald_publish('blog.article.feed', '{\"id\":2,\"title\":\"bad\"}');
         SELECT herald_publish('no.such.channel', '{}');
         SELECT herald_publish('blog.article.feed', '{\"id\":\"3\",\"title\":\"after\"}');",
    )
    .await
    .unwrap();
    let pubs = collect(&mut c, 2).await;
    assert_eq!(pubs[0]["data"]["title"], "first");
    assert_eq!(pubs[1]["data"]["title"], "after");
    // Publishing happens inside the consumer's transaction; the dead letters become visible
    // when it commits, a moment after the subscriber saw the good rows.
    let mut dead = Vec::new();
    for _ in 0..50 {
        dead = db
            .query(
                "SELECT channel, error FROM herald_outbox_dead ORDER BY id",
                &[],
            )
            .await
            .unwrap();
        if dead.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead.len(), 2);
    let e0: String = dead[0].get(1);
    let e1: String = dead[1].get(1);
    assert!(
        e0.starts_with("invalid_payload") && e0.contains("/id"),
        "{e0}"
    );
    assert!(e1.starts_with("unknown_channel"), "{e1}");
    let left: i64 = db
        .query_one("SELECT count(*) FROM herald_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

/// Acceptance 5: Postgres stopped for 5 s: rows committed just before and after are all
/// delivered, without restarting the gateway; readiness follows the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_postgres_restart() {
    let mut server = setup().await;
    let s = gateway(&server, "").await;
    let mut c = s.client("alice").await;
    assert_eq!(c.subscribe("bench.feed").await["ok"], true);
    {
        let db = pg(&server.url()).await;
        db.batch_execute("SELECT herald_publish('bench.feed', '{\"n\": 1}')")
            .await
            .unwrap();
    }
    server.stop();
    let mut saw_not_ready = false;
    for _ in 0..40 {
        if reqwest::get(s.url("/readyz")).await.unwrap().status() == 503 {
            saw_not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_not_ready, "/readyz must report the lost source");
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.start_again();
    {
        let db = pg(&server.url()).await;
        db.batch_execute("SELECT herald_publish('bench.feed', '{\"n\": 2}')")
            .await
            .unwrap();
    }
    let pubs = collect(&mut c, 2).await;
    let ns: Vec<u64> = pubs
        .iter()
        .map(|p| p["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, vec![1, 2]);
    wait_ready(&s).await;
}

/// Acceptance 6: a raw NOTIFY with a valid payload is delivered; an invalid one is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_notify_is_published_or_counted() {
    let server = setup().await;
    let s = gateway(&server, "").await;
    let mut c = s.client("alice").await;
    assert_eq!(c.subscribe("bench.feed").await["ok"], true);
    let db = pg(&server.url()).await;
    db.batch_execute(
        r#"NOTIFY app_events, 'not json';
           NOTIFY app_events, '{"channel":"no.such.channel","data":{}}';
           NOTIFY app_events, '{"channel":"bench.feed","data":{"via":"notify"}}';"#,
    )
    .await
    .unwrap();
    let p = c.next().await;
    assert_eq!(p["data"]["via"], "notify");
    let metrics = s.metrics().await;
    assert!(
        metrics.contains(r#"herald_rejects_total{gate="publish",code="bad_request"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"herald_rejects_total{gate="publish",code="unknown_channel"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"herald_publications_total{source="notify"} 1"#),
        "{metrics}"
    );
}
