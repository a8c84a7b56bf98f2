//! Versions under change, end to end: later versions of a Ready index while it serves
//! traffic. The real `quiver-operator` and `index-node` binaries, as in the operator suite;
//! `index-node loadtest` drives the index's Service throughout.
//!
//! Runs on the in-process stand-in, or against another cluster with QUIVER_E2E_KUBECONFIG.
//! Needs both binaries built in this target directory (`cargo test --workspace` builds them).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use quiver_api::VectorIndex;
use quiver_api::keys::{annotations, labels};
use quiver_api::v1alpha1::{IndexPhase, VersionPhase};
use serde_json::{Value, json};

mod opsupport;
use opsupport::*;

/// One bounded `index-node loadtest` run through the Service: its JSON summary.
fn load(node: &Path, target: SocketAddr, queries: &Path, secs: f64) -> Value {
    load_retrying(node, target, queries, secs, 0)
}

/// [`load`] with `--retries`: a client that sends a query again after UNAVAILABLE/UNKNOWN.
fn load_retrying(
    node: &Path,
    target: SocketAddr,
    queries: &Path,
    secs: f64,
    retries: u32,
) -> Value {
    loadtest(node, &target.to_string(), queries, secs, 4, retries)
}

/// An index of `count` synthetic vectors (the test index otherwise) taken to Ready: its first
/// version, that version's evaluation queries (what the load sends) and the Service address.
async fn ready_index(
    env: &quiver_e2e::testing::TestCluster,
    api: &Api<VectorIndex>,
    storage: &str,
    name: &str,
    count: u64,
    seed: u64,
) -> (String, std::path::PathBuf, SocketAddr) {
    api.create(
        &PostParams::default(),
        &index(
            name,
            storage,
            json!({"synthetic": {"count": count, "seed": seed}}),
        ),
    )
    .await
    .unwrap();
    let vi = wait_for(api, name, 240, "v1 Ready", |vi| {
        phase(vi) == Some(IndexPhase::Ready)
    })
    .await;
    let v1 = vi.status.unwrap().active_version.unwrap();
    let root = storage.strip_prefix("file://").unwrap();
    let eval = Path::new(root).join(format!("{}/{name}/versions/{v1}/eval.fvecs", env.ns));
    // A copy: v1's files go once a later swap retires it beyond retainVersions.
    let queries = env.dir.join(format!("{name}-queries.fvecs"));
    std::fs::copy(&eval, &queries).unwrap();
    (v1, queries, service_address(env, name).await)
}

/// The first id of the swap test's second version: its rows, numbered apart from the first's.
const V2_IDS: u64 = 1_000_000;

/// What a series of loadtest runs saw.
#[derive(Default, Debug)]
struct Seen {
    ok: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
    /// The first message of each error code.
    error_examples: BTreeMap<String, String>,
    /// Answers per version.
    versions: BTreeMap<String, u64>,
    /// Each run's first answer (Unix ms) per version.
    firsts: Vec<(String, u64)>,
    /// The smallest and largest id each version answered with.
    ids: BTreeMap<String, (u64, u64)>,
    retried: u64,
}

impl Seen {
    fn add(&mut self, s: &Value) {
        self.ok += s["ok"].as_u64().unwrap_or(0);
        self.failed += s["failed"].as_u64().unwrap_or(0);
        for (k, v) in s["errors"].as_object().into_iter().flatten() {
            *self.errors.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
        }
        for (k, v) in s["error_examples"].as_object().into_iter().flatten() {
            self.error_examples
                .entry(k.clone())
                .or_insert_with(|| v.as_str().unwrap_or_default().to_string());
        }
        for (k, v) in s["versions"].as_object().into_iter().flatten() {
            *self.versions.entry(k.clone()).or_default() += v["answers"].as_u64().unwrap_or(0);
            if let Some(t) = v["first_unix_ms"].as_u64() {
                self.firsts.push((k.clone(), t));
            }
            if let (Some(lo), Some(hi)) = (v["min_id"].as_u64(), v["max_id"].as_u64())
                && lo <= hi
            {
                let e = self.ids.entry(k.clone()).or_insert((lo, hi));
                *e = (e.0.min(lo), e.1.max(hi));
            }
        }
        self.retried += s["retried"].as_u64().unwrap_or(0);
    }

    /// The first answer from `version` at or after `t` (Unix ms).
    fn first_after(&self, version: &str, t: u64) -> Option<u64> {
        self.firsts
            .iter()
            .filter(|(v, at)| v == version && *at >= t)
            .map(|(_, at)| *at)
            .min()
    }

    fn names(&self) -> BTreeSet<&str> {
        self.versions.keys().map(String::as_str).collect()
    }
}

/// Pod churn of an index during a test: its router ReplicaSets (more than one: the router
/// Deployment rolled) and every container restart, to be named when queries failed.
async fn pod_churn(env: &quiver_e2e::testing::TestCluster, index: &str) -> (usize, String) {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::Pod;
    let sel = format!("{}={index}", labels::INDEX);
    let rs: Api<ReplicaSet> = env.api();
    let sets = rs
        .list(&ListParams::default().labels(&sel))
        .await
        .unwrap()
        .items;
    let pods: Api<Pod> = env.api();
    let restarts: Vec<String> = pods
        .list(&ListParams::default().labels(&sel))
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| {
            let n: i32 = p
                .status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .iter()
                .map(|c| c.restart_count)
                .sum();
            (n > 0).then(|| {
                format!(
                    "{} restarted {n}x",
                    p.metadata.name.as_deref().unwrap_or("?")
                )
            })
        })
        .collect();
    let names: Vec<&str> = sets
        .iter()
        .filter_map(|r| r.metadata.name.as_deref())
        .collect();
    (
        sets.len(),
        format!("router ReplicaSets {names:?}; restarts {restarts:?}"),
    )
}

