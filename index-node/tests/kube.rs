//! index-node as pods of a cluster: two shards × two replicas and a router, all started with
//! `serve --kube`, so they take their versions from a `VectorIndex` status (written here, as
//! the operator will) and the router its replicas from the Ready shard pods. A load test
//! queries through the router's Service while the test takes shard pods out of readiness and
//! swaps versions: zero failed queries, every answer from the version it names.
//!
//! Runs on the in-process stand-in, or against another cluster with QUIVER_E2E_KUBECONFIG
//! (its API server and controller manager; the pods run on a process kubelet this test
//! attaches, so the storage directory is local either way).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{bin, build_version_at, loadtest, summary};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use quiver_api::keys::labels::{self, Role as NodeRole};
use quiver_api::{VectorIndex, ports};
use quiver_e2e::testing::{TestCluster, eventually, install_crd};
use quiver_proto::StatusRequest;
use quiver_proto::admin_client::AdminClient;
use serde_json::{Value, json};

const INDEX: &str = "idx";
const V1: &str = "v1-00000001";
const V2: &str = "v2-00000002";
/// The test's own readiness gate: setting its condition False takes a pod out of readiness
/// the way a real cluster allows (a kubelet owns the Ready condition).
const GATE: &str = "quiver.dev/test-in-rotation";
const SERVICE_ACCOUNT: &str = "quiver-node";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_follow_the_status_and_the_router_follows_readiness() {
    tokio::time::timeout(Duration::from_secs(300), scenario())
        .await
        .expect("scenario timed out");
}

async fn scenario() {
    let images = HashMap::from([("index-node".to_string(), bin().into())]);
    let env = TestCluster::start(images).await.expect("cluster");
    let store = env.dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let storage = format!("file://{}", store.display());
    // v2: same data, ids offset by 1e6, so an answer from the wrong version shows in its ids.
    {
        let (storage, ns) = (storage.clone(), env.ns.clone());
        tokio::task::spawn_blocking(move || {
            build_version_at(&storage, (&ns, INDEX, V1), 20_000, 2, 1, 0, &[]);
            build_version_at(&storage, (&ns, INDEX, V2), 20_000, 2, 1, 1_000_000, &[]);
        })
        .await
        .unwrap();
    }
    install_crd(&env.client).await.unwrap();
    let indexes: Api<VectorIndex> = env.api();
    let vi: VectorIndex = serde_json::from_value(json!({
        "apiVersion": "quiver.dev/v1alpha1", "kind": "VectorIndex", "metadata": {"name": INDEX},
        "spec": {"dimension": 16, "metric": "l2",
            "index": {"nlist": 32, "quantizer": {"kind": "flat"}, "nprobe": 8},
            "source": {"synthetic": {"count": 20000, "seed": 7}},
            "storage": {"uri": storage},
            "shards": 2, "replicas": 2,
            "rollout": {"evalQueries": 50, "evalK": 10}}
    }))
    .unwrap();
    indexes.create(&PostParams::default(), &vi).await.unwrap();
    set_status(&indexes, &[(V1, "Active")], V1).await;
    rbac(&env).await;
    for shard in 0..2 {
        shard_statefulset(&env, shard, &storage).await;
    }
    router(&env, &storage).await;

    // Every shard pod loads v1 and would be Ready but for the gate; open the gates.
    let pods: Api<Pod> = env.api();
    let shard_pods = eventually(120, "4 shard pods with ready containers", || async {
        let list = pods
            .list(&ListParams::default().labels(&labels::role_selector(INDEX, NodeRole::Shard)))
            .await
            .ok()?;
        let ok: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| condition(p, "ContainersReady") == Some("True".into()))
            .collect();
        (ok.len() == 4).then_some(ok)
    })
    .await;
    let shard_ip: BTreeMap<String, String> = shard_pods
        .iter()
        .map(|p| {
            let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
            (p.name_any(), ip)
        })
        .collect();
    for name in shard_ip.keys() {
        set_gate(&pods, name, true).await;
    }
    for (name, ip) in &shard_ip {
        let st = admin_status(ip).await;
        assert_eq!(st.active_version, V1, "{name}: {st:?}");
        assert_eq!(versions_of(&st), [V1], "{name}");
    }
    let service = service_address(&env).await;
    eventually(60, "the router answers through its Service", || async {
        let st = AdminClient::connect(format!("http://{service}"))
            .await
            .ok()?
            .status(StatusRequest {})
            .await
            .ok()?
            .into_inner();
        (st.active_version == V1 && st.ready).then_some(())
    })
    .await;

    let eval = store.join(format!("{}/{INDEX}/versions/{V1}/eval.fvecs", env.ns));
    let lt = loadtest(&service.to_string(), eval.to_str().unwrap(), 24.0, 4);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // 1. Readiness taken from one replica of shard 0: the router stops sending to it within
    //    a second (its query count stops growing), then it comes back.
    let off = "idx-shard-0-0";
    let off_ip = &shard_ip[off];
    set_gate(&pods, off, false).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = shard_queries(off_ip).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = shard_queries(off_ip).await;
    assert_eq!(
        before, after,
        "{off} still got queries more than 1 s after it stopped being Ready"
    );
    let other = shard_queries(&shard_ip["idx-shard-0-1"]).await;
    set_gate(&pods, off, true).await;
    eventually(10, "the pod back in rotation", || async {
        (shard_queries(off_ip).await > after).then_some(())
    })
    .await;
    assert!(other > 0, "the other replica of shard 0 took the queries");

    // 2. v2 warms beside v1; every shard converges to holding both.
    set_status(&indexes, &[(V2, "Warming"), (V1, "Active")], V1).await;
    for ip in shard_ip.values() {
        eventually(30, "v2 warm on every shard", || async {
            let st = admin_status(ip).await;
            (versions_of(&st) == [V1, V2] && st.active_version == V1).then_some(())
        })
        .await;
    }
    // 3. The swap, with a replica of shard 1 out of readiness meanwhile.
    set_gate(&pods, "idx-shard-1-1", false).await;
    set_status(&indexes, &[(V2, "Active"), (V1, "Draining")], V2).await;
    eventually(30, "the router on v2", || async {
        let st = AdminClient::connect(format!("http://{service}"))
            .await
            .ok()?
            .status(StatusRequest {})
            .await
            .ok()?
            .into_inner();
        (st.active_version == V2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    set_gate(&pods, "idx-shard-1-1", true).await;
    // 4. v1 retired: shards drop it.
    set_status(&indexes, &[(V2, "Active"), (V1, "Retired")], V2).await;
    for ip in shard_ip.values() {
        eventually(30, "v1 dropped by every shard", || async {
            let st = admin_status(ip).await;
            (versions_of(&st) == [V2] && st.active_version == V2).then_some(())
        })
        .await;
    }
    assert!(
        t0.elapsed() < Duration::from_secs(22),
        "the steps took {:?}, longer than the load test",
        t0.elapsed()
    );
    let s = tokio::task::spawn_blocking(move || summary(lt))
        .await
        .unwrap();
    eprintln!("load through the router Service: {s}");
    assert_eq!(s["failed"], 0, "{s}");
    let (a1, a2) = (&s["versions"][V1], &s["versions"][V2]);
    assert!(a1["answers"].as_u64().unwrap_or(0) > 0, "{s}");
    assert!(a2["answers"].as_u64().unwrap_or(0) > 0, "{s}");
    assert!(
        a1["max_id"].as_u64().unwrap() < 1_000_000,
        "{V1} answered with a {V2} id: {s}"
    );
    assert!(
        a2["min_id"].as_u64().unwrap() >= 1_000_000,
        "{V2} answered with a {V1} id: {s}"
    );
    env.stop().await;
}

/// Writes the status as the operator would: `versions` newest first, each with 2 shards.
async fn set_status(api: &Api<VectorIndex>, versions: &[(&str, &str)], active: &str) {
    let versions: Vec<Value> = versions
        .iter()
        .map(|(name, phase)| json!({"name": name, "phase": phase, "shards": 2}))
        .collect();
    api.patch_status(
        INDEX,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"versions": versions, "activeVersion": active}})),
    )
    .await
    .unwrap();
}

