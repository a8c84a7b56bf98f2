//! Name rules: what Kubernetes accepts as a name or label value, the version names the operator
//! makes, and the names of every child object of a `VectorIndex`.
//!
//! Namespaces, index names and version names are also path segments in storage (see
//! [`crate::layout`]), so one rule serves both: a DNS-1123 label (1-63 characters of `[a-z0-9-]`,
//! starting and ending with a letter or digit). Such a name can never be `.`, `..`, or contain
//! `/`, so it cannot escape or split the storage layout.

use std::fmt;
use std::str::FromStr;

/// Longest DNS-1123 label (and label value) Kubernetes accepts.
pub const MAX_LABEL_LEN: usize = 63;

/// Longest name of a StatefulSet whose pods keep working: the controller writes the label
/// `controller-revision-hash: <statefulset>-<hash>` (up to 11 more characters) on every pod,
/// and a label value may have at most 63 characters.
pub const MAX_STATEFULSET_NAME_LEN: usize = 52;

/// Number of hexadecimal characters of the resource's UID in a version name: the UID's first
/// group, so `kubectl get vi docs -o jsonpath='{.metadata.uid}'` shows where it came from.
pub const SHORT_UID_LEN: usize = 8;

/// Largest version counter. Bounding it bounds the length of version names (and of the Job names
/// made from them); at one new version an hour it lasts over a century.
pub const MAX_VERSION_COUNTER: u32 = 999_999;

/// Longest version name [`VersionName`] makes: `v` + 6 digits + `-` + [`SHORT_UID_LEN`].
pub const MAX_VERSION_NAME_LEN: usize = 1 + 6 + 1 + SHORT_UID_LEN;

/// The longest suffix the operator appends to `<index>-<version>` (a finalize Job).
const LONGEST_VERSION_JOB_SUFFIX: &str = "-finalize";

/// Longest `VectorIndex` name: `<name>-<version>-finalize` must fit a label value (Jobs label
/// their pods with their own name) for the longest version name. With that bound every other
/// child name (`<name>-shard-<i>` for up to [`crate::MAX_SHARDS`] shards, `<name>-router`, ...)
/// fits as well.
pub const MAX_INDEX_NAME_LEN: usize =
    MAX_LABEL_LEN - 1 - MAX_VERSION_NAME_LEN - LONGEST_VERSION_JOB_SUFFIX.len();

/// A name that Kubernetes or the storage layout refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {value:?} {reason}")]
pub struct NameError {
    /// What was checked (a field path or a flag).
    pub field: String,
    /// The refused value.
    pub value: String,
    /// Why, in words.
    pub reason: String,
}

