//! The storage layout of index versions (DESIGN.md "Data flow"):
//!
//! ```text
//! <storage>/<namespace>/<index>/versions/<version>/
//!     manifest.json                  written last: a version without it does not exist
//!     centroids.qivf                 coarse centroids (+ SQ / PQ codebooks)
//!     train.json                     what training saw and how long it took
//!     lists.qivf | lists.<part>.qivf inverted lists (one file per build part)
//!     parts/part-<part>.json         what one build part left for the finalize step
//!     eval.fvecs, eval.ivecs         held-out queries and their exact top-k
//! ```
//!
//! Paths come in three forms: relative to the storage root (what an object store is asked
//! for), relative to the index prefix `<namespace>/<index>/` (what a manifest's file entries
//! say, so a rebalanced version can name another version's list files), and full URIs (for
//! messages and humans).

use crate::names::{NameError, check_dns1123_label};

/// `manifest.json`: parameters, spec hash, shard map, file list with checksums, build stats.
pub const MANIFEST: &str = "manifest.json";
/// Coarse centroids and the SQ8 / PQ codebooks (the engine's quantizer file).
pub const CENTROIDS: &str = "centroids.qivf";
/// Training summary written by `index-node train`.
pub const TRAIN_INFO: &str = "train.json";
/// Held-out evaluation queries (fvecs).
pub const EVAL_QUERIES: &str = "eval.fvecs";
/// Exact top-k ids of the evaluation queries (ivecs).
pub const EVAL_GROUND_TRUTH: &str = "eval.ivecs";
/// Directory of the build parts' hand-over files.
pub const PARTS_DIR: &str = "parts";
/// Directory of an index's versions, under the index prefix.
pub const VERSIONS_DIR: &str = "versions";

/// The list file of build part `part` of `parts` (`lists.qivf` when there is one part).
pub fn lists_file(part: u32, parts: u32) -> String {
    if parts <= 1 {
        "lists.qivf".into()
    } else {
        format!("lists.{part}.qivf")
    }
}

/// The hand-over file of build part `part`.
pub fn part_info_file(part: u32) -> String {
    format!("{PARTS_DIR}/part-{part}.json")
}

/// `<namespace>/<index>`: every version of an index lives under it (relative to the root).
pub fn index_prefix(namespace: &str, index: &str) -> String {
    format!("{namespace}/{index}")
}

/// `<namespace>/<index>/versions/<version>`, relative to the storage root.
pub fn version_prefix(namespace: &str, index: &str, version: &str) -> String {
    format!(
        "{}/{VERSIONS_DIR}/{version}",
        index_prefix(namespace, index)
    )
}

/// One version of one index in one storage root.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VersionRef {
    /// Storage root URI (`spec.storage.uri`), e.g. `s3://corp-quiver/indexes`.
    pub storage: String,
    /// Namespace of the `VectorIndex`.
    pub namespace: String,
    /// Name of the `VectorIndex`.
    pub index: String,
    /// Version name.
    pub version: String,
}

impl VersionRef {
    /// A reference whose namespace, index and version are DNS-1123 labels (so no path segment
    /// can be empty, `.`, `..` or hold a `/`).
    pub fn new(
        storage: impl Into<String>,
        namespace: impl Into<String>,
        index: impl Into<String>,
        version: impl Into<String>,
    ) -> Result<Self, NameError> {
        let r = VersionRef {
            storage: storage.into(),
            namespace: namespace.into(),
            index: index.into(),
            version: version.into(),
        };
        check_dns1123_label("namespace", &r.namespace)?;
        check_dns1123_label("index", &r.index)?;
        check_dns1123_label("version", &r.version)?;
        Ok(r)
    }

    /// `<namespace>/<index>`, relative to the storage root.
    pub fn index_prefix(&self) -> String {
        index_prefix(&self.namespace, &self.index)
    }

    /// `<namespace>/<index>/versions/<version>`, relative to the storage root.
    pub fn prefix(&self) -> String {
        version_prefix(&self.namespace, &self.index, &self.version)
    }

    /// A file of this version, relative to the storage root.
    pub fn path(&self, file: &str) -> String {
        format!("{}/{file}", self.prefix())
    }

    /// A file of this version, relative to the index prefix (the form of a manifest's file
    /// entries): `versions/<version>/<file>`.
    pub fn index_rel(&self, file: &str) -> String {
        format!("{VERSIONS_DIR}/{}/{file}", self.version)
    }

    /// A file of this version as a full URI under the storage root.
    pub fn uri(&self, file: &str) -> String {
        format!("{}/{}", self.storage.trim_end_matches('/'), self.path(file))
    }

    /// `manifest.json` (relative to the root).
    pub fn manifest(&self) -> String {
        self.path(MANIFEST)
    }

    /// `centroids.qivf` (relative to the root).
    pub fn centroids(&self) -> String {
        self.path(CENTROIDS)
    }

    /// `train.json` (relative to the root).
    pub fn train_info(&self) -> String {
        self.path(TRAIN_INFO)
    }

    /// The list file of build part `part` of `parts` (relative to the root).
    pub fn lists(&self, part: u32, parts: u32) -> String {
        self.path(&lists_file(part, parts))
    }

    /// The hand-over file of build part `part` (relative to the root).
    pub fn part_info(&self, part: u32) -> String {
        self.path(&part_info_file(part))
    }

    /// `eval.fvecs` (relative to the root).
    pub fn eval_queries(&self) -> String {
        self.path(EVAL_QUERIES)
    }

    /// `eval.ivecs` (relative to the root).
    pub fn eval_ground_truth(&self) -> String {
        self.path(EVAL_GROUND_TRUTH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_of_a_version() {
        let v = VersionRef::new("s3://corp-quiver/indexes/", "search", "docs", "v2-7f3a9c2e")
            .expect("valid");
        let p = "search/docs/versions/v2-7f3a9c2e";
        assert_eq!(v.index_prefix(), "search/docs");
        assert_eq!(v.prefix(), p);
        assert_eq!(v.manifest(), format!("{p}/manifest.json"));
        assert_eq!(v.centroids(), format!("{p}/centroids.qivf"));
        assert_eq!(v.train_info(), format!("{p}/train.json"));
        assert_eq!(v.lists(0, 1), format!("{p}/lists.qivf"));
        assert_eq!(v.lists(3, 4), format!("{p}/lists.3.qivf"));
        assert_eq!(v.part_info(3), format!("{p}/parts/part-3.json"));
        assert_eq!(v.eval_queries(), format!("{p}/eval.fvecs"));
        assert_eq!(v.eval_ground_truth(), format!("{p}/eval.ivecs"));
        assert_eq!(
            v.index_rel(CENTROIDS),
            "versions/v2-7f3a9c2e/centroids.qivf"
        );
        assert_eq!(
            v.uri(MANIFEST),
            format!("s3://corp-quiver/indexes/{p}/manifest.json")
        );
    }

    #[test]
    fn path_segments_must_be_labels() {
        for (ns, index, version, field) in [
            ("..", "docs", "v1", "namespace"),
            ("search", "a/b", "v1", "index"),
            ("search", "docs", "", "version"),
            ("search", "docs", "V1", "version"),
        ] {
            let e = VersionRef::new("file:///x", ns, index, version).expect_err(field);
            assert_eq!(e.field, field);
        }
    }
}
