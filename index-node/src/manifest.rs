//! `manifest.json`: the one file that makes a version exist.
//!
//! It is written last by `build`, names every other file of the version with its size and
//! CRC-32, and carries the shard map. File paths are relative to the index prefix
//! (`<namespace>/<index>/`), so a rebalanced version can reuse another version's list files.

use anyhow::Context;
use quiver_ivf::{Metric, QuantizerKind};
use serde::{Deserialize, Serialize};

pub const FORMAT: u32 = 1;
pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// Relative to `<namespace>/<index>/`.
    pub path: String,
    pub size: u64,
    pub crc32: u32,
}

/// One list file (one per build part). Shards read its header + directory, then only the byte
/// ranges of their lists; each list blob carries its own CRC in the directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListsFile {
    pub file: FileEntry,
    /// Leading bytes holding the header and the list directory.
    pub directory_len: u64,
    /// CRC-32 of those leading bytes.
    pub directory_crc32: u32,
    /// The quantizer fingerprint (16 hex digits) this file's lists were encoded for, when it
    /// is not this version's own: a file inherited across a list split, valid for every list
    /// but the split ones (see `skip`). Absent for a version's own files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantizer: Option<String>,
    /// Lists of this file that this version does not read: a split replaced them with the
    /// entries of a newer file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip: Vec<u32>,
}

impl ListsFile {
    /// The fingerprint in `quantizer`, if any.
    pub fn inherited_fingerprint(&self) -> anyhow::Result<Option<u64>> {
        self.quantizer
            .as_deref()
            .map(|q| {
                u64::from_str_radix(q, 16).map_err(|_| {
                    anyhow::anyhow!(
                        "{}: quantizer {q:?} is not a 16-digit hex fingerprint",
                        self.file.path
                    )
                })
            })
            .transpose()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardEntry {
    pub shard: u32,
    pub lists: Vec<u32>,
    pub vectors: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalFiles {
    /// Held-out query vectors (fvecs).
    pub queries: FileEntry,
    /// Exact top-k ids of each query among the indexed vectors (ivecs).
    pub ground_truth: FileEntry,
    pub count: usize,
    pub k: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BuildStats {
    pub parts: u32,
    pub source: String,
    pub build_seconds: f64,
    pub list_imbalance: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub namespace: String,
    pub index: String,
    pub version: String,
    pub created_unix: u64,
    pub dim: usize,
    /// `l2`, `ip` or `cosine` on disk.
    #[serde(with = "text")]
    pub metric: Metric,
    pub nlist: usize,
    /// `flat`, `sq8` or `pq<m>` (e.g. `pq16`) on disk.
    #[serde(with = "text")]
    pub quantizer: QuantizerKind,
    pub default_nprobe: usize,
    pub ntotal: u64,
    #[serde(default)]
    pub spec_hash: Option<String>,
    pub centroids: FileEntry,
    pub lists: Vec<ListsFile>,
    pub eval: Option<EvalFiles>,
    /// Entries per list, summed over parts.
    pub list_sizes: Vec<u64>,
    pub shards: Vec<ShardEntry>,
    pub build: BuildStats,
}

/// The engine's enums as the strings they display as and parse from (the manifest's format
/// since format 1: `"metric": "cosine"`, `"quantizer": "pq16"`).
mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let s = String::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

/// Seconds since the Unix epoch, for `created_unix` (0 on a clock before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Manifest {
    pub fn parse(bytes: &[u8], name: &str) -> anyhow::Result<Self> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| anyhow::anyhow!("{name}: not a valid manifest: {e}"))?;
        anyhow::ensure!(
            m.format == FORMAT,
            "{name}: manifest format {} is not supported (expected {FORMAT})",
            m.format
        );
        anyhow::ensure!(
            m.list_sizes.len() == m.nlist,
            "{name}: list_sizes has {} entries, nlist is {}",
            m.list_sizes.len(),
            m.nlist
        );
        if let QuantizerKind::Pq { m: pq_m } = m.quantizer {
            anyhow::ensure!(
                pq_m >= 1 && m.dim.is_multiple_of(pq_m),
                "{name}: quantizer pq{pq_m} does not fit dimension {}",
                m.dim
            );
        }
        for lf in &m.lists {
            lf.inherited_fingerprint()
                .with_context(|| format!("{name}: lists file"))?;
            if let Some(&l) = lf.skip.iter().find(|&&l| l as usize >= m.nlist) {
                anyhow::bail!(
                    "{name}: {} skips list {l} >= nlist {}",
                    lf.file.path,
                    m.nlist
                );
            }
        }
        let mut owner = vec![None; m.nlist];
        for s in &m.shards {
            for &l in &s.lists {
                let slot = owner.get_mut(l as usize).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{name}: shard {} lists list {l} >= nlist {}",
                        s.shard,
                        m.nlist
                    )
                })?;
                anyhow::ensure!(slot.is_none(), "{name}: list {l} is owned by two shards");
                *slot = Some(s.shard);
            }
        }
        anyhow::ensure!(
            owner.iter().all(Option::is_some),
            "{name}: some lists are owned by no shard"
        );
        Ok(m)
    }

    /// list id -> owning shard.
    pub fn list_owners(&self) -> Vec<u32> {
        let mut owner = vec![0u32; self.nlist];
        for s in &self.shards {
            for &l in &s.lists {
                if let Some(o) = owner.get_mut(l as usize) {
                    *o = s.shard;
                }
            }
        }
        owner
    }

    pub fn shard(&self, shard: u32) -> Option<&ShardEntry> {
        self.shards.iter().find(|s| s.shard == shard)
    }
}

