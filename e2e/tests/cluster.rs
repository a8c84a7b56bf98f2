//! Controllers and the process kubelet, end to end, with `quiver-testpod` as the container.
//! By default each test runs the whole stand-in in-process. With QUIVER_E2E_KUBECONFIG the
//! tests use that cluster's API server and controller manager and attach only a process
//! kubelet (and Service proxy), limited to the test's namespace, as a node of their own.

mod common;

use std::time::Duration;

use common::{bounded, eventually};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use quiver_e2e::testing::TestCluster;
use serde_json::{Value, json};

type Env = TestCluster;

async fn start() -> Env {
    let images = [(
        "testpod".to_string(),
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_quiver-testpod")),
    )];
    TestCluster::start(images.into()).await.expect("cluster")
}

fn serving_container(ready_after_ms: u64) -> Value {
    json!({"name": "web", "image": "registry.example/testpod:1", "args": ["serve", "8080", ready_after_ms.to_string()],
           "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                   {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
           "ports": [{"name": "http", "containerPort": 8080}],
           "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
           "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 3}})
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
async fn pod_serves_readiness_then_terminates_on_delete() {
    bounded(90, async {
        let env = start().await;
        let pods: Api<Pod> = env.api();
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"terminationGracePeriodSeconds": 5, "containers": [serving_container(1500)]}})).expect("pod");
        pods.create(&PostParams::default(), &pod).await.expect("create");
        let p = eventually(30, "pod running", || async {
            let p = pods.get("web").await.ok()?;
            (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
        })
        .await;
        assert!(!ready(&p) || p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).is_some(), "status written");
        assert_eq!(p.spec.as_ref().and_then(|s| s.node_name.clone()).as_deref(), Some(env.node_name.as_str()), "bound to the kubelet's node");
        let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("pod ip");
        assert!(ip.starts_with("127.") && ip != "127.0.0.1", "pod IP {ip}");
        let p = eventually(30, "pod ready", || async {
            let p = pods.get("web").await.ok()?;
            ready(&p).then_some(p)
        })
        .await;
        let cs = &p.status.as_ref().and_then(|s| s.container_statuses.clone()).expect("container statuses")[0];
        assert!(cs.ready && cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some());
        let resp = tokio::net::TcpStream::connect((ip.as_str(), 8080)).await;
        assert!(resp.is_ok(), "the container listens on its pod IP");
        let log = quiver_e2e::kubelet::read_logs(&env.dir.join("pods"), &env.ns, "web", None).expect("log");
        assert!(log.contains(&format!("listening on {ip}:8080")), "log: {log}");

        let rv = p.resource_version().unwrap_or_default();
        let mut events = pods
            .watch(&WatchParams::default().fields("metadata.name=web"), &rv)
            .await
            .expect("watch")
            .boxed();
        pods.delete("web", &DeleteParams::default()).await.expect("delete");
        let mut last = None;
        while let Some(ev) = events.try_next().await.expect("watch event") {
            match ev {
                WatchEvent::Modified(p) => last = Some(p),
                WatchEvent::Deleted(_) => break,
                _ => {}
            }
        }
        let last = last.expect("status written while terminating");
        let cs = &last.status.as_ref().and_then(|s| s.container_statuses.clone()).expect("container statuses")[0];
        assert_eq!(cs.restart_count, 0, "a container stopped for deletion is not a restart");
        assert!(cs.state.as_ref().and_then(|s| s.terminated.as_ref()).is_some(), "terminated state: {cs:?}");
        eventually(30, "pod removed after graceful stop", || async { pods.get_opt("web").await.ok()?.is_none().then_some(()) }).await;
        env.stop().await;
    })
    .await;
}

fn condition_of<'a>(p: &'a Pod, ty: &str) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == ty))
}

