//! Object storage: where index versions live.
//!
//! Layout (DESIGN.md): `<storage>/<namespace>/<index>/versions/<version>/{manifest.json,
//! centroids.qivf, lists.qivf, eval.fvecs, eval.ivecs}`. Files are immutable once written; the
//! manifest is written last, so a version without a manifest does not exist for readers.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage URI {uri:?}: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("{path}: not found in storage")]
    NotFound { path: String },
    #[error("{path}: {source}")]
    Store {
        path: String,
        #[source]
        source: object_store::Error,
    },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A storage root: an object store plus the key prefix every path is relative to.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    root: Path,
    uri: String,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({})", self.uri)
    }
}

/// How long one object-store request keeps retrying transient failures (connection refused,
/// 5xx, throttling) before it fails, in seconds; object_store's default is 180. A Job that
/// fails sooner is retried by the operator with its own back-off, so a storage outage costs
/// a failed attempt rather than a Job hanging for minutes. Read from the environment, so it
/// can sit in the storage Secret beside the credentials.
pub const RETRY_TIMEOUT_ENV: &str = "QUIVER_STORAGE_RETRY_TIMEOUT_SECS";

/// The retry policy for remote stores: object_store's, with the timeout of
/// [`RETRY_TIMEOUT_ENV`] when set.
fn retry_config(timeout_secs: Option<&str>) -> std::result::Result<RetryConfig, String> {
    let mut retry = RetryConfig::default();
    if let Some(v) = timeout_secs {
        let secs: f64 = v
            .trim()
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s <= 3600.0)
            .ok_or_else(|| {
                format!("{RETRY_TIMEOUT_ENV}={v:?} is not a number of seconds in 0..=3600")
            })?;
        retry.retry_timeout = Duration::from_secs_f64(secs);
        if secs == 0.0 {
            retry.max_retries = 0;
        }
    }
    Ok(retry)
}

