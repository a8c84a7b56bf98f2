//! Product quantizer: `m` sub-quantizers of 256 centroids each over `dim / m` dimensions,
//! trained and applied on residuals to the coarse centroid.

use rayon::prelude::*;

use crate::assign::{self, Panels};
use crate::error::{IvfError, Result};
use crate::kernels;
use crate::kmeans::{self, KMeansParams};

pub const KSUB: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub struct Pq {
    pub m: usize,
    pub dsub: usize,
    /// `m × 256 × dsub` codewords.
    pub codebooks: Vec<f32>,
    /// The same codewords as `m × dsub × 256` (dimension-major), so that a query's table
    /// is `dsub` contiguous multiply-adds of 256 lanes per sub-quantizer, not 256 short dot
    /// products with a horizontal sum each.
    pub codebooks_t: Vec<f32>,
}

impl Pq {
    pub fn check(dim: usize, m: usize) -> Result<()> {
        if m == 0 || !dim.is_multiple_of(m) {
            return Err(IvfError::param(
                "pq_m",
                format!("must be at least 1 and divide the dimension {dim}, got {m}"),
            ));
        }
        Ok(())
    }

    pub fn train(residuals: &[f32], dim: usize, m: usize, params: &KMeansParams) -> Result<Pq> {
        Pq::check(dim, m)?;
        let n = residuals.len() / dim;
        if n < KSUB {
            return Err(IvfError::TooFewTrainingPoints {
                what: "PQ codebooks",
                got: n,
                need: KSUB,
            });
        }
        let dsub = dim / m;
        let books: Result<Vec<Vec<f32>>> = (0..m)
            .into_par_iter()
            .map(|j| {
                let sub: Vec<f32> = residuals
                    .chunks_exact(dim)
                    .flat_map(|r| r[j * dsub..(j + 1) * dsub].iter().copied())
                    .collect();
                let p = KMeansParams {
                    seed: params.seed.wrapping_add(j as u64 + 1),
                    balance: 0.0,
                    ..params.clone()
                };
                kmeans::train(&sub, dsub, KSUB, &p, false, false).map(|k| k.centroids)
            })
            .collect();
        Ok(Pq::new(m, dsub, books?.concat()))
    }

    pub fn new(m: usize, dsub: usize, codebooks: Vec<f32>) -> Pq {
        let mut codebooks_t = vec![0f32; codebooks.len()];
        for j in 0..m {
            for i in 0..KSUB {
                for d in 0..dsub {
                    codebooks_t[(j * dsub + d) * KSUB + i] = codebooks[(j * KSUB + i) * dsub + d];
                }
            }
        }
        Pq {
            m,
            dsub,
            codebooks,
            codebooks_t,
        }
    }

    pub fn codeword(&self, j: usize, i: usize) -> &[f32] {
        let off = (j * KSUB + i) * self.dsub;
        &self.codebooks[off..off + self.dsub]
    }

    /// Encodes many residuals (row-major) into `m` bytes each.
    pub fn encode_many(&self, residuals: &[f32], dim: usize) -> Vec<u8> {
        let n = residuals.len() / dim;
        let mut codes = vec![0u8; n * self.m];
        for j in 0..self.m {
            let sub: Vec<f32> = residuals
                .chunks_exact(dim)
                .flat_map(|r| r[j * self.dsub..(j + 1) * self.dsub].iter().copied())
                .collect();
            let book = &self.codebooks[j * KSUB * self.dsub..(j + 1) * KSUB * self.dsub];
            let panels = Panels::new(book, self.dsub, false, None);
            let (labels, _) = assign::nearest(&sub, &panels, false);
            for (i, l) in labels.into_iter().enumerate() {
                codes[i * self.m + j] = l as u8;
            }
        }
        codes
    }

    #[cfg(test)]
    pub fn decode(&self, code: &[u8], out: &mut [f32]) {
        for (j, &c) in code.iter().enumerate() {
            out[j * self.dsub..(j + 1) * self.dsub]
                .copy_from_slice(self.codeword(j, usize::from(c)));
        }
    }

    /// `out[j*256 + i] = scale * <q_j, codeword(j, i)>`.
    pub fn dot_table(&self, q: &[f32], scale: f32, out: &mut [f32]) {
        let k = kernels::get();
        self.per_subquantizer(q, out, |qj, cols, o| (k.columns)(qj, cols, None, scale, o));
    }

    /// `out[j*256 + i] = ‖t_j − codeword(j, i)‖²` for a residual query `t`.
    pub fn l2_table(&self, t: &[f32], out: &mut [f32]) {
        let k = kernels::get();
        self.per_subquantizer(t, out, |tj, cols, o| (k.l2_columns)(tj, cols, o));
    }

    /// Calls `f(q_j, codebook j dimension-major, table j)` for every sub-quantizer j.
    fn per_subquantizer(&self, q: &[f32], out: &mut [f32], f: impl Fn(&[f32], &[f32], &mut [f32])) {
        let cols = self.codebooks_t.chunks_exact(self.dsub * KSUB);
        for ((o, qj), cols) in out
            .chunks_exact_mut(KSUB)
            .zip(q.chunks_exact(self.dsub))
            .zip(cols)
        {
            f(qj, cols, o);
        }
    }

    /// Query-independent part of the L2 table of list `c` (FAISS's "precomputed table"):
    /// `‖codeword‖² + 2<c_j, codeword>`, so that per query and list only
    /// `table + (−2<q_j, codeword>)` remains.
    pub fn list_term(&self, centroid: &[f32], out: &mut [f32]) {
        let k = kernels::get();
        for j in 0..self.m {
            let cj = &centroid[j * self.dsub..(j + 1) * self.dsub];
            for i in 0..KSUB {
                let w = self.codeword(j, i);
                out[j * KSUB + i] = (k.dot)(w, w) + 2.0 * (k.dot)(cj, w);
            }
        }
    }
}
