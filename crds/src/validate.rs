//! `validate()`: every rule of a `VectorIndex`, in Rust, for the operator to report as a
//! condition and an Event instead of retrying.
//!
//! It checks what the CRD schema and its CEL rules check at admission (so objects that reached
//! the API server some other way, e.g. before a CRD upgrade, are still caught) plus what no
//! schema can say: URIs that parse, label syntax, version-name syntax. Each message starts with
//! the field path, e.g. `spec.index.quantizer.m: 7 does not divide spec.dimension 384`.

use std::fmt;

use crate::names::{self, VersionName};
use crate::schedule::{self, Schedule};
use crate::v1alpha1::{
    MAX_DIMENSION, MAX_NLIST, MAX_SHARDS, PQ_MIN_TRAINING, QuantizerKind, VectorIndexSpec,
};

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Field path, e.g. `spec.index.quantizer.m`.
    pub field: String,
    /// What is wrong, in words.
    pub message: String,
}

/// The largest vector id: the evaluation ground truth (`.ivecs`) stores ids as i32.
const MAX_ID: u64 = i32::MAX as u64;

/// Every broken rule of one resource (at least one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    /// The broken rules.
    pub fn iter(&self) -> std::slice::Iter<'_, ValidationError> {
        self.0.iter()
    }

    /// Whether some error is about `field`.
    pub fn has_field(&self, field: &str) -> bool {
        self.0.iter().any(|e| e.field == field)
    }
}

/// The URI schemes of storage roots and sources (object_store's local, S3, GCS, Azure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriScheme {
    /// `file:///absolute/path`.
    File,
    /// `s3://bucket/key`.
    S3,
    /// `gs://bucket/key`.
    Gs,
    /// `az://container/key`.
    Az,
}

/// A parsed `scheme://bucket/key` (or `file:///path`) URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectUri {
    /// The scheme.
    pub scheme: UriScheme,
    /// Bucket or container; empty for `file`.
    pub bucket: String,
    /// Key prefix (object stores) or absolute path (`file`), without a leading `/` for object
    /// stores; may end with `/`.
    pub key: String,
}

/// Parses a storage or source URI: scheme `file`, `s3`, `gs` or `az`; a bucket of
/// `[a-z0-9._-]` starting and ending with a letter or digit; `file` paths absolute; no
/// whitespace, control characters, `?`, `#`, empty, `.` or `..` path segments.
pub fn parse_uri(uri: &str) -> Result<ObjectUri, String> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| format!("{uri:?} has no scheme; use file://, s3://, gs:// or az://"))?;
    let scheme = match scheme {
        "file" => UriScheme::File,
        "s3" => UriScheme::S3,
        "gs" => UriScheme::Gs,
        "az" => UriScheme::Az,
        other => {
            return Err(format!(
                "{uri:?}: scheme {other:?} is not one of file, s3, gs, az"
            ));
        }
    };
    if let Some(c) = rest
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '\\'))
    {
        return Err(format!("{uri:?} contains {c:?}"));
    }
    let (bucket, key) = match scheme {
        UriScheme::File => {
            if !rest.starts_with('/') {
                return Err(format!(
                    "{uri:?}: a file URI needs an absolute path (file:///dir)"
                ));
            }
            (String::new(), rest.to_string())
        }
        _ => {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            let what = if scheme == UriScheme::Az {
                "container"
            } else {
                "bucket"
            };
            if bucket.is_empty() {
                return Err(format!("{uri:?} names no {what}"));
            }
            let chars_ok = bucket.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
            });
            let ends_ok = bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
                && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !chars_ok || !ends_ok {
                return Err(format!(
                    "{uri:?}: {what} {bucket:?} must be lower-case letters, digits, '.', '-' or '_', \
                     starting and ending with a letter or digit"
                ));
            }
            (bucket.to_string(), key.to_string())
        }
    };
    let inner = key.trim_start_matches('/');
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    if !inner.is_empty()
        && inner
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(format!("{uri:?} has an empty, '.' or '..' path segment"));
    }
    Ok(ObjectUri {
        scheme,
        bucket,
        key: if scheme == UriScheme::File {
            key
        } else {
            key.trim_start_matches('/').to_string()
        },
    })
}

