//! `index-node bench`: build an index in-process on a dataset and report recall, QPS and
//! latency per nprobe; `index-node bench generate`: write a synthetic dataset with its exact
//! ground truth, so the benchmark runs with no downloads.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use clap::{Args, Subcommand};
use quiver_ivf::dataset::{self, Synthetic};
use quiver_ivf::{IvfIndex, IvfParams, KMeansInit, Metric, QuantizerKind, SearchParams, kernels};
use serde_json::json;

#[derive(Args)]
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
pub struct BenchCmd {
    #[command(subcommand)]
    generate: Option<BenchSub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum BenchSub {
    /// Write a synthetic clustered dataset: base.fvecs, queries.fvecs and groundtruth.ivecs.
    Generate(GenerateArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Base vectors (.fvecs, .bvecs or .npy).
    #[arg(long, required = true)]
    base: Option<PathBuf>,
    /// Query vectors (.fvecs, .bvecs or .npy).
    #[arg(long, required = true)]
    queries: Option<PathBuf>,
    /// Exact neighbours of each query, row ids of the base (.ivecs), at least k per query.
    #[arg(long, required = true)]
    groundtruth: Option<PathBuf>,
    /// Distance: l2, ip or cosine.
    #[arg(long, default_value = "l2")]
    metric: Metric,
    /// Number of inverted lists.
    #[arg(long, default_value_t = 1024)]
    nlist: usize,
    /// Comma-separated nprobe values to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
    nprobe: Vec<usize>,
    /// List entry encoding: flat, sq8 or pq.
    #[arg(long, default_value = "flat")]
    quantizer: String,
    /// PQ sub-quantizers (bytes per vector); must divide the dimension.
    #[arg(long, default_value_t = 16)]
    pq_m: usize,
    /// Re-rank the best R candidates by exact distance (keeps raw vectors; SQ8/PQ only).
    #[arg(long, default_value_t = 0)]
    rerank: usize,
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Search threads for the batch QPS figure (0 = all cores).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Training points (default: at most 256 per list, sampled, as FAISS does).
    #[arg(long)]
    train_size: Option<usize>,
    #[arg(long, default_value_t = 25)]
    kmeans_iters: usize,
    /// k-means initialisation: random or kmeans++.
    #[arg(long, default_value = "random")]
    kmeans_init: String,
    /// Cluster-size penalty of k-means (0 = plain Lloyd, as FAISS).
    #[arg(long, default_value_t = 0.0)]
    balance: f32,
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Write each nprobe's top-k ids to PREFIX.nprobe<N>.ivecs.
    #[arg(long)]
    save_ids: Option<String>,
    /// Queries timed one at a time for p50/p99 (the first ones of the query file).
    #[arg(long, default_value_t = 2000)]
    latency_queries: usize,
    /// How Flat lists are scanned: f16 (half-precision copies, best candidates re-ranked
    /// exactly; the default) or f32.
    #[arg(long, default_value = "f16")]
    flat_scan: String,
    /// Run the batch this many times and report the best QPS (filters out interference
    /// from other work on a shared machine).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GenerateArgs {
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 200_000)]
    n: usize,
    #[arg(long, default_value_t = 128)]
    dim: usize,
    /// Number of queries.
    #[arg(long, default_value_t = 1000)]
    nq: usize,
    /// Gaussian clusters in the data.
    #[arg(long, default_value_t = 500)]
    clusters: usize,
    /// Zipf exponent of cluster sizes (0 = equal; 1 = skewed, hot regions).
    #[arg(long, default_value_t = 1.0)]
    skew: f64,
    /// Ground-truth neighbours per query.
    #[arg(long, default_value_t = 100)]
    gt_k: usize,
    /// Metric of the ground truth: l2, ip or cosine.
    #[arg(long, default_value = "l2")]
    metric: Metric,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Leave out of the ground truth the rows a VectorIndex build of this base holds out for
    /// its recall gate (`spec.rollout.evalQueries` = this count): they are not indexed, so
    /// recall through the cluster is measured against the rows it holds. Ids stay row ids.
    #[arg(long, default_value_t = 0)]
    held_out: usize,
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd.generate {
        Some(BenchSub::Generate(g)) => generate(&g),
        None => bench(&cmd.run),
    }
}

