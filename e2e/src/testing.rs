//! A cluster for one end-to-end test, whoever's test it is (this crate's suites, index-node's,
//! later the operator's): by default the whole stand-in runs in-process; with
//! `QUIVER_E2E_KUBECONFIG` the test uses that cluster's API server and controller manager and
//! attaches only a process kubelet (and Service proxy) of its own, limited to the test's
//! namespace, so the same test holds on the stand-in and on a real control plane.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use crate::kubelet::KubeletConfig;
use crate::local::{Local, LocalConfig, LocalError, Node};

/// The variable that points the tests at another cluster.
pub const KUBECONFIG_VAR: &str = "QUIVER_E2E_KUBECONFIG";

/// A name unique to this run: `prefix-<random>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", crate::apiserver::time::random_suffix())
}

pub struct TestCluster {
    /// The in-process stand-in (None when the test runs against another cluster).
    pub local: Option<Local>,
    /// The kubelet attached to another cluster.
    pub node: Option<Node>,
    pub client: Client,
    /// The test's own namespace (its default ServiceAccount exists).
    pub ns: String,
    /// The Node the test's kubelet registered.
    pub node_name: String,
    /// Scratch directory: pod directories, the proxy's addresses; removed by [`Self::stop`].
    pub dir: PathBuf,
}

impl TestCluster {
    /// Starts (or attaches to) a cluster whose kubelet runs `images` (image name → program).
    pub async fn start(images: HashMap<String, PathBuf>) -> Result<Self, LocalError> {
        let dir = std::env::temp_dir().join(unique(&format!("quiver-test-{}", std::process::id())));
        // Tests of one binary run at once; each kubelet gets its own pod IP range.
        static BLOCK: AtomicU32 = AtomicU32::new(10);
        let ip_block = BLOCK.fetch_add(10, Ordering::Relaxed);
        let ns = unique("t");
        let (local, node, client, node_name) = match std::env::var(KUBECONFIG_VAR) {
            Ok(path) => {
                let config = crate::local::config_for(std::path::Path::new(&path)).await?;
                let mut kcfg =
                    KubeletConfig::new(format!("quiver-e2e-{ns}"), dir.join("pods"), images);
                kcfg.api_server = KubeletConfig::api_server_from_url(&config.cluster_url);
                kcfg.namespace = Some(ns.clone());
                kcfg.ip_block = ip_block;
                kcfg.backoff_base = Duration::from_millis(500);
                let client =
                    Client::try_from(config).map_err(|e| LocalError::Client(e.to_string()))?;
                let node_name = kcfg.node.clone();
                let node = Node::start(client.clone(), kcfg, &dir);
                (None, Some(node), client, node_name)
            }
            Err(_) => {
                let mut cfg = LocalConfig::new(dir.clone());
                cfg.images = images;
                cfg.restart_backoff = Duration::from_millis(500);
                cfg.pod_ip_block = ip_block;
                let node_name = cfg.node.clone();
                let local = Local::start(cfg).await?;
                let client = crate::local::client_for(&local.server.kubeconfig).await?;
                (Some(local), None, client, node_name)
            }
        };
        let nsobj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))
            .map_err(|e| LocalError::Client(e.to_string()))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &nsobj)
            .await
            .map_err(|e| LocalError::Client(format!("creating namespace {ns}: {e}")))?;
        wait_default_account(&client, &ns).await?;
        Ok(Self {
            local,
            node,
            client,
            ns,
            node_name,
            dir,
        })
    }

    /// The kubeconfig of the cluster the test talks to.
    pub fn kubeconfig(&self) -> PathBuf {
        match (&self.local, std::env::var(KUBECONFIG_VAR)) {
            (Some(l), _) => l.server.kubeconfig.clone(),
            (None, Ok(p)) => PathBuf::from(p),
            (None, Err(_)) => PathBuf::new(),
        }
    }

    /// `--kubeconfig` for `quiver-local` commands, when the cluster is not the stand-in
    /// (whose kubeconfig lives in the state directory).
    pub fn kubeconfig_args(&self) -> Vec<String> {
        match std::env::var(KUBECONFIG_VAR) {
            Ok(k) if self.local.is_none() => vec!["--kubeconfig".into(), k],
            _ => Vec::new(),
        }
    }

    /// An API of a namespaced kind in the test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Whether the API server's pods/log reaches this cluster's kubelet, tried on the first pod
    /// matching `selector`. Always on the stand-in; a real API server proxies pods/log to the
    /// Node's InternalIP (the test kubelet reports 127.0.0.1), which it reaches only when it
    /// runs on this machine. False (said on stderr) when it cannot, so log checks can be skipped.
    pub async fn pod_logs_reachable(&self, selector: &str) -> bool {
        use k8s_openapi::api::core::v1::Pod;
        use kube::api::{ListParams, LogParams};
        if self.local.is_some() {
            return true;
        }
        let pods: Api<Pod> = self.api();
        let first = pods
            .list(&ListParams::default().labels(selector))
            .await
            .ok()
            .and_then(|l| l.items.into_iter().next())
            .and_then(|p| p.metadata.name);
        let Some(pod) = first else {
            eprintln!("skipping pods/log checks: no pod matches {selector}");
            return false;
        };
        let lp = LogParams {
            tail_lines: Some(1),
            ..LogParams::default()
        };
        match pods.logs(&pod, &lp).await {
            Ok(_) => true,
            Err(e) => {
                eprintln!(
                    "skipping pods/log checks: the API server cannot reach this machine's kubelet ({e})"
                );
                false
            }
        }
    }

    /// Stops everything the test started; another cluster keeps no trace (the namespace and
    /// the test's Node go).
    pub async fn stop(self) {
        if let Some(node) = self.node {
            let _ = Api::<Namespace>::all(self.client.clone())
                .delete(&self.ns, &DeleteParams::default())
                .await;
            node.stop(true).await;
        }
        if let Some(local) = self.local {
            local.stop().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Pods are refused until a new namespace's `default` ServiceAccount exists (on a real
/// cluster too: the controller manager makes it a moment after the namespace).
pub async fn wait_default_account(client: &Client, ns: &str) -> Result<(), LocalError> {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(_)) = sas.get_opt("default").await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(LocalError::Client(format!(
                "namespace {ns} has no default ServiceAccount after 30 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `check` every 100 ms until it gives a value; panics (a test failure) naming `what`
/// after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub use crate::install::install_crd;

/// A binary of this workspace, from the target directory the running test was built into
/// (`target/<profile>/<name>`). Cargo gives a package's tests only that package's binaries,
/// so suites that run several (the operator's) find them here; `cargo test --workspace`
/// builds them all first.
pub fn workspace_bin(name: &str) -> Result<PathBuf, LocalError> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test>-<hash>
    let dir = exe.parent().and_then(|deps| deps.parent()).ok_or_else(|| {
        LocalError::Client(format!("no target directory above {}", exe.display()))
    })?;
    let bin = dir.join(name);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(LocalError::Client(format!(
            "{} is not built; build it first (cargo build -p {name}), or run cargo test --workspace",
            bin.display()
        )))
    }
}
