//! The IVF index: a coarse quantizer (centroids), one inverted list per centroid, and an
//! encoding of list entries (Flat, SQ8 or PQ, the last two on residuals).

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;

use crate::assign::{self, Panels};
use crate::error::{IvfError, Result, check_query, check_vectors};
use crate::half::{self, HalfError};
use crate::invlist::InvertedList;
use crate::kernels;
use crate::kmeans::{self, KMeansParams};
use crate::metric::{Metric, normalize_rows};
use crate::pq::{KSUB, Pq};
use crate::rerank::Band;
use crate::rng::Rng;
use crate::sq8::Sq8;
use crate::topk::{Collector, Neighbor, TopK};

/// How list entries are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizerKind {
    /// Full f32 vectors: exact distances.
    Flat,
    /// One byte per dimension (per-dimension scalar quantizer on residuals).
    Sq8,
    /// `m` bytes per vector (product quantizer on residuals).
    Pq { m: usize },
}

impl QuantizerKind {
    /// Parses `flat`, `sq8` or `pq` (`pq_m` gives m for PQ).
    pub fn parse(name: &str, pq_m: usize) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "flat" => Ok(QuantizerKind::Flat),
            "sq8" => Ok(QuantizerKind::Sq8),
            "pq" => Ok(QuantizerKind::Pq { m: pq_m }),
            other => Err(IvfError::param(
                "quantizer",
                format!("unknown quantizer {other:?}; expected flat, sq8 or pq"),
            )),
        }
    }
}

impl fmt::Display for QuantizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantizerKind::Flat => f.write_str("flat"),
            QuantizerKind::Sq8 => f.write_str("sq8"),
            QuantizerKind::Pq { m } => write!(f, "pq{m}"),
        }
    }
}

impl FromStr for QuantizerKind {
    type Err = IvfError;
    /// `flat`, `sq8` or `pqM` (e.g. `pq16`).
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        if let Some(m) = lower.strip_prefix("pq").filter(|m| !m.is_empty()) {
            let m = m
                .parse()
                .map_err(|_| IvfError::param("quantizer", format!("bad PQ size in {s:?}")))?;
            return Ok(QuantizerKind::Pq { m });
        }
        QuantizerKind::parse(&lower, 0)
    }
}

/// Everything that defines an index's structure.
#[derive(Debug, Clone, PartialEq)]
pub struct IvfParams {
    pub dim: usize,
    pub metric: Metric,
    pub nlist: usize,
    pub quantizer: QuantizerKind,
    /// Keep the original vectors beside SQ8/PQ codes, for re-ranking.
    pub keep_raw: bool,
    pub kmeans: KMeansParams,
}

impl IvfParams {
    pub fn new(dim: usize, metric: Metric, nlist: usize, quantizer: QuantizerKind) -> Self {
        IvfParams {
            dim,
            metric,
            nlist,
            quantizer,
            keep_raw: false,
            kmeans: KMeansParams::default(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 {
            return Err(IvfError::param("dim", "must be at least 1"));
        }
        if self.nlist == 0 {
            return Err(IvfError::param("nlist", "must be at least 1"));
        }
        if self.nlist > u32::MAX as usize {
            return Err(IvfError::param("nlist", "must fit in 32 bits"));
        }
        if let QuantizerKind::Pq { m } = self.quantizer {
            Pq::check(self.dim, m)?;
        }
        Ok(())
    }
}

/// Per-call search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchParams {
    pub k: usize,
    /// Lists to probe; more than `nlist` means all.
    pub nprobe: usize,
    /// Re-rank the best `rerank` candidates by exact distance (0 = off). Needs raw vectors.
    pub rerank: usize,
}

impl SearchParams {
    pub fn new(k: usize, nprobe: usize) -> Self {
        SearchParams {
            k,
            nprobe,
            rerank: 0,
        }
    }
}

/// Work counters of one search.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchStats {
    pub lists_probed: usize,
    /// List entries whose distance was computed.
    pub scanned: usize,
    /// Candidates whose exact distance was computed after the scan (re-ranking).
    pub reranked: usize,
}

/// List sizes, for spotting hot and oversized lists.
#[derive(Debug, Clone, PartialEq)]
pub struct ListStats {
    pub sizes: Vec<usize>,
    /// `nlist · Σ size² / (Σ size)²`: 1 when balanced; FAISS's definition.
    pub imbalance: f64,
    pub max: usize,
    pub empty: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Encoder {
    Flat,
    Sq8(Sq8),
    Pq(Pq),
}

/// An IVF index. Cheap to share across threads for search (`&self`); `add`/`remove` need
/// `&mut self`.
#[derive(Debug, Clone)]
pub struct IvfIndex {
    pub(crate) params: IvfParams,
    pub(crate) centroids: Vec<f32>,
    pub(crate) encoder: Encoder,
    pub(crate) lists: Vec<InvertedList>,
    /// PQ with L2: query-independent table terms per list (`nlist × m × 256`).
    pub(crate) pq_terms: Option<Vec<f32>>,
    pub(crate) fingerprint: u64,
    /// Centroids laid out for the blocked matrix-product kernels (bulk add, batch search).
    pub(crate) panels: Panels,
    /// Flat only: scan half-precision copies and re-rank the best candidates exactly.
    pub(crate) half_scan: bool,
}

/// Above this, PQ list terms are computed per query instead of stored.
const PQ_TERMS_MAX_BYTES: usize = 512 << 20;
/// Points used to train SQ8 ranges and PQ codebooks (as FAISS: 256 per codeword).
const CODEBOOK_TRAIN_POINTS: usize = 256 * KSUB;
/// Vectors encoded per step of `add`, bounding the temporary residual buffer.
const ADD_CHUNK: usize = 1 << 16;
/// Entries to scan per requested result below which Flat scans f32: re-ranking reads about
/// k + a few f32 rows at random, which costs more than the halved scan saves on short scans.
/// Measured on an AVX2 machine (200k x 128, k 10, `examples/ab_scan`): the half scan breaks
/// even at ~60 entries, and wins 4 % at ~120, 12 % at ~240 (IVF4096) and 28 % at ~250 with
/// IVF1024's larger lists.
const HALF_MIN_ENTRIES_PER_RESULT: usize = 8;
/// Entries whose distances are computed in one kernel call.
const BLOCK: usize = 256;

struct Scratch {
    query: Vec<f32>,
    coarse: Vec<(f32, u32)>,
    dist: Vec<f32>,
    tmp: Vec<f32>,
    weights: Vec<f32>,
    lut: Vec<f32>,
    qtab: Vec<f32>,
    top: TopK,
    band: Band,
    /// Coarse costs of a block of batch queries (block × nlist).
    block_costs: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        query: Vec::new(),
        coarse: Vec::new(),
        dist: vec![0.0; BLOCK],
        tmp: Vec::new(),
        weights: Vec::new(),
        lut: Vec::new(),
        qtab: Vec::new(),
        top: TopK::new(0),
        band: Band::default(),
        block_costs: Vec::new(),
    });
}