/// Read-only access for the node pods: their VectorIndex and the shard pods.
async fn rbac(env: &TestCluster) {
    let pp = PostParams::default();
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": SERVICE_ACCOUNT}})).unwrap();
    env.api::<ServiceAccount>().create(&pp, &sa).await.unwrap();
    let role: Role = serde_json::from_value(json!({"metadata": {"name": SERVICE_ACCOUNT},
        "rules": [{"apiGroups": ["quiver.dev"], "resources": ["vectorindexes"], "verbs": ["get", "list", "watch"]},
                  {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]}))
    .unwrap();
    env.api::<Role>().create(&pp, &role).await.unwrap();
    let rb: RoleBinding = serde_json::from_value(json!({"metadata": {"name": SERVICE_ACCOUNT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SERVICE_ACCOUNT},
        "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": env.ns}]}))
    .unwrap();
    env.api::<RoleBinding>().create(&pp, &rb).await.unwrap();
}

fn node_container(role: &str, storage: &str, extra_env: Value, port_name: &str) -> Value {
    let mut envs = vec![
        json!({"name": quiver_api::env::INDEX, "value": INDEX}),
        json!({"name": quiver_api::env::NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
        json!({"name": quiver_api::env::POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": quiver_api::env::LISTEN_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        json!({"name": quiver_api::env::STORAGE, "value": storage}),
        json!({"name": quiver_api::env::WORKER_THREADS, "value": "1"}),
        json!({"name": "RUST_LOG", "value": "info"}),
    ];
    if let Value::Array(more) = extra_env {
        envs.extend(more);
    }
    json!({"name": "node", "image": "quiver.example/index-node:test",
        "args": ["serve", "--role", role, "--kube", "--shutdown-delay-ms", "500", "--max-k", "100"],
        "env": envs,
        "ports": [{"name": port_name, "containerPort": ports::GRPC},
                  {"name": ports::METRICS_NAME, "containerPort": ports::METRICS}],
        "readinessProbe": {"httpGet": {"path": ports::READINESS_PATH, "port": ports::METRICS_NAME},
                           "periodSeconds": 1, "failureThreshold": 1},
        "livenessProbe": {"httpGet": {"path": ports::LIVENESS_PATH, "port": ports::METRICS_NAME},
                          "periodSeconds": 2, "failureThreshold": 5}})
}

async fn shard_statefulset(env: &TestCluster, shard: u32, storage: &str) {
    let name = format!("{INDEX}-shard-{shard}");
    let pod_labels = labels::for_shard(INDEX, shard);
    let headless: Service = serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"clusterIP": "None", "selector": pod_labels,
                 "ports": [{"name": ports::SHARD_NAME, "port": ports::SHARD}]}}))
    .unwrap();
    env.api::<Service>()
        .create(&PostParams::default(), &headless)
        .await
        .unwrap();
    let container = node_container(
        "shard",
        storage,
        json!([{"name": quiver_api::env::SHARD, "value": shard.to_string()}]),
        ports::SHARD_NAME,
    );
    let sts: StatefulSet = serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"replicas": 2, "serviceName": name, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": pod_labels},
            "template": {"metadata": {"labels": pod_labels},
                "spec": {"serviceAccountName": SERVICE_ACCOUNT, "terminationGracePeriodSeconds": 5,
                         "readinessGates": [{"conditionType": GATE}], "containers": [container]}}}}))
    .unwrap();
    env.api::<StatefulSet>()
        .create(&PostParams::default(), &sts)
        .await
        .unwrap();
}

