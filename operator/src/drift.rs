//! Query drift (pure): routers count live queries per bucket of their distance to the nearest
//! centroid, the buckets being the 20 ventiles of the same distance over the version's
//! held-out vectors (`Admin/Status` `drift_counts`). Under no drift the counts are uniform.
//!
//! The statistic is the Kolmogorov–Smirnov distance between the two distributions, evaluated
//! at the bucket edges: the largest gap between the live queries' cumulative share and the
//! reference's (i/20). It is scale-free (a shift of the data's scale by any factor reads the
//! same), bounded in [0, 1], and needs no parameter: 0 alike, 1 disjoint. Only the coarse
//! step's distance is compared, so it measures where queries fall relative to the centroids,
//! which is what drives which lists are probed and how well they hold the neighbours.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use quiver_api::v1alpha1::{DriftStatus, VersionStatus};

use crate::lifecycle::NodeReport;

/// Queries needed before a figure is published at all (fewer are mostly noise).
pub const MIN_PUBLISHED: u64 = 100;

/// How often the status figure is refreshed. Every status write wakes the controller again, so
/// a figure that moved with every query would keep it busy writing.
pub const REFRESH: Duration = Duration::from_secs(300);

/// The KS distance of live counts per equiprobable bucket against the uniform reference;
/// None without counts.
pub fn ks_statistic(counts: &[u64]) -> Option<f64> {
    let n: u64 = counts.iter().sum();
    let b = counts.len();
    if n == 0 || b < 2 {
        return None;
    }
    let mut cum = 0u64;
    let mut worst = 0f64;
    // The last edge is the total: both shares are 1 there.
    for (i, c) in counts.iter().take(b - 1).enumerate() {
        cum += c;
        let gap = (cum as f64 / n as f64 - (i + 1) as f64 / b as f64).abs();
        worst = worst.max(gap);
    }
    Some(worst)
}

/// The drift of `version` over every router that reported counts for it (summed bucket by
/// bucket; routers with another bucket count are skipped). None below [`MIN_PUBLISHED`].
pub fn measure(version: &str, routers: &[NodeReport], now: Timestamp) -> Option<DriftStatus> {
    let mut sum: Vec<u64> = Vec::new();
    for r in routers {
        let Some(c) = r.drift.get(version) else {
            continue;
        };
        if sum.is_empty() {
            sum = vec![0; c.len()];
        }
        if c.len() != sum.len() {
            continue;
        }
        for (s, x) in sum.iter_mut().zip(c) {
            *s += x;
        }
    }
    let queries: u64 = sum.iter().sum();
    if queries < MIN_PUBLISHED {
        return None;
    }
    Some(DriftStatus {
        version: version.to_string(),
        statistic: (ks_statistic(&sum)? * 1000.0).round() / 1000.0,
        queries,
        measured_at: Time(now),
    })
}

/// The figure to store: the stored one while it is fresh and of the same version, else the
/// new measurement (or the stored one when nothing could be measured).
pub fn to_publish(
    stored: Option<&DriftStatus>,
    measured: Option<&DriftStatus>,
    active: Option<&str>,
    now: Timestamp,
) -> Option<DriftStatus> {
    let stored = stored.filter(|d| Some(d.version.as_str()) == active);
    let fresh = stored
        .filter(|d| now.duration_since(d.measured_at.0).as_secs_f64() < REFRESH.as_secs_f64());
    fresh
        .or(measured.filter(|d| Some(d.version.as_str()) == active))
        .or(stored)
        .cloned()
}

