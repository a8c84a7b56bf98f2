//! Replicas for hot shards (pure: no I/O). When, in Auto mode, the imbalance has stayed above
//! `spec.rebalance.threshold` for a whole window and no split or move is left to act on, the
//! shard with the highest load per replica gets one more replica, up to
//! `spec.rebalance.maxReplicasPerShard`; routers spread its queries over them. A shard gives
//! one replica back once its load has fit one replica fewer (below the threshold's midpoint,
//! so it does not flap) for a whole window, or at once when the spec no longer allows it.
//!
//! The counts live in `status.hotShards`, so an operator restart keeps them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use quiver_api::v1alpha1::{HotShard, LoadStatus};

use crate::lifecycle::Note;

/// What one reconcile knows about the load.
#[derive(Debug, Clone, Copy)]
pub enum Sample<'a> {
    /// No sample was taken now: nothing changes.
    None,
    /// A sample counted no query: every shard is cool.
    Idle,
    /// The active version's load, measured now.
    Load(&'a LoadStatus),
}

/// The spec's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub shards: u32,
    /// `spec.replicas`.
    pub replicas: u32,
    /// `spec.rebalance.maxReplicasPerShard` in Auto mode, else `spec.replicas`.
    pub max: u32,
    pub threshold: f64,
    pub window_secs: i64,
}

/// Event reasons.
pub const GREW: &str = "ShardReplicaAdded";
pub const SHRANK: &str = "ShardReplicaRemoved";

/// One Event per shard whose replica count changed between `old` and `new`.
pub fn notes(old: &[HotShard], new: &[HotShard], load: Option<&LoadStatus>) -> Vec<Note> {
    let shards = old.iter().chain(new).map(|h| h.shard);
    let mut seen = std::collections::BTreeSet::new();
    shards
        .filter(|s| seen.insert(*s))
        .filter_map(|s| {
            let count = |hot: &[HotShard]| hot.iter().find(|h| h.shard == s).map(|h| h.replicas);
            let (was, now) = (count(old), count(new));
            if was == now {
                return None;
            }
            let share = load
                .and_then(|l| l.shards.iter().find(|x| x.shard == s))
                .map_or(String::new(), |x| {
                    format!(" ({:.0}% of the load)", x.share * 100.0)
                });
            let (reason, message) = if now.unwrap_or(0) > was.unwrap_or(0) {
                (
                    GREW,
                    format!(
                        "shard {s} stays hot{share} and no split or move is left: {} replicas",
                        now.unwrap_or(0)
                    ),
                )
            } else {
                (
                    SHRANK,
                    match now {
                        Some(n) => format!("shard {s} cooled{share}: back to {n} replicas"),
                        None => format!("shard {s} cooled{share}: back to spec.replicas"),
                    },
                )
            };
            Some(Note {
                warning: false,
                reason: reason.into(),
                version: String::new(),
                message,
            })
        })
        .collect()
}

/// Replicas of `shard` under `hot`.
pub fn replicas_of(hot: &[HotShard], shard: u32, spec_replicas: u32) -> u32 {
    hot.iter()
        .find(|h| h.shard == shard)
        .map_or(spec_replicas, |h| h.replicas.max(spec_replicas))
}

