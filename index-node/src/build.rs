//! `index-node build`: assign and encode the source vectors, write the list files, compute the
//! exact top-k of held-out evaluation queries, and write the manifest last.
//!
//! Parallel builds (an indexed Job): with `--parts P`, part `i` (`--part i` or
//! `JOB_COMPLETION_INDEX`) takes source rows `[i·n/P, (i+1)·n/P)`, writes its own list file
//! `lists.<i>.qivf` and `parts/part-<i>.json` (list sizes, file checksum, and the exact top-k
//! of every evaluation query within its rows). Then `build --finalize --parts P` (one more
//! Job) checks that every part finished, merges the partial top-k into `eval.ivecs`, balances
//! lists over shards and writes `manifest.json`, which names all P list files. Shards read
//! their lists from every part file and append them, so parts never need to be rewritten.
//! With `--parts 1` (the default) one process does all of it.

use std::time::Instant;

use anyhow::{Context, ensure};
use quiver_ivf::dataset::{Vectors, encode_fvecs, encode_ivecs};
use quiver_ivf::format;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::manifest::{
    self, BuildStats, EvalFiles, FileEntry, ListsFile, MANIFEST, Manifest, crc32,
};
use crate::source::{SourceArgs, distance, eval_positions, synthetic};
use crate::storage::Storage;
use crate::train::CENTROIDS;
use crate::versionloc::VersionLoc;

pub const EVAL_QUERIES: &str = "eval.fvecs";
pub const EVAL_GT: &str = "eval.ivecs";

#[derive(clap::Args, Debug)]
pub struct BuildCmd {
    #[command(flatten)]
    pub loc: VersionLoc,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Shards of the shard map.
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    /// Build parts (indexed Job completions).
    #[arg(long, default_value_t = 1)]
    pub parts: u32,
    /// This process's part (with --parts > 1).
    #[arg(long, env = "JOB_COMPLETION_INDEX")]
    pub part: Option<u32>,
    /// Combine finished parts and write the manifest (with --parts > 1).
    #[arg(long)]
    pub finalize: bool,
    /// Held-out evaluation queries (not indexed).
    #[arg(long, default_value_t = 100)]
    pub eval_queries: usize,
    /// Exact neighbours stored per evaluation query.
    #[arg(long, default_value_t = 100)]
    pub eval_k: usize,
    /// nprobe used when a query gives none.
    #[arg(long, default_value_t = 16)]
    pub default_nprobe: usize,
    /// Added to source row numbers to make ids.
    #[arg(long, default_value_t = 0)]
    pub id_offset: u64,
    /// Hash of the VectorIndex spec this version was built from (recorded in the manifest).
    #[arg(long)]
    pub spec_hash: Option<String>,
}

/// What one part leaves behind for `--finalize`.
#[derive(Debug, Serialize, Deserialize)]
struct PartInfo {
    part: u32,
    parts: u32,
    source: String,
    source_rows: usize,
    id_offset: u64,
    vectors: u64,
    lists: ListsFile,
    list_sizes: Vec<u64>,
    /// Per evaluation query, the exact top-`eval_k` (id, distance) among this part's rows.
    eval_topk: Vec<Vec<(u64, f32)>>,
    seconds: f64,
}

pub fn run(cmd: BuildCmd) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(build(cmd))
}

fn lists_name(part: u32, parts: u32) -> String {
    if parts == 1 {
        "lists.qivf".into()
    } else {
        format!("lists.{part}.qivf")
    }
}

fn part_info_name(part: u32) -> String {
    format!("parts/part-{part}.json")
}

async fn build(cmd: BuildCmd) -> anyhow::Result<()> {
    let storage = cmd.loc.open()?;
    ensure!(cmd.parts >= 1, "--parts must be at least 1");
    ensure!(cmd.shards >= 1, "--shards must be at least 1");
    ensure!(
        !storage.exists(&cmd.loc.file(MANIFEST)).await?,
        "version {} is already built (it has a manifest); versions are immutable, pick a new name",
        cmd.loc.version
    );
    let started = Instant::now();
    if cmd.parts == 1 {
        build_part(&cmd, &storage, 0).await?;
        return finalize(&cmd, &storage, started).await;
    }
    if cmd.finalize {
        return finalize(&cmd, &storage, started).await;
    }
    let part = cmd.part.ok_or_else(|| {
        anyhow::anyhow!(
            "--parts {} needs --part (or JOB_COMPLETION_INDEX), or --finalize",
            cmd.parts
        )
    })?;
    ensure!(
        part < cmd.parts,
        "--part {part} is out of range for --parts {}",
        cmd.parts
    );
    build_part(&cmd, &storage, part).await
}

