//! Rebalancing hot lists (pure: no I/O). From each list's size and measured load, the shard
//! that owns it and each shard's replica count, [`plan`] proposes moves of whole lists between
//! shards that lower the most loaded shard's load per replica, within a budget of bytes moved
//! in one step; [`Hysteresis`] decides when a plan may act at all, so that a map never flaps.
//!
//! A list's load is its scan cost (probes × entries, decayed over time by whoever measures
//! it), so moving a list moves exactly its load. A shard's load per replica is what one of
//! its replicas serves when its router spreads queries evenly over them; the cluster's
//! throughput is bounded by the largest such figure.
//!
//! When moves cannot help, [`plan`] says what would: a list whose own load per replica is above
//! the mean shard load makes whichever shard holds it the hottest, so moving it only moves the
//! hot spot: it should be split (2-means inside the list, a new version with nlist + 1). A
//! shard still above the threshold after the best moves wants another replica.

/// One list as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct List {
    /// Bytes of its entries (what a move copies into the new owner's memory).
    pub bytes: u64,
    /// Measured load (scan cost per unit of time); negative or NaN counts as 0.
    pub load: f64,
    /// The shard that holds it now.
    pub owner: u32,
}

/// What a plan may do in one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Bytes moved at most (summed over moves).
    pub max_bytes: u64,
    /// Replicas a shard may grow to when it stays hot.
    pub max_replicas: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub list: u32,
    pub from: u32,
    pub to: u32,
    pub bytes: u64,
}

/// Load per replica of every shard, and the figures a plan is judged by.
#[derive(Debug, Clone, PartialEq)]
pub struct Loads {
    pub per_replica: Vec<f64>,
    pub max: f64,
    /// Σ load / Σ replicas: the per-replica load of a perfectly balanced map.
    pub mean: f64,
    /// The hottest shard (the lowest number among equals).
    pub hottest: u32,
}

