//! `quiver-ivf`: the IVF (inverted file) vector index engine embedded in every Quiver index
//! node.
//!
//! * [`kmeans`]: coarse-quantizer training (subsampling, k-means++ or random init, empty
//!   cluster repair, optional size balancing), assignment as a blocked matrix product.
//! * [`IvfIndex`]: lists encoded as Flat, SQ8 or PQ (residual), add/remove, search over the
//!   nearest lists or over lists chosen by a router, optional exact re-ranking.
//! * [`kernels`]: scalar, AVX2 and AVX-512 kernels behind one table chosen at start.
//! * [`format`]: versioned, checksummed files whose lists can be fetched one by one.
//! * [`dataset`]: `.fvecs`/`.ivecs`/`.bvecs`/`.npy` readers, synthetic data, ground truth.
//!
//! Distances are "smaller is better" everywhere (see [`Metric`]).

mod assign;
pub mod dataset;
mod error;
pub mod format;
pub mod half;
mod invlist;
mod ivf;
pub mod kernels;
pub mod kmeans;
mod metric;
mod pq;
mod rerank;
mod rng;
mod split;
mod sq8;
pub mod topk;

pub use error::{IvfError, MAX_SQUARED_NORM, Result, squared_norm};
pub use invlist::InvertedList;
pub use ivf::{IvfIndex, IvfParams, ListStats, QuantizerKind, SearchParams, SearchStats};
pub use kmeans::{KMeansInit, KMeansParams};
pub use metric::Metric;
pub use rng::Rng;
pub use topk::Neighbor;