/// Whether `value` is a DNS-1123 subdomain (Secret names): at most 253 characters, dot-separated
/// DNS-1123 labels.
fn is_dns1123_subdomain(value: &str) -> bool {
    !value.is_empty() && value.len() <= 253 && value.split('.').all(names::is_dns1123_label)
}

/// Why `key` is not a label key (`[prefix/]name`), or `None`.
fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !is_dns1123_subdomain(p)
    {
        return Some(format!("prefix {p:?} is not a DNS subdomain"));
    }
    if name.is_empty() {
        return Some("has an empty name".into());
    }
    label_value_problem(name)
}

/// Why `value` is not a label value (empty, or up to 63 characters of `[A-Za-z0-9._-]`
/// starting and ending with a letter or digit), or `None`.
fn label_value_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    if value.len() > names::MAX_LABEL_LEN {
        return Some(format!(
            "is longer than {} characters",
            names::MAX_LABEL_LEN
        ));
    }
    let chars_ok = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ends_ok = value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !chars_ok || !ends_ok {
        return Some(
            "must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
                .into(),
        );
    }
    None
}

struct Errors(Vec<ValidationError>);

impl Errors {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(ValidationError {
            field: field.to_string(),
            message: message.into(),
        });
    }

    fn range<T: PartialOrd + fmt::Display>(&mut self, field: &str, value: T, min: T, max: T) {
        if value < min || value > max {
            self.add(field, format!("{value} is out of range {min}..={max}"));
        }
    }
}