impl Loads {
    /// max / mean: 1 when balanced; 0 with no load at all.
    pub fn imbalance(&self) -> f64 {
        if self.mean > 0.0 {
            self.max / self.mean
        } else {
            0.0
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub moves: Vec<Move>,
    pub before: Loads,
    pub after: Loads,
    /// The map after the moves: list → shard.
    pub owners: Vec<u32>,
    /// A list that no move can balance (see the module doc): split it.
    pub split: Option<u32>,
    /// A shard still hot after the moves that may grow (replicas now, wanted).
    pub add_replica: Option<(u32, u32, u32)>,
}

impl Plan {
    pub fn bytes_moved(&self) -> u64 {
        self.moves.iter().map(|m| m.bytes).sum()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("no shards")]
    NoShards,
    #[error("replicas: {got} entries for {shards} shards")]
    Replicas { got: usize, shards: u32 },
    #[error("list {list} is owned by shard {owner}, but there are {shards} shards")]
    Owner { list: u32, owner: u32, shards: u32 },
}

fn load_of(l: &List) -> f64 {
    if l.load.is_finite() && l.load > 0.0 {
        l.load
    } else {
        0.0
    }
}

/// Per-replica loads of `owners` (list → shard) over `lists`.
pub fn loads(lists: &[List], owners: &[u32], replicas: &[u32]) -> Loads {
    let mut sum = vec![0.0f64; replicas.len()];
    for (l, &o) in lists.iter().zip(owners) {
        if let Some(s) = sum.get_mut(o as usize) {
            *s += load_of(l);
        }
    }
    let per_replica: Vec<f64> = sum
        .iter()
        .zip(replicas)
        .map(|(s, &r)| s / f64::from(r.max(1)))
        .collect();
    let total: f64 = sum.iter().sum();
    let reps: f64 = replicas.iter().map(|&r| f64::from(r.max(1))).sum();
    let (hottest, max) =
        per_replica
            .iter()
            .copied()
            .enumerate()
            .fold(
                (0usize, f64::MIN),
                |best, (i, x)| if x > best.1 { (i, x) } else { best },
            );
    Loads {
        max: if per_replica.is_empty() { 0.0 } else { max },
        mean: if reps > 0.0 { total / reps } else { 0.0 },
        hottest: hottest as u32,
        per_replica,
    }
}

/// Moves that lower the hottest shard's load per replica, greedily: each step takes the
/// hottest shard and moves to the coolest one the list that lowers the pair's larger load the
/// most while fitting the remaining byte budget; it stops when no list of the hottest shard can
/// do that. At that point the hottest shard is within one list of the coolest:
/// `max ≤ mean + (largest list load) / (fewest replicas)` when the budget did not stop it.
/// Deterministic (ties go to the lower list and shard numbers).
pub fn plan(lists: &[List], replicas: &[u32], limits: Limits) -> Result<Plan, PlanError> {
    let shards = replicas.len() as u32;
    if shards == 0 {
        return Err(PlanError::NoShards);
    }
    if let Some((i, l)) = lists.iter().enumerate().find(|(_, l)| l.owner >= shards) {
        return Err(PlanError::Owner {
            list: i as u32,
            owner: l.owner,
            shards,
        });
    }
    let reps: Vec<f64> = replicas.iter().map(|&r| f64::from(r.max(1))).collect();
    let mut owners: Vec<u32> = lists.iter().map(|l| l.owner).collect();
    let before = loads(lists, &owners, replicas);
    let mut sum: Vec<f64> = before
        .per_replica
        .iter()
        .zip(&reps)
        .map(|(x, r)| x * r)
        .collect();
    let mut moves: Vec<Move> = Vec::new();
    let mut budget = limits.max_bytes;
    // Every move strictly lowers the pair's larger load; the cap only guards float oddities.
    for _ in 0..lists.len().saturating_mul(shards as usize).max(1) {
        let per = |s: usize, sum: &[f64]| sum[s] / reps[s];
        let hot = (0..shards as usize)
            .max_by(|&a, &b| per(a, &sum).total_cmp(&per(b, &sum)).then(b.cmp(&a)))
            .unwrap_or(0);
        let cool = (0..shards as usize)
            .min_by(|&a, &b| per(a, &sum).total_cmp(&per(b, &sum)).then(a.cmp(&b)))
            .unwrap_or(0);
        if hot == cool {
            break;
        }
        let now = per(hot, &sum);
        let mut best: Option<(usize, f64)> = None;
        for (i, l) in lists.iter().enumerate() {
            if owners[i] as usize != hot || l.bytes > budget {
                continue;
            }
            let x = load_of(l);
            if x <= 0.0 {
                continue;
            }
            let worse = ((sum[hot] - x) / reps[hot]).max((sum[cool] + x) / reps[cool]);
            if worse < now && best.is_none_or(|(_, w)| worse < w) {
                best = Some((i, worse));
            }
        }
        let Some((i, _)) = best else { break };
        let x = load_of(&lists[i]);
        sum[hot] -= x;
        sum[cool] += x;
        owners[i] = cool as u32;
        budget -= lists[i].bytes;
        moves.push(Move {
            list: i as u32,
            from: hot as u32,
            to: cool as u32,
            bytes: lists[i].bytes,
        });
    }
    // A list moved twice (a → b → c) is one move a → c; one moved back is no move.
    let mut net: Vec<Move> = Vec::new();
    for m in moves {
        match net.iter().position(|n| n.list == m.list) {
            Some(p) => net[p].to = m.to,
            None => net.push(m),
        }
    }
    net.retain(|m| m.from != m.to);
    let after = loads(lists, &owners, replicas);
    let split = lists
        .iter()
        .enumerate()
        .filter(|(i, l)| after.mean > 0.0 && load_of(l) / reps[owners[*i] as usize] > after.mean)
        .max_by(|a, b| load_of(a.1).total_cmp(&load_of(b.1)).then(b.0.cmp(&a.0)))
        .map(|(i, _)| i as u32);
    let hot = after.hottest as usize;
    let add_replica = (after.mean > 0.0
        && after.max > after.mean * 1.0001
        && replicas[hot] < limits.max_replicas)
        .then_some((hot as u32, replicas[hot], replicas[hot] + 1));
    Ok(Plan {
        moves: net,
        before,
        after,
        owners,
        split,
        add_replica,
    })
}

/// When a plan may act: only once the imbalance (max / mean load per replica) has stayed above
/// `threshold` for `window` seconds without a break, and not again until it has. Measured
/// imbalance that dips below the threshold resets the clock, so noise around it never acts.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Hysteresis {
    /// When the imbalance went above the threshold (Unix seconds), while it stays there.
    pub above_since: Option<f64>,
}

impl Hysteresis {
    /// Records one observation at `now`; true when a plan should act now.
    pub fn observe(&mut self, imbalance: f64, threshold: f64, window: f64, now: f64) -> bool {
        // NaN is not above anything.
        if imbalance.partial_cmp(&threshold) != Some(std::cmp::Ordering::Greater) {
            self.above_since = None;
            return false;
        }
        let since = *self.above_since.get_or_insert(now);
        now - since >= window
    }