/// `spec.readinessGates`: the pod is Ready only while every gate's condition (set by someone
/// else through the status subresource) is True; the kubelet's own status writes leave
/// those conditions alone.
#[tokio::test]
async fn readiness_gates_hold_ready_until_their_condition_is_true() {
    bounded(90, async {
        let env = start().await;
        let pods: Api<Pod> = env.api();
        const GATE: &str = "example.com/in-rotation";
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "gated"},
            "spec": {"readinessGates": [{"conditionType": GATE}], "containers": [serving_container(0)]}}))
        .expect("pod");
        pods.create(&PostParams::default(), &pod).await.expect("create");
        let p = eventually(30, "containers ready", || async {
            let p = pods.get("gated").await.ok()?;
            (condition_of(&p, "ContainersReady")?.status == "True").then_some(p)
        })
        .await;
        assert!(!ready(&p), "Ready without its gate: {:?}", p.status);
        let set_gate = |on: bool| {
            let pods = pods.clone();
            async move {
                let status = if on { "True" } else { "False" };
                pods.patch_status(
                    "gated",
                    &PatchParams::default(),
                    &Patch::Strategic(json!({"status": {"conditions": [{"type": GATE, "status": status}]}})),
                )
                .await
                .expect("patch gate");
            }
        };
        set_gate(true).await;
        eventually(10, "Ready once the gate is True", || async {
            pods.get("gated").await.ok().filter(ready).map(|_| ())
        })
        .await;
        // Let a few kubelet status writes happen: the gate's condition stays.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let p = pods.get("gated").await.expect("pod");
        assert_eq!(condition_of(&p, GATE).map(|c| c.status.as_str()), Some("True"));
        assert!(ready(&p));
        set_gate(false).await;
        let p = eventually(10, "not Ready once the gate is False", || async {
            pods.get("gated").await.ok().filter(|p| !ready(p))
        })
        .await;
        let ready_cond = condition_of(&p, "Ready").expect("Ready condition");
        assert_eq!(ready_cond.reason.as_deref(), Some("ReadinessGatesNotReady"));
        assert_eq!(condition_of(&p, "ContainersReady").map(|c| c.status.as_str()), Some("True"));
        let restarts = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs[0].restart_count);
        assert_eq!(restarts, Some(0), "a gate does not touch the container");
        env.stop().await;
    })
    .await;
}

#[tokio::test]
async fn killed_container_is_restarted() {
    bounded(90, async {
        let env = start().await;
        let pods: Api<Pod> = env.api();
        let pod: Pod = serde_json::from_value(
            json!({"metadata": {"name": "victim"}, "spec": {"containers": [serving_container(0)]}}),
        )
        .expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create");
        let pid = eventually(30, "pod ready", || async {
            let p = pods.get("victim").await.ok()?;
            let id = p.status.as_ref()?.container_statuses.as_ref()?[0]
                .container_id
                .clone()?;
            ready(&p)
                .then(|| {
                    id.trim_start_matches("quiver-process://")
                        .parse::<i32>()
                        .ok()
                })
                .flatten()
        })
        .await;
        // SAFETY: kill(2) on the test's own child process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let cs = eventually(30, "container restarted", || async {
            let p = pods.get("victim").await.ok()?;
            let cs = p.status.as_ref()?.container_statuses.as_ref()?[0].clone();
            (cs.restart_count >= 1 && cs.state.as_ref()?.running.is_some()).then_some(cs)
        })
        .await;
        let last = cs
            .last_state
            .and_then(|s| s.terminated)
            .expect("last state");
        assert_eq!(last.exit_code, 137, "killed by SIGKILL");
        eventually(30, "ready again", || async {
            ready(&pods.get("victim").await.ok()?).then_some(())
        })
        .await;
        env.stop().await;
    })
    .await;
}

fn job(
    name: &str,
    code: i32,
    completions: i32,
    parallelism: i32,
    backoff: i32,
    indexed: bool,
) -> Job {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
        "completions": completions, "parallelism": parallelism, "backoffLimit": backoff,
        "completionMode": if indexed { "Indexed" } else { "NonIndexed" },
        "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "testpod", "args": ["exit", code.to_string(), "100"],
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]}}}}))
    .expect("job")
}

fn condition(j: &Job, ty: &str) -> bool {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == ty && c.status == "True"))
}