async fn router(env: &TestCluster, storage: &str) {
    let pod_labels = labels::for_role(INDEX, NodeRole::Router);
    let container = node_container("router", storage, json!([]), ports::QUERY_NAME);
    let deploy: Deployment =
        serde_json::from_value(json!({"metadata": {"name": format!("{INDEX}-router")},
        "spec": {"replicas": 1, "selector": {"matchLabels": pod_labels},
            "template": {"metadata": {"labels": pod_labels},
                "spec": {"serviceAccountName": SERVICE_ACCOUNT, "terminationGracePeriodSeconds": 5,
                         "containers": [container]}}}}))
        .unwrap();
    env.api::<Deployment>()
        .create(&PostParams::default(), &deploy)
        .await
        .unwrap();
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": INDEX},
        "spec": {"selector": pod_labels,
                 "ports": [{"name": ports::QUERY_NAME, "port": ports::QUERY, "targetPort": ports::QUERY_NAME}]}}))
    .unwrap();
    env.api::<Service>()
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
}

/// Where this machine reaches the router Service (its ClusterIP, through the node's proxy).
async fn service_address(env: &TestCluster) -> SocketAddr {
    eventually(30, "the router Service's address", || async {
        let addrs = quiver_e2e::proxy::service_addresses(&env.client, &env.dir, &env.ns, INDEX)
            .await
            .ok()?;
        addrs
            .into_iter()
            .find(|(name, _)| name == ports::QUERY_NAME)
            .map(|(_, a)| a)
    })
    .await
}

fn condition(p: &Pod, ty: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| c.status.clone())
}

async fn set_gate(pods: &Api<Pod>, name: &str, on: bool) {
    let status = if on { "True" } else { "False" };
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": {"conditions": [{"type": GATE, "status": status}]}})),
    )
    .await
    .unwrap();
}

async fn admin_status(ip: &str) -> quiver_proto::StatusResponse {
    let mut admin = AdminClient::connect(format!("http://{ip}:{}", ports::ADMIN))
        .await
        .unwrap();
    admin.status(StatusRequest {}).await.unwrap().into_inner()
}

/// The versions a node holds, sorted.
fn versions_of(st: &quiver_proto::StatusResponse) -> Vec<String> {
    let mut v: Vec<String> = st.versions.iter().map(|v| v.version.clone()).collect();
    v.sort();
    v
}

/// Query vectors a shard has answered (its `quiver_query_duration_seconds` count). Panics
/// when the figure is missing, so a renamed metric cannot make the checks above pass
/// vacuously.
async fn shard_queries(ip: &str) -> u64 {
    let addr = format!("{ip}:{}", ports::METRICS);
    let text = {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || common::http_get(&addr, ports::METRICS_PATH))
            .await
            .unwrap()
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    text.lines()
        .filter(|l| l.starts_with("quiver_query_duration_seconds_count"))
        .find_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no quiver_query_duration_seconds_count at {addr}/metrics"))
}