/// The hot shards after this reconcile. `grow`: Auto's window has passed with nothing else to
/// do (no split, no move), so the hottest shard may get a replica.
pub fn next(
    current: &[HotShard],
    b: Bounds,
    sample: Sample<'_>,
    grow: bool,
    now: Timestamp,
) -> Vec<HotShard> {
    // What the spec still allows: shards that exist, within max, above spec.replicas.
    let mut hot: Vec<HotShard> = current
        .iter()
        .filter(|h| h.shard < b.shards)
        .map(|h| HotShard {
            replicas: h.replicas.min(b.max),
            ..h.clone()
        })
        .filter(|h| h.replicas > b.replicas)
        .collect();
    let load = match sample {
        Sample::None => return hot,
        Sample::Idle => None,
        Sample::Load(l) => Some(l),
    };
    let share = |shard: u32| {
        load.and_then(|l| l.shards.iter().find(|s| s.shard == shard))
            .map_or(0.0, |s| s.share)
    };
    let total: u32 = (0..b.shards)
        .map(|s| replicas_of(&hot, s, b.replicas))
        .sum();
    // Cool: with one replica fewer it would still be below the midpoint of 1 and the
    // threshold, measured against the mean per replica of the smaller cluster.
    let low = 1.0 + (b.threshold - 1.0) / 2.0;
    for h in &mut hot {
        let fewer = f64::from(h.replicas - 1);
        let mean = 1.0 / f64::from(total.saturating_sub(1).max(1));
        let cool = share(h.shard) / fewer <= low * mean;
        if !cool {
            h.cool_since = None;
            continue;
        }
        let since = h.cool_since.get_or_insert(Time(now)).0;
        if now.duration_since(since).as_secs() >= b.window_secs {
            h.replicas -= 1;
            h.cool_since = None;
        }
    }
    hot.retain(|h| h.replicas > b.replicas);
    if let (true, Some(l)) = (grow, load) {
        let per_replica = |s: u32| share(s) / f64::from(replicas_of(&hot, s, b.replicas));
        let hottest = (0..b.shards)
            .max_by(|&a, &c| per_replica(a).total_cmp(&per_replica(c)).then(c.cmp(&a)));
        if let Some(s) = hottest.filter(|_| l.imbalance > b.threshold) {
            let r = replicas_of(&hot, s, b.replicas);
            if r < b.max {
                match hot.iter_mut().find(|h| h.shard == s) {
                    Some(h) => {
                        h.replicas = r + 1;
                        h.cool_since = None;
                    }
                    None => hot.push(HotShard {
                        shard: s,
                        replicas: r + 1,
                        cool_since: None,
                    }),
                }
                hot.sort_by_key(|h| h.shard);
            }
        }
    }
    hot
}

#[cfg(test)]
mod tests {
    use quiver_api::v1alpha1::ShardLoad;

    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    fn bounds(max: u32) -> Bounds {
        Bounds {
            shards: 4,
            replicas: 1,
            max,
            threshold: 1.5,
            window_secs: 60,
        }
    }

    /// Shares of 4 shards; the imbalance as the status computes it (per replica over mean).
    fn load(shares: [f64; 4], replicas: [u32; 4]) -> LoadStatus {
        let total: u32 = replicas.iter().sum();
        let mean = 1.0 / f64::from(total);
        let max = shares
            .iter()
            .zip(replicas)
            .map(|(s, r)| s / f64::from(r))
            .fold(0.0, f64::max);
        LoadStatus {
            version: "v1".into(),
            imbalance: max / mean,
            shards: (0..4)
                .map(|i| ShardLoad {
                    shard: i as u32,
                    share: shares[i],
                    replicas: replicas[i],
                })
                .collect(),
            hottest_lists: Vec::new(),
            plan: None,
            measured_at: Time(at(0)),
        }
    }

    fn counts(hot: &[HotShard]) -> Vec<(u32, u32)> {
        hot.iter().map(|h| (h.shard, h.replicas)).collect()
    }

    #[test]
    fn the_hottest_shard_grows_one_replica_at_a_time_up_to_the_maximum() {
        let l = load([0.7, 0.1, 0.1, 0.1], [1, 1, 1, 1]);
        let hot = next(&[], bounds(3), Sample::Load(&l), true, at(0));
        assert_eq!(counts(&hot), [(0, 2)]);
        // Not without the window (grow = false), nor without a sample.
        assert_eq!(
            counts(&next(&[], bounds(3), Sample::Load(&l), false, at(0))),
            []
        );
        assert_eq!(
            counts(&next(&hot, bounds(3), Sample::None, true, at(1))),
            [(0, 2)]
        );
        let l = load([0.7, 0.1, 0.1, 0.1], [2, 1, 1, 1]);
        let hot = next(&hot, bounds(3), Sample::Load(&l), true, at(60));
        assert_eq!(counts(&hot), [(0, 3)]);
        let l = load([0.7, 0.1, 0.1, 0.1], [3, 1, 1, 1]);
        assert_eq!(
            counts(&next(&hot, bounds(3), Sample::Load(&l), true, at(120))),
            [(0, 3)]
        );
        // Maximum = spec.replicas (the default): never.
        assert_eq!(
            counts(&next(&[], bounds(1), Sample::Load(&l), true, at(0))),
            []
        );
        // Below the threshold: no growth even after a window.
        let even = load([0.3, 0.25, 0.25, 0.2], [1, 1, 1, 1]);
        assert_eq!(
            counts(&next(&[], bounds(3), Sample::Load(&even), true, at(0))),
            []
        );
    }

