//! Shard memory (pure): what one shard replica holds for a version, and whether
//! `spec.pods.resources.shard.limits.memory` can hold what a swap needs. While a new version
//! warms, a shard holds it beside the active one, so the limit must hold two; a version that
//! does not fit would be OOM-killed in a loop instead, taking the serving version with it.
//!
//! The estimate follows the engine's own accounting (`IvfIndex::memory_bytes`): per entry an
//! 8-byte id, the code (`sq8`: 1 byte per component and a 4-byte residual norm; `pq`: `m`
//! bytes), the full vector where the engine keeps it (`flat`, or `rerank`) and, for `flat`,
//! its half-precision copy; per shard the centroids (and PQ's precomputed tables); lists are
//! assumed 25 % above the mean shard size (shard maps are balanced by size, not exactly).

use quiver_api::v1alpha1::{QuantizerKind, VectorIndexSpec};

use crate::lifecycle::Hold;

/// Memory of the node process besides its versions (runtime, gRPC, buffers).
pub const BASELINE_BYTES: u64 = 64 << 20;
/// Largest shard over the mean.
const SHARD_SKEW: f64 = 1.25;

/// Bytes one list entry takes in a shard's memory (what moving it between shards copies).
pub fn entry_bytes(spec: &VectorIndexSpec) -> u64 {
    let d = u64::from(spec.dimension);
    let q = &spec.index.quantizer;
    let raw = 4 * d;
    8 + match q.kind {
        QuantizerKind::Flat => raw + 2 * d,
        QuantizerKind::Sq8 => d + 4 + if q.rerank { raw } else { 0 },
        QuantizerKind::Pq => u64::from(q.m.unwrap_or(1)) + if q.rerank { raw } else { 0 },
    }
}

/// Bytes one shard replica holds for a version of `spec` with `vectors` entries in all.
pub fn shard_bytes(spec: &VectorIndexSpec, vectors: u64) -> u64 {
    let d = u64::from(spec.dimension);
    let q = &spec.index.quantizer;
    let per_entry = entry_bytes(spec);
    let nlist = u64::from(spec.index.nlist);
    let mut fixed = nlist * d * 4;
    if q.kind == QuantizerKind::Pq {
        fixed += nlist * u64::from(q.m.unwrap_or(1)) * 256 * 4;
    }
    let shards = u64::from(spec.shards.max(1));
    let per_shard = (vectors.div_ceil(shards) as f64 * SHARD_SKEW) as u64;
    per_shard * per_entry + fixed
}

/// A Kubernetes memory quantity in bytes (`512Mi`, `4Gi`, `1G`, `1e9`, `1500000000`); None
/// when it is not one.
pub fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "m" => 1e-3,
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    (n.is_finite() && n >= 0.0).then(|| (n * mult).ceil() as u64)
}

fn mib(b: u64) -> String {
    format!("{}Mi", b.div_ceil(1 << 20))
}

