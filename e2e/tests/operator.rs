//! The operator end to end: the real `quiver-operator` and `index-node` binaries, the
//! operator as a process with the test cluster's kubeconfig, every node and Job as a pod of
//! the process kubelet. A `VectorIndex` is applied and the test watches what a user would:
//! the status, the Jobs, the Service answering queries.
//!
//! Runs on the in-process stand-in, or against another cluster with QUIVER_E2E_KUBECONFIG.
//! Needs both binaries built in this target directory (`cargo test --workspace` builds them;
//! alone: `cargo build -p quiver-operator -p index-node` first).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use quiver_api::keys::labels;
use quiver_api::v1alpha1::{IndexPhase, VersionPhase};
use quiver_api::{VectorIndex, ports};
use quiver_e2e::testing::{TestCluster, eventually, install_crd, workspace_bin};
use quiver_proto::SearchRequest;
use quiver_proto::query_client::QueryClient;
use serde_json::{Value, json};

fn bins() -> (PathBuf, PathBuf) {
    (
        workspace_bin("quiver-operator").unwrap(),
        workspace_bin("index-node").unwrap(),
    )
}

struct Operator(Child);

impl Operator {
    fn start(env: &TestCluster, bin: &PathBuf) -> Self {
        let log = std::fs::File::create(env.dir.join("operator.log")).unwrap();
        let child = Command::new(bin)
            .args(["--namespace", &env.ns, "--node-image", "index-node"])
            .args(["--http", "127.0.0.1:0"])
            .env("KUBECONFIG", env.kubeconfig())
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Operator(child)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start() -> (TestCluster, Operator, String) {
    let (operator, node) = bins();
    let images = HashMap::from([("index-node".to_string(), node)]);
    let env = TestCluster::start(images).await.unwrap();
    install_crd(&env.client).await.unwrap();
    let store = env.dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let op = Operator::start(&env, &operator);
    (env, op, format!("file://{}", store.display()))
}

fn index(name: &str, storage: &str, source: Value) -> VectorIndex {
    serde_json::from_value(json!({
        "apiVersion": "quiver.dev/v1alpha1", "kind": "VectorIndex", "metadata": {"name": name},
        "spec": {"dimension": 16, "metric": "l2",
            "index": {"nlist": 32, "quantizer": {"kind": "flat"}, "nprobe": 8},
            "source": source,
            "storage": {"uri": storage},
            "shards": 2, "replicas": 2, "router": {"replicas": 2},
            "build": {"parts": 2},
            "rollout": {"evalQueries": 50, "evalK": 10, "minRecall": 0.8}}
    }))
    .unwrap()
}

/// Waits for `pred` on the index's status, printing each phase change with its time.
async fn wait_for(
    api: &Api<VectorIndex>,
    name: &str,
    secs: u64,
    what: &str,
    pred: impl Fn(&VectorIndex) -> bool,
) -> VectorIndex {
    let t0 = Instant::now();
    let mut last = String::new();
    loop {
        if let Ok(Some(vi)) = api.get_opt(name).await {
            let st = vi.status.clone().unwrap_or_default();
            let now = format!(
                "{:?} {}",
                st.phase,
                st.versions
                    .first()
                    .map(|v| format!(
                        "{} {:?} {}",
                        v.name,
                        v.phase,
                        v.reason.clone().unwrap_or_default()
                    ))
                    .unwrap_or_default()
            );
            if last != now {
                eprintln!("[{:6.1}s] {name}: {now}", t0.elapsed().as_secs_f64());
                last = now;
            }
            if pred(&vi) {
                return vi;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn phase(vi: &VectorIndex) -> Option<IndexPhase> {
    vi.status.as_ref()?.phase
}

fn condition<'a>(
    vi: &'a VectorIndex,
    ty: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    vi.status.as_ref()?.condition(ty)
}

async fn service_address(env: &TestCluster, name: &str) -> SocketAddr {
    eventually(30, "the index Service's address", || async {
        let addrs = quiver_e2e::proxy::service_addresses(&env.client, &env.dir, &env.ns, name)
            .await
            .ok()?;
        addrs
            .into_iter()
            .find(|(n, _)| n == ports::QUERY_NAME)
            .map(|(_, a)| a)
    })
    .await
}

/// Reads the evaluation queries of a version (fvecs) from the file store.
fn eval_queries(store: &str, ns: &str, index: &str, version: &str) -> Vec<Vec<f32>> {
    let root = store.strip_prefix("file://").unwrap();
    let path = format!("{root}/{ns}/{index}/versions/{version}/eval.fvecs");
    let bytes = std::fs::read(&path).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let d = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 4;
        let v = bytes[at..at + 4 * d]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        at += 4 * d;
        out.push(v);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_gives_a_ready_index_that_answers_through_its_service_and_scales() {
    tokio::time::timeout(Duration::from_secs(420), async {
        let (env, op, storage) = start().await;
        let api: Api<VectorIndex> = env.api();
        let name = "docs";
        api.create(
            &PostParams::default(),
            &index(
                name,
                &storage,
                json!({"synthetic": {"count": 20000, "seed": 7}}),
            ),
        )
        .await
        .unwrap();

        let vi = wait_for(&api, name, 300, "the index Ready", |vi| {
            phase(vi) == Some(IndexPhase::Ready)
        })
        .await;
        let st = vi.status.clone().unwrap();
        let active = st.active_version.clone().unwrap();
        assert_eq!(st.versions.len(), 1, "{st:?}");
        assert_eq!(st.versions[0].name, active);
        assert_eq!(st.versions[0].phase, VersionPhase::Active);
        assert_eq!(st.versions[0].trigger.as_deref(), Some("create"));
        assert_eq!(
            st.versions[0].vectors,
            Some(20000 - 50),
            "held-out eval rows are not indexed"
        );
        let recall = st.recall.unwrap();
        assert!(recall >= 0.8, "gate recall {recall}");
        assert_eq!(st.observed_generation, vi.metadata.generation);
        assert_eq!(condition(&vi, "Ready").unwrap().status, "True");
        assert_eq!(condition(&vi, "Degraded").unwrap().status, "False");
        assert_eq!(st.shards.unwrap().ready, 4);
        assert_eq!(st.routers.unwrap().ready, 2);

        // Exactly one train, one build and one finalize Job made this version.
        let jobs: Api<Job> = env.api();
        let mut names: Vec<String> = jobs
            .list(&ListParams::default().labels(&format!("{}={name}", labels::INDEX)))
            .await
            .unwrap()
            .items
            .iter()
            .map(|j| j.name_any())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                format!("{name}-{active}-build"),
                format!("{name}-{active}-finalize"),
                format!("{name}-{active}-train"),
            ]
        );

        // Queries through the Service the clients use: every answer from the active version.
        let addr = service_address(&env, name).await;
        let mut client = QueryClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let queries = eval_queries(&storage, &env.ns, name, &active);
        assert_eq!(queries.len(), 50);
        for q in &queries {
            let r = client
                .search(SearchRequest {
                    vector: q.clone(),
                    k: 10,
                    ..SearchRequest::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.version, active);
            assert_eq!(r.ids.len(), 10);
        }

        // Scaling changes the pods, not the version.
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
        let vi = wait_for(&api, name, 120, "one replica per shard", |vi| {
            let st = vi.status.clone().unwrap_or_default();
            st.shards.is_some_and(|s| s.desired == 2 && s.ready == 2)
                && phase(vi) == Some(IndexPhase::Ready)
        })
        .await;
        let st = vi.status.unwrap();
        assert_eq!(
            st.versions.len(),
            1,
            "scaling made a version: {:?}",
            st.versions
        );
        assert_eq!(st.active_version.as_deref(), Some(active.as_str()));
        let sts: Api<StatefulSet> = env.api();
        for s in 0..2 {
            let set = sts.get(&format!("{name}-shard-{s}")).await.unwrap();
            assert_eq!(set.spec.replicas, Some(1));
        }
        drop(op);
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_train_names_its_cause_and_a_fixed_spec_recovers() {
    tokio::time::timeout(Duration::from_secs(420), async {
        let (env, op, storage) = start().await;
        let api: Api<VectorIndex> = env.api();
        let name = "broken";
        let missing = env.dir.join("no-such-vectors.fvecs");
        let missing = format!("file://{}", missing.display());
        api.create(
            &PostParams::default(),
            &index(name, &storage, json!({"uri": missing})),
        )
        .await
        .unwrap();
        let vi = wait_for(&api, name, 180, "TrainFailed in Degraded", |vi| {
            condition(vi, "Degraded").is_some_and(|c| c.reason == "TrainFailed")
        })
        .await;
        let c = condition(&vi, "Degraded").unwrap();
        assert!(c.message.contains("no-such-vectors.fvecs"), "{}", c.message);
        assert_eq!(phase(&vi), Some(IndexPhase::Failed));
        assert_eq!(condition(&vi, "Ready").unwrap().status, "False");

        // A fixed spec supersedes the failing version and goes Ready.
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"source": {"uri": null, "synthetic": {"count": 20000, "seed": 7}}}})),
        )
        .await
        .unwrap();
        let vi = wait_for(&api, name, 300, "the fixed index Ready", |vi| {
            phase(vi) == Some(IndexPhase::Ready)
        })
        .await;
        let st = vi.status.unwrap();
        assert_eq!(st.versions.len(), 2, "{:?}", st.versions);
        assert_eq!(st.versions[0].phase, VersionPhase::Active);
        assert_eq!(st.versions[1].phase, VersionPhase::Failed);
        assert!(
            st.versions[1]
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("Superseded")),
            "{:?}",
            st.versions[1]
        );
        drop(op);
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}
