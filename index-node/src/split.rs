//! `index-node split`: a new version in which one hot or oversized list of another version is
//! split in two (2-means over that list's vectors; see `quiver_ivf::IvfIndex::split_list`).
//! Nothing else is trained or built: the new version writes its quantizer (nlist + 1
//! centroids), one lists file holding only the two halves, and its manifest, which names every
//! lists file of the version it is made from with that version's quantizer fingerprint and
//! the split list skipped. One half keeps the list's number and shard; the other becomes list
//! `nlist` on `--to-shard`.

use anyhow::{Context, ensure};
use bytes::Bytes;
use quiver_api::layout::{MANIFEST, version_prefix};
use quiver_ivf::IvfIndex;
use quiver_ivf::format;

use crate::loader::{load_lists, read_manifest};
use crate::manifest::{FileEntry, ListsFile, Manifest, ShardEntry, crc32};
use crate::source::{SourceArgs, synthetic_rows};
use crate::storage::{IndexArgs, Storage, StorageError, check_name};
use crate::train::CENTROIDS;

/// The lists file of a split version (only the two halves have entries).
pub const SPLIT_LISTS: &str = "lists.qivf";

#[derive(clap::Args, Debug)]
pub struct SplitCmd {
    #[command(flatten)]
    pub at: IndexArgs,
    /// The version whose list is split.
    #[arg(long)]
    pub from: String,
    /// The new version.
    #[arg(long)]
    pub to: String,
    /// The list to split.
    #[arg(long)]
    pub list: u32,
    /// The shard that holds the new half (list `nlist`); by default the list's own shard.
    #[arg(long)]
    pub to_shard: Option<u32>,
    /// Where the list's vectors come from when its entries do not keep them (SQ8 and PQ
    /// without keep_raw): the source `--from` was built from, read only for this list's rows.
    #[command(flatten)]
    pub source: SourceArgs,
    /// The id offset `--from` was built with (id = offset + source row).
    #[arg(long, default_value_t = 0)]
    pub id_offset: u64,
}

/// What the split produced, for [`split_manifest`].
pub struct Halves {
    pub centroids: FileEntry,
    pub lists: ListsFile,
    /// Entries of the half that keeps the list's number, and of the new list.
    pub sizes: (u64, u64),
}

/// How the manifest records where a version came from (and how a retry recognises itself).
fn origin(from: &str, list: u32) -> String {
    format!("split of {from} list {list}")
}

/// The manifest of version `to` (pure): `m` with list `list` replaced by the halves, the new
/// list `nlist` owned by `to_shard`, and every file of `m` inherited with `m`'s quantizer
/// fingerprint (unless it already names an older one) and the split list skipped.
pub fn split_manifest(
    m: &Manifest,
    to: &str,
    list: u32,
    to_shard: u32,
    parent_fingerprint: u64,
    halves: Halves,
    created_unix: u64,
) -> anyhow::Result<Manifest> {
    let l = list as usize;
    ensure!(
        l < m.nlist,
        "list {list}: {} has {} lists",
        m.version,
        m.nlist
    );
    ensure!(
        m.shard(to_shard).is_some(),
        "--to-shard {to_shard}: {} has shards {:?}",
        m.version,
        m.shards.iter().map(|s| s.shard).collect::<Vec<_>>()
    );
    let (a, b) = halves.sizes;
    ensure!(
        a + b == m.list_sizes[l],
        "the halves hold {} entries, list {list} of {} has {}",
        a + b,
        m.version,
        m.list_sizes[l]
    );
    let new_list = m.nlist as u32;
    let mut out = m.clone();
    out.version = to.to_string();
    out.created_unix = created_unix;
    out.nlist = m.nlist + 1;
    out.centroids = halves.centroids;
    out.lists = m
        .lists
        .iter()
        .map(|lf| {
            let mut lf = lf.clone();
            if lf.quantizer.is_none() {
                lf.quantizer = Some(format!("{parent_fingerprint:016x}"));
            }
            if !lf.skip.contains(&list) {
                lf.skip.push(list);
                lf.skip.sort_unstable();
            }
            lf
        })
        .chain(std::iter::once(halves.lists))
        .collect();
    out.list_sizes[l] = a;
    out.list_sizes.push(b);
    out.shards = m
        .shards
        .iter()
        .map(|s| {
            let mut lists = s.lists.clone();
            if s.shard == to_shard {
                lists.push(new_list);
            }
            let vectors = lists.iter().map(|&x| out.list_sizes[x as usize]).sum();
            ShardEntry {
                shard: s.shard,
                lists,
                vectors,
            }
        })
        .collect();
    out.build.source = origin(&m.version, list);
    out.build.build_seconds = 0.0;
    out.build.list_imbalance = crate::manifest::imbalance(&out.list_sizes);
    Ok(out)
}

pub fn run(cmd: SplitCmd) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let m = rt.block_on(write(&cmd))?;
    tracing::info!(index = %cmd.at.index, namespace = %cmd.at.namespace, from = %cmd.from,
        version = %m.version, list = cmd.list, nlist = m.nlist, "split version written");
    Ok(())
}

