//! AVX-512F kernels. Tails use masked loads, so no scalar remainder loop is needed. Only
//! reachable through the dispatch table after CPU detection, which makes the wrappers sound.

use std::arch::x86_64::*;

#[inline(always)]
fn tail_mask(rem: usize) -> __mmask16 {
    if rem >= 16 {
        0xffff
    } else {
        ((1u32 << rem) - 1) as __mmask16
    }
}

/// One pair, summed in exactly the order of one row of `batch_impl`, so that a distance is
/// bit-identical whichever path computed it (shards and routers must agree on ties).
#[target_feature(enable = "avx512f")]
unsafe fn pair_impl<const L2: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    // SAFETY: full loads stay below n; the masked tail load touches only lanes below n.
    unsafe {
        while i + 16 <= n {
            let (x, y) = (_mm512_loadu_ps(pb.add(i)), _mm512_loadu_ps(pa.add(i)));
            acc = if L2 {
                let d = _mm512_sub_ps(x, y);
                _mm512_fmadd_ps(d, d, acc)
            } else {
                _mm512_fmadd_ps(x, y, acc)
            };
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            let (x, y) = (
                _mm512_maskz_loadu_ps(m, pb.add(i)),
                _mm512_maskz_loadu_ps(m, pa.add(i)),
            );
            acc = if L2 {
                let d = _mm512_sub_ps(x, y);
                _mm512_fmadd_ps(d, d, acc)
            } else {
                _mm512_fmadd_ps(x, y, acc)
            };
        }
    }
    _mm512_reduce_add_ps(acc)
}

/// Four rows at a time share each load of the query.
#[target_feature(enable = "avx512f")]
unsafe fn batch_impl<const L2: bool>(q: &[f32], rows: &[f32], out: &mut [f32]) {
    let d = q.len();
    if d == 0 {
        out.fill(0.0);
        return;
    }
    let n = out.len().min(rows.len() / d);
    let pq = q.as_ptr();
    let mut r = 0;
    while r + 4 <= n {
        let base = rows[r * d..(r + 4) * d].as_ptr();
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // Rows of a list are contiguous: fetch 8 rows ahead, because hardware prefetchers
        // stop at 4 KiB page boundaries (every 8 rows at d = 128) and the scan is memory bound.
        let ahead = base.wrapping_add(8 * d);
        // SAFETY: row k spans base + k*d .. base + (k+1)*d; full loads stay below d per row,
        // masked lanes beyond it are not read; prefetches never fault.
        unsafe {
            while i + 16 <= d {
                let qv = _mm512_loadu_ps(pq.add(i));
                for (k, a) in acc.iter_mut().enumerate() {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(k * d + i).cast());
                    let x = _mm512_loadu_ps(base.add(k * d + i));
                    *a = if L2 {
                        let diff = _mm512_sub_ps(x, qv);
                        _mm512_fmadd_ps(diff, diff, *a)
                    } else {
                        _mm512_fmadd_ps(x, qv, *a)
                    };
                }
                i += 16;
            }
            if i < d {
                let m = tail_mask(d - i);
                let qv = _mm512_maskz_loadu_ps(m, pq.add(i));
                for (k, a) in acc.iter_mut().enumerate() {
                    let x = _mm512_maskz_loadu_ps(m, base.add(k * d + i));
                    *a = if L2 {
                        let diff = _mm512_sub_ps(x, qv);
                        _mm512_fmadd_ps(diff, diff, *a)
                    } else {
                        _mm512_fmadd_ps(x, qv, *a)
                    };
                }
            }
        }
        for (k, a) in acc.iter().enumerate() {
            out[r + k] = _mm512_reduce_add_ps(*a);
        }
        r += 4;
    }
    while r < n {
        out[r] = unsafe { pair_impl::<L2>(q, &rows[r * d..(r + 1) * d]) };
        r += 1;
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn sq8_impl(w: &[f32], codes: &[u8], out: &mut [f32]) {
    let d = w.len();
    if d == 0 {
        out.fill(0.0);
        return;
    }
    let n = out.len().min(codes.len() / d);
    let pw = w.as_ptr();
    let mut r = 0;
    // Two rows at a time share the weight loads.
    while r + 2 <= n {
        let p0 = codes[r * d..(r + 1) * d].as_ptr();
        let p1 = codes[(r + 1) * d..(r + 2) * d].as_ptr();
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY: 16-byte code loads and 16-float weight loads stay below d; prefetches
        // (16 rows ahead, one cache line per 64 bytes) never fault.
        unsafe {
            while i + 16 <= d {
                if i % 64 == 0 {
                    _mm_prefetch::<_MM_HINT_T0>(p0.wrapping_add(16 * d + i).cast());
                    _mm_prefetch::<_MM_HINT_T0>(p1.wrapping_add(16 * d + i).cast());
                }
                let wv = _mm512_loadu_ps(pw.add(i));
                let c0 =
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p0.add(i).cast())));
                let c1 =
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p1.add(i).cast())));
                a0 = _mm512_fmadd_ps(c0, wv, a0);
                a1 = _mm512_fmadd_ps(c1, wv, a1);
                i += 16;
            }
        }
        let (mut s0, mut s1) = (_mm512_reduce_add_ps(a0), _mm512_reduce_add_ps(a1));
        for j in i..d {
            s0 += w[j] * f32::from(codes[r * d + j]);
            s1 += w[j] * f32::from(codes[(r + 1) * d + j]);
        }
        out[r] = s0;
        out[r + 1] = s1;
        r += 2;
    }
    if r < n {
        super::scalar::sq8_dot_batch(w, &codes[r * d..(r + 1) * d], &mut out[r..r + 1]);
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn pq_impl(lut: &[f32], codes: &[u8], out: &mut [f32]) {
    super::scalar::pq_scan_unrolled(lut, codes, out)
}

// SAFETY (all wrappers): the dispatch table holding them is only handed out after
// `is_x86_feature_detected!` confirmed AVX-512F.
pub(super) fn l2(a: &[f32], b: &[f32]) -> f32 {
    unsafe { pair_impl::<true>(a, b) }
}
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    unsafe { pair_impl::<false>(a, b) }
}
pub(super) fn l2_batch(q: &[f32], rows: &[f32], out: &mut [f32]) {
    unsafe { batch_impl::<true>(q, rows, out) }
}
pub(super) fn dot_batch(q: &[f32], rows: &[f32], out: &mut [f32]) {
    unsafe { batch_impl::<false>(q, rows, out) }
}
pub(super) fn sq8_dot_batch(w: &[f32], codes: &[u8], out: &mut [f32]) {
    unsafe { sq8_impl(w, codes, out) }
}
pub(super) fn pq_scan(lut: &[f32], codes: &[u8], out: &mut [f32]) {
    unsafe { pq_impl(lut, codes, out) }
}

