//! `index-node`: the Quiver index node binary.

mod bench;
mod build;
mod discovery;
mod gc;
mod k8s;
mod loader;
mod loadtest;
mod manifest;
mod purge;
mod remap;
mod serve;
mod source;
mod split;
mod storage;
mod train;
mod versionloc;
mod versions;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "index-node",
    version,
    about = "Quiver index node: serve, train, build and benchmark IVF indexes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmark the IVF engine in-process on a dataset (recall, QPS, latency), or generate one.
    Bench(bench::BenchCmd),
    /// Serve as a shard (scans its lists) or a router (the query API).
    Serve(serve::ServeCmd),
    /// Train the coarse centroids and codebooks of a version.
    Train(train::TrainCmd),
    /// Build the lists, evaluation set and manifest of a trained version.
    Build(build::BuildCmd),
    /// Drive a router with queries; print QPS, latency percentiles, recall and errors.
    Loadtest(loadtest::LoadtestCmd),
    /// Delete every version of one VectorIndex from storage (its deletionPolicy: Delete).
    Purge(purge::PurgeCmd),
    /// Delete the files of named versions, except files that kept versions still use.
    Gc(gc::GcCmd),
    /// Write a version that moves whole lists between shards of another version, reusing
    /// its files (a rebalance: only a manifest is written).
    Remap(remap::RemapCmd),
    /// Write a version in which one list of another version is split in two (2-means over
    /// that list's vectors): a new quantizer, the two halves and a manifest; every other list
    /// is read from the older version's files.
    Split(split::SplitCmd),
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("QUIVER_LOG_FORMAT").is_ok_and(|v| v == "json");
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(cmd) => bench::run(cmd),
        Command::Serve(cmd) => {
            init_tracing();
            serve::run(cmd)
        }
        Command::Train(cmd) => {
            init_tracing();
            train::run(cmd)
        }
        Command::Build(cmd) => {
            init_tracing();
            build::run(cmd)
        }
        Command::Loadtest(cmd) => {
            init_tracing();
            loadtest::run(cmd)
        }
        Command::Purge(cmd) => {
            init_tracing();
            purge::run(cmd)
        }
        Command::Gc(cmd) => {
            init_tracing();
            gc::run(cmd)
        }
        Command::Remap(cmd) => {
            init_tracing();
            remap::run(cmd)
        }
        Command::Split(cmd) => {
            init_tracing();
            split::run(cmd)
        }
    }
}
