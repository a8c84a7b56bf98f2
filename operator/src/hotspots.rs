//! What the status says of where query load falls (pure): each shard's share of the active
//! version's load and its replicas, the hottest lists, and the plan that moving whole lists
//! would make now (`status.load`). Figures are rounded to the precision shown, and the status
//! is rewritten only when one of them changes, so steady traffic costs no writes.
//!
//! Loads come from [`crate::listload::LoadTracker`] (per list, scan cost per second); the plan
//! from [`crate::rebalance::plan`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use quiver_api::v1alpha1::{HotList, ListMove, LoadStatus, RebalancePlan, ShardLoad};

use crate::listload::hottest;
use crate::rebalance::{self, Limits, List};

/// Hottest lists in the status (and ranks in the metrics).
pub const HOTTEST: usize = 5;
/// Moves listed in the status at most; a longer plan is cut there (and judged as cut).
pub const MAX_MOVES: usize = 64;
/// Entries a list needs before the plan names it for a split. Each split of a list that stays
/// hot halves it, so this bounds how often one list is split (log2(size / this)); below it a
/// list is cheap to scan whoever holds it, and whole-list moves take over.
pub const MIN_SPLIT_ENTRIES: u64 = 32;
/// A published plan is kept while it stays this close (in imbalance) to a fresh one: loads
/// move a little with every sample, and equally good plans differ in which lists they move,
/// so re-planning from scratch would rewrite the status (and later, act) on noise.
pub const KEEP_PLAN_WITHIN: f64 = 0.05;

/// One measurement of the active version.
#[derive(Debug, Clone, Copy)]
pub struct Measured<'a> {
    pub version: &'a str,
    /// Load per list (scan cost per second).
    pub loads: &'a [f64],
    /// Entries per list.
    pub sizes: &'a [u64],
    /// Owning shard per list.
    pub owners: &'a [u32],
    /// Ready replicas per shard (at least 1 counted for each).
    pub replicas: &'a [u32],
    /// Bytes of one entry in a shard's memory.
    pub entry_bytes: u64,
    /// Bytes one plan may move (`spec.rebalance.maxBytesPerStep`).
    pub max_bytes: u64,
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// The status figures of `m`; None when there is no load to speak of (no traffic measured)
/// or the measurement does not fit together (lengths, owners beyond the shard count).
/// `previous` (the published plan) is kept when its moves still apply to the map and do
/// nearly as well as a fresh plan ([`KEEP_PLAN_WITHIN`]).
pub fn summarize(
    m: Measured<'_>,
    previous: Option<&RebalancePlan>,
    now: Timestamp,
) -> Option<LoadStatus> {
    let n = m.loads.len();
    if n == 0 || m.sizes.len() != n || m.owners.len() != n || m.replicas.is_empty() {
        return None;
    }
    let lists: Vec<List> = (0..n)
        .map(|i| List {
            bytes: m.sizes[i].saturating_mul(m.entry_bytes),
            load: m.loads[i],
            owner: m.owners[i],
        })
        .collect();
    let total: f64 = lists
        .iter()
        .map(|l| l.load)
        .filter(|x| x.is_finite() && *x > 0.0)
        .sum();
    if total <= 0.0 {
        return None;
    }
    let full = rebalance::plan(
        &lists,
        m.replicas,
        Limits {
            max_bytes: m.max_bytes,
            max_replicas: m.replicas.iter().copied().max().unwrap_or(1),
        },
    )
    .ok()?;
    let before = &full.before;
    let shards = before
        .per_replica
        .iter()
        .zip(m.replicas)
        .enumerate()
        .map(|(s, (per, &r))| ShardLoad {
            shard: s as u32,
            share: round(per * f64::from(r.max(1)) / total, 2),
            replicas: r,
        })
        .collect();
    let hottest_lists = hottest(m.loads, HOTTEST)
        .into_iter()
        .map(|(l, load)| HotList {
            list: l,
            shard: m.owners[l as usize],
            share: round(load / total, 2),
            entries: m.sizes[l as usize],
        })
        .collect();
    let fresh: Vec<ListMove> = full
        .moves
        .iter()
        .take(MAX_MOVES)
        .map(|mv| ListMove {
            list: mv.list,
            from: mv.from,
            to: mv.to,
            bytes: mv.bytes,
        })
        .collect();
    // Judge a plan as listed: a cut plan is worse than the planner's.
    let judge = |moves: &[ListMove]| -> Option<f64> {
        let mut owners = m.owners.to_vec();
        for mv in moves {
            let o = owners.get_mut(mv.list as usize)?;
            if *o != mv.from || mv.to as usize >= m.replicas.len() {
                return None;
            }
            *o = mv.to;
        }
        Some(rebalance::loads(&lists, &owners, m.replicas).imbalance())
    };
    let fresh_after = judge(&fresh)?;
    let (moves, after) = match previous.and_then(|p| Some((p, judge(&p.moves)?))) {
        Some((p, kept)) if !p.moves.is_empty() && kept <= fresh_after + KEEP_PLAN_WITHIN => {
            (p.moves.clone(), kept)
        }
        _ => (fresh, fresh_after),
    };
    let split = full
        .split
        .filter(|&l| m.sizes[l as usize] >= MIN_SPLIT_ENTRIES);
    let plan = (!moves.is_empty() || split.is_some()).then(|| RebalancePlan {
        bytes: moves.iter().map(|mv| mv.bytes).sum(),
        moves,
        imbalance_after: round(after, 2),
        split_list: split,
    });
    Some(LoadStatus {
        version: m.version.to_string(),
        imbalance: round(before.imbalance(), 2),
        shards,
        hottest_lists,
        plan,
        measured_at: Time(now),
    })
}

