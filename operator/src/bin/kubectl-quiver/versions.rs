//! `versions NAME`: the version table of one index.

use k8s_openapi::jiff::Timestamp;
use quiver_api::VectorIndex;
use quiver_api::names::VersionName;
use quiver_api::v1alpha1::VersionStatus;
use serde::Serialize;

use crate::connect::{Global, connect};
use crate::output::{self, NONE, OutputArg, or_none, recall};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VectorIndex.
    pub name: String,
    #[command(flatten)]
    pub out: OutputArg,
}

/// One version as `versions` and `status NAME` print it: the status entry, its age and what it
/// is to the index (active, target, pinned).
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VersionRow {
    #[serde(flatten)]
    pub status: VersionStatus,
    /// Since `createdAt`.
    pub age: String,
    /// Since `lastTransitionTime` (how long it has been in its phase).
    pub in_phase: String,
    pub active: bool,
    pub target: bool,
    pub pinned: bool,
}

/// The document of `versions -o json|yaml`.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct VersionsDoc {
    pub index: String,
    pub namespace: String,
    pub active_version: Option<String>,
    pub target_version: Option<String>,
    pub pinned_version: Option<String>,
    pub versions: Vec<VersionRow>,
}

/// `spec.pinnedVersion`, None when unset or empty.
pub fn pinned(vi: &VectorIndex) -> Option<&str> {
    vi.spec.pinned_version.as_deref().filter(|p| !p.is_empty())
}

/// The retrain token the index asks for (annotation `quiver.dev/retrain`), if any.
pub fn retrain_token(vi: &VectorIndex) -> Option<&str> {
    vi.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(quiver_api::annotations::RETRAIN))
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
}

/// The counter of a version name (`v3-…` → 3), for ordering.
pub fn counter(name: &str) -> Option<u32> {
    VersionName::parse(name).ok().map(|v| v.counter())
}

/// The index's versions, newest first (as the status keeps them).
pub fn rows(vi: &VectorIndex, now: Timestamp) -> Vec<VersionRow> {
    let st = vi.status.clone().unwrap_or_default();
    let pin = pinned(vi);
    st.versions
        .iter()
        .map(|v| VersionRow {
            age: output::age(v.created_at.as_ref(), now),
            in_phase: output::age(v.last_transition_time.as_ref(), now),
            active: st.active_version.as_deref() == Some(v.name.as_str()),
            target: st.target_version.as_deref() == Some(v.name.as_str()),
            pinned: pin == Some(v.name.as_str()),
            status: v.clone(),
        })
        .collect()
}

pub fn doc(vi: &VectorIndex, now: Timestamp) -> VersionsDoc {
    let st = vi.status.clone().unwrap_or_default();
    VersionsDoc {
        index: vi.metadata.name.clone().unwrap_or_default(),
        namespace: vi.metadata.namespace.clone().unwrap_or_default(),
        active_version: st.active_version,
        target_version: st.target_version,
        pinned_version: pinned(vi).map(str::to_string),
        versions: rows(vi, now),
    }
}

fn notes(r: &VersionRow) -> String {
    let mut n = Vec::new();
    if r.active {
        n.push("active");
    }
    if r.target {
        n.push("target");
    }
    if r.pinned {
        n.push("pinned");
    }
    if n.is_empty() {
        NONE.into()
    } else {
        n.join(",")
    }
}

/// The version table: NAME PHASE RECALL VECTORS TRIGGER AGE NOTE REASON; `wide` adds how
/// long each has been in its phase, its shards, failed attempts and spec hash.
pub fn table(rows: &[VersionRow], wide: bool) -> String {
    let mut headers = vec!["NAME", "PHASE", "RECALL", "VECTORS", "TRIGGER", "AGE"];
    if wide {
        headers.extend(["IN PHASE", "SHARDS", "ATTEMPTS", "SPEC HASH"]);
    }
    headers.extend(["NOTE", "REASON"]);
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let v = &r.status;
            let mut row = vec![
                v.name.clone(),
                format!("{:?}", v.phase),
                recall(v.recall),
                or_none(v.vectors),
                or_none(v.trigger.as_deref()),
                r.age.clone(),
            ];
            if wide {
                row.extend([
                    r.in_phase.clone(),
                    or_none(v.shards),
                    or_none(v.attempts),
                    or_none(v.spec_hash.as_deref()),
                ]);
            }
            row.extend([notes(r), or_none(v.reason.as_deref())]);
            row
        })
        .collect();
    output::table(&headers, &body)
}

