//! The dot-product micro-kernel behind k-means assignment and bulk coarse assignment: a tile
//! of 8 points against a panel of 32 centroids, both stored dimension-major, so each step is
//! 8 broadcasts, 2-4 vector loads and 16-32 FMAs with the 256 accumulators kept in registers
//! (a GEMM inner loop, without a BLAS dependency). The SIMD versions live beside the other
//! kernels of their ISA.

pub const TILE_P: usize = 8;
pub const TILE_C: usize = 32;

/// Scalar reference: the same sums with plain multiply-add.
pub(super) fn tile_scalar(xt: &[f32], panel: &[f32], acc: &mut [[f32; TILE_C]; TILE_P]) {
    *acc = [[0f32; TILE_C]; TILE_P];
    for (xs, cs) in xt.chunks_exact(TILE_P).zip(panel.chunks_exact(TILE_C)) {
        for p in 0..TILE_P {
            for j in 0..TILE_C {
                acc[p][j] += xs[p] * cs[j];
            }
        }
    }
}