/// Whether a new version may start: `active_vectors` is the size of the serving version
/// (None: nothing serves yet), `new_vectors` the expected size of the new one (the active
/// one's when the source does not say). No memory limit, or an unknown size: no refusal.
pub fn check(
    spec: &VectorIndexSpec,
    active: Option<(&str, u64)>,
    new_vectors: Option<u64>,
) -> Option<Hold> {
    let limit_text = spec
        .pods
        .resources
        .shard
        .as_ref()?
        .limits
        .as_ref()?
        .get("memory")?
        .0
        .clone();
    let limit = parse_quantity(&limit_text)?;
    let new_vectors = new_vectors.or(active.map(|a| a.1))?;
    let new = shard_bytes(spec, new_vectors);
    let held = active.map(|(_, n)| shard_bytes(spec, n)).unwrap_or(0);
    let need = BASELINE_BYTES + held + new;
    if need <= limit {
        return None;
    }
    let what = match active {
        Some((name, _)) => format!(
            "during a swap a shard replica holds {name} (~{}) and the new version (~{}) at once",
            mib(held),
            mib(new)
        ),
        None => format!("a shard replica holds ~{} of the first version", mib(new)),
    };
    Some(Hold {
        reason: "InsufficientMemory".into(),
        message: format!(
            "{what}, plus ~{} for the process: ~{} in all, above spec.pods.resources.shard.limits.memory {limit_text}; raise it to at least {} (or add shards); no new version starts until then",
            mib(BASELINE_BYTES),
            mib(need),
            mib(need)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use quiver_api::v1alpha1::QuantizerSpec;

    fn spec(kind: QuantizerKind, limit: Option<&str>) -> VectorIndexSpec {
        let mut s: VectorIndexSpec = serde_json::from_value(serde_json::json!({
            "dimension": 128,
            "source": {"synthetic": {"count": 1000}},
            "storage": {"uri": "file:///tmp/q"},
            "shards": 2,
            "index": {"nlist": 1024},
        }))
        .expect("spec");
        s.index.quantizer = QuantizerSpec {
            kind,
            m: (kind == QuantizerKind::Pq).then_some(16),
            rerank: false,
        };
        if let Some(l) = limit {
            s.pods.resources.shard = Some(ResourceRequirements {
                limits: Some([("memory".to_string(), Quantity(l.into()))].into()),
                ..ResourceRequirements::default()
            });
        }
        s
    }

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(parse_quantity("512Mi"), Some(512 << 20));
        assert_eq!(parse_quantity("4Gi"), Some(4 << 30));
        assert_eq!(parse_quantity("1G"), Some(1_000_000_000));
        assert_eq!(parse_quantity("1e9"), Some(1_000_000_000));
        assert_eq!(parse_quantity("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_quantity("123"), Some(123));
        assert_eq!(parse_quantity("12Xi"), None);
        assert_eq!(parse_quantity("lots"), None);
        assert_eq!(parse_quantity("-1Gi"), None);
    }

    #[test]
    fn shard_bytes_follow_the_encoding() {
        let n = 1_000_000;
        let flat = shard_bytes(&spec(QuantizerKind::Flat, None), n);
        let sq8 = shard_bytes(&spec(QuantizerKind::Sq8, None), n);
        let pq = shard_bytes(&spec(QuantizerKind::Pq, None), n);
        // 625k entries per shard (500k + 25 %): flat 8 + 6·128 bytes each.
        assert_eq!(flat, 625_000 * (8 + 6 * 128) + 1024 * 128 * 4);
        assert_eq!(sq8, 625_000 * (8 + 128 + 4) + 1024 * 128 * 4);
        assert!(pq < sq8 && sq8 < flat);
        let mut rr = spec(QuantizerKind::Sq8, None);
        rr.index.quantizer.rerank = true;
        assert_eq!(shard_bytes(&rr, n) - sq8, 625_000 * 4 * 128);
    }

    #[test]
    fn a_limit_that_cannot_hold_two_versions_refuses_naming_the_field() {
        let n = 1_000_000;
        let one = shard_bytes(&spec(QuantizerKind::Flat, None), n);
        // Enough for one version, not for two.
        let limit = format!("{}Mi", (BASELINE_BYTES + one + (one / 2)) >> 20);
        let s = spec(QuantizerKind::Flat, Some(&limit));
        assert_eq!(check(&s, None, Some(n)), None, "the first version fits");
        let h = check(&s, Some(("v1-7f3a9c2e", n)), None).expect("refused");
        assert_eq!(h.reason, "InsufficientMemory");
        assert!(h.message.contains("v1-7f3a9c2e"), "{}", h.message);
        assert!(
            h.message
                .contains(&format!("spec.pods.resources.shard.limits.memory {limit}")),
            "{}",
            h.message
        );
        let big = spec(QuantizerKind::Flat, Some("64Gi"));
        assert_eq!(check(&big, Some(("v1-7f3a9c2e", n)), None), None);
        // No limit, or no size known: nothing to refuse on.
        assert_eq!(
            check(&spec(QuantizerKind::Flat, None), Some(("v1", n)), None),
            None
        );
        assert_eq!(check(&s, None, None), None);
        // The first version alone does not fit a tiny limit.
        let tiny = spec(QuantizerKind::Flat, Some("100Mi"));
        let h = check(&tiny, None, Some(n)).expect("refused");
        assert!(h.message.contains("of the first version"), "{}", h.message);
    }
}
