//! Source vectors for `train` and `build`: vector files in storage, or a seeded synthetic
//! clustered dataset that any build part can regenerate slice by slice.

use anyhow::Context;
use quiver_ivf::dataset::{Vectors, parse_vectors};

use crate::storage::Storage;

/// Where source vectors come from (shared by `train` and `build`).
#[derive(clap::Args, Debug, Clone)]
pub struct SourceArgs {
    /// Vector file URIs (.fvecs/.bvecs/.npy; file path, file:// or s3://), concatenated in
    /// the order given; a URI ending in `/` means every vector file under it, by name.
    /// Conflicts with --synthetic.
    #[arg(long = "source", value_delimiter = ',', conflicts_with = "synthetic")]
    pub files: Vec<String>,
    /// Generate this many synthetic clustered vectors instead of reading files.
    #[arg(long)]
    pub synthetic: Option<usize>,
    /// Dimension of synthetic vectors.
    #[arg(long, default_value_t = 32)]
    pub dim: usize,
    /// Seed of the synthetic dataset (and of sampling).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// The index's dimension (`spec.dimension`): a source file of another dimension is
    /// refused, naming the file, instead of building an index that no query fits.
    #[arg(long)]
    pub expect_dim: Option<usize>,
}

impl SourceArgs {
    pub fn describe(&self) -> String {
        match self.synthetic {
            Some(n) => format!("synthetic:n={n},dim={},seed={}", self.dim, self.seed),
            None => self.files.join(","),
        }
    }

    /// Loads every source vector.
    pub async fn load(&self) -> anyhow::Result<Vectors<f32>> {
        if let Some(n) = self.synthetic {
            anyhow::ensure!(n > 0, "--synthetic must be at least 1");
            anyhow::ensure!(
                self.dim > 0 && self.dim <= 4096,
                "--dim must be in 1..=4096"
            );
            return Ok(synthetic(n, self.dim, self.seed, 0..n));
        }
        anyhow::ensure!(
            !self.files.is_empty(),
            "give --source FILE[,FILE...] or --synthetic N"
        );
        let mut all: Option<Vectors<f32>> = None;
        let mut files = Vec::new();
        for uri in &self.files {
            files.extend(expand(uri).await?);
        }
        for uri in &files {
            let bytes = read_uri(uri).await?;
            let v = parse_vectors(&bytes, uri)?;
            if let Some(want) = self.expect_dim {
                anyhow::ensure!(
                    v.dim == want,
                    "{uri}: vectors of dimension {}, but the index has dimension {want} (spec.dimension)",
                    v.dim
                );
            }
            match &mut all {
                None => all = Some(v),
                Some(a) => {
                    anyhow::ensure!(
                        a.dim == v.dim,
                        "{uri}: dimension {} differs from the first source file's {}",
                        v.dim,
                        a.dim
                    );
                    a.data.extend_from_slice(&v.data);
                }
            }
        }
        let all = all.context("no source vectors")?;
        anyhow::ensure!(!all.is_empty(), "source files hold no vectors");
        Ok(all)
    }
}

/// A URI ending in `/` names every vector file under it (sorted by name); others name one file.
async fn expand(uri: &str) -> anyhow::Result<Vec<String>> {
    if !uri.ends_with('/') {
        return Ok(vec![uri.to_string()]);
    }
    let store = Storage::open(uri.trim_end_matches('/'))?;
    let names: Vec<String> = store
        .list("")
        .await?
        .into_iter()
        .filter(|n| {
            let l = n.to_ascii_lowercase();
            l.ends_with(".fvecs") || l.ends_with(".bvecs") || l.ends_with(".npy")
        })
        .map(|n| format!("{uri}{n}"))
        .collect();
    anyhow::ensure!(
        !names.is_empty(),
        "{uri}: no .fvecs, .bvecs or .npy files under it"
    );
    Ok(names)
}