fn version<'a>(vi: &'a VectorIndex, name: &str) -> Option<&'a quiver_api::v1alpha1::VersionStatus> {
    vi.status.as_ref()?.version(name)
}

/// Retrain v1 → v2 (a spec change and a retrain token at once) while queries run: no query
/// fails, every answer names v1 or v2 and carries only that version's ids, v1 stops
/// answering once drained, and the same token again does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrain_swaps_versions_under_load_without_a_failed_query() {
    tokio::time::timeout(Duration::from_secs(480), async {
        let (env, op, storage, _) = start().await;
        let node = workspace_bin_node();
        let api: Api<VectorIndex> = env.api();
        let name = "swap";
        let (v1, queries, addr) =
            ready_index(&env, &api, &storage, name, 8000, 5).await;

        let mut before = Seen::default();
        before.add(&load(&node, addr, &queries, 2.0));
        assert_eq!(before.failed, 0, "{before:?}");
        assert_eq!(before.names(), BTreeSet::from([v1.as_str()]), "{before:?}");

        // v2 numbers the same rows from 1,000,000, so every answer's ids show which version's
        // lists it came from, whatever version the answer names. The token is spent with it.
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {annotations::RETRAIN: "t1"}},
                "spec": {"source": {"idOffset": V2_IDS}},
            })),
        )
        .await
        .unwrap();
        // Load in 2 s runs until v1 is Retired.
        let mut during = Seen::default();
        let t0 = Instant::now();
        let v2 = loop {
            during.add(&load(&node, addr, &queries, 2.0));
            let vi = api.get(name).await.unwrap();
            let st = vi.status.clone().unwrap_or_default();
            eprintln!(
                "[{:5.1}s] {:?}",
                t0.elapsed().as_secs_f64(),
                st.versions.iter().map(|v| format!("{} {:?}", v.name, v.phase)).collect::<Vec<_>>()
            );
            if version(&vi, &v1).is_some_and(|v| v.phase == VersionPhase::Retired) {
                break st.active_version.unwrap();
            }
            assert!(t0.elapsed() < Duration::from_secs(240), "v1 not retired after 240 s: {:?}", st.versions);
        };
        assert_ne!(v2, v1);
        assert_eq!(during.failed, 0, "queries failed during the swap: {during:?}");
        assert!(during.names().is_subset(&BTreeSet::from([v1.as_str(), v2.as_str()])), "{during:?}");
        assert!(during.versions.get(&v2).is_some_and(|n| *n > 0), "v2 never answered: {during:?}");
        // Every answer's ids belong to the version it names: none mixes lists of both.
        for seen in [&before, &during] {
            if let Some((lo, hi)) = seen.ids.get(&v1) {
                assert!(*lo < 8000 && *hi < 8000, "{v1} answered with ids {lo}..={hi}: {seen:?}");
            }
        }
        let (lo, hi) = during.ids[&v2];
        assert!(lo >= V2_IDS && hi < V2_IDS + 8000, "{v2} answered with ids {lo}..={hi}");

        let mut after = Seen::default();
        after.add(&load(&node, addr, &queries, 2.0));
        assert_eq!(after.failed, 0, "{after:?}");
        assert_eq!(after.names(), BTreeSet::from([v2.as_str()]), "v1 answered after its drain: {after:?}");
        assert!(after.ids[&v2].0 >= V2_IDS, "{after:?}");

        let vi = api.get(name).await.unwrap();
        let st = vi.status.clone().unwrap();
        assert_eq!(st.observed_retrain.as_deref(), Some("t1"));
        // One version answered both triggers; the spec change names it.
        assert_eq!(version(&vi, &v2).unwrap().trigger.as_deref(), Some("spec"));
        assert_eq!(phase(&vi), Some(IndexPhase::Ready));
        // One train Job for v2 (its pods are what ran).
        let jobs: Api<Job> = env.api();
        let trains: Vec<String> = jobs
            .list(&ListParams::default().labels(labels::INDEX))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|j| j.metadata.name)
            .filter(|n| n.ends_with("-train") && n.contains(&v2))
            .collect();
        assert_eq!(trains.len(), 1, "one train Job for {v2}: {trains:?}");

        // The same token again: no new version.
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {annotations::RETRAIN: "t1"}, "labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        let st = api.get(name).await.unwrap().status.unwrap();
        assert_eq!(st.versions.len(), 2, "{:?}", st.versions);
        assert_eq!(st.active_version.as_deref(), Some(v2.as_str()));
        drop(op);
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}

fn workspace_bin_node() -> std::path::PathBuf {
    bins().1
}

/// Load in the background, in 2 s `loadtest` runs, until stopped; what they saw.
struct Background {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Seen>,
}

impl Background {
    fn start(node: std::path::PathBuf, addr: SocketAddr, queries: std::path::PathBuf) -> Self {
        Self::start_retrying(node, addr, queries, 0)
    }