impl NameError {
    fn new(field: &str, value: &str, reason: impl Into<String>) -> Self {
        NameError {
            field: field.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Why `value` is not a DNS-1123 label, or `None` when it is one.
fn dns1123_label_problem(value: &str, max: usize) -> Option<String> {
    if value.is_empty() {
        return Some("is empty".into());
    }
    if value.len() > max {
        return Some(format!(
            "is {} characters long, at most {max} fit",
            value.len()
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Some(format!(
            "contains {c:?}; only lower-case letters, digits and '-' are allowed"
        ));
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Some("must start and end with a letter or digit".into());
    }
    None
}

/// Whether `value` is a DNS-1123 label: 1-63 characters of `[a-z0-9-]`, starting and ending
/// with a letter or digit (namespaces, most object names, label values of this project).
pub fn is_dns1123_label(value: &str) -> bool {
    dns1123_label_problem(value, MAX_LABEL_LEN).is_none()
}

/// Checks that `value` is a DNS-1123 label; the error names `field`.
pub fn check_dns1123_label(field: &str, value: &str) -> Result<(), NameError> {
    match dns1123_label_problem(value, MAX_LABEL_LEN) {
        None => Ok(()),
        Some(reason) => Err(NameError::new(
            field,
            value,
            format!("is not a DNS-1123 label: it {reason}"),
        )),
    }
}

/// Checks a `VectorIndex` name: a DNS-1035 label (a DNS-1123 label that starts with a letter,
/// because the index's client Service carries the same name) of at most
/// [`MAX_INDEX_NAME_LEN`] characters, so that every child name fits.
pub fn check_index_name(field: &str, value: &str) -> Result<(), NameError> {
    if let Some(reason) = dns1123_label_problem(value, MAX_INDEX_NAME_LEN) {
        return Err(NameError::new(
            field,
            value,
            format!(
                "is not a valid VectorIndex name: it {reason} \
                 (its Jobs are named <name>-<version>-finalize, which must fit 63 characters)"
            ),
        ));
    }
    if !value.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(NameError::new(
            field,
            value,
            "must start with a letter (the index's Service has the same name)",
        ));
    }
    Ok(())
}

/// A version name as the operator makes them: `v<counter>-<short uid>`, e.g. `v2-7f3a9c2e`.
///
/// The counter is what a human reads ("the second version"); the short UID is the first group
/// of the `VectorIndex`'s UID, so a version of a re-created resource with the same name never
/// collides with files an earlier one left behind (`deletionPolicy: Retain`). Version names the
/// operator did not make (a `pinnedVersion` typed by a user, versions written by
/// `index-node build` by hand) only need to be DNS-1123 labels; see [`check_dns1123_label`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionName {
    counter: u32,
    uid: String,
}

/// Why a string is not a [`VersionName`], or why one cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionNameError {
    /// Not of the form `v<counter>-<short uid>`.
    #[error("version name {0:?} is not of the form v<counter>-<short uid> (e.g. v2-7f3a9c2e)")]
    Format(String),
    /// The counter is 0 or above [`MAX_VERSION_COUNTER`].
    #[error("version counter {0} is out of range 1..={MAX_VERSION_COUNTER}")]
    Counter(u64),
    /// The UID has fewer than [`SHORT_UID_LEN`] hexadecimal digits.
    #[error("UID {0:?} has fewer than {SHORT_UID_LEN} hexadecimal digits")]
    Uid(String),
}

impl VersionName {
    /// The version numbered `counter` of the resource whose `metadata.uid` is `uid` (a UUID;
    /// its first [`SHORT_UID_LEN`] hex digits are kept, lower-cased).
    pub fn new(counter: u32, uid: &str) -> Result<Self, VersionNameError> {
        if counter == 0 || counter > MAX_VERSION_COUNTER {
            return Err(VersionNameError::Counter(u64::from(counter)));
        }
        let short: String = uid
            .chars()
            .filter(|c| *c != '-')
            .take(SHORT_UID_LEN)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if short.len() < SHORT_UID_LEN || !short.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(VersionNameError::Uid(uid.to_string()));
        }
        Ok(VersionName {
            counter,
            uid: short,
        })
    }

    /// Parses `v<counter>-<short uid>`, exactly as [`fmt::Display`] writes it.
    pub fn parse(s: &str) -> Result<Self, VersionNameError> {
        let bad = || VersionNameError::Format(s.to_string());
        let (counter, uid) = s
            .strip_prefix('v')
            .and_then(|r| r.split_once('-'))
            .ok_or_else(bad)?;
        let canonical_counter = !counter.is_empty()
            && counter.len() <= 6
            && counter.chars().all(|c| c.is_ascii_digit())
            && !counter.starts_with('0');
        let canonical_uid = uid.len() == SHORT_UID_LEN
            && uid
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        if !canonical_counter || !canonical_uid {
            return Err(bad());
        }
        let counter: u32 = counter.parse().map_err(|_| bad())?;
        Ok(VersionName {
            counter,
            uid: uid.to_string(),
        })
    }

    /// The human-readable counter (1 for the first version).
    pub fn counter(&self) -> u32 {
        self.counter
    }

    /// The short UID of the resource this version belongs to.
    pub fn short_uid(&self) -> &str {
        &self.uid
    }

    /// The next version of the same resource.
    pub fn next(&self) -> Result<Self, VersionNameError> {
        let counter = self.counter.saturating_add(1);
        if counter > MAX_VERSION_COUNTER {
            return Err(VersionNameError::Counter(u64::from(counter)));
        }
        Ok(VersionName {
            counter,
            uid: self.uid.clone(),
        })
    }
}

impl fmt::Display for VersionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}-{}", self.counter, self.uid)
    }
}

impl FromStr for VersionName {
    type Err = VersionNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VersionName::parse(s)
    }
}

/// The Service clients query (gRPC port [`crate::ports::QUERY_NAME`]): the index's own name.
pub fn query_service(index: &str) -> String {
    index.to_string()
}

/// The router Deployment.
pub fn router_deployment(index: &str) -> String {
    format!("{index}-router")
}

/// The StatefulSet (and its headless Service and PodDisruptionBudget) of shard `shard`.
pub fn shard_statefulset(index: &str, shard: u32) -> String {
    format!("{index}-shard-{shard}")
}

/// The train Job of a version.
pub fn train_job(index: &str, version: &str) -> String {
    format!("{index}-{version}-train")
}

/// The Job that writes a rebalanced version's manifest (`index-node remap`).
pub fn remap_job(index: &str, version: &str) -> String {
    format!("{index}-{version}-remap")
}

/// The Job that splits one list of another version (`index-node split`).
pub fn split_job(index: &str, version: &str) -> String {
    format!("{index}-{version}-split")
}

/// The (Indexed) build Job of a version.
pub fn build_job(index: &str, version: &str) -> String {
    format!("{index}-{version}-build")
}

