//! `[[source.amqp]]`: a RabbitMQ queue (AMQP 0-9-1), consumed with manual acknowledgements.
//!
//! The queue is declared durable with `x-single-active-consumer = true` (a no-op when it
//! already exists with those arguments): RabbitMQ then delivers to one consumer at a time and
//! fails over to the next when it goes away, so several gateways share the queue without
//! reordering it. Deliveries are published one at a time, in order, and acknowledged after the
//! broker accepted the publication; a gateway that dies leaves its unacknowledged deliveries
//! to be requeued (with `redelivered` set) to the next consumer.
//!
//! A redelivery is recognised by the message's `message-id` property (or the header named by
//! `message_id_header`). Messages without one are still delivered at least once, but a
//! redelivery of one is published again: give messages an id.
//!
//! Dead letters go to `dead_letter_exchange` with the original routing key and an
//! `x-herald-error` header, with publisher confirms, before the original is acknowledged;
//! without that setting they are rejected without requeue (the queue's own `x-dead-letter-
//! exchange` policy, if any, takes them, with RabbitMQ's `x-death` reason `rejected`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use herald_core::bus::AmqpSourceConfig;
use herald_core::source::{Publisher, SourceKind, scoped_key};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use crate::{Consumer, Verdict, instance_name, start};

/// How often the queue's depth (the lag) is read.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// How long the lag probe and the goodbye may wait for RabbitMQ.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The `/readyz` name and the metrics label of the `index`th (0-based) `[[source.amqp]]`.
pub fn names(index: usize, cfg: &AmqpSourceConfig) -> (String, String) {
    (
        format!("amqp source #{} ({})", index + 1, cfg.queue),
        format!("amqp:{}", cfg.queue),
    )
}

/// Runs the `index`th `[[source.amqp]]` until `shutdown`, reconnecting with backoff.
pub fn run(
    index: usize,
    cfg: AmqpSourceConfig,
    publisher: Arc<dyn Publisher>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let names = names(index, &cfg);
    let routes = cfg.routes.clone();
    start(
        SourceKind::Amqp,
        names,
        routes,
        cfg,
        publisher,
        shutdown,
        session,
    )
}

fn err(what: &str) -> impl Fn(lapin::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The queue's arguments: one active consumer at a time, so the queue's order is the
/// channels' order whatever the number of gateways.
fn queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args
}