impl IvfIndex {
    /// Trains the coarse centroids (and SQ8 ranges / PQ codebooks) on `training`.
    pub fn train(params: IvfParams, training: &[f32]) -> Result<IvfIndex> {
        params.validate()?;
        let dim = params.dim;
        let n = check_vectors("training data", training, dim)?;
        if n < params.nlist {
            return Err(IvfError::TooFewTrainingPoints {
                what: "coarse quantizer",
                got: n,
                need: params.nlist,
            });
        }
        let mut data = training.to_vec();
        if params.metric == Metric::Cosine {
            normalize_rows(&mut data, dim);
        }
        // Cosine runs as L2 on normalised vectors (same ranking): mean centroids leave
        // smaller residuals than spherical ones, so SQ8/PQ codes lose less.
        let dot = params.metric == Metric::InnerProduct;
        let km = kmeans::train(&data, dim, params.nlist, &params.kmeans, dot, false)?;
        let centroids = km.centroids;

        let encoder = match params.quantizer {
            QuantizerKind::Flat => Encoder::Flat,
            QuantizerKind::Sq8 | QuantizerKind::Pq { .. } => {
                let mut rng = Rng::new(params.kmeans.seed ^ 0x5eed);
                let sample: Vec<f32> = if n > CODEBOOK_TRAIN_POINTS {
                    let mut idx = rng.sample_indices(n, CODEBOOK_TRAIN_POINTS);
                    idx.sort_unstable();
                    idx.iter()
                        .flat_map(|&i| data[i * dim..(i + 1) * dim].iter().copied())
                        .collect()
                } else {
                    data.clone()
                };
                let panels = Panels::new(&centroids, dim, dot, None);
                let (labels, _) = assign::nearest(&sample, &panels, dot);
                let residuals = residuals(&sample, &labels, &centroids, dim);
                match params.quantizer {
                    QuantizerKind::Pq { m } => {
                        Encoder::Pq(Pq::train(&residuals, dim, m, &params.kmeans)?)
                    }
                    _ => Encoder::Sq8(Sq8::train(&residuals, dim)),
                }
            }
        };
        let params_is_flat = matches!(params.quantizer, QuantizerKind::Flat);
        let mut index = IvfIndex {
            lists: vec![InvertedList::default(); params.nlist],
            params,
            centroids,
            encoder,
            pq_terms: None,
            fingerprint: 0,
            panels: Panels::new(&[], 1, false, None),
            half_scan: params_is_flat,
        };
        index.finish_quantizer();
        Ok(index)
    }

    /// Derived state of the quantizer: PQ tables and the fingerprint.
    pub(crate) fn finish_quantizer(&mut self) {
        self.pq_terms = match &self.encoder {
            Encoder::Pq(pq)
                if !self.dot() && self.params.nlist * pq.m * KSUB * 4 <= PQ_TERMS_MAX_BYTES =>
            {
                let mut t = vec![0f32; self.params.nlist * pq.m * KSUB];
                t.par_chunks_exact_mut(pq.m * KSUB)
                    .zip(self.centroids.par_chunks_exact(self.params.dim))
                    .for_each(|(out, c)| pq.list_term(c, out));
                Some(t)
            }
            _ => None,
        };
        self.fingerprint = crate::format::quantizer_fingerprint(self);
        self.panels = Panels::new(&self.centroids, self.params.dim, self.dot(), None);
    }

    pub fn params(&self) -> &IvfParams {
        &self.params
    }
    pub fn dim(&self) -> usize {
        self.params.dim
    }
    pub fn metric(&self) -> Metric {
        self.params.metric
    }
    /// Whether the engine compares by inner product internally. Cosine compares normalised
    /// vectors by L2 and converts at the end (`−cos = ‖q − x‖² / 2 − 1`).
    fn dot(&self) -> bool {
        self.params.metric == Metric::InnerProduct
    }
    pub fn nlist(&self) -> usize {
        self.params.nlist
    }
    /// Row-major `nlist × dim` coarse centroids.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }
    /// Identifies the trained quantizer; list files carry it so that lists are never loaded
    /// into an index trained differently.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
    /// Number of stored vectors.
    pub fn ntotal(&self) -> usize {
        self.lists.iter().map(InvertedList::len).sum()
    }
    pub fn list(&self, list: u32) -> Option<&InvertedList> {
        self.lists.get(list as usize)
    }
    /// Bytes of one encoded entry (0 for Flat, whose vectors live in `raw`).
    pub fn code_size(&self) -> usize {
        match &self.encoder {
            Encoder::Flat => 0,
            Encoder::Sq8(_) => self.params.dim,
            Encoder::Pq(pq) => pq.m,
        }
    }
    pub(crate) fn has_aux(&self) -> bool {
        matches!(self.encoder, Encoder::Sq8(_)) && !self.dot()
    }
    pub(crate) fn has_raw(&self) -> bool {
        matches!(self.encoder, Encoder::Flat) || self.params.keep_raw
    }
    /// Bytes held by the lists and the quantizer.
    pub fn memory_bytes(&self) -> usize {
        let q = self.centroids.len() * 4
            + self.pq_terms.as_ref().map_or(0, |t| t.len() * 4)
            + match &self.encoder {
                Encoder::Flat => 0,
                Encoder::Sq8(s) => (s.vmin.len() + s.step.len()) * 4,
                Encoder::Pq(p) => p.codebooks.len() * 4,
            };
        q + self.lists.iter().map(InvertedList::bytes).sum::<usize>()
    }

    /// The same trained quantizer with empty lists.
    pub fn empty_like(&self) -> IvfIndex {
        IvfIndex {
            lists: vec![InvertedList::default(); self.params.nlist],
            ..self.clone_quantizer()
        }
    }

    fn clone_quantizer(&self) -> IvfIndex {
        IvfIndex {
            params: self.params.clone(),
            centroids: self.centroids.clone(),
            encoder: self.encoder.clone(),
            lists: Vec::new(),
            pq_terms: self.pq_terms.clone(),
            fingerprint: self.fingerprint,
            panels: self.panels.clone(),
            half_scan: self.half_scan,
        }
    }

