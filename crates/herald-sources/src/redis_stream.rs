//! `[[source.redis_stream]]`: a Redis stream, read through a consumer group.
//!
//! Entries are read with `XREADGROUP` and acknowledged with `XACK` once the broker accepted the
//! publication. A consumer group alone hands entries to every reader in turn, which would
//! reorder a channel across gateways; so one gateway at a time reads, under a **lease** (a key
//! `SET NX PX`, renewed by its holder). A gateway that takes the lease first claims every entry
//! left pending by the group (`XAUTOCLAIM`: a crashed holder's unacknowledged entries) and
//! publishes those, oldest first, before new ones. A crash between publish and `XACK` is
//! therefore redelivered by whoever holds the lease next, and deduplicated by the broker
//! through the entry id.
//!
//! An entry carries its message (JSON) in `payload_field` (default `data`) and, optionally,
//! the subject routes match in `subject_field` (default `subject`; else the stream's key).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald_core::bus::RedisStreamSourceConfig;
use herald_core::source::{Publisher, SourceKind, scoped_key};
use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::{Consumer, Verdict, instance_name, start};

/// Takes or renews the lease: set when free or already ours.
const LEASE_SCRIPT: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0";

/// The `/readyz` name and the metrics label of the `index`th (0-based) `[[source.redis_stream]]`.
pub fn names(index: usize, cfg: &RedisStreamSourceConfig) -> (String, String) {
    (
        format!(
            "redis_stream source #{} ({}/{})",
            index + 1,
            cfg.stream,
            cfg.group
        ),
        format!("redis_stream:{}/{}", cfg.stream, cfg.group),
    )
}

/// Runs the `index`th `[[source.redis_stream]]` until `shutdown`, reconnecting with backoff.
pub fn run(
    index: usize,
    cfg: RedisStreamSourceConfig,
    publisher: Arc<dyn Publisher>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let names = names(index, &cfg);
    let routes = cfg.routes.clone();
    let me: Arc<str> = instance_name().into();
    start(
        SourceKind::RedisStream,
        names,
        routes,
        cfg,
        publisher,
        shutdown,
        move |cfg, consumer, ready| session(cfg, consumer, ready, me.clone()),
    )
}

fn err(what: &str) -> impl Fn(redis::RedisError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// One connection's life: Err when it is lost (the caller reconnects).
async fn session(
    cfg: Arc<RedisStreamSourceConfig>,
    consumer: Arc<Consumer>,
    ready: Arc<AtomicBool>,
    me: Arc<str>,
) -> Result<(), String> {
    let client = redis::Client::open(cfg.url.as_str()).map_err(err("url"))?;
    // Each wait for entries is bounded by a third of the lease, so the holder renews in time;
    // replies get that long plus a margin.
    let block = (cfg.lease / 3).min(Duration::from_secs(1));
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(block + Duration::from_secs(2)));
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(err("connect"))?;
    let created: Result<Value, _> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&cfg.stream)
        .arg(&cfg.group)
        .arg(&cfg.start)
        .arg("MKSTREAM")
        .query_async(&mut con)
        .await;
    if let Err(e) = created
        && e.code() != Some("BUSYGROUP")
    {
        return Err(format!("XGROUP CREATE: {e}"));
    }
    ready.store(true, Ordering::SeqCst);
    tracing::info!(stream = %cfg.stream, group = %cfg.group, consumer = %me, "redis stream source connected");
    let lease_key = format!("herald:lease:{}:{}", cfg.stream, cfg.group);
    let lease_ms = cfg.lease.as_millis().to_string();
    let scope = format!("redis:{}", cfg.stream);
    let script = redis::Script::new(LEASE_SCRIPT);
    let mut holder = false;
    // "0" while this consumer may have pending entries to go through, then ">" (new ones).
    let mut from = "0";
    loop {
        if !renew(&mut con, &script, &lease_key, &me, &lease_ms).await? {
            if holder {
                tracing::warn!(stream = %cfg.stream, "redis stream lease lost to another gateway");
            }
            holder = false;
            lag(&mut con, &cfg, &consumer).await?;
            tokio::time::sleep(block).await;
            continue;
        }
        let mut renewed = tokio::time::Instant::now();
        if !holder {
            holder = true;
            claim_pending(&mut con, &cfg, &me).await?;
            from = "0";
        }
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(&cfg.group)
            .arg(&*me)
            .arg("COUNT")
            .arg(cfg.batch_size);
        if from == ">" {
            read.arg("BLOCK").arg(block.as_millis() as u64);
        }
        let reply: Value = read
            .arg("STREAMS")
            .arg(&cfg.stream)
            .arg(from)
            .query_async(&mut con)
            .await
            .map_err(err("XREADGROUP"))?;
        let entries = stream_entries(reply);
        if entries.is_empty() {
            // Our pending list is done (or nothing new came): read new entries next.
            from = ">";
            lag(&mut con, &cfg, &consumer).await?;
            continue;
        }
        for (id, fields) in entries {
            // A slow batch (the broker down, publishes retried) keeps the lease; if it was
            // lost anyway, the rest stays pending for the new holder, in order.
            if renewed.elapsed() >= block {
                if !renew(&mut con, &script, &lease_key, &me, &lease_ms).await? {
                    break;
                }
                renewed = tokio::time::Instant::now();
            }
            if fields.is_empty() {
                // Deleted from the stream (XDEL, trimming) while pending: nothing to publish.
                ack(&mut con, &cfg, &id).await?;
                continue;
            }
            let verdict = match field(&fields, &cfg.payload_field) {
                None => consumer.malformed(
                    &cfg.stream,
                    format!("the entry has no field {:?}", cfg.payload_field),
                ),
                Some(payload) => {
                    let subject = field(&fields, &cfg.subject_field)
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .unwrap_or_else(|| cfg.stream.clone());
                    let key = scoped_key(&scope, &id);
                    match consumer.settle(&subject, payload, Some(key)).await {
                        Some(v) => v,
                        None => return Ok(()),
                    }
                }
            };
            if let Verdict::Dead(reason) = &verdict
                && let Some(dead) = &cfg.dead_letter_stream
            {
                let mut add = redis::cmd("XADD");
                add.arg(dead)
                    .arg("*")
                    .arg("error")
                    .arg(reason)
                    .arg("stream")
                    .arg(&cfg.stream)
                    .arg("id")
                    .arg(&id);
                for (k, v) in &fields {
                    add.arg(k).arg(v);
                }
                let _: Value = add
                    .query_async(&mut con)
                    .await
                    .map_err(err("dead letter XADD"))?;
            }
            ack(&mut con, &cfg, &id).await?;
        }
    }
}