    fn start_retrying(
        node: std::path::PathBuf,
        addr: SocketAddr,
        queries: std::path::PathBuf,
        retries: u32,
    ) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = Seen::default();
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                seen.add(&load_retrying(&node, addr, &queries, 2.0, retries));
            }
            seen
        });
        Background { stop, handle }
    }

    fn finish(self) -> Seen {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// The operator SIGKILLed while a second (third, ...) version is at each phase — right after
/// the trigger (Pending), Training, Building, Warming, Gating, and while the previous one is
/// Draining — and restarted: every version converges to Active with exactly one train pod,
/// one build pod per part and one finalize pod, the one before it Retired, and the index's
/// Service answers every query throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_at_each_phase_of_a_later_version_converges_while_serving() {
    tokio::time::timeout(Duration::from_secs(900), async {
        let (env, op, storage, bin) = start().await;
        let mut op = Some(op);
        let node = workspace_bin_node();
        let api: Api<VectorIndex> = env.api();
        let name = "again";
        let (mut previous, queries, addr) = ready_index(&env, &api, &storage, name, 20000, 7).await;
        let bg = Background::start(node, addr, queries);

        for (i, at) in [
            VersionPhase::Pending,
            VersionPhase::Training,
            VersionPhase::Building,
            VersionPhase::Warming,
            VersionPhase::Gating,
            VersionPhase::Draining,
        ]
        .into_iter()
        .enumerate()
        {
            let token = format!("kill-{i}");
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {annotations::RETRAIN: token}}})),
            )
            .await
            .unwrap();
            // Poll fast: Pending and Gating last one reconcile. Pending is "right after the
            // trigger": the kill may land before or after the operator wrote it.
            let t0 = Instant::now();
            let seen = loop {
                if at == VersionPhase::Pending {
                    break format!("{at:?} (just after the trigger)");
                }
                let vi = api.get(name).await.unwrap();
                let st = vi.status.clone().unwrap_or_default();
                let newest = st.versions.first().filter(|v| v.name != previous);
                let hit = match at {
                    VersionPhase::Draining => version(&vi, &previous).map(|v| v.phase) == Some(at),
                    _ => newest.map(|v| v.phase) == Some(at),
                };
                if hit {
                    break format!("{at:?}");
                }
                assert!(
                    newest.is_none_or(|v| v.phase != VersionPhase::Active)
                        || at == VersionPhase::Draining,
                    "the new version went Active before the test saw {at:?}"
                );
                assert!(
                    t0.elapsed() < Duration::from_secs(120),
                    "never saw {at:?}: {:?}",
                    st.versions
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let mut o = op.take().unwrap();
            o.child.kill().unwrap(); // SIGKILL
            o.child.wait().unwrap();
            eprintln!("{token}: operator killed at {seen}");
            op = Some(Operator::start(&env, &bin).await);
            let prev = previous.clone();
            let vi = wait_for(
                &api,
                name,
                240,
                "the new version Active, the old one Retired",
                |vi| {
                    let st = vi.status.clone().unwrap_or_default();
                    st.versions
                        .first()
                        .is_some_and(|v| v.name != prev && v.phase == VersionPhase::Active)
                        && version(vi, &prev).is_some_and(|v| v.phase == VersionPhase::Retired)
                        && phase(vi) == Some(IndexPhase::Ready)
                },
            )
            .await;
            let st = vi.status.unwrap();
            let v = st.versions[0].name.clone();
            assert_eq!(
                st.versions[0].trigger.as_deref(),
                Some(format!("retrain:{token}").as_str())
            );
            // One version per trigger (older ones leave the status once collected, which
            // waits while a version is prepared, so the list may be longer for a while).
            assert_eq!(
                st.version_counter,
                Some(i as u32 + 2),
                "one version per trigger: {:?}",
                st.versions
            );
            let pods: Api<k8s_openapi::api::core::v1::Pod> = env.api();
            for (role, runs) in [("train", 1), ("build", 2), ("finalize", 1)] {
                let sel = format!(
                    "{}={name},{}={v},{}={role}",
                    labels::INDEX,
                    labels::VERSION,
                    labels::ROLE
                );
                let n = pods
                    .list(&ListParams::default().labels(&sel))
                    .await
                    .unwrap()
                    .items
                    .len();
                assert_eq!(n, runs, "{role} pods of {v} (killed at {seen})");
            }
            previous = v;
        }
        let load = bg.finish();
        eprintln!("background load: {load:?}");
        assert_eq!(
            load.failed, 0,
            "queries failed while the operator was killed: {load:?}"
        );
        assert!(load.ok > 0, "{load:?}");
        drop(op);
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}

async fn retrain(api: &Api<VectorIndex>, name: &str, token: &str, spec: Value) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {annotations::RETRAIN: token}}, "spec": spec}),
        ),
    )
    .await
    .unwrap();
}