/// 8 points x 32 centroids: 16 accumulators, 2 panel loads and 8 broadcasts per step.
#[target_feature(enable = "avx512f")]
unsafe fn tile_impl(
    xt: &[f32],
    panel: &[f32],
    acc_out: &mut [[f32; super::tile::TILE_C]; super::tile::TILE_P],
) {
    use super::tile::{TILE_C, TILE_P};
    let steps = (xt.len() / TILE_P).min(panel.len() / TILE_C);
    let (px, pc) = (xt.as_ptr(), panel.as_ptr());
    let mut a = [[_mm512_setzero_ps(); 2]; TILE_P];
    // SAFETY: step d reads xt[d*8..d*8+8] and panel[d*32..d*32+32], within `steps`.
    unsafe {
        for d in 0..steps {
            let c0 = _mm512_loadu_ps(pc.add(d * TILE_C));
            let c1 = _mm512_loadu_ps(pc.add(d * TILE_C + 16));
            for (p, ap) in a.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*px.add(d * TILE_P + p));
                ap[0] = _mm512_fmadd_ps(x, c0, ap[0]);
                ap[1] = _mm512_fmadd_ps(x, c1, ap[1]);
            }
        }
        for (p, ap) in a.iter().enumerate() {
            _mm512_storeu_ps(acc_out[p].as_mut_ptr(), ap[0]);
            _mm512_storeu_ps(acc_out[p].as_mut_ptr().add(16), ap[1]);
        }
    }
}

pub(super) fn dot_tile(
    xt: &[f32],
    panel: &[f32],
    acc: &mut [[f32; super::tile::TILE_C]; super::tile::TILE_P],
) {
    unsafe { tile_impl(xt, panel, acc) }
}