/// The vectors of `ids`: the list's own copies when it keeps them, else the source's rows.
async fn vectors_of(
    cmd: &SplitCmd,
    ids: &[u64],
    kept: &[f32],
    dim: usize,
) -> anyhow::Result<Vec<f32>> {
    if kept.len() == ids.len() * dim {
        return Ok(kept.to_vec());
    }
    let rows = ids
        .iter()
        .map(|&id| {
            id.checked_sub(cmd.id_offset)
                .and_then(|r| usize::try_from(r).ok())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "id {id} is below --id-offset {}: not the source this version was built from",
                        cmd.id_offset
                    )
                })
        })
        .collect::<anyhow::Result<Vec<usize>>>()?;
    let (n, data) = if let Some(n) = cmd.source.synthetic {
        ensure!(
            cmd.source.dim == dim,
            "--dim {} does not match the index's dimension {dim}",
            cmd.source.dim
        );
        (n, None)
    } else {
        ensure!(
            !cmd.source.files.is_empty(),
            "list {} keeps no vectors (SQ8/PQ without keep_raw): give the source it was built \
             from (--source FILE[,FILE...] or --synthetic N)",
            cmd.list
        );
        let all = cmd.source.load().await?;
        ensure!(
            all.dim == dim,
            "source dimension {} does not match the index's dimension {dim}",
            all.dim
        );
        (all.len(), Some(all))
    };
    if let Some(&r) = rows.iter().find(|&&r| r >= n) {
        anyhow::bail!(
            "id {} is row {r}, but the source has {n} rows: not the source this version was built from",
            cmd.id_offset + r as u64
        );
    }
    Ok(match data {
        Some(all) => rows.iter().flat_map(|&r| all.row(r).to_vec()).collect(),
        None => synthetic_rows(n, dim, cmd.source.seed, rows.into_iter()).data,
    })
}

fn file_entry(rel: String, bytes: &[u8]) -> FileEntry {
    FileEntry {
        path: rel,
        size: bytes.len() as u64,
        crc32: crc32(bytes),
    }
}

async fn put(storage: &Storage, rel: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
    storage
        .put(rel, Bytes::from(bytes))
        .await
        .with_context(|| format!("writing {rel}"))
}

