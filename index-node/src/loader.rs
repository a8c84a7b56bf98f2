//! Reading a version back from storage, verifying what the manifest promises.

use anyhow::{Context, ensure};
use quiver_ivf::IvfIndex;
use quiver_ivf::dataset::{Vectors, parse_ivecs, parse_vectors};
use quiver_ivf::format;

use crate::manifest::{FileEntry, ListsFile, MANIFEST, Manifest, crc32};
use crate::storage::{Storage, version_prefix};

pub fn index_prefix(namespace: &str, index: &str) -> String {
    format!("{namespace}/{index}")
}

pub async fn read_manifest(
    storage: &Storage,
    namespace: &str,
    index: &str,
    version: &str,
) -> anyhow::Result<Manifest> {
    let rel = format!("{}/{MANIFEST}", version_prefix(namespace, index, version));
    let bytes = storage.get(&rel).await.with_context(|| {
        format!("version {version} has no manifest (not built, or still being built)")
    })?;
    let m = Manifest::parse(&bytes, &rel)?;
    ensure!(
        m.version == version,
        "{rel}: manifest names version {:?}",
        m.version
    );
    Ok(m)
}

/// Reads a whole file and checks its size and CRC against the manifest.
pub async fn read_checked(
    storage: &Storage,
    namespace: &str,
    index: &str,
    f: &FileEntry,
) -> anyhow::Result<bytes::Bytes> {
    let rel = format!("{}/{}", index_prefix(namespace, index), f.path);
    let bytes = storage.get(&rel).await?;
    ensure!(
        bytes.len() as u64 == f.size,
        "{rel}: size {} but the manifest says {} (truncated or replaced)",
        bytes.len(),
        f.size
    );
    let crc = crc32(&bytes);
    ensure!(
        crc == f.crc32,
        "{rel}: checksum {crc:08x} does not match the manifest's {:08x} (corrupt)",
        f.crc32
    );
    Ok(bytes)
}

/// The quantizer (centroids + codebooks, no list entries) of a version.
pub async fn read_quantizer(
    storage: &Storage,
    namespace: &str,
    index: &str,
    m: &Manifest,
) -> anyhow::Result<IvfIndex> {
    let bytes = read_checked(storage, namespace, index, &m.centroids).await?;
    let name = m.centroids.path.clone();
    let q = tokio::task::spawn_blocking(move || format::read_quantizer(&bytes, &name)).await??;
    ensure!(
        q.dim() == m.dim,
        "{}: dimension {} but the manifest says {}",
        m.centroids.path,
        q.dim(),
        m.dim
    );
    Ok(q)
}

pub struct LoadedLists {
    pub index: IvfIndex,
    /// list id -> entries loaded.
    pub sizes: Vec<u64>,
    /// Bytes fetched from storage.
    pub bytes: u64,
    /// list id -> where its entries came from (for [`Held`] when the next version loads).
    pub sources: Vec<ListSource>,
    /// Lists taken from a held version's memory instead of storage.
    pub reused: usize,
}

/// Where one list's entries live: every lists file holding entries of it (path, checksum,
/// the quantizer fingerprint its codes were encoded for, entry count). Two versions whose
/// sources of a list are equal hold the same entries with the same codes, relative to the
/// same centroid: a rebalanced or split version shares all its unchanged lists this way.
pub type ListSource = Vec<(String, u32, u64, u64)>;

/// A version this node already holds in memory, whose lists a new version may reuse.
pub struct Held<'a> {
    pub index: &'a IvfIndex,
    /// list id -> held here (an empty source: not held).
    pub sources: &'a [ListSource],
}

/// One lists file of the manifest with its verified directory.
struct OpenFile {
    rel: String,
    size: u64,
    dir: format::ListDirectory,
    fingerprint: u64,
    skip: Vec<u32>,
    inherited: bool,
}

impl OpenFile {
    /// The directory entry of list `l` if this file holds entries of it for this version.
    fn holds(&self, l: u32) -> Option<&format::ListEntry> {
        if self.skip.contains(&l) || (self.inherited && l as usize >= self.dir.entries.len()) {
            return None;
        }
        self.dir.entry(l).ok().filter(|e| e.count > 0)
    }
}

