//! Standard ANN dataset files (`.fvecs`, `.ivecs`, `.bvecs`, `.npy` float32), a seeded
//! synthetic generator, and exact ground truth.
//!
//! `.fvecs`/`.ivecs`/`.bvecs`: each vector is a little-endian i32 dimension followed by that
//! many f32 / i32 / u8 values.

use std::path::Path;

use rayon::prelude::*;

use crate::error::{IvfError, Result};
use crate::kernels;
use crate::metric::{Metric, normalize_rows};
use crate::rng::Rng;
use crate::topk::TopK;

/// Row-major vectors with their dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct Vectors<T> {
    pub dim: usize,
    pub data: Vec<T>,
}

impl<T> Vectors<T> {
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| IvfError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn fmt_err(path: &Path, reason: impl Into<String>) -> IvfError {
    IvfError::format(&path.display().to_string(), reason)
}

/// Parses the `*vecs` layout with `elem` bytes per value.
fn parse_vecs<T>(
    bytes: &[u8],
    path: &Path,
    elem: usize,
    conv: impl Fn(&[u8]) -> T,
) -> Result<Vectors<T>> {
    if bytes.is_empty() {
        return Ok(Vectors {
            dim: 0,
            data: Vec::new(),
        });
    }
    if bytes.len() < 4 {
        return Err(fmt_err(
            path,
            "truncated: shorter than one dimension header",
        ));
    }
    let dim = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if dim <= 0 || dim > 1 << 20 {
        return Err(fmt_err(
            path,
            format!("bad dimension {dim} in the first vector header"),
        ));
    }
    let dim = dim as usize;
    let rec = 4 + dim * elem;
    if !bytes.len().is_multiple_of(rec) {
        return Err(fmt_err(
            path,
            format!(
                "size {} is not a multiple of the record size {rec} (dimension {dim}): truncated or mixed dimensions",
                bytes.len()
            ),
        ));
    }
    let n = bytes.len() / rec;
    let mut data = Vec::with_capacity(n * dim);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let d = i32::from_le_bytes([r[0], r[1], r[2], r[3]]);
        if d as usize != dim {
            return Err(fmt_err(
                path,
                format!("vector {i} has dimension {d}, the first has {dim}"),
            ));
        }
        data.extend(r[4..].chunks_exact(elem).map(&conv));
    }
    Ok(Vectors { dim, data })
}

pub fn read_fvecs(path: &Path) -> Result<Vectors<f32>> {
    let v = parse_vecs(&read(path)?, path, 4, |c| {
        f32::from_le_bytes([c[0], c[1], c[2], c[3]])
    })?;
    if let Some(pos) = v.data.iter().position(|x| !x.is_finite()) {
        return Err(fmt_err(
            path,
            format!(
                "vector {}, component {} is not finite",
                pos / v.dim,
                pos % v.dim
            ),
        ));
    }
    Ok(v)
}

pub fn read_ivecs(path: &Path) -> Result<Vectors<i32>> {
    parse_vecs(&read(path)?, path, 4, |c| {
        i32::from_le_bytes([c[0], c[1], c[2], c[3]])
    })
}

/// Reads `.bvecs` (u8 components), converted to f32.
pub fn read_bvecs(path: &Path) -> Result<Vectors<f32>> {
    parse_vecs(&read(path)?, path, 1, |c| f32::from(c[0]))
}

