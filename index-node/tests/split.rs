//! `index-node split` end to end: an SQ8 version built in two parts is split twice (the second
//! split reads files of both older versions), then served beside the original by two shards
//! and a router: every entry is served exactly once, and recall holds.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use quiver_proto::admin_client::AdminClient;
use quiver_proto::{EvaluateRequest, StatusRequest};

const NET: &str = "127.61.7";
const N: usize = 20_000;

fn ip(host: u8) -> String {
    format!("{NET}.{host}")
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn run(a: &[String]) -> String {
    run_ok(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[])
}

fn manifest(dir: &std::path::Path, v: &str) -> serde_json::Value {
    let p = dir.join(format!("store/test/idx/versions/{v}/manifest.json"));
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// The biggest list of a version and its owner.
fn biggest(m: &serde_json::Value) -> (u64, u64) {
    let sizes: Vec<u64> = serde_json::from_value(m["list_sizes"].clone()).unwrap();
    let list = (0..sizes.len()).max_by_key(|&l| sizes[l]).unwrap() as u64;
    let owner = m["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["lists"].as_array().unwrap().contains(&list.into()))
        .unwrap()["shard"]
        .as_u64()
        .unwrap();
    (list, owner)
}

fn split(storage: &str, from: &str, to: &str, list: u64, to_shard: u64) -> Vec<String> {
    let mut a = args(&[
        "split",
        "--storage",
        storage,
        "--namespace",
        "test",
        "--index",
        "idx",
    ]);
    a.extend(args(&["--from", from, "--to", to]));
    a.extend(args(&[
        "--list",
        &list.to_string(),
        "--to-shard",
        &to_shard.to_string(),
    ]));
    a
}

fn source() -> Vec<String> {
    args(&["--synthetic", &N.to_string(), "--dim", "16", "--seed", "7"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_version_serves_every_entry_once_with_the_same_recall() {
    tokio::time::timeout(Duration::from_secs(240), scenario())
        .await
        .expect("scenario timed out");
}

async fn scenario() {
    let dir = tmpdir("split");
    let storage = format!("file://{}", dir.join("store").display());
    let mut train = args(&["train"]);
    train.extend(storage_args(&storage, "v1"));
    train.extend(source());
    train.extend(args(&[
        "--nlist",
        "32",
        "--iters",
        "8",
        "--quantizer",
        "sq8",
    ]));
    run(&train);
    for part in ["0", "1"] {
        let mut build = args(&["build"]);
        build.extend(storage_args(&storage, "v1"));
        build.extend(source());
        build.extend(args(&["--shards", "2", "--parts", "2", "--part", part]));
        build.extend(args(&["--eval-queries", "50", "--eval-k", "10"]));
        run(&build);
    }
    let mut finalize = args(&["build"]);
    finalize.extend(storage_args(&storage, "v1"));
    finalize.extend(source());
    finalize.extend(args(&["--shards", "2", "--parts", "2", "--finalize"]));
    finalize.extend(args(&["--eval-queries", "50", "--eval-k", "10"]));
    run(&finalize);

    let v1 = manifest(&dir, "v1");
    let (list, owner) = biggest(&v1);
    let other = 1 - owner;
    // SQ8 keeps no vectors: the split needs the source.
    let a = split(&storage, "v1", "v2", list, other);
    let err = run_err(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("keeps no vectors"), "{err}");
    let mut with_source = a.clone();
    with_source.extend(source());
    run(&with_source);
    run(&with_source); // a retried Job
    let mut wrong = split(&storage, "v1", "v2", (list + 1) % 32, other);
    wrong.extend(source());
    let err = run_err(&wrong.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("is not a split of v1 list"), "{err}");

    let v2 = manifest(&dir, "v2");
    assert_eq!(v2["nlist"], 33);
    assert_eq!(v2["build"]["source"], format!("split of v1 list {list}"));
    let mut written: Vec<String> = std::fs::read_dir(dir.join("store/test/idx/versions/v2"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, ["centroids.qivf", "lists.qivf", "manifest.json"]);
    let sizes: Vec<u64> = serde_json::from_value(v2["list_sizes"].clone()).unwrap();
    let before: Vec<u64> = serde_json::from_value(v1["list_sizes"].clone()).unwrap();
    assert_eq!(sizes[list as usize] + sizes[32], before[list as usize]);
    assert!(sizes[list as usize] > 0 && sizes[32] > 0, "{sizes:?}");

    // Split again (the biggest list of v2): v3 reads v1's two part files, v2's halves and its own.
    let (list3, owner3) = biggest(&v2);
    let mut again = split(&storage, "v2", "v3", list3, 1 - owner3);
    again.extend(source());
    run(&again);
    let v3 = manifest(&dir, "v3");
    assert_eq!(v3["nlist"], 34);
    assert_eq!(v3["lists"].as_array().unwrap().len(), 4);

    let vfile = dir.join("versions.json");
    write_versions(&vfile, &["v1", "v3"], "v1");
    let mut shards = Vec::new();
    for shard in 0..2u8 {
        let a = serve_args(
            "shard",
            &ip(2 + shard),
            &storage,
            &vfile,
            &["--shard".into(), shard.to_string()],
        );
        shards.push(Proc::spawn(&format!("shard{shard}"), &dir, &a, &[]));
    }
    let spec = format!("0={}:{GRPC};1={}:{GRPC}", ip(2), ip(3));
    let router_ip = ip(10);
    let ra = serve_args(
        "router",
        &router_ip,
        &storage,
        &vfile,
        &["--shards".into(), spec],
    );
    let router = Proc::spawn("router", &dir, &ra, &[]);
    for (i, p) in shards.iter().enumerate() {
        wait_ready(p, &ip(2 + i as u8), Duration::from_secs(60));
    }
    wait_ready(&router, &router_ip, Duration::from_secs(60));

    // Every entry is served exactly once: the shards hold as many vectors of v3 as of v1.
    let mut held = std::collections::HashMap::<String, u64>::new();
    for i in 0..2u8 {
        let mut admin = AdminClient::connect(format!("http://{}:{GRPC}", ip(2 + i)))
            .await
            .unwrap();
        let st = admin.status(StatusRequest {}).await.unwrap().into_inner();
        for v in st.versions {
            *held.entry(v.version).or_default() += v.vectors;
        }
    }
    assert_eq!(held["v1"], v1["ntotal"].as_u64().unwrap(), "{held:?}");
    assert_eq!(held["v3"], held["v1"], "{held:?}");

    let mut radmin = AdminClient::connect(format!("http://{router_ip}:{GRPC}"))
        .await
        .unwrap();
    let mut recall = Vec::new();
    for v in ["v1", "v3"] {
        let e = radmin
            .evaluate(EvaluateRequest {
                version: v.into(),
                k: 10,
                nprobe: Some(8),
                max_queries: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(e.queries, 50, "{v}");
        recall.push(e.recall);
    }
    assert!(recall[0] > 0.7, "v1 recall {}", recall[0]);
    // Two more lists at the same nprobe cover a little less of the data; a lost or
    // mis-decoded list would cost far more.
    assert!(
        recall[1] >= recall[0] - 0.05,
        "recall v1 {} v3 {}",
        recall[0],
        recall[1]
    );
}
