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
    let norm2 = quiver_ivf::squared_norm(v);
    if norm2 > quiver_ivf::MAX_SQUARED_NORM {
        return Err(Status::invalid_argument(format!(
            "{field}: squared norm {norm2:.3e} exceeds {:.3e}: its distances would overflow \
             single precision (scale the vector down)",
            quiver_ivf::MAX_SQUARED_NORM
        )));
    }
    Ok(())
}

/// The list ids of a shard query: at least one, at most `nlist` ids, each scanned and counted
/// once (duplicates are removed; the order does not matter for a top-k).
pub fn lists(mut lists: Vec<u32>, nlist: usize, version: &str) -> Result<Vec<u32>, Status> {
    if lists.is_empty() {
        return Err(Status::invalid_argument("lists: empty"));
    }
    if lists.len() > nlist {
        return Err(Status::invalid_argument(format!(
            "lists: {} list ids, more than the {nlist} lists of version {version}; name each \
             list at most once",
            lists.len()
        )));
    }
    lists.sort_unstable();
    lists.dedup();
    Ok(lists)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field() {
        let e =
            |r: Result<(), Status>| r.err().map(|s| s.message().to_string()).unwrap_or_default();
        assert!(e(vector("vector", &[], 4)).starts_with("vector: empty"));
        assert!(e(vector("vector", &[1.0; 3], 4)).contains("dimension 3"));
        assert!(e(vector("q", &[1.0, f32::NAN, 0.0, 0.0], 4)).starts_with("q[1]"));
        assert!(vector("vector", &[1.0; 4], 4).is_ok());
        // Finite but huge: the distances would overflow to infinity.
        assert!(e(vector("q", &[1e20, 0.0, 0.0, 0.0], 4)).starts_with("q: squared norm"));
        assert!(e(vector("q", &[1e19; 4], 4)).contains("overflow"));
        assert!(vector("q", &[1e17; 4], 4).is_ok());
        assert_eq!(lists(vec![3, 1, 3, 3], 8, "v1").ok(), Some(vec![1, 3]));
        assert!(e(lists(vec![0; 9], 8, "v1").map(|_| ())).starts_with("lists: 9 list ids"));
        assert!(e(lists(vec![], 8, "v1").map(|_| ())).starts_with("lists: empty"));
        assert_eq!(
            k(0, 10).err().map(|s| s.code()),
            Some(tonic::Code::InvalidArgument)
        );
        assert!(k(11, 10).is_err() && k(10, 10).is_ok());
        assert_eq!(nprobe(None, 50, 16).ok(), Some(16));
        assert!(nprobe(Some(0), 8, 16).is_err() && nprobe(Some(17), 8, 16).is_err());
        assert!(version_name("").is_err() && version_name("a/b").is_err());
        // Version names are DNS-1123 labels (quiver_api::names), as in Kubernetes.
        assert!(version_name("v2-7f3a9c2e").is_ok() && version_name("v1").is_ok());
        assert!(version_name("v-1.2_x").is_err() && version_name("V1").is_err());
    }
}
