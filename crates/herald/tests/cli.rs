//! Tests of the real `herald` binary: `check`, `token`, `serve` with SIGTERM, `publish`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const BIN: &str = env!("CARGO_BIN_EXE_herald");

fn herald(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("HERALD_CONFIG")
        .output()
        .expect("herald runs")
}

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"
shutdown_spread = "200ms"
[auth]
hs256_secret = "cli-secret"
[api]
key = "cli-key"
[[channel]]
name = "notifications.user.{userId}"
scope = "user"
auto_subscribe = true
schema_file = "schemas/notification.json"
[[channel]]
name = "blog.article.feed"
scope = "public"
schema = { type = "object" }
"#;

fn project(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schemas")).unwrap();
    std::fs::write(
        dir.path().join("schemas/notification.json"),
        r#"{"type":"object","required":["type"],"properties":{"type":{"type":"string"}}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("herald.toml"), config).unwrap();
    dir
}

/// Acceptance 12: `herald check` names file, channel and field for a broken schema and a
/// duplicate channel, and exits non-zero.
#[test]
fn check_reports_broken_schema_and_duplicate() {
    let dir = project(GOOD);
    let out = herald(dir.path(), &["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 channels)"));

    let broken = format!(
        "{GOOD}\n[[channel]]\nname = \"blog.article.feed\"\nscope = \"public\"\nschema = {{}}\n\
         [[channel]]\nname = \"shop.orders\"\nscope = \"public\"\n\
         schema = {{ type = \"object\", properties = {{ total = {{ type = \"numbr\" }} }} }}\n"
    );
    std::fs::write(dir.path().join("herald.toml"), broken).unwrap();
    let out = herald(dir.path(), &["check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            r#"herald.toml: channel #3 "blog.article.feed", field `name`: duplicate channel"#
        ),
        "{err}"
    );
    assert!(
        err.contains(
            r#"herald.toml: channel #4 "shop.orders", field `schema.properties.total.type`"#
        ),
        "{err}"
    );

    // A schema file that is not JSON is reported against schema_file.
    std::fs::write(dir.path().join("schemas/notification.json"), "{ nope").unwrap();
    std::fs::write(dir.path().join("herald.toml"), GOOD).unwrap();
    let out = herald(dir.path(), &["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("field `schema_file`") && err.contains("not valid JSON"),
        "{err}"
    );
}

/// `serve` validates before binding: a broken config never opens the port.
#[test]
fn serve_refuses_a_broken_config() {
    let dir = project(&GOOD.replace("scope = \"public\"", "scope = \"everyone\""));
    let out = herald(dir.path(), &["serve"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("channel #2 \"blog.article.feed\", field `scope`"),
        "{err}"
    );
}

/// Environment variables override the file.
#[test]
fn env_overrides_config() {
    let dir = project(GOOD);
    let out = Command::new(BIN)
        .args(["check"])
        .current_dir(dir.path())
        .env("HERALD_LIMITS__MAX_SUBSCRIPTIONS", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.max_subscriptions"));
    // Variables outside the config sections are not config keys and do not break startup;
    // an unknown key inside a section still does.
    let ok = Command::new(BIN)
        .args(["check"])
        .current_dir(dir.path())
        .env("HERALD_BIN", "/usr/bin/whatever")
        .env("HERALD_URL", "http://elsewhere")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let typo = Command::new(BIN)
        .args(["check"])
        .current_dir(dir.path())
        .env("HERALD_SERVER__LISEN", "x")
        .output()
        .unwrap();
    assert!(!typo.status.success());
    assert!(String::from_utf8_lossy(&typo.stderr).contains("lisen"));
}

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let mut child = Command::new(BIN)
            .arg("serve")
            .current_dir(dir)
            .env_remove("HERALD_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("herald listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Acceptance 11: SIGTERM → every client gets `disconnect` with `reconnect: true` and close
/// 1001, `/readyz` stops answering ready, and the process exits 0.
#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let dir = project(GOOD);
    let mut server = Server::start(dir.path());
    let token = String::from_utf8(herald(dir.path(), &["token", "--sub", "alice"]).stdout).unwrap();
    let ws_url = format!("{}/v1/ws", server.url.replace("http://", "ws://"));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut req = ws_url.as_str().into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", token.trim()).parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let Some(Ok(Message::Text(w))) = ws.next().await else {
            panic!("no welcome")
        };
        assert!(w.contains("\"welcome\""));
        clients.push(ws);
    }

    // `herald publish` goes through the running gateway's API.
    let out = herald(
        dir.path(),
        &[
            "publish",
            "notifications.user.alice",
            r#"{"type":"x"}"#,
            "--url",
            &server.url,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for ws in &mut clients {
        let Some(Ok(Message::Text(p))) = ws.next().await else {
            panic!("no pub")
        };
        assert!(p.contains("\"pub\""), "{p}");
    }

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();

    for ws in &mut clients {
        let mut disconnect: Option<Value> = None;
        let mut close_code = None;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await
        {
            match msg {
                Message::Text(t) => disconnect = Some(serde_json::from_str(&t).unwrap()),
                Message::Close(c) => {
                    close_code = c.map(|c| u16::from(c.code));
                    break;
                }
                _ => {}
            }
        }
        let d = disconnect.expect("disconnect frame before close");
        assert_eq!(d["type"], "disconnect");
        assert_eq!(d["reconnect"], true);
        assert_eq!(d["code"], 1001);
        assert_eq!(close_code, Some(1001));
    }
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = server.child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status.expect("exited within 5 s").code(), Some(0));
}

/// `herald token` needs an HMAC secret and says so otherwise.
#[test]
fn token_needs_a_secret() {
    let dir = project(&GOOD.replace("hs256_secret = \"cli-secret\"", "anonymous = true"));
    let out = herald(dir.path(), &["token", "--sub", "alice"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hs256_secret"));
}

/// `herald postgres install` prints the DDL; `--apply` installs it into a real Postgres, and
/// the installed `herald_publish` works.
#[tokio::test]
async fn postgres_install_prints_and_applies() {
    let dir = project(GOOD);
    let out = herald(dir.path(), &["postgres", "install"]);
    assert!(out.status.success());
    let ddl = String::from_utf8_lossy(&out.stdout);
    assert!(
        ddl.contains("CREATE TABLE IF NOT EXISTS herald_outbox (")
            && ddl.contains("herald_publish")
    );

    let pg = herald_testkit::PostgresServer::start();
    let out = herald(
        dir.path(),
        &[
            "postgres",
            "install",
            "--apply",
            "--url",
            &pg.url(),
            "--table",
            "events_outbox",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (db, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let id: i64 = db
        .query_one("SELECT herald_publish('a.b', '{}'::jsonb)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(id, 1);
    let n: i64 = db
        .query_one("SELECT count(*) FROM events_outbox_dead", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

/// Issue 20, class 3 member: `herald publish` is one more way a publication enters, so its
/// payload reaches the API as written and gets the API's answer. Before the fix the CLI parsed
/// it into a `Value` first, which kept the last of a repeated key and published it.
#[tokio::test]
async fn publish_sends_the_payload_as_written() {
    let dir = project(GOOD);
    let server = Server::start(dir.path());
    let out = herald(
        dir.path(),
        &[
            "publish",
            "notifications.user.alice",
            r#"{"type":"x","type":"mention"}"#,
            "--url",
            &server.url,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a repeated key was published");
    assert!(stderr.contains("duplicate key `type` in /data"), "{stderr}");
    let out = herald(
        dir.path(),
        &[
            "publish",
            "notifications.user.alice",
            "{",
            "--url",
            &server.url,
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
}
