//! `index-node train`: sample the source, train the coarse centroids (and SQ/PQ codebooks),
//! write `centroids.qivf` and `train.json` under the version's prefix.

use std::time::Instant;

use anyhow::Context;
use quiver_ivf::{IvfIndex, IvfParams, KMeansParams, Metric, QuantizerKind};
use serde::{Deserialize, Serialize};

use crate::manifest::MANIFEST;
use crate::source::SourceArgs;
use crate::versionloc::VersionLoc;

pub const CENTROIDS: &str = "centroids.qivf";
pub const TRAIN_INFO: &str = "train.json";

#[derive(clap::Args, Debug)]
pub struct TrainCmd {
    #[command(flatten)]
    pub loc: VersionLoc,
    #[command(flatten)]
    pub source: SourceArgs,
    /// l2, ip or cosine.
    #[arg(long, default_value = "l2")]
    pub metric: String,
    #[arg(long, default_value_t = 256)]
    pub nlist: usize,
    /// flat, sq8 or pqM (e.g. pq16).
    #[arg(long, default_value = "flat")]
    pub quantizer: String,
    /// Keep raw vectors beside SQ8/PQ codes (re-ranking).
    #[arg(long)]
    pub keep_raw: bool,
    #[arg(long, default_value_t = 25)]
    pub iters: usize,
    /// Training sample cap per centroid (k-means subsamples above it).
    #[arg(long, default_value_t = 256)]
    pub max_points_per_centroid: usize,
    /// Cluster-size balancing strength (0 = plain k-means).
    #[arg(long, default_value_t = 0.0)]
    pub balance: f32,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TrainInfo {
    pub source: String,
    pub vectors: usize,
    pub dim: usize,
    pub metric: String,
    pub nlist: usize,
    pub quantizer: String,
    pub seconds: f64,
    pub imbalance: f64,
}

pub fn run(cmd: TrainCmd) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(train(cmd))
}

async fn train(cmd: TrainCmd) -> anyhow::Result<()> {
    let storage = cmd.loc.open()?;
    anyhow::ensure!(
        !storage.exists(&cmd.loc.file(MANIFEST)).await?,
        "version {} is already built (it has a manifest); versions are immutable, pick a new name",
        cmd.loc.version
    );
    let metric: Metric = cmd
        .metric
        .parse()
        .map_err(|e| anyhow::anyhow!("--metric: {e}"))?;
    let quantizer: QuantizerKind = cmd
        .quantizer
        .parse()
        .map_err(|e| anyhow::anyhow!("--quantizer: {e}"))?;
    let started = Instant::now();
    tracing::info!(source = %cmd.source.describe(), "reading source");
    let vectors = cmd.source.load().await?;
    tracing::info!(vectors = vectors.len(), dim = vectors.dim, "source read");
    anyhow::ensure!(
        vectors.len() >= cmd.nlist,
        "--nlist {} needs at least as many source vectors, the source has {}",
        cmd.nlist,
        vectors.len()
    );
    let mut params = IvfParams::new(vectors.dim, metric, cmd.nlist, quantizer);
    params.keep_raw = cmd.keep_raw;
    params.kmeans = KMeansParams {
        iters: cmd.iters,
        seed: cmd.source.seed,
        max_points_per_centroid: cmd.max_points_per_centroid,
        balance: cmd.balance,
        ..KMeansParams::default()
    };
    params.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(nlist = cmd.nlist, metric = %metric.as_str(), quantizer = %quantizer, "training");
    let n = vectors.len();
    let data = vectors.data;
    let index = tokio::task::spawn_blocking(move || IvfIndex::train(params, &data))
        .await?
        .context("training failed")?;
    let mut bytes = Vec::new();
    quiver_ivf::format::write_quantizer(&index, &mut bytes)?;
    storage.put(&cmd.loc.file(CENTROIDS), bytes.into()).await?;
    let info = TrainInfo {
        source: cmd.source.describe(),
        vectors: n,
        dim: index.dim(),
        metric: metric.as_str().to_string(),
        nlist: cmd.nlist,
        quantizer: quantizer.to_string(),
        seconds: started.elapsed().as_secs_f64(),
        imbalance: 0.0,
    };
    storage
        .put(
            &cmd.loc.file(TRAIN_INFO),
            serde_json::to_vec_pretty(&info)?.into(),
        )
        .await?;
    tracing::info!(seconds = info.seconds, path = %cmd.loc.file(CENTROIDS), "centroids written");
    Ok(())
}
