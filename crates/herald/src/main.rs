//! `herald`: the gateway binary.
//!
//! Thin on purpose: it parses the command line, loads and validates the config, binds the port
//! and installs signal handlers; everything else lives in `herald-server` and `herald-core`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use herald_core::Config;

/// jemalloc instead of the system allocator. With glibc's malloc, every retained 60 KB
/// publication cost about 96 KB of RSS: each publish allocates and frees buffers of the same
/// size class (request body, parsed value, encoded text) around the one history keeps, and
/// the holes they leave are not reused for the next retained payload. jemalloc's size classes
/// keep the cost at the payload rounded up to its class (see docs/benchmarks.md).
///
/// Its options are built into jemalloc from `JEMALLOC_SYS_WITH_MALLOC_CONF` in
/// `.cargo/config.toml` (a `malloc_conf` symbol would need `unsafe`, which the workspace
/// forbids); `_RJEM_MALLOC_CONF` in the environment overrides them at start.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The example configuration, used by `herald serve` when no config file is found.
const EXAMPLE_CONFIG: &str = include_str!("../../../herald.toml");

#[derive(Debug, Parser)]
#[command(name = "herald", version, about = "Herald, a realtime push gateway")]
struct Cli {
    /// Config file (default: ./herald.toml if present, else the built-in example).
    #[arg(long, short, global = true, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, env = "HERALD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve,
    /// Validate the config and every schema, then exit. With --against, also compare its
    /// channel registry with an older config's: exit 0 compatible, 1 breaking (or undecided),
    /// 2 invalid input.
    Check {
        /// The config in production now: report what the new one (--config) breaks for
        /// clients and backends built against it.
        #[arg(long)]
        against: Option<PathBuf>,
        /// Report format (with --against).
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
        /// Exit 0 when nothing is breaking and some changes could not be decided.
        #[arg(long, requires = "against")]
        allow_undecided: bool,
    },
    /// Mint a development token signed with the config's HMAC secret.
    Token {
        /// The user id (`sub`): non-empty; the gateway refuses a token without one.
        #[arg(long, value_parser = non_empty)]
        sub: String,
        /// A role to include (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime, e.g. 1h, 15m (at least 1s: a token that is born expired is refused).
        #[arg(long, default_value = "1h", value_parser = positive_duration)]
        ttl: Duration,
    },
    /// Publish through a running gateway's server API.
    Publish {
        channel: String,
        /// The payload, as JSON.
        data: String,
        /// Gateway base URL (default: http://<server.listen>).
        #[arg(long, env = "HERALD_URL")]
        url: Option<String>,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Postgres event source tools.
    Postgres {
        #[command(subcommand)]
        command: PostgresCommand,
    },
    /// Generate client code from the channel registry.
    Codegen {
        #[command(subcommand)]
        target: CodegenTarget,
    },
    /// Admin dashboard tools.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Read a password on standard input (one line) and print its Argon2id hash for
    /// `admin.password_hash`.
    HashPassword,
}

#[derive(Debug, Subcommand)]
enum PostgresCommand {
    /// Print the outbox DDL (table, dead-letter table, herald_publish); --apply runs it.
    Install {
        /// Run it against the configured source (or --url) instead of printing it.
        #[arg(long)]
        apply: bool,
        /// Database URL (default: the first [[source.postgres]] url).
        #[arg(long)]
        url: Option<String>,
        /// Outbox table name (default: the source's outbox_table, else herald_outbox).
        #[arg(long)]
        table: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum CodegenTarget {
    /// TypeScript payload types keyed by channel (`HeraldChannels`, `HeraldUserChannels`).
    Typescript {
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// An AsyncAPI 3.0 document (JSON) of the registry.
    Asyncapi {
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where clients reach the gateway (default: server.listen).
        #[arg(long)]
        host: Option<String>,
    },
    /// Each channel's JSON Schema as a file, plus index.json keyed by channel name.
    Jsonschema {
        /// The directory to write (created if missing).
        #[arg(long)]
        out_dir: PathBuf,
    },
}

/// `herald check --against`: its exit codes, for CI.
const EXIT_BREAKING: u8 = 1;
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Check {
        against,
        format,
        allow_undecided,
    } = &cli.command
    {
        return check(
            cli.config.as_deref(),
            against.as_deref(),
            format,
            *allow_undecided,
        );
    }
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `herald check [--against old.toml]`: 0 valid (and compatible), 1 breaking or undecided,
/// 2 a config that does not load.
fn check(
    config: Option<&Path>,
    against: Option<&Path>,
    format: &str,
    allow_undecided: bool,
) -> ExitCode {
    let new = match load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let file = config_name(&new);
    let Some(against) = against else {
        let n = new.registry.descriptors().len();
        println!("{file}: ok ({n} channel{})", if n == 1 { "" } else { "s" });
        return ExitCode::SUCCESS;
    };
    let old = match Config::load(Some(against)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let report = herald_codegen::compat::compare(&old.registry, &new.registry);
    if format == "json" {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_INVALID);
            }
        }
    } else {
        print!("{}", render(&report, &file, &against.display().to_string()));
    }
    use herald_codegen::compat::Status;
    match report.status {
        Status::Compatible => ExitCode::SUCCESS,
        Status::CannotDecide if allow_undecided => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_BREAKING),
    }
}

/// The text report: one line per change, grouped by channel.
fn render(report: &herald_codegen::compat::Report, new: &str, old: &str) -> String {
    use herald_codegen::compat::Status;
    use std::fmt::Write as _;
    let label = |s: Status| match s {
        Status::Compatible => "compatible",
        Status::CannotDecide => "cannot decide",
        Status::Breaking => "BREAKING",
    };
    let mut out = String::new();
    for ch in &report.channels {
        let _ = writeln!(out, "{}: {}", ch.channel, label(ch.status));
        for c in &ch.changes {
            let _ = writeln!(
                out,
                "  {} [{:?}] {}: {}",
                label(c.status),
                c.affects,
                if c.pointer.is_empty() {
                    "/"
                } else {
                    &c.pointer
                },
                c.reason
            );
            if let Some(example) = &c.example {
                // The JSON report has it whole; a terminal line does not need 2000 x's.
                let text = example.to_string();
                let cut: String = text.chars().take(160).collect();
                let more = if cut.len() < text.len() { "…" } else { "" };
                let _ = writeln!(out, "    example: {cut}{more}");
            }
        }
    }
    let _ = writeln!(
        out,
        "{new} against {old}: {} ({} channel{} changed)",
        label(report.status),
        report.channels.len(),
        if report.channels.len() == 1 { "" } else { "s" }
    );
    out
}

/// The config's file name for messages and generated headers.
fn config_name(config: &Config) -> String {
    config.file.as_ref().map_or_else(
        || "the built-in example config".to_owned(),
        |f| {
            f.file_name()
                .map_or_else(|| f.display().to_string(), |n| n.to_string_lossy().into())
        },
    )
}

/// Writes `text` to `out`, or stdout.
fn emit(out: Option<&Path>, text: &str) -> anyhow::Result<()> {
    match out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: escapes in a log file or a collector are noise.
    // NO_COLOR (https://no-color.org) turns it off even there.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A `--sub`: the gateway refuses tokens whose `sub` is empty, so the CLI does too.
fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty (it becomes the token's `sub`, the user id)".into())
    } else {
        Ok(s.to_owned())
    }
}

/// A `--ttl` of at least one second.
fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

/// Loads the config the way every subcommand does.
fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    let default = Path::new("herald.toml");
    let path = path.or_else(|| default.is_file().then_some(default));
    let config = match path {
        Some(p) => Config::load(Some(p))?,
        None => {
            tracing::warn!(
                "no herald.toml found: using the built-in example config (development secrets; \
                 not for production)"
            );
            Config::from_toml_str_with_env(EXAMPLE_CONFIG, Path::new("."), std::env::vars_os())?
        }
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    Ok(config)
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => serve(load(cli.config.as_deref())?).await,
        Command::Admin {
            command: AdminCommand::HashPassword,
        } => {
            if std::io::stdin().is_terminal() {
                eprintln!("password (input is shown; pipe it in to keep it off the screen):");
            }
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                bail!("the password is empty");
            }
            let hash = herald_server::admin::auth::hash_password(password)
                .map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
            println!("{hash}");
            Ok(())
        }
        // Handled before the runtime starts (its own exit codes).
        Command::Check { .. } => Ok(()),
        Command::Token { sub, roles, ttl } => {
            let config = load(cli.config.as_deref())?;
            println!("{}", config.authenticator.mint(&sub, &roles, ttl)?);
            Ok(())
        }
        Command::Postgres {
            command: PostgresCommand::Install { apply, url, table },
        } => {
            let config = load(cli.config.as_deref())?;
            let source = config.sources.postgres.first();
            let table = table
                .or_else(|| source.map(|s| s.outbox_table.clone()))
                .unwrap_or_else(|| "herald_outbox".into());
            if !herald_core::config::is_sql_identifier(&table) {
                bail!("table must be a lowercase SQL identifier");
            }
            if !apply {
                print!("{}", herald_postgres::install_sql(&table));
                return Ok(());
            }
            let url = url
                .or_else(|| source.map(|s| s.url.clone()))
                .context("no [[source.postgres]] in the config: pass --url")?;
            herald_postgres::apply_install(&url, &table)
                .await
                .context("applying the outbox DDL")?;
            println!("installed {table}, {table}_dead and herald_publish()");
            Ok(())
        }
        Command::Codegen { target } => {
            let config = load(cli.config.as_deref())?;
            let source = config_name(&config);
            match target {
                CodegenTarget::Typescript { out } => emit(
                    out.as_deref(),
                    &herald_codegen::typescript_with_rpc(&config.registry, &config.rpc, &source),
                ),
                CodegenTarget::Asyncapi { out, host } => {
                    let host = host.unwrap_or_else(|| config.server.listen.to_string());
                    let doc = herald_codegen::asyncapi(&config.registry, &source, &host);
                    emit(
                        out.as_deref(),
                        &format!("{}\n", serde_json::to_string_pretty(&doc)?),
                    )
                }
                CodegenTarget::Jsonschema { out_dir } => {
                    std::fs::create_dir_all(&out_dir)
                        .with_context(|| format!("cannot create {}", out_dir.display()))?;
                    for (name, value) in herald_codegen::json_schemas(&config.registry, &source) {
                        let path = out_dir.join(name);
                        let text = format!("{}\n", serde_json::to_string_pretty(&value)?);
                        std::fs::write(&path, text)
                            .with_context(|| format!("cannot write {}", path.display()))?;
                    }
                    Ok(())
                }
            }
        }
        Command::Publish {
            channel,
            data,
            url,
            idempotency_key,
        } => {
            let config = load(cli.config.as_deref())?;
            // Sent as written (a `Value` would drop a repeated key), so the API's one parser
            // judges it like any other publication.
            let data = serde_json::value::RawValue::from_string(data)
                .context("the payload is not valid JSON")?;
            let url = url.unwrap_or_else(|| format!("http://{}", config.server.listen));
            let key = config
                .api
                .key
                .context("api.key is not set in the config (or HERALD_API__KEY)")?;
            #[derive(serde::Serialize)]
            struct Body<'a> {
                channel: &'a str,
                data: &'a serde_json::value::RawValue,
                #[serde(skip_serializing_if = "Option::is_none")]
                idempotency_key: Option<&'a str>,
            }
            let body = Body {
                channel: &channel,
                data: &data,
                idempotency_key: idempotency_key.as_deref(),
            };
            let res = reqwest::Client::new()
                .post(format!("{}/v1/publish", url.trim_end_matches('/')))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .with_context(|| format!("cannot reach {url}"))?;
            let status = res.status();
            let text = res.text().await.unwrap_or_default();
            if !status.is_success() {
                bail!("{status}: {text}");
            }
            println!("{text}");
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = config.server.listen;
    // Everything that can refuse the config (the broker's TLS files, the backend client, the
    // admin hash) is set up before the port is bound, so a node never says it listens and
    // then exits.
    let node = herald_server::build(config)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    if let Ok(local) = listener.local_addr() {
        // Parsed by tests and scripts that bind port 0.
        println!("herald listening on http://{local}");
    }
    herald_server::serve(listener, node, shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot install SIGTERM handler");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
}
