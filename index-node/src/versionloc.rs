//! Flags naming one version in storage (shared by `train` and `build`).

use crate::storage::{Storage, check_name, version_prefix};

#[derive(clap::Args, Debug, Clone)]
pub struct VersionLoc {
    /// Storage root: file:///dir, a directory, or s3://bucket/prefix.
    #[arg(long, env = "QUIVER_STORAGE")]
    pub storage: String,
    #[arg(long, default_value = "default", env = "QUIVER_NAMESPACE")]
    pub namespace: String,
    #[arg(long, env = "QUIVER_INDEX")]
    pub index: String,
    #[arg(long, env = "QUIVER_VERSION")]
    pub version: String,
}

impl VersionLoc {
    pub fn open(&self) -> anyhow::Result<Storage> {
        check_name("--namespace", &self.namespace)?;
        check_name("--index", &self.index)?;
        check_name("--version", &self.version)?;
        Ok(Storage::open(&self.storage)?)
    }

    /// Path of a file of this version, relative to the storage root.
    pub fn file(&self, name: &str) -> String {
        format!(
            "{}/{name}",
            version_prefix(&self.namespace, &self.index, &self.version)
        )
    }

    /// Path of a file of this version, relative to the index prefix (as the manifest says).
    pub fn index_rel(&self, name: &str) -> String {
        format!("versions/{}/{name}", self.version)
    }
}