/// The figures of two statuses agree (everything but the time of measurement).
fn same_figures(a: &LoadStatus, b: &LoadStatus) -> bool {
    LoadStatus {
        measured_at: b.measured_at.clone(),
        ..a.clone()
    } == *b
}

/// What `status.load` should say: a new measurement whose figures changed; else the stored
/// one while it is of the active version (traffic paused or no sample this reconcile); else
/// nothing.
pub fn to_publish(
    old: Option<&LoadStatus>,
    measured: Option<LoadStatus>,
    active: Option<&str>,
) -> Option<LoadStatus> {
    let old = old.filter(|o| Some(o.version.as_str()) == active);
    match (old, measured) {
        (Some(o), Some(m)) if same_figures(o, &m) => Some(o.clone()),
        (_, Some(m)) if Some(m.version.as_str()) == active => Some(m),
        (o, _) => o.cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).expect("time")
    }

    /// 8 lists of 100 entries on 2 shards (lists 0-3 on shard 0), one replica each.
    fn skewed(loads: &[f64]) -> Option<LoadStatus> {
        skewed_after(loads, None)
    }

    #[test]
    fn shares_hottest_lists_and_a_plan_that_lowers_the_hot_shard() {
        let l = skewed(&[40.0, 20.0, 10.0, 10.0, 5.0, 5.0, 5.0, 5.0]).expect("load");
        assert_eq!(l.version, "v1");
        let shares: Vec<f64> = l.shards.iter().map(|s| s.share).collect();
        assert_eq!(shares, [0.8, 0.2]);
        // max 80 over mean 50.
        assert_eq!(l.imbalance, 1.6);
        let top: Vec<(u32, u32, f64)> = l
            .hottest_lists
            .iter()
            .map(|h| (h.list, h.shard, h.share))
            .collect();
        assert_eq!(top.len(), HOTTEST);
        assert_eq!(top[0], (0, 0, 0.4));
        assert_eq!(top[1], (1, 0, 0.2));
        let plan = l.plan.as_ref().expect("a plan");
        assert!(!plan.moves.is_empty());
        assert_eq!((plan.moves[0].from, plan.moves[0].to), (0, 1));
        assert_eq!(plan.bytes, plan.moves.len() as u64 * 1600);
        assert!(plan.imbalance_after < l.imbalance, "{plan:?}");
        assert_eq!(plan.split_list, None);
    }

    #[test]
    fn a_list_hotter_than_the_mean_shard_is_to_be_split_not_moved() {
        let l = skewed(&[90.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]).expect("load");
        let plan = l.plan.expect("a plan");
        assert_eq!(plan.split_list, Some(0));
        // The same list with too few entries to split: the moves are the plan.
        let small = summarize(
            Measured {
                version: "v1",
                loads: &[90.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                sizes: &[MIN_SPLIT_ENTRIES - 1, 100, 100, 100, 100, 100, 100, 100],
                owners: &[0, 0, 0, 0, 1, 1, 1, 1],
                replicas: &[1, 1],
                entry_bytes: 16,
                max_bytes: 1 << 30,
            },
            None,
            now(),
        )
        .expect("load");
        let plan = small.plan.expect("a plan");
        assert_eq!(plan.split_list, None);
        assert!(!plan.moves.is_empty(), "{plan:?}");
    }

    #[test]
    fn no_traffic_or_mismatched_lengths_say_nothing() {
        assert_eq!(skewed(&[0.0; 8]), None);
        assert_eq!(skewed(&[1.0; 7]), None);
        // Balanced: figures, no plan.
        let l = skewed(&[1.0; 8]).expect("load");
        assert_eq!(l.imbalance, 1.0);
        assert_eq!(l.plan, None);
    }

    /// `spec.rebalance.maxBytesPerStep` caps what one plan moves.
    #[test]
    fn the_byte_budget_cuts_the_plan() {
        let loads = [40.0, 20.0, 10.0, 10.0, 5.0, 5.0, 5.0, 5.0];
        let plan = |max_bytes| {
            summarize(
                Measured {
                    version: "v1",
                    loads: &loads,
                    sizes: &[100; 8],
                    owners: &[0, 0, 0, 0, 1, 1, 1, 1],
                    replicas: &[1, 1],
                    entry_bytes: 16,
                    max_bytes,
                },
                None,
                now(),
            )
            .and_then(|l| l.plan)
        };
        let free = plan(1 << 30).expect("a plan");
        assert!(free.moves.len() >= 2, "{free:?}");
        // One list is 1600 bytes: a budget of 2000 moves one.
        let cut = plan(2000).expect("a plan");
        assert_eq!(cut.moves.len(), 1, "{cut:?}");
        assert!(cut.bytes <= 2000);
        assert!(
            cut.imbalance_after > free.imbalance_after,
            "{cut:?} vs {free:?}"
        );
        assert_eq!(plan(1000), None, "no list fits");
    }

    #[test]
    fn more_replicas_carry_a_larger_share_at_the_same_load_per_replica() {
        let l = summarize(
            Measured {
                version: "v1",
                loads: &[2.0, 2.0, 1.0, 1.0],
                sizes: &[10; 4],
                owners: &[0, 0, 1, 1],
                replicas: &[2, 1],
                entry_bytes: 8,
                max_bytes: 1 << 30,
            },
            None,
            now(),
        )
        .expect("load");
        assert_eq!(l.imbalance, 1.0);
        assert_eq!(l.plan, None);
        assert_eq!(l.shards[0].replicas, 2);
    }

    /// [`skewed`], planned with the published plan `previous`.
    fn skewed_after(loads: &[f64], previous: Option<&RebalancePlan>) -> Option<LoadStatus> {
        summarize(
            Measured {
                version: "v1",
                loads,
                sizes: &[100; 8],
                owners: &[0, 0, 0, 0, 1, 1, 1, 1],
                replicas: &[1, 1],
                entry_bytes: 16,
                max_bytes: 1 << 30,
            },
            previous,
            now(),
        )
    }

    /// Equally good plans differ in the lists they move; a little noise in the loads picks
    /// another one. The published plan stays while it does nearly as well.
    #[test]
    fn a_published_plan_is_kept_while_it_stays_nearly_as_good() {
        let loads = [40.0, 20.0, 10.0, 10.0, 5.0, 5.0, 5.0, 5.0];
        let a = skewed(&loads).expect("load");
        let pa = a.plan.clone().expect("plan");
        let noisy = [40.1, 20.0, 10.0, 10.0, 5.0, 5.0, 5.0, 5.0];
        let fresh = skewed_after(&noisy, None)
            .expect("load")
            .plan
            .expect("plan");
        let kept = skewed_after(&noisy, Some(&pa))
            .expect("load")
            .plan
            .expect("plan");
        assert_eq!(kept.moves, pa.moves, "fresh would have been {fresh:?}");
        // A plan whose moves no longer fit the map (a list it moves is elsewhere) is replaced.
        let mut stale = pa.clone();
        stale.moves[0].from = 1 - stale.moves[0].from;
        let replaced = skewed_after(&noisy, Some(&stale))
            .expect("load")
            .plan
            .expect("plan");
        assert_eq!(replaced.moves, fresh.moves);
        // So is one that the load has made much worse than a fresh one.
        let turned = [5.0, 5.0, 5.0, 5.0, 40.0, 20.0, 10.0, 10.0];
        let p = skewed_after(&turned, Some(&pa))
            .expect("load")
            .plan
            .expect("plan");
        assert_eq!(p.moves[0].from, 1, "{p:?}");
        assert!(p.imbalance_after <= 1.1, "{p:?}");
    }

    #[test]
    fn the_status_is_rewritten_only_when_a_figure_changes() {
        let a = skewed(&[40.0, 20.0, 10.0, 10.0, 5.0, 5.0, 5.0, 5.0]).expect("load");
        let mut later = skewed_after(
            &[40.1, 20.0, 10.0, 10.0, 5.0, 5.0, 5.0, 5.0],
            a.plan.as_ref(),
        )
        .expect("load");
        later.measured_at = Time(Timestamp::from_second(1_800_000_060).expect("time"));
        let kept = to_publish(Some(&a), Some(later.clone()), Some("v1"));
        assert_eq!(kept.as_ref(), Some(&a), "same figures: no write");
        let moved = skewed(&[5.0, 5.0, 5.0, 5.0, 40.0, 20.0, 10.0, 10.0]).expect("load");
        assert_eq!(
            to_publish(Some(&a), Some(moved.clone()), Some("v1")),
            Some(moved)
        );
        // Nothing measured now: keep the active version's, drop another version's.
        assert_eq!(to_publish(Some(&a), None, Some("v1")), Some(a.clone()));
        assert_eq!(to_publish(Some(&a), None, Some("v2")), None);
        assert_eq!(to_publish(None, Some(later), Some("v2")), None);
    }
}
