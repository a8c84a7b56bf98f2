//! Hot lists, end to end: a Zipf-skewed query stream at a 4-shard index. The operator samples
//! the routers' per-list probe counters, publishes where the load falls (`status.load`: each
//! shard's share, the hottest lists, the plan moving whole lists would make), and
//! `kubectl quiver rebalance --dry-run` prints it. Then `spec.rebalance.mode: Auto` applies
//! the plan under the same load. One list takes far more than a mean shard's load, so the
//! plan splits it: a version made by one split Job (no train, no build) whose only new files
//! are its quantizer, the two halves and its manifest, swapped in with no failed query, after
//! which the hot shard's share is lower. (Moves of whole lists, the remap Job, are driven
//! the same way; the lifecycle unit tests and `index-node remap`'s own tests cover them.)
//!
//! A second scenario drives a shard that no split or move can cool: Auto gives it another
//! replica (`maxReplicasPerShard`), routers spread its queries over both, and once traffic
//! evens out the replica is given back.
//!
//! Runs on the in-process stand-in, or against another cluster with QUIVER_E2E_KUBECONFIG.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use quiver_api::VectorIndex;
use quiver_api::keys::labels;
use quiver_api::ports;
use quiver_api::v1alpha1::{IndexPhase, LoadStatus};
use quiver_e2e::testing::{TestCluster, eventually, install_crd, workspace_bin};
use serde_json::{Value, json};

