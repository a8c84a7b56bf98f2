//! `index-node gc`: delete the files of retired versions (the operator's garbage-collection
//! Job, for `spec.storage.retainVersions`).
//!
//! The operator names both sides: the versions to delete and the versions it keeps. A file
//! under a deleted version that a kept version's manifest still names (a rebalanced version
//! reuses the list files of the one it was made from) stays. A kept manifest that cannot be
//! read or parsed stops the run before anything is deleted: what it references is unknown.
//! As in `purge`, a version's manifest goes first, so a run cut short never leaves a version
//! that looks whole; deleting is idempotent, so a retried Job finishes the work.

use std::collections::BTreeSet;

use anyhow::Context;
use quiver_api::layout::{MANIFEST, VERSIONS_DIR, index_prefix};
use quiver_api::names::VersionName;

use crate::manifest::Manifest;
use crate::storage::{IndexArgs, StorageError};

#[derive(clap::Args, Debug)]
pub struct GcCmd {
    #[command(flatten)]
    pub at: IndexArgs,
    /// Versions whose files go, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub delete: Vec<String>,
    /// Versions that stay, comma-separated: files their manifests name are never deleted.
    #[arg(long, value_delimiter = ',')]
    pub keep: Vec<String>,
    /// Print what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(cmd: GcCmd) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(gc(cmd))
}

/// What a run deleted and kept.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub deleted: usize,
    /// Files under deleted versions that a kept manifest still names.
    pub shared: usize,
}

fn check_versions(flag: &str, names: &[String]) -> anyhow::Result<()> {
    for n in names.iter().filter(|n| !n.is_empty()) {
        VersionName::parse(n).map_err(|e| anyhow::anyhow!("{flag} {n:?}: {e}"))?;
    }
    Ok(())
}

async fn gc(cmd: GcCmd) -> anyhow::Result<()> {
    let out = collect(&cmd).await?;
    tracing::info!(index = %cmd.at.index, namespace = %cmd.at.namespace, versions = ?cmd.delete,
        files = out.deleted, shared = out.shared, dry_run = cmd.dry_run, "garbage collected");
    Ok(())
}

pub async fn collect(cmd: &GcCmd) -> anyhow::Result<Outcome> {
    check_versions("--delete", &cmd.delete)?;
    check_versions("--keep", &cmd.keep)?;
    if let Some(both) = cmd.delete.iter().find(|d| cmd.keep.contains(d)) {
        anyhow::bail!("{both} is both in --delete and in --keep");
    }
    let storage = cmd.at.open()?;
    let prefix = index_prefix(&cmd.at.namespace, &cmd.at.index);

    // Every file a kept version still needs, relative to the index prefix.
    let mut needed: BTreeSet<String> = BTreeSet::new();
    for v in cmd.keep.iter().filter(|k| !k.is_empty()) {
        let path = format!("{prefix}/{VERSIONS_DIR}/{v}/{MANIFEST}");
        let bytes = match storage.get(&path).await {
            Ok(b) => b,
            // Kept but never built (a failed or preparing version): it names nothing.
            Err(StorageError::NotFound { .. }) => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("reading the manifest of kept version {v}; nothing deleted")
                });
            }
        };
        let m = Manifest::parse(&bytes, &path)
            .with_context(|| format!("kept version {v}; nothing deleted"))?;
        needed.extend(referenced(&m));
    }

    let mut out = Outcome::default();
    for v in cmd.delete.iter().filter(|d| !d.is_empty()) {
        let dir = format!("{VERSIONS_DIR}/{v}");
        let mut files = storage
            .list(&format!("{prefix}/{dir}"))
            .await
            .with_context(|| format!("listing version {v}"))?;
        // Manifest first (see the module comment).
        files.sort_by_key(|f| f != MANIFEST);
        for f in files {
            let rel = format!("{dir}/{f}");
            if needed.contains(&rel) {
                out.shared += 1;
                tracing::info!(file = %rel, "kept: a retained version's manifest names it");
                continue;
            }
            if cmd.dry_run {
                println!("would delete {prefix}/{rel}");
            } else {
                storage
                    .delete(&format!("{prefix}/{rel}"))
                    .await
                    .with_context(|| format!("deleting version {v}"))?;
            }
            out.deleted += 1;
        }
    }
    Ok(out)
}

