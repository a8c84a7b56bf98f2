//! `index-node remap`: a new version over the same lists with another shard map (a
//! rebalance). Its manifest names the files of the version it is made from (centroids, list
//! files, evaluation set; paths are relative to the index prefix), so nothing is trained,
//! built or copied: the manifest is the only file written. `index-node gc` keeps files a
//! retained manifest names, so the source version can retire without taking them.

use anyhow::Context;
use bytes::Bytes;
use quiver_api::layout::{MANIFEST, version_prefix};

use crate::loader::read_manifest;
use crate::manifest::{Manifest, ShardEntry};
use crate::storage::{IndexArgs, StorageError, check_name};

#[derive(clap::Args, Debug)]
pub struct RemapCmd {
    #[command(flatten)]
    pub at: IndexArgs,
    /// The version whose files the new one reuses.
    #[arg(long)]
    pub from: String,
    /// The new version.
    #[arg(long)]
    pub to: String,
    /// Moves of whole lists, `LIST:FROM:TO` (FROM is the shard that holds the list in
    /// --from), comma-separated or repeated.
    #[arg(
        long = "move",
        value_delimiter = ',',
        required = true,
        value_name = "LIST:FROM:TO"
    )]
    pub moves: Vec<String>,
}

/// One move of a whole list between shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub list: u32,
    pub from: u32,
    pub to: u32,
}

/// `LIST:FROM:TO`.
pub fn parse_move(s: &str) -> anyhow::Result<Move> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    let [list, from, to] = parts.as_slice() else {
        anyhow::bail!("--move {s:?}: expected LIST:FROM:TO");
    };
    let num = |what: &str, v: &str| {
        v.parse::<u32>()
            .map_err(|_| anyhow::anyhow!("--move {s:?}: {what} {v:?} is not a number"))
    };
    Ok(Move {
        list: num("list", list)?,
        from: num("shard", from)?,
        to: num("shard", to)?,
    })
}

/// The manifest of version `to`: `m` with `moves` applied to its shard map (pure). Refuses a
/// move of a list that does not exist, that shard FROM does not hold, to a shard the map does
/// not have, or of a list moved twice.
pub fn remap(
    m: &Manifest,
    to: &str,
    moves: &[Move],
    created_unix: u64,
) -> anyhow::Result<Manifest> {
    let mut owners = m.list_owners();
    let mut moved = vec![false; m.nlist];
    for mv in moves {
        let l = mv.list as usize;
        anyhow::ensure!(
            l < m.nlist,
            "move of list {}: {} has {} lists",
            mv.list,
            m.version,
            m.nlist
        );
        anyhow::ensure!(!moved[l], "list {} is moved twice", mv.list);
        anyhow::ensure!(
            owners[l] == mv.from,
            "move of list {} from shard {}: in {} shard {} holds it",
            mv.list,
            mv.from,
            m.version,
            owners[l]
        );
        anyhow::ensure!(
            m.shard(mv.to).is_some(),
            "move of list {} to shard {}: {} has shards {:?}",
            mv.list,
            mv.to,
            m.version,
            m.shards.iter().map(|s| s.shard).collect::<Vec<_>>()
        );
        owners[l] = mv.to;
        moved[l] = true;
    }
    let mut out = m.clone();
    out.version = to.to_string();
    out.created_unix = created_unix;
    out.shards = m
        .shards
        .iter()
        .map(|s| {
            let lists: Vec<u32> = (0..m.nlist as u32)
                .filter(|&l| owners[l as usize] == s.shard)
                .collect();
            let vectors = lists.iter().map(|&l| m.list_sizes[l as usize]).sum();
            ShardEntry {
                shard: s.shard,
                lists,
                vectors,
            }
        })
        .collect();
    out.build.source = format!("remap of {}", m.version);
    out.build.build_seconds = 0.0;
    Ok(out)
}

pub fn run(cmd: RemapCmd) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let m = rt.block_on(write(&cmd))?;
    tracing::info!(index = %cmd.at.index, namespace = %cmd.at.namespace, from = %cmd.from,
        version = %m.version, moves = cmd.moves.len(), "remapped version written");
    Ok(())
}

