//! Bulk assignment of points to their nearest centroid, as a blocked matrix product:
//! `cost(x, c) = ‖x‖² − 2x·c + ‖c‖² + bias(c)` for L2 and `−x·c + bias(c)` for dot metrics.
//! Used by k-means iterations and by `add`/`assign` on many vectors.

use rayon::prelude::*;

use crate::kernels::{self, tile::TILE_C, tile::TILE_P};

/// Centroids re-laid as dimension-major panels of 32, padded with zero centroids.
#[derive(Debug, Clone)]
pub struct Panels {
    dim: usize,
    k: usize,
    data: Vec<f32>,
    /// ‖c‖² for L2 (0 for dot), plus the bias; +inf on padding so it never wins.
    offsets: Vec<f32>,
}

impl Panels {
    pub fn new(centroids: &[f32], dim: usize, dot: bool, bias: Option<&[f32]>) -> Self {
        let k = centroids.len() / dim.max(1);
        let npanels = k.div_ceil(TILE_C);
        let mut data = vec![0f32; npanels * dim * TILE_C];
        let mut offsets = vec![f32::INFINITY; npanels * TILE_C];
        let kern = kernels::get();
        for (j, c) in centroids.chunks_exact(dim).enumerate() {
            let (p, lane) = (j / TILE_C, j % TILE_C);
            let panel = &mut data[p * dim * TILE_C..(p + 1) * dim * TILE_C];
            for (d, &v) in c.iter().enumerate() {
                panel[d * TILE_C + lane] = v;
            }
            let norm = if dot { 0.0 } else { (kern.dot)(c, c) };
            offsets[j] = norm + bias.map_or(0.0, |b| b[j]);
        }
        Panels {
            dim,
            k,
            data,
            offsets,
        }
    }
}

/// Nearest centroid of every row of `x`: (labels, costs). For L2, costs are squared
/// distances (plus bias); for dot metrics, negated dot products (plus bias).
pub fn nearest(x: &[f32], panels: &Panels, dot: bool) -> (Vec<u32>, Vec<f32>) {
    let dim = panels.dim;
    let n = x.len() / dim;
    let mut labels = vec![0u32; n];
    let mut costs = vec![0f32; n];
    const CHUNK: usize = TILE_P * 16;
    labels
        .par_chunks_mut(CHUNK)
        .zip(costs.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(ci, (lab, cost))| {
            let start = ci * CHUNK;
            let rows = &x[start * dim..(start + lab.len()) * dim];
            nearest_chunk(rows, panels, dot, lab, cost);
        });
    (labels, costs)
}

/// Full cost matrix of a block of rows: `out[i*k + j] = cost(x_i, c_j)` with `k` the number
/// of centroids; for L2 the true squared distance (‖x‖² included). Used for the coarse step
/// of batch search, where one matrix product for many queries beats one pass per query.
/// Rows should come in blocks of a few tiles (batch search passes 32): each centroid panel
/// is then read from memory once per block and from L1 for the block's other tiles.
pub fn costs(x: &[f32], panels: &Panels, dot: bool, out: &mut [f32]) {
    let kern = kernels::get();
    let dim = panels.dim;
    let k = panels.k;
    let (xt, xnorm) = load_tiles(x, dim, dot);
    let mut acc = [[0f32; TILE_C]; TILE_P];
    let npanels = panels.offsets.len() / TILE_C;
    let nrows = x.len() / dim;
    let scale = if dot { -1.0 } else { -2.0 };
    for p_i in 0..npanels {
        let panel = &panels.data[p_i * dim * TILE_C..(p_i + 1) * dim * TILE_C];
        let j0 = p_i * TILE_C;
        let width = TILE_C.min(k - j0);
        let offsets = &panels.offsets[j0..j0 + width];
        for (t, (xt, xnorm)) in xt.chunks_exact(dim * TILE_P).zip(&xnorm).enumerate() {
            (kern.dot_tile)(xt, panel, &mut acc);
            for (p, row) in acc.iter().enumerate().take(nrows - t * TILE_P) {
                let i = t * TILE_P + p;
                let o = &mut out[i * k + j0..i * k + j0 + width];
                for ((v, &a), &off) in o.iter_mut().zip(row).zip(offsets) {
                    let c = scale * a + off + xnorm[p];
                    *v = if dot { c } else { c.max(0.0) };
                }
            }
        }
    }
}