mod opsupport;
use opsupport::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_traffic_is_measured_per_shard_and_list_and_a_plan_is_printed() {
    tokio::time::timeout(Duration::from_secs(420), async {
        let Setup {
            env,
            node,
            storage,
            api,
            _op,
        } = setup().await;
        let v = four_shards("hot", &storage);
        let vi: VectorIndex = serde_json::from_value(v).unwrap();
        api.create(&PostParams::default(), &vi).await.unwrap();
        let vi = wait_for(&api, "hot", 240, "v1 Ready", |vi| {
            phase(vi) == Some(IndexPhase::Ready)
        })
        .await;
        let v1 = vi.status.unwrap().active_version.unwrap();
        let root = storage.strip_prefix("file://").unwrap();
        let queries = env.dir.join("hot-queries.fvecs");
        std::fs::copy(
            Path::new(root).join(format!("{}/hot/versions/{v1}/eval.fvecs", env.ns)),
            &queries,
        )
        .unwrap();
        let target = service_address(&env, "hot").await.to_string();

        // Zipf(1.5) over the 50 evaluation queries at nprobe 1: the first query alone is
        // about 40 % of the traffic, and all of it lands on one list. Runs of 5 s until the
        // test is done.
        let stop = Arc::new(AtomicBool::new(false));
        let load = skewed_load(node.clone(), target, queries.clone(), stop.clone());

        let vi = wait_for(&api, "hot", 60, "the load measured and skewed", |vi| {
            vi.status
                .as_ref()
                .and_then(|s| s.load.as_ref())
                .is_some_and(|l| l.version == v1 && l.shards.len() == 4 && l.imbalance >= 1.3)
        })
        .await;
        let l = vi.status.unwrap().load.unwrap();
        eprintln!("status.load: {}", serde_json::to_string(&l).unwrap());
        let total: f64 = l.shards.iter().map(|s| s.share).sum();
        assert!((total - 1.0).abs() <= 0.03, "shares sum to {total}: {l:?}");
        assert!(l.shards.iter().all(|s| s.replicas == 1), "{l:?}");
        let hot = l
            .shards
            .iter()
            .max_by(|a, b| a.share.total_cmp(&b.share))
            .unwrap();
        // The figures agree with each other: the imbalance is the hot shard's share over the
        // mean share (one replica each), and a shard's share holds its lists'.
        assert!(
            (l.imbalance - hot.share * 4.0).abs() <= 0.06,
            "imbalance {} vs hot share {}",
            l.imbalance,
            hot.share
        );
        assert!(
            !l.hottest_lists.is_empty() && l.hottest_lists.len() <= 5,
            "{l:?}"
        );
        for h in &l.hottest_lists {
            let owner = l.shards.iter().find(|s| s.shard == h.shard).unwrap();
            assert!(owner.share + 0.01 >= h.share, "{h:?} on {owner:?}");
            assert!(h.entries > 0, "{h:?}");
        }
        let plan = l.plan.clone().expect("a skewed map has a plan");
        assert!(
            plan.split_list.is_some() || plan.imbalance_after < l.imbalance,
            "{plan:?}"
        );
        assert_eq!(
            plan.bytes,
            plan.moves.iter().map(|m| m.bytes).sum::<u64>(),
            "{plan:?}"
        );

        // The plugin: the hot shard and why, and the plan; applying is refused for now.
        let kq = workspace_bin("kubectl-quiver").unwrap();
        let run = |args: &[&str]| {
            let out = Command::new(&kq)
                .args(args)
                .arg("--kubeconfig")
                .arg(env.kubeconfig())
                .args(["-n", &env.ns])
                .env_remove("KUBECONFIG")
                .output()
                .unwrap();
            let text = (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            );
            eprintln!(
                "$ kubectl quiver {} → {:?}\n{}{}",
                args.join(" "),
                text.0,
                text.1,
                text.2
            );
            text
        };
        let (code, out, _) = run(&["rebalance", "hot", "--dry-run"]);
        assert_eq!(code, Some(0));
        assert!(
            out.starts_with(&format!("Load of {v1} (measured ")),
            "{out}"
        );
        assert!(out.contains("SHARD   SHARE   REPLICAS"), "{out}");
        assert!(out.contains("\nPlan: "), "{out}");
        let (code, out, _) = run(&["rebalance", "hot", "--dry-run", "-o", "json"]);
        assert_eq!(code, Some(0));
        let doc: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["version"], json!(v1));
        assert_eq!(doc["shards"].as_array().map(Vec::len), Some(4));
        // Off: applying is refused, naming the field.
        api.patch(
            "hot",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rebalance": {"mode": "Off"}}})),
        )
        .await
        .unwrap();
        let (code, _, err) = run(&["rebalance", "hot"]);
        assert_eq!(code, Some(1));
        assert!(err.contains("spec.rebalance.mode is Off"), "{err}");
        let (code, out, _) = run(&["status", "hot"]);
        assert_eq!(code, Some(0));
        assert!(out.contains("Load:      imbalance "), "{out}");

        // Auto: the imbalance has been above 1.3 all along; after 5 s more the plan applies.
        api.patch(
            "hot",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rebalance":
                {"mode": "Auto", "threshold": 1.3, "windowSeconds": 5}}})),
        )
        .await
        .unwrap();
        let vi = wait_for(&api, "hot", 150, "a rebalance version active", |vi| {
            vi.status.as_ref().is_some_and(|s| {
                s.versions.iter().any(|v| {
                    v.trigger.as_deref() == Some("rebalance:auto")
                        && s.active_version.as_deref() == Some(v.name.as_str())
                })
            })
        })
        .await;
        // One rebalance is what this test follows.
        api.patch(
            "hot",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rebalance": {"mode": "Manual"}}})),
        )
        .await
        .unwrap();
        let st = vi.status.unwrap();
        let v2 = st.active_version.clone().unwrap();
        let v2s = st.version(&v2).unwrap();
        assert_eq!(v2s.rebalanced_from.as_deref(), Some(v1.as_str()));
        // One list takes far more than a mean shard's load: the plan named it for a split,
        // and a split comes before any move.
        assert!(plan.split_list.is_some(), "{plan:?}");
        let split = v2s.split.clone().expect("a split version");
        assert!(v2s.moves.is_empty(), "{v2s:?}");
        assert_eq!(Some(split.list), plan.split_list, "{v2s:?}");
        assert_ne!(
            split.to, split.from,
            "the new half goes to another shard: {split:?}"
        );
        assert!(
            st.versions
                .iter()
                .filter(|v| v.trigger.as_deref() == Some("rebalance:auto"))
                .count()
                == 1,
            "{:?}",
            st.versions
        );
        // Made by one split Job: no train or build Job; it wrote its quantizer (one more
        // centroid), the two halves and its manifest, nothing else.
        let jobs: Api<Job> = env.api();
        let names: Vec<String> = jobs
            .list(&ListParams::default().labels(&format!("{}={v2}", labels::VERSION)))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|j| j.metadata.name)
            .collect();
        assert_eq!(names, [format!("hot-{v2}-split")]);
        let dir = Path::new(root).join(format!("{}/hot/versions/{v2}", env.ns));
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            ["centroids.qivf", "lists.qivf", "manifest.json"],
            "{}",
            dir.display()
        );
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        let nlist = vi.spec.index.nlist as u64;
        assert_eq!(manifest["nlist"], json!(nlist + 1));
        // Every file of v1 is read for all lists but the split one.
        let inherited: Vec<&Value> = manifest["lists"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["quantizer"].is_string())
            .collect();
        assert!(!inherited.is_empty(), "{manifest}");
        assert!(
            inherited.iter().all(|f| f["skip"] == json!([split.list])
                && f["file"]["path"].as_str().unwrap().contains(&v1)),
            "{manifest}"
        );

        // Measured again on the new map under the same traffic: the hot shard cooled.
        let vi = wait_for(
            &api,
            "hot",
            60,
            "the load of the rebalanced version",
            |vi| {
                vi.status
                    .as_ref()
                    .and_then(|s| s.load.as_ref())
                    .is_some_and(|l| l.version == v2)
            },
        )
        .await;
        let after = vi.status.unwrap().load.unwrap();
        eprintln!(
            "status.load after: {}",
            serde_json::to_string(&after).unwrap()
        );
        let max_share = |l: &quiver_api::v1alpha1::LoadStatus| {
            l.shards.iter().map(|s| s.share).fold(0.0, f64::max)
        };
        assert!(
            max_share(&after) < max_share(&l),
            "hot shard share {} before, {} after",
            max_share(&l),
            max_share(&after)
        );

        stop.store(true, Ordering::SeqCst);
        let runs = load.join().unwrap();
        let (failed, answered) = outcome(&runs);
        eprintln!(
            "{} loadtest runs: {failed} failed, answers {answered:?}",
            runs.len()
        );
        assert_eq!(failed, 0, "{runs:?}");
        assert!(
            answered.keys().all(|k| *k == v1 || *k == v2),
            "{answered:?}"
        );
        assert!(answered.get(&v2).is_some_and(|n| *n > 0), "{answered:?}");
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}

