//! Load per inverted list, from the probe counters shard replicas report (Admin/ListStats:
//! probes per list since the replica loaded the version). Pure: the caller samples, this
//! keeps the decayed rates.
//!
//! Each replica's counters are differenced between two samples and turned into a probe rate
//! per list, smoothed with an exponential decay of half-life `half_life` seconds (recent
//! traffic counts most, a burst fades); a list's rate is the sum over the replicas that
//! serve it. A list's load is its rate times its size: the entries a second of traffic makes
//! the shards scan, which is what a move or a split redistributes.
//!
//! A counter that goes down (the replica restarted and loaded the version again) makes that
//! sample a new baseline for the replica, never a negative rate.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
struct Replica {
    at: f64,
    probes: Vec<u64>,
    /// Decayed probes per second, per list.
    rate: Vec<f64>,
    /// False until a second sample gave a rate.
    measured: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoadTracker {
    version: String,
    nlist: usize,
    half_life: f64,
    replicas: BTreeMap<String, Replica>,
}

impl LoadTracker {
    pub fn new(version: &str, nlist: usize, half_life: f64) -> Self {
        Self {
            version: version.to_string(),
            nlist,
            half_life: half_life.max(1e-3),
            replicas: BTreeMap::new(),
        }
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// One replica's counters at `at` (seconds). Counters of another length than the
    /// version's list count are ignored (a replica that answered for another map).
    pub fn observe(&mut self, replica: &str, at: f64, probes: &[u64]) {
        if probes.len() != self.nlist || !at.is_finite() {
            return;
        }
        let Some(r) = self.replicas.get_mut(replica) else {
            self.replicas.insert(
                replica.to_string(),
                Replica {
                    at,
                    probes: probes.to_vec(),
                    rate: vec![0.0; probes.len()],
                    measured: false,
                },
            );
            return;
        };
        let dt = at - r.at;
        if dt <= 0.0 {
            return;
        }
        let reset = probes.iter().zip(&r.probes).any(|(now, was)| now < was);
        if !reset {
            let keep = 0.5f64.powf(dt / self.half_life);
            for ((rate, now), was) in r.rate.iter_mut().zip(probes).zip(&r.probes) {
                let instant = (now - was) as f64 / dt;
                *rate = if r.measured {
                    keep * *rate + (1.0 - keep) * instant
                } else {
                    instant
                };
            }
            r.measured = true;
        }
        r.at = at;
        r.probes = probes.to_vec();
    }

    /// Forgets replicas not in `live` (deleted pods: their traffic went elsewhere).
    pub fn retain(&mut self, live: &[&str]) {
        self.replicas
            .retain(|name, _| live.contains(&name.as_str()));
    }

    /// Whether any replica has given a rate yet.
    pub fn measured(&self) -> bool {
        self.replicas.values().any(|r| r.measured)
    }

    /// Probes per second per list, summed over replicas.
    pub fn rates(&self) -> Vec<f64> {
        let mut out = vec![0.0; self.nlist];
        for r in self.replicas.values().filter(|r| r.measured) {
            for (o, x) in out.iter_mut().zip(&r.rate) {
                *o += x;
            }
        }
        out
    }

    /// Scan cost per second per list: rate × entries.
    pub fn loads(&self, sizes: &[u64]) -> Vec<f64> {
        self.rates()
            .iter()
            .zip(sizes)
            .map(|(r, &s)| r * s as f64)
            .collect()
    }
}

/// The `n` hottest lists as (list, load), hottest first (ties: lower list first); lists with
/// no load are left out. What the status and the metrics show: bounded by `n`.
pub fn hottest(loads: &[f64], n: usize) -> Vec<(u32, f64)> {
    let mut v: Vec<(u32, f64)> = loads
        .iter()
        .enumerate()
        .filter(|(_, x)| x.is_finite() && **x > 0.0)
        .map(|(i, x)| (i as u32, *x))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn a_steady_rate_is_measured_from_the_second_sample() {
        let mut t = LoadTracker::new("v1", 3, 60.0);
        t.observe("s0-0", 0.0, &[0, 0, 0]);
        assert!(!t.measured());
        assert_eq!(t.rates(), vec![0.0; 3]);
        t.observe("s0-0", 10.0, &[100, 0, 20]);
        assert!(t.measured());
        assert_eq!(t.rates(), vec![10.0, 0.0, 2.0]);
        t.observe("s0-0", 20.0, &[200, 0, 40]);
        assert_eq!(t.rates(), vec![10.0, 0.0, 2.0]);
        assert_eq!(t.loads(&[5, 1000, 10]), vec![50.0, 0.0, 20.0]);
    }

    #[test]
    fn a_new_rate_takes_over_by_half_in_one_half_life() {
        let mut t = LoadTracker::new("v1", 1, 30.0);
        t.observe("r", 0.0, &[0]);
        t.observe("r", 30.0, &[300]); // 10/s
        t.observe("r", 60.0, &[300]); // 0/s for one half-life
        assert!(close(t.rates()[0], 5.0), "{:?}", t.rates());
        t.observe("r", 90.0, &[300]);
        assert!(close(t.rates()[0], 2.5), "{:?}", t.rates());
    }

    #[test]
    fn replicas_add_up_and_a_restart_is_a_new_baseline() {
        let mut t = LoadTracker::new("v1", 2, 60.0);
        for (pod, base) in [("s0-0", 0), ("s0-1", 1000)] {
            t.observe(pod, 0.0, &[base, 0]);
            t.observe(pod, 10.0, &[base + 50, 10]);
        }
        assert_eq!(t.rates(), vec![10.0, 2.0]);
        // s0-1 restarted: its counters start again from zero; no negative rate, no change.
        t.observe("s0-1", 20.0, &[3, 0]);
        assert_eq!(t.rates(), vec![10.0, 2.0]);
        t.observe("s0-1", 30.0, &[53, 10]);
        assert_eq!(t.rates(), vec![10.0, 2.0]);
        // A deleted pod's traffic is no longer counted.
        t.retain(&["s0-0"]);
        assert_eq!(t.rates(), vec![5.0, 1.0]);
    }

    #[test]
    fn counters_of_another_shape_or_time_are_ignored() {
        let mut t = LoadTracker::new("v1", 2, 60.0);
        t.observe("r", 0.0, &[0, 0]);
        t.observe("r", 10.0, &[1, 2, 3]);
        t.observe("r", f64::NAN, &[5, 5]);
        t.observe("r", 0.0, &[5, 5]);
        assert!(!t.measured());
        t.observe("r", 10.0, &[10, 0]);
        assert_eq!(t.rates(), vec![1.0, 0.0]);
    }

    #[test]
    fn the_hottest_lists_are_bounded_and_ordered() {
        let loads = [1.0, 0.0, 5.0, 5.0, f64::NAN, 3.0];
        assert_eq!(hottest(&loads, 3), vec![(2, 5.0), (3, 5.0), (5, 3.0)]);
        assert_eq!(hottest(&loads, 10).len(), 4);
        assert!(hottest(&[0.0; 4], 2).is_empty());
    }
}