/// Checks a `VectorIndex` called `name` (its `metadata.name`): every rule of the CRD schema and
/// its CEL rules, plus those no schema expresses. All broken rules are returned, not just the
/// first.
pub fn validate(name: &str, spec: &VectorIndexSpec) -> Result<(), ValidationErrors> {
    let mut e = Errors(Vec::new());

    if let Err(n) = names::check_index_name("metadata.name", name) {
        e.add("metadata.name", format!("{:?} {}", n.value, n.reason));
    }

    e.range("spec.dimension", spec.dimension, 1, MAX_DIMENSION);

    let index = &spec.index;
    e.range("spec.index.nlist", index.nlist, 1, MAX_NLIST);
    if let Some(nprobe) = index.nprobe {
        if nprobe == 0 {
            e.add("spec.index.nprobe", "must be at least 1");
        } else if nprobe > index.nlist {
            e.add(
                "spec.index.nprobe",
                format!(
                    "{nprobe} exceeds spec.index.nlist {} (a query cannot probe more lists than there are)",
                    index.nlist
                ),
            );
        }
    }

    let q = &index.quantizer;
    match (q.kind, q.m) {
        (QuantizerKind::Pq, None) => e.add("spec.index.quantizer.m", "is required when kind is pq"),
        (QuantizerKind::Pq, Some(0)) => e.add("spec.index.quantizer.m", "must be at least 1"),
        (QuantizerKind::Pq, Some(m)) => {
            if spec.dimension > 0 && !spec.dimension.is_multiple_of(m) {
                e.add(
                    "spec.index.quantizer.m",
                    format!("{m} does not divide spec.dimension {}", spec.dimension),
                );
            }
        }
        (kind, Some(m)) => e.add(
            "spec.index.quantizer.m",
            format!(
                "{m} is set, but m is only valid with kind pq (kind is {})",
                kind.as_str()
            ),
        ),
        (_, None) => {}
    }
    if q.rerank && q.kind == QuantizerKind::Flat {
        e.add(
            "spec.index.quantizer.rerank",
            "needs kind sq8 or pq (flat entries are exact already)",
        );
    }

    let t = &index.training;
    if let Some(sample) = t.sample_size {
        if sample < u64::from(index.nlist) {
            e.add(
                "spec.index.training.sampleSize",
                format!(
                    "{sample} is less than spec.index.nlist {} (k-means needs a vector per list)",
                    index.nlist
                ),
            );
        }
        if q.kind == QuantizerKind::Pq && sample < PQ_MIN_TRAINING {
            e.add(
                "spec.index.training.sampleSize",
                format!(
                    "{sample} is less than {PQ_MIN_TRAINING}, the fewest a pq codebook trains on"
                ),
            );
        }
        e.range("spec.index.training.sampleSize", sample, 1, 1_000_000_000);
    }
    e.range("spec.index.training.iterations", t.iterations, 1, 1000);
    if !t.balance.is_finite() || !(0.0..=100.0).contains(&t.balance) {
        e.add(
            "spec.index.training.balance",
            format!("{} is out of range 0..=100", t.balance),
        );
    }

    let s = &spec.source;
    match (&s.uri, &s.synthetic) {
        (Some(_), Some(_)) => e.add(
            "spec.source",
            "both uri and synthetic are set; set exactly one",
        ),
        (None, None) => e.add("spec.source", "set exactly one of uri and synthetic"),
        _ => {}
    }
    if let Some(uri) = &s.uri {
        match parse_uri(uri) {
            Err(m) => e.add("spec.source.uri", m),
            Ok(u) => {
                let lower = u.key.to_ascii_lowercase();
                let known = [".fvecs", ".bvecs", ".npy"]
                    .iter()
                    .any(|ext| lower.ends_with(ext));
                if !known && !u.key.ends_with('/') && !u.key.is_empty() {
                    e.add(
                        "spec.source.uri",
                        format!(
                            "{uri:?} is neither a .fvecs, .bvecs or .npy file nor a directory ending in '/'"
                        ),
                    );
                }
            }
        }
    }
    e.range("spec.source.idOffset", s.id_offset, 0, MAX_ID);
    if let Some(syn) = &s.synthetic
        && syn.count.saturating_add(s.id_offset) > MAX_ID + 1
    {
        e.add(
            "spec.source.idOffset",
            format!(
                "{} plus spec.source.synthetic.count {} passes the largest id 2^31-1",
                s.id_offset, syn.count
            ),
        );
    }
    if let Some(syn) = &s.synthetic {
        e.range("spec.source.synthetic.count", syn.count, 1, 1_000_000_000);
        if syn.count < u64::from(index.nlist) {
            e.add(
                "spec.source.synthetic.count",
                format!(
                    "{} is less than spec.index.nlist {} (k-means needs a vector per list)",
                    syn.count, index.nlist
                ),
            );
        }
        let eval = 2 * u64::from(spec.rollout.eval_queries);
        if syn.count < eval {
            e.add(
                "spec.source.synthetic.count",
                format!(
                    "{} is less than twice spec.rollout.evalQueries {} (the build holds out at most half the vectors for evaluation)",
                    syn.count, spec.rollout.eval_queries
                ),
            );
        }
    }

    let st = &spec.storage;
    if let Err(m) = parse_uri(&st.uri) {
        e.add("spec.storage.uri", m);
    }
    if let Some(secret) = &st.secret_ref
        && !is_dns1123_subdomain(&secret.name)
    {
        e.add(
            "spec.storage.secretRef.name",
            format!(
                "{:?} is not a valid Secret name (a DNS-1123 subdomain)",
                secret.name
            ),
        );
    }
    e.range("spec.storage.retainVersions", st.retain_versions, 1, 100);

    e.range("spec.shards", spec.shards, 1, MAX_SHARDS);
    e.range("spec.replicas", spec.replicas, 1, 100);
    e.range("spec.router.replicas", spec.router.replicas, 1, 100);
    e.range("spec.router.maxK", spec.router.max_k, 1, 10_000);
    e.range("spec.build.parts", spec.build.parts, 1, 1000);

    let r = &spec.rollout;
    if !r.min_recall.is_finite() || !(0.0..=1.0).contains(&r.min_recall) {
        e.add(
            "spec.rollout.minRecall",
            format!("{} is out of range 0..=1", r.min_recall),
        );
    }
    e.range("spec.rollout.evalQueries", r.eval_queries, 1, 100_000);
    e.range("spec.rollout.evalK", r.eval_k, 1, 10_000);
    if r.eval_k > spec.router.max_k {
        e.add(
            "spec.rollout.evalK",
            format!(
                "{} exceeds spec.router.maxK {} (the gate queries through a router)",
                r.eval_k, spec.router.max_k
            ),
        );
    }

    if spec.rebalance.max_bytes_per_step < 1 << 20 {
        e.add(
            "spec.rebalance.maxBytesPerStep",
            format!(
                "{} is below 1 MiB (1048576)",
                spec.rebalance.max_bytes_per_step
            ),
        );
    }
    if let Some(max) = spec.rebalance.max_replicas_per_shard {
        e.range("spec.rebalance.maxReplicasPerShard", max, 1, 100);
        if max < spec.replicas {
            e.add(
                "spec.rebalance.maxReplicasPerShard",
                format!("{max} is below spec.replicas {}", spec.replicas),
            );
        }
    }

    if let Some(rt) = &spec.retrain {
        // What a CronJob accepts (schedule::Schedule::parse), each field on its own.
        match rt.schedule.as_deref() {
            Some(sc) if sc.trim().is_empty() => e.add("spec.retrain.schedule", "is empty"),
            Some(sc) => {
                if let Err(err) = Schedule::parse(sc, None) {
                    e.add("spec.retrain.schedule", err.to_string());
                }
            }
            None => {}
        }
        if let Some(d) = &rt.drift
            && !(d.threshold > 0.0 && d.threshold <= 1.0)
        {
            e.add(
                "spec.retrain.drift.threshold",
                format!("{} is not in (0, 1]", d.threshold),
            );
        }
        match rt.time_zone.as_deref() {
            Some(z) if z.trim().is_empty() => {
                e.add("spec.retrain.timeZone", "is empty; leave it out for UTC");
            }
            Some(z) => {
                if let Err(err) = schedule::parse_time_zone(z) {
                    e.add("spec.retrain.timeZone", err.to_string());
                }
            }
            None => {}
        }
    }

    if let Some(pinned) = spec.pinned_version.as_deref().filter(|p| !p.is_empty())
        && let Err(err) = VersionName::parse(pinned)
    {
        e.add("spec.pinnedVersion", err.to_string());
    }

    let pods = &spec.pods;
    if let Some(image) = &pods.image
        && (image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        e.add(
            "spec.pods.image",
            format!("{image:?} is not an image reference"),
        );
    }
    for (k, v) in &pods.node_selector {
        if let Some(p) = label_key_problem(k) {
            e.add("spec.pods.nodeSelector", format!("key {k:?} {p}"));
        }
        if let Some(p) = label_value_problem(v) {
            e.add(
                "spec.pods.nodeSelector",
                format!("value {v:?} of {k:?} {p}"),
            );
        }
    }

    if e.0.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(e.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1alpha1::*;

    /// A valid spec: the DESIGN.md example.
    pub(crate) fn example() -> VectorIndexSpec {
        VectorIndexSpec {
            dimension: 384,
            metric: Metric::Cosine,
            index: IndexSpec {
                nlist: 1024,
                quantizer: QuantizerSpec {
                    kind: QuantizerKind::Sq8,
                    m: None,
                    rerank: false,
                },
                training: TrainingSpec {
                    sample_size: Some(262_144),
                    iterations: 25,
                    balance: 0.0,
                    seed: 7,
                },
                nprobe: Some(16),
            },
            source: SourceSpec {
                uri: Some("s3://corp-vectors/docs/vectors.npy".into()),
                synthetic: None,
                revision: Some("2026-12-01".into()),
                id_offset: 0,
            },
            storage: StorageSpec {
                uri: "s3://corp-quiver/indexes".into(),
                secret_ref: Some(SecretRef {
                    name: "quiver-s3".into(),
                }),
                retain_versions: 2,
                deletion_policy: DeletionPolicy::Retain,
            },
            shards: 2,
            replicas: 2,
            router: RouterSpec {
                replicas: 2,
                max_k: 1000,
            },
            build: BuildSpec { parts: 4 },
            rollout: RolloutSpec {
                min_recall: 0.9,
                eval_queries: 500,
                eval_k: 10,
            },
            retrain: Some(RetrainSpec {
                schedule: Some("0 3 * * 0".into()),
                ..RetrainSpec::default()
            }),
            rebalance: RebalanceSpec::default(),
            pinned_version: None,
            pods: PodsSpec::default(),
        }
    }

    /// The one error `spec` has, as text.
    fn only_error(spec: &VectorIndexSpec) -> String {
        only_error_named("docs", spec)
    }

    fn only_error_named(name: &str, spec: &VectorIndexSpec) -> String {
        match validate(name, spec) {
            Ok(()) => panic!("accepted: {spec:?}"),
            Err(e) if e.0.len() == 1 => e.to_string(),
            Err(e) => panic!("more than one error: {e}"),
        }
    }

    #[test]
    fn the_example_is_valid() {
        assert_eq!(validate("docs", &example()), Ok(()));
        assert_eq!(example().validate("docs"), Ok(()));
    }

    #[test]
    fn errors_are_all_reported_and_name_their_field() {
        let mut s = example();
        s.dimension = 0;
        s.shards = 0;
        let e = validate("Docs", &s).expect_err("invalid");
        assert!(e.has_field("metadata.name"), "{e}");
        assert!(e.has_field("spec.dimension"), "{e}");
        assert!(e.has_field("spec.shards"), "{e}");
        assert!(e.iter().all(|x| x.to_string().starts_with(&x.field)), "{e}");
        assert!(e.to_string().contains("; "), "{e}");
    }

    #[test]
    fn rule_hot_shard_replicas() {
        let mut s = example();
        s.replicas = 2;
        s.rebalance.max_replicas_per_shard = Some(1);
        let e = only_error(&s);
        assert_eq!(
            e,
            "spec.rebalance.maxReplicasPerShard: 1 is below spec.replicas 2"
        );
        s.rebalance.max_replicas_per_shard = Some(101);
        let e = only_error(&s);
        assert!(e.contains("101 is out of range 1..=100"), "{e}");
        s.rebalance.max_replicas_per_shard = Some(4);
        assert_eq!(validate("docs", &s), Ok(()));
    }

    #[test]
    fn rule_index_name() {
        let e = only_error_named("1docs", &example());
        assert!(
            e.starts_with("metadata.name: \"1docs\" must start with a letter"),
            "{e}"
        );
        let e = only_error_named(&"a".repeat(38), &example());
        assert!(e.contains("at most 37"), "{e}");
        let e = only_error_named("docs_v2", &example());
        assert!(e.contains("'_'"), "{e}");
    }

    #[test]
    fn rule_plain_ranges() {
        type Set = fn(&mut VectorIndexSpec);
        let cases: [(Set, &str); 14] = [
            (
                |s| s.dimension = 4097,
                "spec.dimension: 4097 is out of range 1..=4096",
            ),
            (
                |s| {
                    s.index.nlist = 0;
                    s.index.nprobe = None;
                },
                "spec.index.nlist: 0 is out of range",
            ),
            (
                |s| s.index.training.iterations = 0,
                "spec.index.training.iterations: 0 is out of range",
            ),
            (
                |s| s.index.training.balance = -1.0,
                "spec.index.training.balance: -1 is out of range",
            ),
            (
                |s| s.index.training.balance = f64::NAN,
                "spec.index.training.balance: NaN",
            ),
            (
                |s| s.storage.retain_versions = 0,
                "spec.storage.retainVersions: 0",
            ),
            (
                |s| s.shards = 257,
                "spec.shards: 257 is out of range 1..=256",
            ),
            (|s| s.replicas = 0, "spec.replicas: 0"),
            (|s| s.router.replicas = 0, "spec.router.replicas: 0"),
            (|s| s.router.max_k = 10_001, "spec.router.maxK: 10001"),
            (|s| s.build.parts = 0, "spec.build.parts: 0"),
            (
                |s| s.rollout.min_recall = 1.5,
                "spec.rollout.minRecall: 1.5 is out of range 0..=1",
            ),
            (
                |s| s.rollout.eval_queries = 0,
                "spec.rollout.evalQueries: 0",
            ),
            (|s| s.rollout.eval_k = 0, "spec.rollout.evalK: 0"),
        ];
        for (set, want) in cases {
            let mut s = example();
            set(&mut s);
            let e = only_error(&s);
            assert!(e.starts_with(want), "{e} (wanted {want})");
        }
    }

    #[test]
    fn rule_nprobe_within_nlist() {
        let mut s = example();
        s.index.nprobe = Some(2048);
        let e = only_error(&s);
        assert!(
            e.starts_with("spec.index.nprobe: 2048 exceeds spec.index.nlist 1024"),
            "{e}"
        );
        s.index.nprobe = Some(0);
        assert_eq!(only_error(&s), "spec.index.nprobe: must be at least 1");
        s.index.nprobe = None;
        s.index.nlist = 8;
        s.index.training.sample_size = None;
        assert_eq!(validate("docs", &s), Ok(()));
        assert_eq!(s.index.effective_nprobe(), 8);
    }

    #[test]
    fn rule_pq_m_required() {
        let mut s = example();
        s.index.quantizer.kind = QuantizerKind::Pq;
        assert_eq!(
            only_error(&s),
            "spec.index.quantizer.m: is required when kind is pq"
        );
    }

    #[test]
    fn rule_pq_m_divides_dimension() {
        let mut s = example();
        s.index.quantizer.kind = QuantizerKind::Pq;
        s.index.quantizer.m = Some(7);
        assert_eq!(
            only_error(&s),
            "spec.index.quantizer.m: 7 does not divide spec.dimension 384"
        );
        s.index.quantizer.m = Some(48);
        assert_eq!(validate("docs", &s), Ok(()));
        assert_eq!(s.index.quantizer.engine_name(), "pq48");
    }

    #[test]
    fn rule_m_only_with_pq() {
        let mut s = example();
        s.index.quantizer.m = Some(16);
        let e = only_error(&s);
        assert!(
            e.starts_with("spec.index.quantizer.m: 16 is set, but m is only valid with kind pq"),
            "{e}"
        );
    }

    #[test]
    fn rule_rerank_needs_a_code() {
        let mut s = example();
        s.index.quantizer.rerank = true;
        assert_eq!(validate("docs", &s), Ok(()));
        s.index.quantizer.kind = QuantizerKind::Flat;
        let e = only_error(&s);
        assert!(
            e.starts_with("spec.index.quantizer.rerank: needs kind sq8 or pq"),
            "{e}"
        );
    }

    #[test]
    fn rule_sample_size_covers_the_lists() {
        let mut s = example();
        s.index.training.sample_size = Some(1000);
        let e = only_error(&s);
        assert!(
            e.starts_with(
                "spec.index.training.sampleSize: 1000 is less than spec.index.nlist 1024"
            ),
            "{e}"
        );
    }

    #[test]
    fn rule_pq_sample_size() {
        let mut s = example();
        s.index.nlist = 64;
        s.index.nprobe = None;
        s.index.quantizer.kind = QuantizerKind::Pq;
        s.index.quantizer.m = Some(8);
        s.index.training.sample_size = Some(100);
        let e = only_error(&s);
        assert!(
            e.starts_with("spec.index.training.sampleSize: 100 is less than 256"),
            "{e}"
        );
    }

    #[test]
    fn rule_id_offset_keeps_ids_in_31_bits() {
        let mut s = example();
        s.source.id_offset = 1 << 31;
        assert!(
            only_error(&s).starts_with("spec.source.idOffset: 2147483648 is out of range"),
            "{}",
            only_error(&s)
        );
        s.source.uri = None;
        s.source.synthetic = Some(SyntheticSource {
            count: 10_000,
            seed: 1,
        });
        s.source.id_offset = (1 << 31) - 10_000;
        assert!(validate("x", &s).is_ok());
        s.source.id_offset += 1;
        assert_eq!(
            only_error(&s),
            "spec.source.idOffset: 2147473649 plus spec.source.synthetic.count 10000 passes the largest id 2^31-1"
        );
    }

    #[test]
    fn rule_exactly_one_source() {
        let mut s = example();
        s.source.synthetic = Some(SyntheticSource {
            count: 10_000,
            seed: 1,
        });
        assert_eq!(
            only_error(&s),
            "spec.source: both uri and synthetic are set; set exactly one"
        );
        s.source.uri = None;
        assert_eq!(validate("docs", &s), Ok(()));
        s.source.synthetic = None;
        assert_eq!(
            only_error(&s),
            "spec.source: set exactly one of uri and synthetic"
        );
    }

    #[test]
    fn rule_source_uri_parses() {
        for (uri, want) in [
            (
                "http://x/y.npy",
                "scheme \"http\" is not one of file, s3, gs, az",
            ),
            ("vectors.npy", "has no scheme"),
            ("s3:///docs/v.npy", "names no bucket"),
            ("az:///v.npy", "names no container"),
            ("file://data/v.npy", "needs an absolute path"),
            ("s3://Corp/v.npy", "bucket \"Corp\" must be lower-case"),
            ("s3://corp/a/../v.npy", "'..' path segment"),
            ("s3://corp/a//v.npy", "empty, '.' or '..' path segment"),
            ("s3://corp/v 1.npy", "contains ' '"),
            (
                "gs://corp/v.csv",
                "neither a .fvecs, .bvecs or .npy file nor a directory",
            ),
        ] {
            let mut s = example();
            s.source.uri = Some(uri.into());
            let e = only_error(&s);
            assert!(
                e.starts_with("spec.source.uri: ") && e.contains(want),
                "{uri}: {e}"
            );
        }
        for ok in [
            "file:///data/base.fvecs",
            "gs://corp/emb/",
            "az://container/x/Y.NPY",
            "s3://corp.vectors-1/docs/part.bvecs",
        ] {
            let mut s = example();
            s.source.uri = Some(ok.into());
            assert_eq!(validate("docs", &s), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rule_synthetic_count_covers_the_lists() {
        let mut s = example();
        s.source.uri = None;
        s.source.synthetic = Some(SyntheticSource {
            count: 1000,
            seed: 1,
        });
        let e = only_error(&s);
        assert!(
            e.starts_with("spec.source.synthetic.count: 1000 is less than spec.index.nlist 1024"),
            "{e}"
        );
    }

    #[test]
    fn rule_synthetic_count_holds_the_eval_queries() {
        let mut s = example();
        s.index.nlist = 16;
        s.index.training.sample_size = None;
        s.source.uri = None;
        s.source.synthetic = Some(SyntheticSource {
            count: 900,
            seed: 1,
        });
        let e = only_error(&s);
        assert!(
            e.starts_with(
                "spec.source.synthetic.count: 900 is less than twice spec.rollout.evalQueries 500"
            ),
            "{e}"
        );
    }

    #[test]
    fn rule_storage_uri_parses() {
        let mut s = example();
        s.storage.uri = "ftp://host/x".into();
        let e = only_error(&s);
        assert!(
            e.starts_with("spec.storage.uri: ") && e.contains("\"ftp\""),
            "{e}"
        );
        for ok in [
            "file:///var/lib/quiver",
            "s3://corp-quiver",
            "az://c/indexes/",
        ] {
            s.storage.uri = ok.into();
            assert_eq!(validate("docs", &s), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rule_secret_name() {
        let mut s = example();
        s.storage.secret_ref = Some(SecretRef {
            name: "Quiver_S3".into(),
        });
        let e = only_error(&s);
        assert!(
            e.starts_with("spec.storage.secretRef.name: \"Quiver_S3\" is not a valid Secret name"),
            "{e}"
        );
    }

    #[test]
    fn rule_eval_k_within_max_k() {
        let mut s = example();
        s.rollout.eval_k = 100;
        s.router.max_k = 50;
        assert_eq!(
            only_error(&s),
            "spec.rollout.evalK: 100 exceeds spec.router.maxK 50 (the gate queries through a router)"
        );
    }

    #[test]
    fn rule_retrain_fields_not_blank() {
        let mut s = example();
        s.retrain = Some(RetrainSpec {
            schedule: Some(" ".into()),
            ..RetrainSpec::default()
        });
        assert_eq!(only_error(&s), "spec.retrain.schedule: is empty");
        s.retrain = Some(RetrainSpec {
            schedule: Some("@daily".into()),
            time_zone: Some(String::new()),
            drift: None,
        });
        assert!(only_error(&s).starts_with("spec.retrain.timeZone: is empty"));
    }

    #[test]
    fn rule_retrain_schedule_and_time_zone_as_a_cronjob() {
        let mut s = example();
        let retrain = |schedule: &str, time_zone: Option<&str>| {
            Some(RetrainSpec {
                schedule: Some(schedule.into()),
                time_zone: time_zone.map(Into::into),
                drift: None,
            })
        };
        for (schedule, time_zone) in [
            ("*/15 2-4 1,15 jan-jun MON-FRI", None),
            ("@weekly", Some("Europe/Berlin")),
            ("30 2 * * ?", Some("America/New_York")),
        ] {
            s.retrain = retrain(schedule, time_zone);
            assert_eq!(validate("docs", &s), Ok(()), "{schedule} {time_zone:?}");
        }
        s.retrain = retrain("0 3 * * 7", None);
        assert_eq!(
            only_error(&s),
            "spec.retrain.schedule: day of week \"7\": 7 is out of range 0-6; write Sunday as 0 or SUN"
        );
        s.retrain = retrain("0 0 3 * * *", None);
        assert!(
            only_error(&s).starts_with("spec.retrain.schedule: \"0 0 3 * * *\" has 6 fields"),
            "{}",
            only_error(&s)
        );
        s.retrain = retrain("TZ=Europe/Berlin 0 3 * * *", None);
        assert!(
            only_error(&s).ends_with("use spec.retrain.timeZone"),
            "{}",
            only_error(&s)
        );
        s.retrain = retrain("@every 1h", None);
        assert!(only_error(&s).starts_with("spec.retrain.schedule: \"@every 1h\""));
        s.retrain = retrain("0 3 * * *", Some("Europe/Berlim"));
        assert_eq!(
            only_error(&s),
            "spec.retrain.timeZone: unknown time zone \"Europe/Berlim\": not in the time zone database"
        );
        // Both wrong: both reported.
        s.retrain = retrain("0 3 L * *", Some("Local"));
        let e = validate("docs", &s).expect_err("invalid");
        assert!(e.has_field("spec.retrain.schedule"), "{e}");
        assert!(e.has_field("spec.retrain.timeZone"), "{e}");
        assert!(e.to_string().contains("day of month \"L\""), "{e}");
    }

    #[test]
    fn rule_pinned_version_is_a_version_name() {
        let mut s = example();
        s.pinned_version = Some("v2-7f3a9c2e".into());
        assert_eq!(validate("docs", &s), Ok(()));
        s.pinned_version = Some(String::new());
        assert_eq!(validate("docs", &s), Ok(()));
        s.pinned_version = Some("latest".into());
        let e = only_error(&s);
        assert!(
            e.starts_with("spec.pinnedVersion: version name \"latest\" is not of the form"),
            "{e}"
        );
    }

    #[test]
    fn rule_image_reference() {
        let mut s = example();
        s.pods.image = Some("ghcr.io/quiver/index-node: 1".into());
        let e = only_error(&s);
        assert!(e.starts_with("spec.pods.image: "), "{e}");
    }

    #[test]
    fn rule_node_selector_labels() {
        let mut s = example();
        s.pods
            .node_selector
            .insert("node.kubernetes.io/pool".into(), "vectors".into());
        s.pods
            .node_selector
            .insert("kubernetes.io/arch".into(), String::new());
        assert_eq!(validate("docs", &s), Ok(()));
        s.pods.node_selector.insert("bad key!".into(), "x".into());
        let e = only_error(&s);
        assert!(
            e.starts_with("spec.pods.nodeSelector: key \"bad key!\""),
            "{e}"
        );
        s.pods.node_selector.remove("bad key!");
        s.pods.node_selector.insert("pool".into(), "-x".into());
        let e = only_error(&s);
        assert!(
            e.starts_with("spec.pods.nodeSelector: value \"-x\" of \"pool\""),
            "{e}"
        );
    }
}
