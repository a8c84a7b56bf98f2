//! Prometheus metrics: one registry per process.
//!
//! Label cardinality is bounded: gRPC code (a fixed set), shard number (the shard count),
//! version (the few versions a node holds; series of dropped versions are removed). No
//! per-vector or per-list labels: per-list statistics go through the Admin API instead.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(&'static str, String)>;

fn latency() -> Histogram {
    // 50 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    /// End-to-end latency of Search (router) or ShardSearch (shard), per query vector.
    pub query_seconds: Histogram,
    pub nprobe: Histogram,
    pub candidates: Histogram,
    pub errors: Family<Labels, Counter>,
    pub inflight: Gauge,
    /// Router -> shard calls, by shard and outcome (ok, error, retried).
    pub shard_calls: Family<Labels, Counter>,
    pub shard_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Router: queries per call to a shard replica (1 = a plain ShardSearch; more = the
    /// queries that waited while the replica's calls were in flight, sent as one batch).
    pub shard_batch: Histogram,
    /// Router: replicas per shard by state (up, down = skipped after a failure).
    pub shard_replicas: Family<Labels, Gauge>,
    /// Per version: 0 loading, 1 warm, 2 active, -1 failed.
    pub version_state: Family<Labels, Gauge>,
    pub version_vectors: Family<Labels, Gauge>,
    pub version_bytes: Family<Labels, Gauge>,
    pub answers_by_version: Family<Labels, Counter>,
    /// Router: recall@k of the active version from the canary's last round.
    pub canary_recall: Gauge<f64, AtomicU64>,
    /// Router: canary rounds by outcome (ok, error).
    pub canary_rounds: Family<Labels, Counter>,
}

impl Metrics {
    pub fn new(role: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "quiver",
            [(
                std::borrow::Cow::Borrowed("role"),
                std::borrow::Cow::Owned(role.to_string()),
            )]
            .into_iter(),
        );
        let m = Self {
            query_seconds: latency(),
            nprobe: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            candidates: Histogram::new(exponential_buckets(16.0, 4.0, 12)),
            errors: Family::default(),
            inflight: Gauge::default(),
            shard_calls: Family::default(),
            shard_seconds: Family::new_with_constructor(latency as fn() -> Histogram),
            shard_batch: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            shard_replicas: Family::default(),
            version_state: Family::default(),
            version_vectors: Family::default(),
            version_bytes: Family::default(),
            answers_by_version: Family::default(),
            canary_recall: Gauge::default(),
            canary_rounds: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "query_duration_seconds",
            "Query latency per query vector",
            m.query_seconds.clone(),
        );
        registry.register("query_nprobe", "Lists probed per query", m.nprobe.clone());
        registry.register(
            "query_candidates_scanned",
            "Candidates scanned per query",
            m.candidates.clone(),
        );
        registry.register("errors", "Failed requests by gRPC code", m.errors.clone());
        registry.register("inflight_queries", "Queries in flight", m.inflight.clone());
        registry.register(
            "version_state",
            "Per version: 0 loading, 1 warm, 2 active, -1 failed",
            m.version_state.clone(),
        );
        registry.register(
            "version_vectors",
            "Vectors held per version",
            m.version_vectors.clone(),
        );
        registry.register(
            "version_bytes",
            "Bytes held per version",
            m.version_bytes.clone(),
        );
        registry.register(
            "answers",
            "Answered queries by version",
            m.answers_by_version.clone(),
        );
        // Router -> shard call families exist only on routers (a shard makes no such calls).
        if role == "router" {
            registry.register(
                "shard_calls",
                "Router calls to shards by shard and outcome",
                m.shard_calls.clone(),
            );
            registry.register(
                "shard_call_duration_seconds",
                "Router-to-shard call latency",
                m.shard_seconds.clone(),
            );
            registry.register(
                "shard_batch_queries",
                "Router: queries per call to a shard replica",
                m.shard_batch.clone(),
            );
            registry.register(
                "canary_recall",
                "Router: recall@k of the active version in the canary's last round (evaluation queries with exact neighbours)",
                m.canary_recall.clone(),
            );
            registry.register(
                "canary_rounds",
                "Router: canary rounds by outcome (ok, error)",
                m.canary_rounds.clone(),
            );
            registry.register(
                "shard_replicas",
                "Router: shard replicas by state (down = skipped after a failure)",
                m.shard_replicas.clone(),
            );
        }
        Self { registry, ..m }
    }

    pub fn error(&self, code: tonic::Code) {
        self.errors
            .get_or_create(&vec![("code", format!("{code:?}"))])
            .inc();
    }

    /// The per-version families, for the version holder.
    pub fn version_gauges(&self) -> VersionGauges {
        VersionGauges {
            state: self.version_state.clone(),
            vectors: self.version_vectors.clone(),
            bytes: self.version_bytes.clone(),
            answers: self.answers_by_version.clone(),
        }
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        if let Err(e) = encode(&mut s, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        s
    }
}

/// Handles on the per-version families (they share their series with [`Metrics`]).
#[derive(Clone)]
pub struct VersionGauges {
    state: Family<Labels, Gauge>,
    vectors: Family<Labels, Gauge>,
    bytes: Family<Labels, Gauge>,
    answers: Family<Labels, Counter>,
}

impl VersionGauges {
    pub fn state(&self, version: &str, state: i64) {
        self.state.get_or_create(&labels(version)).set(state);
    }

    pub fn sizes(&self, version: &str, vectors: u64, bytes: Option<u64>) {
        let l = labels(version);
        self.vectors.get_or_create(&l).set(vectors as i64);
        if let Some(b) = bytes {
            self.bytes.get_or_create(&l).set(b as i64);
        }
    }

    /// Removes every series of a dropped version (keeps label cardinality bounded).
    pub fn forget(&self, version: &str) {
        let l = labels(version);
        self.state.remove(&l);
        self.vectors.remove(&l);
        self.bytes.remove(&l);
        self.answers.remove(&l);
    }
}

fn labels(version: &str) -> Labels {
    vec![("version", version.to_string())]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metric family names in the text exposition (`# TYPE <name> <kind>`), with one series
    /// in every labelled family (an empty family is not exposed at all).
    fn families(m: &Metrics) -> Vec<String> {
        let l = |k: &'static str| vec![(k, "0".to_string())];
        m.errors.get_or_create(&l("code")).inc();
        m.shard_calls.get_or_create(&l("shard")).inc();
        m.shard_seconds.get_or_create(&l("shard")).observe(0.1);
        m.shard_replicas.get_or_create(&l("shard")).set(1);
        let g = m.version_gauges();
        g.state("v", 1);
        g.sizes("v", 1, Some(1));
        m.answers_by_version.get_or_create(&l("version")).inc();
        m.canary_rounds.get_or_create(&l("outcome")).inc();
        m.encode()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn router_only_families_are_not_exported_by_shards() {
        let shard = families(&Metrics::new("shard"));
        let router = families(&Metrics::new("router"));
        for f in [
            "quiver_shard_batch_queries",
            "quiver_shard_calls",
            "quiver_shard_call_duration_seconds",
            "quiver_shard_replicas",
            "quiver_canary_recall",
            "quiver_canary_rounds",
        ] {
            assert!(!shard.iter().any(|s| s == f), "shard exports {f}");
            assert!(
                router.iter().any(|s| s == f),
                "router lacks {f}: {router:?}"
            );
        }
        assert!(shard.iter().any(|s| s == "quiver_query_duration_seconds"));
    }

    /// The README's metric table names every family either role exports.
    #[test]
    fn readme_lists_every_metric_family() {
        let readme = include_str!("../../README.md");
        let mut all = families(&Metrics::new("router"));
        all.extend(families(&Metrics::new("shard")));
        assert_eq!(
            all.iter().filter(|f| f.starts_with("quiver_")).count(),
            all.len()
        );
        for f in &all {
            assert!(
                readme.contains(&format!("`{f}")),
                "README.md does not list the metric family {f}"
            );
        }
    }
}
