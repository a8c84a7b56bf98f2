//! Standard ANN dataset files (`.fvecs`, `.ivecs`, `.bvecs`, `.npy`), a seeded synthetic
//! generator, and exact ground truth.
//!
//! `.fvecs`/`.ivecs`/`.bvecs`: each vector is a little-endian i32 dimension followed by that
//! many f32 / i32 / u8 values. `.npy`: a 2-D (or 1-D: one vector) C-order array of
//! little-endian float32 or uint8.
//!
//! Every format has exactly one parser, working on bytes ([`parse_vectors`], [`parse_ivecs`])
//! because files also come from object storage; the path functions (`read_*`) read the file
//! and call it. Likewise `write_*` are [`encode_fvecs`] / [`encode_ivecs`] plus a write.
//! Errors name the file (the `name` given to the parsers) and what is wrong.

use std::path::Path;

use rayon::prelude::*;

use crate::error::{IvfError, Result};
use crate::kernels;
use crate::metric::{Metric, normalize_rows};
use crate::rng::Rng;
use crate::topk::TopK;

/// Largest dimension accepted in a vector file header (a larger one means a corrupt file).
pub const MAX_FILE_DIM: usize = 65_536;

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

/// The vector file formats, chosen by file extension (case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fvecs,
    Bvecs,
    Ivecs,
    Npy,
}

