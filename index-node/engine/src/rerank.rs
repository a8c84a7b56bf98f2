//! Exact results from a half-precision scan. Each list's f16 copy is within a known distance of
//! its f32 rows ([`HalfError`]), so every half-precision distance comes with an interval that
//! holds the exact one. While scanning, [`Band`] keeps the k best upper bounds (the k-th caps
//! the exact k-th distance) and every entry whose lower bound is under that cap; re-ranking
//! exactly only those gives the same top k as an f32 scan. On typical data that is k plus a
//! few entries, instead of a fixed multiple of k.

use crate::half::HalfError;
use crate::topk::{Collector, TopK};

/// Maps half-precision distances of one list to intervals holding the exact distances.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Bounds {
    dot: bool,
    /// L2: bound on `|‖q − h‖ − ‖q − x‖|`; dot: bound on `|q·h − q·x|`.
    margin: f32,
    /// Relative rounding error of the f32 distance sums (L2).
    rel: f32,
}

/// Relative rounding error of an f32 sum over `dim` terms, for both sums compared (the half
/// and the exact one): each is within `(dim + 3)·u` of its exact value (`u` = 2⁻²⁴; terms
/// rounded once, summed with at most `dim` roundings), so `(dim + 8)·ε` (ε = 2u) covers both.
pub(crate) fn rounding(dim: usize) -> f32 {
    (dim as f32 + 8.0) * f32::EPSILON
}

impl Bounds {
    /// `err` is the list's; `qnorm` is `‖q‖` (used by dot metrics); `rel` from [`rounding`].
    /// The copy moves an L2 distance `‖q − x‖` by at most `‖h − x‖` and a dot product by at
    /// most `‖q‖·‖h − x‖`; rounding adds `rel` of `Σ|q_i·x_i| ≤ ‖q‖·‖x‖` to a dot product and
    /// `rel` of itself to an L2 distance (a sum of squares). The 1.001 factors cover the
    /// rounding of this arithmetic.
    pub(crate) fn new(dot: bool, err: HalfError, qnorm: f32, rel: f32) -> Self {
        let margin = if dot {
            qnorm * 1.001 * (err.err * 1.001 + rel * (err.norm + err.err))
        } else {
            err.err * 1.001
        };
        Bounds { dot, margin, rel }
    }

    /// Interval holding the exact distance of an entry at half-precision distance `d`.
    #[inline]
    pub(crate) fn interval(&self, d: f32) -> (f32, f32) {
        if self.dot {
            (d - self.margin, d + self.margin)
        } else {
            // Rounding moves a squared distance by `rel` of itself, its root by half that.
            let s = d.max(0.0).sqrt();
            let lo = (s * (1.0 - self.rel) - self.margin).max(0.0);
            let hi = s * (1.0 + self.rel) + self.margin;
            (lo * lo, hi * hi)
        }
    }

    /// The largest half-precision distance whose lower bound is at most `u`.
    pub(crate) fn limit(&self, u: f32) -> f32 {
        if self.dot {
            u + self.margin
        } else {
            let r = (u.max(0.0).sqrt() + self.margin) / (1.0 - self.rel);
            r * r
        }
    }
}

/// Collector of a half-precision scan: the k best upper bounds, and every entry whose lower
/// bound is under the k-th of them (the candidates to re-rank, with their lower bounds).
#[derive(Debug, Default)]
pub(crate) struct Band {
    top: TopK,
    entries: Vec<(f32, u64)>,
    dot: bool,
    qnorm: f32,
    rel: f32,
    /// The bounds of the list being scanned.
    bounds: Bounds,
    /// Half-precision distances above it cannot enter (for the list being scanned).
    limit: f32,
    /// Entries held before pruning them against the (since lowered) k-th upper bound.
    cap: usize,
}

impl Band {
    /// Empties the band for a query; keeps its allocations.
    pub(crate) fn reset(&mut self, k: usize, dot: bool, qnorm: f32, dim: usize) {
        self.top.reset(k);
        self.entries.clear();
        self.dot = dot;
        self.qnorm = qnorm;
        self.rel = rounding(dim);
        self.limit = f32::INFINITY;
        self.cap = 4 * k + 32;
    }

