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

/// Issue 12, class 4 (payload fidelity) through the Postgres doors: an outbox row and a NOTIFY
/// payload reach subscribers with their numbers as written (jsonb keeps `numeric` exactly; a
/// `Value` round trip used to round them to `f64`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_payloads_keep_their_numbers() {
    use futures_util::StreamExt;
    let server = setup().await;
    let s = gateway(&server, "").await;
    let mut c = s.client("alice").await;
    assert_eq!(c.subscribe("bench.feed").await["ok"], true);
    let db = pg(&server.url()).await;
    db.batch_execute(
        r#"SELECT herald_publish('bench.feed', '{"a": 123456789012345678901234567890, "b": 0.10000000000000000555}'::jsonb);
           NOTIFY app_events, '{"channel":"bench.feed","data":{"n":98765432109876543210987654321}}';"#,
    )
    .await
    .unwrap();
    let mut texts = Vec::new();
    while texts.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(15), c.ws.next())
            .await
            .expect("publications within 15 s")
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg
            && t.starts_with(r#"{"type":"pub""#)
        {
            texts.push(t.to_string());
        }
    }
    texts.sort();
    assert!(
        texts.iter().any(|t| t
            .contains(r#""data":{"a":123456789012345678901234567890,"b":0.10000000000000000555}"#)),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains(r#""data":{"n":98765432109876543210987654321}"#)),
        "{texts:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Issue 20, class 1: `herald_publish()` must never fail, wait or time out inside the
// application's transaction, whatever channels it publishes to and in whatever order, and
// whatever locks the application itself holds, while rows still reach subscribers in commit
// order per channel.

/// The server's message (tokio-postgres' `Display` only says "db error").
fn pg_error(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Runs `sql` statements in one transaction on `db`; returns the first error, if any.
async fn try_tx(db: &mut tokio_postgres::Client, sql: &[&str]) -> Result<(), String> {
    let tx = db.transaction().await.map_err(pg_error)?;
    for s in sql {
        tx.batch_execute(s)
            .await
            .map_err(|e| format!("{s}: {}", pg_error(e)))?;
    }
    tx.commit().await.map_err(pg_error)
}

/// The issue's example: T1 publishes to alice then bob, T2 to bob then alice, interleaved.
/// Before the fix Postgres aborted one of them with `deadlock detected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_channel_orders_do_not_deadlock() {
    let server = setup().await;
    let s = gateway(&server, "").await;
    let mut alice = s.client("alice").await;
    let mut bob = s.client("bob").await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let mut tasks = Vec::new();
    for (name, first, second) in [("t1", "alice", "bob"), ("t2", "bob", "alice")] {
        let url = server.url();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut db = pg(&url).await;
            // Detect a deadlock quickly if there is one (the default is 1 s).
            db.batch_execute("SET deadlock_timeout = '100ms'")
                .await
                .unwrap();
            let tx = db.transaction().await.map_err(pg_error)?;
            let publish = |user: &str| {
                format!(
                    "SELECT herald_publish('notifications.user.{user}', \
                     '{{\"type\":\"system\",\"text\":\"{name}\"}}')"
                )
            };
            tx.batch_execute(&publish(first)).await.map_err(pg_error)?;
            barrier.wait().await;
            tx.batch_execute(&publish(second)).await.map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        }));
    }
    for t in tasks {
        let result: Result<(), String> = t.await.unwrap();
        assert_eq!(
            result,
            Ok(()),
            "herald_publish failed the application's transaction"
        );
    }
    for c in [&mut alice, &mut bob] {
        let pubs = collect(c, 2).await;
        let mut texts: Vec<&str> = pubs
            .iter()
            .map(|p| p["data"]["text"].as_str().unwrap())
            .collect();
        texts.sort_unstable();
        assert_eq!(texts, ["t1", "t2"]);
    }
}

