//! AVX2 + FMA kernels. Only reachable through the dispatch table after CPU detection, which
//! is what makes the safe wrappers sound.

use std::arch::x86_64::*;

#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
    _mm_cvtss_f32(s)
}

/// One pair, summed in exactly the order of one row of `batch_impl`, so that a distance is
/// bit-identical whichever path computed it (shards and routers must agree on ties).
#[target_feature(enable = "avx2,fma")]
unsafe fn pair_impl<const L2: bool>(q: &[f32], x: &[f32]) -> f32 {
    let n = q.len().min(x.len());
    let (pq, px) = (q.as_ptr(), x.as_ptr());
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY: loads of 8 floats at offsets below n - 7.
    unsafe {
        while i + 8 <= n {
            let qv = _mm256_loadu_ps(pq.add(i));
            let xv = _mm256_loadu_ps(px.add(i));
            acc = if L2 {
                let diff = _mm256_sub_ps(xv, qv);
                _mm256_fmadd_ps(diff, diff, acc)
            } else {
                _mm256_fmadd_ps(xv, qv, acc)
            };
            i += 8;
        }
    }
    let mut s = unsafe { hsum(acc) };
    for j in i..n {
        s += if L2 {
            (x[j] - q[j]) * (x[j] - q[j])
        } else {
            x[j] * q[j]
        };
    }
    s
}

/// Four rows at a time share each load of the query, which halves the loads per FMA.
#[target_feature(enable = "avx2,fma")]
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
        let row = |k: usize| &rows[(r + k) * d..(r + k + 1) * d];
        let p = [
            row(0).as_ptr(),
            row(1).as_ptr(),
            row(2).as_ptr(),
            row(3).as_ptr(),
        ];
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // Prefetch 8 rows ahead: hardware prefetchers stop at page boundaries.
        let ahead = p[0].wrapping_add(8 * d);
        // SAFETY: loads of 8 floats at offsets below d - 7 of rows of length d; prefetches
        // never fault.
        unsafe {
            while i + 8 <= d {
                let qv = _mm256_loadu_ps(pq.add(i));
                if i % 16 == 0 {
                    for k in 0..4 {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(k * d + i).cast());
                    }
                }
                for k in 0..4 {
                    let x = _mm256_loadu_ps(p[k].add(i));
                    acc[k] = if L2 {
                        let diff = _mm256_sub_ps(x, qv);
                        _mm256_fmadd_ps(diff, diff, acc[k])
                    } else {
                        _mm256_fmadd_ps(x, qv, acc[k])
                    };
                }
                i += 8;
            }
        }
        for k in 0..4 {
            let mut s = unsafe { hsum(acc[k]) };
            let rk = row(k);
            for j in i..d {
                s += if L2 {
                    (rk[j] - q[j]) * (rk[j] - q[j])
                } else {
                    rk[j] * q[j]
                };
            }
            out[r + k] = s;
        }
        r += 4;
    }
    while r < n {
        let row = &rows[r * d..(r + 1) * d];
        out[r] = unsafe { pair_impl::<L2>(q, row) };
        r += 1;
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn sq8_impl(w: &[f32], codes: &[u8], out: &mut [f32]) {
    let d = w.len();
    if d == 0 {
        out.fill(0.0);
        return;
    }
    let n = out.len().min(codes.len() / d);
    let pw = w.as_ptr();
    for (r, o) in out.iter_mut().enumerate().take(n) {
        let row = &codes[r * d..(r + 1) * d];
        let pc = row.as_ptr();
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: reads 8 or 16 bytes / floats at offsets below d - 7 (resp. d - 15).
        unsafe {
            while i + 16 <= d {
                let c = _mm_loadu_si128(pc.add(i).cast());
                let c0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c));
                let c1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(c, 8)));
                acc0 = _mm256_fmadd_ps(c0, _mm256_loadu_ps(pw.add(i)), acc0);
                acc1 = _mm256_fmadd_ps(c1, _mm256_loadu_ps(pw.add(i + 8)), acc1);
                i += 16;
            }
            if i + 8 <= d {
                let c = _mm_loadl_epi64(pc.add(i).cast());
                let c0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c));
                acc0 = _mm256_fmadd_ps(c0, _mm256_loadu_ps(pw.add(i)), acc0);
                i += 8;
            }
        }
        let mut s = unsafe { hsum(_mm256_add_ps(acc0, acc1)) };
        for j in i..d {
            s += w[j] * f32::from(row[j]);
        }
        *o = s;
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn pq_impl(lut: &[f32], codes: &[u8], out: &mut [f32]) {
    super::scalar::pq_scan_unrolled(lut, codes, out)
}