#[tokio::test]
async fn jobs_complete_fail_and_index() {
    bounded(120, async {
        let env = start().await;
        let jobs: Api<Job> = env.api();
        jobs.create(&PostParams::default(), &job("ok", 0, 3, 2, 2, false))
            .await
            .expect("ok job");
        jobs.create(&PostParams::default(), &job("bad", 1, 1, 1, 1, false))
            .await
            .expect("bad job");
        jobs.create(&PostParams::default(), &job("idx", 0, 3, 3, 1, true))
            .await
            .expect("indexed job");
        let ok = eventually(60, "job ok complete", || async {
            jobs.get("ok")
                .await
                .ok()
                .filter(|j| condition(j, "Complete"))
        })
        .await;
        assert_eq!(ok.status.as_ref().and_then(|s| s.succeeded), Some(3));
        let bad = eventually(60, "job bad failed", || async {
            jobs.get("bad")
                .await
                .ok()
                .filter(|j| condition(j, "Failed"))
        })
        .await;
        assert!(
            bad.status.as_ref().and_then(|s| s.failed).unwrap_or(0) >= 2,
            "backoffLimit 1 allows two failures"
        );
        assert!(!condition(&bad, "Complete"));
        let idx = eventually(60, "indexed job complete", || async {
            jobs.get("idx")
                .await
                .ok()
                .filter(|j| condition(j, "Complete"))
        })
        .await;
        assert_eq!(
            idx.status
                .as_ref()
                .and_then(|s| s.completed_indexes.clone())
                .as_deref(),
            Some("0-2")
        );
        let pods: Api<Pod> = env.api();
        let mut seen = Vec::new();
        for p in pods
            .list(&ListParams::default().labels("batch.kubernetes.io/job-name=idx"))
            .await
            .expect("pods")
            .items
        {
            let i = p
                .annotations()
                .get("batch.kubernetes.io/job-completion-index")
                .cloned()
                .expect("index annotation");
            let log =
                quiver_e2e::kubelet::read_logs(&env.dir.join("pods"), &env.ns, &p.name_any(), None)
                    .expect("log");
            assert!(log.contains(&format!("JOB_COMPLETION_INDEX={i}")), "{log}");
            seen.push(i);
        }
        seen.sort();
        assert_eq!(seen, ["0", "1", "2"]);
        env.stop().await;
    })
    .await;
}