/// Reads `--from`'s manifest and writes `--to`'s. A retried Job finds its manifest already
/// written: the same shard map is success, another one an error (a name is never reused for
/// another map).
pub async fn write(cmd: &RemapCmd) -> anyhow::Result<Manifest> {
    check_name("--from", &cmd.from)?;
    check_name("--to", &cmd.to)?;
    anyhow::ensure!(cmd.from != cmd.to, "--to must differ from --from");
    let moves = cmd
        .moves
        .iter()
        .filter(|m| !m.trim().is_empty())
        .map(|m| parse_move(m))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!moves.is_empty(), "--move: no moves given");
    let storage = cmd.at.open()?;
    let from = read_manifest(&storage, &cmd.at.namespace, &cmd.at.index, &cmd.from).await?;
    let now = crate::manifest::unix_now();
    let new = remap(&from, &cmd.to, &moves, now)?;
    let rel = format!(
        "{}/{MANIFEST}",
        version_prefix(&cmd.at.namespace, &cmd.at.index, &cmd.to)
    );
    match storage.get(&rel).await {
        Ok(bytes) => {
            let old = Manifest::parse(&bytes, &rel)?;
            anyhow::ensure!(
                old.shards == new.shards && old.lists == new.lists,
                "{rel} exists with another shard map or other files"
            );
            return Ok(old);
        }
        Err(StorageError::NotFound { .. }) => {}
        Err(e) => return Err(e).with_context(|| format!("reading {rel}")),
    }
    let bytes = serde_json::to_vec_pretty(&new)?;
    // What a node will read back must parse: the map is checked once more on the way out.
    Manifest::parse(&bytes, &rel)?;
    storage
        .put(&rel, Bytes::from(bytes))
        .await
        .with_context(|| format!("writing {rel}"))?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(version: &str) -> Manifest {
        let v: serde_json::Value = serde_json::json!({
            "format": 1, "namespace": "ns", "index": "docs", "version": version,
            "created_unix": 0, "dim": 4, "metric": "l2", "nlist": 4, "quantizer": "flat",
            "default_nprobe": 2, "ntotal": 100,
            "centroids": {"path": format!("versions/{version}/centroids.qivf"), "size": 1, "crc32": 0},
            "lists": [{"file": {"path": format!("versions/{version}/lists-0.qivf"), "size": 1, "crc32": 0},
                       "directory_len": 1, "directory_crc32": 0}],
            "eval": null, "list_sizes": [10, 20, 30, 40],
            "shards": [{"shard": 0, "lists": [0, 1], "vectors": 30},
                       {"shard": 1, "lists": [2, 3], "vectors": 70}],
            "build": {"parts": 1, "source": "test", "build_seconds": 1.0, "list_imbalance": 0.0},
        });
        serde_json::from_value(v).expect("manifest")
    }

    #[test]
    fn moves_change_only_the_map_and_every_file_is_reused() {
        let m = manifest("v1-0a0b0c0d");
        let mv = |list, from, to| Move { list, from, to };
        let r = remap(&m, "v2-0a0b0c0d", &[mv(3, 1, 0)], 7).expect("remap");
        assert_eq!(r.version, "v2-0a0b0c0d");
        assert_eq!(r.created_unix, 7);
        assert_eq!(r.shards[0].lists, [0, 1, 3]);
        assert_eq!(r.shards[0].vectors, 70);
        assert_eq!(r.shards[1].lists, [2]);
        assert_eq!(r.shards[1].vectors, 30);
        assert_eq!(r.centroids, m.centroids, "the source's files, not copies");
        assert_eq!(r.lists, m.lists);
        assert_eq!(
            (r.nlist, &r.list_sizes, r.ntotal),
            (m.nlist, &m.list_sizes, m.ntotal)
        );
        assert_eq!(r.build.source, "remap of v1-0a0b0c0d");
        assert_eq!(r.list_owners(), [0, 0, 1, 0]);

        let refused = |moves: &[Move], what: &str| {
            let e = remap(&m, "v2-0a0b0c0d", moves, 0).expect_err(what);
            assert!(e.to_string().contains(what), "{e}");
        };
        refused(&[mv(9, 0, 1)], "has 4 lists");
        refused(&[mv(0, 1, 0)], "shard 0 holds it");
        refused(&[mv(0, 0, 5)], "has shards [0, 1]");
        refused(&[mv(0, 0, 1), mv(0, 1, 0)], "moved twice");
    }

    #[test]
    fn moves_parse_as_list_from_to() {
        assert_eq!(
            parse_move(" 12:0:3").expect("move"),
            Move {
                list: 12,
                from: 0,
                to: 3
            }
        );
        for bad in ["12:0", "a:0:1", "1:0:1:2", ""] {
            assert!(parse_move(bad).is_err(), "{bad}");
        }
    }

    /// Written once as the manifest only; a retry with the same map succeeds, another map is
    /// refused; the source must exist.
    #[test]
    fn the_manifest_is_the_only_file_written_and_retries_are_safe() {
        crate::storage::with_temp_store("remap", |s, uri| async move {
            let base = "ns/docs/versions";
            let v1 = manifest("v1-0a0b0c0d");
            s.put(
                &format!("{base}/v1-0a0b0c0d/manifest.json"),
                Bytes::from(serde_json::to_vec(&v1).expect("json")),
            )
            .await
            .expect("put");
            let cmd = |moves: &[&str]| RemapCmd {
                at: IndexArgs {
                    storage: uri.clone(),
                    namespace: "ns".into(),
                    index: "docs".into(),
                },
                from: "v1-0a0b0c0d".into(),
                to: "v2-0a0b0c0d".into(),
                moves: moves.iter().map(|m| m.to_string()).collect(),
            };
            let m = write(&cmd(&["3:1:0"])).await.expect("remap");
            assert_eq!(m.shards[0].lists, [0, 1, 3]);
            assert_eq!(
                s.list(base).await.expect("list"),
                ["v1-0a0b0c0d/manifest.json", "v2-0a0b0c0d/manifest.json"]
            );
            let back = read_manifest(&s, "ns", "docs", "v2-0a0b0c0d")
                .await
                .expect("read back");
            assert_eq!(back.shards, m.shards);
            write(&cmd(&["3:1:0"])).await.expect("a retry");
            let e = write(&cmd(&["2:1:0"])).await.expect_err("another map");
            assert!(e.to_string().contains("another shard map"), "{e}");
            let mut missing = cmd(&["3:1:0"]);
            missing.from = "v9-0a0b0c0d".into();
            missing.to = "v8-0a0b0c0d".into();
            let e = write(&missing).await.expect_err("no source");
            assert!(format!("{e:#}").contains("v9-0a0b0c0d"), "{e:#}");
            let e = write(&cmd(&["x"])).await.expect_err("bad move");
            assert!(e.to_string().contains("LIST:FROM:TO"), "{e}");
        });
    }
}
