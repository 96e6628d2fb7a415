//! Postgres as an event source.
//!
//! **The transactional outbox** is the durable path. An application calls
//! `herald_publish(channel, data, idempotency_key)` inside its own transaction: the row is
//! inserted with the domain change and `pg_notify` wakes the gateway at commit. A rolled-back
//! transaction leaves nothing; a committed one is delivered exactly once; a broker outage never
//! reaches the application's transaction.
//!
//! Ordering: `herald_publish` takes a transaction-scoped advisory lock on the channel before it
//! draws the row id, so rows of one channel get ids in commit order (sequence values are drawn
//! before commit, and without the lock a later id could commit first). The price: two
//! transactions publishing to the same channel serialize from their `herald_publish` call to
//! their commit. The consumer reads in id order and only one consumer works at a time (a
//! transaction-scoped advisory lock on the outbox), so several gateways may consume one outbox
//! without delivering a row twice or reordering a channel. Each row is published with the
//! idempotency key `outbox:<table>:<id>` (unless it brought its own), so a crash between the
//! publish and the delete does not deliver twice within the broker's idempotency window.
//!
//! Rows that can never be published (unknown channel, schema violation) move to the
//! `<table>_dead` table with the error, are logged and counted, and do not hold up the rows
//! after them. While the broker is unavailable, rows stay in the outbox and are retried.
//!
//! **Plain LISTEN/NOTIFY** is the light path: a `NOTIFY` payload `{"channel","data"}` on a
//! configured channel is validated and published. NOTIFY is fire-and-forget: events sent while
//! the gateway is disconnected are lost, and payloads are capped near 8000 bytes by Postgres.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use herald_core::config::PostgresSourceConfig;
use herald_core::protocol::ErrorCode;
use herald_core::source::{Publisher, SourceKind, is_permanent};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;

/// The NOTIFY channel `herald_publish` uses to wake consumers.
pub const WAKE_CHANNEL: &str = "herald_outbox";

/// The DDL for one outbox: table, dead-letter table and `herald_publish`.
pub fn install_sql(table: &str) -> String {
    format!(
        r#"CREATE TABLE IF NOT EXISTS {table} (
    id              bigserial PRIMARY KEY,
    channel         text        NOT NULL,
    data            jsonb       NOT NULL,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS {table}_dead (
    id              bigint      PRIMARY KEY,
    channel         text        NOT NULL,
    data            jsonb       NOT NULL,
    idempotency_key text,
    created_at      timestamptz NOT NULL,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    error           text        NOT NULL
);

-- Call inside the transaction that makes the domain change. The advisory lock orders the
-- rows of one channel by commit; pg_notify fires only if the transaction commits.
CREATE OR REPLACE FUNCTION herald_publish(channel text, data jsonb, idempotency_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('herald:' || channel, 0));
    INSERT INTO {table} (channel, data, idempotency_key)
    VALUES (herald_publish.channel, herald_publish.data, herald_publish.idempotency_key)
    RETURNING id INTO new_id;
    PERFORM pg_notify('{WAKE_CHANNEL}', '');
    RETURN new_id;
END;
$$;
"#
    )
}

/// Lock key that makes consumers of one outbox take turns.
fn consumer_lock_sql(table: &str) -> String {
    format!("SELECT pg_try_advisory_xact_lock(hashtextextended('herald-consumer:{table}', 0))")
}