/// Rows `range` of the source (synthetic rows are generated, files are read whole).
async fn source_rows(
    cmd: &BuildCmd,
) -> anyhow::Result<(
    usize,
    Box<dyn Fn(std::ops::Range<usize>) -> Vectors<f32> + Send + Sync>,
)> {
    if let Some(n) = cmd.source.synthetic {
        ensure!(n > 0, "--synthetic must be at least 1");
        ensure!(
            cmd.source.dim > 0 && cmd.source.dim <= 4096,
            "--dim must be in 1..=4096"
        );
        let (dim, seed) = (cmd.source.dim, cmd.source.seed);
        return Ok((n, Box::new(move |r| synthetic(n, dim, seed, r))));
    }
    let all = cmd.source.load().await?;
    let n = all.len();
    Ok((
        n,
        Box::new(move |r: std::ops::Range<usize>| Vectors {
            data: all.data[r.start * all.dim..r.end * all.dim].to_vec(),
            dim: all.dim,
        }),
    ))
}

async fn build_part(cmd: &BuildCmd, storage: &Storage, part: u32) -> anyhow::Result<()> {
    let started = Instant::now();
    let centroids_path = cmd.loc.file(CENTROIDS);
    let qbytes = storage.get(&centroids_path).await.with_context(|| {
        format!(
            "version {} is not trained (run index-node train first)",
            cmd.loc.version
        )
    })?;
    let quantizer = format::read_quantizer(&qbytes, &centroids_path)?;
    tracing::info!(part, parts = cmd.parts, source = %cmd.source.describe(), "reading source");
    let (n, rows) = source_rows(cmd).await?;
    let dim = quantizer.dim();
    let eval_pos = eval_positions(n, cmd.eval_queries);
    let lo = part as usize * n / cmd.parts as usize;
    let hi = (part as usize + 1) * n / cmd.parts as usize;
    let mine = rows(lo..hi);
    ensure!(
        mine.dim == dim,
        "source dimension {} does not match the trained dimension {dim}",
        mine.dim
    );
    // Held-out rows are neither indexed nor candidates of the exact top-k.
    let mut ids = Vec::with_capacity(hi - lo);
    let mut data = Vec::with_capacity((hi - lo) * dim);
    for i in lo..hi {
        if eval_pos.binary_search(&i).is_ok() {
            continue;
        }
        ids.push(cmd.id_offset + i as u64);
        data.extend_from_slice(mine.row(i - lo));
    }
    let eval_q: Vec<Vec<f32>> = eval_pos.iter().map(|&p| rows(p..p + 1).data).collect();
    tracing::info!(part, rows = ids.len(), "assigning and encoding");
    let metric = quantizer.metric().as_str().to_string();
    let eval_k = cmd.eval_k.max(1);
    let (index, eval_topk) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut index = quantizer.empty_like();
        index.add(&ids, &data)?;
        let topk: Vec<Vec<(u64, f32)>> = eval_q
            .par_iter()
            .map(|q| {
                let mut best: Vec<(u64, f32)> = ids
                    .iter()
                    .enumerate()
                    .map(|(j, &id)| (id, distance(&metric, q, &data[j * dim..(j + 1) * dim])))
                    .collect();
                best.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
                best.truncate(eval_k);
                best
            })
            .collect();
        Ok((index, topk))
    })
    .await??;
    let mut bytes = Vec::new();
    format::write_lists(&index, &mut bytes)?;
    let dir_len = format::directory_len(&bytes, "lists")? as usize;
    let name = lists_name(part, cmd.parts);
    let stats = index.list_stats();
    let lists = ListsFile {
        file: FileEntry {
            path: cmd.loc.index_rel(&name),
            size: bytes.len() as u64,
            crc32: crc32(&bytes),
        },
        directory_len: dir_len as u64,
        directory_crc32: crc32(&bytes[..dir_len]),
        quantizer: None,
        skip: Vec::new(),
    };
    storage.put(&cmd.loc.file(&name), bytes.into()).await?;
    let info = PartInfo {
        part,
        parts: cmd.parts,
        source: cmd.source.describe(),
        source_rows: n,
        id_offset: cmd.id_offset,
        vectors: index.ntotal() as u64,
        lists,
        list_sizes: stats.sizes.iter().map(|&s| s as u64).collect(),
        eval_topk,
        seconds: started.elapsed().as_secs_f64(),
    };
    if part == 0 {
        // Part 0 also stores the evaluation query vectors.
        let q = Vectors {
            data: eval_pos.iter().flat_map(|&p| rows(p..p + 1).data).collect(),
            dim,
        };
        storage
            .put(
                &cmd.loc.file(EVAL_QUERIES),
                encode_fvecs(q.dim, &q.data).into(),
            )
            .await?;
    }
    // Written after the list file: its presence means the part is complete.
    storage
        .put(
            &cmd.loc.file(&part_info_name(part)),
            serde_json::to_vec(&info)?.into(),
        )
        .await?;
    tracing::info!(
        part,
        vectors = info.vectors,
        seconds = info.seconds,
        imbalance = stats.imbalance,
        "part written"
    );
    Ok(())
}

