//! `[[source.nats]]`: a JetStream stream, read through a durable pull consumer.
//!
//! The consumer (created when missing, shared by every gateway under the same name) has
//! explicit acks and **at most one unacknowledged message** (`max_ack_pending = 1`): the
//! server hands the next message to whichever gateway asks only once the previous one was
//! acknowledged, so several gateways share the stream without duplicates and channels keep
//! the stream's order. A gateway that dies holding a message loses it to the next one after
//! `ack_wait`. The price is one round trip per message (see `docs/benchmarks.md`).
//!
//! The idempotency key is the stream sequence, scoped to the stream *and its creation time*:
//! a stream deleted and created again restarts its sequences, and those messages are new.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use herald_core::bus::NatsSourceConfig;
use herald_core::source::{Publisher, SourceKind, scoped_key};
use tokio_util::sync::CancellationToken;

use crate::{Consumer, Verdict, start};

/// The `/readyz` name and the metrics label of the `index`th (0-based) `[[source.nats]]`.
pub fn names(index: usize, cfg: &NatsSourceConfig) -> (String, String) {
    (
        format!(
            "nats source #{} ({}/{})",
            index + 1,
            cfg.stream,
            cfg.consumer
        ),
        format!("nats:{}/{}", cfg.stream, cfg.consumer),
    )
}

/// Runs the `index`th `[[source.nats]]` until `shutdown`, reconnecting with backoff.
pub fn run(
    index: usize,
    cfg: NatsSourceConfig,
    publisher: Arc<dyn Publisher>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let names = names(index, &cfg);
    let routes = cfg.routes.clone();
    start(
        SourceKind::Nats,
        names,
        routes,
        cfg,
        publisher,
        shutdown,
        session,
    )
}

/// One connection's life: Err when it is lost (the caller reconnects).
async fn session(
    cfg: Arc<NatsSourceConfig>,
    consumer: Arc<Consumer>,
    ready: Arc<AtomicBool>,
) -> Result<(), String> {
    let events_ready = ready.clone();
    // Set once the consumer is pulling: a reconnect before that (a missing stream, say)
    // must not report the source ready.
    let consuming = Arc::new(AtomicBool::new(false));
    let events_consuming = consuming.clone();
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        // The client reconnects by itself; `/readyz` follows it meanwhile.
        .event_callback(move |event| {
            let (ready, consuming) = (events_ready.clone(), events_consuming.clone());
            async move {
                match event {
                    async_nats::Event::Disconnected => ready.store(false, Ordering::SeqCst),
                    async_nats::Event::Connected if consuming.load(Ordering::SeqCst) => {
                        ready.store(true, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
        })
        .connect(&cfg.url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let js = jetstream::new(client);
    let mut stream = js
        .get_stream(&cfg.stream)
        .await
        .map_err(|e| format!("stream {:?}: {e}", cfg.stream))?;
    let created = stream
        .info()
        .await
        .map_err(|e| format!("stream info: {e}"))?
        .created
        .unix_timestamp_nanos();
    let scope = format!("nats:{}:{created}", cfg.stream);
    let pull: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &cfg.consumer,
            consumer::pull::Config {
                durable_name: Some(cfg.consumer.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: cfg.ack_wait,
                max_ack_pending: 1,
                filter_subject: cfg.filter_subject.clone().unwrap_or_default(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer {:?}: {e}", cfg.consumer))?;
    let mut messages = pull
        .stream()
        .max_messages_per_batch(16)
        .heartbeat(Duration::from_secs(1))
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| format!("pull: {e}"))?;
    consuming.store(true, Ordering::SeqCst);
    ready.store(true, Ordering::SeqCst);
    tracing::info!(stream = %cfg.stream, consumer = %cfg.consumer, "nats source consuming");
    loop {
        let message = match messages.next().await {
            None => return Err("the consumer stream ended".into()),
            Some(Err(e)) => return Err(format!("pull: {e}")),
            Some(Ok(m)) => m,
        };
        let info = message.info().map_err(|e| format!("message info: {e}"))?;
        let sequence = info.stream_sequence;
        consumer
            .stats
            .lag
            .store(info.pending, std::sync::atomic::Ordering::Relaxed);
        let key = scoped_key(&scope, &sequence.to_string());
        let subject = message.subject.to_string();
        let Some(verdict) = consumer.settle(&subject, &message.payload, Some(key)).await else {
            return Ok(());
        };
        if let Verdict::Dead(reason) = verdict
            && let Some(dead) = &cfg.dead_letter_subject
        {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Herald-Error", reason.replace(['\r', '\n'], " ").as_str());
            headers.insert("Herald-Subject", subject.as_str());
            headers.insert("Herald-Stream", cfg.stream.as_str());
            headers.insert("Herald-Sequence", sequence.to_string().as_str());
            // Through JetStream, and awaited: the dead letter is stored before the original
            // is acknowledged.
            js.publish_with_headers(dead.clone(), headers, message.payload.clone())
                .await
                .map_err(|e| format!("dead letter: {e}"))?
                .await
                .map_err(|e| format!("dead letter to {dead:?} not stored: {e}"))?;
        }
        message
            .ack()
            .await
            .map_err(|e| format!("ack {sequence}: {e}"))?;
    }
}
