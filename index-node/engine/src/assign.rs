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
pub fn costs(x: &[f32], panels: &Panels, dot: bool, out: &mut [f32]) {
    let kern = kernels::get();
    let dim = panels.dim;
    let k = panels.k;
    let mut xt = vec![0f32; dim * TILE_P];
    let mut acc = [[0f32; TILE_C]; TILE_P];
    let npanels = panels.offsets.len() / TILE_C;
    for (t, tile) in x.chunks(dim * TILE_P).enumerate() {
        let xnorm = load_tile(tile, dim, dot, &mut xt);
        let scale = if dot { -1.0 } else { -2.0 };
        for p_i in 0..npanels {
            let panel = &panels.data[p_i * dim * TILE_C..(p_i + 1) * dim * TILE_C];
            (kern.dot_tile)(&xt, panel, &mut acc);
            let j0 = p_i * TILE_C;
            let width = TILE_C.min(k - j0);
            for p in 0..tile.len() / dim {
                let o = &mut out[(t * TILE_P + p) * k + j0..(t * TILE_P + p) * k + j0 + width];
                for (j, v) in o.iter_mut().enumerate() {
                    let c = scale * acc[p][j] + panels.offsets[j0 + j] + xnorm[p];
                    *v = if dot { c } else { c.max(0.0) };
                }
            }
        }
    }
}

/// Transposes up to 8 rows into `xt` (dimension-major, zero-padded) and returns their squared
/// norms (zeros for dot metrics, which do not need them).
fn load_tile(tile: &[f32], dim: usize, dot: bool, xt: &mut [f32]) -> [f32; TILE_P] {
    let kern = kernels::get();
    xt.fill(0.0);
    let mut xnorm = [0f32; TILE_P];
    for (p, row) in tile.chunks_exact(dim).enumerate() {
        for (d, &v) in row.iter().enumerate() {
            xt[d * TILE_P + p] = v;
        }
        if !dot {
            xnorm[p] = (kern.dot)(row, row);
        }
    }
    xnorm
}

fn nearest_chunk(rows: &[f32], panels: &Panels, dot: bool, labels: &mut [u32], costs: &mut [f32]) {
    let kern = kernels::get();
    let dim = panels.dim;
    let mut xt = vec![0f32; dim * TILE_P];
    let mut acc = [[0f32; TILE_C]; TILE_P];
    let npanels = panels.offsets.len() / TILE_C;
    for (t, tile) in rows.chunks(dim * TILE_P).enumerate() {
        let np = tile.len() / dim;
        let xnorm = load_tile(tile, dim, dot, &mut xt);
        let mut best = [(f32::INFINITY, 0u32); TILE_P];
        for p_i in 0..npanels {
            let panel = &panels.data[p_i * dim * TILE_C..(p_i + 1) * dim * TILE_C];
            (kern.dot_tile)(&xt, panel, &mut acc);
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