/// 16 outputs per step, each a chain of `w.len()` multiply-adds kept in a register; the
/// steps are independent, so out-of-order execution overlaps their chains.
#[target_feature(enable = "avx512f")]
unsafe fn columns_impl(w: &[f32], cols: &[f32], base: Option<&[f32]>, scale: f32, out: &mut [f32]) {
    let n = out.len();
    assert!(cols.len() >= w.len() * n && base.is_none_or(|b| b.len() >= n));
    let full = n / 16 * 16;
    let pc = cols.as_ptr();
    let po = out.as_mut_ptr();
    // SAFETY: i + 16 <= full <= n; column d spans pc + d*n .. pc + (d+1)*n within cols
    // (asserted above), and base holds at least n values.
    unsafe {
        let sv = _mm512_set1_ps(scale);
        let mut i = 0;
        while i < full {
            let mut acc = _mm512_setzero_ps();
            for (d, &wd) in w.iter().enumerate() {
                acc = _mm512_fmadd_ps(_mm512_set1_ps(wd), _mm512_loadu_ps(pc.add(d * n + i)), acc);
            }
            let mut v = _mm512_mul_ps(acc, sv);
            if let Some(b) = base {
                v = _mm512_add_ps(v, _mm512_loadu_ps(b.as_ptr().add(i)));
            }
            _mm512_storeu_ps(po.add(i), v);
            i += 16;
        }
    }
    super::scalar::columns_from(full, w, cols, base, scale, out);
}

pub(super) fn columns(w: &[f32], cols: &[f32], base: Option<&[f32]>, scale: f32, out: &mut [f32]) {
    unsafe { columns_impl(w, cols, base, scale, out) }
}

/// `out[i] = Σ_d (t[d] − cols[d·n + i])²`: 16 outputs per step, as in `columns_impl`.
#[target_feature(enable = "avx512f")]
unsafe fn l2_columns_impl(t: &[f32], cols: &[f32], out: &mut [f32]) {
    let n = out.len();
    assert!(cols.len() >= t.len() * n);
    let full = n / 16 * 16;
    let pc = cols.as_ptr();
    let po = out.as_mut_ptr();
    // SAFETY: i + 16 <= full <= n, and column d spans pc + d*n .. pc + (d+1)*n within
    // cols (asserted above).
    unsafe {
        let mut i = 0;
        while i < full {
            let mut acc = _mm512_setzero_ps();
            for (d, &td) in t.iter().enumerate() {
                let diff = _mm512_sub_ps(_mm512_set1_ps(td), _mm512_loadu_ps(pc.add(d * n + i)));
                acc = _mm512_fmadd_ps(diff, diff, acc);
            }
            _mm512_storeu_ps(po.add(i), acc);
            i += 16;
        }
    }
    super::scalar::l2_columns_from(full, t, cols, out);
}

pub(super) fn l2_columns(t: &[f32], cols: &[f32], out: &mut [f32]) {
    unsafe { l2_columns_impl(t, cols, out) }
}

/// Half-precision rows, four at a time: half the bytes of the f32 scan for the same work.
#[target_feature(enable = "avx512f")]
unsafe fn batch_f16_impl<const L2: bool>(q: &[f32], rows: &[u16], out: &mut [f32]) {
    let d = q.len();
    if d == 0 {
        out.fill(0.0);
        return;
    }
    let n = out.len().min(rows.len() / d);
    let pq = q.as_ptr();
    let full = d / 16 * 16;
    let mut r = 0;
    while r < n {
        let g = (n - r).min(4);
        let base = rows[r * d..(r + g) * d].as_ptr();
        let ahead = base.wrapping_add(16 * d);
        let mut acc = [_mm512_setzero_ps(); 4];
        // SAFETY: row k < g spans base + k*d .. base + (k+1)*d; loads of 16 halves stay
        // below `full` <= d; prefetches never fault.
        unsafe {
            let mut i = 0;
            while i < full {
                let qv = _mm512_loadu_ps(pq.add(i));
                for (k, a) in acc.iter_mut().enumerate().take(g) {
                    if i % 32 == 0 {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(k * d + i).cast());
                    }
                    let x = _mm512_cvtph_ps(_mm256_loadu_si256(base.add(k * d + i).cast()));
                    *a = if L2 {
                        let diff = _mm512_sub_ps(x, qv);
                        _mm512_fmadd_ps(diff, diff, *a)
                    } else {
                        _mm512_fmadd_ps(x, qv, *a)
                    };
                }
                i += 16;
            }
        }
        for (k, a) in acc.iter().enumerate().take(g) {
            let mut s = _mm512_reduce_add_ps(*a);
            let row = &rows[(r + k) * d..(r + k + 1) * d];
            for j in full..d {
                let x = crate::half::f16_to_f32(row[j]);
                s += if L2 {
                    (x - q[j]) * (x - q[j])
                } else {
                    x * q[j]
                };
            }
            out[r + k] = s;
        }
        r += g;
    }
}

pub(super) fn l2_batch_f16(q: &[f32], rows: &[u16], out: &mut [f32]) {
    unsafe { batch_f16_impl::<true>(q, rows, out) }
}

pub(super) fn dot_batch_f16(q: &[f32], rows: &[u16], out: &mut [f32]) {
    unsafe { batch_f16_impl::<false>(q, rows, out) }
}
