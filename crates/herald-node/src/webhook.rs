//! Webhooks: the backend is told what happened on the node — clients connecting and
//! disconnecting, presence joins and leaves, channels becoming occupied and vacated on this
//! node — in signed batches.
//!
//! Each `[[webhook]]` has its own bounded queue and one delivery task. Emitting never waits:
//! an event that finds the queue full is dropped and counted
//! (`herald_webhook_dropped_total{reason="queue_full"}`), so a slow or dead endpoint costs a
//! bounded amount of memory and never slows a session. The task takes up to `batch_size`
//! events (waiting at most `batch_wait` for a batch to fill), POSTs `{"events":[…]}` through the
//! [`Backend`](crate::proxy::Backend) (signed), and on failure retries the same batch with
//! exponential backoff (250ms doubling to 30s, with jitter) up to `max_attempts`, then drops it
//! (counted, `reason="retries"`). Delivery is at least once: a retried batch may arrive twice
//! if an answer was lost; each event carries an `id` to deduplicate by.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_core::config::{ProxyConfig, WebhookConfig};
use rand::Rng;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::Node;

/// One thing that happened, as the backend receives it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unique per event (`<node>-e<n>`), to deduplicate retried deliveries.
    pub id: String,
    /// `client_connect`, `client_disconnect`, `channel_occupied`, `channel_vacated`,
    /// `presence_join`, `presence_leave`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When, in Unix milliseconds.
    pub at: u64,
    /// The connection (client and presence events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<Arc<str>>,
    /// Its user (`null` when anonymous; absent on channel events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Option<Arc<str>>>,
    /// The channel (channel and presence events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<Arc<str>>,
    /// The transport (client events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<&'static str>,
}

/// The webhooks of one node: a queue per `[[webhook]]`.
#[derive(Debug, Default)]
pub struct Webhooks {
    queues: Vec<(Vec<String>, String, mpsc::Sender<Event>)>,
    receivers: std::sync::Mutex<Vec<(WebhookConfig, mpsc::Receiver<Event>)>>,
    next: std::sync::atomic::AtomicU64,
}

impl Webhooks {
    /// Queues for `configs` (their tasks start with [`Node::start_webhooks`](crate::Node::start_webhooks)).
    pub fn new(configs: &[WebhookConfig]) -> Self {
        let mut queues = Vec::new();
        let mut receivers = Vec::new();
        for c in configs {
            let (tx, rx) = mpsc::channel(c.queue_size.max(1));
            queues.push((
                c.events.clone().unwrap_or_default(),
                c.name.clone().unwrap_or_default(),
                tx,
            ));
            receivers.push((c.clone(), rx));
        }
        Self {
            queues,
            receivers: std::sync::Mutex::new(receivers),
            next: Default::default(),
        }
    }

    /// Whether any webhook wants events of `kind` (callers skip building events nobody takes).
    pub fn wants(&self, kind: &str) -> bool {
        self.queues
            .iter()
            .any(|(events, ..)| events.iter().any(|e| e == kind))
    }
}

impl Node {
    /// Queues the event `make` builds for every webhook that wants `kind`; never waits, and
    /// builds nothing when no webhook wants it (the path of every subscribe and unsubscribe).
    pub fn emit(&self, kind: &'static str, make: impl FnOnce() -> Event) {
        let hooks = &self.webhooks;
        if !hooks.wants(kind) {
            return;
        }
        let mut event = make();
        event.kind = kind;
        let n = hooks
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Not a client id: those count connections. `e` keeps the two apart.
        event.id = format!("{}-e{n}", self.id());
        event.at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for (events, name, tx) in &hooks.queues {
            if events.iter().any(|e| e == event.kind) && tx.try_send(event.clone()).is_err() {
                self.metrics.webhook_dropped(name, "queue_full", 1);
            }
        }
    }

    /// Starts one delivery task per webhook (once; later calls do nothing). Needs a runtime.
    pub fn start_webhooks(self: &Arc<Self>) {
        let receivers = std::mem::take(&mut *crate::lock(&self.webhooks.receivers));
        for (config, rx) in receivers {
            tokio::spawn(deliver(self.clone(), config, rx));
        }
    }
}

