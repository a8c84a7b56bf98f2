//! A corrupt list file fails only its version; build and train refuse bad input clearly.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use quiver_proto::admin_client::AdminClient;
use quiver_proto::shard_client::ShardClient;
use quiver_proto::{ShardSearchRequest, StatusRequest, VersionState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_list_file_fails_that_version_only() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tmpdir("corrupt");
        let storage = format!("file://{}", dir.join("store").display());
        build_version(&storage, "good", 4_000, 1, 1, 0, &[]);
        build_version(&storage, "bad", 4_000, 1, 1, 0, &[]);
        build_version(&storage, "short", 4_000, 1, 1, 0, &[]);
        // Flip one byte inside the list data (past header and directory), size unchanged.
        let lists = dir.join("store/test/idx/versions/bad/lists.qivf");
        let mut bytes = std::fs::read(&lists).unwrap();
        let at = bytes.len() - 100;
        bytes[at] ^= 0xFF;
        std::fs::write(&lists, &bytes).unwrap();
        // Truncate another version's list file.
        let short = dir.join("store/test/idx/versions/short/lists.qivf");
        let b = std::fs::read(&short).unwrap();
        std::fs::write(&short, &b[..b.len() / 2]).unwrap();

        let vfile = dir.join("versions.json");
        // "late" is not built yet: it fails, then loads on a retry once it exists.
        write_versions(&vfile, &["good", "bad", "short", "late"], "good");
        let host = "127.61.2.2";
        let a = serve_args(
            "shard",
            host,
            &storage,
            &vfile,
            &["--shard".into(), "0".into()],
        );
        let p = Proc::spawn("shard", &dir, &a, &[]);
        wait_ready(&p, host, Duration::from_secs(60));
        let mut admin = AdminClient::connect(format!("http://{host}:{GRPC}"))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let st = loop {
            let st = admin.status(StatusRequest {}).await.unwrap().into_inner();
            if st
                .versions
                .iter()
                .all(|v| v.state != VersionState::Loading as i32)
            {
                break st;
            }
            assert!(Instant::now() < deadline, "still loading: {st:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let get = |n: &str| st.versions.iter().find(|v| v.version == n).unwrap().clone();
        assert_eq!(get("good").state, VersionState::Active as i32, "{st:?}");
        let bad = get("bad");
        assert_eq!(bad.state, VersionState::Failed as i32, "{st:?}");
        assert!(bad.reason.contains("corrupt"), "reason: {}", bad.reason);
        let short = get("short");
        assert_eq!(short.state, VersionState::Failed as i32, "{st:?}");
        assert!(
            short.reason.contains("truncated"),
            "reason: {}",
            short.reason
        );

        // The good version keeps serving; the failed one is refused, never substituted.
        let mut sc = ShardClient::connect(format!("http://{host}:{GRPC}"))
            .await
            .unwrap();
        let req = |v: &str| ShardSearchRequest {
            version: v.into(),
            vector: vec![0.1; 16],
            k: 5,
            lists: (0..32).collect(),
        };
        let r = sc.shard_search(req("good")).await.unwrap().into_inner();
        assert_eq!((r.version.as_str(), r.ids.len()), ("good", 5));
        let e = sc
            .shard_search(req("bad"))
            .await
            .expect_err("failed version answered");
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(e.message().contains("failed to load"), "{}", e.message());

        // A version that failed because it did not exist yet is retried with backoff.
        let late = get("late");
        assert_eq!(late.state, VersionState::Failed as i32, "{st:?}");
        assert!(
            late.reason.contains("no manifest"),
            "reason: {}",
            late.reason
        );
        build_version(&storage, "late", 4_000, 1, 1, 0, &[]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = admin.status(StatusRequest {}).await.unwrap().into_inner();
            let late = st.versions.iter().find(|v| v.version == "late").unwrap();
            if late.state == VersionState::Warm as i32 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "late version never loaded: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("timed out");
}

#[test]
fn train_and_build_refuse_bad_input() {
    let dir = tmpdir("badinput");
    let storage = format!("file://{}", dir.join("store").display());
    let s = storage.as_str();
    // Missing source file.
    let e = run_err(&[
        "train",
        "--storage",
        s,
        "--index",
        "i",
        "--version",
        "v",
        "--source",
        "/nonexistent/x.fvecs",
    ]);
    assert!(e.contains("x.fvecs"), "{e}");
    // Not a vector file.
    let junk = dir.join("junk.fvecs");
    std::fs::write(&junk, b"abc").unwrap();
    let e = run_err(&[
        "train",
        "--storage",
        s,
        "--index",
        "i",
        "--version",
        "v",
        "--source",
        junk.to_str().unwrap(),
    ]);
    assert!(e.contains("truncated"), "{e}");
    // Bad names and parameters.
    let e = run_err(&[
        "train",
        "--storage",
        s,
        "--index",
        "i",
        "--version",
        "../v",
        "--synthetic",
        "100",
    ]);
    assert!(e.contains("--version"), "{e}");
    let e = run_err(&[
        "train",
        "--storage",
        s,
        "--index",
        "i",
        "--version",
        "v",
        "--synthetic",
        "10",
        "--nlist",
        "64",
    ]);
    assert!(e.contains("--nlist"), "{e}");
    let e = run_err(&[
        "train",
        "--storage",
        s,
        "--index",
        "i",
        "--version",
        "v",
        "--synthetic",
        "1000",
        "--metric",
        "hamming",
    ]);
    assert!(e.contains("--metric"), "{e}");
    // Build before train.
    let e = run_err(&[
        "build",
        "--storage",
        s,
        "--index",
        "i",
        "--version",
        "v",
        "--synthetic",
        "1000",
    ]);
    assert!(e.contains("not trained"), "{e}");
    // A built version is immutable.
    build_version(s, "done", 2_000, 1, 1, 0, &[]);
    let e = run_err(&[
        "build",
        "--storage",
        s,
        "--namespace",
        "test",
        "--index",
        "idx",
        "--version",
        "done",
        "--synthetic",
        "2000",
        "--dim",
        "16",
    ]);
    assert!(e.contains("immutable"), "{e}");
    // Finalize before all parts finished.
    let mut t: Vec<String> = vec!["train".into()];
    t.extend(storage_args(s, "p"));
    t.extend(["--synthetic", "2000", "--dim", "16", "--nlist", "8"].map(String::from));
    run_ok(&t.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let mut b: Vec<String> = vec!["build".into()];
    b.extend(storage_args(s, "p"));
    b.extend(
        [
            "--synthetic",
            "2000",
            "--dim",
            "16",
            "--parts",
            "2",
            "--finalize",
        ]
        .map(String::from),
    );
    let e = run_err(&b.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(e.contains("part 0 of 2 has not finished"), "{e}");
}

/// A source URI ending in `/` reads every vector file under it; .npy works too.
#[test]
fn build_from_vector_files_under_a_prefix() {
    let dir = tmpdir("files");
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let dim = 8usize;
    let row = |i: usize| -> Vec<f32> {
        (0..dim)
            .map(|d| ((i * 31 + d * 7) % 97) as f32 / 97.0 + (i % 5) as f32)
            .collect()
    };
    // a.fvecs: rows 0..600; b.npy: rows 600..1000.
    let mut fv = Vec::new();
    for i in 0..600 {
        fv.extend_from_slice(&(dim as i32).to_le_bytes());
        for x in row(i) {
            fv.extend_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(src.join("a.fvecs"), fv).unwrap();
    let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': (400, {dim}), }}");
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let pad = 64 - (10 + header.len() + 1) % 64;
    let h = format!("{header}{}\n", " ".repeat(pad));
    npy.extend_from_slice(&(h.len() as u16).to_le_bytes());
    npy.extend_from_slice(h.as_bytes());
    for i in 600..1000 {
        for x in row(i) {
            npy.extend_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(src.join("b.npy"), npy).unwrap();
    std::fs::write(src.join("README.txt"), b"ignored").unwrap();

    let storage = format!("file://{}", dir.join("store").display());
    let source = format!("file://{}/", src.display());
    let mut t: Vec<String> = vec!["train".into()];
    t.extend(storage_args(&storage, "v1"));
    t.extend(["--source", &source, "--nlist", "8"].map(String::from));
    run_ok(&t.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let mut b: Vec<String> = vec!["build".into()];
    b.extend(storage_args(&storage, "v1"));
    b.extend(
        [
            "--source",
            &source,
            "--shards",
            "3",
            "--eval-queries",
            "20",
            "--eval-k",
            "5",
        ]
        .map(String::from),
    );
    run_ok(&b.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("store/test/idx/versions/v1/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["ntotal"], 980, "{m}");
    assert_eq!(m["dim"], 8);
    assert_eq!(m["shards"].as_array().unwrap().len(), 3);
    assert_eq!(m["eval"]["count"], 20);
}
