//! Postgres as an event source.
//!
//! **The transactional outbox** is the durable path. An application calls
//! `herald_publish(channel, data, idempotency_key)` inside its own transaction: the row is
//! inserted with the domain change and `pg_notify` wakes the gateway at commit. A rolled-back
//! transaction leaves nothing; a committed one is delivered exactly once; a broker outage never
//! reaches the application's transaction.
//!
//! `herald_publish` takes no lock that can wait: it inserts one row (a fresh primary key, so no
//! other transaction can hold anything it needs) and queues a notification. It therefore cannot
//! deadlock, hit `lock_timeout` or run out of lock slots, whatever channels a transaction
//! publishes to, in whatever order, next to whatever locks the application holds.
//!
//! Ordering comes from the commit instead of a lock: a deferred constraint trigger stamps
//! each row with `commit_seq` from a sequence while its transaction commits, after the
//! application's last statement. If transaction B could see or had to wait for anything A did
//! (a row lock, a read of A's rows, B starting after A's commit), A had finished committing
//! before B reached its own commit, so A's rows carry smaller stamps. The consumer reads in
//! `commit_seq` order under one snapshot per batch; a snapshot that shows B committed also
//! shows A committed, so A's rows are never left behind B's. `docs/sources.md` states the
//! guarantee and its one caveat (`SET CONSTRAINTS ALL IMMEDIATE` stamps early).
//!
//! Only one consumer works at a time (a transaction-scoped advisory lock on the outbox), so
//! several gateways may consume one outbox without delivering a row twice or reordering a
//! channel. Each row is published with a redelivery key scoped to its source (cluster system
//! identifier, database oid, table oid), so a crash between the publish and the delete does
//! not deliver twice, and rows of two databases with the same id are never taken for each
//! other.
//!
//! Rows that can never be published (unknown channel, schema violation, bad idempotency key)
//! move to the `<table>_dead` table with the error, are logged and counted, and do not hold up
//! the rows after them. While the broker is unavailable, rows stay in the outbox and are
//! retried. No row is deleted before it was published or dead-lettered.
//!
//! **Plain LISTEN/NOTIFY** is the light path: a `NOTIFY` payload `{"channel","data"
//! [,"idempotency_key"]}` on a configured channel is parsed like a `POST /v1/publish` body,
//! validated and published. NOTIFY is fire-and-forget: events sent while the gateway is
//! disconnected are lost, and payloads are capped near 8000 bytes by Postgres.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use herald_core::config::PostgresSourceConfig;
use herald_core::input::{check_idempotency_key, parse_publish};
use herald_core::source::{Publisher, SourceKind, is_permanent, scoped_key};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;

/// The NOTIFY channel `herald_publish` uses to wake consumers.
pub const WAKE_CHANNEL: &str = "herald_outbox";

/// The DDL for one outbox: table, commit stamping, dead-letter table and `herald_publish`.
/// Idempotent, and upgrades an outbox installed by an earlier version in place.
pub fn install_sql(table: &str) -> String {
    format!(
        r#"CREATE TABLE IF NOT EXISTS {table} (
    id              bigserial PRIMARY KEY,
    channel         text        NOT NULL,
    data            jsonb       NOT NULL,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    commit_seq      bigint
);
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS commit_seq bigint;
CREATE SEQUENCE IF NOT EXISTS {table}_commit_seq;
-- Rows stamped by an earlier version (no commit_seq) go first, in id order.
CREATE INDEX IF NOT EXISTS {table}_commit_order ON {table} (commit_seq NULLS FIRST, id);

-- Stamps each row while its transaction commits (deferred to commit time), so rows are
-- consumed in commit order without herald_publish taking any lock. The UPDATE touches only
-- the row this transaction just inserted: it cannot wait for anybody.
CREATE OR REPLACE FUNCTION {table}_stamp_commit() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE {table} SET commit_seq = nextval('{table}_commit_seq') WHERE id = NEW.id;
    RETURN NULL;
END;
$$;
DROP TRIGGER IF EXISTS {table}_stamp_commit ON {table};
CREATE CONSTRAINT TRIGGER {table}_stamp_commit AFTER INSERT ON {table}
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {table}_stamp_commit();

-- Dead letters have their own key: outbox ids can repeat (a restored backup, a reset
-- sequence), and a dead letter must never be dropped because an old one had the same id.
CREATE TABLE IF NOT EXISTS {table}_dead (
    dead_id         bigserial   PRIMARY KEY,
    id              bigint      NOT NULL,
    channel         text        NOT NULL,
    data            jsonb       NOT NULL,
    idempotency_key text,
    created_at      timestamptz NOT NULL,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    error           text        NOT NULL
);
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = '{table}_dead'::regclass AND attname = 'dead_id'
                     AND NOT attisdropped) THEN
        ALTER TABLE {table}_dead DROP CONSTRAINT IF EXISTS {table}_dead_pkey;
        ALTER TABLE {table}_dead ADD COLUMN dead_id bigserial PRIMARY KEY;
    END IF;
