//! Where the replicas of each shard are.
//!
//! For now a static list (flag) or a JSON file polled for changes, behind [`ReplicaSource`];
//! the operator issue backs it with a watch on the index's Pods (pod IP + Ready condition).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

/// shard number -> replica addresses (`ip:port`).
pub type Replicas = BTreeMap<u32, Vec<String>>;

/// A source of shard replicas. `None` means "not known yet" (nothing read so far): a router
/// keeps the replicas it has rather than taking that for "no replicas".
pub trait ReplicaSource: Send + 'static {
    fn watch(self: Box<Self>) -> watch::Receiver<Option<Replicas>>;
}

pub struct StaticReplicas(pub Replicas);

impl ReplicaSource for StaticReplicas {
    fn watch(self: Box<Self>) -> watch::Receiver<Option<Replicas>> {
        watch::channel(Some(self.0)).1
    }
}

/// JSON file `{"0": ["127.0.0.2:7000", ...], "1": [...]}`, polled. Unknown until first read;
/// an unreadable file afterwards keeps the last good state.
pub struct FileReplicas {
    pub path: PathBuf,
    pub interval: Duration,
}

impl ReplicaSource for FileReplicas {
    fn watch(self: Box<Self>) -> watch::Receiver<Option<Replicas>> {
        let mut last_err = String::new();
        let first = match read(&self.path) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e,
                    "cannot read replicas file; shard replicas not known yet");
                last_err = e;
                None
            }
        };
        let (tx, rx) = watch::channel(first);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(self.interval).await;
                match read(&self.path) {
                    Ok(r) => {
                        last_err.clear();
                        tx.send_if_modified(|cur| {
                            let changed = cur.as_ref() != Some(&r);
                            if changed {
                                tracing::info!(replicas = ?r, "shard replicas changed");
                                *cur = Some(r);
                            }
                            changed
                        });
                    }
                    Err(e) => {
                        if e != last_err {
                            tracing::warn!(path = %self.path.display(), error = %e,
                                "cannot read replicas file; keeping the last state");
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

fn read(path: &std::path::Path) -> Result<Replicas, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Parses `0=ip:port,ip:port;1=ip:port`.
pub fn parse_static(spec: &str) -> anyhow::Result<Replicas> {
    let mut out = Replicas::new();
    for part in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (shard, addrs) = part
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--shards: {part:?} is not SHARD=ADDR[,ADDR...]"))?;
        let shard: u32 = shard
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("--shards: {shard:?} is not a shard number"))?;
        let addrs: Vec<String> = addrs
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        anyhow::ensure!(!addrs.is_empty(), "--shards: shard {shard} has no address");
        out.insert(shard, addrs);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_static_spec() -> anyhow::Result<()> {
        let r = parse_static("0=127.0.0.2:7000,127.0.0.3:7000; 1=127.0.0.4:7000")?;
        assert_eq!(r[&0].len(), 2);
        assert_eq!(r[&1], vec!["127.0.0.4:7000".to_string()]);
        assert!(parse_static("x=1").is_err());
        Ok(())
    }
}

#[cfg(test)]
mod watch_tests {
    use super::*;

    #[tokio::test]
    async fn file_source_follows_changes_and_keeps_last_good() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("quiver-replicas-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("replicas.json");
        let _ = std::fs::remove_file(&path);
        let mut rx = Box::new(FileReplicas {
            path: path.clone(),
            interval: Duration::from_millis(20),
        })
        .watch();
        // Not there yet: unknown, not "no replicas".
        assert_eq!(*rx.borrow_and_update(), None);
        std::fs::write(&path, r#"{"0": ["127.0.0.2:7000"]}"#)?;
        tokio::time::timeout(Duration::from_secs(5), rx.changed()).await??;
        let n = |rx: &watch::Receiver<Option<Replicas>>| rx.borrow().as_ref().map(|r| r.len());
        assert_eq!(
            rx.borrow().as_ref().map(|r| r[&0].clone()),
            Some(vec!["127.0.0.2:7000".to_string()])
        );
        std::fs::write(
            &path,
            r#"{"0": ["127.0.0.3:7000"], "1": ["127.0.0.4:7000"]}"#,
        )?;
        tokio::time::timeout(Duration::from_secs(5), rx.changed()).await??;
        assert_eq!(n(&rx), Some(2));
        // A broken file, then a missing one, change nothing.
        std::fs::write(&path, "{not json")?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(n(&rx), Some(2));
        std::fs::remove_file(&path)?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(n(&rx), Some(2));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