/// Runs one source until `shutdown`: connects (and reconnects with backoff), LISTENs, drains
/// the outbox on every wake-up and every `poll_interval`, publishes NOTIFY payloads.
pub async fn run(
    cfg: PostgresSourceConfig,
    publisher: Arc<dyn Publisher>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = tokio::time::Instant::now();
        match session(&cfg, &publisher, &ready, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                ready.store(false, Ordering::SeqCst);
                tracing::warn!(table = %cfg.outbox_table, error = %e, "postgres source disconnected; retrying");
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(200);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One connection's life. Returns Ok on shutdown, Err when the connection is lost.
async fn session(
    cfg: &PostgresSourceConfig,
    publisher: &Arc<dyn Publisher>,
    ready: &AtomicBool,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let connect = tokio_postgres::connect(&cfg.url, NoTls);
    let (mut client, mut connection) = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (tx, mut notifications) = mpsc::unbounded_channel();
    // The connection future drives the socket; notifications come out of it as messages.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(Some((n.channel().to_owned(), n.payload().to_owned())));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "postgres connection error");
                    break;
                }
            }
        }
        let _ = tx.send(None);
    });
    let result = async {
        let mut listen = format!("LISTEN {WAKE_CHANNEL};");
        for n in &cfg.notify {
            listen.push_str(&format!("LISTEN {n};"));
        }
        client
            .batch_execute(&listen)
            .await
            .map_err(|e| e.to_string())?;
        ready.store(true, Ordering::SeqCst);
        tracing::info!(table = %cfg.outbox_table, "postgres source connected");
        loop {
            // Drain: whole batches mean there may be more.
            loop {
                let (taken, retry_later) = consume_batch(&mut client, cfg, publisher)
                    .await
                    .map_err(|e| e.to_string())?;
                if retry_later {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    break;
                }
                if taken < cfg.batch_size {
                    break;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(cfg.poll_interval) => {}
                n = notifications.recv() => match n.flatten() {
                    None => return Err("connection closed".to_owned()),
                    Some((channel, _)) if channel == WAKE_CHANNEL => {}
                    Some((channel, payload)) => notify(publisher, &channel, &payload).await,
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}

/// Publishes a raw NOTIFY payload; bad ones are logged and counted, never retried.
async fn notify(publisher: &Arc<dyn Publisher>, pg_channel: &str, payload: &str) {
    let parsed: Result<Value, _> = serde_json::from_str(payload);
    let (channel, data) = match &parsed {
        Ok(Value::Object(m)) => match (m.get("channel").and_then(Value::as_str), m.get("data")) {
            (Some(c), Some(d)) => (c, d),
            _ => {
                publisher.rejected(SourceKind::Notify, ErrorCode::BadRequest);
                tracing::warn!(pg_channel, "NOTIFY payload needs {{\"channel\",\"data\"}}");
                return;
            }
        },
        _ => {
            publisher.rejected(SourceKind::Notify, ErrorCode::BadRequest);
            tracing::warn!(pg_channel, "NOTIFY payload is not a JSON object");
            return;
        }
    };
    if let Err(e) = publisher
        .publish(SourceKind::Notify, channel, data, None)
        .await
    {
        tracing::warn!(pg_channel, channel, code = e.code.as_str(), error = %e.message, "NOTIFY payload refused");
    }
}

/// One transaction: take the consumer turn, read a batch in id order, publish, delete (or
/// dead-letter), commit. Returns (rows taken, whether to back off because the gateway could
/// not publish right now).
async fn consume_batch(
    client: &mut Client,
    cfg: &PostgresSourceConfig,
    publisher: &Arc<dyn Publisher>,
) -> Result<(usize, bool), tokio_postgres::Error> {
    let table = &cfg.outbox_table;
    let tx = client.transaction().await?;
    let turn: bool = tx.query_one(&consumer_lock_sql(table), &[]).await?.get(0);
    if !turn {
        // Another gateway is consuming; it will get these rows.
        tx.rollback().await?;
        return Ok((0, false));
    }
    let rows = tx
        .query(
            &format!(
                "SELECT id, channel, data::text, idempotency_key FROM {table} \
                 ORDER BY id LIMIT $1 FOR UPDATE"
            ),
            &[&(cfg.batch_size as i64)],
        )
        .await?;
    let mut done: Vec<i64> = Vec::with_capacity(rows.len());
    let mut retry_later = false;
    for row in &rows {
        let id: i64 = row.get(0);
        let channel: String = row.get(1);
        let text: String = row.get(2);
        let key: Option<String> = row.get(3);
        let data: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let key = key.unwrap_or_else(|| format!("outbox:{table}:{id}"));
        match publisher
            .publish(SourceKind::Outbox, &channel, &data, Some(key))
            .await
        {
            Ok(_) => done.push(id),
            Err(e) if is_permanent(e.code) => {
                tracing::warn!(id, channel, code = e.code.as_str(), error = %e.message, "outbox row dead-lettered");
                let error = match &e.pointer {
                    Some(p) => format!("{}: {} (at {p:?})", e.code.as_str(), e.message),
                    None => format!("{}: {}", e.code.as_str(), e.message),
                };
                tx.execute(
                    &format!(
                        "INSERT INTO {table}_dead (id, channel, data, idempotency_key, created_at, error) \
                         SELECT id, channel, data, idempotency_key, created_at, $2 FROM {table} WHERE id = $1 \
                         ON CONFLICT (id) DO NOTHING"
                    ),
                    &[&id, &error],
                )
                .await?;
                done.push(id);
            }
            Err(e) => {
                // The gateway cannot take it now (broker down): keep this row and the rest,
                // in order, for the next round.
                tracing::warn!(id, channel, error = %e.message, "outbox publish deferred");
                retry_later = true;
                break;
            }
        }
    }
    if !done.is_empty() {
        tx.execute(&format!("DELETE FROM {table} WHERE id = ANY($1)"), &[&done])
            .await?;
    }
    tx.commit().await?;
    Ok((rows.len(), retry_later))
}

/// Runs the install DDL (for `herald postgres install --apply`).
pub async fn apply_install(url: &str, table: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    let driver = tokio::spawn(connection);
    let result = client.batch_execute(&install_sql(table)).await;
    drop(client);
    let _ = driver.await;
    result
}