    /// Labels of every entry that may be in the exact top k.
    pub(crate) fn candidates(&mut self) -> &[(f32, u64)] {
        self.prune();
        &self.entries
    }

    /// Drops the entries whose lower bound is above the current k-th upper bound.
    fn prune(&mut self) {
        let u = self.top.threshold();
        self.entries.retain(|&(lo, _)| lo <= u);
    }
}

impl Collector for Band {
    #[inline]
    fn start_list(&mut self, err: HalfError) {
        self.bounds = Bounds::new(self.dot, err, self.qnorm, self.rel);
        self.limit = self.bounds.limit(self.top.threshold());
    }

    #[inline]
    fn threshold(&self) -> f32 {
        // Entries at exactly the limit may tie with the k-th; let them in.
        self.limit.next_up()
    }

    #[inline]
    fn unfilled(&self) -> Option<usize> {
        self.top.unfilled()
    }

    #[inline]
    fn seed(&mut self, t: f32) {
        // k entries at half-precision distance ≤ t have exact distances ≤ its upper bound.
        self.top.seed(self.bounds.interval(t).1);
        self.limit = self.bounds.limit(self.top.threshold());
    }

    #[inline]
    fn push(&mut self, distance: f32, id: u64) {
        let (lo, hi) = self.bounds.interval(distance);
        self.entries.push((lo, id));
        if hi < self.top.threshold() {
            self.top.push(hi, id);
            self.limit = self.bounds.limit(self.top.threshold());
        }
        if self.entries.len() >= self.cap {
            self.prune();
            // Many near-ties can keep the band full: grow instead of filtering every push.
            self.cap = self.cap.max(2 * self.entries.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn limit_inverts_the_lower_bound() {
        let err = HalfError {
            err: 0.01,
            norm: 3.0,
        };
        for dot in [false, true] {
            let b = Bounds::new(dot, err, 2.0, rounding(128));
            for u in [0.0f32, 0.5, 2.0, 10.0] {
                let t = b.limit(u);
                assert!(b.interval(t).0 <= u * (1.0 + 1e-6) + 1e-6, "{dot} {u}");
                assert!(b.interval(t * 1.01 + 0.01).0 > u, "{dot} {u}");
                let (lo, hi) = b.interval(u);
                assert!(lo <= u && u <= hi, "{dot} {u}");
            }
        }
    }

    /// Exact distances are perturbed within the bound; the band must hold the exact top k.
    #[test]
    fn band_holds_the_exact_top_k() {
        let mut rng = Rng::new(5);
        for dot in [false, true] {
            let err = HalfError {
                err: 0.05,
                norm: 1.0,
            };
            let mut band = Band::default();
            for round in 0..50 {
                let n = 20 + round * 7;
                let exact: Vec<f32> = (0..n).map(|_| rng.unit() * 4.0).collect();
                // Half-precision distances: anywhere inside what the bounds allow.
                let approx: Vec<f32> = exact
                    .iter()
                    .map(|&e| {
                        let t = rng.unit() * 2.0 - 1.0;
                        if dot {
                            e + t * 0.05
                        } else {
                            let s = e.sqrt() + t * 0.05;
                            s.max(0.0) * s.max(0.0)
                        }
                    })
                    .collect();
                let k = 10;
                band.reset(k, dot, 1.0, 128);
                band.start_list(err);
                if round % 2 == 1 {
                    // Seeded with the k-th smallest half-precision distance, as a scan of a
                    // long list does.
                    let mut sorted = approx.clone();
                    sorted.sort_by(f32::total_cmp);
                    band.seed(sorted[k - 1]);
                }
                for (i, &d) in approx.iter().enumerate() {
                    if d < band.threshold() {
                        band.push(d, i as u64);
                    }
                }
                let mut want: Vec<usize> = (0..n).collect();
                want.sort_by(|&a, &b| exact[a].total_cmp(&exact[b]).then(a.cmp(&b)));
                let got: Vec<u64> = band.candidates().iter().map(|c| c.1).collect();
                for &w in &want[..k] {
                    assert!(
                        got.contains(&(w as u64)),
                        "dot {dot} round {round}: {w} missing"
                    );
                }
                assert!(got.len() < n, "the band filtered nothing ({n} entries)");
            }
        }
    }
}
