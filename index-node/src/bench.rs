//! `index-node bench` (being written in this session).

#[derive(clap::Args)]
pub struct BenchCmd {}

pub fn run(_cmd: BenchCmd) -> anyhow::Result<()> {
    anyhow::bail!("bench is not built yet")
}
