//! The write-nothing-when-idle rule, against a mocked API server (kube's `tower-test`
//! pattern): a Ready index whose children, Jobs and pods are all as planned. The first
//! reconcile may write the status it computes (the fixture's status has no conditions); fed
//! that status back, the second reconcile must make only reads. Every request is checked.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Resource};
use quiver_api::VectorIndex;
use quiver_api::keys::labels;
use quiver_operator::apply::{APPLIED_HASH, applied_hash};
use quiver_operator::children::{self, ChildConfig, Children};
use quiver_operator::controller::{Context, reconcile};
use quiver_operator::metrics::Metrics;
use quiver_operator::spec_hash::spec_hash;
use serde_json::{Value, json};

const NS: &str = "search";
const V1: &str = "v1-7f3a9c2e";

fn index(status: Option<Value>) -> VectorIndex {
    let mut v = json!({
        "apiVersion": "quiver.dev/v1alpha1", "kind": "VectorIndex",
        "metadata": {"name": "docs", "namespace": NS, "generation": 1,
                     "resourceVersion": "10",
                     "uid": "7f3a9c2e-0000-4000-8000-000000000001"},
        "spec": {"dimension": 32, "metric": "l2",
                 "index": {"nlist": 64, "quantizer": {"kind": "flat"}},
                 "source": {"synthetic": {"count": 10000, "seed": 7}},
                 "storage": {"uri": "file:///data"},
                 "shards": 2, "replicas": 2, "router": {"replicas": 2}},
    });
    let vi: VectorIndex = serde_json::from_value(v.clone()).unwrap();
    v["status"] = status.unwrap_or_else(|| {
        json!({"activeVersion": V1, "recall": 0.95, "versionCounter": 1,
               "versions": [{"name": V1, "phase": "Active", "specHash": spec_hash(&vi.spec),
                             "shards": 2, "recall": 0.95, "trigger": "create"}]})
    });
    serde_json::from_value(v).unwrap()
}

/// The live world: every child as the operator applies it (hash annotation included),
/// Ready pods, the active version's finished Jobs.
struct World {
    children: Children,
    pods: Vec<Value>,
    jobs: Vec<Value>,
}

fn annotated<K: serde::Serialize>(o: &K) -> Value {
    let mut v = serde_json::to_value(o).unwrap();
    v["metadata"]["annotations"] = json!({APPLIED_HASH: applied_hash(o)});
    v["metadata"]["resourceVersion"] = json!("5");
    v
}

fn world(vi: &VectorIndex) -> World {
    let children = children::build(
        vi,
        &ChildConfig {
            node_image: "index-node:test".into(),
        },
        &[],
    )
    .unwrap();
    let owner = vi.controller_owner_ref(&()).unwrap();
    let ready = json!({"phase": "Running", "podIP": "127.0.0.77",
                       "conditions": [{"type": "Ready", "status": "True"}]});
    let mut pods = Vec::new();
    for s in 0..2 {
        for r in 0..2 {
            pods.push(
                json!({"metadata": {"name": format!("docs-shard-{s}-{r}"), "namespace": NS,
                "labels": labels::for_shard("docs", s)}, "status": ready}),
            );
        }
    }
    for r in 0..2 {
        pods.push(
            json!({"metadata": {"name": format!("docs-router-{r}"), "namespace": NS,
            "labels": labels::for_role("docs", labels::Role::Router)}, "status": ready}),
        );
    }
    let jobs = ["train", "build"]
        .iter()
        .map(|step| {
            json!({"metadata": {"name": format!("docs-{V1}-{step}"), "namespace": NS,
                "labels": {labels::INDEX: "docs", labels::VERSION: V1},
                "ownerReferences": [owner]},
                "spec": {"template": {}},
                "status": {"conditions": [{"type": "Complete", "status": "True"}]}})
        })
        .collect();
    World {
        children,
        pods,
        jobs,
    }
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": "v1",
           "metadata": {"resourceVersion": "20"}, "items": items})
}