/// The files a manifest names (relative to the index prefix).
fn referenced(m: &Manifest) -> impl Iterator<Item = String> + '_ {
    std::iter::once(m.centroids.path.clone())
        .chain(m.lists.iter().map(|l| l.file.path.clone()))
        .chain(
            m.eval
                .iter()
                .flat_map(|e| [e.queries.path.clone(), e.ground_truth.path.clone()]),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn manifest_json(version: &str, lists_of: &str) -> String {
        serde_json::json!({
            "format": 1, "namespace": "ns", "index": "docs", "version": version,
            "created_unix": 0, "dim": 4, "metric": "l2", "nlist": 1, "quantizer": "flat",
            "default_nprobe": 1, "ntotal": 1,
            "centroids": {"path": format!("versions/{version}/centroids.qivf"), "size": 1, "crc32": 0},
            "lists": [{"file": {"path": format!("versions/{lists_of}/lists-0.qivf"), "size": 1, "crc32": 0},
                       "directory_len": 1, "directory_crc32": 0}],
            "eval": null, "list_sizes": [1],
            "shards": [{"shard": 0, "lists": [0], "vectors": 1}],
            "build": {"parts": 1, "source": "test", "build_seconds": 0.0, "list_imbalance": 0.0},
        })
        .to_string()
    }

    #[test]
    fn deletes_named_versions_but_not_files_a_kept_manifest_names() {
        crate::storage::with_temp_store("gc", |s, uri| async move {
            let put = |p: String, b: String| {
                let s = &s;
                async move { s.put(&p, Bytes::from(b)).await.expect("put") }
            };
            let base = "ns/docs/versions";
            put(
                format!("{base}/v1-7f3a9c2e/manifest.json"),
                manifest_json("v1-7f3a9c2e", "v1-7f3a9c2e"),
            )
            .await;
            put(format!("{base}/v1-7f3a9c2e/centroids.qivf"), "c".into()).await;
            put(format!("{base}/v1-7f3a9c2e/lists-0.qivf"), "l".into()).await;
            put(
                format!("{base}/v2-7f3a9c2e/manifest.json"),
                manifest_json("v2-7f3a9c2e", "v2-7f3a9c2e"),
            )
            .await;
            put(format!("{base}/v2-7f3a9c2e/lists-0.qivf"), "l".into()).await;
            // v3: a rebalanced manifest over v1's list file.
            put(
                format!("{base}/v3-7f3a9c2e/manifest.json"),
                manifest_json("v3-7f3a9c2e", "v1-7f3a9c2e"),
            )
            .await;
            put(format!("{base}/v3-7f3a9c2e/centroids.qivf"), "c".into()).await;
            let cmd = |delete: &[&str], keep: &[&str], dry_run| GcCmd {
                at: IndexArgs {
                    storage: uri.clone(),
                    namespace: "ns".into(),
                    index: "docs".into(),
                },
                delete: delete.iter().map(|s| s.to_string()).collect(),
                keep: keep.iter().map(|s| s.to_string()).collect(),
                dry_run,
            };
            let dry = collect(&cmd(
                &["v1-7f3a9c2e", "v2-7f3a9c2e"],
                &["v3-7f3a9c2e", "v4-7f3a9c2e"],
                true,
            ))
            .await
            .expect("dry run");
            assert_eq!(
                dry,
                Outcome {
                    deleted: 4,
                    shared: 1
                }
            );
            assert_eq!(
                s.list(base).await.expect("list").len(),
                7,
                "dry run deletes nothing"
            );
            let out = collect(&cmd(
                &["v1-7f3a9c2e", "v2-7f3a9c2e"],
                &["v3-7f3a9c2e", "v4-7f3a9c2e"],
                false,
            ))
            .await
            .expect("gc");
            assert_eq!(
                out,
                Outcome {
                    deleted: 4,
                    shared: 1
                }
            );
            assert_eq!(
                s.list(base).await.expect("list"),
                [
                    "v1-7f3a9c2e/lists-0.qivf",
                    "v3-7f3a9c2e/centroids.qivf",
                    "v3-7f3a9c2e/manifest.json"
                ]
            );
            // Again: idempotent.
            let again = collect(&cmd(
                &["v1-7f3a9c2e", "v2-7f3a9c2e"],
                &["v3-7f3a9c2e"],
                false,
            ))
            .await
            .expect("again");
            assert_eq!(
                again,
                Outcome {
                    deleted: 0,
                    shared: 1
                }
            );
            // A kept manifest that does not parse: nothing is deleted.
            put(
                format!("{base}/v5-7f3a9c2e/manifest.json"),
                "{not json".into(),
            )
            .await;
            let e = collect(&cmd(&["v3-7f3a9c2e"], &["v5-7f3a9c2e"], false))
                .await
                .expect_err("corrupt kept manifest");
            assert!(format!("{e:#}").contains("nothing deleted"), "{e:#}");
            assert!(
                s.exists(&format!("{base}/v3-7f3a9c2e/manifest.json"))
                    .await
                    .expect("exists")
            );
            // Bad names and contradictions are refused before any I/O.
            let e = collect(&cmd(&["../etc"], &[], false))
                .await
                .expect_err("bad name");
            assert!(e.to_string().contains("--delete"), "{e}");
            let e = collect(&cmd(&["v3-7f3a9c2e"], &["v3-7f3a9c2e"], false))
                .await
                .expect_err("both");
            assert!(e.to_string().contains("both"), "{e}");
        });
    }
}