fn generate(g: &GenerateArgs) -> anyhow::Result<()> {
    ensure!(
        g.n > 0 && g.dim > 0 && g.nq > 0,
        "--n, --dim and --nq must be at least 1"
    );
    std::fs::create_dir_all(&g.out).with_context(|| format!("creating {}", g.out.display()))?;
    let syn = Synthetic {
        n: g.n,
        dim: g.dim,
        clusters: g.clusters,
        skew: g.skew,
        seed: g.seed,
    };
    let t = Instant::now();
    let base = syn.generate(g.n, 0);
    let queries = syn.generate(g.nq, 1);
    tracing::info!(
        n = g.n,
        dim = g.dim,
        secs = t.elapsed().as_secs_f64(),
        "generated vectors"
    );
    let t = Instant::now();
    let held = crate::source::eval_positions(g.n, g.held_out);
    let gt = if held.is_empty() {
        dataset::exact_knn(&base, &queries, g.dim, g.gt_k.min(g.n), g.metric)
    } else {
        // The indexed rows only, mapped back to their row ids.
        let kept: Vec<usize> = (0..g.n)
            .filter(|i| held.binary_search(i).is_err())
            .collect();
        let rows: Vec<f32> = kept
            .iter()
            .flat_map(|&i| base[i * g.dim..(i + 1) * g.dim].iter().copied())
            .collect();
        dataset::exact_knn(&rows, &queries, g.dim, g.gt_k.min(kept.len()), g.metric)
            .into_iter()
            .map(|r| r.into_iter().map(|j| kept[j as usize] as u32).collect())
            .collect()
    };
    tracing::info!(
        nq = g.nq,
        k = g.gt_k,
        secs = t.elapsed().as_secs_f64(),
        "computed exact ground truth"
    );
    let gt_flat: Vec<i32> = gt.iter().flatten().map(|&i| i as i32).collect();
    dataset::write_fvecs(&g.out.join("base.fvecs"), g.dim, &base)?;
    dataset::write_fvecs(&g.out.join("queries.fvecs"), g.dim, &queries)?;
    let gt_k = gt.first().map_or(0, Vec::len);
    dataset::write_ivecs(&g.out.join("groundtruth.ivecs"), gt_k, &gt_flat)?;
    println!(
        "wrote {}/{{base.fvecs,queries.fvecs,groundtruth.ivecs}}",
        g.out.display()
    );
    Ok(())
}

fn load(path: &Option<PathBuf>, what: &str) -> anyhow::Result<PathBuf> {
    path.clone()
        .with_context(|| format!("--{what} is required"))
}