fn sts(replicas: i32, policy: &str, ready_after_ms: u64) -> StatefulSet {
    serde_json::from_value(json!({"metadata": {"name": "db"}, "spec": {
        "replicas": replicas, "serviceName": "db", "podManagementPolicy": policy,
        "selector": {"matchLabels": {"app": "db"}},
        "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"terminationGracePeriodSeconds": 2, "containers": [
            {"volumeMounts": [{"name": "data", "mountPath": "/data"}], "name": "web", "image": "testpod", "args": ["serve", "8080", ready_after_ms.to_string()],
             "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
             "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1}}]}},
        "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}))
    .expect("sts")
}

async fn ready_pods(pods: &Api<Pod>) -> Vec<String> {
    let mut v: Vec<String> = pods
        .list(&ListParams::default().labels("app=db"))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .iter()
        .filter(|p| ready(p) && p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn statefulset_scales_up_and_down_in_order() {
    bounded(150, async {
        let env = start().await;
        let sets: Api<StatefulSet> = env.api();
        let pods: Api<Pod> = env.api();
        sets.create(&PostParams::default(), &sts(2, "OrderedReady", 0))
            .await
            .expect("sts");
        eventually(60, "two ready pods", || async {
            (ready_pods(&pods).await == ["db-0", "db-1"]).then_some(())
        })
        .await;
        let pvcs: Api<PersistentVolumeClaim> = env.api();
        assert!(
            pvcs.get_opt("data-db-0").await.expect("pvc").is_some()
                && pvcs.get_opt("data-db-1").await.expect("pvc").is_some()
        );
        let s = eventually(30, "status counts", || async {
            sets.get("db")
                .await
                .ok()
                .filter(|s| s.status.as_ref().and_then(|s| s.ready_replicas) == Some(2))
        })
        .await;
        assert_eq!(s.status.map(|s| s.replicas), Some(2));

        // A deleted pod comes back under the same name, with the same PVC directory.
        let marker = env
            .dir
            .join("pods")
            .join("pvc")
            .join(&env.ns)
            .join("data-db-1")
            .join("marker");
        std::fs::write(&marker, "kept").expect("write into the PVC directory");
        pods.delete("db-1", &DeleteParams::default())
            .await
            .expect("delete pod");
        eventually(60, "db-1 recreated", || async {
            let p = pods.get_opt("db-1").await.ok()??;
            (ready(&p) && p.metadata.deletion_timestamp.is_none()).then_some(())
        })
        .await;
        assert_eq!(std::fs::read_to_string(&marker).expect("marker"), "kept");

        sets.patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("scale up");
        eventually(60, "three ready pods", || async {
            (ready_pods(&pods).await == ["db-0", "db-1", "db-2"]).then_some(())
        })
        .await;
        sets.patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .expect("scale down");
        eventually(60, "one pod left", || async {
            let all = pods
                .list(&ListParams::default().labels("app=db"))
                .await
                .ok()?;
            (all.items.len() == 1 && all.items[0].name_any() == "db-0").then_some(())
        })
        .await;
        eventually(30, "status scaled down", || async {
            sets.get("db")
                .await
                .ok()
                .filter(|s| s.status.as_ref().map(|s| s.replicas) == Some(1))
        })
        .await;
        env.stop().await;
    })
    .await;
}

#[tokio::test]
async fn statefulset_pod_management_policies() {
    bounded(150, async {
        let env = start().await;
        let sets: Api<StatefulSet> = env.api();
        let pods: Api<Pod> = env.api();
        // OrderedReady: db-1 is created only once db-0 is ready (pods turn ready after 2 s).
        sets.create(&PostParams::default(), &sts(2, "OrderedReady", 2000))
            .await
            .expect("sts");
        eventually(60, "db-1 created", || async {
            pods.get_opt("db-1").await.ok()?
        })
        .await;
        let p0 = pods.get("db-0").await.expect("db-0");
        assert!(ready(&p0), "db-1 was created before db-0 was ready");
        sets.delete("db", &DeleteParams::background())
            .await
            .expect("delete sts");
        eventually(60, "pods gone", || async {
            let l = pods
                .list(&ListParams::default().labels("app=db"))
                .await
                .ok()?;
            l.items.is_empty().then_some(())
        })
        .await;
        // Parallel: every pod is created at once, none waits for another to be ready.
        sets.create(&PostParams::default(), &sts(3, "Parallel", 4000))
            .await
            .expect("parallel sts");
        let created = eventually(30, "three pods", || async {
            let l = pods
                .list(&ListParams::default().labels("app=db"))
                .await
                .ok()?;
            (l.items.len() == 3).then_some(l.items)
        })
        .await;
        assert!(
            created.iter().all(|p| !ready(p)),
            "Parallel created a pod only after another was ready"
        );
        eventually(60, "three ready pods", || async {
            (ready_pods(&pods).await == ["db-0", "db-1", "db-2"]).then_some(())
        })
        .await;
        env.stop().await;
    })
    .await;
}

#[tokio::test]
async fn deployment_rolls_to_a_new_template() {
    bounded(150, async {
        let env = start().await;
        let deps: Api<Deployment> = env.api();
        let pods: Api<Pod> = env.api();
        let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"terminationGracePeriodSeconds": 2, "containers": [serving_container(0)]}}}}))
        .expect("deployment");
        deps.create(&PostParams::default(), &d).await.expect("create");
        let first_hash = eventually(60, "deployment available", || async {
            let d = deps.get("web").await.ok()?;
            let s = d.status.as_ref()?;
            (s.ready_replicas == Some(2) && s.updated_replicas == Some(2)).then_some(())?;
            let p = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
            p.items.first()?.labels().get("pod-template-hash").cloned()
        })
        .await;
        deps.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {"rev": "2"}}}}}))).await.expect("new template");
        eventually(90, "rolled out", || async {
            let d = deps.get("web").await.ok()?;
            let s = d.status.as_ref()?;
            let live: Vec<Pod> = pods.list(&ListParams::default().labels("app=web")).await.ok()?.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
            let all_new = live.len() == 2 && live.iter().all(|p| p.labels().get("pod-template-hash") != Some(&first_hash) && ready(p));
            (all_new && s.updated_replicas == Some(2) && s.ready_replicas == Some(2) && s.replicas == Some(2)).then_some(())
        })
        .await;
        let sets: Api<ReplicaSet> = env.api();
        let rs = sets.list(&ListParams::default()).await.expect("replicasets").items;
        assert_eq!(rs.len(), 2);
        let old = rs.iter().find(|r| r.labels().get("pod-template-hash") == Some(&first_hash)).expect("old rs");
        assert_eq!(old.spec.replicas, Some(0));
        env.stop().await;
    })
    .await;
}

