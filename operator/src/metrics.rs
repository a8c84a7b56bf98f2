//! The operator's Prometheus metrics, one registry per process. Labels are bounded: the
//! reconcile step and a fixed reason set, and per index (namespace, name) gauges, removed
//! when the index goes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use k8s_openapi::jiff::Timestamp;
use quiver_api::v1alpha1::{IndexPhase, LoadStatus, VectorIndexStatus, VersionPhase};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    /// Reconciles by outcome (ok, error, invalid).
    pub reconciles: Family<Labels, Counter>,
    /// Reconcile errors by the step that failed (observe, plan, apply, status, delete) and the
    /// reason (`Error::reason`).
    pub errors: Family<Labels, Counter>,
    pub reconcile_seconds: Histogram,
    /// API writes made by reconciles, by kind (apply, create, delete, status).
    pub writes: Family<Labels, Counter>,
    pub ready_shard_pods: Family<Labels, Gauge>,
    pub ready_routers: Family<Labels, Gauge>,
    /// Gate recall of the active version, in 1/10000.
    pub gate_recall_bp: Family<Labels, Gauge>,
    /// Seconds since the active version became active.
    pub active_version_age_seconds: Family<Labels, Gauge>,
    /// Query drift of the active version (KS distance, in 1/10000).
    pub query_drift_bp: Family<Labels, Gauge>,
    /// The most loaded shard's load per replica over the mean (`status.load.imbalance`), in
    /// 1/10000.
    pub load_imbalance_bp: Family<Labels, Gauge>,
    /// Each shard's share of the active version's load, in 1/10000.
    pub shard_load_share_bp: Family<Labels, Gauge>,
    /// The share of the n-th hottest list (rank 1 to 5, not the list id: bounded labels).
    pub hot_list_share_bp: Family<Labels, Gauge>,
    /// 1 for the index's current phase, 0 for the others.
    pub index_phase: Family<Labels, Gauge>,
    /// Versions of an index in each phase.
    pub versions: Family<Labels, Gauge>,
    /// For each phase a version can get stuck in (preparation and Draining): how long the
    /// index's version in it has been there, in seconds (0: none is).
    pub version_phase_seconds: Family<Labels, Gauge>,
    /// Versions that went Failed, by the reason's first word (GateFailed, WarmFailed, …).
    pub version_failures: Family<Labels, Counter>,
    /// Shard pods (shards × replicas) and routers the spec asks for.
    pub desired_shard_pods: Family<Labels, Gauge>,
    pub desired_routers: Family<Labels, Gauge>,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    indexes: Mutex<BTreeSet<(String, String)>>,
    /// Shards with a load share series, per index (to remove them when the map shrinks).
    load_shards: Mutex<BTreeMap<(String, String), u32>>,
}

const INDEX_PHASES: [IndexPhase; 5] = [
    IndexPhase::Pending,
    IndexPhase::Building,
    IndexPhase::Ready,
    IndexPhase::Degraded,
    IndexPhase::Failed,
];

const VERSION_PHASES: [VersionPhase; 9] = [
    VersionPhase::Pending,
    VersionPhase::Training,
    VersionPhase::Building,
    VersionPhase::Warming,
    VersionPhase::Gating,
    VersionPhase::Active,
    VersionPhase::Draining,
    VersionPhase::Retired,
    VersionPhase::Failed,
];

/// The label value of a phase: its name in the status.
fn phase_name<T: std::fmt::Debug>(p: T) -> String {
    format!("{p:?}")
}

/// Versions per phase, and per phase a version can get stuck in, the longest time one has
/// been there (seconds). Pure: from the status and the time.
pub fn phase_figures(
    status: &VectorIndexStatus,
    now: Timestamp,
) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let mut counts: BTreeMap<String, i64> =
        VERSION_PHASES.iter().map(|p| (phase_name(*p), 0)).collect();
    let mut seconds: BTreeMap<String, i64> = VERSION_PHASES
        .iter()
        .filter(|p| p.is_preparing() || **p == VersionPhase::Draining)
        .map(|p| (phase_name(*p), 0))
        .collect();
    for v in &status.versions {
        *counts.entry(phase_name(v.phase)).or_default() += 1;
        if let (Some(slot), Some(t)) = (
            seconds.get_mut(&phase_name(v.phase)),
            &v.last_transition_time,
        ) {
            let secs = now.duration_since(t.0).as_secs().max(0);
            *slot = (*slot).max(secs);
        }
    }
    (counts, seconds)
}

