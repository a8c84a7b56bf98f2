//! AVX-512F kernels. Tails use masked loads, so no scalar remainder loop is needed. Only
//! reachable through the dispatch table after CPU detection, which makes the wrappers sound.

use std::arch::x86_64::*;

#[inline(always)]
fn tail_mask(rem: usize) -> __mmask16 {
    if rem >= 16 { 0xffff } else { ((1u32 << rem) - 1) as __mmask16 }
}

#[target_feature(enable = "avx512f")]
unsafe fn pair_impl<const L2: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm512_setzero_ps();
    let mut acc1 = _mm512_setzero_ps();
    let mut i = 0;
    // SAFETY: full loads stay below n; the masked tail load touches only lanes below n.
    unsafe {
        while i + 32 <= n {
            let (x0, y0) = (_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)));
            let (x1, y1) = (_mm512_loadu_ps(pa.add(i + 16)), _mm512_loadu_ps(pb.add(i + 16)));
            if L2 {
                let (d0, d1) = (_mm512_sub_ps(x0, y0), _mm512_sub_ps(x1, y1));
                acc0 = _mm512_fmadd_ps(d0, d0, acc0);
                acc1 = _mm512_fmadd_ps(d1, d1, acc1);
            } else {
                acc0 = _mm512_fmadd_ps(x0, y0, acc0);
                acc1 = _mm512_fmadd_ps(x1, y1, acc1);
            }
            i += 32;
        }
        while i < n {
            let m = tail_mask(n - i);
            let x = _mm512_maskz_loadu_ps(m, pa.add(i));
            let y = _mm512_maskz_loadu_ps(m, pb.add(i));
            if L2 {
                let d = _mm512_sub_ps(x, y);
                acc0 = _mm512_fmadd_ps(d, d, acc0);
            } else {
                acc0 = _mm512_fmadd_ps(x, y, acc0);
            }
            i += 16;
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
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
        // SAFETY: row k spans base + k*d .. base + (k+1)*d; loads stay below d per row,
        // masked lanes beyond it are not read.
        unsafe {
            while i < d {
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
                i += 16;
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
        // SAFETY: 16-byte code loads and 16-float weight loads stay below d.
        unsafe {
            while i + 16 <= d {
                let wv = _mm512_loadu_ps(pw.add(i));
                let c0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p0.add(i).cast())));
                let c1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p1.add(i).cast())));
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

#[target_feature(enable = "avx512f,fma")]
unsafe fn tile_impl(
    xt: &[f32],
    panel: &[f32],
    acc: &mut [[f32; super::tile::TILE_C]; super::tile::TILE_P],
) {
    super::tile::tile_body(xt, panel, acc)
}

pub(super) fn dot_tile(
    xt: &[f32],
    panel: &[f32],
    acc: &mut [[f32; super::tile::TILE_C]; super::tile::TILE_P],
) {
    unsafe { tile_impl(xt, panel, acc) }
}
