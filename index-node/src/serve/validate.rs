//! Request validation shared by both roles. Every message names the offending field, because
//! clients see it verbatim in INVALID_ARGUMENT.

use tonic::Status;

pub fn vector(field: &str, v: &[f32], dim: usize) -> Result<(), Status> {
    if v.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: empty vector")));
    }
    if v.len() != dim {
        return Err(Status::invalid_argument(format!(
            "{field}: dimension {} does not match the index dimension {dim}",
            v.len()
        )));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Status::invalid_argument(format!(
            "{field}[{i}]: value {} is not finite",
            v[i]
        )));
    }
    Ok(())
}

pub fn k(k: u32, max_k: u32) -> Result<usize, Status> {
    if k == 0 {
        return Err(Status::invalid_argument("k: must be at least 1"));
    }
    if k > max_k {
        return Err(Status::invalid_argument(format!(
            "k: {k} exceeds the maximum {max_k}"
        )));
    }
    Ok(k as usize)
}

pub fn nprobe(nprobe: Option<u32>, default: usize, nlist: usize) -> Result<usize, Status> {
    match nprobe {
        None => Ok(default.clamp(1, nlist.max(1))),
        Some(0) => Err(Status::invalid_argument("nprobe: must be at least 1")),
        Some(n) if n as usize > nlist => Err(Status::invalid_argument(format!(
            "nprobe: {n} exceeds the number of lists {nlist}"
        ))),
        Some(n) => Ok(n as usize),
    }
}

pub fn version_name(v: &str) -> Result<(), Status> {
    if v.is_empty() {
        return Err(Status::invalid_argument("version: empty"));
    }
    if crate::storage::check_name("version", v).is_err() {
        return Err(Status::invalid_argument(format!(
            "version: {v:?} is not a valid version name"
        )));
    }
    Ok(())
}