    /// Replaces list `list` (loading a shard's lists one by one). Checks that its parts fit
    /// this index's encoding.
    pub fn set_list(&mut self, list: u32, l: InvertedList) -> Result<()> {
        let nlist = self.params.nlist;
        let n = l.len();
        let bad = |what: &str| {
            IvfError::param(
                "list",
                format!("list {list}: {what} do not match {n} entries"),
            )
        };
        if list as usize >= nlist {
            return Err(IvfError::ListOutOfRange { list, nlist });
        }
        if l.codes.len() != n * self.code_size() {
            return Err(bad("codes"));
        }
        if l.aux.len() != if self.has_aux() { n } else { 0 } {
            return Err(bad("norms"));
        }
        if l.raw.len()
            != if self.has_raw() {
                n * self.params.dim
            } else {
                0
            }
        {
            return Err(bad("raw vectors"));
        }
        let mut l = l;
        l.half.clear();
        l.half_error = HalfError::default();
        if self.half_scan {
            if half_safe(&l.raw) {
                l.half_error = half::encode_rows(&l.raw, self.params.dim, &mut l.half);
            } else {
                self.set_half_scan(false);
            }
        }
        self.lists[list as usize] = l;
        Ok(())
    }

    /// Whether Flat lists are scanned in half precision (then the best candidates are
    /// re-ranked with exact f32 distances, so reported distances stay exact). On by default
    /// for Flat; turned off automatically when a vector exceeds the half-precision range.
    pub fn half_scan(&self) -> bool {
        self.half_scan
    }

    /// Turns the half-precision scan of Flat lists on or off. Turning it on fails (returns
    /// false) for other encodings and when a stored value is outside the half range.
    pub fn set_half_scan(&mut self, on: bool) -> bool {
        if !on || !matches!(self.encoder, Encoder::Flat) {
            self.half_scan = false;
            self.lists.iter_mut().for_each(|l| {
                l.half = Vec::new();
                l.half_error = HalfError::default();
            });
            return !on;
        }
        if !self.lists.iter().all(|l| half_safe(&l.raw)) {
            return false;
        }
        self.half_scan = true;
        let dim = self.params.dim;
        self.lists.par_iter_mut().for_each(|l| {
            l.half.clear();
            l.half_error = half::encode_rows(&l.raw, dim, &mut l.half);
        });
        true
    }

    /// Nearest list of each vector (what `add` would do with it).
    pub fn assign(&self, vectors: &[f32]) -> Result<Vec<u32>> {
        let dim = self.params.dim;
        check_vectors("vectors", vectors, dim)?;
        let owned;
        let data = if self.params.metric == Metric::Cosine {
            let mut v = vectors.to_vec();
            normalize_rows(&mut v, dim);
            owned = v;
            &owned[..]
        } else {
            vectors
        };
        Ok(assign::nearest(data, &self.panels, self.dot()).0)
    }

    /// Adds vectors with their ids. Ids need not be unique; `remove` removes every copy.
    pub fn add(&mut self, ids: &[u64], vectors: &[f32]) -> Result<()> {
        let dim = self.params.dim;
        let n = check_vectors("vectors", vectors, dim)?;
        if ids.len() != n {
            return Err(IvfError::IdCountMismatch {
                what: "add",
                ids: ids.len(),
                vectors: n,
            });
        }
        let dot = self.dot();
        for start in (0..n).step_by(ADD_CHUNK) {
            let end = (start + ADD_CHUNK).min(n);
            let mut data = vectors[start * dim..end * dim].to_vec();
            if self.params.metric == Metric::Cosine {
                normalize_rows(&mut data, dim);
            }
            let (labels, _) = assign::nearest(&data, &self.panels, dot);
            self.add_assigned(&ids[start..end], &data, &labels);
        }
        Ok(())
    }

    /// Encodes vectors (already normalised for cosine) into the lists given by `labels`.
    pub(crate) fn add_assigned(&mut self, ids: &[u64], data: &[f32], labels: &[u32]) {
        let dim = self.params.dim;
        let cs = self.code_size();
        let (codes, aux) = match &self.encoder {
            Encoder::Flat => (Vec::new(), Vec::new()),
            Encoder::Sq8(sq) => {
                let res = residuals(data, labels, &self.centroids, dim);
                let mut codes = vec![0u8; labels.len() * dim];
                let mut aux = vec![0f32; labels.len()];
                codes
                    .par_chunks_exact_mut(dim)
                    .zip(aux.par_iter_mut())
                    .zip(res.par_chunks_exact(dim))
                    .for_each(|((c, a), r)| *a = sq.encode(r, c));
                (codes, aux)
            }
            Encoder::Pq(pq) => {
                let res = residuals(data, labels, &self.centroids, dim);
                (pq.encode_many(&res, dim), Vec::new())
            }
        };
        if self.half_scan && !half_safe(data) {
            self.set_half_scan(false);
        }
        let has_aux = self.has_aux();
        let has_raw = self.has_raw();
        let has_half = self.half_scan;
        for (i, (&id, &l)) in ids.iter().zip(labels).enumerate() {
            let list = &mut self.lists[l as usize];
            list.ids.push(id);
            if cs > 0 {
                list.codes.extend_from_slice(&codes[i * cs..(i + 1) * cs]);
            }
            if has_aux {
                list.aux.push(aux[i]);
            }
            if has_raw {
                list.raw.extend_from_slice(&data[i * dim..(i + 1) * dim]);
            }
            if has_half {
                let e = half::encode_rows(&data[i * dim..(i + 1) * dim], dim, &mut list.half);
                list.half_error = list.half_error.max(e);
            }
        }
    }

    /// Removes every entry with one of `ids`; returns how many entries were removed.
    pub fn remove(&mut self, ids: &[u64]) -> usize {
        let set: HashSet<u64> = ids.iter().copied().collect();
        let (cs, dim) = (self.code_size(), self.params.dim);
        self.lists
            .par_iter_mut()
            .map(|l| l.retain(cs, dim, |id| !set.contains(&id)))
            .sum()
    }

    pub fn list_stats(&self) -> ListStats {
        let sizes: Vec<usize> = self.lists.iter().map(InvertedList::len).collect();
        ListStats {
            imbalance: kmeans::imbalance_factor(&sizes),
            max: sizes.iter().copied().max().unwrap_or(0),
            empty: sizes.iter().filter(|&&s| s == 0).count(),
            sizes,
        }
    }

