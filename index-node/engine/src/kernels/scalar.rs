//! Scalar reference kernels: plain loops, the definition the SIMD kernels must match.

pub(super) fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub(super) fn l2_batch(q: &[f32], rows: &[f32], out: &mut [f32]) {
    let d = q.len();
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(d)) {
        *o = l2(q, row);
    }
}

pub(super) fn dot_batch(q: &[f32], rows: &[f32], out: &mut [f32]) {
    let d = q.len();
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(d)) {
        *o = dot(q, row);
    }
}

pub(super) fn sq8_dot_batch(w: &[f32], codes: &[u8], out: &mut [f32]) {
    let d = w.len();
    for (o, row) in out.iter_mut().zip(codes.chunks_exact(d)) {
        *o = w.iter().zip(row).map(|(w, &c)| w * f32::from(c)).sum();
    }
}

pub(super) fn pq_scan(lut: &[f32], codes: &[u8], out: &mut [f32]) {
    let m = lut.len() / 256;
    for (o, code) in out.iter_mut().zip(codes.chunks_exact(m)) {
        *o = code
            .iter()
            .enumerate()
            .map(|(j, &c)| lut[j * 256 + usize::from(c)])
            .sum();
    }
}

/// Table scan shared by the SIMD tables: table lookups do not vectorise well for 8-bit PQ
/// (gathers are no faster than scalar loads here), so the SIMD tables use this unrolled
/// version, which keeps four independent sums in flight.
#[inline(always)]
pub(super) fn pq_scan_unrolled(lut: &[f32], codes: &[u8], out: &mut [f32]) {
    let m = lut.len() / 256;
    for (o, code) in out.iter_mut().zip(codes.chunks_exact(m)) {
        let mut s = [0f32; 4];
        let mut chunks = code.chunks_exact(4);
        let mut j = 0;
        for c in &mut chunks {
            s[0] += lut[j * 256 + usize::from(c[0])];
            s[1] += lut[(j + 1) * 256 + usize::from(c[1])];
            s[2] += lut[(j + 2) * 256 + usize::from(c[2])];
            s[3] += lut[(j + 3) * 256 + usize::from(c[3])];
            j += 4;
        }
        for &c in chunks.remainder() {
            s[0] += lut[j * 256 + usize::from(c)];
            j += 1;
        }
        *o = (s[0] + s[1]) + (s[2] + s[3]);
    }
}

pub(super) fn columns(w: &[f32], cols: &[f32], base: Option<&[f32]>, scale: f32, out: &mut [f32]) {
    columns_from(0, w, cols, base, scale, out);
}

pub(super) fn l2_columns(t: &[f32], cols: &[f32], out: &mut [f32]) {
    l2_columns_from(0, t, cols, out);
}

/// [`l2_columns`] for the outputs from `start` on (the SIMD kernels' remainder).
pub(super) fn l2_columns_from(start: usize, t: &[f32], cols: &[f32], out: &mut [f32]) {
    let n = out.len();
    for i in start..n {
        let mut acc = 0.0;
        for (d, &td) in t.iter().enumerate() {
            let diff = td - cols[d * n + i];
            acc += diff * diff;
        }
        out[i] = acc;
    }
}

/// [`columns`] for the outputs from `start` on (the SIMD kernels' remainder).
pub(super) fn columns_from(
    start: usize,
    w: &[f32],
    cols: &[f32],
    base: Option<&[f32]>,
    scale: f32,
    out: &mut [f32],
) {
    let n = out.len();
    for i in start..n {
        let mut acc = 0.0;
        for (d, &wd) in w.iter().enumerate() {
            acc += wd * cols[d * n + i];
        }
        out[i] = base.map_or(0.0, |b| b[i]) + scale * acc;
    }
}

fn f16_row<const L2: bool>(q: &[f32], row: &[u16]) -> f32 {
    q.iter()
        .zip(row)
        .map(|(&a, &h)| {
            let x = crate::half::f16_to_f32(h);
            if L2 { (x - a) * (x - a) } else { x * a }
        })
        .sum()
}

pub(super) fn l2_batch_f16(q: &[f32], rows: &[u16], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(q.len().max(1))) {
        *o = f16_row::<true>(q, row);
    }
}

pub(super) fn dot_batch_f16(q: &[f32], rows: &[u16], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(q.len().max(1))) {
        *o = f16_row::<false>(q, row);
    }
}

pub(super) fn to_half(x: &[f32], out: &mut [u16]) -> (f32, f32) {
    let (mut e2, mut n2) = (0f32, 0f32);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = crate::half::f32_to_f16(v);
        let d = crate::half::f16_to_f32(*o) - v;
        e2 += d * d;
        n2 += v * v;
    }
    (e2, n2)
}