/// The finalize Job of a version (merges build parts, writes the manifest).
pub fn finalize_job(index: &str, version: &str) -> String {
    format!("{index}-{version}{LONGEST_VERSION_JOB_SUFFIX}")
}

/// The `n`-th garbage-collection Job of an index.
pub fn gc_job(index: &str, n: u32) -> String {
    format!("{index}-gc-{n}")
}

/// The Job that deletes an index's files before the resource goes (`deletionPolicy: Delete`).
pub fn cleanup_job(index: &str) -> String {
    format!("{index}-cleanup")
}

/// The ServiceAccount (and Role, RoleBinding) of an index's node pods.
pub fn node_service_account(index: &str) -> String {
    format!("{index}-node")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1123_labels() {
        for ok in ["a", "v1", "docs", "v2-7f3a9c2e", "0abc", &"a".repeat(63)] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "..",
            ".",
            "a/b",
            "ü",
            &"a".repeat(64),
        ] {
            let e = check_dns1123_label("spec.x", bad).expect_err(bad);
            assert!(e.to_string().starts_with("spec.x: "), "{e}");
        }
        let e = check_dns1123_label("--version", "V_1").expect_err("upper case");
        assert_eq!(
            e.to_string(),
            "--version: \"V_1\" is not a DNS-1123 label: it contains 'V'; only lower-case \
             letters, digits and '-' are allowed"
        );
    }

    #[test]
    fn index_names() {
        assert_eq!(MAX_INDEX_NAME_LEN, 37);
        assert!(check_index_name("metadata.name", "docs").is_ok());
        assert!(check_index_name("metadata.name", &"a".repeat(37)).is_ok());
        let e = check_index_name("metadata.name", &"a".repeat(38)).expect_err("too long");
        assert!(e.to_string().contains("at most 37"), "{e}");
        let e = check_index_name("metadata.name", "1docs").expect_err("digit first");
        assert!(e.to_string().contains("start with a letter"), "{e}");
        // The longest name and the longest version make names that still fit.
        let name = "a".repeat(MAX_INDEX_NAME_LEN);
        let v = VersionName::new(MAX_VERSION_COUNTER, "ffffffff-0000").expect("version");
        assert_eq!(v.to_string().len(), MAX_VERSION_NAME_LEN);
        assert_eq!(finalize_job(&name, &v.to_string()).len(), MAX_LABEL_LEN);
        assert!(build_job(&name, &v.to_string()).len() <= MAX_LABEL_LEN);
        assert!(shard_statefulset(&name, crate::MAX_SHARDS - 1).len() <= MAX_STATEFULSET_NAME_LEN);
    }

    #[test]
    fn version_names_format_and_parse() {
        let v = VersionName::new(2, "7F3A9C2E-1b2c-4d5e-8f90-0123456789ab").expect("new");
        assert_eq!(v.to_string(), "v2-7f3a9c2e");
        assert_eq!(v.counter(), 2);
        assert_eq!(v.short_uid(), "7f3a9c2e");
        assert_eq!(VersionName::parse("v2-7f3a9c2e"), Ok(v.clone()));
        assert_eq!("v2-7f3a9c2e".parse::<VersionName>(), Ok(v.clone()));
        assert_eq!(v.next().map(|n| n.to_string()), Ok("v3-7f3a9c2e".into()));
        assert!(is_dns1123_label(&v.to_string()));
        for bad in [
            "",
            "v",
            "v2",
            "2-7f3a9c2e",
            "v02-7f3a9c2e",
            "v0x-7f3a9c2e",
            "v2-7f3a",
            "v2-7F3A9C2E",
            "v2-7f3a9c2g",
            "v2-7f3a9c2e-x",
            "v1234567-7f3a9c2e",
        ] {
            assert!(VersionName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            VersionName::new(0, "7f3a9c2e"),
            Err(VersionNameError::Counter(0))
        );
        assert!(VersionName::new(1, "7f3a").is_err());
        assert!(VersionName::new(1, "zzzzzzzz").is_err());
        let last = VersionName::new(MAX_VERSION_COUNTER, "7f3a9c2e").expect("last");
        assert!(last.next().is_err());
    }

    #[test]
    fn child_names() {
        assert_eq!(query_service("docs"), "docs");
        assert_eq!(router_deployment("docs"), "docs-router");
        assert_eq!(shard_statefulset("docs", 1), "docs-shard-1");
        assert_eq!(train_job("docs", "v2-7f3a9c2e"), "docs-v2-7f3a9c2e-train");
        assert_eq!(build_job("docs", "v2-7f3a9c2e"), "docs-v2-7f3a9c2e-build");
        assert_eq!(
            finalize_job("docs", "v2-7f3a9c2e"),
            "docs-v2-7f3a9c2e-finalize"
        );
        assert_eq!(gc_job("docs", 3), "docs-gc-3");
        assert_eq!(node_service_account("docs"), "docs-node");
    }
}