#[tokio::test]
async fn pod_reads_the_api_with_in_cluster_config_and_its_own_token() {
    bounded(120, async {
        let env = start().await;
        // The account may read pods, nothing else (a real cluster enforces it).
        let rbac = [
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
                   "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "pod-reader"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                   "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": env.ns}]}),
        ];
        for obj in rbac {
            let ar = kube::discovery::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
                obj["apiVersion"].as_str().and_then(|a| a.split_once('/')).map(|(g, _)| g).unwrap_or(""),
                "v1",
                obj["kind"].as_str().unwrap_or_default(),
            ));
            let api: Api<kube::api::DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &ar);
            let o: kube::api::DynamicObject = serde_json::from_value(obj).expect("object");
            api.create(&PostParams::default(), &o).await.expect("create RBAC object");
        }
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "whoami"}, "spec": {
            "serviceAccountName": "reader", "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "testpod", "args": ["whoami"],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]}}))
        .expect("pod");
        let pods: Api<Pod> = env.api();
        let created = pods.create(&PostParams::default(), &pod).await.expect("create pod");
        // Admission gave it the projected service-account volume.
        let spec = created.spec.as_ref().expect("spec");
        assert!(
            spec.volumes.iter().flatten().any(|v| v.name.starts_with("kube-api-access-") && v.projected.is_some()),
            "kube-api-access volume: {:?}",
            spec.volumes
        );
        let phase = eventually(60, "whoami pod finished", || async {
            let p = pods.get("whoami").await.ok()?;
            let phase = p.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        })
        .await;
        let log = quiver_e2e::kubelet::read_logs(&env.dir.join("pods"), &env.ns, "whoami", Some("main"))
            .expect("log");
        assert_eq!(phase, "Succeeded", "{log}");
        assert!(log.contains(&format!("user=system:serviceaccount:{}:reader", env.ns)), "{log}");
        assert!(log.contains(&format!("namespace={}", env.ns)), "{log}");
        assert!(log.contains(&format!("pod-uid={}", created.uid().expect("uid"))), "{log}");
        env.stop().await;
    })
    .await;
}

/// One HTTP/1.1 GET (Connection: close): status code and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no HTTP status in {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    };
    tokio::time::timeout(Duration::from_secs(3), io)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// A Deployment of `replicas` serving testpods behind the Service `web` (port 80 → `http`).
async fn web_service(env: &Env, replicas: i32) {
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"terminationGracePeriodSeconds": 2, "containers": [serving_container(0)]}}}}))
    .expect("deployment");
    env.api::<Deployment>()
        .create(&PostParams::default(), &d)
        .await
        .expect("deployment");
    let s: Service = serde_json::from_value(
        json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    )
    .expect("service");
    env.api::<Service>()
        .create(&PostParams::default(), &s)
        .await
        .expect("service");
}

/// The endpoints of Service `web` by pod name: (address, ready).
async fn web_endpoints(env: &Env) -> Vec<(String, String, bool)> {
    let slices = env
        .api::<EndpointSlice>()
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let mut out: Vec<(String, String, bool)> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter_map(|e| {
            Some((
                e.target_ref.as_ref()?.name.clone()?,
                e.addresses.first()?.clone(),
                e.conditions.as_ref()?.ready?,
            ))
        })
        .collect();
    out.sort();
    out
}