/// The reasons a version fails for (lifecycle.rs), the label values of
/// `index_version_failures_total`: its series exist from the first reconcile at 0, so that
/// `increase()` sees the first failure.
const FAILURE_REASONS: [&str; 4] = ["GateFailed", "WarmFailed", "Superseded", "Other"];

/// The versions `new` has Failed that `old` did not, by the first word of their reason
/// (`GateFailed: recall …` → `GateFailed`; a word not in [`FAILURE_REASONS`] → `Other`).
pub fn new_failures(old: &VectorIndexStatus, new: &VectorIndexStatus) -> Vec<String> {
    new.versions
        .iter()
        .filter(|v| v.phase == VersionPhase::Failed)
        .filter(|v| {
            old.version(&v.name)
                .is_none_or(|o| o.phase != VersionPhase::Failed)
        })
        .map(|v| {
            let word = v
                .reason
                .as_deref()
                .unwrap_or_default()
                .split([':', ' '])
                .next()
                .unwrap_or_default();
            if FAILURE_REASONS.contains(&word) {
                word
            } else {
                "Other"
            }
            .to_string()
        })
        .collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("quiver_operator");
        let m = Metrics {
            reconciles: Family::default(),
            errors: Family::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            writes: Family::default(),
            ready_shard_pods: Family::default(),
            ready_routers: Family::default(),
            gate_recall_bp: Family::default(),
            active_version_age_seconds: Family::default(),
            query_drift_bp: Family::default(),
            load_imbalance_bp: Family::default(),
            shard_load_share_bp: Family::default(),
            hot_list_share_bp: Family::default(),
            index_phase: Family::default(),
            versions: Family::default(),
            version_phase_seconds: Family::default(),
            version_failures: Family::default(),
            desired_shard_pods: Family::default(),
            desired_routers: Family::default(),
            leader: Gauge::default(),
            indexes: Mutex::default(),
            load_shards: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register("reconciles", "Reconciles by outcome", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconcile errors by failed step and reason",
            m.errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile",
            m.reconcile_seconds.clone(),
        );
        registry.register("api_writes", "API writes by kind", m.writes.clone());
        registry.register(
            "index_ready_shard_pods",
            "Ready shard pods per index",
            m.ready_shard_pods.clone(),
        );
        registry.register(
            "index_ready_routers",
            "Ready router pods per index",
            m.ready_routers.clone(),
        );
        registry.register(
            "index_gate_recall_basis_points",
            "Gate recall of the active version (1/10000)",
            m.gate_recall_bp.clone(),
        );
        registry.register(
            "index_active_version_age_seconds",
            "Seconds since the active version was activated",
            m.active_version_age_seconds.clone(),
        );
        registry.register(
            "index_query_drift_basis_points",
            "Kolmogorov-Smirnov distance between live queries' and the active version's held-out vectors' nearest-centroid distances (1/10000)",
            m.query_drift_bp.clone(),
        );
        registry.register(
            "index_load_imbalance_basis_points",
            "The most loaded shard's load per replica over the mean per replica, of the active version (1/10000; 10000 = balanced)",
            m.load_imbalance_bp.clone(),
        );
        registry.register(
            "index_shard_load_share_basis_points",
            "Each shard's share of the active version's scan load (1/10000)",
            m.shard_load_share_bp.clone(),
        );
        registry.register(
            "index_hot_list_share_basis_points",
            "Share of the active version's scan load taken by its n-th hottest list, by rank 1-5 (1/10000)",
            m.hot_list_share_bp.clone(),
        );
        registry.register(
            "index_phase",
            "1 for the index's phase (Pending, Building, Ready, Degraded, Failed), 0 for the others",
            m.index_phase.clone(),
        );
        registry.register(
            "index_versions",
            "Versions of the index in each phase",
            m.versions.clone(),
        );
        registry.register(
            "index_version_phase_seconds",
            "Seconds the index's version in this phase (Pending to Gating, Draining) has been in it; 0 when none is",
            m.version_phase_seconds.clone(),
        );
        registry.register(
            "index_version_failures",
            "Versions that failed, by the first word of their reason (GateFailed, WarmFailed, Superseded, ...)",
            m.version_failures.clone(),
        );
        registry.register(
            "index_desired_shard_pods",
            "Shard pods the spec asks for (shards x replicas)",
            m.desired_shard_pods.clone(),
        );
        registry.register(
            "index_desired_routers",
            "Router pods the spec asks for",
            m.desired_routers.clone(),
        );
        registry.register("leader", "1 while this replica leads", m.leader.clone());
        Metrics { registry, ..m }
    }

    pub fn index_labels(namespace: &str, index: &str) -> Labels {
        vec![("namespace", namespace.into()), ("index", index.into())]
    }

    /// Records the gauges of one index.
    pub fn set_index(
        &self,
        ns: &str,
        index: &str,
        shards: u32,
        routers: u32,
        recall: Option<f64>,
        age: Option<i64>,
    ) {
        let l = Self::index_labels(ns, index);
        self.ready_shard_pods
            .get_or_create(&l)
            .set(i64::from(shards));
        self.ready_routers.get_or_create(&l).set(i64::from(routers));
        if let Some(r) = recall {
            self.gate_recall_bp
                .get_or_create(&l)
                .set((r * 10_000.0).round() as i64);
        }
        if let Some(a) = age {
            self.active_version_age_seconds.get_or_create(&l).set(a);
        }
        if let Ok(mut s) = self.indexes.lock() {
            s.insert((ns.to_string(), index.to_string()));
        }
    }

    /// Records the phase figures of one index after a reconcile: its phase, its versions per
    /// phase and time in phase, the versions that failed since `old`, and the pods it asks for.
    pub fn set_lifecycle(
        &self,
        ns: &str,
        index: &str,
        old: &VectorIndexStatus,
        new: &VectorIndexStatus,
        now: Timestamp,
        desired: (u32, u32),
    ) {
        let with = |k: &'static str, v: String| {
            let mut l = Self::index_labels(ns, index);
            l.push((k, v));
            l
        };
        for p in INDEX_PHASES {
            self.index_phase
                .get_or_create(&with("phase", phase_name(p)))
                .set(i64::from(new.phase == Some(p)));
        }
        let (counts, seconds) = phase_figures(new, now);
        for (p, n) in counts {
            self.versions.get_or_create(&with("phase", p)).set(n);
        }
        for (p, s) in seconds {
            self.version_phase_seconds
                .get_or_create(&with("phase", p))
                .set(s);
        }
        for reason in FAILURE_REASONS {
            // The series exist at 0 from the first reconcile.
            self.version_failures
                .get_or_create(&with("reason", reason.to_string()))
                .inc_by(0);
        }
        for reason in new_failures(old, new) {
            self.version_failures
                .get_or_create(&with("reason", reason))
                .inc();
        }
        let l = Self::index_labels(ns, index);
        self.desired_shard_pods
            .get_or_create(&l)
            .set(i64::from(desired.0));
        self.desired_routers
            .get_or_create(&l)
            .set(i64::from(desired.1));
    }

    /// Records the query drift of one index's active version.
    pub fn set_drift(&self, ns: &str, index: &str, statistic: f64) {
        self.query_drift_bp
            .get_or_create(&Self::index_labels(ns, index))
            .set((statistic * 10_000.0).round() as i64);
    }

    /// Records where the active version's load falls (`status.load`); None drops the series.
    pub fn set_load(&self, ns: &str, index: &str, load: Option<&LoadStatus>) {
        let l = Self::index_labels(ns, index);
        let with = |k: &'static str, v: String| {
            let mut l = l.clone();
            l.push((k, v));
            l
        };
        let bp = |x: f64| (x * 10_000.0).round() as i64;
        let shards = load.map_or(0, |x| x.shards.len() as u32);
        let before = self.load_shards.lock().ok().and_then(|mut m| {
            let key = (ns.to_string(), index.to_string());
            if shards == 0 {
                m.remove(&key)
            } else {
                m.insert(key, shards)
            }
        });
        for s in shards..before.unwrap_or(0) {
            self.shard_load_share_bp
                .remove(&with("shard", s.to_string()));
        }
        let Some(load) = load else {
            self.load_imbalance_bp.remove(&l);
            for rank in 1..=crate::hotspots::HOTTEST {
                self.hot_list_share_bp
                    .remove(&with("rank", rank.to_string()));
            }
            return;
        };
        self.load_imbalance_bp
            .get_or_create(&l)
            .set(bp(load.imbalance));
        for s in &load.shards {
            self.shard_load_share_bp
                .get_or_create(&with("shard", s.shard.to_string()))
                .set(bp(s.share));
        }
        for rank in 1..=crate::hotspots::HOTTEST {
            let share = load.hottest_lists.get(rank - 1).map_or(0.0, |h| h.share);
            self.hot_list_share_bp
                .get_or_create(&with("rank", rank.to_string()))
                .set(bp(share));
        }
    }

    /// Drops the series of a deleted index.
    pub fn forget_index(&self, ns: &str, index: &str) {
        self.set_load(ns, index, None);
        let l = Self::index_labels(ns, index);
        self.ready_shard_pods.remove(&l);
        self.ready_routers.remove(&l);
        self.gate_recall_bp.remove(&l);
        self.active_version_age_seconds.remove(&l);
        self.query_drift_bp.remove(&l);
        self.desired_shard_pods.remove(&l);
        self.desired_routers.remove(&l);
        let with = |k: &'static str, v: String| {
            let mut l = l.clone();
            l.push((k, v));
            l
        };
        for p in INDEX_PHASES {
            self.index_phase.remove(&with("phase", phase_name(p)));
        }
        for p in VERSION_PHASES {
            self.versions.remove(&with("phase", phase_name(p)));
            self.version_phase_seconds
                .remove(&with("phase", phase_name(p)));
        }
        for reason in FAILURE_REASONS {
            self.version_failures
                .remove(&with("reason", reason.to_string()));
        }
        if let Ok(mut s) = self.indexes.lock() {
            s.remove(&(ns.to_string(), index.to_string()));
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use quiver_api::v1alpha1::VersionStatus;

    fn version(name: &str, phase: VersionPhase, since: i64, reason: Option<&str>) -> VersionStatus {
        let mut v = VersionStatus::pending(name);
        v.phase = phase;
        v.last_transition_time = Some(Time(Timestamp::from_second(since).expect("time")));
        v.reason = reason.map(String::from);
        v
    }

    #[test]
    fn phase_figures_count_versions_and_time_in_the_phases_that_can_stick() {
        let st = VectorIndexStatus {
            versions: vec![
                version("v3-a", VersionPhase::Training, 1_000, None),
                version("v2-a", VersionPhase::Active, 500, None),
                version("v1-a", VersionPhase::Retired, 100, None),
            ],
            ..VectorIndexStatus::default()
        };
        let (counts, seconds) = phase_figures(&st, Timestamp::from_second(1_600).expect("now"));
        assert_eq!(counts["Training"], 1);
        assert_eq!(counts["Active"], 1);
        assert_eq!(counts["Gating"], 0);
        assert_eq!(counts.len(), 9);
        assert_eq!(seconds["Training"], 600);
        assert_eq!(seconds["Building"], 0);
        assert!(
            !seconds.contains_key("Active"),
            "an active version is not stuck"
        );
    }

    #[test]
    fn only_versions_that_just_failed_count_by_the_first_word_of_their_reason() {
        let old = VectorIndexStatus {
            versions: vec![
                version("v2-a", VersionPhase::Gating, 0, None),
                version("v1-a", VersionPhase::Failed, 0, Some("WarmFailed: x")),
            ],
            ..VectorIndexStatus::default()
        };
        let mut new = old.clone();
        new.versions[0] = version(
            "v2-a",
            VersionPhase::Failed,
            0,
            Some("GateFailed: recall 0.5"),
        );
        new.versions.push(version(
            "v3-a",
            VersionPhase::Failed,
            0,
            Some("GateError: no router"),
        ));
        new.versions.push(version(
            "v4-a",
            VersionPhase::Failed,
            0,
            Some("Superseded by v5"),
        ));
        assert_eq!(
            new_failures(&old, &new),
            ["GateFailed", "Other", "Superseded"]
        );
        assert!(new_failures(&new, &new).is_empty(), "counted once");
    }

    #[test]
    fn the_lifecycle_series_appear_and_go_with_the_index() {
        let m = Metrics::new();
        let old = VectorIndexStatus::default();
        let new = VectorIndexStatus {
            phase: Some(IndexPhase::Ready),
            versions: vec![version(
                "v1-a",
                VersionPhase::Failed,
                0,
                Some("GateFailed: r"),
            )],
            ..VectorIndexStatus::default()
        };
        m.set_lifecycle(
            "ns",
            "docs",
            &old,
            &new,
            Timestamp::from_second(10).expect("now"),
            (4, 2),
        );
        let text = m.encode();
        assert!(
            text.contains(
                r#"quiver_operator_index_phase{namespace="ns",index="docs",phase="Ready"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"quiver_operator_index_phase{namespace="ns",index="docs",phase="Pending"} 0"#
        ));
        assert!(text.contains(r#"quiver_operator_index_version_failures_total{namespace="ns",index="docs",reason="GateFailed"} 1"#), "{text}");
        assert!(text.contains(r#"quiver_operator_index_version_failures_total{namespace="ns",index="docs",reason="WarmFailed"} 0"#), "{text}");
        assert!(text.contains(
            r#"quiver_operator_index_desired_shard_pods{namespace="ns",index="docs"} 4"#
        ));
        m.forget_index("ns", "docs");
        assert!(!m.encode().contains("docs"), "{}", m.encode());
    }

    #[test]
    fn load_series_follow_the_status_and_go_with_shards_and_the_index() {
        use quiver_api::v1alpha1::{HotList, LoadStatus, ShardLoad};
        let m = Metrics::new();
        let shard = |shard, share| ShardLoad {
            shard,
            share,
            replicas: 1,
        };
        let mut load = LoadStatus {
            version: "v1".into(),
            imbalance: 1.6,
            shards: vec![shard(0, 0.8), shard(1, 0.2)],
            hottest_lists: vec![HotList {
                list: 7,
                shard: 0,
                share: 0.4,
                entries: 10,
            }],
            plan: None,
            measured_at: Time(Timestamp::from_second(0).expect("time")),
        };
        m.set_load("ns", "docs", Some(&load));
        let text = m.encode();
        for want in [
            r#"quiver_operator_index_load_imbalance_basis_points{namespace="ns",index="docs"} 16000"#,
            r#"quiver_operator_index_shard_load_share_basis_points{namespace="ns",index="docs",shard="0"} 8000"#,
            r#"quiver_operator_index_shard_load_share_basis_points{namespace="ns",index="docs",shard="1"} 2000"#,
            r#"quiver_operator_index_hot_list_share_basis_points{namespace="ns",index="docs",rank="1"} 4000"#,
            r#"quiver_operator_index_hot_list_share_basis_points{namespace="ns",index="docs",rank="5"} 0"#,
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
        // No list id ever becomes a label.
        assert!(!text.contains("list=\""), "{text}");
        load.shards.truncate(1);
        m.set_load("ns", "docs", Some(&load));
        assert!(!m.encode().contains(r#"shard="1""#), "{}", m.encode());
        m.forget_index("ns", "docs");
        assert!(!m.encode().contains("docs"), "{}", m.encode());
    }
}