    fn check_search(&self, query: &[f32], k: usize) -> Result<()> {
        check_query(query, self.params.dim)?;
        if k == 0 {
            return Err(IvfError::param("k", "must be at least 1"));
        }
        Ok(())
    }

    /// The `nprobe` lists nearest to `query`, nearest first (the router's side).
    pub fn probe(&self, query: &[f32], nprobe: usize) -> Result<Vec<u32>> {
        self.probe_with_distance(query, nprobe)
            .map(|(lists, _)| lists)
    }

    /// [`IvfIndex::probe`], plus the coarse distance of the nearest list as the coarse step
    /// computes it (smaller is better): squared L2, the negated dot product for IP, squared L2
    /// of the normalised query for cosine. NaN when every coarse distance is. Routers watch
    /// it for query drift.
    pub fn probe_with_distance(&self, query: &[f32], nprobe: usize) -> Result<(Vec<u32>, f32)> {
        self.check_search(query, 1)?;
        if nprobe == 0 {
            return Err(IvfError::param("nprobe", "must be at least 1"));
        }
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            self.prepare_query(query, s);
            self.coarse(nprobe, s);
            let nearest = s.coarse.first().map_or(f32::NAN, |&(d, _)| d);
            Ok((s.coarse.iter().map(|&(_, l)| l).collect(), nearest))
        })
    }

    /// k nearest neighbours of `query` among the `nprobe` nearest lists.
    pub fn search(&self, query: &[f32], p: &SearchParams) -> Result<Vec<Neighbor>> {
        self.search_with_stats(query, p).map(|(n, _)| n)
    }

    pub fn search_with_stats(
        &self,
        query: &[f32],
        p: &SearchParams,
    ) -> Result<(Vec<Neighbor>, SearchStats)> {
        self.check_search(query, p.k)?;
        if p.nprobe == 0 {
            return Err(IvfError::param("nprobe", "must be at least 1"));
        }
        self.check_rerank(p.rerank)?;
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            self.prepare_query(query, s);
            self.coarse(p.nprobe, s);
            let coarse = std::mem::take(&mut s.coarse);
            let out = self.scan(&coarse, p.k, p.rerank, s);
            s.coarse = coarse;
            Ok(out)
        })
    }

    /// Searches only the given lists (the shard's side, where a router chose the lists).
    pub fn search_lists(
        &self,
        query: &[f32],
        k: usize,
        lists: &[u32],
        rerank: usize,
    ) -> Result<(Vec<Neighbor>, SearchStats)> {
        self.check_search(query, k)?;
        self.check_rerank(rerank)?;
        let nlist = self.params.nlist;
        if let Some(&bad) = lists.iter().find(|&&l| l as usize >= nlist) {
            return Err(IvfError::ListOutOfRange { list: bad, nlist });
        }
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            self.prepare_query(query, s);
            let mut coarse = std::mem::take(&mut s.coarse);
            coarse.clear();
            let k_ = kernels::get();
            let dim = self.params.dim;
            for &l in lists {
                let c = &self.centroids[l as usize * dim..(l as usize + 1) * dim];
                let d = if self.dot() {
                    -(k_.dot)(&s.query, c)
                } else {
                    (k_.l2)(&s.query, c)
                };
                coarse.push((d, l));
            }
            // A list named twice must not yield its entries twice.
            coarse.sort_unstable_by_key(|&(_, l)| l);
            coarse.dedup_by_key(|&mut (_, l)| l);
            let out = self.scan(&coarse, k, rerank, s);
            s.coarse = coarse;
            Ok(out)
        })
    }

    /// Searches many queries in parallel.
    pub fn search_batch(&self, queries: &[f32], p: &SearchParams) -> Result<Vec<Vec<Neighbor>>> {
        Ok(self
            .search_batch_with_stats(queries, p)?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    /// Searches many queries in parallel: blocks of queries get their coarse distances from
    /// one matrix product (much cheaper than one pass over the centroids per query), then
    /// each query scans its lists. Results match [`IvfIndex::search`] up to the rounding of
    /// the coarse distances.
    pub fn search_batch_with_stats(
        &self,
        queries: &[f32],
        p: &SearchParams,
    ) -> Result<Vec<(Vec<Neighbor>, SearchStats)>> {
        let dim = self.params.dim;
        check_vectors("queries", queries, dim)?;
        if p.k == 0 {
            return Err(IvfError::param("k", "must be at least 1"));
        }
        if p.nprobe == 0 {
            return Err(IvfError::param("nprobe", "must be at least 1"));
        }
        self.check_rerank(p.rerank)?;
        const BQ: usize = 32;
        let nlist = self.params.nlist;
        let dot = self.dot();
        let blocks: Vec<Vec<(Vec<Neighbor>, SearchStats)>> = queries
            .par_chunks(BQ * dim)
            .map(|block| {
                let mut normed;
                let block = if self.params.metric == Metric::Cosine {
                    normed = block.to_vec();
                    normalize_rows(&mut normed, dim);
                    &normed[..]
                } else {
                    block
                };
                let nb = block.len() / dim;
                SCRATCH.with(|s| {
                    let s = &mut *s.borrow_mut();
                    let mut dist = std::mem::take(&mut s.block_costs);
                    dist.resize(nb * nlist, 0.0);
                    assign::costs(block, &self.panels, dot, &mut dist);
                    // Lists of every query of the block first, so that while one query
                    // scans, the head of the next query's first list is on its way.
                    let mut coarse = std::mem::take(&mut s.coarse);
                    let n = p.nprobe.min(nlist);
                    let mut chosen = Vec::with_capacity(nb * n);
                    for i in 0..nb {
                        select_nearest(&dist[i * nlist..(i + 1) * nlist], n, &mut coarse);
                        chosen.extend_from_slice(&coarse);
                    }
                    s.coarse = coarse;
                    s.block_costs = dist;
                    (0..nb)
                        .map(|i| {
                            let mine = &chosen[i * n..(i + 1) * n];
                            if let Some(next) = chosen.get((i + 1) * n..(i + 2) * n) {
                                self.prefetch_list_head(next[0].1, self.use_half(next, p.k));
                            }
                            self.prepare_query(&block[i * dim..(i + 1) * dim], s);
                            self.scan(mine, p.k, p.rerank, s)
                        })
                        .collect()
                })
            })
            .collect();
        Ok(blocks.into_iter().flatten().collect())
    }

    fn check_rerank(&self, rerank: usize) -> Result<()> {
        if rerank > 0 && !matches!(self.encoder, Encoder::Flat) && !self.params.keep_raw {
            return Err(IvfError::RerankWithoutRaw);
        }
        Ok(())
    }

    /// Whether a Flat scan of these lists reads the half-precision copy.
    fn use_half(&self, coarse: &[(f32, u32)], k: usize) -> bool {
        matches!(self.encoder, Encoder::Flat) && self.half_scan && {
            let total: usize = coarse
                .iter()
                .map(|&(_, l)| self.lists[l as usize].len())
                .sum();
            total >= HALF_MIN_ENTRIES_PER_RESULT * k
        }
    }

    /// Starts fetching the head of a list that will be scanned next, into L2: the scan's own
    /// prefetching only starts once it runs, so each list otherwise begins with a train of
    /// cache misses.
    #[inline]
    fn prefetch_list_head(&self, l: u32, half: bool) {
        const HEAD: usize = 4096;
        let list = &self.lists[l as usize];
        match &self.encoder {
            Encoder::Flat if half => kernels::prefetch(&list.half, HEAD, kernels::CacheLevel::L2),
            Encoder::Flat => kernels::prefetch(&list.raw, HEAD, kernels::CacheLevel::L2),
            _ => kernels::prefetch(&list.codes, HEAD, kernels::CacheLevel::L2),
        }
    }

    fn prepare_query(&self, query: &[f32], s: &mut Scratch) {
        s.query.clear();
        s.query.extend_from_slice(query);
        if self.params.metric == Metric::Cosine {
            normalize_rows(&mut s.query, self.params.dim);
        }
    }

    /// Whether an L2 PQ scan of `lists` lists adds each list's precomputed table to the
    /// query's. A query that scans one list makes its table straight from the residual
    /// instead: as cheap as the query's half alone, and the list's half is cold.
    fn pq_precomputed(&self, lists: usize) -> bool {
        self.pq_terms.is_some() && !self.dot() && lists > 1
    }

    /// The query's half of the PQ tables, `scale·<q_j, codeword>` (−2 for L2, −1 for dot
    /// metrics), where the scan uses it: dot metrics scan with it as is, L2 adds it to the
    /// lists' precomputed halves.
    fn query_table(&self, precomputed: bool, s: &mut Scratch) {
        if let Encoder::Pq(pq) = &self.encoder
            && (self.dot() || precomputed)
        {
            s.qtab.resize(pq.m * KSUB, 0.0);
            let scale = if !self.dot() { -2.0 } else { -1.0 };
            pq.dot_table(&s.query, scale, &mut s.qtab);
        }
    }

    /// Fills `s.coarse` with the `nprobe` nearest lists (distance, list), nearest first.
    fn coarse(&self, nprobe: usize, s: &mut Scratch) {
        let nlist = self.params.nlist;
        let k = kernels::get();
        s.tmp.resize(nlist, 0.0);
        if self.dot() {
            (k.dot_batch)(&s.query, &self.centroids, &mut s.tmp);
            s.tmp.iter_mut().for_each(|d| *d = -*d);
        } else {
            (k.l2_batch)(&s.query, &self.centroids, &mut s.tmp);
        }
        let mut coarse = std::mem::take(&mut s.coarse);
        select_nearest(&s.tmp, nprobe, &mut coarse);
        s.coarse = coarse;
    }

    /// Scans the given lists; `coarse` holds (coarse distance, list) pairs.
    fn scan(
        &self,
        coarse: &[(f32, u32)],
        k: usize,
        rerank: usize,
        s: &mut Scratch,
    ) -> (Vec<Neighbor>, SearchStats) {
        let flat = matches!(self.encoder, Encoder::Flat);
        let mut stats = SearchStats::default();
        let pq_precomputed = self.pq_precomputed(coarse.len());
        self.query_table(pq_precomputed, s);
        let mut out = if self.use_half(coarse, k) {
            // Exact results from the half-precision copies: re-rank every entry that the
            // copies' error bounds cannot rule out (see `rerank`).
            let qnorm = if self.dot() {
                (kernels::get().dot)(&s.query, &s.query).sqrt()
            } else {
                0.0
            };
            let mut band = std::mem::take(&mut s.band);
            band.reset(k, self.dot(), qnorm, self.params.dim);
            let mode = ScanMode {
                labels: true,
                half: true,
                pq_precomputed,
            };
            self.scan_lists(coarse, mode, &mut band, s, &mut stats);
            let cands = band.candidates();
            stats.reranked = cands.len();
            let out = self.rerank_exact(cands.iter().map(|c| c.1), k, s);
            s.band = band;
            out
        } else {
            let with_rerank = self.has_raw() && !flat && rerank > 0;
            let mode = ScanMode {
                labels: with_rerank,
                half: false,
                pq_precomputed,
            };
            let mut top = std::mem::take(&mut s.top);
            top.reset(if with_rerank { rerank.max(k) } else { k });
            self.scan_lists(coarse, mode, &mut top, s, &mut stats);
            s.top = top;
            if with_rerank {
                let cands = s.top.sorted();
                stats.reranked = cands.len();
                self.rerank_exact(cands.iter().map(|c| c.id), k, s)
            } else {
                s.top.sorted()
            }
        };
        if self.params.metric == Metric::Cosine {
            out.iter_mut()
                .for_each(|n| n.distance = 0.5 * n.distance - 1.0);
        }
        (out, stats)
    }

    /// Scans the given lists into `sink`.
    fn scan_lists(
        &self,
        coarse: &[(f32, u32)],
        mode: ScanMode,
        sink: &mut impl Collector,
        s: &mut Scratch,
        stats: &mut SearchStats,
    ) {
        for (i, &(cd, l)) in coarse.iter().enumerate() {
            if let Some(&(_, next)) = coarse.get(i + 1) {
                self.prefetch_list_head(next, mode.half);
            }
            let list = &self.lists[l as usize];
            stats.lists_probed += 1;
            if list.is_empty() {
                continue;
            }
            stats.scanned += list.len();
            sink.start_list(list.half_error);
            self.scan_list(l, cd, list, mode, sink, s);
        }
    }

    /// Exact distances of candidates labelled `(list << 32) | offset` (see `scan_list`):
    /// the best `k`, best first.
    fn rerank_exact(
        &self,
        labels: impl Iterator<Item = u64> + Clone,
        k: usize,
        s: &mut Scratch,
    ) -> Vec<Neighbor> {
        let kern = kernels::get();
        let dim = self.params.dim;
        let entry = |label: u64| {
            let (l, i) = ((label >> 32) as usize, (label & 0xffff_ffff) as usize);
            let list = &self.lists[l];
            (&list.ids[i..=i], &list.raw[i * dim..(i + 1) * dim])
        };
        // The candidates' f32 rows and ids are cold (the scan read other bytes): ask for all
        // of them first so their cache misses overlap instead of queueing one by one.
        for label in labels.clone() {
            let (id, row) = entry(label);
            kernels::prefetch(id, 8, kernels::CacheLevel::L1);
            kernels::prefetch(row, usize::MAX, kernels::CacheLevel::L1);
        }
        let mut top = std::mem::take(&mut s.top);
        top.reset(k);
        for label in labels {
            let (id, v) = entry(label);
            let id = id[0];
            let d = if self.dot() {
                -(kern.dot)(&s.query, v)
            } else {
                (kern.l2)(&s.query, v)
            };
            top.push(d, id);
        }
        let out = top.sorted();
        s.top = top;
        out
    }

    /// Scans one list into `top`. With `labels`, candidates are pushed as
    /// `(list << 32) | offset` so re-ranking can find their raw vectors.
    fn scan_list(
        &self,
        l: u32,
        coarse_dist: f32,
        list: &InvertedList,
        mode: ScanMode,
        top: &mut impl Collector,
        s: &mut Scratch,
    ) {
        let kern = kernels::get();
        let dim = self.params.dim;
        let dot = self.dot();
        let centroid = &self.centroids[l as usize * dim..(l as usize + 1) * dim];
        let n = list.len();
        let label = |i: usize| {
            if mode.labels {
                (u64::from(l) << 32) | i as u64
            } else {
                list.ids[i]
            }
        };
        // Each encoding reduces to: a kernel filling `dist` for a block, then an affine map
        // `cst + scale * dist (+ aux)` before the heap test.
        match &self.encoder {
            Encoder::Flat => {
                let scale = if dot { -1.0 } else { 1.0 };
                for start in (0..n).step_by(BLOCK) {
                    let end = (start + BLOCK).min(n);
                    let out = &mut s.dist[..end - start];
                    if mode.half {
                        let rows = &list.half[start * dim..end * dim];
                        if dot {
                            (kern.dot_batch_f16)(&s.query, rows, out);
                        } else {
                            (kern.l2_batch_f16)(&s.query, rows, out);
                        }
                    } else {
                        let rows = &list.raw[start * dim..end * dim];
                        if dot {
                            (kern.dot_batch)(&s.query, rows, out);
                        } else {
                            (kern.l2_batch)(&s.query, rows, out);
                        }
                    }
                    push_block(top, out, 0.0, scale, None, start, &label);
                }
            }
            Encoder::Sq8(sq) => {
                s.weights.resize(dim, 0.0);
                let cst = if dot {
                    // -(<q,c> + Σ q·vmin) - Σ (q·step)·code
                    let mut c0 = -coarse_dist; // <q, c>
                    for (((w, &q), &step), &vmin) in s
                        .weights
                        .iter_mut()
                        .zip(&s.query)
                        .zip(&sq.step)
                        .zip(&sq.vmin)
                    {
                        *w = q * step;
                        c0 += q * vmin;
                    }
                    -c0
                } else {
                    // ‖t‖² − 2Σ t·vmin − 2Σ (t·step)·code + ‖r̂‖², t = q − c
                    let mut c0 = 0.0;
                    for ((((w, &q), &c), &step), &vmin) in s
                        .weights
                        .iter_mut()
                        .zip(&s.query)
                        .zip(centroid)
                        .zip(&sq.step)
                        .zip(&sq.vmin)
                    {
                        let t = q - c;
                        *w = t * step;
                        c0 += t * t - 2.0 * t * vmin;
                    }
                    c0
                };
                let scale = if dot { -1.0 } else { -2.0 };
                for start in (0..n).step_by(BLOCK) {
                    let end = (start + BLOCK).min(n);
                    let out = &mut s.dist[..end - start];
                    (kern.sq8_dot_batch)(&s.weights, &list.codes[start * dim..end * dim], out);
                    let aux = (!dot).then(|| &list.aux[start..end]);
                    push_block(top, out, cst, scale, aux, start, &label);
                }
            }
            Encoder::Pq(pq) => {
                let m = pq.m;
                s.lut.resize(m * KSUB, 0.0);
                // Dot metrics scan with the query's table as is (see `query_table`).
                let cst = if dot {
                    coarse_dist // −<q, c>
                } else if let Some(terms) = self.pq_terms.as_ref().filter(|_| mode.pq_precomputed) {
                    let t = &terms[l as usize * m * KSUB..(l as usize + 1) * m * KSUB];
                    (kern.columns)(&[1.0], &s.qtab, Some(t), 1.0, &mut s.lut);
                    coarse_dist // ‖q − c‖²
                } else {
                    s.tmp.clear();
                    s.tmp
                        .extend(s.query.iter().zip(centroid).map(|(q, c)| q - c));
                    pq.l2_table(&s.tmp, &mut s.lut);
                    0.0
                };
                for start in (0..n).step_by(BLOCK) {
                    let end = (start + BLOCK).min(n);
                    let out = &mut s.dist[..end - start];
                    let lut = if dot { &s.qtab } else { &s.lut };
                    (kern.pq_scan)(lut, &list.codes[start * m..end * m], out);
                    push_block(top, out, cst, 1.0, None, start, &label);
                }
            }
        }
    }
}

/// How one list is scanned: push `(list << 32) | offset` labels instead of ids (for
/// re-ranking), and read Flat's half-precision copies.
#[derive(Clone, Copy)]
struct ScanMode {
    labels: bool,
    half: bool,
    /// L2 PQ tables add the list's precomputed half (see `pq_precomputed`).
    pq_precomputed: bool,
}

/// Maps a block of kernel outputs to distances (`cst + scale·d (+ aux)`) in place and offers
/// them to `top`.
#[inline(always)]
fn push_block(
    top: &mut impl Collector,
    dist: &mut [f32],
    cst: f32,
    scale: f32,
    aux: Option<&[f32]>,
    start: usize,
    label: &impl Fn(usize) -> u64,
) {
    match aux {
        None => dist.iter_mut().for_each(|d| *d = cst + scale * *d),
        Some(aux) => dist
            .iter_mut()
            .zip(aux)
            .for_each(|(d, &a)| *d = cst + scale * *d + a),
    }
    if let Some(k) = top.unfilled()
        && let Some(t) = kth_chunk_min(dist, k)
    {
        top.seed(t);
    }
    let mut thr = top.threshold();
    for (i, &d) in dist.iter().enumerate() {
        if d < thr {
            top.push(d, label(start + i));
            thr = top.threshold();
        }
    }
}

/// An upper bound on the k-th smallest of `dist`: the k-th smallest of the minima of its
/// chunks of 8 (k distinct entries are at or below it). `None` when there are fewer than
/// 2k chunks (the bound would be loose) or no finite bound.
#[inline]
fn kth_chunk_min(dist: &[f32], k: usize) -> Option<f32> {
    const CH: usize = 8;
    const MAX_CHUNKS: usize = BLOCK / CH;
    let n = (dist.len() / CH).min(MAX_CHUNKS);
    if k == 0 || n < 2 * k {
        return None;
    }
    let mut mins = [0f32; MAX_CHUNKS];
    for (m, c) in mins.iter_mut().zip(dist.chunks_exact(CH)) {
        *m = lane_min(c);
    }
    let mins = &mut mins[..n];
    let (_, t, _) = mins.select_nth_unstable_by(k - 1, f32::total_cmp);
    t.is_finite().then_some(*t)
}

/// The `nprobe` smallest of `dist` as (distance, list), nearest first.
fn select_nearest(dist: &[f32], nprobe: usize, out: &mut Vec<(f32, u32)>) {
    out.clear();
    let n = nprobe.min(dist.len());
    if n == 0 {
        return;
    }
    if n == 1
        && let Some(best) = argmin(dist)
    {
        out.push(best);
        return;
    }
    if n * 8 >= dist.len() {
        out.extend(dist.iter().enumerate().map(|(l, &d)| (d, l as u32)));
        if n < dist.len() {
            out.select_nth_unstable_by(n, |a, b| a.0.total_cmp(&b.0));
            out.truncate(n);
        }
    } else {
        // Few lists of many: a bounded max-heap. Once it is full, a chunk whose minimum
        // does not beat the heap's worst is skipped whole (this runs once per query over
        // every centroid distance; a compare-and-branch per element was ~6 % of a query at
        // nprobe 1).
        const CH: usize = 64;
        for (ci, chunk) in dist.chunks(CH).enumerate() {
            if out.len() == n && lane_min(chunk) >= out[0].0 {
                continue;
            }
            for (j, &d) in chunk.iter().enumerate() {
                heap_offer(out, n, d, (ci * CH + j) as u32);
            }
        }
    }
    out.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
}

/// The smallest finite value of `dist` and its first position (`None` if there is none): the
/// nearest list at nprobe 1, found with vector minima per chunk and one short scalar pass.
fn argmin(dist: &[f32]) -> Option<(f32, u32)> {
    const CH: usize = 64;
    let (mut best, mut at) = (f32::INFINITY, None);
    for (ci, chunk) in dist.chunks(CH).enumerate() {
        let m = lane_min(chunk);
        if m < best {
            (best, at) = (m, Some(ci));
        }
    }
    let ci = at?;
    let j = dist[ci * CH..].iter().position(|&d| d == best)?;
    Some((best, (ci * CH + j) as u32))
}

/// Minimum of `x` (NaN never wins), taken in eight independent lanes so that it compiles to
/// vector min instructions without a target feature.
#[inline]
fn lane_min(x: &[f32]) -> f32 {
    let mut lanes = [f32::INFINITY; 8];
    let mut it = x.chunks_exact(8);
    for c in it.by_ref() {
        for (m, &d) in lanes.iter_mut().zip(c) {
            *m = if d < *m { d } else { *m };
        }
    }
    for &d in it.remainder() {
        lanes[0] = if d < lanes[0] { d } else { lanes[0] };
    }
    lanes
        .iter()
        .fold(f32::INFINITY, |a, &b| if b < a { b } else { a })
}

/// Offers (d, l) to a max-heap of at most `n` entries (the worst at the root).
#[inline(always)]
fn heap_offer(out: &mut Vec<(f32, u32)>, n: usize, d: f32, l: u32) {
    if out.len() < n {
        out.push((d, l));
        let mut i = out.len() - 1;
        while i > 0 && out[(i - 1) / 2].0 < out[i].0 {
            out.swap(i, (i - 1) / 2);
            i = (i - 1) / 2;
        }
    } else if d < out[0].0 {
        out[0] = (d, l);
        let mut i = 0;
        loop {
            let (a, b) = (2 * i + 1, 2 * i + 2);
            let mut top = i;
            if a < n && out[a].0 > out[top].0 {
                top = a;
            }
            if b < n && out[b].0 > out[top].0 {
                top = b;
            }
            if top == i {
                break;
            }
            out.swap(i, top);
            i = top;
        }
    }
}

/// Whether every value fits half precision without overflow.
fn half_safe(v: &[f32]) -> bool {
    v.iter().all(|x| x.abs() <= half::HALF_SAFE_MAX)
}

/// `x_i − c_{label_i}` for every row.
fn residuals(data: &[f32], labels: &[u32], centroids: &[f32], dim: usize) -> Vec<f32> {
    let mut out = data.to_vec();
    out.par_chunks_exact_mut(dim)
        .zip(labels.par_iter())
        .for_each(|(r, &l)| {
            let c = &centroids[l as usize * dim..(l as usize + 1) * dim];
            r.iter_mut().zip(c).for_each(|(v, c)| *v -= c);
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Synthetic;

    /// Both selection paths (partial sort, heap with chunk skipping) and every chunk
    /// remainder give the n smallest, nearest first, as a full sort does.
    #[test]
    fn select_nearest_matches_sorting() {
        let mut rng = crate::rng::Rng::new(11);
        for len in [1usize, 15, 16, 17, 100, 1000, 1024, 1031] {
            // Descending runs make the heap fill with bad candidates first.
            let dist: Vec<f32> = (0..len)
                .map(|i| rng.unit() + if i < len / 2 { 10.0 } else { 0.0 })
                .collect();
            let mut want: Vec<(f32, u32)> = dist
                .iter()
                .enumerate()
                .map(|(l, &d)| (d, l as u32))
                .collect();
            want.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
            for n in [1usize, 2, 3, 8, 64, 200, len] {
                let mut got = Vec::new();
                select_nearest(&dist, n, &mut got);
                assert_eq!(got, want[..n.min(len)], "len {len} n {n}");
            }
        }
    }

    /// nprobe 1 takes the first of equal minima (as sorting by distance, then list, does),
    /// and never a NaN.
    #[test]
    fn nearest_list_breaks_ties_by_position_and_skips_nan() {
        let mut d = vec![5.0f32; 300];
        d[0] = f32::NAN;
        d[70] = 1.0;
        d[200] = 1.0;
        let mut out = Vec::new();
        select_nearest(&d, 1, &mut out);
        assert_eq!(out, vec![(1.0, 70)]);
        let all_nan = vec![f32::NAN; 10];
        select_nearest(&all_nan, 1, &mut out);
        assert_eq!(out.len(), 1);
    }

    /// Seeding from chunk minima (long first blocks) must keep exactly what offering every
    /// entry to the heap keeps: same ids, same tie-breaks, across blocks and transforms.
    #[test]
    fn seeded_blocks_keep_what_plain_pushes_keep() {
        let mut rng = crate::rng::Rng::new(3);
        for &(n, k) in &[
            (256, 10),
            (200, 10),
            (159, 10),
            (100, 10),
            (37, 3),
            (256, 1),
        ] {
            for &(k, ties) in &[(k, false), (k, true), (32.min(n / 8), true)] {
                for (cst, scale) in [(0.0f32, 1.0f32), (2.0, -1.0)] {
                    // Two blocks: the first may seed, the second meets a full heap.
                    let raw: Vec<f32> = (0..2 * n)
                        .map(|_| {
                            if ties {
                                (rng.unit() * 8.0).floor()
                            } else {
                                rng.normal()
                            }
                        })
                        .collect();
                    let mut want = TopK::new(k);
                    for (i, &d) in raw.iter().enumerate() {
                        want.push(cst + scale * d, i as u64);
                    }
                    let mut got = TopK::new(k);
                    for (b, block) in raw.chunks(n).enumerate() {
                        let mut buf = block.to_vec();
                        push_block(&mut got, &mut buf, cst, scale, None, b * n, &|i| i as u64);
                    }
                    assert_eq!(
                        got.sorted(),
                        want.sorted(),
                        "n {n} k {k} ties {ties} scale {scale}"
                    );
                }
            }
        }
    }

    #[test]
    fn kth_chunk_min_bounds_the_kth_smallest() {
        let mut rng = crate::rng::Rng::new(4);
        for n in [16usize, 80, 81, 160, 255, 256] {
            let mut d: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            d[n / 2] = f32::NAN;
            for k in [1usize, 5, 10] {
                let got = kth_chunk_min(&d, k);
                assert_eq!(got.is_some(), n / 8 >= 2 * k, "n {n} k {k}");
                if let Some(t) = got {
                    let at_or_below = d.iter().filter(|&&x| x <= t).count();
                    assert!(
                        at_or_below >= k,
                        "n {n} k {k}: {at_or_below} at or below {t}"
                    );
                }
            }
        }
    }

    /// The router's coarse step reports the nearest centroid's squared L2 distance, and the
    /// same lists as `probe`.
    #[test]
    fn probe_with_distance_reports_the_nearest_centroid() {
        let dim = 16;
        let syn = Synthetic {
            n: 2000,
            dim,
            clusters: 10,
            skew: 0.5,
            seed: 5,
        };
        let base = syn.generate(2000, 0);
        let queries = syn.generate(20, 1);
        let mut p = IvfParams::new(dim, Metric::L2, 32, QuantizerKind::Flat);
        p.kmeans.iters = 5;
        let index = IvfIndex::train(p, &base).expect("train");
        for query in queries.chunks_exact(dim) {
            let want = index
                .centroids
                .chunks_exact(dim)
                .map(|c| {
                    query
                        .iter()
                        .zip(c)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f32>()
                })
                .fold(f32::INFINITY, f32::min);
            for nprobe in [1, 4, 32] {
                let (lists, d) = index.probe_with_distance(query, nprobe).expect("probe");
                assert!(
                    (d - want).abs() <= 1e-4 * want.abs().max(1e-6),
                    "nprobe {nprobe}: {d} vs brute force {want}"
                );
                assert_eq!(lists, index.probe(query, nprobe).expect("probe"));
            }
        }
        assert!(index.probe_with_distance(&queries[..dim], 0).is_err());
        assert!(index.probe_with_distance(&queries[..dim - 1], 1).is_err());
    }

    /// The distance a search reports for an SQ8/PQ entry must be the exact distance between
    /// the query and the entry's reconstruction `centroid + decode(code)`: this pins down
    /// the table and weight algebra of every metric.
    #[test]
    fn reported_distances_equal_distance_to_reconstruction() {
        let dim = 16;
        let syn = Synthetic {
            n: 3000,
            dim,
            clusters: 20,
            skew: 0.5,
            seed: 3,
        };
        let base = syn.generate(3000, 0);
        let queries = syn.generate(5, 1);
        let ids: Vec<u64> = (0..3000).collect();
        for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
            for q in [QuantizerKind::Sq8, QuantizerKind::Pq { m: 4 }] {
                let mut p = IvfParams::new(dim, metric, 16, q);
                p.kmeans.iters = 5;
                let mut index = IvfIndex::train(p, &base).expect("train");
                index.add(&ids, &base).expect("add");
                // nprobe 1 makes an L2 PQ table straight from the residual; 4 adds the
                // list's precomputed half to the query's.
                for (query, nprobe) in queries.chunks_exact(dim).flat_map(|q| [(q, 1), (q, 4)]) {
                    let mut qn = query.to_vec();
                    if metric == Metric::Cosine {
                        normalize_rows(&mut qn, dim);
                    }
                    let res = index
                        .search(query, &SearchParams::new(5, nprobe))
                        .expect("search");
                    assert_eq!(res.len(), 5);
                    for n in res {
                        let (l, i) = index
                            .lists
                            .iter()
                            .enumerate()
                            .find_map(|(l, list)| {
                                list.ids.iter().position(|&x| x == n.id).map(|i| (l, i))
                            })
                            .expect("entry");
                        let c = &index.centroids[l * dim..(l + 1) * dim];
                        let mut rec = vec![0f32; dim];
                        match &index.encoder {
                            Encoder::Sq8(sq) => {
                                sq.decode(&index.lists[l].codes[i * dim..(i + 1) * dim], &mut rec)
                            }
                            Encoder::Pq(pq) => {
                                pq.decode(&index.lists[l].codes[i * pq.m..(i + 1) * pq.m], &mut rec)
                            }
                            Encoder::Flat => unreachable!(),
                        }
                        rec.iter_mut().zip(c).for_each(|(r, c)| *r += c);
                        let want = metric.distance(&qn, &rec);
                        assert!(
                            (want - n.distance).abs() <= 1e-3 * (1.0 + want.abs()),
                            "{metric} {q}: reported {} exact {want}",
                            n.distance
                        );
                    }
                }
            }
        }
    }
}
