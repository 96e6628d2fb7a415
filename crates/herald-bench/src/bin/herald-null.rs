//! `herald-null`: the null gateway (see `herald_bench::null`), printing its address first.

use clap::Parser;
use herald_bench::null::{NullArgs, serve};

#[derive(Debug, Parser)]
#[command(
    name = "herald-null",
    about = "A WebSocket server that only writes pre-framed bytes"
)]
struct Cli {
    #[command(flatten)]
    args: NullArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    herald_bench::procfs::raise_nofile();
    // One thread: the suite pins every server to one core, and this is the ceiling there.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(cli.args.listen).await?;
        println!("listening on http://{}", listener.local_addr()?);
        serve(listener, cli.args).await;
        Ok(())
    })
}
