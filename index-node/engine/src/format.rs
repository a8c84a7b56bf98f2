//! On-disk format, version 1.0.
//!
//! Two file kinds share one frame: 4-byte magic `QIVF`, u16 major, u16 minor, u8 kind.
//! All integers little-endian. Readers accept their own major version and any minor version
//! up to their own; anything else is refused with a message naming the file.
//!
//! * Quantizer file (kind 1): header of 32 bytes (magic, version, kind, body length, body
//!   CRC32), then the body: parameters, centroids, SQ8 ranges or PQ codebooks.
//! * Lists file (kind 2): header of 64 bytes (magic, version, kind, quantizer fingerprint,
//!   nlist, code size, flags, directory CRC32), a directory of 32 bytes per list (offset,
//!   length, entry count, CRC32 of the list's bytes), then each list's bytes: ids (u64),
//!   codes, norms (f32, SQ8 with L2 only), raw vectors (f32, Flat or keep_raw). Each list can
//!   be fetched alone by byte range and verified on its own.
//! * A bundle (kind 3) is a quantizer file followed by a lists file, for single-file saves.

use std::io::Write;
use std::path::Path;

use crate::error::{IvfError, Result};
use crate::invlist::InvertedList;
use crate::ivf::{Encoder, IvfIndex, IvfParams, QuantizerKind};
use crate::kmeans::{KMeansInit, KMeansParams};
use crate::metric::Metric;
use crate::pq::{KSUB, Pq};
use crate::sq8::Sq8;

pub const MAGIC: &[u8; 4] = b"QIVF";
pub const MAJOR: u16 = 1;
pub const MINOR: u16 = 0;
const KIND_QUANTIZER: u8 = 1;
const KIND_LISTS: u8 = 2;
const KIND_BUNDLE: u8 = 3;
const QUANTIZER_HEADER: usize = 32;
/// Size of the fixed header of a lists file.
pub const LISTS_HEADER: usize = 64;
const DIR_ENTRY: usize = 32;

/// Where one list lives in a lists file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListEntry {
    pub offset: u64,
    pub len: u64,
    pub count: u64,
    pub crc32: u32,
}

/// The directory of a lists file.
#[derive(Debug, Clone, PartialEq)]
pub struct ListDirectory {
    pub fingerprint: u64,
    pub code_size: usize,
    pub has_aux: bool,
    pub has_raw: bool,
    pub entries: Vec<ListEntry>,
}

impl ListDirectory {
    pub fn entry(&self, list: u32) -> Result<&ListEntry> {
        self.entries
            .get(list as usize)
            .ok_or(IvfError::ListOutOfRange {
                list,
                nlist: self.entries.len(),
            })
    }
}

fn check_frame(bytes: &[u8], file: &str, want_kind: u8) -> Result<()> {
    if bytes.len() < 9 {
        return Err(IvfError::format(
            file,
            format!("truncated: {} bytes, not a Quiver index file", bytes.len()),
        ));
    }
    if &bytes[0..4] != MAGIC {
        return Err(IvfError::format(file, "bad magic: not a Quiver index file"));
    }
    let major = u16::from_le_bytes([bytes[4], bytes[5]]);
    let minor = u16::from_le_bytes([bytes[6], bytes[7]]);
    if major != MAJOR || minor > MINOR {
        return Err(IvfError::format(
            file,
            format!(
                "unsupported format version {major}.{minor}; this build reads {MAJOR}.0 to {MAJOR}.{MINOR}"
            ),
        ));
    }
    if bytes[8] != want_kind {
        let name = |k: u8| match k {
            KIND_QUANTIZER => "quantizer",
            KIND_LISTS => "lists",
            KIND_BUNDLE => "bundle",
            _ => "unknown",
        };
        return Err(IvfError::format(
            file,
            format!(
                "is a {} file (kind {}), expected a {} file",
                name(bytes[8]),
                bytes[8],
                name(want_kind)
            ),
        ));
    }
    Ok(())
}

fn frame(kind: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&MAJOR.to_le_bytes());
    v.extend_from_slice(&MINOR.to_le_bytes());
    v.push(kind);
    v
}