/// Reads a 2-D little-endian float32 C-order `.npy` file.
pub fn read_npy(path: &Path) -> Result<Vectors<f32>> {
    let b = read(path)?;
    if b.len() < 10 || &b[0..6] != b"\x93NUMPY" {
        return Err(fmt_err(path, "not a .npy file (bad magic)"));
    }
    let (hlen, hstart) = match b[6] {
        1 => (usize::from(u16::from_le_bytes([b[8], b[9]])), 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(fmt_err(path, format!("unsupported .npy version {v}"))),
    };
    let header = b
        .get(hstart..hstart + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| fmt_err(path, "truncated or non-text .npy header"))?;
    let compact: String = header.chars().filter(|c| !c.is_whitespace()).collect();
    if !(compact.contains("'descr':'<f4'") || compact.contains("'descr':'=f4'")) {
        return Err(fmt_err(
            path,
            format!("only little-endian float32 ('<f4') is supported; header: {header}"),
        ));
    }
    if compact.contains("'fortran_order':True") {
        return Err(fmt_err(
            path,
            "Fortran-order arrays are not supported; save with C order",
        ));
    }
    let shape = compact
        .split("'shape':(")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| fmt_err(path, "no shape in .npy header"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| fmt_err(path, format!("bad shape {shape}")))
        })
        .collect::<Result<_>>()?;
    let (n, dim) = match dims.as_slice() {
        [n, d] => (*n, *d),
        [d] => (1, *d),
        _ => {
            return Err(fmt_err(
                path,
                format!("expected a 2-D array, shape is ({shape})"),
            ));
        }
    };
    let body = &b[hstart + hlen..];
    if body.len() != n * dim * 4 {
        return Err(fmt_err(
            path,
            format!(
                "data is {} bytes, shape ({n}, {dim}) needs {}",
                body.len(),
                n * dim * 4
            ),
        ));
    }
    let data: Vec<f32> = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(pos) = data.iter().position(|x| !x.is_finite()) {
        return Err(fmt_err(
            path,
            format!(
                "vector {}, component {} is not finite",
                pos / dim.max(1),
                pos % dim.max(1)
            ),
        ));
    }
    Ok(Vectors { dim, data })
}

/// Reads vectors by extension: `.fvecs`, `.bvecs` or `.npy`.
pub fn read_vectors(path: &Path) -> Result<Vectors<f32>> {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "fvecs" => read_fvecs(path),
        "bvecs" => read_bvecs(path),
        "npy" => read_npy(path),
        other => Err(fmt_err(
            path,
            format!("unknown vector file extension {other:?}; expected .fvecs, .bvecs or .npy"),
        )),
    }
}

