//! `[[source.amqp]]` against a real `rabbitmq-server`, through the scenarios every bus source
//! passes (`bus/mod.rs`). RabbitMQ takes seconds to boot, so the tests of this binary share
//! one node (each with its own queue and exchanges), except the outage scenario, which kills
//! and restarts a node of its own.

mod bus;

use std::sync::{Mutex, OnceLock};

use bus::Bus;
use herald_testkit::{HoldProxy, RabbitMqServer, RedisServer};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

static SHARED: OnceLock<RabbitMqServer> = OnceLock::new();

enum Node {
    Shared(&'static RabbitMqServer),
    Own(RabbitMqServer),
}

impl Node {
    fn get(&self) -> &RabbitMqServer {
        match self {
            Node::Shared(s) => s,
            Node::Own(s) => s,
        }
    }
}

/// One test's topology on a node: a topic exchange the services publish to, the gateway's
/// queue (declared and bound by the gateway), a dead-letter exchange and a queue behind it.
struct Amqp {
    node: Node,
    /// Where the gateway reaches RabbitMQ, when not straight at the node (a proxy).
    via: Option<u16>,
    suffix: String,
    channel: Mutex<Option<Channel>>,
    dead: Mutex<Vec<(String, Vec<u8>)>>,
}

async fn open(url: &str) -> Channel {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // The connection lives as long as its channel is used.
    std::mem::forget(conn);
    channel
}

impl Amqp {
    async fn on(node: Node) -> Self {
        let suffix = format!("{:x}", rand_u64());
        let channel = open(&node.get().url()).await;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                format!("events.{suffix}").as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .exchange_declare(
                format!("dead.{suffix}").as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await
            .unwrap();
        let queue = format!("dead.q.{suffix}");
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                format!("dead.{suffix}").as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Amqp {
            node,
            via: None,
            suffix,
            channel: Mutex::new(Some(channel)),
            dead: Mutex::default(),
        }
    }

    async fn start() -> Self {
        let node = tokio::task::block_in_place(|| SHARED.get_or_init(RabbitMqServer::start));
        Self::on(Node::Shared(node)).await
    }

    /// The outage scenario kills the node: a node of its own.
    async fn start_own() -> Self {
        let node = tokio::task::block_in_place(RabbitMqServer::start);
        Self::on(Node::Own(node)).await
    }

    fn channel(&self) -> Channel {
        self.channel
            .lock()
            .unwrap()
            .clone()
            .expect("the node is up")
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

impl Bus for Amqp {
    const KIND: &'static str = "amqp";

    fn source(&self) -> String {
        let s = &self.suffix;
        format!(
            "[[source.amqp]]\nurl = \"{}\"\nqueue = \"herald.{s}\"\n\
             bindings = [{{ exchange = \"events.{s}\", routing_key = \"#\" }}]\n\
             dead_letter_exchange = \"dead.{s}\"\n",
            match self.via {
                Some(port) => format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
                None => self.node.get().url(),
            }
        )
    }

    fn metrics_name(&self) -> String {
        format!("amqp:herald.{}", self.suffix)
    }

    async fn publish(&self, subject: &str, payload: &[u8], id: u64) {
        let properties = BasicProperties::default()
            .with_message_id(id.to_string().as_str().into())
            .with_delivery_mode(2);
        let confirm = self
            .channel()
            .basic_publish(
                format!("events.{}", self.suffix).as_str().into(),
                subject.into(),
                BasicPublishOptions::default(),
                payload,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "the node stored it");
    }

    async fn dead_letters(&self) -> Vec<(String, Vec<u8>)> {
        let channel = self.channel();
        let queue = format!("dead.q.{}", self.suffix);
        while let Some(m) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let reason = m
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| match h.inner().get("x-herald-error") {
                    Some(AMQPValue::LongString(s)) => {
                        Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    _ => None,
                })
                .unwrap_or_default();
            self.dead
                .lock()
                .unwrap()
                .push((reason, m.delivery.data.clone()));
        }
        self.dead.lock().unwrap().clone()
    }

    fn kill(&mut self) {
        *self.channel.lock().unwrap() = None;
        match &mut self.node {
            Node::Own(s) => s.kill(),
            Node::Shared(_) => panic!("the shared node is never killed"),
        }
    }

    async fn restart(&mut self) {
        if let Node::Own(s) = &mut self.node {
            tokio::task::block_in_place(|| s.restart());
        }
        let channel = open(&self.node.get().url()).await;
        *self.channel.lock().unwrap() = Some(channel);
    }
}

bus_scenarios!(Amqp);

/// A RabbitMQ that stops answering without closing the connection (a partition, a hung node:
/// no reset ever comes) takes the source down in seconds, not after AMQP's heartbeat: the
/// lag probe each second is bounded (5 s), and the goodbye after it too. Before: the probe
/// waited for an answer that never came, and /readyz said ready for as long as that lasted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_that_stops_answering_takes_the_source_down() {
    let mut bus = Amqp::start().await;
    let proxy = HoldProxy::start(bus.node.get().port);
    bus.via = Some(proxy.port);
    let redis = RedisServer::start();
    let g = bus::Gateway::start(&bus, &redis.url()).await;
    proxy.hold_replies();
    let held = std::time::Instant::now();
    g.wait_ready(false).await;
    assert!(
        held.elapsed() < std::time::Duration::from_secs(15),
        "down after {:?}",
        held.elapsed()
    );
}