END;
$$;

-- Call inside the transaction that makes the domain change. It takes no lock that can wait
-- (a fresh row, a queued notification), so it cannot deadlock or time out, whatever the
-- channels, their order and the application's own locks. pg_notify fires only on commit.
-- Both functions keep the search_path of the installation: the caller's own path (another
-- schema with its own herald_outbox, or none) must not change which table they write.
CREATE OR REPLACE FUNCTION herald_publish(channel text, data jsonb, idempotency_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    new_id bigint;
BEGIN
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

/// Where a source's messages come from, as the database itself names it: the cluster's
/// system identifier and the database's oid (unlike a URL, the same for every spelling of the
/// address, and different for two clusters that both have a database called `app`).
#[derive(Debug, Clone)]
struct Origin {
    /// `pg:<system identifier>:<database oid>`.
    database: String,
    /// `<database>:<outbox table oid>`: the scope of outbox rows.
    outbox: String,
}

async fn origin(client: &Client, table: &str) -> Result<Origin, String> {
    let row = client
        .query_one(
            "SELECT (SELECT system_identifier::text FROM pg_control_system()), \
                    (SELECT oid::bigint FROM pg_database WHERE datname = current_database()), \
                    to_regclass($1)::oid::bigint",
            &[&table],
        )
        .await
        .map_err(|e| e.to_string())?;
    let system: String = row.get(0);
    let database: i64 = row.get(1);
    let outbox: Option<i64> = row.get(2);
    let outbox = outbox.ok_or_else(|| {
        format!("outbox table {table:?} does not exist (run `herald postgres install`)")
    })?;
    let database = format!("pg:{system}:{database}");
    Ok(Origin {
        outbox: format!("{database}:{outbox}"),
        database,
    })
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
        let origin = origin(&client, &cfg.outbox_table).await?;
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
                let (taken, retry_later) = consume_batch(&mut client, cfg, &origin, publisher)
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
                    Some((channel, payload)) => notify(publisher, &origin, &channel, &payload).await,
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}

/// Publishes a raw NOTIFY payload, parsed exactly like a `POST /v1/publish` body; bad ones are
/// logged and counted, never retried. A payload's `idempotency_key` is scoped to this
/// database and NOTIFY channel.
async fn notify(publisher: &Arc<dyn Publisher>, origin: &Origin, pg_channel: &str, payload: &str) {
    let input = match parse_publish(payload) {
        Ok(input) => input,
        Err(e) => {
            publisher.rejected(SourceKind::Notify, e.code);
            tracing::warn!(pg_channel, error = %e.message, "NOTIFY payload refused");
            return;
        }
    };
    let key = input
        .idempotency_key
        .map(|k| scoped_key(&format!("{}:notify:{pg_channel}", origin.database), &k));
    if let Err(e) = publisher
        .publish(SourceKind::Notify, &input.channel, &input.data, key)
        .await
    {
        tracing::warn!(pg_channel, channel = %input.channel, code = e.code.as_str(), error = %e.message, "NOTIFY payload refused");
    }
}

/// One transaction: take the consumer turn, read a batch in commit order, publish, delete (or
/// dead-letter), commit. Returns (rows taken, whether to back off because the gateway could
/// not publish right now).
async fn consume_batch(
    client: &mut Client,
    cfg: &PostgresSourceConfig,
    origin: &Origin,
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
                "SELECT id, channel, data::text, idempotency_key, \
                        (extract(epoch FROM created_at) * 1000000)::bigint \
                 FROM {table} ORDER BY commit_seq NULLS FIRST, id LIMIT $1 FOR UPDATE"
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
        let created: i64 = row.get(4);
        // jsonb's text form keeps numbers exactly (Postgres `numeric`); the gateway keeps
        // these bytes (whitespace aside), so nothing is rounded on the way to the browser.
        let data = RawValue::from_string(text)
            .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"));
        // Scoped to this outbox: the same id (or key) in another database, table or cluster,
        // or from the API, is another message. The creation time tells a reused id (restored
        // backup, reset sequence) from a redelivery of the same row.
        let key = match &key {
            None => Ok(scoped_key(&origin.outbox, &format!("row:{id}:{created}"))),
            Some(k) => check_idempotency_key(k)
                .map(|()| scoped_key(&origin.outbox, &format!("key:{k}")))
                .inspect_err(|e| publisher.rejected(SourceKind::Outbox, e.code)),
        };
        let result = match key {
            Ok(key) => {
                publisher
                    .publish(SourceKind::Outbox, &channel, &data, Some(key))
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
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
                         SELECT id, channel, data, idempotency_key, created_at, $2 FROM {table} WHERE id = $1"
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