pub async fn run(g: &Global, args: &Args) -> anyhow::Result<()> {
    let kube = connect(g).await?;
    let vi = kube.index(&args.name).await?;
    let now = Timestamp::now();
    let doc = doc(&vi, now);
    if let Some(text) = args.out.document(&doc)? {
        print!("{text}");
    } else if doc.versions.is_empty() {
        println!(
            "{} has no versions yet (the operator has not reconciled it; kubectl quiver status {})",
            args.name, args.name
        );
    } else {
        print!("{}", table(&doc.versions, args.out.wide()));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub mod tests {
    use super::*;
    use serde_json::json;

    pub const NOW: i64 = 1_800_000_000;

    pub fn now() -> Timestamp {
        Timestamp::from_second(NOW).unwrap()
    }

    fn ago(secs: i64) -> String {
        Timestamp::from_second(NOW - secs).unwrap().to_string()
    }

    /// An index named docs: v3 Building (a retrain, failing attempts), v2 Active, v1 Retired.
    pub fn sample() -> VectorIndex {
        serde_json::from_value(json!({
            "apiVersion": "quiver.dev/v1alpha1", "kind": "VectorIndex",
            "metadata": {"name": "docs", "namespace": "search", "creationTimestamp": ago(3 * 3600),
                         "generation": 2,
                         "annotations": {"quiver.dev/retrain": "ticket-9"}},
            "spec": {"dimension": 4, "source": {"synthetic": {"count": 1000}},
                     "storage": {"uri": "file:///tmp/s"}, "shards": 2},
            "status": {
                "observedGeneration": 2, "phase": "Ready",
                "activeVersion": "v2-0a0b0c0d", "targetVersion": "v3-0a0b0c0d", "recall": 0.97,
                "observedRetrain": "ticket-9",
                "shards": {"ready": 4, "desired": 4}, "routers": {"ready": 2, "desired": 2},
                "versions": [
                    {"name": "v3-0a0b0c0d", "phase": "Building", "trigger": "retrain:ticket-9",
                     "createdAt": ago(900), "lastTransitionTime": ago(840), "attempts": 2,
                     "reason": "build part 1 failed: no space left on device"},
                    {"name": "v2-0a0b0c0d", "phase": "Active", "trigger": "spec", "recall": 0.97,
                     "vectors": 1000, "shards": 2, "specHash": "abc123",
                     "createdAt": ago(7200), "lastTransitionTime": ago(7000)},
                    {"name": "v1-0a0b0c0d", "phase": "Retired", "trigger": "create", "recall": 0.95,
                     "vectors": 1000, "createdAt": ago(10000), "lastTransitionTime": ago(7000)}
                ],
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Serving",
                     "message": "serving v2-0a0b0c0d (gate recall 0.9700); shard pods 4/4, routers 2/2 ready",
                     "lastTransitionTime": ago(7000)},
                    {"type": "Progressing", "status": "True", "reason": "Building",
                     "message": "v3-0a0b0c0d is Building: build part 1 failed: no space left on device",
                     "lastTransitionTime": ago(840)},
                    {"type": "Degraded", "status": "False", "reason": "AsExpected",
                     "message": "", "lastTransitionTime": ago(7000)}
                ]
            }
        }))
        .unwrap()
    }

    #[test]
    fn rows_mark_the_active_target_and_pinned_versions() {
        let mut vi = sample();
        vi.spec.pinned_version = Some("v2-0a0b0c0d".into());
        let r = rows(&vi, now());
        assert_eq!(r.len(), 3);
        assert!(r[0].target && !r[0].active);
        assert!(r[1].active && r[1].pinned);
        assert_eq!(r[0].age, "15m");
        assert_eq!(r[0].in_phase, "14m");
        let t = table(&r, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "NAME", "PHASE", "RECALL", "VECTORS", "TRIGGER", "AGE", "NOTE", "REASON"
            ]
        );
        assert!(
            lines[1].starts_with("v3-0a0b0c0d   Building   <none>"),
            "{t}"
        );
        assert!(
            lines[1].ends_with("target          build part 1 failed: no space left on device"),
            "{t}"
        );
        assert!(
            lines[2].contains("0.9700") && lines[2].contains("active,pinned"),
            "{t}"
        );
        let w = table(&r, true);
        assert!(w.lines().next().unwrap().contains("SPEC HASH"), "{w}");
        assert!(w.contains("abc123"), "{w}");
    }

    #[test]
    fn the_document_names_the_index_and_flattens_each_version() {
        let d = doc(&sample(), now());
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["index"], "docs");
        assert_eq!(v["namespace"], "search");
        assert_eq!(v["activeVersion"], "v2-0a0b0c0d");
        assert_eq!(v["pinnedVersion"], serde_json::Value::Null);
        assert_eq!(v["versions"][1]["phase"], "Active");
        assert_eq!(v["versions"][1]["recall"], 0.97);
        assert_eq!(v["versions"][1]["active"], true);
        assert_eq!(v["versions"][0]["trigger"], "retrain:ticket-9");
    }

    #[test]
    fn counters_order_versions() {
        assert_eq!(counter("v12-0a0b0c0d"), Some(12));
        assert_eq!(counter("hand-made"), None);
    }
}
