//! What the operator suites share: the operator binary as a process with its own
//! ServiceAccount (the rules of operator/deploy/operator.yaml), a test index, waiting on its
//! status, and reaching its Service.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use quiver_api::v1alpha1::IndexPhase;
use quiver_api::{VectorIndex, ports};
use quiver_e2e::testing::{TestCluster, eventually, install_crd, workspace_bin};
use serde_json::{Value, json};

pub fn bins() -> (PathBuf, PathBuf) {
    (
        workspace_bin("quiver-operator").unwrap(),
        workspace_bin("index-node").unwrap(),
    )
}

/// The operator's ServiceAccount in the test namespace: it runs with the rules of the
/// ClusterRole in operator/deploy/operator.yaml (as a namespaced Role), so on a cluster that
/// enforces RBAC a missing verb fails the test, and the API server's audit of writes can
/// tell the operator's writes from everyone else's.
pub const OPERATOR_SA: &str = "quiver-operator";

pub struct Operator {
    pub child: Child,
}

/// Lease timing of the operators the tests start: short, so that a restarted operator
/// takes the lease of a killed one quickly.
pub const LEASE: [&str; 4] = ["--lease-duration-secs", "4", "--lease-grace-secs", "1"];

impl Operator {
    pub async fn start(env: &TestCluster, bin: &PathBuf) -> Self {
        Self::start_as(env, bin, "quiver-operator").await
    }

    /// One replica, `identity` its name in the leader Lease.
    pub async fn start_as(env: &TestCluster, bin: &PathBuf, identity: &str) -> Self {
        Self::start_with(env, bin, identity, &[]).await
    }

    /// [`Operator::start_as`] with `extra` flags.
    pub async fn start_with(
        env: &TestCluster,
        bin: &PathBuf,
        identity: &str,
        extra: &[&str],
    ) -> Self {
        let kubeconfig = operator_kubeconfig(env).await;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(env.dir.join("operator.log"))
            .unwrap();
        let child = Command::new(bin)
            .args(["--namespace", &env.ns, "--node-image", "index-node"])
            .args(["--http", "127.0.0.1:0"])
            .args(LEASE)
            // Short, so that a version that cannot load fails within a test.
            .args(["--warm-timeout-secs", "15"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("QUIVER_POD_NAME", identity)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Operator { child }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig})");
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ClusterRole rules the operator ships with.
pub fn operator_rules() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../operator/deploy/operator.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    docs.into_iter()
        .find(|d| d["kind"] == "ClusterRole")
        .map(|d| d["rules"].clone())
        .expect("a ClusterRole in operator/deploy/operator.yaml")
}

/// A kubeconfig that authenticates as the operator's ServiceAccount (a TokenRequest token).
pub async fn operator_kubeconfig(env: &TestCluster) -> PathBuf {
    let ns = &env.ns;
    let create = |v: Value| {
        let client = env.client.clone();
        async move {
            let gvk = (
                v["apiVersion"].as_str().unwrap().to_string(),
                v["kind"].as_str().unwrap().to_string(),
            );
            let obj: kube::api::DynamicObject = serde_json::from_value(v).unwrap();
            let (group, version) = gvk.0.split_once('/').unwrap_or(("", &gvk.0));
            let ar = kube::discovery::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
                group, version, &gvk.1,
            ));
            let api: Api<kube::api::DynamicObject> =
                Api::namespaced_with(client, obj.metadata.namespace.as_deref().unwrap(), &ar);
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => panic!("creating {}: {e}", gvk.1),
            }
        }
    };
    create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                  "metadata": {"name": OPERATOR_SA, "namespace": ns}}))
    .await;
    create(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                  "metadata": {"name": OPERATOR_SA, "namespace": ns}, "rules": operator_rules()}),
    )
    .await;
    create(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                  "metadata": {"name": OPERATOR_SA, "namespace": ns},
                  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR_SA},
                  "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": ns}]}))
    .await;
    let sas: Api<ServiceAccount> = env.api();
    let tr: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [], "expirationSeconds": 7200}}))
    .unwrap();
    let token = sas
        .create_token_request(OPERATOR_SA, &PostParams::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let base = kube::config::Kubeconfig::read_from(env.kubeconfig()).unwrap();
    let cluster = base
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .expect("a cluster in the kubeconfig");
    let mut c = json!({"server": cluster.server});
    if let Some(ca) = cluster.certificate_authority_data {
        c["certificate-authority-data"] = json!(ca);
    }
    if let Some(ca) = cluster.certificate_authority {
        c["certificate-authority"] = json!(ca);
    }
    let cfg = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": c}],
        "users": [{"name": OPERATOR_SA, "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": OPERATOR_SA, "namespace": ns}}],
        "current-context": "c",
    });
    let path = env.dir.join("operator.kubeconfig");
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    path
}

pub async fn start() -> (TestCluster, Operator, String, PathBuf) {
    let (operator, node) = bins();
    let images = HashMap::from([("index-node".to_string(), node)]);
    let env = TestCluster::start(images).await.unwrap();
    install_crd(&env.client).await.unwrap();
    let store = env.dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let op = Operator::start(&env, &operator).await;
    (env, op, format!("file://{}", store.display()), operator)
}

pub fn index(name: &str, storage: &str, source: Value) -> VectorIndex {
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
pub async fn wait_for(
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

pub fn phase(vi: &VectorIndex) -> Option<IndexPhase> {
    vi.status.as_ref()?.phase
}

pub fn condition<'a>(
    vi: &'a VectorIndex,
    ty: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    vi.status.as_ref()?.condition(ty)
}

pub async fn service_address(env: &TestCluster, name: &str) -> SocketAddr {
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
pub fn eval_queries(store: &str, ns: &str, index: &str, version: &str) -> Vec<Vec<f32>> {
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

/// One bounded `index-node loadtest` run against `target` (a router or the index Service):
/// its JSON summary. `retries`: send a query again after UNAVAILABLE/UNKNOWN.
pub fn loadtest(
    node: &std::path::Path,
    target: &str,
    queries: &std::path::Path,
    secs: f64,
    concurrency: u32,
    retries: u32,
) -> Value {
    loadtest_with(
        node,
        target,
        queries,
        secs,
        concurrency,
        &["--retries", &retries.to_string()],
    )
}

/// [`loadtest`] with `extra` flags (e.g. `--zipf 1.5 --nprobe 1`).
pub fn loadtest_with(
    node: &std::path::Path,
    target: &str,
    queries: &std::path::Path,
    secs: f64,
    concurrency: u32,
    extra: &[&str],
) -> Value {
    let out = Command::new(node)
        .args(["loadtest", "--target", target, "--k", "10", "--json"])
        .arg("--queries")
        .arg(queries)
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--duration-secs", &secs.to_string()])
        .args(["--worker-threads", "1", "--timeout-ms", "5000"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "loadtest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap()
}
