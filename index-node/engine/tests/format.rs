//! On-disk format: round trips, per-list loading, corruption and version checks.

mod common;

use common::*;
use quiver_ivf::{IvfError, Metric, QuantizerKind, SearchParams, format};

fn same_results(a: &quiver_ivf::IvfIndex, b: &quiver_ivf::IvfIndex, d: &Data) {
    let sp = SearchParams::new(K, 8);
    assert_eq!(
        a.search_batch(&d.queries, &sp).expect("a"),
        b.search_batch(&d.queries, &sp).expect("b")
    );
}

#[test]
fn round_trip_every_quantizer_and_metric() {
    let d = data(21);
    for q in [
        QuantizerKind::Flat,
        QuantizerKind::Sq8,
        QuantizerKind::Pq { m: 8 },
    ] {
        for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
            let index = build(&d, metric, q, matches!(q, QuantizerKind::Pq { .. }));
            let bytes = format::to_bytes(&index);
            let back = format::from_bytes(&bytes, "mem").expect("read back");
            assert_eq!(back.params(), index.params());
            assert_eq!(back.fingerprint(), index.fingerprint());
            assert_eq!(back.ntotal(), index.ntotal());
            same_results(&index, &back, &d);
        }
    }
}

#[test]
fn save_and_load_file() {
    let d = data(22);
    let index = build(&d, Metric::L2, QuantizerKind::Sq8, false);
    let dir = std::env::temp_dir().join(format!("quiver-ivf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("index.qivf");
    format::save(&index, &path).expect("save");
    let back = format::load(&path).expect("load");
    same_results(&index, &back, &d);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn lists_load_one_by_one_from_byte_ranges() {
    let d = data(23);
    let index = build(&d, Metric::L2, QuantizerKind::Pq { m: 8 }, false);
    let mut qbytes = Vec::new();
    format::write_quantizer(&index, &mut qbytes).expect("write quantizer");
    let mut lbytes = Vec::new();
    format::write_lists(&index, &mut lbytes).expect("write lists");

    let mut shard = format::read_quantizer(&qbytes, "centroids.qivf").expect("quantizer");
    let prefix = format::directory_len(&lbytes[..format::LISTS_HEADER], "lists.qivf").expect("len");
    let dir = format::read_list_directory(&lbytes[..prefix as usize], "lists.qivf").expect("dir");
    let mine: Vec<u32> = (0..64).filter(|l| l % 2 == 0).collect();
    for &l in &mine {
        let e = dir.entry(l).expect("entry");
        let blob = &lbytes[e.offset as usize..(e.offset + e.len) as usize];
        let list = format::decode_list(&shard, &dir, l, blob, "lists.qivf").expect("decode");
        assert_eq!(list.len() as u64, e.count);
        shard.set_list(l, list).expect("set");
    }
    for q in d.queries.chunks_exact(DIM).take(10) {
        let (a, _) = index.search_lists(q, K, &mine, 0).expect("full");
        let (b, _) = shard.search_lists(q, K, &mine, 0).expect("shard");
        assert_eq!(a, b);
    }
}

fn expect_format_error(res: Result<quiver_ivf::IvfIndex, IvfError>, needle: &str) {
    match res {
        Err(IvfError::Format { file, reason }) => {
            assert_eq!(file, "idx.qivf");
            assert!(
                reason.contains(needle),
                "reason {reason:?} lacks {needle:?}"
            );
        }
        Err(other) => panic!("expected a format error containing {needle:?}, got {other}"),
        Ok(_) => panic!("corrupt input loaded without error ({needle})"),
    }
}

#[test]
fn corruption_is_detected_not_loaded() {
    let d = data(24);
    let index = build(&d, Metric::L2, QuantizerKind::Flat, false);
    let good = format::to_bytes(&index);
    // A flipped bit anywhere past the frame must be caught by a checksum or a bound.
    for pos in [40, 100, good.len() / 3, good.len() / 2, good.len() - 5] {
        let mut bad = good.clone();
        bad[pos] ^= 0x10;
        let res = format::from_bytes(&bad, "idx.qivf");
        assert!(
            matches!(res, Err(IvfError::Format { .. })),
            "flip at {pos} not detected"
        );
    }
    expect_format_error(
        format::from_bytes(&good[..good.len() - 7], "idx.qivf"),
        "truncated",
    );
    expect_format_error(format::from_bytes(&good[..5], "idx.qivf"), "truncated");
    expect_format_error(
        format::from_bytes(b"NOPE-not-an-index", "idx.qivf"),
        "bad magic",
    );
}

#[test]
fn unknown_versions_and_kinds_are_refused() {
    let d = data(25);
    let index = build(&d, Metric::L2, QuantizerKind::Flat, false);
    let good = format::to_bytes(&index);
    let mut future = good.clone();
    future[4] = 2; // major 2
    expect_format_error(
        format::from_bytes(&future, "idx.qivf"),
        "unsupported format version 2.0",
    );
    let mut minor = good.clone();
    minor[6] = 9; // minor 9
    expect_format_error(
        format::from_bytes(&minor, "idx.qivf"),
        "unsupported format version 1.9",
    );
    let mut q = Vec::new();
    format::write_quantizer(&index, &mut q).expect("write");
    expect_format_error(format::from_bytes(&q, "idx.qivf"), "expected a bundle file");
}

#[test]
fn lists_of_another_quantizer_are_refused() {
    let d = data(26);
    let a = build(&d, Metric::L2, QuantizerKind::Sq8, false);
    let mut p = a.params().clone();
    p.kmeans.seed += 1;
    let b = quiver_ivf::IvfIndex::train(p, &d.base).expect("train b");
    let mut lbytes = Vec::new();
    format::write_lists(&a, &mut lbytes).expect("write");
    let dir = format::read_list_directory(&lbytes, "lists.qivf").expect("dir");
    let e = dir.entry(0).expect("entry");
    let blob = &lbytes[e.offset as usize..(e.offset + e.len) as usize];
    let err = format::decode_list(&b, &dir, 0, blob, "lists.qivf").expect_err("mismatch");
    assert!(
        err.to_string().contains("lists were built for quantizer"),
        "{err}"
    );
    let mut corrupt = blob.to_vec();
    corrupt[3] ^= 1;
    let err = format::decode_list(&a, &dir, 0, &corrupt, "lists.qivf").expect_err("corrupt");
    assert!(
        err.to_string().contains("list 0: checksum mismatch"),
        "{err}"
    );
}