/// Assigns lists to `shards` shards so that vector counts are balanced: largest list first to
/// the currently lightest shard (LPT greedy, within 4/3 of optimal). Ties go to the lower shard
/// number, so the map is deterministic.
pub fn balance(list_sizes: &[u64], shards: u32) -> Vec<ShardEntry> {
    let shards = shards.max(1);
    let mut order: Vec<u32> = (0..list_sizes.len() as u32).collect();
    order.sort_by_key(|&l| (std::cmp::Reverse(list_sizes[l as usize]), l));
    let mut out: Vec<ShardEntry> = (0..shards)
        .map(|shard| ShardEntry {
            shard,
            lists: Vec::new(),
            vectors: 0,
        })
        .collect();
    for l in order {
        let target = out
            .iter_mut()
            .min_by_key(|s| (s.vectors, s.lists.len(), s.shard))
            .expect("at least one shard");
        target.lists.push(l);
        target.vectors += list_sizes[l as usize];
    }
    for s in &mut out {
        s.lists.sort_unstable();
    }
    out
}

/// `nlist · Σ size² / (Σ size)²`: 1 when balanced (the engine's and FAISS's definition).
pub fn imbalance(sizes: &[u64]) -> f64 {
    let total: f64 = sizes.iter().map(|&s| s as f64).sum();
    if total == 0.0 {
        return 0.0;
    }
    let sq: f64 = sizes.iter().map(|&s| (s as f64) * (s as f64)).sum();
    sizes.len() as f64 * sq / (total * total)
}

pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(metric: Metric, quantizer: QuantizerKind) -> Manifest {
        let file = FileEntry {
            path: "versions/v1/centroids.qivf".into(),
            size: 1,
            crc32: 2,
        };
        Manifest {
            format: FORMAT,
            namespace: "default".into(),
            index: "docs".into(),
            version: "v1".into(),
            created_unix: 0,
            dim: 32,
            metric,
            nlist: 2,
            quantizer,
            default_nprobe: 1,
            ntotal: 10,
            spec_hash: None,
            centroids: file,
            lists: Vec::new(),
            eval: None,
            list_sizes: vec![5, 5],
            shards: vec![ShardEntry {
                shard: 0,
                lists: vec![0, 1],
                vectors: 10,
            }],
            build: BuildStats::default(),
        }
    }

    /// Typed in memory, the same strings on disk as when they were `String`s.
    #[test]
    fn metric_and_quantizer_keep_their_on_disk_strings() {
        for (metric, quantizer, m_text, q_text) in [
            (Metric::L2, QuantizerKind::Flat, "l2", "flat"),
            (Metric::InnerProduct, QuantizerKind::Sq8, "ip", "sq8"),
            (
                Metric::Cosine,
                QuantizerKind::Pq { m: 16 },
                "cosine",
                "pq16",
            ),
        ] {
            let m = sample(metric, quantizer);
            let json = serde_json::to_value(&m).expect("serializes");
            assert_eq!(json["metric"], m_text);
            assert_eq!(json["quantizer"], q_text);
            let bytes = serde_json::to_vec(&json).expect("bytes");
            assert_eq!(Manifest::parse(&bytes, "m.json").expect("parses"), m);
        }
        let mut json = serde_json::to_value(sample(Metric::L2, QuantizerKind::Flat)).expect("ser");
        json["metric"] = "hamming".into();
        let e = Manifest::parse(&serde_json::to_vec(&json).expect("bytes"), "m.json")
            .expect_err("unknown metric");
        assert!(e.to_string().contains("unknown metric \"hamming\""), "{e}");
        json["metric"] = "l2".into();
        json["quantizer"] = "pq7".into();
        let e = Manifest::parse(&serde_json::to_vec(&json).expect("bytes"), "m.json")
            .expect_err("pq7 on 32 dimensions");
        assert!(
            e.to_string().contains("pq7 does not fit dimension 32"),
            "{e}"
        );
    }

    /// The VectorIndex's metric and quantizer names (quiver-api) are the engine's.
    #[test]
    fn spec_names_are_engine_names() {
        for api in [
            quiver_api::Metric::L2,
            quiver_api::Metric::Ip,
            quiver_api::Metric::Cosine,
        ] {
            let engine: Metric = api.as_str().parse().expect("engine knows it");
            assert_eq!(engine.as_str(), api.as_str());
        }
        for (kind, m) in [
            (quiver_api::QuantizerKind::Flat, None),
            (quiver_api::QuantizerKind::Sq8, None),
            (quiver_api::QuantizerKind::Pq, Some(16)),
        ] {
            let spec = quiver_api::v1alpha1::QuantizerSpec {
                kind,
                m,
                rerank: false,
            };
            let engine: QuantizerKind = spec.engine_name().parse().expect("engine knows it");
            assert_eq!(engine.to_string(), spec.engine_name());
        }
    }

    #[test]
    fn balance_is_even_and_complete() {
        let sizes = [100, 90, 50, 40, 30, 10, 5, 5];
        let map = balance(&sizes, 2);
        assert_eq!(map.len(), 2);
        let total: u64 = map.iter().map(|s| s.vectors).sum();
        assert_eq!(total, sizes.iter().sum::<u64>());
        let diff = map[0].vectors.abs_diff(map[1].vectors);
        assert!(diff <= 10, "{map:?}");
        let mut all: Vec<u32> = map.iter().flat_map(|s| s.lists.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
    }
}
