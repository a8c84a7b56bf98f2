//! Vector files as bytes (they come from object storage, not always a local path):
//! `.fvecs`, `.bvecs`, `.ivecs` (each row: little-endian i32 dimension, then the values) and
//! `.npy` (2-D, little-endian float32 or uint8, C order).

use anyhow::{Context, bail, ensure};

/// Row-major f32 vectors.
#[derive(Debug, Clone)]
pub struct Vectors {
    pub data: Vec<f32>,
    pub dim: usize,
}

impl Vectors {
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// Parses a vector file by its extension.
pub fn parse_vectors(name: &str, bytes: &[u8]) -> anyhow::Result<Vectors> {
    let lower = name.to_ascii_lowercase();
    let v = if lower.ends_with(".fvecs") {
        parse_xvecs(name, bytes, 4, |b| {
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        })?
    } else if lower.ends_with(".bvecs") {
        parse_xvecs(name, bytes, 1, |b| f32::from(b[0]))?
    } else if lower.ends_with(".npy") {
        parse_npy(name, bytes)?
    } else {
        bail!("{name}: unknown vector file type (expected .fvecs, .bvecs or .npy)");
    };
    if let Some(pos) = v.data.iter().position(|x| !x.is_finite()) {
        bail!(
            "{name}: vector {} component {} is not finite",
            pos / v.dim,
            pos % v.dim
        );
    }
    Ok(v)
}

/// Parses an `.ivecs` file (ground truth): rows of i32.
pub fn parse_ivecs(name: &str, bytes: &[u8]) -> anyhow::Result<(Vec<i32>, usize)> {
    let v = parse_xvecs(name, bytes, 4, |b| {
        // Carried through f32 would lose precision; decode as i32 bits instead.
        f32::from_bits(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    })?;
    Ok((v.data.iter().map(|x| x.to_bits() as i32).collect(), v.dim))
}

fn parse_xvecs(
    name: &str,
    bytes: &[u8],
    width: usize,
    decode: impl Fn(&[u8]) -> f32,
) -> anyhow::Result<Vectors> {
    ensure!(bytes.len() >= 4, "{name}: file is empty or truncated");
    let dim = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    ensure!(
        dim > 0 && dim <= 65_536,
        "{name}: first row has dimension {dim}"
    );
    let dim = dim as usize;
    let row = 4 + dim * width;
    ensure!(
        bytes.len().is_multiple_of(row),
        "{name}: size {} is not a multiple of the row size {row} (dimension {dim}): truncated?",
        bytes.len()
    );
    let n = bytes.len() / row;
    let mut data = Vec::with_capacity(n * dim);
    for (i, r) in bytes.chunks_exact(row).enumerate() {
        let d = i32::from_le_bytes([r[0], r[1], r[2], r[3]]);
        ensure!(
            d as usize == dim,
            "{name}: row {i} has dimension {d}, expected {dim}"
        );
        data.extend(r[4..].chunks_exact(width).map(&decode));
    }
    Ok(Vectors { data, dim })
}

fn parse_npy(name: &str, bytes: &[u8]) -> anyhow::Result<Vectors> {
    ensure!(
        bytes.len() >= 10 && &bytes[..6] == b"\x93NUMPY",
        "{name}: not an .npy file"
    );
    let major = bytes[6];
    let (hlen, start) = if major == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        ensure!(bytes.len() >= 12, "{name}: truncated header");
        (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        )
    };
    let header = bytes
        .get(start..start + hlen)
        .context("truncated .npy header")
        .with_context(|| name.to_string())?;
    let header = String::from_utf8_lossy(header);
    let descr = field(&header, "descr").with_context(|| format!("{name}: no descr"))?;
    ensure!(
        !header.contains("'fortran_order': True"),
        "{name}: Fortran-order arrays are not supported"
    );
    let shape = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .with_context(|| format!("{name}: no shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{name}: bad shape {shape:?}"))?;
    ensure!(
        dims.len() == 2,
        "{name}: expected a 2-D array, shape is {dims:?}"
    );
    let (n, dim) = (dims[0], dims[1]);
    ensure!(dim > 0, "{name}: dimension 0");
    let body = &bytes[start + hlen..];
    let data: Vec<f32> = match descr.as_str() {
        "<f4" => {
            ensure!(body.len() == n * dim * 4, "{name}: truncated data");
            body.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }
        "|u1" | "<u1" => {
            ensure!(body.len() == n * dim, "{name}: truncated data");
            body.iter().map(|&b| f32::from(b)).collect()
        }
        other => bail!("{name}: dtype {other} not supported (float32 or uint8)"),
    };
    Ok(Vectors { data, dim })
}

fn field(header: &str, key: &str) -> Option<String> {
    let rest = header.split(&format!("'{key}':")).nth(1)?;
    let rest = rest.trim_start().strip_prefix('\'')?;
    Some(rest.split('\'').next()?.to_string())
}

pub fn write_fvecs(v: &Vectors) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * (4 + 4 * v.dim));
    for i in 0..v.len() {
        out.extend_from_slice(&(v.dim as i32).to_le_bytes());
        for x in v.row(i) {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

pub fn write_ivecs(rows: &[Vec<i32>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        out.extend_from_slice(&(r.len() as i32).to_le_bytes());
        for x in r {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fvecs_round_trip_and_truncation() -> anyhow::Result<()> {
        let v = Vectors {
            data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            dim: 3,
        };
        let bytes = write_fvecs(&v);
        let back = parse_vectors("x.fvecs", &bytes)?;
        assert_eq!(back.data, v.data);
        assert_eq!(back.dim, 3);
        let err = parse_vectors("x.fvecs", &bytes[..bytes.len() - 1]).err();
        assert!(format!("{err:?}").contains("truncated"));
        let gt = write_ivecs(&[vec![1, 2], vec![3, 2_000_000_000]]);
        let (ids, k) = parse_ivecs("gt.ivecs", &gt)?;
        assert_eq!((ids, k), (vec![1, 2, 3, 2_000_000_000], 2));
        Ok(())
    }
}