    /// After a rebalance: the next one waits for a full window of its own.
    pub fn acted(&mut self) {
        self.above_since = None;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// splitmix64: seeded cases without a property-testing dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// A random case: Zipf-like list loads (a few hot lists), sizes, a map and replicas.
    fn case(rng: &mut Rng) -> (Vec<List>, Vec<u32>) {
        let shards = 1 + rng.below(8) as u32;
        let nlist = rng.below(200) as usize;
        let skew = 0.5 + rng.unit() * 1.5;
        let lists = (0..nlist)
            .map(|i| {
                let bytes = 1 + rng.below(1 << 20);
                let rank = 1 + rng.below(nlist as u64) as usize;
                List {
                    bytes,
                    load: bytes as f64 / (rank as f64).powf(skew)
                        * if i % 17 == 0 { 0.0 } else { 1.0 },
                    owner: rng.below(u64::from(shards)) as u32,
                }
            })
            .collect();
        let replicas = (0..shards).map(|_| 1 + rng.below(3) as u32).collect();
        (lists, replicas)
    }

    fn unlimited() -> Limits {
        Limits {
            max_bytes: u64::MAX,
            max_replicas: 4,
        }
    }

    #[test]
    fn property_every_list_keeps_exactly_one_owner_and_moves_are_consistent() {
        let mut rng = Rng(1);
        for _ in 0..500 {
            let (lists, replicas) = case(&mut rng);
            let p = plan(&lists, &replicas, unlimited()).unwrap();
            assert_eq!(p.owners.len(), lists.len(), "no list lost or added");
            assert!(p.owners.iter().all(|&o| (o as usize) < replicas.len()));
            // The moves are exactly the differences between the maps.
            for (i, l) in lists.iter().enumerate() {
                let m = p
                    .moves
                    .iter()
                    .filter(|m| m.list == i as u32)
                    .collect::<Vec<_>>();
                if p.owners[i] == l.owner {
                    assert!(m.is_empty(), "list {i} moved but ended where it was");
                } else {
                    assert_eq!(m.len(), 1, "list {i}");
                    assert_eq!(
                        (m[0].from, m[0].to, m[0].bytes),
                        (l.owner, p.owners[i], l.bytes)
                    );
                }
            }
        }
    }

    #[test]
    fn property_the_result_is_never_worse_and_within_one_list_of_the_mean() {
        let mut rng = Rng(2);
        for _ in 0..500 {
            let (lists, replicas) = case(&mut rng);
            let p = plan(&lists, &replicas, unlimited()).unwrap();
            assert!(p.after.max <= p.before.max + 1e-9 * p.before.max.max(1.0));
            let biggest = lists.iter().map(load_of).fold(0.0, f64::max);
            let fewest = f64::from(*replicas.iter().min().unwrap());
            let bound = p.after.mean + biggest / fewest;
            assert!(
                p.after.max <= bound * (1.0 + 1e-9) + 1e-9,
                "max {} > mean {} + biggest list {biggest} / {fewest} replicas",
                p.after.max,
                p.after.mean
            );
            // The totals are what they were.
            assert!((p.after.mean - p.before.mean).abs() <= 1e-9 * p.before.mean.max(1.0));
        }
    }

    #[test]
    fn property_the_byte_budget_holds() {
        let mut rng = Rng(3);
        for _ in 0..500 {
            let (lists, replicas) = case(&mut rng);
            let budget = rng.below(4 << 20);
            let p = plan(
                &lists,
                &replicas,
                Limits {
                    max_bytes: budget,
                    max_replicas: 1,
                },
            )
            .unwrap();
            assert!(p.bytes_moved() <= budget, "{} > {budget}", p.bytes_moved());
            assert!(p.after.max <= p.before.max + 1e-9 * p.before.max.max(1.0));
        }
    }

    #[test]
    fn property_a_planned_map_plans_nothing_more() {
        // Stable: planning again on the result (same loads) moves nothing, so it never flaps.
        let mut rng = Rng(4);
        for _ in 0..300 {
            let (lists, replicas) = case(&mut rng);
            let p = plan(&lists, &replicas, unlimited()).unwrap();
            let moved: Vec<List> = lists
                .iter()
                .zip(&p.owners)
                .map(|(l, &o)| List { owner: o, ..*l })
                .collect();
            let again = plan(&moved, &replicas, unlimited()).unwrap();
            assert!(again.moves.is_empty(), "{:?}", again.moves);
        }
    }

    #[test]
    fn a_hot_shard_gives_lists_to_a_cool_one() {
        // Shard 0 holds the four hot lists; shard 1 the cold ones.
        let lists: Vec<List> = (0..8)
            .map(|i| List {
                bytes: 100,
                load: if i < 4 { 10.0 } else { 1.0 },
                owner: u32::from(i >= 4),
            })
            .collect();
        let p = plan(&lists, &[1, 1], unlimited()).unwrap();
        assert_eq!(p.before.max, 40.0);
        assert_eq!(p.before.mean, 22.0);
        assert!(p.after.max <= 24.0, "{p:?}");
        assert!(p.moves.iter().any(|m| m.from == 0 && m.to == 1), "{p:?}");
        assert_eq!(p.split, None);
        // A budget of one list moves one list.
        let one = plan(
            &lists,
            &[1, 1],
            Limits {
                max_bytes: 150,
                max_replicas: 1,
            },
        )
        .unwrap();
        assert_eq!(one.moves.len(), 1);
        assert_eq!(one.after.max, 30.0);
    }

    #[test]
    fn replicas_divide_a_shards_load() {
        // Shard 0 carries more load but has 4 replicas: shard 1 is the hot one, and its list
        // goes to shard 0, where four replicas share it.
        let lists = vec![
            List {
                bytes: 1,
                load: 8.0,
                owner: 0,
            },
            List {
                bytes: 1,
                load: 3.0,
                owner: 1,
            },
        ];
        let p = plan(&lists, &[4, 1], unlimited()).unwrap();
        assert_eq!(p.before.per_replica, vec![2.0, 3.0]);
        assert_eq!(p.before.hottest, 1);
        assert_eq!(
            p.moves,
            vec![Move {
                list: 1,
                from: 1,
                to: 0,
                bytes: 1
            }]
        );
        assert_eq!(p.after.per_replica, vec![2.75, 0.0]);
    }

    #[test]
    fn one_list_hotter_than_the_mean_is_split_not_moved() {
        let lists = vec![
            List {
                bytes: 10,
                load: 90.0,
                owner: 0,
            },
            List {
                bytes: 10,
                load: 5.0,
                owner: 1,
            },
            List {
                bytes: 10,
                load: 5.0,
                owner: 1,
            },
        ];
        let p = plan(
            &lists,
            &[1, 1],
            Limits {
                max_bytes: u64::MAX,
                max_replicas: 3,
            },
        )
        .unwrap();
        // Moving list 0 anywhere keeps a shard at 90: no move helps.
        assert!(p.moves.is_empty(), "{p:?}");
        assert_eq!(p.split, Some(0));
        // Its shard may still get a replica.
        assert_eq!(p.add_replica, Some((0, 1, 2)));
        let capped = plan(
            &lists,
            &[1, 1],
            Limits {
                max_bytes: u64::MAX,
                max_replicas: 1,
            },
        )
        .unwrap();
        assert_eq!(capped.add_replica, None);
    }

    #[test]
    fn bad_input_is_refused_by_name() {
        assert_eq!(plan(&[], &[], unlimited()), Err(PlanError::NoShards));
        let l = [List {
            bytes: 1,
            load: 1.0,
            owner: 2,
        }];
        assert_eq!(
            plan(&l, &[1, 1], unlimited()),
            Err(PlanError::Owner {
                list: 0,
                owner: 2,
                shards: 2
            })
        );
        // NaN and negative loads count as no load.
        let l = [
            List {
                bytes: 1,
                load: f64::NAN,
                owner: 0,
            },
            List {
                bytes: 1,
                load: -3.0,
                owner: 0,
            },
        ];
        let p = plan(&l, &[1, 1], unlimited()).unwrap();
        assert!(p.moves.is_empty());
        assert_eq!(p.before.max, 0.0);
    }

    #[test]
    fn hysteresis_acts_only_after_a_full_window_above_the_threshold() {
        let mut h = Hysteresis::default();
        assert!(!h.observe(1.5, 1.25, 60.0, 0.0));
        assert!(!h.observe(1.5, 1.25, 60.0, 59.0));
        // A dip resets the clock.
        assert!(!h.observe(1.2, 1.25, 60.0, 60.0));
        assert!(!h.observe(1.5, 1.25, 60.0, 61.0));
        assert!(!h.observe(1.5, 1.25, 60.0, 120.0));
        assert!(h.observe(1.5, 1.25, 60.0, 121.0));
        h.acted();
        assert!(!h.observe(1.5, 1.25, 60.0, 122.0));
        assert!(!h.observe(f64::NAN, 1.25, 60.0, 300.0));
        assert_eq!(h.above_since, None);
    }
}
