//! `herald-bench`: one load run (`run`), the whole suite against every peer (`suite`), the
//! cost of backend-decided subscriptions (`subscribe`), and the receiving and publishing
//! processes of the multi-process runs (`receive`, `publish`).

use std::io::Read;

use clap::{Parser, Subcommand};
use herald_bench::load::{self, LoadArgs};
use herald_bench::streams::{self, PublishArgs, ReceiveArgs};
use herald_bench::subscribe::{self, SubscribeArgs};
use herald_bench::suite::{self, SuiteArgs};

#[derive(Debug, Parser)]
#[command(
    name = "herald-bench",
    about = "Load generator and benchmark suite for Herald"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect, publish in rate steps, report (human summary on stderr, JSON with --json).
    Run {
        // Boxed: the load flags (with the Pusher app and compression) dwarf the others.
        #[command(flatten)]
        load: Box<LoadArgs>,
        /// Print the report as one JSON line on stdout.
        #[arg(long)]
        json: bool,
        /// After reporting, keep the connections open until stdin closes (for runs that
        /// need several load processes at once).
        #[arg(long)]
        hold: bool,
        /// Runtime worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Run the scenarios against Herald and the peers and write docs/benchmarks.md.
    // Boxed: the suite's flags (with S8's and the soak's) dwarf the other commands'.
    Suite(Box<SuiteArgs>),
    /// Hold connections subscribed to the broadcast and their user channel, churn some, and
    /// settle loss on command (driven by `suite` for S8 and the soak; protocol in
    /// `herald_bench::streams`).
    Receive {
        #[command(flatten)]
        args: ReceiveArgs,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Publish the broadcast and unicast streams on a fixed schedule, then report.
    Publish(PublishArgs),
    /// Subscribe latency and connects/s with static scopes and the subscribe proxy (cache
    /// cold and warm); prints Markdown tables.
    Subscribe(SubscribeArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            load,
            json,
            hold,
            threads,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .enable_all()
                .build()?;
            rt.block_on(async {
                let report = load::run(*load).await?;
                if json {
                    println!("{}", serde_json::to_string(&report.0)?);
                } else {
                    eprintln!("{}", serde_json::to_string_pretty(&report.0)?);
                }
                if hold {
                    // Connections stay open (they live in `report.1`) until stdin closes.
                    let _ = tokio::task::spawn_blocking(|| {
                        let mut sink = Vec::new();
                        let _ = std::io::stdin().read_to_end(&mut sink);
                    })
                    .await;
                }
                drop(report.1);
                Ok(())
            })
        }
        Command::Suite(args) => suite::run(*args),
        Command::Receive { args, threads } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()?
            .block_on(streams::receive(args)),
        Command::Publish(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(streams::publish(args)),
        Command::Subscribe(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(subscribe::run(args)),
    }
}
