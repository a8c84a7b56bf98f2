//! IEEE 754 half-precision conversion (scalar reference; the SIMD kernels convert with
//! F16C / AVX-512 instructions, which round the same way).

/// Largest magnitude kept in the half-precision scan copy: beyond it, values would round to
/// infinity, so an index holding such vectors scans in f32 instead.
pub const HALF_SAFE_MAX: f32 = 60000.0;

/// f32 → f16 bits, round to nearest even; overflow gives infinity, NaN stays NaN.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x007f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        // Subnormal: shift the mantissa (with its implicit bit) into place, rounding.
        let m = man | 0x0080_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1u32 << shift) - 1);
        let mut h = m >> shift;
        if rest > half || (rest == half && h & 1 == 1) {
            h += 1;
        }
        return sign | h as u16;
    }
    let mut h = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        h += 1; // may carry into the exponent, which is the correct rounding
    }
    sign | h as u16
}

/// f16 bits → f32 (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise.
            let mut e = 127 - 15 + 1;
            let mut m = man;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// How far a half-precision copy can be from its f32 rows: the largest `‖h − x‖` and the
/// largest `‖x‖` over the rows. Upper bounds measured on the data itself (f32 sums scaled up
/// by their worst rounding), so a scan of the copy can bound every distance it computes,
/// whatever the values' range.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HalfError {
    pub err: f32,
    pub norm: f32,
}

impl HalfError {
    pub fn max(self, other: HalfError) -> HalfError {
        HalfError {
            err: self.err.max(other.err),
            norm: self.norm.max(other.norm),
        }
    }
}

/// Appends the half-precision copy of `rows` (rows of `dim` values) to `out` and returns
/// its error bound.
pub fn encode_rows(rows: &[f32], dim: usize, out: &mut Vec<u16>) -> HalfError {
    let kern = crate::kernels::get();
    let dim = dim.max(1);
    // The f32 sums of `dim` squares are within (dim + 1)·u of exact (the differences h − x
    // are exact: h and x are within a factor 2); scaling by 1 + (dim + 8)·ε covers that.
    let up = 1.0 + (dim as f32 + 8.0) * f32::EPSILON;
    let mut bound = HalfError::default();
    let start = out.len();
    out.resize(start + rows.len() / dim * dim, 0);
    for (row, h) in rows
        .chunks_exact(dim)
        .zip(out[start..].chunks_exact_mut(dim))
    {
        let (e2, n2) = (kern.to_half)(row, h);
        bound = bound.max(HalfError {
            err: (e2 * up).sqrt().next_up(),
            norm: (n2 * up).sqrt().next_up(),
        });
    }
    bound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_values_round_trip() {
        for x in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            65504.0,
            6.1035156e-5,
            5.9604645e-8,
            0.333_251_95,
        ] {
            assert_eq!(f16_to_f32(f32_to_f16(x)), x, "{x}");
        }
        assert_eq!(f16_to_f32(f32_to_f16(1e6)), f32::INFINITY);
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
    }

    #[test]
    fn rounding_error_is_half_an_ulp() {
        let mut x = 1e-4f32;
        while x < 4e4 {
            for v in [x, -x * 1.37] {
                let r = f16_to_f32(f32_to_f16(v));
                assert!(
                    (r - v).abs() <= v.abs() * (1.0 / 2048.0) + 3e-8,
                    "{v} -> {r}"
                );
            }
            x *= 1.0173;
        }
    }

    #[test]
    fn encode_rows_bounds_the_error_of_every_row() {
        let rows = [3.0f32, 4.0, 0.1, -0.2, 1e-6, 2.0];
        let mut out = Vec::new();
        let b = encode_rows(&rows, 3, &mut out);
        assert_eq!(out.len(), 6);
        for (row, h) in rows.chunks(3).zip(out.chunks(3)) {
            let e: f32 = row
                .iter()
                .zip(h)
                .map(|(&x, &h)| (f16_to_f32(h) - x).powi(2))
                .sum::<f32>()
                .sqrt();
            let n: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!(e <= b.err && n <= b.norm, "{e} {n} {b:?}");
        }
        assert!(b.err > 0.0 && b.err < 5.1 * 3.0f32.sqrt() / 2048.0, "{b:?}");
    }

    #[test]
    fn matches_hardware_conversion_where_available() {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("f16c") {
            // Magnitudes from 1e-8 to 7e4 (subnormal to overflow), both signs.
            let mut m = 1e-8f32;
            while m < 7e4 {
                for x in [m, -m, m * 1.000_37] {
                    // SAFETY: F16C was detected above.
                    let hw = unsafe { hw_convert(x) };
                    assert_eq!(f32_to_f16(x), hw, "{x}");
                }
                m *= 1.003;
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "f16c")]
    unsafe fn hw_convert(x: f32) -> u16 {
        use std::arch::x86_64::*;
        let v = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set1_ps(x));
        _mm_extract_epi16::<0>(v) as u16
    }
}