/// Another member: `herald_publish` must not wait for another transaction at all, so an
/// application's `lock_timeout` can never fire inside it. T1 publishes to a channel and stays
/// open; T2 publishes to the same channel under a 100 ms lock timeout and commits first: T2
/// must succeed at once, and its row (the later id) must be delivered first (commit order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_publish_never_waits_for_another_transaction() {
    let server = setup().await;
    let s = gateway(&server, "").await;
    let mut c = s.client("alice").await;
    assert_eq!(c.subscribe("bench.feed").await["ok"], true);
    let mut db1 = pg(&server.url()).await;
    let mut db2 = pg(&server.url()).await;
    let t1 = db1.transaction().await.unwrap();
    t1.batch_execute("SELECT herald_publish('bench.feed', '{\"tx\": 1}')")
        .await
        .unwrap();
    db2.batch_execute("SET lock_timeout = '100ms'; SET statement_timeout = '2s'")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let r = try_tx(
        &mut db2,
        &["SELECT herald_publish('bench.feed', '{\"tx\": 2}')"],
    )
    .await;
    assert_eq!(r, Ok(()), "herald_publish waited for another transaction");
    assert!(started.elapsed() < Duration::from_secs(1));
    t1.commit().await.unwrap();
    let pubs = collect(&mut c, 2).await;
    let order: Vec<u64> = pubs
        .iter()
        .map(|p| p["data"]["tx"].as_u64().unwrap())
        .collect();
    assert_eq!(order, [2, 1], "delivered in commit order, not id order");
}

/// Another member: the number of channels. One transaction publishing to 20,000 distinct
/// channels must commit (a lock per channel exhausted Postgres' shared lock table:
/// `out of shared memory`), and every row must be delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transaction_may_publish_to_many_channels() {
    let server = setup().await;
    let s = gateway(&server, "").await;
    let mut first = s.client("u1").await;
    let mut last = s.client("u20000").await;
    let mut db = pg(&server.url()).await;
    let r = try_tx(
        &mut db,
        &["SELECT herald_publish('notifications.user.u' || g, \
           jsonb_build_object('type', 'system', 'text', g::text)) FROM generate_series(1, 20000) g"],
    )
    .await;
    assert_eq!(
        r,
        Ok(()),
        "herald_publish failed the application's transaction"
    );
    for (c, n) in [(&mut first, "1"), (&mut last, "20000")] {
        let p = collect(c, 1).await;
        assert_eq!(p[0]["data"]["text"], n);
    }
    let mut left: i64 = -1;
    for _ in 0..200 {
        left = db
            .query_one("SELECT count(*) FROM herald_outbox", &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "every row consumed");
}

