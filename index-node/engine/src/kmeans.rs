//! k-means for the coarse quantizer (and, at k = 256, for PQ codebooks).
//!
//! As in FAISS: subsample to at most `max_points_per_centroid` points per centroid, a fixed
//! number of Lloyd iterations, empty clusters repaired by splitting a large one. Beyond FAISS:
//! optional balancing (`balance`) that splits oversized clusters with centroids taken from the
//! smallest ones, because oversized "hot" lists are what makes IVF slow and uneven in
//! production: a query that probes a hot list scans many entries.

use rayon::prelude::*;

use crate::assign::{self, Panels};
use crate::error::{IvfError, Result, check_vectors};
use crate::kernels;
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KMeansInit {
    /// k distinct random points (FAISS's default).
    Random,
    /// k-means++ seeding: slower, better starting points on clustered data.
    KMeansPlusPlus,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KMeansParams {
    pub iters: usize,
    pub seed: u64,
    pub init: KMeansInit,
    /// Subsample the training set to at most this many points per centroid (0 = no limit).
    pub max_points_per_centroid: usize,
    /// Cluster-size balancing: 0 is plain Lloyd (FAISS). Above 0, clusters larger than
    /// `(1 + 1/balance) × mean` are split during training by moving the centroids of the
    /// smallest clusters into them (at 1: above twice the mean size), which puts more
    /// centroids where the data is dense and so shrinks the hot lists.
    pub balance: f32,
}

impl Default for KMeansParams {
    fn default() -> Self {
        KMeansParams {
            iters: 25,
            seed: 1234,
            init: KMeansInit::Random,
            max_points_per_centroid: 256,
            balance: 0.0,
        }
    }
}

/// Trained centroids, row-major `k × dim`.
#[derive(Debug, Clone)]
pub struct KMeans {
    pub centroids: Vec<f32>,
    pub k: usize,
    pub dim: usize,
    /// Mean assignment cost of the last iteration.
    pub objective: f64,
}

/// Trains `k` centroids on `data` (row-major, `dim` wide). `spherical` normalises centroids
/// after each update (cosine); `dot` assigns by inner product instead of L2.
pub fn train(
    data: &[f32],
    dim: usize,
    k: usize,
    params: &KMeansParams,
    dot: bool,
    spherical: bool,
) -> Result<KMeans> {
    let n = check_vectors("k-means training data", data, dim)?;
    if k == 0 {
        return Err(IvfError::param("k", "must be at least 1"));
    }
    if n < k {
        return Err(IvfError::TooFewTrainingPoints {
            what: "k-means",
            got: n,
            need: k,
        });
    }
    if params.iters == 0 {
        return Err(IvfError::param("kmeans iters", "must be at least 1"));
    }
    if !(params.balance.is_finite() && params.balance >= 0.0) {
        return Err(IvfError::param("balance", "must be a finite value >= 0"));
    }
    let mut rng = Rng::new(params.seed);

    // Subsample, keeping the order of the kept points so results do not depend on chunking.
    let owned;
    let x: &[f32] = if params.max_points_per_centroid > 0 && n > k * params.max_points_per_centroid
    {
        let mut idx = rng.sample_indices(n, k * params.max_points_per_centroid);
        idx.sort_unstable();
        owned = idx
            .iter()
            .flat_map(|&i| data[i * dim..(i + 1) * dim].iter().copied())
            .collect::<Vec<f32>>();
        &owned
    } else {
        data
    };
    let n = x.len() / dim;

    let mut centroids = match params.init {
        KMeansInit::Random => rng
            .sample_indices(n, k)
            .iter()
            .flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied())
            .collect(),
        KMeansInit::KMeansPlusPlus => plus_plus(x, dim, k, dot, &mut rng),
    };
    if spherical {
        crate::metric::normalize_rows(&mut centroids, dim);
    }

    let mut objective = 0.0;
    // Balancing moves stop a few iterations before the end so Lloyd can settle.
    let last_move = params.iters.saturating_sub(3);
    for iter in 0..params.iters {
        let panels = Panels::new(&centroids, dim, dot, None);
        let (labels, costs) = assign::nearest(x, &panels, dot);
        objective = costs.iter().map(|&c| f64::from(c)).sum::<f64>() / n as f64;
        let buckets = Buckets::new(&labels, k);
        update(x, dim, &buckets, &mut centroids);
        let mut counts = buckets.counts();
        split_empty(&mut centroids, &mut counts, dim, &mut rng);
        if params.balance > 0.0 && iter < last_move {
            split_oversized(
                x,
                dim,
                &buckets,
                &counts,
                params.balance,
                &mut centroids,
                &mut rng,
            );
        }
        if spherical {
            crate::metric::normalize_rows(&mut centroids, dim);
        }
    }
    Ok(KMeans {
        centroids,
        k,
        dim,
        objective,
    })
}