/// A local cluster (or QUIVER_E2E_KUBECONFIG's) with the CRD, a file store and an operator that
/// samples load every 2 s (30 s by default), so that a rate is measured within a test.
struct Setup {
    env: TestCluster,
    node: PathBuf,
    storage: String,
    api: Api<VectorIndex>,
    _op: Operator,
}

async fn setup() -> Setup {
    let (operator, node) = bins();
    let env = TestCluster::start(HashMap::from([("index-node".to_string(), node.clone())]))
        .await
        .unwrap();
    install_crd(&env.client).await.unwrap();
    let store = env.dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let storage = format!("file://{}", store.display());
    let _op = Operator::start_with(
        &env,
        &operator,
        "quiver-operator",
        &["--load-sample-secs", "2"],
    )
    .await;
    let api = env.api();
    Setup {
        env,
        node,
        storage,
        api,
        _op,
    }
}

/// The test index `name` (4000 synthetic vectors) on 4 shards of one replica, one router.
fn four_shards(name: &str, storage: &str) -> Value {
    let mut v = serde_json::to_value(index(
        name,
        storage,
        json!({"synthetic": {"count": 4000, "seed": 11}}),
    ))
    .unwrap();
    v["spec"]["shards"] = json!(4);
    v["spec"]["replicas"] = json!(1);
    v["spec"]["router"] = json!({"replicas": 1});
    v
}

