//! Errors of the engine. Every message names what is wrong and where, because these reach
//! operators through logs and gRPC statuses.

use std::path::PathBuf;

/// Result alias of the engine.
pub type Result<T, E = IvfError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum IvfError {
    #[error("{what}: expected dimension {expected}, got {got}")]
    DimensionMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{what}: length {len} is not a multiple of dimension {dim}")]
    RaggedInput {
        what: &'static str,
        len: usize,
        dim: usize,
    },
    #[error("{what}: value {value} at vector {row}, component {col} is not finite")]
    NonFinite {
        what: &'static str,
        row: usize,
        col: usize,
        value: f32,
    },
    #[error(
        "{what}: vector {row} has squared norm {norm2:.3e}, above the limit {limit:.3e}: its \
         distances would overflow single precision (scale the vectors down)"
    )]
    NormOverflow {
        what: &'static str,
        row: usize,
        norm2: f64,
        limit: f64,
    },
    #[error("invalid parameter {name}: {reason}")]
    InvalidParameter { name: &'static str, reason: String },
    #[error("{what}: {got} training points for {need} clusters; need at least {need}")]
    TooFewTrainingPoints {
        what: &'static str,
        got: usize,
        need: usize,
    },
    #[error("{what}: ids has {ids} entries but there are {vectors} vectors")]
    IdCountMismatch {
        what: &'static str,
        ids: usize,
        vectors: usize,
    },
    #[error("list id {list} out of range (index has {nlist} lists)")]
    ListOutOfRange { list: u32, nlist: usize },
    #[error("rerank requested but the index does not keep raw vectors (build it with keep_raw)")]
    RerankWithoutRaw,
    #[error("{file}: {reason}")]
    Format { file: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl IvfError {
    pub(crate) fn format(file: &str, reason: impl Into<String>) -> Self {
        IvfError::Format {
            file: file.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn param(name: &'static str, reason: impl Into<String>) -> Self {
        IvfError::InvalidParameter {
            name,
            reason: reason.into(),
        }
    }
}

/// Largest squared norm of a vector the engine accepts. Squared L2 distances are at most
/// `2·|q|² + 2·|x|²`, so with both norms below `f32::MAX / 8` no distance overflows to
/// infinity (an overflowing distance would be dropped, and the query would answer nothing).
pub const MAX_SQUARED_NORM: f64 = f32::MAX as f64 / 8.0;

/// `|v|²`, summed in double precision (exact enough to compare with [`MAX_SQUARED_NORM`]).
pub fn squared_norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x) * f64::from(x)).sum()
}

/// Checks that `data` holds whole rows of `dim` finite values whose squared norms stay below
/// [`MAX_SQUARED_NORM`].
pub(crate) fn check_vectors(what: &'static str, data: &[f32], dim: usize) -> Result<usize> {
    if dim == 0 {
        return Err(IvfError::param("dim", "must be at least 1"));
    }
    if !data.len().is_multiple_of(dim) {
        return Err(IvfError::RaggedInput {
            what,
            len: data.len(),
            dim,
        });
    }
    if let Some(pos) = data.iter().position(|v| !v.is_finite()) {
        return Err(IvfError::NonFinite {
            what,
            row: pos / dim,
            col: pos % dim,
            value: data[pos],
        });
    }
    // A single-precision pass (it vectorises); an overflow shows as infinity, which fails the
    // comparison too. Only a rejected row is summed again, exactly, for the message.
    let limit = MAX_SQUARED_NORM as f32;
    for (row, v) in data.chunks_exact(dim).enumerate() {
        let n2: f32 = v.iter().map(|x| x * x).sum();
        if n2 > limit {
            let norm2 = squared_norm(v);
            if norm2 > MAX_SQUARED_NORM {
                return Err(IvfError::NormOverflow {
                    what,
                    row,
                    norm2,
                    limit: MAX_SQUARED_NORM,
                });
            }
        }
    }
    Ok(data.len() / dim)
}

/// Checks one query vector: right dimension, non-empty, finite.
pub(crate) fn check_query(query: &[f32], dim: usize) -> Result<()> {
    if query.len() != dim {
        return Err(IvfError::DimensionMismatch {
            what: "query",
            expected: dim,
            got: query.len(),
        });
    }
    check_vectors("query", query, dim).map(|_| ())
}