async fn open_lists_file(
    storage: &Storage,
    namespace: &str,
    index: &str,
    lf: &ListsFile,
    own: u64,
) -> anyhow::Result<OpenFile> {
    let rel = format!("{}/{}", index_prefix(namespace, index), lf.file.path);
    let size = storage.size(&rel).await?;
    ensure!(
        size == lf.file.size,
        "{rel}: size {size} but the manifest says {} (truncated or replaced)",
        lf.file.size
    );
    ensure!(
        lf.directory_len <= size,
        "{rel}: directory length {} exceeds the file size {size}",
        lf.directory_len
    );
    let dir_bytes = storage.get_range(&rel, 0..lf.directory_len).await?;
    let crc = crc32(&dir_bytes);
    ensure!(
        crc == lf.directory_crc32,
        "{rel}: list directory checksum {crc:08x} does not match the manifest's {:08x} (corrupt)",
        lf.directory_crc32
    );
    let dir = format::read_list_directory(&dir_bytes, &rel)?;
    // A file inherited across a split was written for the parent quantizer: it has no entry
    // for lists added since, and its copies of the split lists are stale (`skip`).
    let inherited = lf.inherited_fingerprint()?;
    Ok(OpenFile {
        rel,
        size,
        dir,
        fingerprint: inherited.unwrap_or(own),
        skip: lf.skip.clone(),
        inherited: inherited.is_some(),
    })
}

