//! Inverted lists: per list, the ids, the encoded entries, and optional per-entry extras.

use crate::half::HalfError;

/// One inverted list. Entry `i` has id `ids[i]`, code `codes[i*code_size..]`, for SQ8 with
/// L2 the squared norm of its decoded residual in `aux[i]`, and with `keep_raw` its original
/// vector in `raw[i*dim..]` (Flat's vectors, or kept for re-ranking). For Flat, `half` holds
/// the same vectors in half precision (derived, never stored on disk): the scan reads it,
/// half the bytes, and re-ranks its best candidates with `raw`; `half_error` bounds how far
/// the copy is from `raw` (an upper bound: removals leave it as it was).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InvertedList {
    pub ids: Vec<u64>,
    pub codes: Vec<u8>,
    pub aux: Vec<f32>,
    pub raw: Vec<f32>,
    pub half: Vec<u16>,
    pub half_error: HalfError,
}

impl InvertedList {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Bytes held in memory by this list.
    pub fn bytes(&self) -> usize {
        self.ids.len() * 8
            + self.codes.len()
            + self.aux.len() * 4
            + self.raw.len() * 4
            + self.half.len() * 2
    }

    /// Appends all entries of `other` (combining build parts).
    pub fn append(&mut self, other: &InvertedList) {
        self.ids.extend_from_slice(&other.ids);
        self.codes.extend_from_slice(&other.codes);
        self.aux.extend_from_slice(&other.aux);
        self.raw.extend_from_slice(&other.raw);
        self.half.extend_from_slice(&other.half);
        self.half_error = self.half_error.max(other.half_error);
    }

    /// Removes entries whose id matches; returns how many were removed.
    pub fn retain(
        &mut self,
        code_size: usize,
        dim: usize,
        mut keep: impl FnMut(u64) -> bool,
    ) -> usize {
        let n = self.ids.len();
        let has_aux = !self.aux.is_empty();
        let has_raw = !self.raw.is_empty();
        let has_half = !self.half.is_empty();
        let mut w = 0;
        for r in 0..n {
            if !keep(self.ids[r]) {
                continue;
            }
            if w != r {
                self.ids[w] = self.ids[r];
                self.codes
                    .copy_within(r * code_size..(r + 1) * code_size, w * code_size);
                if has_aux {
                    self.aux[w] = self.aux[r];
                }
                if has_raw {
                    self.raw.copy_within(r * dim..(r + 1) * dim, w * dim);
                }
                if has_half {
                    self.half.copy_within(r * dim..(r + 1) * dim, w * dim);
                }
            }
            w += 1;
        }
        self.ids.truncate(w);
        self.codes.truncate(w * code_size);
        if has_aux {
            self.aux.truncate(w);
        }
        if has_raw {
            self.raw.truncate(w * dim);
        }
        if has_half {
            self.half.truncate(w * dim);
        }
        n - w
    }
}
