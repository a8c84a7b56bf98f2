//! `manifest.json`: the one file that makes a version exist.
//!
//! It is written last by `build`, names every other file of the version with its size and
//! CRC-32, and carries the shard map. File paths are relative to the index prefix
//! (`<namespace>/<index>/`), so a rebalanced version can reuse another version's list files.

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
    pub metric: String,
    pub nlist: usize,
    pub quantizer: String,
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