/// Loads only `lists` of every list file (one per build part) by byte range, checking the
/// directory CRC from the manifest and each list's CRC from the directory; entries of the same
/// list from several parts are appended. A list whose entries come from the same files as a
/// list of a `held` version is copied from memory instead of fetched.
pub async fn load_lists(
    storage: &Storage,
    namespace: &str,
    index: &str,
    m: &Manifest,
    lists: &[u32],
    held: &[Held<'_>],
) -> anyhow::Result<LoadedLists> {
    let mut idx = read_quantizer(storage, namespace, index, m).await?;
    let own = idx.fingerprint();
    let mut files = Vec::with_capacity(m.lists.len());
    for lf in &m.lists {
        files.push(open_lists_file(storage, namespace, index, lf, own).await?);
    }
    let mut sources: Vec<ListSource> = vec![Vec::new(); m.nlist];
    let mut per_list: Vec<Option<quiver_ivf::InvertedList>> = (0..m.nlist).map(|_| None).collect();
    let mut from_memory_flags = vec![false; m.nlist];
    for &l in lists {
        let slot = sources
            .get_mut(l as usize)
            .ok_or_else(|| anyhow::anyhow!("list {l} >= nlist {}", m.nlist))?;
        *slot = files
            .iter()
            .filter_map(|f| {
                let e = f.holds(l)?;
                Some((f.rel.clone(), e.crc32, f.fingerprint, e.count))
            })
            .collect();
        let from_memory = (!slot.is_empty())
            .then(|| {
                held.iter().find_map(|h| {
                    (h.sources.get(l as usize) == Some(&*slot))
                        .then(|| h.index.list(l).cloned())
                        .flatten()
                })
            })
            .flatten();
        if let Some(list) = from_memory {
            per_list[l as usize] = Some(list);
            from_memory_flags[l as usize] = true;
        }
    }
    let reused = from_memory_flags.iter().filter(|&&r| r).count();
    let mut bytes_total = 0u64;
    for f in &files {
        let read: Vec<u32> = lists
            .iter()
            .copied()
            .filter(|&l| !from_memory_flags[l as usize] && f.holds(l).is_some())
            .collect();
        let mut ranges = Vec::with_capacity(read.len());
        for &l in &read {
            let e = f.dir.entry(l)?;
            ensure!(
                e.offset + e.len <= f.size,
                "{}: list {l} ends at byte {} beyond the file size {} (truncated)",
                f.rel,
                e.offset + e.len,
                f.size
            );
            ranges.push(e.offset..e.offset + e.len);
        }
        let blobs = storage.get_ranges(&f.rel, &ranges).await?;
        for (&l, blob) in read.iter().zip(blobs) {
            bytes_total += blob.len() as u64;
            let list = format::decode_list_for(&idx, f.fingerprint, &f.dir, l, &blob, &f.rel)?;
            match &mut per_list[l as usize] {
                Some(acc) => acc.append(&list),
                slot @ None => *slot = Some(list),
            }
        }
    }
    let mut sizes = vec![0u64; m.nlist];
    for (l, list) in per_list.into_iter().enumerate() {
        if let Some(list) = list {
            sizes[l] = list.len() as u64;
            idx.set_list(l as u32, list)?;
        }
    }
    Ok(LoadedLists {
        index: idx,
        sizes,
        bytes: bytes_total,
        sources,
        reused,
    })
}

pub struct Eval {
    pub queries: Vectors<f32>,
    /// Exact top-k ids, `k` per query.
    pub gt: Vec<i32>,
    pub k: usize,
}

pub async fn read_eval(
    storage: &Storage,
    namespace: &str,
    index: &str,
    m: &Manifest,
) -> anyhow::Result<Option<Eval>> {
    let Some(e) = &m.eval else { return Ok(None) };
    let q = read_checked(storage, namespace, index, &e.queries).await?;
    let g = read_checked(storage, namespace, index, &e.ground_truth).await?;
    let queries = parse_vectors(&q, &e.queries.path)?;
    let Vectors { data: gt, dim: k } = parse_ivecs(&g, &e.ground_truth.path)?;
    ensure!(
        gt.len() == k * queries.len(),
        "{}: {} rows for {} queries",
        e.ground_truth.path,
        gt.len() / k.max(1),
        queries.len()
    );
    Ok(Some(Eval { queries, gt, k }))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use quiver_ivf::dataset::Synthetic;
    use quiver_ivf::{IvfParams, Metric, QuantizerKind};

    use super::*;
    use crate::manifest::{BuildStats, FORMAT, balance};
    use crate::split::{Halves, split_manifest};

    const DIM: usize = 8;
    const BASE: &str = "ns/docs";

    fn entry(path: &str, bytes: &[u8]) -> FileEntry {
        FileEntry {
            path: path.into(),
            size: bytes.len() as u64,
            crc32: crc32(bytes),
        }
    }

    fn lists_file(path: &str, bytes: &[u8]) -> ListsFile {
        let dir_len = format::directory_len(bytes, path).expect("directory") as usize;
        ListsFile {
            file: entry(path, bytes),
            directory_len: dir_len as u64,
            directory_crc32: crc32(&bytes[..dir_len]),
            quantizer: None,
            skip: Vec::new(),
        }
    }

    async fn put(s: &Storage, rel: &str, bytes: Vec<u8>) {
        s.put(&format!("{BASE}/{rel}"), Bytes::from(bytes))
            .await
            .expect("put");
    }

    async fn put_manifest(s: &Storage, m: &Manifest) {
        let rel = format!("versions/{}/manifest.json", m.version);
        put(s, &rel, serde_json::to_vec(m).expect("json")).await;
    }

    /// v1: 8 Flat lists over 2 shards; returns its manifest, the built index and its vectors.
    async fn v1(s: &Storage) -> (Manifest, IvfIndex, Vec<f32>) {
        let data = Synthetic {
            n: 2000,
            dim: DIM,
            clusters: 8,
            skew: 0.5,
            seed: 5,
        }
        .generate(2000, 0);
        let mut index = IvfIndex::train(
            IvfParams::new(DIM, Metric::L2, 8, QuantizerKind::Flat),
            &data,
        )
        .expect("train");
        index
            .add(&(0..2000).collect::<Vec<u64>>(), &data)
            .expect("add");
        let (mut q, mut l) = (Vec::new(), Vec::new());
        format::write_quantizer(&index, &mut q).expect("quantizer");
        format::write_lists(&index, &mut l).expect("lists");
        let list_sizes: Vec<u64> = (0..8)
            .map(|i| index.list(i).map_or(0, |x| x.len() as u64))
            .collect();
        let m = Manifest {
            format: FORMAT,
            namespace: "ns".into(),
            index: "docs".into(),
            version: "v1".into(),
            created_unix: 0,
            dim: DIM,
            metric: Metric::L2,
            nlist: 8,
            quantizer: QuantizerKind::Flat,
            default_nprobe: 2,
            ntotal: 2000,
            spec_hash: None,
            centroids: entry("versions/v1/centroids.qivf", &q),
            lists: vec![lists_file("versions/v1/lists.qivf", &l)],
            eval: None,
            shards: balance(&list_sizes, 2),
            list_sizes,
            build: BuildStats::default(),
        };
        put(s, "versions/v1/centroids.qivf", q).await;
        put(s, "versions/v1/lists.qivf", l).await;
        put_manifest(s, &m).await;
        (m, index, data)
    }

    /// Overwrites every list's bytes of `rel` (not its header and directory): a fetch of any
    /// list from it now fails its checksum, so a load that succeeds took none from storage.
    async fn spoil(s: &Storage, rel: &str, directory_len: u64) {
        let path = format!("{BASE}/{rel}");
        let mut b = s.get(&path).await.expect("get").to_vec();
        b[directory_len as usize..]
            .iter_mut()
            .for_each(|x| *x = !*x);
        s.put(&path, Bytes::from(b)).await.expect("put");
    }

    /// A rebalanced or split version takes the lists a shard already holds from memory (even
    /// across a split's new quantizer) and fetches only the others.
    #[test]
    fn lists_already_held_are_taken_from_memory_and_only_the_rest_is_fetched() {
        crate::storage::with_temp_store("loader-reuse", |s, _| async move {
            let (m1, full, data) = v1(&s).await;
            let shard0 = m1.shard(0).expect("shard 0").lists.clone();
            let shard1 = m1.shard(1).expect("shard 1").lists.clone();
            let held0 = load_lists(&s, "ns", "docs", &m1, &shard0, &[])
                .await
                .expect("v1");
            let held1 = load_lists(&s, "ns", "docs", &m1, &shard1, &[])
                .await
                .expect("v1");
            assert_eq!(held0.reused, 0);
            assert!(held0.bytes > 0);

            // v2 moves one list of shard 0 to shard 1.
            let moved = shard0[0];
            let mv = crate::remap::Move {
                list: moved,
                from: 0,
                to: 1,
            };
            let m2 = crate::remap::remap(&m1, "v2", &[mv], 1).expect("remap");
            put_manifest(&s, &m2).await;
            // v3 splits another list of shard 0; the new half stays on shard 0.
            let hot = shard0[1];
            let ids = full.list(hot).expect("list").ids.clone();
            let rows: Vec<f32> = ids
                .iter()
                .flat_map(|&i| data[i as usize * DIM..(i as usize + 1) * DIM].to_vec())
                .collect();
            let split = full.split_list(hot, &ids, &rows).expect("split");
            let (mut q, mut l) = (Vec::new(), Vec::new());
            format::write_quantizer(&split, &mut q).expect("quantizer");
            format::write_lists(&split, &mut l).expect("lists");
            let halves = Halves {
                centroids: entry("versions/v3/centroids.qivf", &q),
                lists: lists_file("versions/v3/lists.qivf", &l),
                sizes: (
                    split.list(hot).map_or(0, |x| x.len() as u64),
                    split.list(8).map_or(0, |x| x.len() as u64),
                ),
            };
            let m3 = split_manifest(&m1, "v3", hot, 0, full.fingerprint(), halves, 2)
                .expect("split manifest");
            put(&s, "versions/v3/centroids.qivf", q).await;
            put(&s, "versions/v3/lists.qivf", l).await;
            put_manifest(&s, &m3).await;

            spoil(&s, "versions/v1/lists.qivf", m1.lists[0].directory_len).await;
            fn held(h: &LoadedLists) -> Held<'_> {
                Held {
                    index: &h.index,
                    sources: &h.sources,
                }
            }
            // Shard 0 of v2 holds a subset of what it held: all from memory.
            let lists2 = m2.shard(0).expect("shard 0").lists.clone();
            let got = load_lists(&s, "ns", "docs", &m2, &lists2, &[held(&held0)])
                .await
                .expect("every list from memory");
            assert_eq!((got.reused, got.bytes), (lists2.len(), 0));
            for &x in &lists2 {
                assert_eq!(got.index.list(x), held0.index.list(x), "list {x}");
            }
            // Shard 1 of v2 gains a list it never held: fetched, and the spoiled file says so.
            let lists = m2.shard(1).expect("shard 1").lists.clone();
            let e = load_lists(&s, "ns", "docs", &m2, &lists, &[held(&held1)])
                .await
                .err()
                .expect("the moved list is fetched");
            assert!(
                format!("{e:#}").contains(&format!("list {moved}: checksum")),
                "{e:#}"
            );
            // Shard 0 of v3: every unchanged list from memory under the new quantizer; the two
            // halves from v3's own file.
            let lists3 = m3.shard(0).expect("shard 0").lists.clone();
            let got = load_lists(&s, "ns", "docs", &m3, &lists3, &[held(&held0)])
                .await
                .expect("v3");
            assert_eq!(got.reused, lists3.len() - 2, "{lists3:?}");
            assert_eq!(got.index.nlist(), 9);
            assert_eq!(
                got.sizes.iter().sum::<u64>(),
                held0.sizes.iter().sum::<u64>(),
                "the halves hold the split list's entries"
            );
        });
    }
}
