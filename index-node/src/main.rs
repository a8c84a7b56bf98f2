//! `index-node`: the Quiver index node binary.

mod bench;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "index-node", version, about = "Quiver index node: serve, train, build and benchmark IVF indexes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmark the IVF engine in-process on a dataset (recall, QPS, latency), or generate one.
    Bench(bench::BenchCmd),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(cmd) => bench::run(cmd),
    }
}