async fn finalize(cmd: &BuildCmd, storage: &Storage, started: Instant) -> anyhow::Result<()> {
    let mut parts = Vec::new();
    for p in 0..cmd.parts {
        let path = cmd.loc.file(&part_info_name(p));
        let bytes = storage
            .get(&path)
            .await
            .with_context(|| format!("part {p} of {} has not finished (no {path})", cmd.parts))?;
        let info: PartInfo =
            serde_json::from_slice(&bytes).with_context(|| format!("{path}: unreadable"))?;
        ensure!(
            info.parts == cmd.parts && info.part == p,
            "{path}: written for part {} of {}, expected {p} of {}",
            info.part,
            info.parts,
            cmd.parts
        );
        parts.push(info);
    }
    let first = &parts[0];
    ensure!(
        parts.iter().all(|p| p.source == first.source
            && p.source_rows == first.source_rows
            && p.id_offset == first.id_offset
            && p.eval_topk.len() == first.eval_topk.len()
            && p.list_sizes.len() == first.list_sizes.len()),
        "parts were built from different sources or quantizers"
    );
    let centroids_path = cmd.loc.file(CENTROIDS);
    let qbytes = storage.get(&centroids_path).await?;
    let quantizer = format::read_quantizer(&qbytes, &centroids_path)?;
    let nlist = quantizer.nlist();
    let mut list_sizes = vec![0u64; nlist];
    for p in &parts {
        for (l, s) in p.list_sizes.iter().enumerate() {
            list_sizes[l] += s;
        }
    }
    // Merge the partial exact top-k of every evaluation query.
    let nq = first.eval_topk.len();
    let k = cmd.eval_k.max(1);
    let mut gt = Vec::with_capacity(nq);
    for q in 0..nq {
        let mut all: Vec<(u64, f32)> = parts.iter().flat_map(|p| p.eval_topk[q].clone()).collect();
        all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        let mut row = Vec::with_capacity(k);
        for (id, _) in all {
            row.push(i32::try_from(id).map_err(|_| {
                anyhow::anyhow!(
                    "id {id} does not fit the 32-bit ids of eval.ivecs; lower --id-offset"
                )
            })?);
        }
        gt.push(row);
    }
    let eval = if nq > 0 && gt.iter().all(|r| r.len() == k) {
        let qbytes_eval = storage.get(&cmd.loc.file(EVAL_QUERIES)).await?;
        let gbytes = encode_ivecs(k, &gt.concat());
        let g_entry = FileEntry {
            path: cmd.loc.index_rel(EVAL_GT),
            size: gbytes.len() as u64,
            crc32: crc32(&gbytes),
        };
        storage.put(&cmd.loc.file(EVAL_GT), gbytes.into()).await?;
        Some(EvalFiles {
            queries: FileEntry {
                path: cmd.loc.index_rel(EVAL_QUERIES),
                size: qbytes_eval.len() as u64,
                crc32: crc32(&qbytes_eval),
            },
            ground_truth: g_entry,
            count: nq,
            k,
        })
    } else {
        tracing::warn!("too few vectors for evaluation queries; the version has none");
        None
    };
    let ntotal: u64 = parts.iter().map(|p| p.vectors).sum();
    let list_imbalance = manifest::imbalance(&list_sizes);
    let m = Manifest {
        format: manifest::FORMAT,
        namespace: cmd.loc.namespace.clone(),
        index: cmd.loc.index.clone(),
        version: cmd.loc.version.clone(),
        created_unix: manifest::unix_now(),
        dim: quantizer.dim(),
        metric: quantizer.metric(),
        nlist,
        quantizer: quantizer.params().quantizer,
        default_nprobe: cmd.default_nprobe.clamp(1, nlist.max(1)),
        ntotal,
        spec_hash: cmd.spec_hash.clone(),
        centroids: FileEntry {
            path: cmd.loc.index_rel(CENTROIDS),
            size: qbytes.len() as u64,
            crc32: crc32(&qbytes),
        },
        lists: parts.iter().map(|p| p.lists.clone()).collect(),
        eval,
        shards: manifest::balance(&list_sizes, cmd.shards),
        list_sizes,
        build: BuildStats {
            parts: cmd.parts,
            source: first.source.clone(),
            build_seconds: started.elapsed().as_secs_f64()
                + parts.iter().map(|p| p.seconds).fold(0.0, f64::max),
            list_imbalance,
        },
    };
    // Last write: from here on the version exists for readers.
    storage
        .put(
            &cmd.loc.file(MANIFEST),
            serde_json::to_vec_pretty(&m)?.into(),
        )
        .await?;
    tracing::info!(version = %m.version, vectors = m.ntotal, shards = m.shards.len(), nlist, "manifest written; version built");
    Ok(())
}