fn write_vecs<T: Copy>(
    path: &Path,
    dim: usize,
    data: &[T],
    bytes: impl Fn(T) -> [u8; 4],
) -> Result<()> {
    let mut out = Vec::with_capacity(data.len() * 4 + data.len() / dim.max(1) * 4);
    for row in data.chunks_exact(dim.max(1)) {
        out.extend_from_slice(&(dim as i32).to_le_bytes());
        for &v in row {
            out.extend_from_slice(&bytes(v));
        }
    }
    std::fs::write(path, out).map_err(|source| IvfError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub fn write_fvecs(path: &Path, dim: usize, data: &[f32]) -> Result<()> {
    write_vecs(path, dim, data, f32::to_le_bytes)
}

pub fn write_ivecs(path: &Path, dim: usize, data: &[i32]) -> Result<()> {
    write_vecs(path, dim, data, i32::to_le_bytes)
}

/// Parameters of a synthetic dataset shaped like real embeddings: points lie near a
/// low-dimensional subspace (`intrinsic` dimensions, mapped into `dim` by a fixed random
/// matrix, plus a little isotropic noise), grouped in Gaussian clusters whose sizes follow a
/// Zipf law (`skew` = 0: equal sizes; 1 and above: a few very large clusters, the case that
/// makes hot lists), each cluster with its own spread.
#[derive(Debug, Clone)]
pub struct Synthetic {
    pub n: usize,
    pub dim: usize,
    pub clusters: usize,
    pub skew: f64,
    pub seed: u64,
}

impl Synthetic {
    /// Dimensions of the latent space (capped by `dim`).
    pub fn intrinsic(&self) -> usize {
        self.dim.min(24)
    }

    /// `count` vectors; `stream` selects an independent stream (base 0, queries 1, ...) over
    /// the same clusters.
    pub fn generate(&self, count: usize, stream: u64) -> Vec<f32> {
        let mut rng = Rng::new(self.seed);
        let dim = self.dim;
        let lat = self.intrinsic();
        let c = self.clusters.max(1);
        let centers: Vec<f32> = (0..c * lat).map(|_| rng.normal()).collect();
        // Log-uniform spreads (0.02 to 0.4): tight, crowded clusters (near-duplicates) are
        // what k-means leaves as oversized lists in real embeddings.
        let spread: Vec<f32> = (0..c).map(|_| 0.02 * 20f32.powf(rng.unit())).collect();
        // Random projection latent -> ambient, scaled to keep norms comparable.
        let scale = 1.0 / (lat as f32).sqrt();
        let proj: Vec<f32> = (0..dim * lat).map(|_| rng.normal() * scale).collect();
        let weights: Vec<f64> = (0..c)
            .map(|i| 1.0 / ((i + 1) as f64).powf(self.skew))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut cdf = Vec::with_capacity(c);
        let mut acc = 0.0;
        for w in &weights {
            acc += w / total;
            cdf.push(acc);
        }
        let mut out = vec![0f32; count * dim];
        const CHUNK: usize = 4096;
        out.par_chunks_mut(CHUNK * dim)
            .enumerate()
            .for_each(|(ci, rows)| {
                let mut r = Rng::new(self.seed ^ (stream.wrapping_add(1) << 40) ^ ci as u64);
                let mut z = vec![0f32; lat];
                for row in rows.chunks_exact_mut(dim) {
                    let u = f64::from(r.unit());
                    let j = cdf.partition_point(|&p| p < u).min(c - 1);
                    for (l, zl) in z.iter_mut().enumerate() {
                        *zl = centers[j * lat + l] + spread[j] * r.normal();
                    }
                    for (d, v) in row.iter_mut().enumerate() {
                        let p = &proj[d * lat..(d + 1) * lat];
                        *v = p.iter().zip(&z).map(|(a, b)| a * b).sum::<f32>() + 0.02 * r.normal();
                    }
                }
            });
        out
    }
}

/// Exact k nearest neighbours (ids = row numbers of `base`) of every query, by brute force.
pub fn exact_knn(
    base: &[f32],
    queries: &[f32],
    dim: usize,
    k: usize,
    metric: Metric,
) -> Vec<Vec<u32>> {
    let kern = kernels::get();
    let (mut b, mut q) = (None, None);
    if metric == Metric::Cosine {
        let mut bb = base.to_vec();
        normalize_rows(&mut bb, dim);
        b = Some(bb);
        let mut qq = queries.to_vec();
        normalize_rows(&mut qq, dim);
        q = Some(qq);
    }
    let base = b.as_deref().unwrap_or(base);
    let queries = q.as_deref().unwrap_or(queries);
    let n = base.len() / dim;
    queries
        .par_chunks_exact(dim)
        .map(|query| {
            let mut top = TopK::new(k);
            let mut dist = vec![0f32; 1024];
            for start in (0..n).step_by(1024) {
                let end = (start + 1024).min(n);
                let out = &mut dist[..end - start];
                if metric.is_dot() {
                    (kern.dot_batch)(query, &base[start * dim..end * dim], out);
                } else {
                    (kern.l2_batch)(query, &base[start * dim..end * dim], out);
                }
                for (i, &d) in out.iter().enumerate() {
                    let d = if metric.is_dot() { -d } else { d };
                    top.push(d, (start + i) as u64);
                }
            }
            top.sorted().iter().map(|n| n.id as u32).collect()
        })
        .collect()
}

/// Mean recall@k: the fraction of the true top-k found in the returned top-k.
pub fn recall_at_k(found: &[Vec<u64>], truth: &[Vec<u32>], k: usize) -> f64 {
    if found.is_empty() {
        return 0.0;
    }
    let mut hits = 0usize;
    for (f, t) in found.iter().zip(truth) {
        let t = &t[..k.min(t.len())];
        hits += f
            .iter()
            .take(k)
            .filter(|id| t.iter().any(|&x| u64::from(x) == **id))
            .count();
    }
    hits as f64 / (found.len() * k) as f64
}