fn kind(name: &str) -> Option<Kind> {
    let ext = Path::new(name).extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "fvecs" => Some(Kind::Fvecs),
        "bvecs" => Some(Kind::Bvecs),
        "ivecs" => Some(Kind::Ivecs),
        "npy" => Some(Kind::Npy),
        _ => None,
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| IvfError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| IvfError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn fmt_err(name: &str, reason: impl Into<String>) -> IvfError {
    IvfError::format(name, reason)
}

fn path_name(path: &Path) -> String {
    path.display().to_string()
}

/// Parses the `*vecs` layout with `elem` bytes per value.
fn parse_vecs<T>(
    bytes: &[u8],
    name: &str,
    elem: usize,
    conv: impl Fn(&[u8]) -> T,
) -> Result<Vectors<T>> {
    if bytes.is_empty() {
        return Err(fmt_err(name, "empty file: no vectors"));
    }
    if bytes.len() < 4 {
        return Err(fmt_err(
            name,
            "truncated: shorter than one dimension header",
        ));
    }
    let dim = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if dim <= 0 || dim as usize > MAX_FILE_DIM {
        return Err(fmt_err(
            name,
            format!("bad dimension {dim} in the first vector header (expected 1..={MAX_FILE_DIM})"),
        ));
    }
    let dim = dim as usize;
    let rec = 4 + dim * elem;
    if !bytes.len().is_multiple_of(rec) {
        return Err(fmt_err(
            name,
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
        if d != dim as i32 {
            return Err(fmt_err(
                name,
                format!("vector {i} has dimension {d}, the first has {dim}"),
            ));
        }
        data.extend(r[4..].chunks_exact(elem).map(&conv));
    }
    Ok(Vectors { dim, data })
}

fn check_finite(name: &str, v: &Vectors<f32>) -> Result<()> {
    if let Some(pos) = v.data.iter().position(|x| !x.is_finite()) {
        let dim = v.dim.max(1);
        return Err(fmt_err(
            name,
            format!(
                "vector {}, component {} is not finite",
                pos / dim,
                pos % dim
            ),
        ));
    }
    Ok(())
}

fn parse_fvecs(bytes: &[u8], name: &str) -> Result<Vectors<f32>> {
    let v = parse_vecs(bytes, name, 4, |c| {
        f32::from_le_bytes([c[0], c[1], c[2], c[3]])
    })?;
    check_finite(name, &v)?;
    Ok(v)
}

fn parse_bvecs(bytes: &[u8], name: &str) -> Result<Vectors<f32>> {
    parse_vecs(bytes, name, 1, |c| f32::from(c[0]))
}

/// Parses a 2-D (or 1-D: one vector) C-order `.npy` array of little-endian float32 or uint8.
fn parse_npy(b: &[u8], name: &str) -> Result<Vectors<f32>> {
    if b.len() < 10 || &b[0..6] != b"\x93NUMPY" {
        return Err(fmt_err(name, "not a .npy file (bad magic)"));
    }
    let (hlen, hstart): (usize, usize) = match b[6] {
        1 => (usize::from(u16::from_le_bytes([b[8], b[9]])), 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        2 | 3 => return Err(fmt_err(name, "truncated .npy header")),
        v => return Err(fmt_err(name, format!("unsupported .npy version {v}"))),
    };
    let header = hstart
        .checked_add(hlen)
        .and_then(|end| b.get(hstart..end))
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| fmt_err(name, "truncated or non-text .npy header"))?;
    let compact: String = header.chars().filter(|c| !c.is_whitespace()).collect();
    let descr = compact
        .split("'descr':'")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .ok_or_else(|| fmt_err(name, format!("no descr in .npy header: {header}")))?;
    let width = match descr {
        "<f4" | "=f4" => 4,
        "|u1" | "<u1" | "=u1" => 1,
        other => {
            return Err(fmt_err(
                name,
                format!(
                    "dtype {other} is not supported: only little-endian float32 ('<f4') or uint8 ('|u1')"
                ),
            ));
        }
    };
    if compact.contains("'fortran_order':True") {
        return Err(fmt_err(
            name,
            "Fortran-order arrays are not supported; save with C order",
        ));
    }
    let shape = compact
        .split("'shape':(")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| fmt_err(name, "no shape in .npy header"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| fmt_err(name, format!("bad shape ({shape})")))
        })
        .collect::<Result<_>>()?;
    let (n, dim) = match dims.as_slice() {
        [n, d] => (*n, *d),
        [d] => (1, *d),
        _ => {
            return Err(fmt_err(
                name,
                format!("expected a 2-D array, shape is ({shape})"),
            ));
        }
    };
    if dim == 0 || dim > MAX_FILE_DIM {
        return Err(fmt_err(
            name,
            format!("bad dimension {dim} (expected 1..={MAX_FILE_DIM})"),
        ));
    }
    let body = &b[hstart + hlen..];
    let need = n
        .checked_mul(dim)
        .and_then(|x| x.checked_mul(width))
        .ok_or_else(|| fmt_err(name, format!("shape ({shape}) is too large")))?;
    if body.len() != need {
        return Err(fmt_err(
            name,
            format!(
                "data is {} bytes, shape ({n}, {dim}) of {descr} needs {need}: truncated or corrupt",
                body.len()
            ),
        ));
    }
    let v = Vectors {
        dim,
        data: if width == 4 {
            body.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        } else {
            body.iter().map(|&x| f32::from(x)).collect()
        },
    };
    check_finite(name, &v)?;
    Ok(v)
}

/// Parses vectors from the bytes of file `name`, by its extension (case-insensitive):
/// `.fvecs`, `.bvecs` (u8, converted to f32) or `.npy` (float32 or uint8). Errors name `name`.
pub fn parse_vectors(bytes: &[u8], name: &str) -> Result<Vectors<f32>> {
    match kind(name) {
        Some(Kind::Fvecs) => parse_fvecs(bytes, name),
        Some(Kind::Bvecs) => parse_bvecs(bytes, name),
        Some(Kind::Npy) => parse_npy(bytes, name),
        Some(Kind::Ivecs) | None => Err(fmt_err(
            name,
            "unknown vector file type; expected .fvecs, .bvecs or .npy",
        )),
    }
}

/// Parses `.ivecs` bytes (e.g. ground truth: one row of ids per query) of file `name`.
/// Any name is accepted: the layout is not guessed from it.
pub fn parse_ivecs(bytes: &[u8], name: &str) -> Result<Vectors<i32>> {
    parse_vecs(bytes, name, 4, |c| {
        i32::from_le_bytes([c[0], c[1], c[2], c[3]])
    })
}

fn encode_vecs<T: Copy>(
    what: &str,
    dim: usize,
    data: &[T],
    bytes: impl Fn(T) -> [u8; 4],
) -> Vec<u8> {
    assert!(
        data.is_empty() || (dim > 0 && data.len().is_multiple_of(dim)),
        "{what}: {} values are not whole rows of dimension {dim}",
        data.len()
    );
    let rows = data.len().checked_div(dim).unwrap_or(0);
    let mut out = Vec::with_capacity(rows * (4 + 4 * dim));
    for row in data.chunks_exact(dim.max(1)) {
        out.extend_from_slice(&(dim as i32).to_le_bytes());
        for &v in row {
            out.extend_from_slice(&bytes(v));
        }
    }
    out
}

/// Checks that a file about to be written holds whole rows of a sane dimension.
fn check_rows(path: &Path, dim: usize, len: usize) -> Result<()> {
    if len > 0 && (dim == 0 || !len.is_multiple_of(dim)) {
        return Err(fmt_err(
            &path_name(path),
            format!("cannot write {len} values: not a multiple of dimension {dim}"),
        ));
    }
    if dim > MAX_FILE_DIM {
        return Err(fmt_err(
            &path_name(path),
            format!("cannot write dimension {dim}: above {MAX_FILE_DIM}"),
        ));
    }
    Ok(())
}

/// `.fvecs` bytes of row-major `data` with dimension `dim`.
///
/// # Panics
/// If `data` is not whole rows of `dim` values (the `write_*` functions return an error
/// instead).
pub fn encode_fvecs(dim: usize, data: &[f32]) -> Vec<u8> {
    encode_vecs("encode_fvecs", dim, data, f32::to_le_bytes)
}

/// `.ivecs` bytes of row-major `data` with dimension `dim`.
///
/// # Panics
/// If `data` is not whole rows of `dim` values.
pub fn encode_ivecs(dim: usize, data: &[i32]) -> Vec<u8> {
    encode_vecs("encode_ivecs", dim, data, i32::to_le_bytes)
}

pub fn read_fvecs(path: &Path) -> Result<Vectors<f32>> {
    parse_fvecs(&read(path)?, &path_name(path))
}

pub fn read_ivecs(path: &Path) -> Result<Vectors<i32>> {
    parse_ivecs(&read(path)?, &path_name(path))
}

/// Reads `.bvecs` (u8 components), converted to f32.
pub fn read_bvecs(path: &Path) -> Result<Vectors<f32>> {
    parse_bvecs(&read(path)?, &path_name(path))
}

/// Reads a 2-D C-order `.npy` file of little-endian float32 or uint8.
pub fn read_npy(path: &Path) -> Result<Vectors<f32>> {
    parse_npy(&read(path)?, &path_name(path))
}

/// Reads vectors by extension: `.fvecs`, `.bvecs` or `.npy`.
pub fn read_vectors(path: &Path) -> Result<Vectors<f32>> {
    let name = path_name(path);
    if !matches!(kind(&name), Some(Kind::Fvecs | Kind::Bvecs | Kind::Npy)) {
        // Before touching the file: the type is the first thing wrong.
        return parse_vectors(&[], &name);
    }
    parse_vectors(&read(path)?, &name)
}

pub fn write_fvecs(path: &Path, dim: usize, data: &[f32]) -> Result<()> {
    check_rows(path, dim, data.len())?;
    write(path, &encode_fvecs(dim, data))
}

pub fn write_ivecs(path: &Path, dim: usize, data: &[i32]) -> Result<()> {
    check_rows(path, dim, data.len())?;
    write(path, &encode_ivecs(dim, data))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, body: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(body);
        b
    }

    fn err<T: std::fmt::Debug>(r: Result<T>) -> String {
        r.expect_err("should fail").to_string()
    }

    #[test]
    fn fvecs_and_ivecs_round_trip() {
        let v: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
        let bytes = encode_fvecs(4, &v);
        assert_eq!(bytes.len(), 3 * (4 + 16));
        let back = parse_vectors(&bytes, "a.fvecs").expect("fvecs");
        assert_eq!(back, Vectors { dim: 4, data: v });
        // The extension is case-insensitive and may follow a URI.
        assert!(parse_vectors(&bytes, "s3://b/dir/A.FVECS").is_ok());

        let ids = vec![1, 2, 3, 2_000_000_000, -1, 0];
        let back = parse_ivecs(&encode_ivecs(2, &ids), "gt.ivecs").expect("ivecs");
        assert_eq!((back.dim, back.len(), back.data), (2, 3, ids));
        assert!(encode_fvecs(3, &[]).is_empty());
    }

    #[test]
    fn bvecs_and_npy() {
        let b = [2, 0, 0, 0, 7, 9, 2, 0, 0, 0, 1, 255];
        assert_eq!(
            parse_vectors(&b, "a.bvecs").expect("bvecs").data,
            vec![7.0, 9.0, 1.0, 255.0]
        );
        let body: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let v = parse_vectors(&npy("<f4", "(2, 3)", &body), "q.npy").expect("npy f4");
        assert_eq!((v.dim, v.len(), v.data[5]), (3, 2, 6.0));
        let v = parse_vectors(&npy("|u1", "(3, 2)", &[1, 2, 3, 4, 5, 6]), "q.npy").expect("u1");
        assert_eq!((v.dim, v.data), (2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let v = parse_vectors(&npy("<f4", "(3,)", &body[..12]), "q.npy").expect("1-D");
        assert_eq!((v.dim, v.len()), (3, 1));

        let e = err(parse_vectors(&npy("<f8", "(2, 3)", &body), "q.npy"));
        assert!(e.starts_with("q.npy: ") && e.contains("float32"), "{e}");
        let e = err(parse_vectors(&npy("<f4", "(2, 3)", &body[..20]), "q.npy"));
        assert!(e.contains("needs 24"), "{e}");
        let e = err(parse_vectors(&npy("<f4", "(2, 3, 1)", &body), "q.npy"));
        assert!(e.contains("2-D"), "{e}");
        let e = err(parse_vectors(&npy("<f4", "(2, 0)", &[]), "q.npy"));
        assert!(e.contains("bad dimension 0"), "{e}");
        let e = err(parse_vectors(b"\x93NUMPY\x01\x00\xff\xff{", "q.npy"));
        assert!(e.contains("truncated"), "{e}");
        assert!(err(parse_vectors(b"not numpy at all", "q.npy")).contains("bad magic"));
        let mut nan = body.clone();
        nan[16..20].copy_from_slice(&f32::NAN.to_le_bytes());
        let e = err(parse_vectors(&npy("<f4", "(2, 3)", &nan), "q.npy"));
        assert!(e.contains("vector 1, component 1 is not finite"), "{e}");
    }

    #[test]
    fn truncated_empty_and_bad_headers() {
        let bytes = encode_fvecs(3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let e = err(parse_vectors(&bytes[..bytes.len() - 1], "x.fvecs"));
        assert!(
            e.starts_with("x.fvecs: ") && e.contains("not a multiple") && e.contains("truncated"),
            "{e}"
        );
        assert!(err(parse_vectors(&[], "x.fvecs")).contains("empty"));
        assert!(err(parse_ivecs(&[], "gt.ivecs")).contains("empty"));
        assert!(err(parse_vectors(&[3, 0], "x.fvecs")).contains("truncated"));
        let e = err(parse_vectors(&0i32.to_le_bytes(), "x.bvecs"));
        assert!(e.contains("bad dimension 0"), "{e}");
        let e = err(parse_vectors(&(-5i32).to_le_bytes(), "x.fvecs"));
        assert!(e.contains("bad dimension -5"), "{e}");
        let e = err(parse_vectors(&100_000i32.to_le_bytes(), "x.fvecs"));
        assert!(e.contains("bad dimension 100000"), "{e}");
        let mut inf = bytes.clone();
        inf[4 + 16 + 4..4 + 16 + 8].copy_from_slice(&f32::INFINITY.to_le_bytes());
        let e = err(parse_vectors(&inf, "x.fvecs"));
        assert!(e.contains("vector 1, component 1 is not finite"), "{e}");
    }

    #[test]
    fn ragged_rows() {
        // Dimensions 2, 2, 5: 48 bytes, a whole number of 12-byte records of the first
        // dimension, so only the per-row check catches it.
        let mut b = encode_ivecs(2, &[1, 2, 3, 4]);
        b.extend_from_slice(&encode_ivecs(5, &[1, 2, 3, 4, 5]));
        let e = err(parse_ivecs(&b, "gt.ivecs"));
        assert!(
            e.starts_with("gt.ivecs: ") && e.contains("vector 2 has dimension 5, the first has 2"),
            "{e}"
        );
        let mut b = encode_fvecs(2, &[1.0, 2.0]);
        b.extend_from_slice(&encode_fvecs(3, &[1.0, 2.0, 3.0]));
        assert!(err(parse_vectors(&b, "x.fvecs")).contains("not a multiple"));
    }

    #[test]
    fn wrong_extension_names_the_file() {
        let bytes = encode_fvecs(2, &[1.0, 2.0]);
        for name in ["data.csv", "noext", "gt.ivecs", "dir.fvecs/file"] {
            let e = err(parse_vectors(&bytes, name));
            assert!(
                e.starts_with(&format!("{name}: ")) && e.contains(".fvecs, .bvecs or .npy"),
                "{e}"
            );
        }
    }

    #[test]
    fn writers_reject_partial_rows() {
        let dir = std::env::temp_dir().join(format!("quiver-ds-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("w.fvecs");
        let e = err(write_fvecs(&f, 3, &[1.0; 4]));
        assert!(e.contains("w.fvecs") && e.contains("not a multiple"), "{e}");
        write_ivecs(&dir.join("w.ivecs"), 2, &[5, 6]).expect("write");
        assert_eq!(
            read_ivecs(&dir.join("w.ivecs")).expect("read").data,
            vec![5, 6]
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
