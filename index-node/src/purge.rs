//! `index-node purge`: delete every file of one `VectorIndex` from storage (its
//! `deletionPolicy: Delete` cleanup Job runs this before the operator lets the resource go).
//!
//! Only versions named for that resource's UID (`v<n>-<short uid>`) are deleted: a
//! re-created index of the same name whose predecessor kept its files (`Retain`) shares the
//! prefix `<namespace>/<index>/versions/`, and those files are not this resource's to delete.
//! Deleting is idempotent, so a retried Job finishes what a failed one began. The manifest of a
//! version goes first: a version without a manifest does not exist for readers, so a purge cut
//! short never leaves a version that looks whole but is missing files.

use std::collections::BTreeMap;

use anyhow::Context;
use quiver_api::layout::{MANIFEST, VERSIONS_DIR, index_prefix};
use quiver_api::names::VersionName;

use crate::storage::IndexArgs;

#[derive(clap::Args, Debug)]
pub struct PurgeCmd {
    #[command(flatten)]
    pub at: IndexArgs,
    /// `metadata.uid` of the VectorIndex whose versions go (other versions are kept).
    #[arg(long, env = quiver_api::env::INDEX_UID)]
    pub uid: String,
    /// List what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(cmd: PurgeCmd) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(purge(cmd))
}

/// The files of `names` (relative to the versions directory) grouped by the version they
/// belong to, for the versions of the resource whose short UID is `short_uid`.
fn owned_versions<'a>(names: &'a [String], short_uid: &str) -> BTreeMap<&'a str, Vec<&'a str>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for name in names {
        let Some((version, _)) = name.split_once('/') else {
            continue;
        };
        let ours = VersionName::parse(version).is_ok_and(|v| v.short_uid() == short_uid);
        if ours {
            out.entry(version).or_default().push(name.as_str());
        }
    }
    out
}

async fn purge(cmd: PurgeCmd) -> anyhow::Result<()> {
    let short = VersionName::new(1, &cmd.uid)
        .map_err(|e| anyhow::anyhow!("--uid {:?}: {e}", cmd.uid))?
        .short_uid()
        .to_string();
    let storage = cmd.at.open()?;
    let versions_dir = format!(
        "{}/{VERSIONS_DIR}",
        index_prefix(&cmd.at.namespace, &cmd.at.index)
    );
    let names = storage.list(&versions_dir).await?;
    let owned = owned_versions(&names, &short);
    let files: usize = owned.values().map(Vec::len).sum();
    tracing::info!(
        index = %cmd.at.index, namespace = %cmd.at.namespace, versions = owned.len(), files,
        kept = names.len() - files, dry_run = cmd.dry_run, "purging"
    );
    for (version, mut files) in owned {
        // Manifest first (see the module comment).
        files.sort_by_key(|f| !f.ends_with(&format!("/{MANIFEST}")));
        for f in &files {
            if cmd.dry_run {
                println!("would delete {versions_dir}/{f}");
                continue;
            }
            storage
                .delete(&format!("{versions_dir}/{f}"))
                .await
                .with_context(|| format!("deleting version {version}"))?;
        }
        tracing::info!(version, files = files.len(), "version deleted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn only_this_resources_versions_are_selected() {
        let names: Vec<String> = [
            "v1-7f3a9c2e/manifest.json",
            "v1-7f3a9c2e/lists.qivf",
            "v2-7f3a9c2e/centroids.qivf",
            "v1-00000000/manifest.json",
            "handmade/manifest.json",
            "stray.txt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let owned = owned_versions(&names, "7f3a9c2e");
        assert_eq!(
            owned.keys().copied().collect::<Vec<_>>(),
            ["v1-7f3a9c2e", "v2-7f3a9c2e"]
        );
        assert_eq!(owned["v1-7f3a9c2e"].len(), 2);
    }

    #[test]
    fn purge_deletes_this_index_and_keeps_a_predecessors_files() {
        crate::storage::with_temp_store("purge", |s, uri| async move {
            for f in [
                "ns/docs/versions/v1-7f3a9c2e/manifest.json",
                "ns/docs/versions/v1-7f3a9c2e/lists.qivf",
                "ns/docs/versions/v1-11111111/manifest.json",
                "ns/other/versions/v1-7f3a9c2e/manifest.json",
            ] {
                s.put(f, Bytes::from_static(b"x")).await.expect("put");
            }
            let cmd = |dry_run| PurgeCmd {
                at: IndexArgs {
                    storage: uri.clone(),
                    namespace: "ns".into(),
                    index: "docs".into(),
                },
                uid: "7F3A9C2E-0000-4000-8000-000000000001".into(),
                dry_run,
            };
            purge(cmd(true)).await.expect("dry run");
            assert_eq!(s.list("ns/docs/versions").await.expect("list").len(), 3);
            purge(cmd(false)).await.expect("purge");
            assert_eq!(
                s.list("ns/docs/versions").await.expect("list"),
                ["v1-11111111/manifest.json"]
            );
            assert!(
                s.exists("ns/other/versions/v1-7f3a9c2e/manifest.json")
                    .await
                    .expect("exists")
            );
            // Again: nothing left to do is success, not an error.
            purge(cmd(false)).await.expect("purge again");
            let bad = PurgeCmd {
                uid: "not-a-uid".into(),
                ..cmd(false)
            };
            let e = purge(bad).await.expect_err("bad uid");
            assert!(e.to_string().contains("--uid"), "{e}");
        });
    }
}
