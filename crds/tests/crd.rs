//! The generated CRD: committed YAML up to date, its shape, and its CEL rules evaluated
//! client-side (kube's `cel` feature, dev-only) the way an API server would at admission.

use kube::core::cel::{Validator, apply_defaults};
use quiver_api::v1alpha1::{HotList, ListSplit, LoadStatus, RebalancePlan, ShardLoad};
use quiver_api::{CRD_PATH, VectorIndex};
use serde_json::{Value, json};

fn schema() -> Value {
    let crd = quiver_api::crd();
    let v = crd.spec.versions.first().expect("one version");
    let s = v
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    serde_json::to_value(s).expect("schema as JSON")
}

#[test]
fn committed_yaml_is_up_to_date() {
    let want = quiver_api::crd_yaml().expect("renders");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectorindex.yaml");
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "{CRD_PATH} differs from what crds/src/v1alpha1.rs generates: \
         run `cargo run -p quiver-api --bin crdgen` and commit the result"
    );
    // The Helm chart installs the same file (Helm takes CRDs only from inside the chart).
    let chart = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/quiver/crds/vectorindex.yaml"
    );
    assert!(
        std::fs::read_to_string(chart).unwrap_or_default() == want,
        "charts/quiver/crds/vectorindex.yaml differs from {CRD_PATH}: run \
         `cargo run -p quiver-api --bin crdgen` (it writes both) and commit the result"
    );
    // And it parses back into the same CRD.
    let back: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_saphyr::from_str(&have).expect("YAML parses");
    assert_eq!(back, quiver_api::crd());
}

#[test]
fn crd_shape() {
    let crd = quiver_api::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("vectorindexes.quiver.dev")
    );
    assert_eq!(crd.spec.group, "quiver.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["vi".to_string()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["quiver".to_string()]));
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(
        v.subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let cols: Vec<(&str, &str)> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        cols,
        [
            ("Ready", ".status.conditions[?(@.type==\"Ready\")].status"),
            ("Active", ".status.activeVersion"),
            ("Target", ".status.targetVersion"),
            ("Recall", ".status.recall"),
            ("Age", ".metadata.creationTimestamp"),
        ]
    );
}

/// Every property of the schema has a description (`kubectl explain` text).
#[test]
fn every_field_is_described() {
    fn walk(path: &str, s: &Value, missing: &mut Vec<String>) {
        if let Some(props) = s.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                let p = format!("{path}.{k}");
                let top =
                    path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata");
                if !top && v.get("description").is_none() {
                    missing.push(p.clone());
                }
                walk(&p, v, missing);
            }
        }
        if let Some(items) = s.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let mut missing = Vec::new();
    walk("", &schema(), &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}