// SAFETY (all wrappers): the dispatch table holding them is only handed out after
// `is_x86_feature_detected!` confirmed AVX2 and FMA.
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

/// 8 points x 32 centroids in three passes over the dimensions: points 0-5 against centroids
/// 0-15, then 16-31 (12 accumulators each, the most AVX2's 16 registers allow beside two
/// centroid vectors and a broadcast: enough independent chains to cover the FMA latency),
/// then points 6-7 against all 32 (8 accumulators).
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_impl(
    xt: &[f32],
    panel: &[f32],
    acc_out: &mut [[f32; super::tile::TILE_C]; super::tile::TILE_P],
) {
    use super::tile::{TILE_C, TILE_P};
    let steps = (xt.len() / TILE_P).min(panel.len() / TILE_C);
    let (px, pc) = (xt.as_ptr(), panel.as_ptr());
    // SAFETY: step d reads xt[d*8..d*8+8] and panel[d*32..d*32+32], within `steps`; stores
    // stay inside the 8 x 32 output.
    unsafe {
        for j0 in [0usize, 16] {
            let mut a = [[_mm256_setzero_ps(); 2]; 6];
            for d in 0..steps {
                let c0 = _mm256_loadu_ps(pc.add(d * TILE_C + j0));
                let c1 = _mm256_loadu_ps(pc.add(d * TILE_C + j0 + 8));
                for (p, ap) in a.iter_mut().enumerate() {
                    let x = _mm256_set1_ps(*px.add(d * TILE_P + p));
                    ap[0] = _mm256_fmadd_ps(x, c0, ap[0]);
                    ap[1] = _mm256_fmadd_ps(x, c1, ap[1]);
                }
            }
            for (p, ap) in a.iter().enumerate() {
                let row = acc_out[p].as_mut_ptr().add(j0);
                _mm256_storeu_ps(row, ap[0]);
                _mm256_storeu_ps(row.add(8), ap[1]);
            }
        }
        let mut a = [[_mm256_setzero_ps(); 4]; 2];
        for d in 0..steps {
            let c = [0usize, 8, 16, 24].map(|o| _mm256_loadu_ps(pc.add(d * TILE_C + o)));
            for (p, ap) in a.iter_mut().enumerate() {
                let x = _mm256_set1_ps(*px.add(d * TILE_P + 6 + p));
                for (acc, &cv) in ap.iter_mut().zip(&c) {
                    *acc = _mm256_fmadd_ps(x, cv, *acc);
                }
            }
        }
        for (p, ap) in a.iter().enumerate() {
            let row = acc_out[6 + p].as_mut_ptr();
            for (r, &v) in ap.iter().enumerate() {
                _mm256_storeu_ps(row.add(8 * r), v);
            }
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

/// 8 outputs per step, each a chain of `w.len()` multiply-adds kept in a register; the
/// steps are independent, so out-of-order execution overlaps their chains.
#[target_feature(enable = "avx2,fma")]
unsafe fn columns_impl(w: &[f32], cols: &[f32], base: Option<&[f32]>, scale: f32, out: &mut [f32]) {
    let n = out.len();
    assert!(cols.len() >= w.len() * n && base.is_none_or(|b| b.len() >= n));
    let full = n / 8 * 8;
    let pc = cols.as_ptr();
    let po = out.as_mut_ptr();
    // SAFETY: i + 8 <= full <= n; column d spans pc + d*n .. pc + (d+1)*n within cols
    // (asserted above), and base holds at least n values.
    unsafe {
        let sv = _mm256_set1_ps(scale);
        let mut i = 0;
        while i < full {
            let mut acc = _mm256_setzero_ps();
            for (d, &wd) in w.iter().enumerate() {
                acc = _mm256_fmadd_ps(_mm256_set1_ps(wd), _mm256_loadu_ps(pc.add(d * n + i)), acc);
            }
            let mut v = _mm256_mul_ps(acc, sv);
            if let Some(b) = base {
                v = _mm256_add_ps(v, _mm256_loadu_ps(b.as_ptr().add(i)));
            }
            _mm256_storeu_ps(po.add(i), v);
            i += 8;
        }
    }
    super::scalar::columns_from(full, w, cols, base, scale, out);
}

pub(super) fn columns(w: &[f32], cols: &[f32], base: Option<&[f32]>, scale: f32, out: &mut [f32]) {
    unsafe { columns_impl(w, cols, base, scale, out) }
}

/// `out[i] = Σ_d (t[d] − cols[d·n + i])²`: 8 outputs per step, as in `columns_impl`.
#[target_feature(enable = "avx2,fma")]
unsafe fn l2_columns_impl(t: &[f32], cols: &[f32], out: &mut [f32]) {
    let n = out.len();
    assert!(cols.len() >= t.len() * n);
    let full = n / 8 * 8;
    let pc = cols.as_ptr();
    let po = out.as_mut_ptr();
    // SAFETY: i + 8 <= full <= n, and column d spans pc + d*n .. pc + (d+1)*n within
    // cols (asserted above).
    unsafe {
        let mut i = 0;
        while i < full {
            let mut acc = _mm256_setzero_ps();
            for (d, &td) in t.iter().enumerate() {
                let diff = _mm256_sub_ps(_mm256_set1_ps(td), _mm256_loadu_ps(pc.add(d * n + i)));
                acc = _mm256_fmadd_ps(diff, diff, acc);
            }
            _mm256_storeu_ps(po.add(i), acc);
            i += 8;
        }
    }
    super::scalar::l2_columns_from(full, t, cols, out);
}

pub(super) fn l2_columns(t: &[f32], cols: &[f32], out: &mut [f32]) {
    unsafe { l2_columns_impl(t, cols, out) }
}

/// Half-precision rows (F16C conversion), four at a time.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn batch_f16_impl<const L2: bool>(q: &[f32], rows: &[u16], out: &mut [f32]) {
    let d = q.len();
    if d == 0 {
        out.fill(0.0);
        return;
    }
    let n = out.len().min(rows.len() / d);
    let pq = q.as_ptr();
    let full = d / 8 * 8;
    let mut r = 0;
    while r < n {
        let g = (n - r).min(4);
        let base = rows[r * d..(r + g) * d].as_ptr();
        let ahead = base.wrapping_add(16 * d);
        let mut acc = [_mm256_setzero_ps(); 4];
        // SAFETY: row k < g spans base + k*d .. base + (k+1)*d; loads of 8 halves stay
        // below `full` <= d; prefetches never fault.
        unsafe {
            let mut i = 0;
            while i < full {
                let qv = _mm256_loadu_ps(pq.add(i));
                for (k, a) in acc.iter_mut().enumerate().take(g) {
                    if i % 32 == 0 {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(k * d + i).cast());
                    }
                    let x = _mm256_cvtph_ps(_mm_loadu_si128(base.add(k * d + i).cast()));
                    *a = if L2 {
                        let diff = _mm256_sub_ps(x, qv);
                        _mm256_fmadd_ps(diff, diff, *a)
                    } else {
                        _mm256_fmadd_ps(x, qv, *a)
                    };
                }
                i += 8;
            }
        }
        for (k, a) in acc.iter().enumerate().take(g) {
            let mut s = unsafe { hsum(*a) };
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

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn to_half_impl(x: &[f32], out: &mut [u16]) -> (f32, f32) {
    let n = x.len().min(out.len());
    let (px, po) = (x.as_ptr(), out.as_mut_ptr());
    let (mut e, mut m) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY: loads of 8 floats and stores of 8 halves at offsets below n - 7.
    unsafe {
        while i + 8 <= n {
            let v = _mm256_loadu_ps(px.add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(po.add(i).cast(), h);
            let d = _mm256_sub_ps(_mm256_cvtph_ps(h), v);
            e = _mm256_fmadd_ps(d, d, e);
            m = _mm256_fmadd_ps(v, v, m);
            i += 8;
        }
    }
    let (te, tn) = super::scalar::to_half(&x[i..n], &mut out[i..n]);
    unsafe { (hsum(e) + te, hsum(m) + tn) }
}

pub(super) fn to_half(x: &[f32], out: &mut [u16]) -> (f32, f32) {
    unsafe { to_half_impl(x, out) }
}