#[cfg(test)]
impl Node {
    /// The webhooks' queues, for a unit test to read what the node emitted (nothing is
    /// delivered then).
    pub(crate) fn take_webhook_queues(&self) -> Vec<mpsc::Receiver<Event>> {
        std::mem::take(&mut *crate::lock(&self.webhooks.receivers))
            .into_iter()
            .map(|(_, rx)| rx)
            .collect()
    }
}

/// An event of `kind` with the fields of a connection filled in (the node sets `id`, `at`).
pub fn client_event(
    kind: &'static str,
    client: &Arc<str>,
    user: Option<&Arc<str>>,
    channel: Option<&Arc<str>>,
    transport: Option<&'static str>,
) -> Event {
    Event {
        id: String::new(),
        kind,
        at: 0,
        client: Some(client.clone()),
        user: Some(user.cloned()),
        channel: channel.cloned(),
        transport,
    }
}

/// A channel event (`channel_occupied`, `channel_vacated`).
pub fn channel_event(kind: &'static str, channel: &Arc<str>) -> Event {
    Event {
        id: String::new(),
        kind,
        at: 0,
        client: None,
        user: None,
        channel: Some(channel.clone()),
        transport: None,
    }
}

/// The delivery loop of one webhook: batch, POST, retry with backoff, until shutdown (then
/// one last attempt for what is queued).
async fn deliver(node: Arc<Node>, config: WebhookConfig, mut rx: mpsc::Receiver<Event>) {
    let name = config.name.clone().unwrap_or_default();
    let target = ProxyConfig {
        name: name.clone(),
        url: config.url.clone(),
        timeout: config.timeout,
        cache_ttl: Duration::ZERO,
        headers: Vec::new(),
    };
    let shutdown = node.shutdown.clone();
    let mut batch: Vec<Event> = Vec::with_capacity(config.batch_size);
    loop {
        // The first event of a batch: wait for it (or shutdown).
        let first = tokio::select! {
            e = rx.recv() => e,
            _ = shutdown.cancelled() => None,
        };
        let Some(first) = first else {
            // Shutdown (or every sender gone): what is queued gets one attempt.
            while let Ok(e) = rx.try_recv() {
                batch.push(e);
            }
            if !batch.is_empty() {
                let _ = post(&node, &target, &batch).await;
            }
            return;
        };
        batch.push(first);
        let fill_until = tokio::time::Instant::now() + config.batch_wait;
        while batch.len() < config.batch_size {
            match tokio::time::timeout_at(fill_until, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                _ => break,
            }
        }
        let mut wait = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            match post(&node, &target, &batch).await {
                Ok(()) => {
                    node.metrics.webhook_delivery(&name, "ok");
                    break;
                }
                Err(e) => {
                    node.metrics.webhook_delivery(&name, "error");
                    if attempt >= config.max_attempts {
                        tracing::warn!(webhook = %name, error = %e, events = batch.len(), "webhook batch dropped after retries");
                        node.metrics
                            .webhook_dropped(&name, "retries", batch.len() as u64);
                        break;
                    }
                    tracing::debug!(webhook = %name, error = %e, attempt, "webhook failed; retrying");
                    // Jitter: half to all of the wait, so nodes do not retry in lockstep.
                    let sleep = wait.mul_f64(rand::rng().random_range(0.5..=1.0));
                    tokio::select! {
                        _ = tokio::time::sleep(sleep) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                    attempt += 1;
                }
            }
        }
        batch.clear();
    }
}

/// POSTs one batch; `Err` with why it did not arrive.
async fn post(node: &Node, target: &ProxyConfig, batch: &[Event]) -> Result<(), String> {
    #[derive(Serialize)]
    struct Body<'a> {
        events: &'a [Event],
    }
    let Some(backend) = node.backend.get() else {
        return Err("no backend client on this node".into());
    };
    let body = serde_json::to_vec(&Body { events: batch }).map_err(|e| e.to_string())?;
    tokio::time::timeout(target.timeout, backend.post(target, body))
        .await
        .map_err(|_| format!("no answer within {:?}", target.timeout))?
        .map(|_| ())
        .map_err(|e| e.to_string())
}