async fn all_ready_endpoints(env: &Env, n: usize) -> Vec<(String, String, bool)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let eps = web_endpoints(env).await;
        if eps.len() == n && eps.iter().all(|e| e.2) {
            return eps;
        }
        if std::time::Instant::now() > deadline {
            let pods: Vec<(String, Option<String>, bool)> = env
                .api::<Pod>()
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    (
                        p.name_any(),
                        p.status.as_ref().and_then(|s| s.pod_ip.clone()),
                        ready(p),
                    )
                })
                .collect();
            panic!("timed out waiting for {n} ready endpoints: {eps:?}; pods {pods:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn endpointslices_follow_readiness_of_running_pods() {
    bounded(120, async {
        let env = start().await;
        web_service(&env, 2).await;
        let eps = all_ready_endpoints(&env, 2).await;
        let (pod, ip, _) = eps[0].clone();
        let direct: std::net::SocketAddr = format!("{ip}:8080").parse().expect("pod address");
        assert_eq!(
            http_get(direct, "/readiness/off").await.expect("flip").0,
            200
        );
        let t = std::time::Instant::now();
        eventually(10, "endpoint not ready", || async {
            web_endpoints(&env)
                .await
                .iter()
                .any(|e| e.0 == pod && !e.2)
                .then_some(())
        })
        .await;
        // The probe runs every second; the slice follows the pod's Ready condition.
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );
        assert!(
            web_endpoints(&env).await.iter().any(|e| e.0 != pod && e.2),
            "the other pod stays ready"
        );
        assert_eq!(
            http_get(direct, "/readiness/on").await.expect("flip").0,
            200
        );
        let t = std::time::Instant::now();
        eventually(10, "endpoint ready again", || async {
            web_endpoints(&env)
                .await
                .iter()
                .any(|e| e.0 == pod && e.2)
                .then_some(())
        })
        .await;
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );
        env.stop().await;
    })
    .await;
}

