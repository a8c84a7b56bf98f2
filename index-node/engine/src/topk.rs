//! Bounded top-k selection: a max-heap of the k best (smallest) distances seen so far.
//! Reused across lists of one query so the scan loop does not allocate.

/// One result: an id and its internal distance (smaller is better, see [`crate::Metric`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    pub id: u64,
    pub distance: f32,
}

/// Where a scan puts the entries it finds: [`TopK`], or the re-ranking band of a
/// half-precision scan. Entries at or above `threshold` are never pushed.
pub(crate) trait Collector {
    /// The scan moves to a list whose half-precision copy has this error bound.
    fn start_list(&mut self, _err: crate::half::HalfError) {}
    fn threshold(&self) -> f32;
    fn push(&mut self, distance: f32, id: u64);
    /// `Some(k)` while fewer than k entries are held: a scan can then [`Collector::seed`] it.
    fn unfilled(&self) -> Option<usize>;
    /// At least k entries of the list being scanned have a distance of at most `t`, so no
    /// entry above `t` can be among the k best: the threshold drops to `t` at once instead
    /// of falling entry by entry (each such entry a push and a mispredicted branch).
    fn seed(&mut self, t: f32);
}

impl Collector for TopK {
    #[inline]
    fn threshold(&self) -> f32 {
        TopK::threshold(self)
    }

    #[inline]
    fn push(&mut self, distance: f32, id: u64) {
        TopK::push(self, distance, id)
    }

    #[inline]
    fn unfilled(&self) -> Option<usize> {
        (self.heap.len() < self.k).then_some(self.k)
    }

    #[inline]
    fn seed(&mut self, t: f32) {
        TopK::seed(self, t)
    }
}

#[derive(Debug, Default)]
pub struct TopK {
    k: usize,
    heap: Vec<(f32, u64)>,
    /// Entries at or above this never enter (see [`TopK::seed`]); +inf until seeded.
    cap: f32,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            heap: Vec::with_capacity(k),
            cap: f32::INFINITY,
        }
    }

    /// Empties the heap for a new query; keeps its allocation.
    pub fn reset(&mut self, k: usize) {
        self.k = k;
        self.heap.clear();
        self.heap.reserve(k);
        self.cap = f32::INFINITY;
    }

    /// Declares that at least k entries still to be offered have a distance of at most `t`
    /// (ties included), so nothing above `t` can be in the result.
    #[inline]
    pub fn seed(&mut self, t: f32) {
        self.cap = self.cap.min(t.next_up());
    }

    /// Distance a candidate must beat to enter.
    #[inline]
    pub fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            self.cap
        } else {
            self.heap[0].0.min(self.cap)
        }
    }

    #[inline]
    pub fn push(&mut self, distance: f32, id: u64) {
        if self.heap.len() < self.k {
            self.heap.push((distance, id));
            self.sift_up(self.heap.len() - 1);
        } else if self.k > 0 && worse(self.heap[0], (distance, id)) {
            self.heap[0] = (distance, id);
            self.sift_down(0);
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The entries, best first (ties broken by id so results are deterministic).
    pub fn sorted(&self) -> Vec<Neighbor> {
        let mut v: Vec<Neighbor> = self
            .heap
            .iter()
            .map(|&(distance, id)| Neighbor { id, distance })
            .collect();
        v.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
        v
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if worse(self.heap[i], self.heap[parent]) {
                self.heap.swap(i, parent);
                i = parent;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut top = i;
            if l < n && worse(self.heap[l], self.heap[top]) {
                top = l;
            }
            if r < n && worse(self.heap[r], self.heap[top]) {
                top = r;
            }
            if top == i {
                break;
            }
            self.heap.swap(i, top);
            i = top;
        }
    }
}

/// `a` ranks after `b`: larger distance, or equal distance and larger id.
#[inline]
fn worse(a: (f32, u64), b: (f32, u64)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 > b.1)
}

/// Merges several sorted top-k lists into one (used by routers and batch search).
pub fn merge(k: usize, parts: impl IntoIterator<Item = Neighbor>) -> Vec<Neighbor> {
    let mut top = TopK::new(k);
    for n in parts {
        top.push(n.distance, n.id);
    }
    top.sorted()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_k_smallest_sorted() {
        let mut t = TopK::new(3);
        for (i, d) in [5.0, 1.0, 4.0, 2.0, 3.0, 0.5].into_iter().enumerate() {
            t.push(d, i as u64);
        }
        let ids: Vec<u64> = t.sorted().iter().map(|n| n.id).collect();
        assert_eq!(ids, vec![5, 1, 3]);
        assert_eq!(t.threshold(), 2.0);
    }

    #[test]
    fn k_zero_keeps_nothing() {
        let mut t = TopK::new(0);
        t.push(1.0, 1);
        assert!(t.is_empty());
    }
}
