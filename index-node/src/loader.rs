//! Reading a version back from storage, verifying what the manifest promises.

use anyhow::{Context, ensure};
use quiver_ivf::IvfIndex;
use quiver_ivf::dataset::{Vectors, parse_ivecs, parse_vectors};
use quiver_ivf::format;

use crate::manifest::{FileEntry, MANIFEST, Manifest, crc32};
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
    pub bytes: u64,
}

/// Loads only `lists` of every list file (one per build part) by byte range, checking the
/// directory CRC from the manifest and each list's CRC from the directory; entries of the same
/// list from several parts are appended.
pub async fn load_lists(
    storage: &Storage,
    namespace: &str,
    index: &str,
    m: &Manifest,
    lists: &[u32],
) -> anyhow::Result<LoadedLists> {
    let mut idx = read_quantizer(storage, namespace, index, m).await?;
    let mut per_list: Vec<Option<quiver_ivf::InvertedList>> = (0..m.nlist).map(|_| None).collect();
    let mut bytes_total = 0u64;
    for lf in &m.lists {
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
        // A file inherited across a split was written for the parent quantizer: it has no
        // entry for lists added since, and its copies of the split lists are stale.
        let inherited = lf.inherited_fingerprint()?;
        let fingerprint = inherited.unwrap_or(idx.fingerprint());
        let read: Vec<u32> = lists
            .iter()
            .copied()
            .filter(|l| !lf.skip.contains(l))
            .filter(|&l| inherited.is_none() || (l as usize) < dir.entries.len())
            .collect();
        let mut ranges = Vec::with_capacity(read.len());
        for &l in &read {
            let e = dir.entry(l)?;
            ensure!(
                e.offset + e.len <= size,
                "{rel}: list {l} ends at byte {} beyond the file size {size} (truncated)",
                e.offset + e.len
            );
            ranges.push(e.offset..e.offset + e.len);
        }
        let blobs = storage.get_ranges(&rel, &ranges).await?;
        for (&l, blob) in read.iter().zip(blobs) {
            bytes_total += blob.len() as u64;
            let list = format::decode_list_for(&idx, fingerprint, &dir, l, &blob, &rel)?;
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
