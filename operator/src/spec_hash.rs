//! The hash of the spec fields that shape an index version. Two specs with the same hash
//! build the same version; a different hash needs a new one. Scaling (`replicas`,
//! `router.replicas`), pods, rollout thresholds, retention and the query-time `index.nprobe`
//! are not in it: changing them changes pods or decisions, never the files of a version.
//!
//! FNV-1a over canonical JSON, not `std::hash`: the value is stored in statuses and
//! manifests and must not change with the compiler.

use quiver_api::v1alpha1::VectorIndexSpec;
use serde_json::json;

/// 16 hex digits.
pub fn spec_hash(spec: &VectorIndexSpec) -> String {
    let shaping = json!({
        "dimension": spec.dimension,
        "metric": spec.metric,
        "nlist": spec.index.nlist,
        "quantizer": spec.index.quantizer,
        "training": spec.index.training,
        "source": spec.source,
        "storage": spec.storage.uri,
        "shards": spec.shards,
        // The evaluation set is written by the build: its size is part of the version.
        "evalQueries": spec.rollout.eval_queries,
        "evalK": spec.rollout.eval_k,
    });
    // serde_json's map is ordered by key (no preserve_order feature), so this is canonical.
    format!("{:016x}", fnv64(shaping.to_string().as_bytes()))
}

/// 64-bit FNV-1a: stable across builds and platforms.
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::tests::index;

    #[test]
    fn scaling_keeps_the_hash_and_shaping_fields_change_it() {
        let base = spec_hash(&index(|_| {}).spec);
        assert_eq!(base.len(), 16);
        let same = index(|v| {
            v["spec"]["replicas"] = json!(5);
            v["spec"]["router"] = json!({"replicas": 4});
            v["spec"]["rollout"] = json!({"minRecall": 0.5});
            // Query-time: routers read it from the spec.
            v["spec"]["index"]["nprobe"] = json!(4);
        });
        assert_eq!(spec_hash(&same.spec), base);
        for edit in [
            json!({"dimension": 64}),
            json!({"metric": "ip"}),
            json!({"shards": 3}),
            json!({"source": {"synthetic": {"count": 10000, "seed": 8}}}),
            json!({"source": {"synthetic": {"count": 10000, "seed": 7}, "revision": "r2"}}),
        ] {
            let changed = index(|v| {
                for (k, val) in edit.as_object().expect("object") {
                    v["spec"][k] = val.clone();
                }
            });
            assert_ne!(spec_hash(&changed.spec), base, "{edit}");
        }
        let nlist = index(|v| v["spec"]["index"]["nlist"] = json!(128));
        assert_ne!(spec_hash(&nlist.spec), base);
    }
}
