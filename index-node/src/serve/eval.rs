//! Recall against a version's evaluation queries (held out of training, with their exact
//! neighbours): measured once by the operator's gate (Admin/Evaluate) and, on routers, again
//! and again by the canary, which sends a few of them through the active version on an
//! interval. The gate says a version was good when it went active; the canary says it still
//! is (a shard serving a damaged copy, a replica answering from the wrong files).

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

use super::Node;
use super::router::{Asked, RouterState, RouterVersion};

/// Evaluation queries are asked like the gate asks them: whole answers only, and not
/// counted as live traffic (drift and per-list load are live traffic's).
pub const EVAL: Asked = Asked {
    allow_partial: false,
    live: false,
};

/// Mean recall@k over the evaluation queries `rows` of `v` (`k` at most the stored
/// neighbours per query). Empty `rows`: recall 0 of 0 queries.
pub async fn recall(
    r: &RouterState,
    node: &Node,
    v: &Arc<RouterVersion>,
    k: usize,
    nprobe: usize,
    rows: impl Iterator<Item = usize>,
) -> Result<(f64, usize), Status> {
    let Some(eval) = &v.eval else {
        return Err(Status::failed_precondition(format!(
            "version {} has no evaluation queries",
            v.name
        )));
    };
    let mut found = 0usize;
    let mut n = 0usize;
    for i in rows {
        let ans = r
            .search_one(node, v, eval.queries.row(i), k, nprobe, EVAL)
            .await?;
        let gt = &eval.gt[i * eval.k..i * eval.k + k];
        found += ans
            .ids
            .iter()
            .filter(|id| gt.iter().any(|g| *g as i64 as u64 == **id))
            .count();
        n += 1;
    }
    let recall = if n == 0 {
        0.0
    } else {
        found as f64 / (n * k) as f64
    };
    Ok((recall, n))
}

/// The canary's settings (router flags).
#[derive(Debug, Clone, Copy)]
pub struct Canary {
    /// Between two rounds; zero turns the canary off.
    pub interval: Duration,
    /// Evaluation queries per round, taken in turn through the whole set.
    pub queries: usize,
    /// Recall@k: at most the stored neighbours per query.
    pub k: usize,
}

/// Rounds of the canary until the process ends: each measures the active version at its
/// default nprobe (the router's, as queries get it) on the next `queries` evaluation queries and publishes the recall (or counts
/// a failed round with its reason in the log).
pub async fn run(r: Arc<RouterState>, node: Arc<Node>, c: Canary) {
    if c.interval.is_zero() || c.queries == 0 {
        return;
    }
    let mut next = 0usize;
    let mut ticker = tokio::time::interval(c.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(v) = r.active.load_full() else {
            continue;
        };
        let Some(eval) = &v.eval else {
            continue;
        };
        let total = eval.queries.len();
        if total == 0 {
            continue;
        }
        let k = c.k.clamp(1, eval.k.max(1));
        let start = next % total;
        next = start + c.queries;
        let rows = (start..start + c.queries.min(total)).map(|i| i % total);
        let nprobe = r.default_nprobe(&v).min(v.manifest.nlist).max(1);
        let m = &node.metrics;
        match recall(&r, &node, &v, k, nprobe, rows).await {
            Ok((recall, _)) => {
                m.canary_recall.set(recall);
                m.canary_rounds
                    .get_or_create(&vec![("outcome", "ok".to_string())])
                    .inc();
            }
            Err(e) => {
                m.canary_rounds
                    .get_or_create(&vec![("outcome", "error".to_string())])
                    .inc();
                tracing::warn!(version = %v.name, code = ?e.code(), error = %e.message(), "canary round failed");
            }
        }
    }
}
