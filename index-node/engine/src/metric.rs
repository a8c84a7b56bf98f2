//! Distance metrics.
//!
//! Internally every distance is "smaller is better": L2 is the squared Euclidean distance,
//! inner product and cosine are the negated dot product. Merging top-k across lists, shards
//! and versions is then always "take the k smallest".

use std::fmt;
use std::str::FromStr;

use crate::error::IvfError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Squared Euclidean distance.
    L2,
    /// Inner product (maximum inner product search).
    InnerProduct,
    /// Cosine similarity: vectors are L2-normalised on add and on query, then compared by
    /// inner product.
    Cosine,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::L2 => "l2",
            Metric::InnerProduct => "ip",
            Metric::Cosine => "cosine",
        }
    }

    /// Whether the engine compares by dot product (IP and cosine) rather than L2.
    pub fn is_dot(self) -> bool {
        !matches!(self, Metric::L2)
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Metric::L2 => 0,
            Metric::InnerProduct => 1,
            Metric::Cosine => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Metric::L2),
            1 => Some(Metric::InnerProduct),
            2 => Some(Metric::Cosine),
            _ => None,
        }
    }

    /// Exact distance between two vectors (already normalised for cosine), smaller is better.
    pub fn distance(self, a: &[f32], b: &[f32]) -> f32 {
        let k = crate::kernels::get();
        match self {
            Metric::L2 => (k.l2)(a, b),
            Metric::InnerProduct => -(k.dot)(a, b),
            // Equals −cos for unit vectors; the engine computes cosine this way.
            Metric::Cosine => 0.5 * (k.l2)(a, b) - 1.0,
        }
    }

    /// The user-facing score of an internal distance: squared L2, or the similarity for
    /// IP and cosine (larger is better there, as users expect).
    pub fn score(self, distance: f32) -> f32 {
        if self.is_dot() { -distance } else { distance }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Metric {
    type Err = IvfError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "l2" | "euclidean" => Ok(Metric::L2),
            "ip" | "inner_product" | "dot" => Ok(Metric::InnerProduct),
            "cosine" | "cos" => Ok(Metric::Cosine),
            other => Err(IvfError::param(
                "metric",
                format!("unknown metric {other:?}; expected l2, ip or cosine"),
            )),
        }
    }
}

/// L2-normalises each row of `data` in place; zero rows stay zero.
pub(crate) fn normalize_rows(data: &mut [f32], dim: usize) {
    let k = crate::kernels::get();
    for row in data.chunks_exact_mut(dim) {
        let n = (k.dot)(row, row).sqrt();
        if n > 0.0 {
            let inv = 1.0 / n;
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}
