//! Tests of the real `herald` binary: `check`, `token`, `serve` with SIGTERM, `publish`, and
//! the harness that starts it (`herald_testkit::HeraldProcess`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use herald_testkit::{HeraldBin, HeraldProcess, WsClient, herald_command};

/// The binary under test: `HERALD_BIN` if set, else the one cargo built for these tests.
fn bin() -> HeraldBin {
    HeraldBin::locate(option_env!("CARGO_BIN_EXE_herald"))
}

/// `herald <args>` in `dir`, without the developer's own `HERALD_*` variables.
fn cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = herald_command(&bin());
    c.args(args).current_dir(dir);
    c
}

fn herald(dir: &Path, args: &[&str]) -> std::process::Output {
    cmd(dir, args).output().expect("herald runs")
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
    let out = cmd(dir.path(), &["check"])
        .env("HERALD_LIMITS__MAX_SUBSCRIPTIONS", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.max_subscriptions"));
    // Variables outside the config sections are not config keys and do not break startup;
    // an unknown key inside a section still does.
    let ok = cmd(dir.path(), &["check"])
        .env("HERALD_BIN", "/usr/bin/whatever")
        .env("HERALD_URL", "http://elsewhere")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let typo = cmd(dir.path(), &["check"])
        .env("HERALD_SERVER__LISEN", "x")
        .output()
        .unwrap();
    assert!(!typo.status.success());
    assert!(String::from_utf8_lossy(&typo.stderr).contains("lisen"));
}

/// Acceptance 11: SIGTERM → every client gets `disconnect` with `reconnect: true` and close
/// 1001, `/readyz` stops answering ready, and the process exits 0.
#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let dir = project(GOOD);
    let mut server = HeraldProcess::builder_without_config()
        .bin(bin())
        .dir(dir.path())
        .start();
    let token = String::from_utf8(herald(dir.path(), &["token", "--sub", "alice"]).stdout).unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(WsClient::connect(&server.ws_url(), Some(token.trim())).await);
    }

    // `herald publish` goes through the running gateway's API.
    let out = herald(
        dir.path(),
        &[
            "publish",
            "notifications.user.alice",
            r#"{"type":"x"}"#,
            "--url",
            &server.url(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for ws in &mut clients {
        let p = ws.next().await;
        assert_eq!(p["type"], "pub", "{p}");
    }

    server.terminate();
    for ws in &mut clients {
        let closed = ws.closed(Duration::from_secs(5)).await;
        let d = closed.disconnect.expect("disconnect frame before close");
        assert_eq!(d["type"], "disconnect");
        assert_eq!(d["reconnect"], true);
        assert_eq!(d["code"], 1001);
        assert_eq!(closed.close.map(|c| u16::from(c.code)), Some(1001));
    }
    let status = server.wait_exit(Duration::from_secs(5));
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

/// `herald token` refuses what the gateway would refuse: an empty `--sub` (found trying the
/// README as a new user: the token was minted, then every connection with it got 401) and a
/// lifetime under a second (a token born expired).
#[test]
fn token_refuses_an_empty_sub_and_a_zero_ttl() {
    let dir = project(GOOD);
    for args in [
        &["token", "--sub", ""][..],
        &["token", "--sub", "  "][..],
        &["token", "--sub", "alice", "--ttl", "0s"][..],
    ] {
        let out = herald(dir.path(), args);
        assert!(!out.status.success(), "{args:?} minted a token");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("must"), "{args:?}: {err}");
    }
    assert!(
        herald(dir.path(), &["token", "--sub", "alice"])
            .status
            .success()
    );
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
    let server = HeraldProcess::builder_without_config()
        .bin(bin())
        .dir(dir.path())
        .start();
    let url = server.url();
    let out = herald(
        dir.path(),
        &[
            "publish",
            "notifications.user.alice",
            r#"{"type":"x","type":"mention"}"#,
            "--url",
            &url,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a repeated key was published");
    assert!(stderr.contains("duplicate key `type` in /data"), "{stderr}");
    let out = herald(
        dir.path(),
        &["publish", "notifications.user.alice", "{", "--url", &url],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
}

/// A harness that cannot start the binary says why: the path it tried and where that path
/// came from (before, a wrong path gave `unexpected first line ""` and nothing else).
#[test]
fn harness_names_a_missing_binary() {
    let missing = HeraldBin::locate_with(
        &|name| (name == "HERALD_BIN").then(|| "/nonexistent/herald".into()),
        None,
        "debug",
    );
    let err = HeraldProcess::builder(GOOD)
        .bin(missing)
        .try_start()
        .unwrap_err();
    assert!(
        err.contains("/nonexistent/herald")
            && err.contains("$HERALD_BIN")
            && err.contains("does not exist"),
        "{err}"
    );
}

/// A gateway that exits at startup is reported with its exit code and the last lines of its
/// output, so the test failure carries the config error itself.
#[test]
fn harness_reports_exit_code_and_output() {
    let err = HeraldProcess::builder(GOOD.replace("scope = \"public\"", "scope = \"everyone\""))
        .bin(bin())
        .file(
            "schemas/notification.json",
            r#"{"type":"object","required":["type"]}"#,
        )
        .try_start()
        .unwrap_err();
    assert!(err.contains("exited with code 1"), "{err}");
    assert!(
        err.contains(r#"channel #2 "blog.article.feed", field `scope`"#),
        "{err}"
    );
    assert!(
        err.contains(&bin().path.display().to_string()),
        "names the binary: {err}"
    );
}

/// Issue 11: `HERALD_SERVER__LISTEN=nonsense herald check` names the variable; the file is
/// not at fault and is not blamed.
#[test]
fn a_bad_env_value_names_its_variable() {
    let dir = project(GOOD);
    let out = cmd(dir.path(), &["check"])
        .env("HERALD_SERVER__LISTEN", "nonsense")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("environment variable HERALD_SERVER__LISTEN: field `server.listen`"),
        "{err}"
    );
    assert!(!err.contains("herald.toml"), "blames the file: {err}");
}

/// A misspelled config variable is refused with a suggestion instead of silently ignored;
/// `HERALD_SOURCE__…` says sources come from the file; a one-underscore near miss is a
/// warning (it may be a deployment's own variable, e.g. a backend's `HERALD_API_KEY`).
#[test]
fn misspelled_env_variables_are_refused() {
    let dir = project(GOOD);
    for (var, says) in [
        (
            "HERALD_SERVR__LISTEN",
            "did you mean HERALD_SERVER__LISTEN?",
        ),
        ("HERALD_SERVER__LISTN", "did you mean `listen`?"),
        (
            "HERALD_SOURCE__POSTGRES__URL",
            "configured in the config file only",
        ),
    ] {
        let out = cmd(dir.path(), &["check"])
            .env(var, "127.0.0.1:9")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var} accepted: {err}");
        assert!(
            err.contains(&format!("environment variable {var}")) && err.contains(says),
            "{var}: {err}"
        );
    }
    let out = cmd(dir.path(), &["check"])
        .env("HERALD_API_KEY", "k")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("HERALD_API_KEY is not a config key") && err.contains("HERALD_API__KEY"),
        "{err}"
    );
}

/// `herald check` lists every type error of a file, not only the first.
#[test]
fn check_reports_every_type_error() {
    let dir = project(&format!(
        "{}\n[limits]\nmax_subscriptions = \"many\"\npublish_rate = -1\n",
        GOOD.replace("shutdown_spread = \"200ms\"", "shutdown_spread = 5")
    ));
    let out = herald(dir.path(), &["check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("herald.toml: 3 problems"), "{err}");
    for field in [
        "limits.max_subscriptions",
        "limits.publish_rate",
        "server.shutdown_spread",
    ] {
        assert!(err.contains(&format!("field `{field}`")), "{field}: {err}");
    }
}

/// Logs written to a pipe or a file carry no colour escapes.
#[test]
fn logs_have_no_colour_when_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    // No herald.toml: `check` warns that it uses the built-in example.
    let out = herald(dir.path(), &["check"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WARN") && err.contains("built-in example"),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "colour escapes in {err:?}");
}

/// With no herald.toml the built-in example config still takes `HERALD_*` overrides, as a file
/// does: a deployment that sets its API key and secret in the environment must not run on the
/// example's public development ones. An override that cannot be used is refused by name
/// (before the fix it was silently ignored and `check` passed).
#[test]
fn the_built_in_config_takes_environment_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let out = cmd(dir.path(), &["check"])
        .env("HERALD_SERVER__LISTEN", "not-an-address")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("server.listen") || err.contains("listen"),
        "{err}"
    );
    let out = cmd(dir.path(), &["check"])
        .env("HERALD_API__KEY", "a-real-key-from-the-environment")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `herald check --against old.toml`: exit 0 compatible, 1 breaking (and cannot-decide unless
/// `--allow-undecided`), 2 invalid input; `--format json` is the report CI reads.
#[test]
fn check_against_exit_codes_and_json() {
    let dir = project(GOOD);
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    let code = |args: &[&str]| herald(dir.path(), args).status.code();

    // The same registry: compatible.
    write("same.toml", GOOD);
    let out = herald(dir.path(), &["check", "--against", "same.toml"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("compatible (0 channels changed)"));

    // The old registry had one more channel and a wider scope: breaking, in JSON.
    let old = GOOD.replace("scope = \"public\"", "scope = \"public\"\npresence = true")
        + "[[channel]]\nname = \"ops.alerts\"\nscope = { role = \"admin\" }\nschema = { type = \"object\" }\n";
    write("old.toml", &old);
    assert_eq!(code(&["check", "--against", "old.toml"]), Some(1));
    let out = herald(
        dir.path(),
        &["check", "--against", "old.toml", "--format", "json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["status"], "breaking");
    let channel = |name: &str| {
        report["channels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["channel"] == name)
            .unwrap_or_else(|| panic!("{name} in {report:#}"))
            .clone()
    };
    let ops = channel("ops.alerts");
    assert_eq!(ops["changes"][0]["status"], "breaking");
    assert_eq!(ops["changes"][0]["pointer"], "/name");
    let feed = channel("blog.article.feed");
    assert_eq!(feed["changes"][0]["pointer"], "/presence");
    assert_eq!(feed["changes"][0]["affects"], "subscribers");

    // A schema change the checker cannot decide: 1, or 0 with --allow-undecided.
    let patterned = |p: &str| {
        GOOD.replace(
            "schema = { type = \"object\" }",
            &format!("schema = {{ type = \"object\", properties = {{ id = {{ type = \"string\", pattern = \"{p}\" }} }} }}"),
        )
    };
    write("herald.toml", &patterned("^[a-z]+$"));
    write("old.toml", &patterned("^[a-z0-9]+$"));
    let out = herald(
        dir.path(),
        &["check", "--against", "old.toml", "--format", "json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "cannot_decide");
    assert_eq!(
        report["channels"][0]["changes"][0]["pointer"],
        "/schema/properties/id/pattern"
    );
    assert_eq!(
        code(&["check", "--against", "old.toml", "--allow-undecided"]),
        Some(0)
    );

    // Invalid input: a missing old config, a broken new one.
    assert_eq!(code(&["check", "--against", "missing.toml"]), Some(2));
    write(
        "herald.toml",
        &GOOD.replace("type = \"object\"", "type = \"objekt\""),
    );
    assert_eq!(code(&["check", "--against", "same.toml"]), Some(2));
    assert_eq!(code(&["check"]), Some(2));
}

/// The binary starts jemalloc with its background thread (`malloc_conf` in main.rs), which
/// returns freed pages to the kernel on schedule (issue 16's soak); `_RJEM_MALLOC_CONF` still
/// overrides it.
#[cfg(all(target_os = "linux", feature = "jemalloc"))]
#[test]
fn jemalloc_purges_from_its_background_thread() {
    fn threads(pid: u32) -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap())
            .map(|c| c.trim().to_owned())
            .collect()
    }
    let dir = project(GOOD);
    let server = HeraldProcess::builder_without_config()
        .bin(bin())
        .dir(dir.path())
        .start();
    let names = threads(server.pid().expect("running"));
    assert!(
        names.iter().any(|n| n == "jemalloc_bg_thd"),
        "no jemalloc background thread among {names:?}"
    );
    drop(server);

    let overridden = HeraldProcess::builder_without_config()
        .bin(bin())
        .dir(dir.path())
        .env("_RJEM_MALLOC_CONF", "background_thread:false")
        .start();
    let names = threads(overridden.pid().expect("running"));
    assert!(
        !names.iter().any(|n| n == "jemalloc_bg_thd"),
        "the environment did not override malloc_conf: {names:?}"
    );
}
