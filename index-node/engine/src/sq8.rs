//! 8-bit scalar quantizer, one (min, range) per dimension, trained on residuals to the
//! coarse centroid (as FAISS's IVF-SQ8 does by default): residuals span a much smaller range
//! than raw vectors, so 256 levels lose less.

#[derive(Debug, Clone, PartialEq)]
pub struct Sq8 {
    pub vmin: Vec<f32>,
    /// Per-dimension step between two code levels: (max - min) / 255.
    pub step: Vec<f32>,
}

impl Sq8 {
    pub fn train(residuals: &[f32], dim: usize) -> Sq8 {
        let mut vmin = vec![f32::INFINITY; dim];
        let mut vmax = vec![f32::NEG_INFINITY; dim];
        for row in residuals.chunks_exact(dim) {
            for d in 0..dim {
                vmin[d] = vmin[d].min(row[d]);
                vmax[d] = vmax[d].max(row[d]);
            }
        }
        let step = vmin
            .iter()
            .zip(&vmax)
            .map(|(&lo, &hi)| if hi > lo { (hi - lo) / 255.0 } else { 1.0 })
            .collect();
        for v in vmin.iter_mut() {
            if !v.is_finite() {
                *v = 0.0;
            }
        }
        Sq8 { vmin, step }
    }

    /// Encodes one residual; returns ‖decoded‖², which L2 search needs per entry.
    pub fn encode(&self, x: &[f32], out: &mut [u8]) -> f32 {
        let mut norm = 0.0;
        for d in 0..x.len() {
            let c = ((x[d] - self.vmin[d]) / self.step[d])
                .round()
                .clamp(0.0, 255.0);
            out[d] = c as u8;
            let r = self.vmin[d] + c * self.step[d];
            norm += r * r;
        }
        norm
    }

    #[cfg(test)]
    pub fn decode(&self, code: &[u8], out: &mut [f32]) {
        for d in 0..code.len() {
            out[d] = self.vmin[d] + f32::from(code[d]) * self.step[d];
        }
    }
}