/// A later version below `minRecall` fails with the measured recall while the active one keeps
/// serving (Degraded says why, no retry); two triggers 1 s apart make the first one
/// superseded and only the second built to Active, never two builds at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_gate_keeps_the_active_version_and_a_newer_trigger_supersedes() {
    tokio::time::timeout(Duration::from_secs(600), async {
        let (env, op, storage, _) = start().await;
        let node = workspace_bin_node();
        let api: Api<VectorIndex> = env.api();
        let name = "gate";
        let (v1, queries, addr) =
            ready_index(&env, &api, &storage, name, 8000, 9).await;
        let bg = Background::start(node, addr, queries);

        // PQ with 2 bytes per vector cannot reach recall 0.99: the gate refuses v2.
        retrain(
            &api,
            name,
            "strict",
            json!({"rollout": {"minRecall": 0.99}, "index": {"quantizer": {"kind": "pq", "m": 2}}}),
        )
        .await;
        let vi = wait_for(&api, name, 240, "v2 Failed at the gate", |vi| {
            vi.status
                .as_ref()
                .and_then(|s| s.versions.first())
                .is_some_and(|v| v.name != v1 && v.phase == VersionPhase::Failed)
        })
        .await;
        let st = vi.status.clone().unwrap();
        let v2 = st.versions[0].clone();
        let reason = v2.reason.clone().unwrap_or_default();
        assert!(
            reason.starts_with("GateFailed: recall ") && reason.contains("< minRecall 0.99 "),
            "{reason}"
        );
        assert_eq!(
            st.active_version.as_deref(),
            Some(v1.as_str()),
            "the active version stays"
        );
        let degraded = condition(&vi, "Degraded").unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "GateFailed"),
            "{degraded:?}"
        );
        // No retry until a new trigger.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let st = api.get(name).await.unwrap().status.unwrap();
        assert_eq!(st.versions.len(), 2, "{:?}", st.versions);

        // Two triggers 1 s apart, the gate relaxed again.
        retrain(
            &api,
            name,
            "first",
            json!({"rollout": {"minRecall": 0.8}, "index": {"quantizer": {"kind": "flat", "m": null}}}),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        retrain(&api, name, "second", json!({})).await;
        let vi = wait_for(
            &api,
            name,
            240,
            "the second trigger's version Active, nothing Draining",
            |vi| {
                vi.status
                    .as_ref()
                    .and_then(|s| s.versions.first())
                    .is_some_and(|v| {
                        v.trigger.as_deref() == Some("retrain:second")
                            && v.phase == VersionPhase::Active
                    })
                    && phase(vi) == Some(IndexPhase::Ready)
                    // The one before it drained too (Draining ends once routers pin the new one).
                    && vi.status.as_ref().is_some_and(|s| {
                        s.versions.iter().all(|v| v.phase != VersionPhase::Draining)
                    })
            },
        )
        .await;
        let st = vi.status.unwrap();
        // The first trigger's version (a spec change with a token) was superseded, or was
        // quick enough to go Active and then Retired: never two versions prepared at once.
        for v in st.versions.iter().skip(1).filter(|v| v.name != v1 && v.name != v2.name) {
            let superseded = v.phase == VersionPhase::Failed
                && v.reason.as_deref().unwrap_or_default().starts_with("Superseded");
            assert!(superseded || v.phase == VersionPhase::Retired, "{v:?}");
        }
        assert_eq!(
            st.versions.iter().filter(|v| v.trigger.as_deref() == Some("retrain:second")).count(),
            1,
            "{:?}",
            st.versions
        );
        // v1, v2 (failed), one per later trigger; v1 may have been collected since.
        assert_eq!(st.version_counter, Some(4), "{:?}", st.versions);
        let load = bg.finish();
        eprintln!("background load: {load:?}");
        let (_, churn) = pod_churn(&env, name).await;
        assert_eq!(load.failed, 0, "{load:?}; {churn}");
        assert!(
            !load.versions.contains_key(&v2.name),
            "the failed version answered: {load:?}"
        );
        drop(op);
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}