/// `index-node loadtest` runs of 5 s (Zipf 1.5, nprobe 1, concurrency 4) until `stop`: their
/// JSON summaries.
fn skewed_load(
    node: PathBuf,
    target: String,
    queries: PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Value>> {
    traffic(
        node,
        target,
        queries,
        stop,
        &["--zipf", "1.5", "--nprobe", "1"],
    )
}

/// `index-node loadtest` runs of 5 s at concurrency 4 with `extra` flags until `stop`.
fn traffic(
    node: PathBuf,
    target: String,
    queries: PathBuf,
    stop: Arc<AtomicBool>,
    extra: &'static [&'static str],
) -> std::thread::JoinHandle<Vec<Value>> {
    std::thread::spawn(move || {
        let mut runs = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            runs.push(loadtest_with(&node, &target, &queries, 5.0, 4, extra));
        }
        runs
    })
}

/// Failed queries of loadtest runs, and answers per version.
fn outcome(runs: &[Value]) -> (u64, BTreeMap<String, u64>) {
    let failed: u64 = runs.iter().map(|r| r["failed"].as_u64().unwrap()).sum();
    let mut answered: BTreeMap<String, u64> = BTreeMap::new();
    for r in runs {
        for (k, v) in r["versions"].as_object().into_iter().flatten() {
            *answered.entry(k.clone()).or_default() += v["answers"].as_u64().unwrap_or(0);
        }
    }
    (failed, answered)
}

