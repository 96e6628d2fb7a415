//! `[[source.nats]]` against a real `nats-server -js` each test starts (free port, its own
//! store directory), through the scenarios every bus source passes (`bus/mod.rs`).

mod bus;

use async_nats::jetstream::{self, stream};
use bus::Bus;
use herald_testkit::NatsServer;

/// A JetStream server with the application's stream (`EVENTS`) and a dead-letter stream.
struct Nats {
    server: NatsServer,
    js: jetstream::Context,
}

impl Nats {
    async fn start() -> Self {
        let server = NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client);
        for (name, subjects) in [
            ("EVENTS", vec!["orders.>", "users.>", "billing.>"]),
            ("DEAD", vec!["dead.events"]),
        ] {
            js.create_stream(stream::Config {
                name: name.into(),
                subjects: subjects.into_iter().map(Into::into).collect(),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .unwrap();
        }
        Nats { server, js }
    }

    /// The outage scenario kills the server: always its own.
    async fn start_own() -> Self {
        Self::start().await
    }
}

impl Bus for Nats {
    const KIND: &'static str = "nats";

    fn source(&self) -> String {
        format!(
            "[[source.nats]]\nurl = \"{}\"\nstream = \"EVENTS\"\nack_wait = \"1s\"\n\
             dead_letter_subject = \"dead.events\"\n",
            self.server.url()
        )
    }

    fn metrics_name(&self) -> String {
        "nats:EVENTS/herald".into()
    }

    async fn publish(&self, subject: &str, payload: &[u8], _id: u64) {
        // Acknowledged by JetStream: stored.
        self.js
            .publish(subject.to_owned(), payload.to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn dead_letters(&self) -> Vec<(String, Vec<u8>)> {
        let mut dead = self.js.get_stream("DEAD").await.unwrap();
        let last = dead.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            let m = dead.get_raw_message(seq).await.unwrap();
            let reason = m
                .headers
                .get("Herald-Error")
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            out.push((reason, m.payload.to_vec()));
        }
        out
    }

    fn kill(&mut self) {
        self.server.kill();
    }

    async fn restart(&mut self) {
        tokio::task::block_in_place(|| self.server.restart());
    }
}

bus_scenarios!(Nats);