fn bench(a: &RunArgs) -> anyhow::Result<()> {
    ensure!(a.k > 0, "--k must be at least 1");
    ensure!(
        !a.nprobe.is_empty() && a.nprobe.iter().all(|&p| p > 0),
        "--nprobe values must be at least 1"
    );
    let base_path = load(&a.base, "base")?;
    let base = dataset::read_vectors(&base_path)?;
    let queries = dataset::read_vectors(&load(&a.queries, "queries")?)?;
    let gt = dataset::read_ivecs(&load(&a.groundtruth, "groundtruth")?)?;
    ensure!(!base.is_empty(), "{}: no vectors", base_path.display());
    ensure!(
        queries.dim == base.dim,
        "queries have dimension {}, base has {}",
        queries.dim,
        base.dim
    );
    ensure!(
        gt.len() >= queries.len(),
        "ground truth has {} rows for {} queries",
        gt.len(),
        queries.len()
    );
    ensure!(
        gt.dim >= a.k,
        "ground truth has {} neighbours per query, --k is {}",
        gt.dim,
        a.k
    );
    let dim = base.dim;
    let quantizer = QuantizerKind::parse(&a.quantizer, a.pq_m)?;
    let init = match a.kmeans_init.as_str() {
        "random" => KMeansInit::Random,
        "kmeans++" | "kmeanspp" => KMeansInit::KMeansPlusPlus,
        other => bail!("--kmeans-init {other:?}: expected random or kmeans++"),
    };
    let mut params = IvfParams::new(dim, a.metric, a.nlist, quantizer);
    params.keep_raw = a.rerank > 0;
    params.kmeans.iters = a.kmeans_iters;
    params.kmeans.seed = a.seed;
    params.kmeans.init = init;
    params.kmeans.balance = a.balance;

    let threads = if a.threads == 0 {
        num_cpus()
    } else {
        a.threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;

    // Training sample: as FAISS, k-means itself subsamples to 256 points per list; an explicit
    // --train-size takes a seeded sample first.
    let n = base.len();
    let train_data: Vec<f32> = match a.train_size {
        Some(s) if s < n => {
            let mut idx = quiver_ivf::Rng::new(a.seed).sample_indices(n, s);
            idx.sort_unstable();
            idx.iter()
                .flat_map(|&i| base.row(i).iter().copied())
                .collect()
        }
        _ => base.data.clone(),
    };
    let t = Instant::now();
    let mut index = pool.install(|| IvfIndex::train(params, &train_data))?;
    let train_s = t.elapsed().as_secs_f64();
    drop(train_data);
    let ids: Vec<u64> = (0..n as u64).collect();
    let t = Instant::now();
    pool.install(|| index.add(&ids, &base.data))?;
    let add_s = t.elapsed().as_secs_f64();
    match a.flat_scan.as_str() {
        "f16" => {}
        "f32" => {
            index.set_half_scan(false);
        }
        other => bail!("--flat-scan {other:?}: expected f16 or f32"),
    }
    let stats = index.list_stats();
    let build = json!({
        "phase": "build",
        "train_s": round(train_s, 3),
        "add_s": round(add_s, 3),
        "index_bytes": index.memory_bytes(),
        "imbalance": round(stats.imbalance, 3),
        "max_list": stats.max,
        "empty_lists": stats.empty,
        "n": n,
        "dim": dim,
        "nlist": a.nlist,
        "quantizer": quantizer.to_string(),
        "metric": a.metric.as_str(),
        "threads": threads,
        "kernels": kernels::get().name,
        "half_scan": index.half_scan(),
    });
    if a.json {
        println!("{build}");
    } else {
        println!(
            "built {} x {dim} {} IVF{} ({} kernels): train {train_s:.2}s, add {add_s:.2}s, {:.1} MiB, imbalance {:.2}, max list {}",
            n,
            quantizer,
            a.nlist,
            kernels::get().name,
            index.memory_bytes() as f64 / (1 << 20) as f64,
            stats.imbalance,
            stats.max
        );
        println!(
            "{:>7} {:>10} {:>10} {:>9} {:>9} {:>10}",
            "nprobe", "recall@k", "qps", "p50_us", "p99_us", "scanned"
        );
    }

    let nq = queries.len();
    let truth: Vec<Vec<u32>> = (0..nq)
        .map(|i| gt.row(i).iter().map(|&x| x as u32).collect())
        .collect();
    for &nprobe in &a.nprobe {
        let sp = SearchParams {
            k: a.k,
            nprobe,
            rerank: a.rerank,
        };
        // Warm-up pass over a few queries so page faults and lazy init are not timed.
        for q in queries.data.chunks_exact(dim).take(50) {
            index.search(q, &sp)?;
        }
        let mut batch_s = f64::INFINITY;
        let mut cpu_s = f64::INFINITY;
        let mut results = Vec::new();
        for _ in 0..a.repeat.max(1) {
            let cpu0 = process_cpu_seconds();
            let t = Instant::now();
            results = pool.install(|| index.search_batch_with_stats(&queries.data, &sp))?;
            batch_s = batch_s.min(t.elapsed().as_secs_f64());
            if let (Some(c0), Some(c1)) = (cpu0, process_cpu_seconds()) {
                cpu_s = cpu_s.min(c1 - c0);
            }
        }
        let found: Vec<Vec<u64>> = results
            .iter()
            .map(|(r, _)| r.iter().map(|n| n.id).collect())
            .collect();
        let scanned = results.iter().map(|(_, s)| s.scanned).sum::<usize>() as f64 / nq as f64;
        let reranked = results.iter().map(|(_, s)| s.reranked).sum::<usize>() as f64 / nq as f64;
        let recall = dataset::recall_at_k(&found, &truth, a.k);

        let mut lat: Vec<f64> = Vec::with_capacity(a.latency_queries.min(nq));
        for q in queries.data.chunks_exact(dim).take(a.latency_queries) {
            let t = Instant::now();
            index.search(q, &sp)?;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        let qps = nq as f64 / batch_s;
        if let Some(prefix) = &a.save_ids {
            let flat: Vec<i32> = found
                .iter()
                .flat_map(|r| (0..a.k).map(move |i| r.get(i).map_or(-1, |&id| id as i32)))
                .collect();
            dataset::write_ivecs(
                Path::new(&format!("{prefix}.nprobe{nprobe}.ivecs")),
                a.k,
                &flat,
            )?;
        }
        if a.json {
            println!(
                "{}",
                json!({
                    "nprobe": nprobe,
                    "recall_at_k": round(recall, 4),
                    "qps": round(qps, 1),
                    "cpu_qps": if cpu_s.is_finite() { round(nq as f64 / cpu_s, 1) } else { 0.0 },
                    "p50_us": round(pct(0.5), 1),
                    "p99_us": round(pct(0.99), 1),
                    "scanned": round(scanned, 1),
                    "reranked": round(reranked, 1),
                })
            );
        } else {
            println!(
                "{nprobe:>7} {recall:>10.4} {qps:>10.1} {:>9.1} {:>9.1} {scanned:>10.1}",
                pct(0.5),
                pct(0.99)
            );
        }
    }
    Ok(())
}

/// CPU time of the whole process (all threads) in seconds, from the scheduler's own
/// nanosecond counters: unlike wall time, it does not count time the machine spent on other
/// work, which makes figures comparable on a shared machine. Linux only.
fn process_cpu_seconds() -> Option<f64> {
    let mut ns: u64 = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_rows_are_left_out_of_the_ground_truth() {
        let out = std::env::temp_dir().join(format!("quiver-gen-{}", std::process::id()));
        let g = GenerateArgs {
            out: out.clone(),
            n: 600,
            dim: 8,
            nq: 20,
            clusters: 5,
            skew: 0.0,
            gt_k: 10,
            metric: Metric::L2,
            seed: 3,
            held_out: 60,
        };
        generate(&g).expect("generate");
        let base = dataset::read_vectors(&out.join("base.fvecs")).expect("base");
        let queries = dataset::read_vectors(&out.join("queries.fvecs")).expect("queries");
        let gt = dataset::read_ivecs(&out.join("groundtruth.ivecs")).expect("gt");
        let held = crate::source::eval_positions(600, 60);
        assert_eq!((gt.dim, gt.len()), (10, 20));
        for q in 0..20 {
            let qv = &queries.data[q * 8..(q + 1) * 8];
            let mut exact: Vec<(f32, usize)> = (0..600)
                .filter(|i| held.binary_search(i).is_err())
                .map(|i| {
                    (
                        crate::source::distance("l2", qv, &base.data[i * 8..(i + 1) * 8]),
                        i,
                    )
                })
                .collect();
            exact.sort_by(|a, b| a.0.total_cmp(&b.0));
            let got: Vec<usize> = gt.data[q * 10..(q + 1) * 10]
                .iter()
                .map(|&i| i as usize)
                .collect();
            assert!(
                got.iter().all(|i| held.binary_search(i).is_err()),
                "{got:?}"
            );
            let want: Vec<usize> = exact[..10].iter().map(|e| e.1).collect();
            assert_eq!(got, want, "query {q}");
        }
        let _ = std::fs::remove_dir_all(&out);
    }
}