/// Answers reads from `world`; records every other request (and answers a status PUT with
/// what was sent).
async fn serve(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    world: World,
    writes: Arc<Mutex<Vec<(Method, String, Value)>>>,
) {
    let c = &world.children;
    while let Some((req, send)) = handle.next_request().await {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        let body: Value = body
            .collect()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b.to_bytes()).ok())
            .unwrap_or(Value::Null);
        let reply = if parts.method == Method::GET {
            let kind = path.rsplit('/').next().unwrap_or_default();
            match kind {
                "serviceaccounts" => list("ServiceAccount", vec![annotated(&c.service_account)]),
                "roles" => list("Role", vec![annotated(&c.role)]),
                "rolebindings" => list("RoleBinding", vec![annotated(&c.role_binding)]),
                "statefulsets" => list(
                    "StatefulSet",
                    c.shards.iter().map(|s| annotated(&s.statefulset)).collect(),
                ),
                "services" => list(
                    "Service",
                    std::iter::once(annotated(&c.query_service))
                        .chain(c.shards.iter().map(|s| annotated(&s.service)))
                        .collect(),
                ),
                "poddisruptionbudgets" => list(
                    "PodDisruptionBudget",
                    std::iter::once(annotated(&c.router_pdb))
                        .chain(c.shards.iter().map(|s| annotated(&s.pdb)))
                        .collect(),
                ),
                "deployments" => list("Deployment", vec![annotated(&c.router)]),
                "jobs" => list("Job", world.jobs.clone()),
                "pods" => list("Pod", world.pods.clone()),
                other => panic!("unexpected read of {other} ({path})"),
            }
        } else {
            writes
                .lock()
                .unwrap()
                .push((parts.method.clone(), path.clone(), body.clone()));
            body
        };
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
    }
}

async fn run_once(vi: VectorIndex) -> Vec<(Method, String, Value)> {
    let w = world(&vi);
    run(vi, w).await
}

/// One reconcile of `vi` against `world`; the requests that were not reads.
async fn run(vi: VectorIndex, world: World) -> Vec<(Method, String, Value)> {
    let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(mock, NS);
    let writes = Arc::new(Mutex::new(Vec::new()));
    let server = tokio::spawn(serve(handle, world, writes.clone()));
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "quiver-operator".into(),
            instance: None,
        },
    );
    // Load sampling asks router pods over gRPC, which this mocked API server has none of.
    let ctx = Arc::new(Context::new(
        client,
        ChildConfig {
            node_image: "index-node:test".into(),
        },
        std::time::Duration::from_secs(300),
        recorder,
        Arc::new(Metrics::new()),
        std::time::Duration::ZERO,
    ));
    reconcile(Arc::new(vi), ctx).await.unwrap();
    server.abort();
    writes.lock().unwrap().clone()
}

#[tokio::test]
async fn a_ready_index_at_rest_makes_no_write() {
    // First pass: the fixture status lacks conditions and counts, so the operator writes
    // exactly the status, nothing else.
    let first = run_once(index(None)).await;
    assert_eq!(first.len(), 1, "{first:#?}");
    let (method, path, body) = &first[0];
    assert_eq!(method, Method::PUT);
    assert!(path.ends_with("/vectorindexes/docs/status"), "{path}");
    assert_eq!(body["status"]["phase"], "Ready", "{body:#}");

    // Second pass with the stored status: reads only.
    let second = run_once(index(Some(body["status"].clone()))).await;
    assert!(second.is_empty(), "writes at rest: {second:#?}");
}

#[tokio::test]
async fn a_drifted_child_is_applied_again_and_only_it() {
    let vi = index(None);
    let status = run_once(vi.clone()).await[0].2["status"].clone();
    let vi = index(Some(status));
    // The router Deployment as something else left it (its hash no longer matches).
    let mut w = world(&vi);
    w.children.router.spec.replicas = Some(7);
    let writes = run(vi, w).await;
    assert_eq!(writes.len(), 1, "{writes:#?}");
    assert_eq!(writes[0].0, Method::PATCH);
    assert!(
        writes[0].1.ends_with("/deployments/docs-router"),
        "{}",
        writes[0].1
    );
    assert_eq!(writes[0].2["spec"]["replicas"], 2);
}