/// Every CEL rule compiles (an API server refuses a CRD whose rules do not).
#[test]
fn every_rule_compiles() {
    fn rules(s: &Value, out: &mut Vec<String>) {
        match s {
            Value::Object(m) => {
                if let Some(Value::Array(rs)) = m.get("x-kubernetes-validations") {
                    for r in rs {
                        if let Some(rule) = r.get("rule").and_then(Value::as_str) {
                            out.push(rule.to_string());
                        }
                    }
                }
                m.values().for_each(|v| rules(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| rules(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    rules(&schema(), &mut all);
    assert!(all.len() >= 14, "{all:?}");
    for r in &all {
        if let Err(e) = kube::core::cel::cel::Program::compile(r) {
            panic!("rule {r:?} does not compile: {e}");
        }
    }
}

/// The DESIGN.md example as a user writes it (no defaults filled in).
fn example() -> Value {
    json!({
        "apiVersion": "quiver.dev/v1alpha1",
        "kind": "VectorIndex",
        "metadata": {"name": "docs", "namespace": "search"},
        "spec": {
            "dimension": 384,
            "metric": "cosine",
            "index": {
                "nlist": 1024,
                "quantizer": {"kind": "sq8"},
                "training": {"sampleSize": 262144, "iterations": 25, "balance": 0, "seed": 7},
                "nprobe": 16
            },
            "source": {"uri": "s3://corp-vectors/docs/vectors.npy", "revision": "2026-12-01"},
            "storage": {
                "uri": "s3://corp-quiver/indexes",
                "secretRef": {"name": "quiver-s3"},
                "retainVersions": 2,
                "deletionPolicy": "Retain"
            },
            "shards": 2,
            "replicas": 2,
            "router": {"replicas": 2, "maxK": 1000},
            "build": {"parts": 4},
            "rollout": {"minRecall": 0.9, "evalQueries": 500, "evalK": 10},
            "retrain": {"schedule": "0 3 * * 0"},
            "pinnedVersion": ""
        }
    })
}

/// The messages of the CEL rules `obj` breaks (defaults applied first, as at admission).
fn cel_errors(obj: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(&schema(), obj, old) {
        Ok(()) => Vec::new(),
        Err(e) => e.into_vec().into_iter().map(|e| e.to_string()).collect(),
    }
}

fn with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut v = example();
    edit(&mut v);
    v
}

fn assert_refused(obj: &Value, want: &str) {
    let errs = cel_errors(obj, None);
    assert!(
        errs.len() == 1 && errs[0].contains(want),
        "wanted one error containing {want:?}, got {errs:?}"
    );
}

#[test]
fn the_example_passes_and_deserializes() {
    assert_eq!(cel_errors(&example(), None), Vec::<String>::new());
    let vi: VectorIndex = serde_json::from_value(example()).expect("deserializes");
    assert_eq!(quiver_api::validate("docs", &vi.spec), Ok(()));
}

/// Schema defaults (what the API server stores) and serde defaults (what Rust reads) agree.
#[test]
fn schema_defaults_match_serde_defaults() {
    let minimal = json!({
        "apiVersion": "quiver.dev/v1alpha1",
        "kind": "VectorIndex",
        "metadata": {"name": "demo"},
        "spec": {
            "dimension": 32,
            "source": {"synthetic": {"count": 20000}},
            "storage": {"uri": "file:///var/lib/quiver"}
        }
    });
    assert_eq!(cel_errors(&minimal, None), Vec::<String>::new());
    let from_serde: VectorIndex = serde_json::from_value(minimal.clone()).expect("serde");
    let defaulted = apply_defaults(&schema(), &minimal);
    let from_schema: VectorIndex = serde_json::from_value(defaulted.clone()).expect("schema");
    assert_eq!(from_serde, from_schema);
    // Every default is spelled out in the stored object.
    assert_eq!(
        serde_json::to_value(&from_serde.spec).ok(),
        defaulted.get("spec").cloned()
    );
    assert_eq!(quiver_api::validate("demo", &from_serde.spec), Ok(()));
}

#[test]
fn cel_pq_needs_m() {
    assert_refused(
        &with(|v| v["spec"]["index"]["quantizer"] = json!({"kind": "pq"})),
        "m is required when kind is pq",
    );
}

#[test]
fn cel_m_only_with_pq() {
    assert_refused(
        &with(|v| v["spec"]["index"]["quantizer"] = json!({"kind": "sq8", "m": 16})),
        "m is only valid with kind pq",
    );
}

#[test]
fn cel_m_divides_dimension() {
    assert_refused(
        &with(|v| v["spec"]["index"]["quantizer"] = json!({"kind": "pq", "m": 7})),
        "m must divide spec.dimension",
    );
    let ok = with(|v| v["spec"]["index"]["quantizer"] = json!({"kind": "pq", "m": 48}));
    assert_eq!(cel_errors(&ok, None), Vec::<String>::new());
}

#[test]
fn cel_rerank_needs_a_code() {
    assert_refused(
        &with(|v| v["spec"]["index"]["quantizer"] = json!({"kind": "flat", "rerank": true})),
        "rerank needs kind sq8 or pq",
    );
}

#[test]
fn cel_nprobe_within_nlist() {
    assert_refused(
        &with(|v| v["spec"]["index"]["nprobe"] = json!(2048)),
        "nprobe must not exceed spec.index.nlist",
    );
}

#[test]
fn cel_sample_size_covers_the_lists() {
    assert_refused(
        &with(|v| v["spec"]["index"]["training"]["sampleSize"] = json!(1000)),
        "sampleSize must be at least spec.index.nlist",
    );
}

#[test]
fn cel_pq_sample_size() {
    assert_refused(
        &with(|v| {
            v["spec"]["index"]["nlist"] = json!(64);
            v["spec"]["index"]["nprobe"] = json!(8);
            v["spec"]["index"]["quantizer"] = json!({"kind": "pq", "m": 8});
            v["spec"]["index"]["training"]["sampleSize"] = json!(100);
        }),
        "at least 256 for a pq quantizer",
    );
}

#[test]
fn cel_exactly_one_source() {
    let both = with(|v| v["spec"]["source"]["synthetic"] = json!({"count": 100000}));
    assert_refused(
        &both,
        "exactly one of spec.source.uri and spec.source.synthetic",
    );
    let none = with(|v| v["spec"]["source"] = json!({"revision": "x"}));
    assert_refused(
        &none,
        "exactly one of spec.source.uri and spec.source.synthetic",
    );
}

#[test]
fn cel_hot_shard_replicas_at_least_the_spec_replicas() {
    assert_refused(
        &with(|v| v["spec"]["rebalance"] = json!({"maxReplicasPerShard": 1})),
        "maxReplicasPerShard must be at least spec.replicas",
    );
    let ok = with(|v| v["spec"]["rebalance"] = json!({"maxReplicasPerShard": 3}));
    assert_eq!(cel_errors(&ok, None), Vec::<String>::new());
}

#[test]
fn cel_eval_k_within_max_k() {
    assert_refused(
        &with(|v| v["spec"]["rollout"]["evalK"] = json!(2000)),
        "evalK must not exceed spec.router.maxK",
    );
}

#[test]
fn cel_synthetic_count_covers_the_lists() {
    assert_refused(
        &with(|v| v["spec"]["source"] = json!({"synthetic": {"count": 1000}})),
        "count must be at least spec.index.nlist",
    );
}

#[test]
fn cel_synthetic_count_holds_the_eval_queries() {
    assert_refused(
        &with(|v| {
            v["spec"]["index"] = json!({"nlist": 16});
            v["spec"]["source"] = json!({"synthetic": {"count": 900}});
        }),
        "at least twice spec.rollout.evalQueries",
    );
}

#[test]
fn cel_storage_uri_is_immutable() {
    let old = example();
    let moved = with(|v| v["spec"]["storage"]["uri"] = json!("s3://elsewhere/indexes"));
    let errs = cel_errors(&moved, Some(&old));
    assert!(
        errs.len() == 1 && errs[0].contains("spec.storage.uri is immutable"),
        "{errs:?}"
    );
    // Fields that shape the index may change: that makes a new version.
    let reshaped = with(|v| {
        v["spec"]["dimension"] = json!(768);
        v["spec"]["metric"] = json!("l2");
        v["spec"]["shards"] = json!(4);
        v["spec"]["index"]["nlist"] = json!(4096);
    });
    assert_eq!(cel_errors(&reshaped, Some(&old)), Vec::<String>::new());
}

#[test]
fn cel_index_name() {
    assert_refused(
        &with(|v| v["metadata"]["name"] = json!("a".repeat(38))),
        "at most 37 characters",
    );
    assert_refused(
        &with(|v| v["metadata"]["name"] = json!("1docs")),
        "must start with a letter",
    );
}

#[test]
fn a_split_sends_the_new_half_to_the_coolest_other_shard() {
    let shard = |shard, share, replicas| ShardLoad {
        shard,
        share,
        replicas,
    };
    let mut load = LoadStatus {
        version: "v1".into(),
        imbalance: 2.0,
        shards: vec![shard(0, 0.5, 1), shard(1, 0.3, 1), shard(2, 0.2, 2)],
        hottest_lists: vec![HotList {
            list: 4,
            shard: 0,
            share: 0.45,
            entries: 10,
        }],
        plan: None,
        measured_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ),
    };
    assert_eq!(load.split(), None, "no plan");
    load.plan = Some(RebalancePlan {
        moves: vec![],
        bytes: 0,
        imbalance_after: 2.0,
        split_list: Some(4),
    });
    // Shard 2 carries 0.2 over 2 replicas: 0.1 each, the least.
    assert_eq!(
        load.split(),
        Some(ListSplit {
            list: 4,
            from: 0,
            to: 2
        })
    );
    load.shards = vec![shard(0, 1.0, 1)];
    assert_eq!(load.split().map(|s| s.to), Some(0), "one shard keeps both");
}
