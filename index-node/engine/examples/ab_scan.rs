//! Interleaved A/B timing of the Flat scan in f32 and in half precision on one index, in one
//! process, so the machine's drift hits both alike. Prints the median QPS of each and the
//! median of the per-round ratios; also how fast the half-precision copies are made and the
//! coarse assignment runs.
//!
//!     [NLIST=1024] [SAME_QUERY=1] cargo run --release -p quiver-ivf --example ab_scan -- \
//!         DIR NPROBE[,NPROBE..] [ROUNDS] [half|f32]

use std::path::Path;
use std::time::Instant;

use quiver_ivf::{IvfIndex, IvfParams, Metric, QuantizerKind, SearchParams, dataset};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(
        args.get(1)
            .ok_or("usage: ab_scan DIR NPROBES [ROUNDS] [half|f32]")?,
    );
    let nprobes: Vec<usize> = args
        .get(2)
        .map_or("1,2,4", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let rounds: usize = args.get(3).map_or(Ok(15), |s| s.parse())?;
    // `half` or `f32` times only that variant (for profiling the scan alone).
    let only = args.get(4).map(String::as_str);
    let base = dataset::read_fvecs(&dir.join("base.fvecs"))?;
    let mut queries = dataset::read_fvecs(&dir.join("queries.fvecs"))?;
    // SAME_QUERY=1: every query is the first one, so its lists stay in cache (separates
    // memory stalls from computation).
    if std::env::var("SAME_QUERY").is_ok_and(|v| v == "1") {
        let q = queries.data[..queries.dim].to_vec();
        queries.data = q.repeat(queries.data.len() / queries.dim);
    }
    let dim = base.dim;
    let nlist = std::env::var("NLIST").map_or(Ok(1024), |v| v.parse())?;
    let mut params = IvfParams::new(dim, Metric::L2, nlist, QuantizerKind::Flat);
    params.kmeans.iters = 4;
    let mut index = IvfIndex::train(params, &base.data)?;
    let ids: Vec<u64> = (0..base.len() as u64).collect();
    index.add(&ids, &base.data)?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    // Making the half-precision copies (what loading a Flat index pays), one thread.
    index.set_half_scan(false);
    let t = Instant::now();
    pool.install(|| index.set_half_scan(true));
    let s = t.elapsed().as_secs_f64();
    println!(
        "half copies: {:.2} s for {} values ({:.0} M values/s)",
        s,
        base.data.len(),
        base.data.len() as f64 / s / 1e6
    );
    // Coarse assignment alone (the tile kernel), best of 5 on one thread.
    let m = base.len().min(50_000);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        pool.install(|| index.assign(&base.data[..m * dim]))?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("assign: {:.0} vectors/s to {nlist} lists", m as f64 / best);
    for &nprobe in &nprobes {
        let p = SearchParams::new(10, nprobe);
        let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
        let mut reranked = 0.0;
        for _ in 0..rounds {
            let mut qps = [0.0; 2];
            for (v, half) in [false, true].into_iter().enumerate() {
                if only.is_some_and(|o| (o == "half") != half) {
                    continue;
                }
                if index.half_scan() != half {
                    index.set_half_scan(half);
                }
                let t = Instant::now();
                let out = pool.install(|| index.search_batch_with_stats(&queries.data, &p))?;
                qps[v] = out.len() as f64 / t.elapsed().as_secs_f64();
                if half {
                    reranked = out.iter().map(|(_, s)| s.reranked).sum::<usize>() as f64
                        / out.len() as f64;
                }
            }
            a.push(qps[0]);
            b.push(qps[1]);
            r.push(qps[1] / qps[0]);
        }
        println!(
            "nprobe {nprobe:>3}: f32 {:>8.0} qps, half {:>8.0} qps, half/f32 median ratio {:.3}, \
             re-ranked {reranked:.1} per query",
            median(&mut a),
            median(&mut b),
            median(&mut r)
        );
    }
    Ok(())
}