/// Reads one object given as a full URI (the storage root is its parent).
pub async fn read_uri(uri: &str) -> anyhow::Result<bytes::Bytes> {
    let (dir, name) = match uri.rsplit_once('/') {
        Some(("", n)) => ("/", n),
        Some((d, n)) => (d, n),
        None => (".", uri),
    };
    anyhow::ensure!(!name.is_empty(), "{uri}: names a directory, not a file");
    let store = Storage::open(dir)?;
    Ok(store.get(name).await?)
}

/// splitmix64: tiny, seedable and good enough to place synthetic points.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = mix(self.0);
        self.0
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn gauss(&mut self) -> f32 {
        let u1 = self.unit().max(1e-7);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}

/// Rows `range` of the synthetic dataset `(n, dim, seed)`: points around `sqrt(n)` centres.
/// Row `i` depends only on `(n, dim, seed, i)`, so build parts generate disjoint slices.
pub fn synthetic(n: usize, dim: usize, seed: u64, range: std::ops::Range<usize>) -> Vectors<f32> {
    synthetic_rows(n, dim, seed, range)
}

/// Rows `rows` (any order) of the synthetic dataset `(n, dim, seed)`.
pub fn synthetic_rows(
    n: usize,
    dim: usize,
    seed: u64,
    rows: impl ExactSizeIterator<Item = usize>,
) -> Vectors<f32> {
    let centres = ((n as f64).sqrt() as usize).clamp(4, 1024);
    let mut c = vec![0f32; centres * dim];
    let mut rng = Rng(mix(seed ^ 0xC3A5_C85C_97CB_3127));
    for x in &mut c {
        *x = rng.unit() * 2.0 - 1.0;
    }
    let mut data = Vec::with_capacity(rows.len() * dim);
    for i in rows {
        let mut r = Rng(mix(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ i as u64));
        let centre = (r.next() % centres as u64) as usize;
        for d in 0..dim {
            data.push(c[centre * dim + d] + 0.2 * r.gauss());
        }
    }
    Vectors { data, dim }
}

/// Held-out evaluation positions among `n` source rows: evenly strided, so every build part
/// computes the same set without coordination.
pub fn eval_positions(n: usize, count: usize) -> Vec<usize> {
    let count = count.min(n / 2);
    (0..count).map(|j| j * n / count.max(1)).collect()
}

/// Exact "smaller is better" distance, matching the engine's convention.
pub fn distance(metric: &str, a: &[f32], b: &[f32]) -> f32 {
    match metric {
        "ip" => -dot(a, b),
        "cosine" => {
            let na = dot(a, a).sqrt().max(f32::MIN_POSITIVE);
            let nb = dot(b, b).sqrt().max(f32::MIN_POSITIVE);
            -dot(a, b) / (na * nb)
        }
        _ => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum(),
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_slices_agree_with_whole() {
        let whole = synthetic(100, 8, 7, 0..100);
        let tail = synthetic(100, 8, 7, 60..100);
        assert_eq!(&whole.data[60 * 8..], &tail.data[..]);
        let other = synthetic(100, 8, 8, 0..100);
        assert_ne!(whole.data, other.data);
    }

    #[test]
    fn eval_positions_are_distinct() {
        let p = eval_positions(1000, 100);
        assert_eq!(p.len(), 100);
        assert!(p.windows(2).all(|w| w[0] < w[1]));
    }

    #[tokio::test]
    async fn a_source_file_of_another_dimension_is_refused_naming_it() {
        let dir = std::env::temp_dir().join(format!("quiver-src-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("v64.fvecs");
        quiver_ivf::dataset::write_fvecs(&path, 64, &vec![0.5; 64 * 3]).expect("write");
        let args = |expect_dim| SourceArgs {
            files: vec![path.display().to_string()],
            synthetic: None,
            dim: 32,
            seed: 1,
            expect_dim,
        };
        let e = args(Some(128)).load().await.expect_err("64 ≠ 128");
        let msg = e.to_string();
        assert!(
            msg.contains("v64.fvecs")
                && msg.contains("dimension 64")
                && msg.contains("128 (spec.dimension)"),
            "{msg}"
        );
        assert_eq!(args(Some(64)).load().await.expect("64").dim, 64);
        assert_eq!(args(None).load().await.expect("unchecked").len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