/// A bounds-checked little-endian reader that names the file in its errors.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                IvfError::format(
                    self.file,
                    format!("truncated while reading {what} at byte {}", self.pos),
                )
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn f32(&mut self, what: &str) -> Result<f32> {
        Ok(f32::from_bits(self.u32(what)?))
    }
    fn f32s(&mut self, n: usize, what: &str) -> Result<Vec<f32>> {
        let bytes = n
            .checked_mul(4)
            .ok_or_else(|| IvfError::format(self.file, format!("{what}: size overflow")))?;
        let s = self.take(bytes, what)?;
        Ok(s.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    fn usize(&mut self, what: &str, max: u64) -> Result<usize> {
        let v = u64::from(self.u32(what)?);
        if v > max {
            return Err(IvfError::format(
                self.file,
                format!("{what} = {v} exceeds the limit {max}"),
            ));
        }
        Ok(v as usize)
    }
}

fn put_f32s(out: &mut Vec<u8>, v: &[f32]) {
    out.reserve(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

fn quantizer_body(index: &IvfIndex) -> Vec<u8> {
    let p = &index.params;
    let mut b = Vec::new();
    b.extend_from_slice(&(p.dim as u32).to_le_bytes());
    b.push(p.metric.code());
    let (qk, m) = match p.quantizer {
        QuantizerKind::Flat => (0u8, 0u32),
        QuantizerKind::Sq8 => (1, 0),
        QuantizerKind::Pq { m } => (2, m as u32),
    };
    b.push(qk);
    b.extend_from_slice(&m.to_le_bytes());
    b.push(u8::from(p.keep_raw));
    b.extend_from_slice(&(p.nlist as u32).to_le_bytes());
    b.extend_from_slice(&(p.kmeans.iters as u32).to_le_bytes());
    b.extend_from_slice(&p.kmeans.seed.to_le_bytes());
    b.push(match p.kmeans.init {
        KMeansInit::Random => 0,
        KMeansInit::KMeansPlusPlus => 1,
    });
    b.extend_from_slice(&(p.kmeans.max_points_per_centroid as u32).to_le_bytes());
    b.extend_from_slice(&p.kmeans.balance.to_le_bytes());
    put_f32s(&mut b, &index.centroids);
    match &index.encoder {
        Encoder::Flat => {}
        Encoder::Sq8(sq) => {
            put_f32s(&mut b, &sq.vmin);
            put_f32s(&mut b, &sq.step);
        }
        Encoder::Pq(pq) => put_f32s(&mut b, &pq.codebooks),
    }
    b
}

/// FNV-1a of the quantizer body: two indexes share lists only if trained identically.
pub(crate) fn quantizer_fingerprint(index: &IvfIndex) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in &quantizer_body(index) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Writes the quantizer (parameters, centroids, codebooks) of `index`.
pub fn write_quantizer(index: &IvfIndex, w: &mut impl Write) -> std::io::Result<()> {
    let body = quantizer_body(index);
    let mut h = frame(KIND_QUANTIZER);
    h.resize(16, 0);
    h.extend_from_slice(&(body.len() as u64).to_le_bytes());
    h.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    h.resize(QUANTIZER_HEADER, 0);
    w.write_all(&h)?;
    w.write_all(&body)
}

/// Reads a quantizer file into an index with empty lists. `file` names it in errors.
pub fn read_quantizer(bytes: &[u8], file: &str) -> Result<IvfIndex> {
    check_frame(bytes, file, KIND_QUANTIZER)?;
    if bytes.len() < QUANTIZER_HEADER {
        return Err(IvfError::format(file, "truncated header"));
    }
    let mut r = Reader {
        b: bytes,
        pos: 16,
        file,
    };
    let len = r.u64("body length")?;
    let crc = r.u32("body checksum")?;
    let body_end = (QUANTIZER_HEADER as u64)
        .checked_add(len)
        .filter(|&e| e == bytes.len() as u64);
    if body_end.is_none() {
        return Err(IvfError::format(
            file,
            format!(
                "body length {len} does not match file size {} (truncated or trailing bytes)",
                bytes.len()
            ),
        ));
    }
    let body = &bytes[QUANTIZER_HEADER..];
    if crc32fast::hash(body) != crc {
        return Err(IvfError::format(
            file,
            "quantizer checksum mismatch: the file is corrupt",
        ));
    }
    let mut r = Reader {
        b: body,
        pos: 0,
        file,
    };
    const MAX: u64 = 1 << 31;
    let dim = r.usize("dim", 1 << 20)?;
    let metric = Metric::from_code(r.u8("metric")?)
        .ok_or_else(|| IvfError::format(file, "unknown metric code"))?;
    let qk = r.u8("quantizer kind")?;
    let m = r.usize("pq m", 1 << 16)?;
    let keep_raw = r.u8("keep_raw")? != 0;
    let nlist = r.usize("nlist", MAX)?;
    let iters = r.usize("kmeans iters", MAX)?;
    let seed = r.u64("kmeans seed")?;
    let init = match r.u8("kmeans init")? {
        0 => KMeansInit::Random,
        1 => KMeansInit::KMeansPlusPlus,
        other => {
            return Err(IvfError::format(
                file,
                format!("unknown k-means init code {other}"),
            ));
        }
    };
    let mppc = r.usize("max points per centroid", MAX)?;
    let balance = r.f32("balance")?;
    let quantizer = match qk {
        0 => QuantizerKind::Flat,
        1 => QuantizerKind::Sq8,
        2 => QuantizerKind::Pq { m },
        other => {
            return Err(IvfError::format(
                file,
                format!("unknown quantizer code {other}"),
            ));
        }
    };
    let params = IvfParams {
        dim,
        metric,
        nlist,
        quantizer,
        keep_raw,
        kmeans: KMeansParams {
            iters,
            seed,
            init,
            max_points_per_centroid: mppc,
            balance,
        },
    };
    params
        .validate()
        .map_err(|e| IvfError::format(file, format!("invalid parameters: {e}")))?;
    let centroids = r.f32s(nlist * dim, "centroids")?;
    let encoder = match quantizer {
        QuantizerKind::Flat => Encoder::Flat,
        QuantizerKind::Sq8 => Encoder::Sq8(Sq8 {
            vmin: r.f32s(dim, "SQ8 minimums")?,
            step: r.f32s(dim, "SQ8 steps")?,
        }),
        QuantizerKind::Pq { m } => Encoder::Pq(Pq::new(
            m,
            dim / m,
            r.f32s(m * KSUB * (dim / m), "PQ codebooks")?,
        )),
    };
    if r.pos != body.len() {
        return Err(IvfError::format(
            file,
            format!("{} unexpected trailing bytes", body.len() - r.pos),
        ));
    }
    let mut index = IvfIndex {
        lists: vec![InvertedList::default(); nlist],
        params,
        centroids,
        encoder,
        pq_terms: None,
        fingerprint: 0,
        panels: crate::assign::Panels::new(&[], 1, false, None),
        half_scan: matches!(quantizer, QuantizerKind::Flat),
    };
    index.finish_quantizer();
    Ok(index)
}

fn list_bytes(l: &InvertedList) -> Vec<u8> {
    let mut b = Vec::with_capacity(l.bytes());
    for id in &l.ids {
        b.extend_from_slice(&id.to_le_bytes());
    }
    b.extend_from_slice(&l.codes);
    put_f32s(&mut b, &l.aux);
    put_f32s(&mut b, &l.raw);
    b
}

/// Writes the lists of `index`: header, directory, then each list.
pub fn write_lists(index: &IvfIndex, w: &mut impl Write) -> std::io::Result<()> {
    let blobs: Vec<Vec<u8>> = index.lists.iter().map(list_bytes).collect();
    let nlist = index.lists.len();
    let mut dir = Vec::with_capacity(nlist * DIR_ENTRY);
    let mut offset = (LISTS_HEADER + nlist * DIR_ENTRY) as u64;
    for (l, blob) in index.lists.iter().zip(&blobs) {
        dir.extend_from_slice(&offset.to_le_bytes());
        dir.extend_from_slice(&(blob.len() as u64).to_le_bytes());
        dir.extend_from_slice(&(l.len() as u64).to_le_bytes());
        dir.extend_from_slice(&crc32fast::hash(blob).to_le_bytes());
        dir.extend_from_slice(&0u32.to_le_bytes());
        offset += blob.len() as u64;
    }
    let mut h = frame(KIND_LISTS);
    h.resize(16, 0);
    h.extend_from_slice(&index.fingerprint.to_le_bytes());
    h.extend_from_slice(&(nlist as u32).to_le_bytes());
    h.extend_from_slice(&(index.code_size() as u32).to_le_bytes());
    h.push(u8::from(index.has_aux()) | (u8::from(index.has_raw()) << 1));
    h.resize(36, 0);
    h.extend_from_slice(&(index.dim() as u32).to_le_bytes());
    h.extend_from_slice(&crc32fast::hash(&dir).to_le_bytes());
    h.resize(LISTS_HEADER, 0);
    w.write_all(&h)?;
    w.write_all(&dir)?;
    for blob in &blobs {
        w.write_all(blob)?;
    }
    Ok(())
}

/// How many leading bytes of a lists file hold its header and directory, read from the
/// first [`LISTS_HEADER`] bytes. Fetch that prefix, then [`read_list_directory`].
pub fn directory_len(first: &[u8], file: &str) -> Result<u64> {
    check_frame(first, file, KIND_LISTS)?;
    if first.len() < LISTS_HEADER {
        return Err(IvfError::format(file, "truncated lists header"));
    }
    let mut r = Reader {
        b: first,
        pos: 24,
        file,
    };
    let nlist = u64::from(r.u32("nlist")?);
    Ok(LISTS_HEADER as u64 + nlist * DIR_ENTRY as u64)
}

/// Parses the header and directory of a lists file (`bytes` = at least its first
/// [`directory_len`] bytes).
pub fn read_list_directory(bytes: &[u8], file: &str) -> Result<ListDirectory> {
    let need = directory_len(bytes, file)? as usize;
    if bytes.len() < need {
        return Err(IvfError::format(
            file,
            format!("truncated directory: {} of {need} bytes", bytes.len()),
        ));
    }
    let mut r = Reader {
        b: bytes,
        pos: 16,
        file,
    };
    let fingerprint = r.u64("fingerprint")?;
    let nlist = r.u32("nlist")? as usize;
    let code_size = r.u32("code size")? as usize;
    let flags = r.u8("flags")?;
    r.pos = 40;
    let dir_crc = r.u32("directory checksum")?;
    let dir = &bytes[LISTS_HEADER..need];
    if crc32fast::hash(dir) != dir_crc {
        return Err(IvfError::format(
            file,
            "list directory checksum mismatch: the file is corrupt",
        ));
    }
    let mut r = Reader {
        b: dir,
        pos: 0,
        file,
    };
    let mut entries = Vec::with_capacity(nlist);
    for _ in 0..nlist {
        let offset = r.u64("list offset")?;
        let len = r.u64("list length")?;
        let count = r.u64("list count")?;
        let crc32 = r.u32("list checksum")?;
        r.u32("padding")?;
        entries.push(ListEntry {
            offset,
            len,
            count,
            crc32,
        });
    }
    Ok(ListDirectory {
        fingerprint,
        code_size,
        has_aux: flags & 1 != 0,
        has_raw: flags & 2 != 0,
        entries,
    })
}

/// Decodes list `list` from its bytes (`blob` = exactly the directory entry's byte range),
/// checking its checksum and that the file belongs to `index`'s quantizer.
pub fn decode_list(
    index: &IvfIndex,
    dir: &ListDirectory,
    list: u32,
    blob: &[u8],
    file: &str,
) -> Result<InvertedList> {
    decode_list_for(index, index.fingerprint, dir, list, blob, file)
}

/// [`decode_list`] from a file written for quantizer `fingerprint`, which may differ from
/// `index`'s own: a split ([`IvfIndex::split_list`]) keeps every other list's centroid and the
/// codebooks, so its parent's files stay valid for those lists. The caller vouches for the
/// lineage (a version's manifest records it); the encoding is still checked here.
pub fn decode_list_for(
    index: &IvfIndex,
    fingerprint: u64,
    dir: &ListDirectory,
    list: u32,
    blob: &[u8],
    file: &str,
) -> Result<InvertedList> {
    if dir.fingerprint != fingerprint {
        return Err(IvfError::format(
            file,
            format!(
                "lists were built for quantizer {:016x}, not {fingerprint:016x}",
                dir.fingerprint
            ),
        ));
    }
    if dir.code_size != index.code_size()
        || dir.has_aux != index.has_aux()
        || dir.has_raw != index.has_raw()
    {
        return Err(IvfError::format(
            file,
            "list encoding does not match the quantizer",
        ));
    }
    let e = dir.entry(list)?;
    if blob.len() as u64 != e.len {
        return Err(IvfError::format(
            file,
            format!(
                "list {list}: {} bytes, directory says {}",
                blob.len(),
                e.len
            ),
        ));
    }
    if crc32fast::hash(blob) != e.crc32 {
        return Err(IvfError::format(
            file,
            format!("list {list}: checksum mismatch: the file is corrupt"),
        ));
    }
    let n = usize::try_from(e.count).map_err(|_| IvfError::format(file, "list too large"))?;
    let dim = index.dim();
    let expect = n.checked_mul(
        8 + dir.code_size + if dir.has_aux { 4 } else { 0 } + if dir.has_raw { 4 * dim } else { 0 },
    );
    if expect != Some(blob.len()) {
        return Err(IvfError::format(
            file,
            format!("list {list}: length does not match {n} entries"),
        ));
    }
    let mut r = Reader {
        b: blob,
        pos: 0,
        file,
    };
    let ids = r
        .take(n * 8, "ids")?
        .chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_le_bytes(a)
        })
        .collect();
    let codes = r.take(n * dir.code_size, "codes")?.to_vec();
    let aux = if dir.has_aux {
        r.f32s(n, "norms")?
    } else {
        Vec::new()
    };
    let raw = if dir.has_raw {
        r.f32s(n * dim, "raw vectors")?
    } else {
        Vec::new()
    };
    Ok(InvertedList {
        ids,
        codes,
        aux,
        raw,
        ..InvertedList::default()
    })
}

/// Reads a whole lists file into `index` (all lists).
pub fn read_lists_into(index: &mut IvfIndex, bytes: &[u8], file: &str) -> Result<()> {
    let dir = read_list_directory(bytes, file)?;
    if dir.entries.len() != index.nlist() {
        return Err(IvfError::format(
            file,
            format!(
                "has {} lists, the quantizer has {}",
                dir.entries.len(),
                index.nlist()
            ),
        ));
    }
    for l in 0..dir.entries.len() as u32 {
        let e = dir.entry(l)?;
        let range = usize::try_from(e.offset)
            .ok()
            .zip(usize::try_from(e.offset + e.len).ok())
            .filter(|&(_, end)| end <= bytes.len())
            .ok_or_else(|| {
                IvfError::format(
                    file,
                    format!("list {l}: byte range beyond end of file (truncated)"),
                )
            })?;
        let list = decode_list(index, &dir, l, &bytes[range.0..range.1], file)?;
        index.set_list(l, list)?;
    }
    Ok(())
}

/// Whole index as one byte string (quantizer then lists).
pub fn to_bytes(index: &IvfIndex) -> Vec<u8> {
    let mut q = Vec::new();
    let mut l = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = write_quantizer(index, &mut q);
    let _ = write_lists(index, &mut l);
    let mut out = frame(KIND_BUNDLE);
    out.resize(16, 0);
    out.extend_from_slice(&(q.len() as u64).to_le_bytes());
    out.extend_from_slice(&q);
    out.extend_from_slice(&l);
    out
}

pub fn from_bytes(bytes: &[u8], file: &str) -> Result<IvfIndex> {
    check_frame(bytes, file, KIND_BUNDLE)?;
    let mut r = Reader {
        b: bytes,
        pos: 16,
        file,
    };
    let qlen = usize::try_from(r.u64("quantizer length")?)
        .map_err(|_| IvfError::format(file, "bad length"))?;
    let q = r.take(qlen, "quantizer")?;
    let mut index = read_quantizer(q, file)?;
    read_lists_into(&mut index, &bytes[r.pos..], file)?;
    Ok(index)
}

/// Saves to `path` atomically (write to a temporary file, then rename), so a crash never
/// leaves a half-written index under the final name.
pub fn save(index: &IvfIndex, path: &Path) -> Result<()> {
    let io = |source| IvfError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, to_bytes(index)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

pub fn load(path: &Path) -> Result<IvfIndex> {
    let bytes = std::fs::read(path).map_err(|source| IvfError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    from_bytes(&bytes, &path.display().to_string())
}