/// One connection's life: Err when it is lost (the caller reconnects).
async fn session(
    cfg: Arc<AmqpSourceConfig>,
    consumer: Arc<Consumer>,
    ready: Arc<AtomicBool>,
) -> Result<(), String> {
    let connection = tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(&cfg.url, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(err("connect"))?;
    let result = consume(&cfg, &consumer, &ready, &connection).await;
    if result.is_err() {
        // Down now, not after the goodbye below, which may wait on a peer that is gone.
        ready.store(false, Ordering::SeqCst);
    }
    // Bounded: a connection that broke may never answer the close.
    let _ = tokio::time::timeout(
        REQUEST_TIMEOUT,
        connection.close(200, "herald source stopping".into()),
    )
    .await;
    result
}

async fn consume(
    cfg: &AmqpSourceConfig,
    consumer: &Consumer,
    ready: &AtomicBool,
    connection: &Connection,
) -> Result<(), String> {
    let channel = connection.create_channel().await.map_err(err("channel"))?;
    channel
        .basic_qos(cfg.prefetch, BasicQosOptions::default())
        .await
        .map_err(err("basic.qos"))?;
    let queue: ShortString = cfg.queue.as_str().into();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.clone(), durable, queue_arguments())
        .await
        .map_err(err("queue.declare"))?;
    for b in &cfg.bindings {
        channel
            .queue_bind(
                queue.clone(),
                b.exchange.as_str().into(),
                b.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err("queue.bind"))?;
    }
    // Dead letters on a channel of their own with publisher confirms: the consuming channel's
    // acknowledgements never wait behind a confirm.
    let dead_channel = match &cfg.dead_letter_exchange {
        None => None,
        Some(_) => {
            let c = connection.create_channel().await.map_err(err("channel"))?;
            c.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(err("confirm.select"))?;
            Some(c)
        }
    };
    let mut deliveries = channel
        .basic_consume(
            queue.clone(),
            instance_name().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err("basic.consume"))?;
    ready.store(true, Ordering::SeqCst);
    tracing::info!(queue = %cfg.queue, "amqp source consuming");
    let scope = format!("amqp:{}", cfg.queue);
    let mut lag_tick = tokio::time::interval(LAG_EVERY);
    loop {
        let delivery = tokio::select! {
            d = deliveries.next() => d,
            _ = lag_tick.tick() => {
                // Also the liveness probe of an idle connection: a RabbitMQ that is cut off
                // (no reset ever comes) or gone shows here within a request timeout, not
                // after the heartbeat's minutes.
                tokio::time::timeout(REQUEST_TIMEOUT, lag(&channel, &queue, consumer))
                    .await
                    .map_err(|_| "queue.declare passive: timed out".to_owned())??;
                continue;
            }
        };
        let delivery = match delivery {
            None => return Err("the consumer was cancelled".into()),
            Some(Err(e)) => return Err(format!("delivery: {e}")),
            Some(Ok(d)) => d,
        };
        let subject = delivery.routing_key.to_string();
        let id = message_id(&delivery.properties, cfg.message_id_header.as_deref());
        let key = id.as_deref().map(|id| scoped_key(&scope, id));
        let Some(verdict) = consumer.settle(&subject, &delivery.data, key).await else {
            return Ok(());
        };
        match (&verdict, &cfg.dead_letter_exchange, &dead_channel) {
            (Verdict::Dead(reason), Some(exchange), Some(dead)) => {
                publish_dead(dead, exchange, &delivery, reason).await?;
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(err("basic.ack"))?;
            }
            (Verdict::Dead(_), _, _) => {
                delivery
                    .nack(BasicNackOptions {
                        requeue: false,
                        multiple: false,
                    })
                    .await
                    .map_err(err("basic.nack"))?;
            }
            _ => {
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(err("basic.ack"))?;
            }
        }
    }
}

/// Publishes a dead letter (the original body and properties, plus `x-herald-error`) and waits
/// for the broker's confirm.
async fn publish_dead(
    channel: &Channel,
    exchange: &str,
    delivery: &lapin::message::Delivery,
    reason: &str,
) -> Result<(), String> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        "x-herald-error".into(),
        AMQPValue::LongString(reason.into()),
    );
    headers.insert(
        "x-herald-routing-key".into(),
        AMQPValue::LongString(delivery.routing_key.as_str().into()),
    );
    let properties = delivery.properties.clone().with_headers(headers);
    let confirm = channel
        .basic_publish(
            exchange.into(),
            delivery.routing_key.clone(),
            BasicPublishOptions::default(),
            &delivery.data,
            properties,
        )
        .await
        .map_err(err("dead letter publish"))?
        .await
        .map_err(err("dead letter confirm"))?;
    if confirm.is_ack() {
        Ok(())
    } else {
        Err(format!(
            "dead letter to exchange {exchange:?} not confirmed"
        ))
    }
}

/// The redelivery id: the header named `header` when configured, else `message-id`.
fn message_id(properties: &BasicProperties, header: Option<&str>) -> Option<String> {
    match header {
        None => properties.message_id().as_ref().map(|m| m.to_string()),
        Some(name) => {
            let headers = properties.headers().as_ref()?;
            match headers.inner().get(name)? {
                AMQPValue::LongString(s) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                AMQPValue::ShortString(s) => Some(s.to_string()),
                AMQPValue::LongLongInt(n) => Some(n.to_string()),
                AMQPValue::LongInt(n) => Some(n.to_string()),
                AMQPValue::LongUInt(n) => Some(n.to_string()),
                _ => None,
            }
        }
    }
}

/// Reads the queue's depth (messages ready, not yet delivered) into the stats.
async fn lag(channel: &Channel, queue: &ShortString, consumer: &Consumer) -> Result<(), String> {
    let q = channel
        .queue_declare(
            queue.clone(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(err("queue.declare passive"))?;
    consumer
        .stats
        .lag
        .store(u64::from(q.message_count()), Ordering::Relaxed);
    Ok(())
}