/// Whether drift asks for a retrain: a threshold is set, the figure of the active version is
/// above it on enough queries, the newest version is the active one (nothing in preparation
/// or failed since), and that version was not itself made for drift (retraining on the same
/// data again cannot follow queries that moved away from it).
pub fn triggers(
    drift: Option<&DriftStatus>,
    threshold: Option<(f64, u64)>,
    active: Option<&str>,
    versions: &[VersionStatus],
) -> bool {
    let (Some(d), Some((threshold, min_queries)), Some(active)) = (drift, threshold, active) else {
        return false;
    };
    let Some(newest) = versions.first() else {
        return false;
    };
    d.version == active
        && d.queries >= min_queries
        && d.statistic > threshold
        && newest.name == active
        && !newest
            .trigger
            .as_deref()
            .is_some_and(|t| t.starts_with("drift"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_api::v1alpha1::VersionPhase;

    #[test]
    fn uniform_counts_read_zero_and_disjoint_ones_nearly_one() {
        assert_eq!(ks_statistic(&[50; 20]), Some(0.0));
        // Everything in the top bucket: the live share stays 0 until the last edge (0.95).
        let mut top = [0u64; 20];
        top[19] = 1000;
        assert!((ks_statistic(&top).expect("ks") - 0.95).abs() < 1e-12);
        // Half the mass in the bottom bucket: 0.5 vs 0.05 at the first edge.
        let mut half = [25u64; 20];
        half[0] = 525;
        let ks = ks_statistic(&half).expect("ks");
        assert!((ks - (525.0 / 1000.0 - 0.05)).abs() < 1e-12, "{ks}");
        assert_eq!(ks_statistic(&[0; 20]), None);
        assert_eq!(ks_statistic(&[]), None);
    }

    fn router(version: &str, counts: Vec<u64>) -> NodeReport {
        NodeReport {
            pod: "docs-router-a".into(),
            drift: [(version.to_string(), counts)].into(),
            ..NodeReport::default()
        }
    }

    #[test]
    fn routers_are_summed_and_small_samples_not_published() {
        let a = router("v1-7f3a9c2e", vec![5; 20]);
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        assert_eq!(
            measure("v1-7f3a9c2e", &[router("v1-7f3a9c2e", vec![4; 20])], now),
            None,
            "100 needed"
        );
        let mut skewed = vec![0u64; 20];
        skewed[19] = 100;
        let b = router("v1-7f3a9c2e", skewed);
        let d = measure(
            "v1-7f3a9c2e",
            &[a, b, router("v1-7f3a9c2e", vec![1; 3])],
            now,
        )
        .expect("published");
        assert_eq!(d.queries, 200);
        // 100 uniform + 100 in the top bucket: at edge 19 the live share is 95/200 vs 0.95.
        assert_eq!(d.statistic, 0.475);
        assert_eq!(measure("v2-7f3a9c2e", &[], now), None);
    }

    #[test]
    fn the_status_figure_is_refreshed_at_most_every_five_minutes() {
        let t = |s: i64| Timestamp::from_second(1_800_000_000 + s).expect("time");
        let at = |s: i64, stat: f64| DriftStatus {
            version: "v1-7f3a9c2e".into(),
            statistic: stat,
            queries: 500,
            measured_at: Time(t(s)),
        };
        let stored = at(0, 0.1);
        let new = at(60, 0.3);
        let a = Some("v1-7f3a9c2e");
        assert_eq!(
            to_publish(Some(&stored), Some(&new), a, t(60)),
            Some(stored.clone())
        );
        let later = at(301, 0.3);
        assert_eq!(
            to_publish(Some(&stored), Some(&later), a, t(301)),
            Some(later)
        );
        // Nothing measured: keep what is stored; another version's figure goes.
        assert_eq!(
            to_publish(Some(&stored), None, a, t(900)),
            Some(stored.clone())
        );
        assert_eq!(
            to_publish(Some(&stored), None, Some("v2-7f3a9c2e"), t(10)),
            None
        );
    }

    fn version(name: &str, trigger: &str) -> VersionStatus {
        let mut v = VersionStatus::pending(name);
        v.phase = VersionPhase::Active;
        v.trigger = Some(trigger.into());
        v
    }

    #[test]
    fn drift_triggers_once_per_version_above_the_threshold() {
        let d = DriftStatus {
            version: "v1-7f3a9c2e".into(),
            statistic: 0.4,
            queries: 5000,
            measured_at: Time(Timestamp::from_second(1_800_000_000).expect("time")),
        };
        let vs = vec![version("v1-7f3a9c2e", "create")];
        let t = Some((0.25, 1000));
        assert!(triggers(Some(&d), t, Some("v1-7f3a9c2e"), &vs));
        // No threshold: published only.
        assert!(!triggers(Some(&d), None, Some("v1-7f3a9c2e"), &vs));
        // Below it, or too few queries.
        assert!(!triggers(
            Some(&d),
            Some((0.5, 1000)),
            Some("v1-7f3a9c2e"),
            &vs
        ));
        assert!(!triggers(
            Some(&d),
            Some((0.25, 10_000)),
            Some("v1-7f3a9c2e"),
            &vs
        ));
        // A figure of another version (stale after a swap).
        assert!(!triggers(Some(&d), t, Some("v2-7f3a9c2e"), &vs));
        // Something newer than the active one (in preparation, or failed): not again.
        let newer = vec![version("v2-7f3a9c2e", "drift:0.4"), vs[0].clone()];
        assert!(!triggers(Some(&d), t, Some("v1-7f3a9c2e"), &newer));
        // The active version was made for drift: never again for drift.
        let d2 = DriftStatus {
            version: "v2-7f3a9c2e".into(),
            ..d.clone()
        };
        let made_for_drift = vec![version("v2-7f3a9c2e", "drift:0.4")];
        assert!(!triggers(
            Some(&d2),
            t,
            Some("v2-7f3a9c2e"),
            &made_for_drift
        ));
    }
}
