//! Splitting one inverted list in two without retraining the index.
//!
//! A list that takes most of the probes (or holds far more entries than the others) makes
//! every query that probes it slow and the shard that holds it hot. Splitting it runs 2-means
//! over that list's vectors only: one centroid replaces the list's own and the other becomes
//! list `nlist`. Every other centroid and the SQ8 ranges / PQ codebooks stay as they were, so
//! every other list's codes (residuals to unchanged centroids) stay valid: only the split
//! list's entries are re-encoded, and lists files written for the parent quantizer can be read
//! into the result for all lists but the split one ([`crate::format::decode_list_for`]).
//!
//! Entries stay inside the two halves (each goes to the nearer of the two new centroids, not
//! to the nearest of all centroids), so no other list changes; a search probes the halves
//! like any other list.

use crate::assign::{self, Panels};
use crate::error::{IvfError, Result, check_vectors};
use crate::invlist::InvertedList;
use crate::ivf::IvfIndex;
use crate::kmeans;
use crate::metric::{Metric, normalize_rows};

impl IvfIndex {
    /// Splits list `list` of this quantizer, given the vectors of all its entries (`ids` in
    /// any order, one row of `vectors` each; the original vectors, not decoded codes).
    ///
    /// Returns a quantizer with `nlist + 1` lists that holds only the two halves: list `list`
    /// and list `nlist`. Refuses a list that does not exist, mismatched or non-finite input,
    /// and entries that 2-means cannot separate (fewer than two, or all identical).
    pub fn split_list(&self, list: u32, ids: &[u64], vectors: &[f32]) -> Result<IvfIndex> {
        let nlist = self.params.nlist;
        if list as usize >= nlist {
            return Err(IvfError::ListOutOfRange { list, nlist });
        }
        let dim = self.params.dim;
        let n = check_vectors("vectors of the split list", vectors, dim)?;
        if ids.len() != n {
            return Err(IvfError::IdCountMismatch {
                what: "split",
                ids: ids.len(),
                vectors: n,
            });
        }
        let cannot =
            |why: &str| IvfError::param("list", format!("list {list} cannot be split: {why}"));
        if n < 2 {
            return Err(cannot(&format!("it has {n} entries")));
        }
        let mut data = vectors.to_vec();
        if self.params.metric == Metric::Cosine {
            normalize_rows(&mut data, dim);
        }
        // The halves are grouped by L2 for every metric: with inner-product assignment the
        // centroid of larger norm takes every entry (the main training copes through many
        // centroids; two cannot). Codes are residuals to whichever centroid holds an entry,
        // so distances stay right whatever the grouping.
        let dot = false;
        let params = kmeans::KMeansParams {
            // All of the list's entries (a list is small next to the index); the seed ties
            // the halves to the list, so a retried split Job writes the same files.
            max_points_per_centroid: 0,
            seed: self.params.kmeans.seed ^ (u64::from(list) << 17) ^ 0x5b17,
            ..self.params.kmeans.clone()
        };
        let km = kmeans::train(&data, dim, 2, &params, dot, false)?;
        let two = Panels::new(&km.centroids, dim, dot, None);
        let (halves, _) = assign::nearest(&data, &two, dot);
        let upper = halves.iter().filter(|&&h| h == 1).count();
        if upper == 0 || upper == n {
            return Err(cannot("its entries do not separate into two groups"));
        }
        let mut centroids = Vec::with_capacity((nlist + 1) * dim);
        centroids.extend_from_slice(&self.centroids);
        let row = list as usize * dim;
        centroids[row..row + dim].copy_from_slice(&km.centroids[..dim]);
        centroids.extend_from_slice(&km.centroids[dim..]);
        let mut params = self.params.clone();
        params.nlist = nlist + 1;
        let mut out = IvfIndex {
            params,
            centroids,
            encoder: self.encoder.clone(),
            lists: vec![InvertedList::default(); nlist + 1],
            pq_terms: None,
            fingerprint: 0,
            panels: Panels::new(&[], 1, false, None),
            half_scan: self.half_scan,
        };
        out.finish_quantizer();
        let labels: Vec<u32> = halves
            .iter()
            .map(|&h| if h == 0 { list } else { nlist as u32 })
            .collect();
        out.add_assigned(ids, &data, &labels);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::dataset::Synthetic;
    use crate::format;
    use crate::ivf::{IvfIndex, IvfParams, QuantizerKind, SearchParams};
    use crate::metric::Metric;

    const DIM: usize = 16;

    fn built(metric: Metric, quantizer: QuantizerKind) -> (IvfIndex, Vec<f32>) {
        let data = Synthetic {
            n: 4000,
            dim: DIM,
            clusters: 12,
            skew: 1.0,
            seed: 7,
        }
        .generate(4000, 0);
        let mut p = IvfParams::new(DIM, metric, 16, quantizer);
        p.kmeans.seed = 3;
        let mut index = IvfIndex::train(p, &data).expect("train");
        let ids: Vec<u64> = (0..4000).collect();
        index.add(&ids, &data).expect("add");
        (index, data)
    }

    /// The biggest list, with the original vectors of its entries.
    fn biggest(index: &IvfIndex, data: &[f32]) -> (u32, Vec<u64>, Vec<f32>) {
        let list = (0..index.nlist() as u32)
            .max_by_key(|&l| index.list(l).map_or(0, |x| x.len()))
            .expect("lists");
        let ids = index.list(list).expect("list").ids.clone();
        let rows = ids
            .iter()
            .flat_map(|&id| {
                data[id as usize * DIM..(id as usize + 1) * DIM]
                    .iter()
                    .copied()
            })
            .collect();
        (list, ids, rows)
    }

    /// The split quantizer with every other list read from the parent's lists file, as a
    /// shard loads a split version.
    fn merged(parent: &IvfIndex, split: &IvfIndex, list: u32) -> IvfIndex {
        let mut bytes = Vec::new();
        format::write_lists(parent, &mut bytes).expect("write");
        let dir = format::read_list_directory(&bytes, "parent").expect("directory");
        let mut out = split.clone();
        for l in (0..parent.nlist() as u32).filter(|&l| l != list) {
            let e = dir.entry(l).expect("entry");
            let blob = &bytes[e.offset as usize..(e.offset + e.len) as usize];
            let decoded =
                format::decode_list_for(&out, parent.fingerprint(), &dir, l, blob, "parent")
                    .expect("a parent list decodes into the split quantizer");
            out.set_list(l, decoded).expect("set");
        }
        out
    }

    #[test]
    fn a_split_partitions_the_list_and_keeps_every_other_centroid() {
        for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
            let (index, data) = built(metric, QuantizerKind::Flat);
            let (list, ids, rows) = biggest(&index, &data);
            let split = index.split_list(list, &ids, &rows).expect("split");
            assert_eq!(split.nlist(), 17, "{metric:?}");
            assert_ne!(split.fingerprint(), index.fingerprint());
            let (a, b) = (split.list(list).expect("a"), split.list(16).expect("b"));
            assert!(
                !a.is_empty() && !b.is_empty(),
                "{metric:?}: both halves hold entries"
            );
            let mut got: Vec<u64> = a.ids.iter().chain(&b.ids).copied().collect();
            got.sort_unstable();
            let mut want = ids.clone();
            want.sort_unstable();
            assert_eq!(got, want, "{metric:?}: every entry in exactly one half");
            assert_eq!(split.ntotal(), ids.len());
            for l in (0..16).filter(|&l| l != list as usize) {
                assert_eq!(
                    split.centroids()[l * DIM..(l + 1) * DIM],
                    index.centroids()[l * DIM..(l + 1) * DIM],
                    "{metric:?}: centroid {l} unchanged"
                );
            }
        }
    }