/// Polls (fast: some phases last one reconcile) until `hit` holds for the index.
async fn poll_until(
    api: &Api<VectorIndex>,
    name: &str,
    what: &str,
    hit: impl Fn(&VectorIndex) -> bool,
) -> VectorIndex {
    let t0 = Instant::now();
    loop {
        let vi = api.get(name).await.unwrap();
        if hit(&vi) {
            return vi;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "never saw {what}: {:?}",
            vi.status.map(|s| s.versions)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Force-deletes a pod (grace 0: its process is killed), as a node failure would.
async fn kill_pod(env: &quiver_e2e::testing::TestCluster, pod: &str) {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = env.api();
    pods.delete(pod, &kube::api::DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eprintln!("killed pod {pod}");
}

/// A shard replica killed while a new version warms, and another while the swap drains the
/// old one: the StatefulSet brings each back, it loads what the status lists, the swap
/// completes, and the routers fail over to the other replica so that no query fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_replicas_killed_during_warming_and_the_swap_lose_no_query() {
    tokio::time::timeout(Duration::from_secs(600), async {
        let (env, op, storage, _) = start().await;
        let node = workspace_bin_node();
        let api: Api<VectorIndex> = env.api();
        let name = "faults";
        let (mut previous, queries, addr) =
            ready_index(&env, &api, &storage, name, 20000, 11).await;
        let bg = Background::start(node, addr, queries);

        for (token, at, pod) in [
            ("warm", VersionPhase::Warming, format!("{name}-shard-0-0")),
            ("swap", VersionPhase::Draining, format!("{name}-shard-1-1")),
        ] {
            retrain(&api, name, token, json!({})).await;
            let prev = previous.clone();
            poll_until(&api, name, &format!("{at:?}"), |vi| match at {
                // The swap: the new version Active, the old one still Draining.
                VersionPhase::Draining => version(vi, &prev).map(|v| v.phase) == Some(at),
                _ => vi
                    .status
                    .as_ref()
                    .and_then(|s| s.versions.first())
                    .is_some_and(|v| v.name != prev && v.phase == at),
            })
            .await;
            kill_pod(&env, &pod).await;
            let vi = wait_for(
                &api,
                name,
                240,
                "the new version Active, the old one Retired, Ready",
                |vi| {
                    let st = vi.status.clone().unwrap_or_default();
                    st.versions
                        .first()
                        .is_some_and(|v| v.name != prev && v.phase == VersionPhase::Active)
                        && version(vi, &prev).is_some_and(|v| v.phase == VersionPhase::Retired)
                        && phase(vi) == Some(IndexPhase::Ready)
                },
            )
            .await;
            previous = vi.status.unwrap().versions[0].name.clone();
        }
        let load = bg.finish();
        eprintln!("background load: {load:?}");
        assert_eq!(
            load.failed, 0,
            "queries failed while shard replicas were killed: {load:?}"
        );
        assert!(load.ok > 0, "{load:?}");
        drop(op);
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}

/// A router killed during the swap. Its Deployment replaces it and the swap completes with
/// one version per trigger. Queries in flight on the killed router's connections fail
/// (UNAVAILABLE or UNKNOWN) and a client that retries them (`loadtest --retries 2`) sees
/// none fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_during_the_swap_fails_no_query_of_a_retrying_client() {
    tokio::time::timeout(Duration::from_secs(600), async {
        let (env, op, storage, _) = start().await;
        let node = workspace_bin_node();
        let api: Api<VectorIndex> = env.api();
        let name = "router";
        let (v1, queries, addr) = ready_index(&env, &api, &storage, name, 20000, 13).await;
        // A client that retries UNAVAILABLE/UNKNOWN (searches are safe to send again).
        let bg = Background::start_retrying(node, addr, queries, 2);

        retrain(&api, name, "t1", json!({})).await;
        poll_until(&api, name, "v1 Draining", |vi| {
            version(vi, &v1).map(|v| v.phase) == Some(VersionPhase::Draining)
        })
        .await;
        let pods: Api<k8s_openapi::api::core::v1::Pod> = env.api();
        let sel = format!("{}={name},{}=router", labels::INDEX, labels::ROLE);
        let router = pods
            .list(&ListParams::default().labels(&sel))
            .await
            .unwrap()
            .items[0]
            .metadata
            .name
            .clone()
            .unwrap();
        kill_pod(&env, &router).await;
        let vi = wait_for(&api, name, 240, "v2 Active, v1 Retired, Ready", |vi| {
            version(vi, &v1).is_some_and(|v| v.phase == VersionPhase::Retired)
                && phase(vi) == Some(IndexPhase::Ready)
        })
        .await;
        let st = vi.status.unwrap();
        assert_eq!(st.versions.len(), 2, "{:?}", st.versions);
        assert_eq!(st.versions[0].phase, VersionPhase::Active);
        let load = bg.finish();
        eprintln!("background load: {load:?}");
        // The queries in flight on the killed router's connections fail as UNAVAILABLE, or
        // UNKNOWN when the HTTP/2 stream is reset under them; sent again, they are answered.
        assert_eq!(
            load.failed, 0,
            "a retrying client saw a failed query: {load:?}"
        );
        assert!(
            load.retried <= 16,
            "more retries than the in-flight queries of a lost router explain: {load:?}"
        );
        assert!(load.ok > 0, "{load:?}");
        drop(op);
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}

/// A spec change while a version is Gating supersedes it: the next version is built and goes
/// Active, the superseded one never answers, and no query fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_during_gating_supersedes_the_gating_version() {
    tokio::time::timeout(Duration::from_secs(600), async {
        let (env, op, storage, _) = start().await;
        let node = workspace_bin_node();
        let api: Api<VectorIndex> = env.api();
        let name = "regate";
        let (v1, queries, addr) = ready_index(&env, &api, &storage, name, 20000, 17).await;
        let bg = Background::start(node, addr, queries);

        retrain(&api, name, "t1", json!({})).await;
        poll_until(&api, name, "v2 Gating", |vi| {
            vi.status
                .as_ref()
                .and_then(|s| s.versions.first())
                .is_some_and(|v| v.name != v1 && v.phase == VersionPhase::Gating)
        })
        .await;
        // A field that shapes the index: a new training seed.
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"index": {"training": {"seed": 99}}}})),
        )
        .await
        .unwrap();
        let vi = wait_for(&api, name, 240, "the spec's version Active, Ready", |vi| {
            vi.status
                .as_ref()
                .and_then(|s| s.versions.first())
                .is_some_and(|v| {
                    v.trigger.as_deref() == Some("spec") && v.phase == VersionPhase::Active
                })
                && phase(vi) == Some(IndexPhase::Ready)
        })
        .await;
        let st = vi.status.unwrap();
        let v2 = st
            .versions
            .iter()
            .find(|v| v.trigger.as_deref() == Some("retrain:t1"))
            .unwrap();
        // The gate may have finished in the same moment the spec changed: then v2 went Active
        // and was drained; otherwise it was superseded.
        let superseded = v2.phase == VersionPhase::Failed
            && v2
                .reason
                .as_deref()
                .unwrap_or_default()
                .starts_with("Superseded");
        assert!(superseded || v2.phase == VersionPhase::Retired, "{v2:?}");
        assert_eq!(st.versions.len(), 3, "{:?}", st.versions);
        let load = bg.finish();
        eprintln!("background load: {load:?} (v2 superseded: {superseded})");
        let (_, churn) = pod_churn(&env, name).await;
        assert_eq!(load.failed, 0, "{load:?}; {churn}");
        if superseded {
            assert!(
                !load.versions.contains_key(&v2.name),
                "a superseded version answered: {load:?}"
            );
        }
        drop(op);
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The files under one version's directory in file storage.
fn version_files(storage: &str, ns: &str, index: &str, version: &str) -> Vec<String> {
    let root = storage.strip_prefix("file://").unwrap();
    let dir = Path::new(root).join(format!("{ns}/{index}/versions/{version}"));
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// A list file of the new version corrupted between its build and its load: shard replicas
/// fail to load it (checksums), the version fails with their reason after the warm timeout,
/// the active version serves every query throughout, and the broken one never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_list_file_fails_the_new_version_while_the_active_one_serves() {
    tokio::time::timeout(Duration::from_secs(600), async {
        let (env, op, storage, _) = start().await;
        let node = workspace_bin_node();
        let api: Api<VectorIndex> = env.api();
        let name = "corrupt";
        let (v1, queries, addr) = ready_index(&env, &api, &storage, name, 8000, 17).await;
        let bg = Background::start(node, addr, queries);

        retrain(&api, name, "t1", json!({})).await;
        let vi = poll_until(&api, name, "v2 decided", |vi| {
            vi.status
                .as_ref()
                .and_then(|s| s.versions.first())
                .is_some_and(|v| v.name != v1)
        })
        .await;
        let v2 = vi.status.unwrap().versions[0].name.clone();
        // Both build parts write their list file; finalize writes the manifest after the
        // operator saw the build Job complete, so there is time to corrupt one in between.
        let t0 = Instant::now();
        let corrupted = loop {
            let files = version_files(&storage, &env.ns, name, &v2);
            assert!(
                !files.iter().any(|f| f == "manifest.json"),
                "the manifest was written before the test could corrupt a list file: {files:?}"
            );
            let lists: Vec<&String> = files.iter().filter(|f| f.starts_with("lists")).collect();
            if lists.len() == 2 {
                let root = storage.strip_prefix("file://").unwrap();
                let path =
                    Path::new(root).join(format!("{}/{name}/versions/{v2}/{}", env.ns, lists[1]));
                let mut bytes = std::fs::read(&path).unwrap();
                // Past the directory: inside a list's entries, which only a load checks.
                let at = bytes.len() * 2 / 3;
                for b in &mut bytes[at..at + 64] {
                    *b ^= 0x5a;
                }
                std::fs::write(&path, &bytes).unwrap();
                break lists[1].clone();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "no list files of {v2}: {files:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        eprintln!("corrupted {v2}/{corrupted}");

        let vi = wait_for(&api, name, 180, "v2 Failed while warming", |vi| {
            version(vi, &v2).is_some_and(|v| v.phase == VersionPhase::Failed)
        })
        .await;
        let st = vi.status.clone().unwrap();
        let reason = version(&vi, &v2)
            .unwrap()
            .reason
            .clone()
            .unwrap_or_default();
        assert!(reason.starts_with("WarmFailed: "), "{reason}");
        assert_eq!(
            st.active_version.as_deref(),
            Some(v1.as_str()),
            "the active version stays"
        );
        assert_eq!(st.target_version, None);
        let degraded = condition(&vi, "Degraded").unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "WarmFailed"),
            "{degraded:?}"
        );
        // Nothing retries the same trigger.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let st = api.get(name).await.unwrap().status.unwrap();
        assert_eq!(st.version_counter, Some(2), "{:?}", st.versions);
        let load = bg.finish();
        eprintln!("background load: {load:?}");
        let (_, churn) = pod_churn(&env, name).await;
        assert_eq!(load.failed, 0, "{load:?}; {churn}");
        assert!(load.ok > 0, "{load:?}");
        assert!(
            !load.versions.contains_key(&v2),
            "the corrupt version answered: {load:?}"
        );
        drop(op);
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}

/// `spec.pinnedVersion` to a retained older version rolls back through warm → gate → swap
/// with no Job and no failed query; clearing it returns to the newest version. Prints the
/// rollback time from the spec change to the first answer from the old version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_rolls_back_under_load_and_clearing_it_returns_to_the_newest_version() {
    tokio::time::timeout(Duration::from_secs(600), async {
        let (env, op, storage, _) = start().await;
        let node = workspace_bin_node();
        let api: Api<VectorIndex> = env.api();
        let name = "pin";
        let (v1, queries, addr) = ready_index(&env, &api, &storage, name, 8000, 19).await;
        let bg = Background::start(node.clone(), addr, queries.clone());

        retrain(&api, name, "t1", json!({})).await;
        let vi = wait_for(&api, name, 240, "v2 Active, v1 Retired", |vi| {
            version(vi, &v1).is_some_and(|v| v.phase == VersionPhase::Retired)
                && phase(vi) == Some(IndexPhase::Ready)
        })
        .await;
        let v2 = vi.status.unwrap().active_version.unwrap();
        // Load runs last 2 s and record each version's first answer: let the run that saw v1
        // before its retirement end, so that a v1 answer after the pin is the first of its run.
        tokio::time::sleep(Duration::from_secs(3)).await;

        let pinned_at = unix_ms();
        let t0 = Instant::now();
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"pinnedVersion": v1}})),
        )
        .await
        .unwrap();
        let vi = wait_for(&api, name, 180, "v1 Active again, v2 Retired", |vi| {
            vi.status.as_ref().and_then(|s| s.active_version.as_deref()) == Some(v1.as_str())
                && version(vi, &v2).is_some_and(|v| v.phase == VersionPhase::Retired)
                && phase(vi) == Some(IndexPhase::Ready)
        })
        .await;
        let rollback_s = t0.elapsed().as_secs_f64();
        let st = vi.status.unwrap();
        assert_eq!(st.version_counter, Some(2), "a rollback makes no version: {:?}", st.versions);
        // A version of the current spec is active again: nothing waits on the pin.
        assert_eq!(condition(&api.get(name).await.unwrap(), "Degraded").unwrap().status, "False");
        // Pinned, v1 and only v1 answers (measured apart from the background load, whose
        // runs straddle the changes).
        let mut pinned_load = Seen::default();
        pinned_load.add(&load(&node, addr, &queries, 2.0));
        assert_eq!(pinned_load.names(), BTreeSet::from([v1.as_str()]), "{pinned_load:?}");
        assert_eq!(pinned_load.failed, 0, "{pinned_load:?}");

        // Cleared: back to the newest version that passed its gate.
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"pinnedVersion": null}})),
        )
        .await
        .unwrap();
        let vi = wait_for(&api, name, 180, "v2 Active again, v1 Retired", |vi| {
            vi.status.as_ref().and_then(|s| s.active_version.as_deref()) == Some(v2.as_str())
                && version(vi, &v1).is_some_and(|v| v.phase == VersionPhase::Retired)
                && phase(vi) == Some(IndexPhase::Ready)
        })
        .await;
        assert_eq!(vi.status.unwrap().version_counter, Some(2));
        let load = bg.finish();
        let first_v1 = load.first_after(&v1, pinned_at).expect("v1 answered after the pin");
        eprintln!(
            "rollback: spec change → first answer from {v1} {} ms; → {v1} Active and {v2} Retired {rollback_s:.1} s",
            first_v1 - pinned_at
        );
        eprintln!("background load: {load:?}");
        let (router_sets, churn) = pod_churn(&env, name).await;
        assert_eq!(load.failed, 0, "{load:?}; {churn}");
        // Versions change what pods load, never the pods: the router Deployment never rolls.
        assert_eq!(router_sets, 1, "{churn}");
        assert!(load.names().is_subset(&BTreeSet::from([v1.as_str(), v2.as_str()])), "{load:?}");
        let jobs: Api<Job> = env.api();
        let trains = jobs
            .list(&ListParams::default().labels(labels::INDEX))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|j| j.metadata.name.as_deref().is_some_and(|n| n.ends_with("-train")))
            .count();
        assert!(trains <= 1, "a rollback ran a train Job: {trains}");
        drop(op);
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}