/// Point indices grouped by cluster (a counting sort of the labels).
struct Buckets {
    order: Vec<usize>,
    starts: Vec<usize>,
}

impl Buckets {
    fn new(labels: &[u32], k: usize) -> Self {
        let mut starts = vec![0usize; k + 1];
        for &l in labels {
            starts[l as usize + 1] += 1;
        }
        for j in 0..k {
            starts[j + 1] += starts[j];
        }
        let mut order = vec![0usize; labels.len()];
        let mut fill = starts.clone();
        for (i, &l) in labels.iter().enumerate() {
            order[fill[l as usize]] = i;
            fill[l as usize] += 1;
        }
        Buckets { order, starts }
    }

    fn members(&self, j: usize) -> &[usize] {
        &self.order[self.starts[j]..self.starts[j + 1]]
    }

    fn counts(&self) -> Vec<usize> {
        self.starts.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

/// Recomputes each centroid as the mean of its points. Clusters left empty keep their old
/// centroid until `split_empty` moves them.
fn update(x: &[f32], dim: usize, buckets: &Buckets, centroids: &mut [f32]) {
    centroids
        .par_chunks_exact_mut(dim)
        .enumerate()
        .for_each(|(j, c)| {
            let members = buckets.members(j);
            if members.is_empty() {
                return;
            }
            let mut acc = vec![0f64; dim];
            for &i in members {
                for (a, &v) in acc.iter_mut().zip(&x[i * dim..(i + 1) * dim]) {
                    *a += f64::from(v);
                }
            }
            let inv = 1.0 / members.len() as f64;
            for (cv, a) in c.iter_mut().zip(acc) {
                *cv = (a * inv) as f32;
            }
        });
}

/// Splits clusters above `(1 + 1/balance) × mean` size: the centroid of one of the smallest
/// clusters moves onto a random member of the oversized one, and the next Lloyd step divides
/// the oversized cluster between the two. The small cluster's points join their neighbours.
fn split_oversized(
    x: &[f32],
    dim: usize,
    buckets: &Buckets,
    counts: &[usize],
    balance: f32,
    centroids: &mut [f32],
    rng: &mut Rng,
) {
    let k = counts.len();
    let mean = counts.iter().sum::<usize>() as f64 / k as f64;
    let limit = mean * (1.0 + 1.0 / f64::from(balance));
    let mut big: Vec<usize> = (0..k).filter(|&j| counts[j] as f64 > limit).collect();
    if big.is_empty() {
        return;
    }
    big.sort_unstable_by_key(|&j| std::cmp::Reverse(counts[j]));
    let mut small: Vec<usize> = (0..k)
        .filter(|&j| (counts[j] as f64) < mean * 0.5)
        .collect();
    small.sort_unstable_by_key(|&j| counts[j]);
    // A bounded number of moves per iteration keeps the objective from jumping.
    let moves = big.len().min(small.len()).min((k / 16).max(1));
    for (&b, &s) in big.iter().zip(&small).take(moves) {
        let members = buckets.members(b);
        if members.is_empty() {
            continue;
        }
        let pick = members[rng.below(members.len())];
        centroids[s * dim..(s + 1) * dim].copy_from_slice(&x[pick * dim..(pick + 1) * dim]);
    }
}

/// Moves each empty centroid next to a large cluster's centroid and splits that cluster in
/// two (FAISS's repair): picks clusters with probability growing with their size.
fn split_empty(centroids: &mut [f32], counts: &mut [usize], dim: usize, rng: &mut Rng) {
    const EPS: f32 = 1.0 / 1024.0;
    let total: usize = counts.iter().sum();
    let k = counts.len();
    for empty in 0..k {
        if counts[empty] != 0 {
            continue;
        }
        // Pick a donor with probability (size - 1) / (total - k), as FAISS does.
        let mut donor = 0;
        loop {
            let j = rng.below(k);
            let p = (counts[j] as f32 - 1.0) / (total.saturating_sub(k).max(1)) as f32;
            if counts[j] > 1 && rng.unit() < p.max(1e-3) {
                donor = j;
                break;
            }
            if counts.iter().all(|&c| c <= 1) {
                break;
            }
        }
        if counts[donor] <= 1 {
            return;
        }
        let (src, dst) = (donor * dim, empty * dim);
        for d in 0..dim {
            let v = centroids[src + d];
            let sign = if d % 2 == 0 { 1.0 } else { -1.0 };
            centroids[dst + d] = v * (1.0 + sign * EPS);
            centroids[src + d] = v * (1.0 - sign * EPS);
        }
        counts[empty] = counts[donor] / 2;
        counts[donor] -= counts[empty];
    }
}

/// k-means++ seeding: each next centroid drawn with probability proportional to the squared
/// distance to the nearest centroid so far.
fn plus_plus(x: &[f32], dim: usize, k: usize, dot: bool, rng: &mut Rng) -> Vec<f32> {
    let kern = kernels::get();
    let n = x.len() / dim;
    let mut centroids = Vec::with_capacity(k * dim);
    let first = rng.below(n);
    centroids.extend_from_slice(&x[first * dim..(first + 1) * dim]);
    let mut best = vec![f32::INFINITY; n];
    for c in 1..k {
        let last = &centroids[(c - 1) * dim..c * dim].to_vec();
        best.par_iter_mut()
            .zip(x.par_chunks_exact(dim))
            .for_each(|(b, row)| {
                // Seeding is geometric even for dot metrics: spread points out.
                let _ = dot;
                let d = (kern.l2)(row, last);
                if d < *b {
                    *b = d;
                }
            });
        let total: f64 = best.iter().map(|&b| f64::from(b)).sum();
        let pick = if total > 0.0 {
            let mut target = f64::from(rng.unit()) * total;
            let mut chosen = n - 1;
            for (i, &b) in best.iter().enumerate() {
                target -= f64::from(b);
                if target <= 0.0 {
                    chosen = i;
                    break;
                }
            }
            chosen
        } else {
            rng.below(n)
        };
        centroids.extend_from_slice(&x[pick * dim..(pick + 1) * dim]);
    }
    centroids
}

/// Sizes → imbalance factor `k · Σ n_i² / (Σ n_i)²` (1 = perfectly balanced), as FAISS
/// reports it.
pub fn imbalance_factor(sizes: &[usize]) -> f64 {
    let total: f64 = sizes.iter().map(|&s| s as f64).sum();
    if total == 0.0 {
        return 1.0;
    }
    let sq: f64 = sizes.iter().map(|&s| (s as f64) * (s as f64)).sum();
    sizes.len() as f64 * sq / (total * total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(n_per: usize, centers: &[[f32; 2]], seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        let mut v = Vec::new();
        for c in centers {
            for _ in 0..n_per {
                v.push(c[0] + 0.05 * rng.normal());
                v.push(c[1] + 0.05 * rng.normal());
            }
        }
        v
    }

    #[test]
    fn finds_separated_blobs() {
        let centers = [[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0], [5.0, -5.0]];
        let data = blobs(200, &centers, 1);
        let params = KMeansParams {
            init: KMeansInit::KMeansPlusPlus,
            ..Default::default()
        };
        let km = train(&data, 2, 4, &params, false, false).expect("train");
        for c in &centers {
            let near = km
                .centroids
                .chunks_exact(2)
                .map(|x| (x[0] - c[0]).powi(2) + (x[1] - c[1]).powi(2))
                .fold(f32::INFINITY, f32::min);
            assert!(near < 0.05, "no centroid near {c:?}: {near}");
        }
        assert!(km.objective < 0.02, "objective {}", km.objective);
    }

    #[test]
    fn same_seed_same_centroids() {
        let data = blobs(100, &[[0.0, 0.0], [3.0, 1.0]], 2);
        let p = KMeansParams::default();
        let a = train(&data, 2, 8, &p, false, false).expect("a");
        let b = train(&data, 2, 8, &p, false, false).expect("b");
        assert_eq!(a.centroids, b.centroids);
    }

    #[test]
    fn no_empty_clusters_with_duplicates() {
        // Many duplicates force empty clusters; the repair must leave none empty.
        let mut data = vec![1.0f32; 2 * 300];
        data.extend(blobs(50, &[[4.0, 4.0]], 3));
        let km = train(&data, 2, 16, &KMeansParams::default(), false, false).expect("train");
        let panels = Panels::new(&km.centroids, 2, false, None);
        let (labels, _) = assign::nearest(&data, &panels, false);
        let mut used = [false; 16];
        labels.iter().for_each(|&l| used[l as usize] = true);
        // Identical points can only fill one cluster each, so count distinct used centroids
        // among the non-degenerate part: at least the 50 blob points must spread out.
        assert!(used.iter().filter(|&&u| u).count() >= 8);
    }

    #[test]
    fn balance_reduces_imbalance_on_skewed_data() {
        // One dense blob with most points and a few sparse ones.
        let mut rng = Rng::new(9);
        let mut data = Vec::new();
        for i in 0..4000 {
            let (cx, s) = if i < 3400 {
                (0.0, 1.0)
            } else {
                (20.0 * (i % 6) as f32, 3.0)
            };
            data.push(cx + s * rng.normal());
            data.push(s * rng.normal());
        }
        let sizes = |km: &KMeans| {
            let panels = Panels::new(&km.centroids, 2, false, None);
            let (labels, _) = assign::nearest(&data, &panels, false);
            let mut s = vec![0usize; km.k];
            labels.iter().for_each(|&l| s[l as usize] += 1);
            s
        };
        let plain = train(&data, 2, 32, &KMeansParams::default(), false, false).expect("plain");
        let balanced = train(
            &data,
            2,
            32,
            &KMeansParams {
                balance: 1.0,
                ..Default::default()
            },
            false,
            false,
        )
        .expect("balanced");
        let (ip, ib) = (
            imbalance_factor(&sizes(&plain)),
            imbalance_factor(&sizes(&balanced)),
        );
        assert!(ib < ip * 0.95, "balanced {ib} not below plain {ip}");
    }

    #[test]
    fn rejects_bad_input() {
        let data = vec![0.0f32; 10];
        assert!(matches!(
            train(&data, 2, 8, &KMeansParams::default(), false, false),
            Err(IvfError::TooFewTrainingPoints {
                got: 5,
                need: 8,
                ..
            })
        ));
        let mut bad = vec![0.0f32; 40];
        bad[7] = f32::NAN;
        let err = train(&bad, 2, 2, &KMeansParams::default(), false, false).expect_err("nan");
        assert!(err.to_string().contains("vector 3, component 1"), "{err}");
    }
}