    #[test]
    fn a_flat_split_index_searched_over_every_list_is_exact() {
        for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
            let (index, data) = built(metric, QuantizerKind::Flat);
            let (list, ids, rows) = biggest(&index, &data);
            let split = index.split_list(list, &ids, &rows).expect("split");
            let whole = merged(&index, &split, list);
            assert_eq!(whole.ntotal(), 4000);
            for q in (0..4000).step_by(397) {
                let query = &data[q * DIM..(q + 1) * DIM];
                let before = index
                    .search(query, &SearchParams::new(10, 16))
                    .expect("search");
                let after = whole
                    .search(query, &SearchParams::new(10, 17))
                    .expect("search");
                let ids = |r: &[crate::Neighbor]| r.iter().map(|n| n.id).collect::<Vec<_>>();
                assert_eq!(ids(&after), ids(&before), "{metric:?}: query {q}");
            }
        }
    }

    /// Property, over random datasets, metrics and lists: a split partitions the list's
    /// entries (none lost, none twice), keeps every other centroid, and a Flat index merged
    /// from the parent's other lists and the halves answers an exhaustive search exactly as
    /// the parent does.
    #[test]
    fn property_splits_partition_and_preserve_exhaustive_answers() {
        let mut rng = crate::Rng::new(99);
        for case in 0..12u64 {
            let metric = [Metric::L2, Metric::InnerProduct, Metric::Cosine][case as usize % 3];
            let n = 300 + rng.below(700);
            let nlist = 2 + rng.below(14);
            let data = Synthetic {
                n,
                dim: DIM,
                clusters: 1 + rng.below(10),
                skew: rng.below(3) as f64 * 0.5,
                seed: 1000 + case,
            }
            .generate(n, 0);
            let mut p = IvfParams::new(DIM, metric, nlist, QuantizerKind::Flat);
            p.kmeans.seed = case;
            let mut index = IvfIndex::train(p, &data).expect("train");
            index
                .add(&(0..n as u64).collect::<Vec<_>>(), &data)
                .expect("add");
            let candidates: Vec<u32> = (0..nlist as u32)
                .filter(|&l| index.list(l).is_some_and(|x| x.len() >= 2))
                .collect();
            let list = candidates[rng.below(candidates.len())];
            let ids = index.list(list).expect("list").ids.clone();
            let rows: Vec<f32> = ids
                .iter()
                .flat_map(|&i| data[i as usize * DIM..(i as usize + 1) * DIM].to_vec())
                .collect();
            let split = match index.split_list(list, &ids, &rows) {
                Ok(s) => s,
                // Identical entries cannot be split; that is refused by name, never mangled.
                Err(e) => {
                    assert!(
                        e.to_string().contains("do not separate"),
                        "case {case}: {e}"
                    );
                    continue;
                }
            };
            let mut got: Vec<u64> = [list, nlist as u32]
                .iter()
                .flat_map(|&l| split.list(l).expect("half").ids.clone())
                .collect();
            got.sort_unstable();
            let mut want = ids.clone();
            want.sort_unstable();
            assert_eq!(got, want, "case {case}: the halves partition list {list}");
            for l in (0..nlist).filter(|&l| l != list as usize) {
                assert_eq!(
                    split.centroids()[l * DIM..(l + 1) * DIM],
                    index.centroids()[l * DIM..(l + 1) * DIM],
                    "case {case}: centroid {l}"
                );
            }
            let whole = merged(&index, &split, list);
            assert_eq!(whole.ntotal(), n, "case {case}");
            for q in (0..n).step_by(n / 7) {
                let query = &data[q * DIM..(q + 1) * DIM];
                let a = index
                    .search(query, &SearchParams::new(5, nlist))
                    .expect("search");
                let b = whole
                    .search(query, &SearchParams::new(5, nlist + 1))
                    .expect("search");
                let d = |r: &[crate::Neighbor]| r.iter().map(|x| x.distance).collect::<Vec<_>>();
                // Ties may order ids differently; the distances must agree.
                assert_eq!(d(&b), d(&a), "case {case} ({metric:?}), query {q}");
            }
        }
    }

    #[test]
    fn re_encoded_halves_find_their_own_vectors_as_well_as_before() {
        for quantizer in [QuantizerKind::Sq8, QuantizerKind::Pq { m: 8 }] {
            let (index, data) = built(Metric::L2, quantizer);
            let (list, ids, rows) = biggest(&index, &data);
            let split = index.split_list(list, &ids, &rows).expect("split");
            let whole = merged(&index, &split, list);
            let found = |ix: &IvfIndex, nprobe: usize| {
                ids.iter()
                    .filter(|&&id| {
                        let q = &data[id as usize * DIM..(id as usize + 1) * DIM];
                        let r = ix.search(q, &SearchParams::new(1, nprobe)).expect("search");
                        r.first().is_some_and(|n| n.id == id)
                    })
                    .count()
            };
            let (before, after) = (found(&index, 16), found(&whole, 17));
            // Codes are residuals to the nearer half's centroid, so they are at least as
            // precise as before on average; allow a little noise either way.
            assert!(
                after * 100 >= before * 95,
                "{quantizer:?}: {after} of {} entries find themselves after the split, {before} before",
                ids.len()
            );
        }
    }

    #[test]
    fn lists_of_another_quantizer_are_refused() {
        let (index, data) = built(Metric::L2, QuantizerKind::Sq8);
        let (list, ids, rows) = biggest(&index, &data);
        let split = index.split_list(list, &ids, &rows).expect("split");
        let mut bytes = Vec::new();
        format::write_lists(&index, &mut bytes).expect("write");
        let dir = format::read_list_directory(&bytes, "parent").expect("directory");
        let e = dir.entry(0).expect("entry");
        let blob = &bytes[e.offset as usize..(e.offset + e.len) as usize];
        let err =
            format::decode_list(&split, &dir, 0, blob, "parent").expect_err("own fingerprint");
        assert!(err.to_string().contains("built for quantizer"), "{err}");
        let err = format::decode_list_for(&split, 42, &dir, 0, blob, "parent").expect_err("other");
        assert!(err.to_string().contains("built for quantizer"), "{err}");
    }

    #[test]
    fn bad_splits_are_refused_by_name() {
        let (index, data) = built(Metric::L2, QuantizerKind::Flat);
        let row = &data[..DIM];
        let err = index
            .split_list(99, &[0, 1], &[row, row].concat())
            .expect_err("range");
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = index.split_list(0, &[0], row).expect_err("one entry");
        assert!(err.to_string().contains("1 entries"), "{err}");
        let err = index
            .split_list(0, &[0, 1, 2], &[row, row, row].concat())
            .expect_err("same");
        assert!(err.to_string().contains("do not separate"), "{err}");
        let err = index
            .split_list(0, &[0], &[row, row].concat())
            .expect_err("ids");
        assert!(err.to_string().contains("ids has 1"), "{err}");
        let mut nan = [row, row].concat();
        nan[3] = f32::NAN;
        let err = index.split_list(0, &[0, 1], &nan).expect_err("nan");
        assert!(err.to_string().contains("not finite"), "{err}");
    }
}
