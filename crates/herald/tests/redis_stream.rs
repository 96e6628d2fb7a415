//! `[[source.redis_stream]]` against a real `redis-server` each test starts (free port,
//! append-only file, so a restart keeps the stream), through the scenarios every bus source
//! passes (`bus/mod.rs`).

mod bus;

use bus::Bus;
use herald_testkit::RedisServer;
use redis::aio::ConnectionManager;

/// A stream entry's fields, in order.
type Fields = Vec<(String, Vec<u8>)>;

/// A Redis holding the application's stream (`events`) and the dead-letter stream.
struct RedisStream {
    server: RedisServer,
    con: ConnectionManager,
}

impl RedisStream {
    async fn start() -> Self {
        let server = RedisServer::start_durable();
        let client = redis::Client::open(server.url()).unwrap();
        let con = ConnectionManager::new(client).await.unwrap();
        RedisStream { server, con }
    }

    /// The outage scenario kills the server: always its own.
    async fn start_own() -> Self {
        Self::start().await
    }
}

impl Bus for RedisStream {
    const KIND: &'static str = "redis_stream";

    fn source(&self) -> String {
        format!(
            "[[source.redis_stream]]\nurl = \"{}\"\nstream = \"events\"\nstart = \"0\"\n\
             lease = \"1s\"\ndead_letter_stream = \"events.dead\"\n",
            self.server.url()
        )
    }

    fn metrics_name(&self) -> String {
        "redis_stream:events/herald".into()
    }

    async fn publish(&self, subject: &str, payload: &[u8], _id: u64) {
        let mut con = self.con.clone();
        // After a restart the manager's first command fails while it reconnects.
        for attempt in 0.. {
            let added: redis::RedisResult<String> = redis::cmd("XADD")
                .arg("events")
                .arg("*")
                .arg("subject")
                .arg(subject)
                .arg("data")
                .arg(payload)
                .query_async(&mut con)
                .await;
            match added {
                Ok(_) => return,
                Err(e) if attempt < 50 => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("XADD: {e}"),
            }
        }
    }

    async fn dead_letters(&self) -> Vec<(String, Vec<u8>)> {
        let mut con = self.con.clone();
        let entries: Vec<(String, Fields)> = redis::cmd("XRANGE")
            .arg("events.dead")
            .arg("-")
            .arg("+")
            .query_async(&mut con)
            .await
            .unwrap();
        entries
            .into_iter()
            .map(|(_, fields)| {
                let get = |name: &str| {
                    fields
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                (String::from_utf8(get("error")).unwrap(), get("data"))
            })
            .collect()
    }

    fn kill(&mut self) {
        self.server.kill();
    }

    async fn restart(&mut self) {
        tokio::task::block_in_place(|| self.server.restart());
    }
}

bus_scenarios!(RedisStream);