/// Splits `--list` of `--from` into `--to`, written manifest last. A retried Job that finds
/// `--to`'s manifest written for the same split succeeds; any other manifest there is an
/// error (a name is never reused).
pub async fn write(cmd: &SplitCmd) -> anyhow::Result<Manifest> {
    check_name("--from", &cmd.from)?;
    check_name("--to", &cmd.to)?;
    ensure!(cmd.from != cmd.to, "--to must differ from --from");
    let (ns, ix) = (&cmd.at.namespace, &cmd.at.index);
    let storage = cmd.at.open()?;
    let prefix = version_prefix(ns, ix, &cmd.to);
    let rel = format!("{prefix}/{MANIFEST}");
    match storage.get(&rel).await {
        Ok(bytes) => {
            let old = Manifest::parse(&bytes, &rel)?;
            ensure!(
                old.build.source == origin(&cmd.from, cmd.list),
                "{rel} exists and is not a split of {} list {} ({})",
                cmd.from,
                cmd.list,
                old.build.source
            );
            return Ok(old);
        }
        Err(StorageError::NotFound { .. }) => {}
        Err(e) => return Err(e).with_context(|| format!("reading {rel}")),
    }
    let m = read_manifest(&storage, ns, ix, &cmd.from).await?;
    ensure!(
        (cmd.list as usize) < m.nlist,
        "--list {}: {} has {} lists",
        cmd.list,
        m.version,
        m.nlist
    );
    let owner = m.list_owners()[cmd.list as usize];
    let to_shard = cmd.to_shard.unwrap_or(owner);
    tracing::info!(from = %m.version, list = cmd.list, entries = m.list_sizes[cmd.list as usize],
        "reading the list");
    let loaded = load_lists(&storage, ns, ix, &m, &[cmd.list], &[]).await?;
    let parent: IvfIndex = loaded.index;
    let (ids, kept) = parent
        .list(cmd.list)
        .map(|l| (l.ids.clone(), l.raw.clone()))
        .unwrap_or_default();
    let vectors = vectors_of(cmd, &ids, &kept, m.dim).await?;
    let list = cmd.list;
    let split = tokio::task::spawn_blocking(move || {
        let s = parent.split_list(list, &ids, &vectors)?;
        anyhow::Ok((parent.fingerprint(), s))
    })
    .await??;
    let (parent_fingerprint, split) = split;
    let mut q = Vec::new();
    format::write_quantizer(&split, &mut q)?;
    let mut lists = Vec::new();
    format::write_lists(&split, &mut lists)?;
    let dir_len = format::directory_len(&lists, SPLIT_LISTS)? as usize;
    let at = |name: &str| format!("versions/{}/{name}", cmd.to);
    let halves = Halves {
        centroids: file_entry(at(CENTROIDS), &q),
        lists: ListsFile {
            file: file_entry(at(SPLIT_LISTS), &lists),
            directory_len: dir_len as u64,
            directory_crc32: crc32(&lists[..dir_len]),
            quantizer: None,
            skip: Vec::new(),
        },
        sizes: (
            split.list(list).map_or(0, |l| l.len() as u64),
            split.list(m.nlist as u32).map_or(0, |l| l.len() as u64),
        ),
    };
    let now = crate::manifest::unix_now();
    let new = split_manifest(&m, &cmd.to, list, to_shard, parent_fingerprint, halves, now)?;
    let bytes = serde_json::to_vec_pretty(&new)?;
    Manifest::parse(&bytes, &rel)?;
    put(&storage, &format!("{prefix}/{CENTROIDS}"), q).await?;
    put(&storage, &format!("{prefix}/{SPLIT_LISTS}"), lists).await?;
    // Last: the manifest is what makes the version exist.
    put(&storage, &rel, bytes).await?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let v: serde_json::Value = serde_json::json!({
            "format": 1, "namespace": "ns", "index": "docs", "version": "v1",
            "created_unix": 0, "dim": 4, "metric": "l2", "nlist": 3, "quantizer": "flat",
            "default_nprobe": 2, "ntotal": 60,
            "centroids": {"path": "versions/v1/centroids.qivf", "size": 1, "crc32": 0},
            "lists": [
                {"file": {"path": "versions/v0/lists.qivf", "size": 1, "crc32": 0},
                 "directory_len": 1, "directory_crc32": 0, "quantizer": "00000000000000aa",
                 "skip": [1]},
                {"file": {"path": "versions/v1/lists.qivf", "size": 1, "crc32": 0},
                 "directory_len": 1, "directory_crc32": 0}],
            "eval": null, "list_sizes": [10, 20, 30],
            "shards": [{"shard": 0, "lists": [0, 1], "vectors": 30},
                       {"shard": 1, "lists": [2], "vectors": 30}],
            "build": {"parts": 1, "source": "test", "build_seconds": 1.0, "list_imbalance": 0.0},
        });
        serde_json::from_value(v).expect("manifest")
    }

    fn halves(a: u64, b: u64) -> Halves {
        let f = |p: &str| FileEntry {
            path: p.into(),
            size: 1,
            crc32: 0,
        };
        Halves {
            centroids: f("versions/v2/centroids.qivf"),
            lists: ListsFile {
                file: f("versions/v2/lists.qivf"),
                directory_len: 1,
                directory_crc32: 0,
                quantizer: None,
                skip: Vec::new(),
            },
            sizes: (a, b),
        }
    }

    #[test]
    fn the_new_half_goes_to_its_shard_and_every_older_file_skips_the_list() {
        let m = manifest();
        let s = split_manifest(&m, "v2", 2, 0, 0xbb, halves(12, 18), 9).expect("split");
        assert_eq!((s.nlist, s.version.as_str(), s.created_unix), (4, "v2", 9));
        assert_eq!(s.list_sizes, [10, 20, 12, 18]);
        assert_eq!(s.ntotal, 60);
        assert_eq!(s.shards[0].lists, [0, 1, 3]);
        assert_eq!(s.shards[0].vectors, 48);
        assert_eq!(s.shards[1].lists, [2]);
        assert_eq!(s.shards[1].vectors, 12);
        // The grandparent's file keeps its own fingerprint; the parent's gets the parent's.
        assert_eq!(s.lists[0].quantizer.as_deref(), Some("00000000000000aa"));
        assert_eq!(s.lists[0].skip, [1, 2]);
        assert_eq!(s.lists[1].quantizer.as_deref(), Some("00000000000000bb"));
        assert_eq!(s.lists[1].skip, [2]);
        assert_eq!(s.lists[2].file.path, "versions/v2/lists.qivf");
        assert!(s.lists[2].quantizer.is_none() && s.lists[2].skip.is_empty());
        assert_eq!(s.centroids.path, "versions/v2/centroids.qivf");
        assert_eq!(s.build.source, "split of v1 list 2");
        let bytes = serde_json::to_vec(&s).expect("json");
        assert_eq!(Manifest::parse(&bytes, "m").expect("parses"), s);
    }

    #[test]
    fn bad_splits_are_refused_by_name() {
        let m = manifest();
        let refused = |list, shard, h: Halves, what: &str| {
            let e = split_manifest(&m, "v2", list, shard, 1, h, 0).expect_err(what);
            assert!(e.to_string().contains(what), "{e}");
        };
        refused(3, 0, halves(1, 2), "has 3 lists");
        refused(0, 5, halves(5, 5), "has shards [0, 1]");
        refused(0, 0, halves(5, 6), "hold 11 entries");
        let mut bad = manifest();
        bad.lists[0].skip = vec![7];
        let e = Manifest::parse(&serde_json::to_vec(&bad).expect("json"), "m").expect_err("skip");
        assert!(e.to_string().contains("skips list 7"), "{e}");
        bad.lists[0].skip.clear();
        bad.lists[0].quantizer = Some("xyz".into());
        let e = Manifest::parse(&serde_json::to_vec(&bad).expect("json"), "m").expect_err("fp");
        assert!(format!("{e:#}").contains("hex fingerprint"), "{e:#}");
    }
}