#[tokio::test]
async fn service_cluster_ip_reaches_only_ready_pods() {
    use std::time::Instant;
    bounded(150, async {
        let env = start().await;
        web_service(&env, 3).await;
        let eps = all_ready_endpoints(&env, 3).await;
        let pods: Vec<String> = eps.iter().map(|e| e.0.clone()).collect();
        let svc = env.api::<Service>().get("web").await.expect("service");
        let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).expect("clusterIP");
        let addrs = quiver_e2e::proxy::service_addresses(&env.client, &env.dir, &env.ns, "web")
            .await
            .expect("service address");
        assert_eq!(addrs.len(), 1, "{addrs:?}");
        let (port_name, addr) = addrs[0].clone();
        assert_eq!((port_name.as_str(), addr.port()), ("http", 80));
        if cluster_ip.starts_with("127.") {
            assert_eq!(
                addr.ip().to_string(),
                cluster_ip,
                "the proxy listens on the clusterIP itself"
            );
        }
        // Async: the API server runs on this test's runtime.
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver-local"))
            .args(["--state-dir"])
            .arg(&env.dir)
            .args(["service", "web", "-n", &env.ns])
            .args(env.kubeconfig_args())
            .output()
            .await
            .expect("quiver-local service");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.trim(), format!("{addr} http"));
        let headless: Service = serde_json::from_value(json!({"metadata": {"name": "hl"}, "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 80}]}}))
            .expect("service");
        env.api::<Service>().create(&PostParams::default(), &headless).await.expect("headless");
        for (svc, why) in [("hl", "headless"), ("missing", "not found")] {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiver-local"))
                .args(["--state-dir"])
                .arg(&env.dir)
                .args(["service", svc, "-n", &env.ns])
                .args(env.kubeconfig_args())
                .output()
                .await
                .expect("quiver-local service");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && stderr.contains(why), "{svc}: {stderr}");
        }
        eventually(20, "the proxy answers", || async {
            http_get(addr, "/name")
                .await
                .ok()
                .filter(|r| r.0 == 200)
                .map(|_| ())
        })
        .await;

        // When each pod's Ready condition changed, as a client of the API sees it.
        let transitions =
            std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Instant, bool)>::new()));
        let pod_api: Api<Pod> = env.api();
        let list = pod_api
            .list(&ListParams::default().labels("app=web"))
            .await
            .expect("pods");
        let watch = {
            let (transitions, pod_api) = (transitions.clone(), pod_api.clone());
            let rv = list.metadata.resource_version.clone().unwrap_or_default();
            tokio::spawn(async move {
                let mut events = pod_api
                    .watch(&WatchParams::default().labels("app=web"), &rv)
                    .await
                    .expect("watch")
                    .boxed();
                while let Ok(Some(ev)) = events.try_next().await {
                    if let WatchEvent::Modified(p) = ev {
                        transitions.lock().expect("lock").push((
                            p.name_any(),
                            Instant::now(),
                            ready(&p),
                        ));
                    }
                }
            })
        };
        // Flip one pod at a time off for 2.5 s, so at least one is always Ready.
        let flips = {
            let eps = eps.clone();
            tokio::spawn(async move {
                let mut flips = Vec::new();
                for (pod, ip, _) in eps {
                    let direct: std::net::SocketAddr =
                        format!("{ip}:8080").parse().expect("pod address");
                    let off = Instant::now();
                    assert_eq!(
                        http_get(direct, "/readiness/off").await.expect("off").0,
                        200
                    );
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    assert_eq!(http_get(direct, "/readiness/on").await.expect("on").0, 200);
                    flips.push((pod, off, Instant::now()));
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                }
                flips
            })
        };
        type Answer = (Instant, Result<(u16, String), String>);
        let mut answers: Vec<Answer> = Vec::new();
        while !flips.is_finished() {
            let t = Instant::now();
            answers.push((t, http_get(addr, "/name").await));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let flips = flips.await.expect("flipper");
        watch.abort();
        let transitions = transitions.lock().expect("lock").clone();
        // Not-Ready intervals per pod, from the watch.
        let mut not_ready: Vec<(String, Instant, Option<Instant>)> = Vec::new();
        for (pod, t, is_ready) in &transitions {
            let open = not_ready
                .iter_mut()
                .rev()
                .find(|(p, _, end)| p == pod && end.is_none());
            match (open, is_ready) {
                (Some(iv), true) => iv.2 = Some(*t),
                (None, false) => not_ready.push((pod.clone(), *t, None)),
                _ => {}
            }
        }
        for p in &pods {
            assert!(
                not_ready.iter().any(|iv| &iv.0 == p),
                "{p} was never seen not Ready: {transitions:?}"
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (t, r) in &answers {
            let (code, who) = r
                .as_ref()
                .unwrap_or_else(|e| panic!("a request failed while pods were Ready: {e}"));
            assert_eq!(*code, 200);
            assert!(pods.contains(who), "answer from {who:?}");
            seen.insert(who.clone());
            for (p, since, until) in &not_ready {
                let late = *since + Duration::from_secs(1);
                assert!(
                    !(p == who && *t > late && until.is_none_or(|u| *t < u)),
                    "{who} answered {:?} after the API showed it not Ready",
                    *t - *since
                );
            }
            for (p, off, on) in &flips {
                // The readiness probe runs every second: 1 s to notice, 1 s to follow.
                let late = *off + Duration::from_secs(2);
                assert!(
                    !(p == who && *t > late && *t < *on),
                    "{who} answered {:?} after its readiness was switched off",
                    *t - *off
                );
            }
        }
        assert_eq!(seen.len(), 3, "round robin reaches every pod: {seen:?}");
        assert!(answers.len() > 100, "only {} requests", answers.len());
        env.stop().await;
    })
    .await;
}

/// A pod bound to a node that does not exist (its node left for good) is force-deleted by
/// the controller manager's pod GC after its quarantine (40 s, re-checked every 20 s), so a
/// namespace holding it can finish terminating.
#[tokio::test]
async fn pods_of_a_gone_node_are_garbage_collected() {
    bounded(150, async {
        let env = start().await;
        let pods: Api<Pod> = env.api();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "orphan"},
            "spec": {"nodeName": "a-node-that-left", "containers": [{"name": "c", "image": "registry.example/testpod:1"}]}
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod).await.expect("create");
        pods.delete("orphan", &DeleteParams::default()).await.expect("delete");
        // Graceful deletion waits for a kubelet that will never come...
        tokio::time::sleep(Duration::from_secs(2)).await;
        let held = pods.get_opt("orphan").await.expect("get");
        assert!(
            held.is_some_and(|p| p.metadata.deletion_timestamp.is_some()),
            "a bound pod is deleted gracefully (its kubelet confirms)"
        );
        // ...until pod GC force-deletes it.
        eventually(120, "the orphaned pod gone", || async {
            matches!(pods.get_opt("orphan").await, Ok(None)).then_some(())
        })
        .await;
        env.stop().await;
    })
    .await;
}
