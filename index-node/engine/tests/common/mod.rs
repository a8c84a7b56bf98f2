//! Shared fixtures: a small seeded clustered dataset with exact ground truth.
#![allow(dead_code)]

use quiver_ivf::dataset::{self, Synthetic};
use quiver_ivf::{IvfIndex, IvfParams, Metric, QuantizerKind, SearchParams};

pub const DIM: usize = 32;
pub const N: usize = 6000;
pub const NQ: usize = 100;
pub const K: usize = 10;

pub struct Data {
    pub base: Vec<f32>,
    pub queries: Vec<f32>,
}

pub fn data(seed: u64) -> Data {
    let syn = Synthetic {
        n: N,
        dim: DIM,
        clusters: 40,
        skew: 0.5,
        seed,
    };
    Data {
        base: syn.generate(N, 0),
        queries: syn.generate(NQ, 1),
    }
}

pub fn build(d: &Data, metric: Metric, q: QuantizerKind, keep_raw: bool) -> IvfIndex {
    let mut p = IvfParams::new(DIM, metric, 64, q);
    p.keep_raw = keep_raw;
    let mut index = IvfIndex::train(p, &d.base).expect("train");
    let ids: Vec<u64> = (0..N as u64).collect();
    index.add(&ids, &d.base).expect("add");
    index
}

pub fn recall(index: &IvfIndex, d: &Data, metric: Metric, sp: SearchParams) -> f64 {
    let truth = dataset::exact_knn(&d.base, &d.queries, DIM, K, metric);
    let found: Vec<Vec<u64>> = index
        .search_batch(&d.queries, &sp)
        .expect("search")
        .into_iter()
        .map(|r| r.into_iter().map(|n| n.id).collect())
        .collect();
    dataset::recall_at_k(&found, &truth, K)
}
