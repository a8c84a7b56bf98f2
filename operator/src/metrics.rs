//! The operator's Prometheus metrics, one registry per process. Labels are bounded: the
//! reconcile step and a fixed reason set, and per index (namespace, name) gauges, removed
//! when the index goes.

use std::sync::Mutex;

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
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    indexes: Mutex<std::collections::BTreeSet<(String, String)>>,
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
            leader: Gauge::default(),
            indexes: Mutex::default(),
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

    /// Records the query drift of one index's active version.
    pub fn set_drift(&self, ns: &str, index: &str, statistic: f64) {
        self.query_drift_bp
            .get_or_create(&Self::index_labels(ns, index))
            .set((statistic * 10_000.0).round() as i64);
    }

    /// Drops the series of a deleted index.
    pub fn forget_index(&self, ns: &str, index: &str) {
        let l = Self::index_labels(ns, index);
        self.ready_shard_pods.remove(&l);
        self.ready_routers.remove(&l);
        self.gate_recall_bp.remove(&l);
        self.active_version_age_seconds.remove(&l);
        self.query_drift_bp.remove(&l);
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