    #[test]
    fn a_cooled_shard_gives_a_replica_back_after_a_window_and_heat_resets_the_clock() {
        let hot = vec![HotShard {
            shard: 0,
            replicas: 3,
            cool_since: None,
        }];
        // Shard 0 at 0.4 over 3 replicas: with 2, 0.2 each against a mean of 1/5 = 0.2:
        // cool (below 1.25 × 0.2).
        let l = load([0.4, 0.2, 0.2, 0.2], [3, 1, 1, 1]);
        let h = next(&hot, bounds(3), Sample::Load(&l), false, at(0));
        assert_eq!(counts(&h), [(0, 3)]);
        assert_eq!(h[0].cool_since, Some(Time(at(0))));
        // Hot again before the window ends: the clock resets.
        let heat = load([0.8, 0.1, 0.05, 0.05], [3, 1, 1, 1]);
        let h2 = next(&h, bounds(3), Sample::Load(&heat), false, at(30));
        assert_eq!(h2[0].cool_since, None);
        // Cool for a whole window: one replica back, and the clock starts over.
        let h = next(&h, bounds(3), Sample::Load(&l), false, at(59));
        assert_eq!(counts(&h), [(0, 3)]);
        let h = next(&h, bounds(3), Sample::Load(&l), false, at(60));
        assert_eq!(counts(&h), [(0, 2)]);
        assert_eq!(h[0].cool_since, None);
        // No traffic at all: cool; after a window the last extra replica goes.
        let h = next(&h, bounds(3), Sample::Idle, false, at(61));
        let h = next(&h, bounds(3), Sample::Idle, false, at(121));
        assert_eq!(counts(&h), []);
    }

    #[test]
    fn a_change_of_count_is_one_event_per_shard() {
        let h = |shard, replicas| HotShard {
            shard,
            replicas,
            cool_since: None,
        };
        let l = load([0.7, 0.1, 0.1, 0.1], [2, 1, 1, 1]);
        let n = notes(&[h(2, 2)], &[h(0, 2), h(2, 2)], Some(&l));
        assert_eq!(n.len(), 1, "{n:?}");
        assert_eq!(n[0].reason, GREW);
        assert!(
            n[0].message
                .starts_with("shard 0 stays hot (70% of the load)"),
            "{n:?}"
        );
        let n = notes(&[h(0, 3)], &[], None);
        assert_eq!(
            (n[0].reason.as_str(), n[0].message.as_str()),
            (SHRANK, "shard 0 cooled: back to spec.replicas")
        );
        assert!(notes(&[h(0, 3)], &[h(0, 3)], None).is_empty());
    }

    #[test]
    fn the_spec_bounds_apply_at_once() {
        let hot = vec![
            HotShard {
                shard: 0,
                replicas: 4,
                cool_since: None,
            },
            HotShard {
                shard: 7,
                replicas: 2,
                cool_since: None,
            },
        ];
        // Max lowered to 2 (or Auto turned off: max = spec.replicas) and shard 7 gone.
        let h = next(&hot, bounds(2), Sample::None, false, at(0));
        assert_eq!(counts(&h), [(0, 2)]);
        assert_eq!(
            counts(&next(&hot, bounds(1), Sample::None, false, at(0))),
            []
        );
        assert_eq!(replicas_of(&h, 0, 1), 2);
        assert_eq!(replicas_of(&h, 1, 1), 1);
    }
}