/// Transposes rows into tiles of 8 (dimension-major, zero-padded), one after another, and
/// returns their squared norms (zeros for dot metrics, which do not need them).
fn load_tiles(rows: &[f32], dim: usize, dot: bool) -> (Vec<f32>, Vec<[f32; TILE_P]>) {
    let kern = kernels::get();
    let ntiles = (rows.len() / dim).div_ceil(TILE_P);
    let mut xt = vec![0f32; ntiles * dim * TILE_P];
    let mut xnorm = vec![[0f32; TILE_P]; ntiles];
    for (i, row) in rows.chunks_exact(dim).enumerate() {
        let (t, p) = (i / TILE_P, i % TILE_P);
        let tile = &mut xt[t * dim * TILE_P..(t + 1) * dim * TILE_P];
        for (d, &v) in row.iter().enumerate() {
            tile[d * TILE_P + p] = v;
        }
        if !dot {
            xnorm[t][p] = (kern.dot)(row, row);
        }
    }
    (xt, xnorm)
}

fn nearest_chunk(rows: &[f32], panels: &Panels, dot: bool, labels: &mut [u32], costs: &mut [f32]) {
    let kern = kernels::get();
    let dim = panels.dim;
    let (xts, xnorms) = load_tiles(rows, dim, dot);
    let mut acc = [[0f32; TILE_C]; TILE_P];
    let npanels = panels.offsets.len() / TILE_C;
    let nrows = rows.len() / dim;
    for (t, (xt, xnorm)) in xts.chunks_exact(dim * TILE_P).zip(&xnorms).enumerate() {
        let np = (nrows - t * TILE_P).min(TILE_P);
        let mut best = [(f32::INFINITY, 0u32); TILE_P];
        for p_i in 0..npanels {
            let panel = &panels.data[p_i * dim * TILE_C..(p_i + 1) * dim * TILE_C];
            (kern.dot_tile)(xt, panel, &mut acc);
            let off = &panels.offsets[p_i * TILE_C..(p_i + 1) * TILE_C];
            for (p, b) in best.iter_mut().enumerate().take(np) {
                let scale = if dot { -1.0 } else { -2.0 };
                for j in 0..TILE_C {
                    let c = scale * acc[p][j] + off[j];
                    if c < b.0 {
                        *b = (c, (p_i * TILE_C + j) as u32);
                    }
                }
            }
        }
        for p in 0..np {
            let i = t * TILE_P + p;
            labels[i] = best[p].1;
            // Rounding can push a tiny L2 distance below zero.
            costs[i] = if dot {
                best[p].0
            } else {
                (best[p].0 + xnorm[p]).max(0.0)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn matches_brute_force() {
        let mut rng = Rng::new(7);
        for &(n, k, dim) in &[(37usize, 5usize, 3usize), (100, 70, 17), (9, 33, 64)] {
            let x: Vec<f32> = (0..n * dim).map(|_| rng.normal()).collect();
            let c: Vec<f32> = (0..k * dim).map(|_| rng.normal()).collect();
            for dot in [false, true] {
                let panels = Panels::new(&c, dim, dot, None);
                let (labels, costs) = nearest(&x, &panels, dot);
                let mut full = vec![0f32; n * k];
                super::costs(&x, &panels, dot, &mut full);
                for i in 0..n {
                    let xi = &x[i * dim..(i + 1) * dim];
                    let cost = |j: usize| {
                        let cj = &c[j * dim..(j + 1) * dim];
                        if dot {
                            -xi.iter().zip(cj).map(|(a, b)| a * b).sum::<f32>()
                        } else {
                            xi.iter()
                                .zip(cj)
                                .map(|(a, b)| (a - b) * (a - b))
                                .sum::<f32>()
                        }
                    };
                    let best = (0..k).map(cost).fold(f32::INFINITY, f32::min);
                    for j in 0..k {
                        let want = cost(j).max(if dot { f32::NEG_INFINITY } else { 0.0 });
                        let got = full[i * k + j];
                        assert!(
                            (got - want).abs() <= 1e-3 * (1.0 + want.abs()),
                            "cost {i},{j}"
                        );
                    }
                    let got = cost(labels[i] as usize);
                    assert!((got - best).abs() <= 1e-3 * (1.0 + best.abs()), "row {i}");
                    assert!(
                        (costs[i] - best).abs() <= 1e-3 * (1.0 + best.abs()),
                        "row {i}"
                    );
                }
            }
        }
    }
}