/// Acceptance 2 of issue 20: many writers, each transaction publishing to a random set of
/// channels in random order, interleaved with the application's own row locks (taken in a
/// consistent order, so the application alone never deadlocks). No transaction may be aborted,
/// and each channel's publications must arrive in commit order: the order of the counter
/// the application increments under its row lock, which is the order those transactions
/// committed in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_channel_orders_with_app_locks_never_abort_and_keep_commit_order() {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    const CHANNELS: [&str; 4] = ["chat.room.a", "chat.room.b", "chat.room.c", "chat.room.d"];
    const WRITERS: u64 = 8;
    const TXS: u64 = 40;
    let server = setup().await;
    let s = gateway(&server, "").await;
    let mut c = s.client("alice").await;
    for ch in CHANNELS {
        assert_eq!(c.subscribe(ch).await["ok"], true);
    }
    let db = pg(&server.url()).await;
    db.batch_execute(
        "CREATE TABLE counters (channel text PRIMARY KEY, n bigint NOT NULL);
         INSERT INTO counters SELECT unnest(ARRAY['chat.room.a','chat.room.b','chat.room.c','chat.room.d']), 0;",
    )
    .await
    .unwrap();

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let url = server.url();
        writers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w);
            let mut db = pg(&url).await;
            db.batch_execute("SET deadlock_timeout = '50ms'")
                .await
                .unwrap();
            // (channel, counter value, writer, tx) for every committed publication.
            let mut committed: Vec<(String, i64, u64, u64)> = Vec::new();
            let mut errors = Vec::new();
            for i in 0..TXS {
                let mut chosen: Vec<&str> = CHANNELS.to_vec();
                chosen.shuffle(&mut rng);
                chosen.truncate(rng.random_range(1..=CHANNELS.len()));
                let mut locks = chosen.clone();
                locks.sort_unstable();
                let mut publishes = chosen.clone();
                publishes.shuffle(&mut rng);
                // A random interleaving of the sorted row locks and the shuffled publishes.
                let (mut l, mut p) = (0, 0);
                let tx = match db.transaction().await {
                    Ok(tx) => tx,
                    Err(e) => {
                        errors.push(pg_error(e));
                        continue;
                    }
                };
                let mut counters = Vec::new();
                let mut failed = None;
                while l < locks.len() || p < publishes.len() {
                    let lock_next =
                        p == publishes.len() || (l < locks.len() && rng.random_bool(0.5));
                    let r = if lock_next {
                        let ch = locks[l];
                        l += 1;
                        tx.query_one(
                            "UPDATE counters SET n = n + 1 WHERE channel = $1 RETURNING n",
                            &[&ch],
                        )
                        .await
                        .map(|row| counters.push((ch.to_owned(), row.get::<_, i64>(0))))
                    } else {
                        let ch = publishes[p];
                        p += 1;
                        let data = json!({"text": format!("{w}-{i}"), "w": w, "i": i}).to_string();
                        tx.execute("SELECT herald_publish($1, $2::text::jsonb)", &[&ch, &data])
                            .await
                            .map(|_| ())
                    };
                    if let Err(e) = r {
                        failed = Some(pg_error(e));
                        break;
                    }
                }
                if let Some(e) = failed {
                    errors.push(e);
                    let _ = tx.rollback().await;
                    continue;
                }
                match tx.commit().await {
                    Ok(()) => committed.extend(counters.into_iter().map(|(ch, n)| (ch, n, w, i))),
                    Err(e) => errors.push(pg_error(e)),
                }
            }
            (committed, errors)
        }));
    }
    let mut committed = Vec::new();
    let mut errors = Vec::new();
    for w in writers {
        let (c, e) = w.await.unwrap();
        committed.extend(c);
        errors.extend(e);
    }
    assert!(
        errors.is_empty(),
        "{} transactions aborted, e.g. {:?}",
        errors.len(),
        errors.first()
    );
    let total = committed.len();
    let pubs = collect(&mut c, total).await;
    assert!(
        c.silent_for(Duration::from_millis(500)).await,
        "a row was delivered twice"
    );
    for ch in CHANNELS {
        let mut expected: Vec<(i64, u64, u64)> = committed
            .iter()
            .filter(|(c, ..)| c == ch)
            .map(|(_, n, w, i)| (*n, *w, *i))
            .collect();
        expected.sort_unstable();
        let expected: Vec<(u64, u64)> = expected.into_iter().map(|(_, w, i)| (w, i)).collect();
        let got: Vec<(u64, u64)> = pubs
            .iter()
            .filter(|p| p["channel"] == ch)
            .map(|p| {
                (
                    p["data"]["w"].as_u64().unwrap(),
                    p["data"]["i"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got, expected,
            "{ch}: delivered order differs from commit order"
        );
        let offsets: Vec<u64> = pubs
            .iter()
            .filter(|p| p["channel"] == ch)
            .map(|p| p["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(
            offsets,
            (1..=expected.len() as u64).collect::<Vec<_>>(),
            "{ch}"
        );
    }
}

/// Another member: `herald_publish` resolved its table through the caller's `search_path`, so
/// an application whose path names another schema first (one that has its own
/// `herald_outbox`, or none) failed inside its transaction, at the call or at `COMMIT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_publish_does_not_depend_on_the_callers_search_path() {
    let server = setup().await;
    let s = gateway(&server, "").await;
    let mut c = s.client("alice").await;
    assert_eq!(c.subscribe("bench.feed").await["ok"], true);
    let mut db = pg(&server.url()).await;
    db.batch_execute(
        "CREATE SCHEMA billing; CREATE TABLE billing.herald_outbox (id int PRIMARY KEY);
         CREATE SCHEMA empty;",
    )
    .await
    .unwrap();
    for (n, path, call) in [
        (1, "billing, public", "herald_publish"),
        (2, "empty", "public.herald_publish"),
    ] {
        let set = format!("SET LOCAL search_path = {path}");
        let publish = format!("SELECT {call}('bench.feed', '{{\"n\": {n}}}')");
        let r = try_tx(&mut db, &[&set, &publish]).await;
        assert_eq!(r, Ok(()), "search_path {path}");
    }
    let ns: Vec<u64> = collect(&mut c, 2)
        .await
        .iter()
        .map(|p| p["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [1, 2]);
}

// ---------------------------------------------------------------------------------------------
// Issue 20, class 2: a key that recognises a redelivery must say where the message came from,
// and nothing may leave a source before it was delivered or dead-lettered.

fn url_for(server: &PostgresServer, database: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{}/{database}", server.port)
}

async fn wait_empty(url: &str, table: &str) {
    let db = pg(url).await;
    for _ in 0..100 {
        let n: i64 = db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{table} at {url} was never drained");
}

async fn dead_letters(url: &str) -> i64 {
    pg(url)
        .await
        .query_one("SELECT count(*) FROM herald_outbox_dead", &[])
        .await
        .unwrap()
        .get(0)
}

/// The issue's example, plus the cross-cluster member: sources on databases `svc_a` and `svc_b`
/// of one cluster and on the default database of a second cluster, all with the default
/// `herald_outbox`, each commit one row (all with id 1). Every row must be delivered; before
/// the fix only the first was, and the others were deleted from their outboxes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_of_different_databases_are_all_delivered() {
    let one = PostgresServer::start();
    let two = PostgresServer::start();
    let admin = pg(&one.url()).await;
    admin.batch_execute("CREATE DATABASE svc_a").await.unwrap();
    admin.batch_execute("CREATE DATABASE svc_b").await.unwrap();
    let urls = [url_for(&one, "svc_a"), url_for(&one, "svc_b"), two.url()];
    let mut toml = String::new();
    for url in &urls {
        herald_postgres::apply_install(url, "herald_outbox")
            .await
            .unwrap();
        toml.push_str(&source(url));
    }
    let s = TestServer::with_config(&config_toml(&toml)).await;
    wait_ready(&s).await;
    let mut c = s.client("alice").await;
    assert_eq!(c.subscribe("bench.feed").await["ok"], true);
    for (i, url) in urls.iter().enumerate() {
        let id: i64 = pg(url)
            .await
            .query_one(
                "SELECT herald_publish('bench.feed', jsonb_build_object('source', $1::int))",
                &[&(i as i32)],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(id, 1);
        // One at a time, so the first row is surely published before the next is read.
        let p = collect(&mut c, 1).await;
        assert_eq!(p[0]["data"]["source"], i, "row of {url} lost");
    }
    for url in &urls {
        wait_empty(url, "herald_outbox").await;
        assert_eq!(dead_letters(url).await, 0);
    }
}

/// Other members: the API's idempotency keys and the ones sources use must not recognise each
/// other. An API publish with key `order-42`, and one with the key the outbox used to give
/// row 1 (`outbox:herald_outbox:1`), must not swallow outbox rows; a NOTIFY payload's
/// `idempotency_key` is honoured within its source (sent twice, delivered once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_source_idempotency_keys_do_not_collide() {
    let server = setup().await;
    let s = gateway(&server, "").await;
    let mut c = s.client("alice").await;
    assert_eq!(c.subscribe("bench.feed").await["ok"], true);
    for key in ["order-42", "outbox:herald_outbox:1"] {
        let (status, _) = s
            .post(
                "/v1/publish",
                json!({"channel": "bench.feed", "data": {"via": "api", "key": key}, "idempotency_key": key}),
            )
            .await;
        assert_eq!(status, 200);
    }
    let db = pg(&server.url()).await;
    db.batch_execute(
        "SELECT herald_publish('bench.feed', '{\"via\": \"outbox\", \"key\": null}');
         SELECT herald_publish('bench.feed', '{\"via\": \"outbox\", \"key\": \"order-42\"}', 'order-42');",
    )
    .await
    .unwrap();
    let notify = r#"{"channel":"bench.feed","data":{"via":"notify","key":"order-42"},"idempotency_key":"order-42"}"#;
    db.batch_execute(&format!("NOTIFY app_events, '{notify}'"))
        .await
        .unwrap();
    let pubs = collect(&mut c, 5).await;
    db.batch_execute(&format!("NOTIFY app_events, '{notify}'"))
        .await
        .unwrap();
    assert!(
        c.silent_for(Duration::from_millis(1000)).await,
        "a NOTIFY redelivery (same idempotency_key) was published twice"
    );
    let mut seen: Vec<String> = pubs
        .iter()
        .map(|p| format!("{} {}", p["data"]["via"], p["data"]["key"]))
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        [
            "\"api\" \"order-42\"",
            "\"api\" \"outbox:herald_outbox:1\"",
            "\"notify\" \"order-42\"",
            "\"outbox\" \"order-42\"",
            "\"outbox\" null",
        ]
    );
}

/// Another member: an outbox whose ids start again (restored from a backup, sequence reset)
/// within the idempotency window. A reused id must not pass for a redelivery of the earlier
/// row, and a bad row with a reused id must still be dead-lettered, not deleted unrecorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_outbox_ids_are_delivered_or_dead_lettered() {
    let server = setup().await;
    let s = gateway(&server, "").await;
    let mut c = s.client("alice").await;
    assert_eq!(c.subscribe("blog.article.feed").await["ok"], true);
    let db = pg(&server.url()).await;
    let rows =
        "SELECT herald_publish('blog.article.feed', '{\"id\":\"1\",\"title\":\"round ROUND\"}');
                SELECT herald_publish('blog.article.feed', '{\"id\":2,\"title\":\"bad\"}');";
    db.batch_execute(&rows.replace("ROUND", "1")).await.unwrap();
    assert_eq!(collect(&mut c, 1).await[0]["data"]["title"], "round 1");
    wait_empty(&server.url(), "herald_outbox").await;
    db.batch_execute("ALTER SEQUENCE herald_outbox_id_seq RESTART")
        .await
        .unwrap();
    db.batch_execute(&rows.replace("ROUND", "2")).await.unwrap();
    let got = c.next_within(Duration::from_secs(5)).await;
    assert_eq!(
        got.as_ref().map(|p| p["data"]["title"].clone()),
        Some(json!("round 2")),
        "a row whose id was reused was taken for a redelivery and dropped"
    );
    wait_empty(&server.url(), "herald_outbox").await;
    assert_eq!(
        dead_letters(&server.url()).await,
        2,
        "a bad row vanished unrecorded"
    );
}

/// Issue 20, class 3 member: a NOTIFY payload goes through the same parser as
/// `POST /v1/publish`. Before the fix a repeated `channel` published to the last one and
/// unknown fields were ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_payloads_use_the_publish_parser() {
    let server = setup().await;
    let s = gateway(&server, "").await;
    let mut c = s.client("alice").await;
    assert_eq!(c.subscribe("bench.feed").await["ok"], true);
    assert_eq!(c.subscribe("history.small").await["ok"], true);
    let db = pg(&server.url()).await;
    db.batch_execute(
        r#"NOTIFY app_events, '{"channel":"history.small","channel":"bench.feed","data":{}}';
           NOTIFY app_events, '{"channel":"bench.feed","data":{},"extra":1}';
           NOTIFY app_events, '{"channel":"bench.feed","data":{"a":1,"a":2}}';
           NOTIFY app_events, '{"channel":"bench.feed","data":{},"idempotency_key":""}';
           NOTIFY app_events, '{"channel":"bench.feed","data":{"via":"notify"}}';"#,
    )
    .await
    .unwrap();
    let p = c.next().await;
    assert_eq!(
        p["data"]["via"], "notify",
        "a refused payload was published: {p}"
    );
    let metrics = s.metrics().await;
    assert!(
        metrics.contains(r#"herald_rejects_total{gate="publish",code="bad_request"} 4"#),
        "{metrics}"
    );
}