/// Takes or renews the consumer lease; false when another gateway holds it.
async fn renew(
    con: &mut MultiplexedConnection,
    script: &redis::Script,
    key: &str,
    me: &str,
    lease_ms: &str,
) -> Result<bool, String> {
    let held: i64 = script
        .key(key)
        .arg(me)
        .arg(lease_ms)
        .invoke_async(con)
        .await
        .map_err(err("lease"))?;
    Ok(held == 1)
}

async fn ack(
    con: &mut MultiplexedConnection,
    cfg: &RedisStreamSourceConfig,
    id: &str,
) -> Result<(), String> {
    let _: Value = redis::cmd("XACK")
        .arg(&cfg.stream)
        .arg(&cfg.group)
        .arg(id)
        .query_async(con)
        .await
        .map_err(err("XACK"))?;
    Ok(())
}

/// Moves every entry pending in the group (a previous holder's, crashed or not) to `me`, so
/// the `XREADGROUP … 0` that follows publishes them first, oldest first.
async fn claim_pending(
    con: &mut MultiplexedConnection,
    cfg: &RedisStreamSourceConfig,
    me: &str,
) -> Result<(), String> {
    let mut cursor = "0-0".to_owned();
    loop {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&cfg.stream)
            .arg(&cfg.group)
            .arg(me)
            .arg(0)
            .arg(&cursor)
            .arg("COUNT")
            .arg(1000)
            .arg("JUSTID")
            .query_async(con)
            .await
            .map_err(err("XAUTOCLAIM"))?;
        let Value::Array(parts) = reply else {
            return Err("XAUTOCLAIM: unexpected reply".into());
        };
        cursor = parts.first().and_then(text).unwrap_or_else(|| "0-0".into());
        if cursor == "0-0" {
            return Ok(());
        }
    }
}

/// Reads the group's lag (Redis 7: entries not yet delivered to the group) into the stats.
async fn lag(
    con: &mut MultiplexedConnection,
    cfg: &RedisStreamSourceConfig,
    consumer: &Consumer,
) -> Result<(), String> {
    let reply: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&cfg.stream)
        .query_async(con)
        .await
        .map_err(err("XINFO GROUPS"))?;
    let Value::Array(groups) = reply else {
        return Ok(());
    };
    for group in groups {
        let pairs: Vec<(String, Value)> = match group {
            Value::Array(items) => items
                .chunks(2)
                .filter_map(|kv| Some((text(&kv[0])?, kv.get(1)?.clone())))
                .collect(),
            Value::Map(items) => items
                .into_iter()
                .filter_map(|(k, v)| Some((text(&k)?, v)))
                .collect(),
            _ => continue,
        };
        let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        if get("name").and_then(text).as_deref() == Some(cfg.group.as_str()) {
            let pending = match get("pending") {
                Some(Value::Int(n)) => *n as u64,
                _ => 0,
            };
            let undelivered = match get("lag") {
                Some(Value::Int(n)) => *n as u64,
                _ => 0,
            };
            consumer
                .stats
                .lag
                .store(pending + undelivered, Ordering::Relaxed);
        }
    }
    Ok(())
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// `XREADGROUP`'s reply for one stream as `(id, fields)`; entries deleted while pending
/// (nil fields) come with no fields.
fn stream_entries(reply: Value) -> Vec<(String, Fields)> {
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in streams {
        let Value::Array(mut pair) = s else { continue };
        let Some(Value::Array(entries)) = pair.pop() else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut e) = entry else { continue };
            if e.len() != 2 {
                continue;
            }
            let fields = e.pop();
            let Some(id) = e.first().and_then(text) else {
                continue;
            };
            let fields = match fields {
                Some(Value::Array(f)) => f
                    .chunks(2)
                    .filter_map(|kv| Some((bytes(&kv[0])?, bytes(kv.get(1)?)?)))
                    .collect(),
                _ => Vec::new(),
            };
            out.push((id, fields));
        }
    }
    out
}

fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(k, _)| k == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    bytes(v).map(|b| String::from_utf8_lossy(&b).into_owned())
}