impl Storage {
    /// Opens `file:///dir`, a plain directory path, `s3://bucket/prefix` (`AWS_*` environment
    /// variables), `gs://bucket/prefix` (`GOOGLE_*`) or `az://container/prefix` (`AZURE_*`,
    /// e.g. `AZURE_STORAGE_ACCOUNT_NAME` and `AZURE_STORAGE_ACCOUNT_KEY`).
    pub fn open(uri: &str) -> Result<Self> {
        let bad = |reason: &str| StorageError::BadUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = match uri.split_once("://") {
            Some((s, r)) => (s, r),
            None => ("file", uri),
        };
        match scheme {
            "file" => {
                if rest.is_empty() {
                    return Err(bad("empty directory"));
                }
                std::fs::create_dir_all(rest)
                    .map_err(|e| bad(&format!("cannot create directory: {e}")))?;
                let store = LocalFileSystem::new_with_prefix(rest)
                    .map_err(|e| bad(&e.to_string()))?
                    .with_automatic_cleanup(false);
                Ok(Self {
                    store: Arc::new(store),
                    root: Path::default(),
                    uri: uri.to_string(),
                })
            }
            "s3" | "gs" | "az" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad(if scheme == "az" {
                        "missing container"
                    } else {
                        "missing bucket"
                    }));
                }
                // Credentials, region, account and endpoint come from the environment
                // variables each service's own tools use.
                let retry = retry_config(std::env::var(RETRY_TIMEOUT_ENV).ok().as_deref())
                    .map_err(|m| bad(&m))?;
                let store: Arc<dyn ObjectStore> = match scheme {
                    "s3" => Arc::new(
                        AmazonS3Builder::from_env()
                            .with_bucket_name(bucket)
                            .with_retry(retry)
                            .build()
                            .map_err(|e| bad(&e.to_string()))?,
                    ),
                    "gs" => Arc::new(
                        GoogleCloudStorageBuilder::from_env()
                            .with_bucket_name(bucket)
                            .with_retry(retry)
                            .build()
                            .map_err(|e| bad(&e.to_string()))?,
                    ),
                    _ => Arc::new(
                        MicrosoftAzureBuilder::from_env()
                            .with_container_name(bucket)
                            .with_retry(retry)
                            .build()
                            .map_err(|e| bad(&e.to_string()))?,
                    ),
                };
                Ok(Self {
                    store,
                    root: Path::from(prefix.trim_matches('/')),
                    uri: uri.to_string(),
                })
            }
            other => Err(bad(&format!("unknown scheme {other:?}"))),
        }
    }

    fn path(&self, rel: &str) -> Path {
        let rel = rel.trim_matches('/');
        if self.root.as_ref().is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.root))
        }
    }

    fn err(&self, rel: &str, e: object_store::Error) -> StorageError {
        let path = format!("{}/{}", self.uri.trim_end_matches('/'), rel);
        match e {
            object_store::Error::NotFound { .. } => StorageError::NotFound { path },
            source => StorageError::Store { path, source },
        }
    }

    pub async fn put(&self, rel: &str, data: Bytes) -> Result<()> {
        self.store
            .put(&self.path(rel), PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|e| self.err(rel, e))
    }

    pub async fn get(&self, rel: &str) -> Result<Bytes> {
        let r = self
            .store
            .get(&self.path(rel))
            .await
            .map_err(|e| self.err(rel, e))?;
        r.bytes().await.map_err(|e| self.err(rel, e))
    }

    /// Whole-object size, for range planning and truncation checks.
    pub async fn size(&self, rel: &str) -> Result<u64> {
        self.store
            .head(&self.path(rel))
            .await
            .map(|m| m.size)
            .map_err(|e| self.err(rel, e))
    }

    pub async fn get_range(&self, rel: &str, range: Range<u64>) -> Result<Bytes> {
        self.store
            .get_range(&self.path(rel), range)
            .await
            .map_err(|e| self.err(rel, e))
    }

    /// Several ranges of one object; the store coalesces nearby ranges into fewer requests.
    pub async fn get_ranges(&self, rel: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.store
            .get_ranges(&self.path(rel), ranges)
            .await
            .map_err(|e| self.err(rel, e))
    }

    /// Names (relative to `rel`) of every object under the prefix `rel`, sorted.
    pub async fn list(&self, rel: &str) -> Result<Vec<String>> {
        use futures::TryStreamExt;
        let prefix = self.path(rel);
        let base = prefix.as_ref().to_string();
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.err(rel, e))?;
        let mut names: Vec<String> = metas
            .into_iter()
            .map(|m| {
                let full = m.location.as_ref().to_string();
                full.strip_prefix(&base)
                    .unwrap_or(&full)
                    .trim_start_matches('/')
                    .to_string()
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes one object; an object already gone is not an error (deletes are retried).
    pub async fn delete(&self, rel: &str) -> Result<()> {
        match self.store.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    pub async fn exists(&self, rel: &str) -> Result<bool> {
        match self.store.head(&self.path(rel)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(rel, e)),
        }
    }
}

/// Key prefix of one version, relative to the storage root (`quiver_api::layout`).
pub fn version_prefix(namespace: &str, index: &str, version: &str) -> String {
    quiver_api::layout::version_prefix(namespace, index, version)
}

/// Where one index's files are: the flags of the commands that act on them (`gc`, `purge`,
/// `remap`).
#[derive(clap::Args, Debug, Clone)]
pub struct IndexArgs {
    /// Storage root: file:///dir, a directory, or s3://bucket/prefix.
    #[arg(long, env = "QUIVER_STORAGE")]
    pub storage: String,
    #[arg(long, default_value = "default", env = "QUIVER_NAMESPACE")]
    pub namespace: String,
    #[arg(long, env = "QUIVER_INDEX")]
    pub index: String,
}

impl IndexArgs {
    /// Refuses a namespace or index that is not a DNS-1123 label, then opens the storage.
    pub fn open(&self) -> anyhow::Result<Storage> {
        check_name("--namespace", &self.namespace)?;
        check_name("--index", &self.index)?;
        Ok(Storage::open(&self.storage)?)
    }
}

/// Checks a namespace, index or version name: a DNS-1123 label (1-63 characters of
/// `[a-z0-9-]`, starting and ending with a letter or digit), the rule Kubernetes applies to the
/// same names. Such a name cannot escape or split the layout (`/`, `..`, empty).
pub fn check_name(field: &str, value: &str) -> anyhow::Result<()> {
    quiver_api::names::check_dns1123_label(field, value)?;
    Ok(())
}

/// Runs `f` on an empty file store in a fresh temporary directory (named for `name` and this
/// process), on a current-thread runtime; removes the directory afterwards.
#[cfg(test)]
pub fn with_temp_store<F, Fut>(name: &str, f: F)
where
    F: FnOnce(Storage, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = std::env::temp_dir().join(format!("quiver-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let uri = format!("file://{}", dir.display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = Storage::open(&uri).expect("open");
    rt.block_on(f(store, uri));
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_timeout_comes_from_the_environment_value_and_refuses_nonsense() {
        assert_eq!(
            retry_config(None).expect("default").retry_timeout,
            Duration::from_secs(180)
        );
        let short = retry_config(Some(" 2.5")).expect("2.5 s");
        assert_eq!(short.retry_timeout, Duration::from_millis(2500));
        assert!(short.max_retries > 0);
        assert_eq!(retry_config(Some("0")).expect("off").max_retries, 0);
        for bad in ["", "soon", "-1", "NaN", "1e9"] {
            let e = retry_config(Some(bad)).expect_err(bad);
            assert!(e.contains(RETRY_TIMEOUT_ENV), "{e}");
        }
    }

    fn open_err(uri: &str) -> String {
        match Storage::open(uri) {
            Ok(s) => panic!("{uri} opened as {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn storage_uris_are_checked() {
        for (uri, want) in [
            ("gs://", "missing bucket"),
            ("s3:///prefix", "missing bucket"),
            ("az://", "missing container"),
            ("ftp://host/x", "unknown scheme \"ftp\""),
            ("file://", "empty directory"),
        ] {
            let e = open_err(uri);
            assert!(e.contains(uri) && e.contains(want), "{uri}: {e}");
        }
        // Opening is lazy for cloud stores: no request until a read or write.
        let s = Storage::open("gs://quiver-test-bucket/indexes/a").expect("gs opens");
        assert_eq!(
            s.path("ns/v1/manifest.json").as_ref(),
            "indexes/a/ns/v1/manifest.json"
        );
    }

    #[test]
    fn names_follow_kubernetes() {
        for ok in ["default", "docs", "v1", "v2-7f3a9c2e", "0"] {
            assert!(check_name("--version", ok).is_ok(), "{ok}");
        }
        // Accepted before, refused by Kubernetes (and so here): upper case, '_', '.', 64+.
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "V1",
            "v_1",
            "v1.2",
            "-v",
            &"a".repeat(64),
        ] {
            let e = check_name("--version", bad).expect_err(bad).to_string();
            assert!(e.starts_with("--version: "), "{e}");
        }
    }

    /// The file names this crate writes are the ones `quiver_api::layout` (the operator, GC
    /// and docs) names.
    #[test]
    fn layout_matches_quiver_api() {
        use quiver_api::layout;
        assert_eq!(crate::manifest::MANIFEST, layout::MANIFEST);
        assert_eq!(crate::train::CENTROIDS, layout::CENTROIDS);
        assert_eq!(crate::train::TRAIN_INFO, layout::TRAIN_INFO);
        assert_eq!(crate::build::EVAL_QUERIES, layout::EVAL_QUERIES);
        assert_eq!(crate::build::EVAL_GT, layout::EVAL_GROUND_TRUTH);
        let loc = crate::versionloc::VersionLoc {
            storage: "file:///x".into(),
            namespace: "search".into(),
            index: "docs".into(),
            version: "v2-7f3a9c2e".into(),
        };
        let r =
            layout::VersionRef::new("file:///x", "search", "docs", "v2-7f3a9c2e").expect("valid");
        assert_eq!(loc.file(layout::MANIFEST), r.manifest());
        assert_eq!(
            loc.index_rel(layout::CENTROIDS),
            r.index_rel(layout::CENTROIDS)
        );
    }
}