/// With `retainVersions: 1`, the version a swap retires is collected: a GC Job deletes its
/// files from storage, it leaves the status, and the active version's files stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_beyond_retain_versions_are_collected_from_storage() {
    tokio::time::timeout(Duration::from_secs(600), async {
        let (env, op, storage, _) = start().await;
        let api: Api<VectorIndex> = env.api();
        let name = "retain";
        let mut vi = index(
            name,
            &storage,
            json!({"synthetic": {"count": 8000, "seed": 23}}),
        );
        vi.spec.storage.retain_versions = 1;
        api.create(&PostParams::default(), &vi).await.unwrap();
        let vi = wait_for(&api, name, 240, "v1 Ready", |vi| {
            phase(vi) == Some(IndexPhase::Ready)
        })
        .await;
        let v1 = vi.status.unwrap().active_version.unwrap();
        assert!(version_files(&storage, &env.ns, name, &v1).contains(&"manifest.json".to_string()));

        retrain(&api, name, "t1", json!({})).await;
        let vi = wait_for(&api, name, 240, "v2 Active and v1 collected", |vi| {
            let st = vi.status.clone().unwrap_or_default();
            st.versions.len() == 1
                && st.version_counter == Some(2)
                && st.versions[0].phase == VersionPhase::Active
        })
        .await;
        let v2 = vi.status.unwrap().active_version.unwrap();
        assert_eq!(
            version_files(&storage, &env.ns, name, &v1),
            Vec::<String>::new()
        );
        assert!(version_files(&storage, &env.ns, name, &v2).contains(&"manifest.json".to_string()));
        // The finished GC Job goes too.
        let jobs: Api<Job> = env.api();
        poll_until_async(Duration::from_secs(60), "the GC Job deleted", || async {
            !jobs
                .list(&ListParams::default().labels(labels::INDEX))
                .await
                .unwrap()
                .items
                .iter()
                .any(|j| {
                    j.metadata.name.as_deref() == Some(&format!("{name}-gc-1"))
                        && j.metadata.deletion_timestamp.is_none()
                })
        })
        .await;
        drop(op);
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}

async fn poll_until_async<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !f().await {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Scales every vector of an `.fvecs` file by `factor` into `out`.
fn scaled_fvecs(from: &Path, out: &Path, factor: f32) {
    let bytes = std::fs::read(from).unwrap();
    let mut res = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let dim = i32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        res.extend_from_slice(&bytes[at..at + 4]);
        at += 4;
        for _ in 0..dim {
            let x = f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            res.extend_from_slice(&(x * factor).to_le_bytes());
            at += 4;
        }
    }
    std::fs::write(out, res).unwrap();
}

/// Queries far from the indexed data (the held-out vectors scaled ×4) move the routers'
/// nearest-centroid distances away from the version's reference: `status.drift` says so, and
/// with `spec.retrain.drift.threshold` one version is made for it, and only one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drifted_queries_are_measured_and_retrain_once() {
    tokio::time::timeout(Duration::from_secs(600), async {
        let (env, op, storage, _) = start().await;
        let node = workspace_bin_node();
        let api: Api<VectorIndex> = env.api();
        let name = "drift";
        let (v1, queries, addr) = ready_index(&env, &api, &storage, name, 8000, 29).await;

        // Queries like the data: published, and low. An idle index is sampled every resync
        // (5 min) or on any change: touch it.
        load(&node, addr, &queries, 2.0);
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"test/poke": "1"}}})),
        )
        .await
        .unwrap();
        let vi = wait_for(&api, name, 60, "a drift figure", |vi| {
            vi.status.as_ref().and_then(|s| s.drift.as_ref()).is_some()
        })
        .await;
        let d = vi.status.unwrap().drift.unwrap();
        assert_eq!(d.version, v1);
        assert!(
            d.statistic < 0.3,
            "queries like the data read as drifted: {d:?}"
        );
        assert!(d.queries >= 100, "{d:?}");

        // Far queries, then a threshold: one version for drift.
        let far = env.dir.join("far.fvecs");
        scaled_fvecs(&queries, &far, 4.0);
        let seen = load(&node, addr, &far, 3.0);
        assert_eq!(seen["failed"].as_u64(), Some(0), "{seen}");
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"retrain": {"drift": {"threshold": 0.3, "minQueries": 100}}}}),
            ),
        )
        .await
        .unwrap();
        let vi = wait_for(&api, name, 240, "a version made for drift, Active", |vi| {
            vi.status
                .as_ref()
                .and_then(|s| s.versions.first())
                .is_some_and(|v| {
                    v.trigger
                        .as_deref()
                        .is_some_and(|t| t.starts_with("drift:"))
                        && v.phase == VersionPhase::Active
                })
                && phase(vi) == Some(IndexPhase::Ready)
        })
        .await;
        let st = vi.status.unwrap();
        let trigger = st.versions[0].trigger.clone().unwrap();
        let stat: f64 = trigger.trim_start_matches("drift:").parse().unwrap();
        assert!(stat > 0.3, "{trigger}");
        // The same far queries on the new version: no second version for drift.
        load(&node, addr, &far, 3.0);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let st = api.get(name).await.unwrap().status.unwrap();
        assert_eq!(st.version_counter, Some(2), "{:?}", st.versions);
        drop(op);
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}