/// Queries a shard pod scanned for (`quiver_query_duration_seconds_count`), read from its
/// metrics port like the observability suite does.
async fn answers_of(pod: &Pod) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
    let mut s = tokio::net::TcpStream::connect((ip.as_str(), ports::METRICS))
        .await
        .unwrap();
    let req = format!("GET {} HTTP/1.0\r\nHost: {ip}\r\n\r\n", ports::METRICS_PATH);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body.lines()
        .filter(|l| l.starts_with("quiver_query_duration_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The Ready pods of one shard.
async fn shard_pods(env: &TestCluster, index: &str, shard: u32) -> Vec<Pod> {
    let pods: Api<Pod> = env.api();
    let lp = ListParams::default().labels(&format!(
        "{}={index},{}={shard}",
        labels::INDEX,
        labels::SHARD
    ));
    pods.list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect()
}

/// A hot shard that no split or move can cool gets a second replica (Auto,
/// `maxReplicasPerShard: 2`); routers spread its queries over both; when the traffic evens
/// out it gives the replica back. No query fails throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_shard_gets_a_replica_and_gives_it_back_when_it_cools() {
    tokio::time::timeout(Duration::from_secs(420), async {
        let Setup {
            env,
            node,
            storage,
            api,
            _op,
        } = setup().await;
        let mut v = four_shards("warm", &storage);
        // Lists of about 16 entries: too small to split, and the hottest one alone takes
        // about 40 % of the load, so no map of whole lists brings 4 shards near 25 % each.
        v["spec"]["index"]["nlist"] = json!(256);
        v["spec"]["rebalance"] = json!({"mode": "Auto", "threshold": 1.3, "windowSeconds": 5,
                                        "maxReplicasPerShard": 2});
        let vi: VectorIndex = serde_json::from_value(v).unwrap();
        api.create(&PostParams::default(), &vi).await.unwrap();
        let vi = wait_for(&api, "warm", 240, "v1 Ready", |vi| {
            phase(vi) == Some(IndexPhase::Ready)
        })
        .await;
        let v1 = vi.status.unwrap().active_version.unwrap();
        let root = storage.strip_prefix("file://").unwrap();
        let queries = env.dir.join("warm-queries.fvecs");
        std::fs::copy(
            Path::new(root).join(format!("{}/warm/versions/{v1}/eval.fvecs", env.ns)),
            &queries,
        )
        .unwrap();
        let target = service_address(&env, "warm").await.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let skewed = skewed_load(node.clone(), target.clone(), queries.clone(), stop.clone());

        // Splits and moves first, if the plan has any; then, still hot, a replica.
        let vi = wait_for(
            &api,
            "warm",
            240,
            "a hot shard with a second replica",
            |vi| vi.status.as_ref().is_some_and(|s| !s.hot_shards.is_empty()),
        )
        .await;
        let st = vi.status.clone().unwrap();
        let hot = st.hot_shards[0].clone();
        assert_eq!(hot.replicas, 2, "{:?}", st.hot_shards);
        let before = st.load.clone().expect("load");
        eprintln!("grew on: {}", serde_json::to_string(&before).unwrap());
        let share = |l: &LoadStatus, s: u32| {
            l.shards
                .iter()
                .find(|x| x.shard == s)
                .map_or(0.0, |x| x.share / f64::from(x.replicas.max(1)))
        };
        let per_replica_before = share(&before, hot.shard);
        let sts: Api<StatefulSet> = env.api();
        let name = format!("warm-shard-{}", hot.shard);
        eventually(60, "the hot shard's second pod Ready", || async {
            let s = sts.get(&name).await.ok()?;
            (s.spec.replicas == Some(2) && shard_pods(&env, "warm", hot.shard).await.len() == 2)
                .then_some(())
        })
        .await;
        // Measured with both replicas: each carries less than the one did.
        let vi = wait_for(&api, "warm", 60, "the load over two replicas", |vi| {
            vi.status
                .as_ref()
                .and_then(|s| s.load.as_ref())
                .is_some_and(|l| {
                    l.shards
                        .iter()
                        .any(|x| x.shard == hot.shard && x.replicas == 2)
                })
        })
        .await;
        let after = vi.status.unwrap().load.unwrap();
        eprintln!(
            "over two replicas: {}",
            serde_json::to_string(&after).unwrap()
        );
        assert!(
            share(&after, hot.shard) < per_replica_before,
            "load per replica of shard {} was {per_replica_before}, now {}",
            hot.shard,
            share(&after, hot.shard)
        );
        // Routers spread the shard's queries over both replicas.
        let pods = shard_pods(&env, "warm", hot.shard).await;
        let first: Vec<u64> = futures::future::join_all(pods.iter().map(answers_of)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let second: Vec<u64> = futures::future::join_all(pods.iter().map(answers_of)).await;
        for (i, (a, b)) in first.iter().zip(&second).enumerate() {
            assert!(
                b > a,
                "replica {} of shard {} answered nothing new: {first:?} -> {second:?}",
                pods[i].name_any(),
                hot.shard
            );
        }

        // Even traffic: the shard cools and gives the replica back, under load.
        stop.store(true, Ordering::SeqCst);
        let mut runs = skewed.join().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let even = traffic(
            node.clone(),
            target,
            queries,
            stop.clone(),
            &["--nprobe", "1"],
        );
        wait_for(&api, "warm", 120, "the replica given back", |vi| {
            vi.status.as_ref().is_some_and(|s| s.hot_shards.is_empty())
        })
        .await;
        eventually(60, "the hot shard back to one pod", || async {
            let s = sts.get(&name).await.ok()?;
            (s.spec.replicas == Some(1) && shard_pods(&env, "warm", hot.shard).await.len() == 1)
                .then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::SeqCst);
        runs.extend(even.join().unwrap());
        let (failed, answered) = outcome(&runs);
        eprintln!(
            "{} loadtest runs: {failed} failed, answers {answered:?}",
            runs.len()
        );
        assert_eq!(failed, 0, "{runs:?}");
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}
