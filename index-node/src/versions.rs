//! Which versions a node holds and which one is active.
//!
//! Until the operator exists this comes from flags or a small JSON file the node polls; the
//! operator issue backs the same [`VersionSource`] with the `VectorIndex` status.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// What the node should converge to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// Versions to load (and keep loaded).
    #[serde(default)]
    pub versions: Vec<String>,
    /// Version routers pin new queries to; must be among `versions`.
    #[serde(default)]
    pub active: Option<String>,
    /// Lists a query probes when it does not say (`spec.index.nprobe`), capped at each
    /// version's nlist; `None`: each version's manifest default. A query-time setting, so it
    /// changes without a new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nprobe: Option<u32>,
}

/// A source of [`Desired`] states. Implementations publish every change on the channel.
///
/// `None` means "not known yet": the source has not produced a state (a file that cannot be
/// read yet, a watch that has not listed yet). A node holds what it has until the source
/// says otherwise, so a node whose source is late or down never drops a version that
/// routers may still route to.
pub trait VersionSource: Send + 'static {
    fn watch(self: Box<Self>) -> watch::Receiver<Option<Desired>>;
}

/// Fixed by flags.
pub struct StaticVersions(pub Desired);

impl VersionSource for StaticVersions {
    fn watch(self: Box<Self>) -> watch::Receiver<Option<Desired>> {
        // The sender is dropped: receivers keep the last value, which never changes.
        watch::channel(Some(self.0)).1
    }
}

/// A JSON file `{"versions": [...], "active": "..."}` polled every `interval`. A missing or
/// unparsable file keeps the last good state (logged), so a half-written file changes nothing;
/// until the file has been read once the state is unknown (`None`), not empty.
pub struct FileVersions {
    pub path: PathBuf,
    pub interval: Duration,
}

impl VersionSource for FileVersions {
    fn watch(self: Box<Self>) -> watch::Receiver<Option<Desired>> {
        let mut last_err = String::new();
        let first = match read(&self.path) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e,
                    "cannot read versions file; desired versions not known yet, holding what is loaded");
                last_err = e;
                None
            }
        };
        let (tx, rx) = watch::channel(first);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(self.interval).await;
                match read(&self.path) {
                    Ok(d) => {
                        last_err.clear();
                        tx.send_if_modified(|cur| {
                            if cur.as_ref() == Some(&d) {
                                false
                            } else {
                                tracing::info!(versions = ?d.versions, active = ?d.active, "desired versions changed");
                                *cur = Some(d);
                                true
                            }
                        });
                    }
                    Err(e) => {
                        if e != last_err {
                            tracing::warn!(path = %self.path.display(), error = %e, "cannot read versions file; keeping the last state");
                            last_err = e;
                        }
                    }
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        rx
    }
}

fn read(path: &std::path::Path) -> Result<Desired, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Flags shared by both roles.
#[derive(clap::Args, Debug, Clone)]
pub struct VersionArgs {
    /// JSON file `{"versions": [..], "active": ".."}` polled for changes.
    #[arg(long, conflicts_with_all = ["versions", "active"])]
    pub versions_file: Option<PathBuf>,
    /// Versions to hold (when no --versions-file).
    #[arg(long, value_delimiter = ',')]
    pub versions: Vec<String>,
    /// Active version (when no --versions-file); defaults to the last of --versions.
    #[arg(long)]
    pub active: Option<String>,
    /// Poll interval of --versions-file, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub versions_poll_ms: u64,
}

impl VersionArgs {
    pub fn source(&self) -> Box<dyn VersionSource> {
        match &self.versions_file {
            Some(path) => Box::new(FileVersions {
                path: path.clone(),
                interval: Duration::from_millis(self.versions_poll_ms.max(10)),
            }),
            None => Box::new(StaticVersions(Desired {
                versions: self.versions.clone(),
                active: self
                    .active
                    .clone()
                    .or_else(|| self.versions.last().cloned()),
                nprobe: None,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Until the file is readable the state is unknown (not "no versions"); once read, a file
    /// that goes missing or turns unreadable keeps the last good state.
    #[tokio::test]
    async fn file_source_is_unknown_until_read_and_keeps_the_last_good_state() -> anyhow::Result<()>
    {
        let dir = std::env::temp_dir().join(format!("quiver-versions-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("versions.json");
        let _ = std::fs::remove_file(&path);
        let mut rx = Box::new(FileVersions {
            path: path.clone(),
            interval: Duration::from_millis(10),
        })
        .watch();
        assert_eq!(*rx.borrow(), None);
        std::fs::write(&path, r#"{"versions": ["v1"], "active": "v1"}"#)?;
        tokio::time::timeout(Duration::from_secs(5), rx.changed()).await??;
        let want = Some(Desired {
            versions: vec!["v1".into()],
            active: Some("v1".into()),
            nprobe: None,
        });
        assert_eq!(*rx.borrow_and_update(), want);
        std::fs::write(&path, "{not json")?;
        tokio::time::sleep(Duration::from_millis(60)).await;
        std::fs::remove_file(&path)?;
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(*rx.borrow(), want);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
