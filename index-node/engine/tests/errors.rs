//! Bad input gets an error that says what and where, never a panic.

mod common;

use common::*;
use quiver_ivf::dataset;
use quiver_ivf::{IvfError, IvfIndex, IvfParams, Metric, QuantizerKind, SearchParams};

fn index() -> (IvfIndex, Data) {
    let d = data(31);
    (build(&d, Metric::L2, QuantizerKind::Flat, false), d)
}

#[test]
fn wrong_dimension_query() {
    let (index, _) = index();
    let err = index
        .search(&[0.0; 5], &SearchParams::new(10, 4))
        .expect_err("dim");
    assert!(
        matches!(
            err,
            IvfError::DimensionMismatch {
                expected: 32,
                got: 5,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.to_string(), "query: expected dimension 32, got 5");
    assert!(index.search(&[], &SearchParams::new(10, 4)).is_err());
}

#[test]
fn nan_and_infinite_values() {
    let (mut index, _) = index();
    let mut q = vec![0.5f32; DIM];
    q[3] = f32::NAN;
    let err = index
        .search(&q, &SearchParams::new(10, 4))
        .expect_err("nan");
    assert!(
        err.to_string().contains("component 3 is not finite"),
        "{err}"
    );
    let mut v = vec![0.5f32; 2 * DIM];
    v[DIM + 1] = f32::INFINITY;
    let err = index.add(&[1, 2], &v).expect_err("inf");
    assert!(err.to_string().contains("vector 1, component 1"), "{err}");
}

/// Finite but huge coordinates: their distances would overflow to infinity and be dropped
/// (an answer with no ids), so queries, added vectors and training data are refused.
#[test]
fn vectors_whose_squared_norm_overflows_are_refused() {
    let (mut index, _) = index();
    for q in [
        {
            let mut q = vec![0.5f32; DIM];
            q[0] = 1e20;
            q
        },
        vec![1e19f32; DIM],
    ] {
        let err = index
            .search(&q, &SearchParams::new(10, 4))
            .expect_err("huge query accepted");
        assert!(
            matches!(err, IvfError::NormOverflow { row: 0, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("squared norm"), "{err}");
    }
    // Large but safe coordinates still find their neighbours.
    let q = vec![1e17f32; DIM];
    assert!(q.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() < quiver_ivf::MAX_SQUARED_NORM);
    assert_eq!(
        index
            .search(&q, &SearchParams::new(10, 4))
            .expect("search")
            .len(),
        10
    );
    let mut v = vec![0.5f32; 2 * DIM];
    v[DIM + 2] = 1e20;
    let err = index.add(&[1, 2], &v).expect_err("huge vector added");
    assert!(
        matches!(err, IvfError::NormOverflow { row: 1, .. }),
        "{err}"
    );
}

#[test]
fn zero_k_and_nprobe() {
    let (index, d) = index();
    let q = &d.queries[..DIM];
    assert!(
        index
            .search(q, &SearchParams::new(0, 4))
            .expect_err("k")
            .to_string()
            .contains("k: must be at least 1")
    );
    assert!(
        index
            .search(q, &SearchParams::new(10, 0))
            .expect_err("np")
            .to_string()
            .contains("nprobe")
    );
    assert!(matches!(
        index.search_lists(q, 10, &[64], 0),
        Err(IvfError::ListOutOfRange {
            list: 64,
            nlist: 64
        })
    ));
}

#[test]
fn nprobe_above_nlist_probes_everything() {
    let (index, d) = index();
    let q = &d.queries[..DIM];
    let (_, s) = index
        .search_with_stats(q, &SearchParams::new(10, 10_000))
        .expect("search");
    assert_eq!(s.lists_probed, 64);
    assert_eq!(s.scanned, N);
}

#[test]
fn too_few_training_points_and_bad_params() {
    let d = data(32);
    let p = IvfParams::new(DIM, Metric::L2, 1000, QuantizerKind::Flat);
    let err = IvfIndex::train(p, &d.base[..500 * DIM]).expect_err("few");
    assert_eq!(
        err.to_string(),
        "coarse quantizer: 500 training points for 1000 clusters; need at least 1000"
    );
    let p = IvfParams::new(DIM, Metric::L2, 8, QuantizerKind::Pq { m: 5 });
    assert!(
        IvfIndex::train(p, &d.base)
            .expect_err("m")
            .to_string()
            .contains("pq_m")
    );
    let p = IvfParams::new(DIM, Metric::L2, 8, QuantizerKind::Pq { m: 8 });
    assert!(
        IvfIndex::train(p, &d.base[..100 * DIM])
            .expect_err("pq few")
            .to_string()
            .contains("PQ codebooks")
    );
    let p = IvfParams::new(DIM, Metric::L2, 0, QuantizerKind::Flat);
    assert!(
        IvfIndex::train(p, &d.base)
            .expect_err("nlist")
            .to_string()
            .contains("nlist")
    );
    let p = IvfParams::new(DIM, Metric::L2, 8, QuantizerKind::Flat);
    assert!(
        IvfIndex::train(p, &d.base[..DIM * 10 + 3])
            .expect_err("ragged")
            .to_string()
            .contains("not a multiple")
    );
}

#[test]
fn ids_must_match_vectors_and_rerank_needs_raw() {
    let d = data(33);
    let mut index = build(&d, Metric::L2, QuantizerKind::Sq8, false);
    let err = index.add(&[1, 2, 3], &d.base[..2 * DIM]).expect_err("ids");
    assert_eq!(
        err.to_string(),
        "add: ids has 3 entries but there are 2 vectors"
    );
    let err = index.search(
        &d.queries[..DIM],
        &SearchParams {
            k: 10,
            nprobe: 4,
            rerank: 50,
        },
    );
    assert!(matches!(err, Err(IvfError::RerankWithoutRaw)));
}

#[test]
fn metric_and_quantizer_names() {
    assert_eq!("cosine".parse::<Metric>().expect("cosine"), Metric::Cosine);
    assert!(
        "manhattan"
            .parse::<Metric>()
            .expect_err("bad")
            .to_string()
            .contains("manhattan")
    );
    assert_eq!(
        "pq16".parse::<QuantizerKind>().expect("pq16"),
        QuantizerKind::Pq { m: 16 }
    );
    assert!(QuantizerKind::parse("lsh", 0).is_err());
}

#[test]
fn dataset_files_round_trip_and_reject_garbage() {
    let dir = std::env::temp_dir().join(format!("quiver-ds-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let v: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
    let f = dir.join("a.fvecs");
    dataset::write_fvecs(&f, 4, &v).expect("write");
    let back = dataset::read_vectors(&f).expect("read");
    assert_eq!((back.dim, back.data.clone()), (4, v.clone()));
    let i = dir.join("a.ivecs");
    dataset::write_ivecs(&i, 3, &[1, 2, 3, 4, 5, 6]).expect("write");
    assert_eq!(
        dataset::read_ivecs(&i).expect("read").data,
        vec![1, 2, 3, 4, 5, 6]
    );

    // bvecs: dim header then bytes.
    let b = dir.join("a.bvecs");
    std::fs::write(&b, [2, 0, 0, 0, 7, 9, 2, 0, 0, 0, 1, 255]).expect("write");
    assert_eq!(
        dataset::read_vectors(&b).expect("bvecs").data,
        vec![7.0, 9.0, 1.0, 255.0]
    );

    // npy float32 (2, 3).
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
    let mut h = header.to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend_from_slice(&(h.len() as u16).to_le_bytes());
    npy.extend_from_slice(h.as_bytes());
    for x in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
        npy.extend_from_slice(&x.to_le_bytes());
    }
    let n = dir.join("a.npy");
    std::fs::write(&n, &npy).expect("write");
    let back = dataset::read_vectors(&n).expect("npy");
    assert_eq!((back.dim, back.len()), (3, 2));
    let pos = npy.windows(3).position(|w| w == b"<f4").expect("descr");
    npy[pos + 2] = b'8';
    std::fs::write(&n, &npy).expect("write");
    assert!(
        dataset::read_vectors(&n)
            .expect_err("f8")
            .to_string()
            .contains("float32")
    );

    // Truncated fvecs names the file.
    std::fs::write(&f, [4, 0, 0, 0, 1, 2]).expect("write");
    let err = dataset::read_vectors(&f).expect_err("truncated");
    assert!(
        err.to_string().contains("a.fvecs") && err.to_string().contains("not a multiple"),
        "{err}"
    );
    let err = dataset::read_vectors(&dir.join("missing.fvecs")).expect_err("missing");
    assert!(err.to_string().contains("missing.fvecs"), "{err}");
    assert!(dataset::read_vectors(&dir.join("x.csv")).is_err());
    std::fs::remove_dir_all(&dir).ok();
}