/// moto's S3 server on 127.0.0.1 (as `index-node/tests/s3.rs` starts it), killed on drop.
struct Moto(std::process::Child, u16);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> Moto {
    let ok = Command::new("python3")
        .args(["-c", "import moto.server"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "this test needs moto's S3 server: `pip install -r .ci/requirements.txt` (python3 -m moto.server must work)"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let moto = Moto(child, port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    moto
}

/// One plain HTTP/1.1 request to moto (it checks no signature): status line and body.
fn http(port: u16, method: &str, path: &str) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    (
        head.lines().next().unwrap_or_default().to_string(),
        out[split + 4..].to_vec(),
    )
}

/// A TCP forwarder in front of the S3 server that can be cut: while down, it closes every
/// connection it holds and every new one at once, as a storage outage looks to a client.
struct StorageLink {
    port: u16,
    up: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl StorageLink {
    async fn start(to: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, rx) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*rx.borrow() {
                    continue; // dropped: closed at once
                }
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        StorageLink { port, up, task }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for StorageLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Storage (S3) unreachable while a version is prepared: its Job fails, is retried after the
/// back-off, fails again while storage stays down, and the version goes Active once storage
/// returns; the active version serves every query throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_unreachable_during_a_build_fails_it_and_it_retries_until_storage_returns() {
    tokio::time::timeout(Duration::from_secs(420), async {
        use k8s_openapi::api::core::v1::Secret;
        let (env, op, _, _) = start().await;
        let node = workspace_bin_node();
        let moto = start_moto();
        let link = StorageLink::start(moto.1).await;
        let (status, _) = http(moto.1, "PUT", "/quiver");
        assert!(status.contains(" 200"), "create bucket: {status}");

        let secrets: Api<Secret> = env.api();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "s3"},
            "stringData": {
                "AWS_ENDPOINT": format!("http://127.0.0.1:{}", link.port),
                "AWS_ALLOW_HTTP": "true",
                "AWS_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
                // A request fails after 2 s of retries: the operator's back-off does the rest.
                "QUIVER_STORAGE_RETRY_TIMEOUT_SECS": "2",
            }
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();

        let api: Api<VectorIndex> = env.api();
        let name = "outage";
        let mut vi = index(
            name,
            "s3://quiver/idx",
            json!({"synthetic": {"count": 4000, "seed": 9}}),
        );
        vi.spec.storage.secret_ref = Some(quiver_api::v1alpha1::SecretRef { name: "s3".into() });
        api.create(&PostParams::default(), &vi).await.unwrap();
        let vi = wait_for(&api, name, 240, "v1 Ready", |vi| {
            phase(vi) == Some(IndexPhase::Ready)
        })
        .await;
        let v1 = vi.status.unwrap().active_version.unwrap();
        assert!(
            v1.starts_with("v1-"),
            "{v1}: the first version, built over S3"
        );
        // Any 16-component vectors will do as queries: the load only counts answers.
        let queries = env.dir.join("outage-queries.fvecs");
        let mut fvecs = Vec::new();
        let mut x: u32 = 12345;
        for _ in 0..200 {
            fvecs.extend_from_slice(&16i32.to_le_bytes());
            for _ in 0..16 {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                fvecs.extend_from_slice(&((x >> 8) as f32 / (1u32 << 24) as f32).to_le_bytes());
            }
        }
        std::fs::write(&queries, fvecs).unwrap();
        let addr = service_address(&env, name).await;

        let mut seen = Seen::default();
        seen.add(&load(&node, addr, &queries, 1.0));

        link.set(false);
        retrain(&api, name, "outage", json!({})).await;
        // Two failed attempts while storage is down, the second after the back-off.
        let t0 = Instant::now();
        let mut failed_at: BTreeMap<u32, i64> = BTreeMap::new();
        let (v2, failures) = loop {
            seen.add(&load(&node, addr, &queries, 2.0));
            let vi = api.get(name).await.unwrap();
            let st = vi.status.unwrap_or_default();
            let v = st
                .versions
                .iter()
                .find(|v| v.trigger.as_deref() == Some("retrain:outage"));
            if let Some(v) = v {
                eprintln!(
                    "[{:5.1}s] {} {:?} attempts {:?} {:?}",
                    t0.elapsed().as_secs_f64(),
                    v.name,
                    v.phase,
                    v.attempts,
                    v.reason
                );
                assert_ne!(
                    v.phase,
                    VersionPhase::Active,
                    "{} went Active with storage down",
                    v.name
                );
                if let (Some(n), Some(t)) = (v.attempts, &v.last_transition_time) {
                    failed_at.entry(n).or_insert(t.0.as_second());
                }
                if v.attempts.unwrap_or(0) >= 2 {
                    break (v.name.clone(), v.reason.clone().unwrap_or_default());
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(150),
                "no two failed attempts in 150 s: {:?}",
                st.versions
            );
        };
        assert!(failures.contains("Failed"), "{failures}");
        // The back-off: the second attempt began 10 s after the first failed, so it failed
        // at least that much later.
        let (a1, a2) = (failed_at.get(&1), failed_at.get(&2));
        assert!(
            a1.zip(a2).is_some_and(|(a1, a2)| a2 - a1 >= 10),
            "attempts failed at {failed_at:?} (Unix s): no 10 s back-off between them"
        );

        link.set(true);
        let t1 = Instant::now();
        loop {
            seen.add(&load(&node, addr, &queries, 2.0));
            let st = api.get(name).await.unwrap().status.unwrap_or_default();
            if st.active_version.as_deref() == Some(v2.as_str()) {
                break;
            }
            assert!(
                t1.elapsed() < Duration::from_secs(150),
                "{v2} not Active 150 s after storage returned: {:?}",
                st.versions
            );
        }
        seen.add(&load(&node, addr, &queries, 1.0));
        assert_eq!(seen.failed, 0, "queries failed during the outage: {seen:?}");
        assert!(seen.versions.get(&v2).is_some_and(|n| *n > 0), "{seen:?}");
        drop(link);
        drop(op);
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}
