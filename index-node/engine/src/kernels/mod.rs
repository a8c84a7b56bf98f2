//! Distance and scan kernels behind one dispatch table, chosen once at first use by CPU
//! detection. The scalar kernels are the reference every SIMD kernel is tested against.
//!
//! `QUIVER_KERNELS=scalar|avx2|avx512` forces a table (e.g. to compare ISAs in a benchmark);
//! a forced table the CPU cannot run is ignored with the detected one used instead.

use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;
pub mod tile;

/// `(w, cols, base, scale, out)`: see [`Kernels::columns`].
pub type ColumnsFn = fn(&[f32], &[f32], Option<&[f32]>, f32, &mut [f32]);

/// One set of kernels for one instruction set.
///
/// Batch kernels take a query of dimension `d = q.len()` and `out.len()` rows stored
/// contiguously in `rows` (row `i` at `rows[i*d..(i+1)*d]`).
pub struct Kernels {
    pub name: &'static str,
    /// Squared L2 distance of two vectors of equal length.
    pub l2: fn(&[f32], &[f32]) -> f32,
    /// Dot product of two vectors of equal length.
    pub dot: fn(&[f32], &[f32]) -> f32,
    /// `out[i] = l2(q, row i)`.
    pub l2_batch: fn(&[f32], &[f32], &mut [f32]),
    /// `out[i] = dot(q, row i)`.
    pub dot_batch: fn(&[f32], &[f32], &mut [f32]),
    /// `out[i] = sum_d w[d] * codes[i*d + d]` over 8-bit codes, `d = w.len()`.
    pub sq8_dot_batch: fn(&[f32], &[u8], &mut [f32]),
    /// PQ table scan: `out[i] = sum_j lut[j*256 + codes[i*m + j]]`, `m = lut.len() / 256`.
    pub pq_scan: fn(&[f32], &[u8], &mut [f32]),
    /// `out[i] = l2(q, row i)` over half-precision rows (`u16` bits), `d = q.len()`.
    pub l2_batch_f16: fn(&[f32], &[u16], &mut [f32]),
    /// `out[i] = dot(q, row i)` over half-precision rows.
    pub dot_batch_f16: fn(&[f32], &[u16], &mut [f32]),
    /// `out[i] = base[i] + scale · Σ_d w[d] · cols[d·n + i]` with `n = out.len()` and `base`
    /// zero when absent: PQ lookup tables from dimension-major codebooks, and a list's
    /// precomputed table plus the query's.
    pub columns: ColumnsFn,
    /// `out[i] = Σ_d (t[d] − cols[d·n + i])²`, `n = out.len()`: a PQ table of squared
    /// distances straight from dimension-major codebooks.
    pub l2_columns: fn(&[f32], &[f32], &mut [f32]),
    /// Dot products of a tile of 8 points with a panel of 32 centroids (see [`tile`]).
    pub dot_tile: fn(&[f32], &[f32], &mut [[f32; tile::TILE_C]; tile::TILE_P]),
    /// `out[i] = f16(x[i])` (round to nearest even); returns `(Σ (h − x)², Σ x²)` with `h` the
    /// rounded values, summed in f32 (Flat's half-precision copies and their error bound).
    pub to_half: fn(&[f32], &mut [u16]) -> (f32, f32),
}

static SCALAR: Kernels = Kernels {
    name: "scalar",
    l2: scalar::l2,
    dot: scalar::dot,
    l2_batch: scalar::l2_batch,
    dot_batch: scalar::dot_batch,
    sq8_dot_batch: scalar::sq8_dot_batch,
    pq_scan: scalar::pq_scan,
    columns: scalar::columns,
    l2_columns: scalar::l2_columns,
    l2_batch_f16: scalar::l2_batch_f16,
    dot_batch_f16: scalar::dot_batch_f16,
    dot_tile: tile::tile_scalar,
    to_half: scalar::to_half,
};

#[cfg(target_arch = "x86_64")]
static AVX2: Kernels = Kernels {
    name: "avx2",
    l2: avx2::l2,
    dot: avx2::dot,
    l2_batch: avx2::l2_batch,
    dot_batch: avx2::dot_batch,
    sq8_dot_batch: avx2::sq8_dot_batch,
    pq_scan: avx2::pq_scan,
    columns: avx2::columns,
    l2_columns: avx2::l2_columns,
    l2_batch_f16: avx2::l2_batch_f16,
    dot_batch_f16: avx2::dot_batch_f16,
    dot_tile: avx2::dot_tile,
    to_half: avx2::to_half,
};

#[cfg(target_arch = "x86_64")]
static AVX512: Kernels = Kernels {
    name: "avx512",
    l2: avx512::l2,
    dot: avx512::dot,
    l2_batch: avx512::l2_batch,
    dot_batch: avx512::dot_batch,
    sq8_dot_batch: avx512::sq8_dot_batch,
    pq_scan: avx512::pq_scan,
    columns: avx512::columns,
    l2_columns: avx512::l2_columns,
    l2_batch_f16: avx512::l2_batch_f16,
    dot_batch_f16: avx512::dot_batch_f16,
    dot_tile: avx512::dot_tile,
    // F16C conversion; AVX-512 is only selected where AVX2, FMA and F16C are present too.
    to_half: avx2::to_half,
};

static SELECTED: OnceLock<&'static Kernels> = OnceLock::new();

/// The kernels of this CPU, detected once.
#[inline]
pub fn get() -> &'static Kernels {
    SELECTED.get_or_init(select)
}

/// Every kernel table this CPU can run, the scalar reference first. Used by tests and
/// benchmarks; production code calls [`get`].
pub fn available() -> Vec<&'static Kernels> {
    let mut v: Vec<&'static Kernels> = vec![&SCALAR];
    #[cfg(target_arch = "x86_64")]
    {
        if avx2_supported() {
            v.push(&AVX2);
        }
        if avx512_supported() {
            v.push(&AVX512);
        }
    }
    v
}

/// The scalar reference kernels.
pub fn scalar() -> &'static Kernels {
    &SCALAR
}

#[cfg(target_arch = "x86_64")]
fn avx2_supported() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[cfg(target_arch = "x86_64")]
fn avx512_supported() -> bool {
    is_x86_feature_detected!("avx512f") && avx2_supported()
}

fn select() -> &'static Kernels {
    let all = available();
    let best = all.last().copied().unwrap_or(&SCALAR);
    match std::env::var("QUIVER_KERNELS") {
        Ok(want) => all.iter().copied().find(|k| k.name == want).unwrap_or(best),
        Err(_) => best,
    }
}

/// Which cache a [`prefetch`] fills.
#[derive(Clone, Copy)]
pub enum CacheLevel {
    /// For data read next (the rows a re-rank is about to compute).
    L1,
    /// For data read a little later (the head of the next list to scan), which a scan in
    /// between would push out of L1.
    L2,
}

/// Hints the CPU to fetch the first `max_bytes` of `v` (a no-op where there is no such hint),
/// so that the misses of reads coming soon overlap instead of queueing one by one.
#[inline]
pub fn prefetch<T>(v: &[T], max_bytes: usize, level: CacheLevel) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _MM_HINT_T1, _mm_prefetch};
        let bytes = std::mem::size_of_val(v).min(max_bytes);
        let p = v.as_ptr().cast::<i8>();
        for off in (0..bytes).step_by(64) {
            // SAFETY: SSE is part of x86_64; a prefetch never faults (and `off` stays inside v).
            unsafe {
                match level {
                    CacheLevel::L1 => _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)),
                    CacheLevel::L2 => _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(off)),
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (v, max_bytes, level);
}
