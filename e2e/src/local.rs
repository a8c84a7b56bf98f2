//! The whole local cluster in one process: API server, controllers, process kubelet.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::apiserver::{ApiServer, Config};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Server(#[from] crate::apiserver::ServerError),
    #[error("kube client: {0}")]
    Client(String),
    #[error("state directory: {0}")]
    Io(#[from] std::io::Error),
}

/// The ClusterIP of `default/kubernetes` (the first address of the Service range); the
/// API server's certificate names it.
pub const KUBERNETES_SERVICE_IP: &str = "127.96.0.1";

pub struct LocalConfig {
    pub state_dir: PathBuf,
    pub port: u16,
    pub images: HashMap<String, PathBuf>,
    pub node: String,
    pub kubelet: bool,
    /// Run the controllers (StatefulSet, Deployment, Job, garbage collector).
    pub controllers: bool,
    /// Watch history kept by the API server, in events.
    pub history: usize,
    pub bookmark_interval: std::time::Duration,
    /// First container restart back-off (the real kubelet uses 10s).
    pub restart_backoff: std::time::Duration,
    /// First loopback block for pod IPs (127.0.<block>.1 onwards).
    pub pod_ip_block: u32,
}

impl LocalConfig {
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            port: 0,
            images: HashMap::new(),
            node: "quiver-node".into(),
            kubelet: true,
            controllers: true,
            history: 10_000,
            bookmark_interval: std::time::Duration::from_secs(10),
            restart_backoff: std::time::Duration::from_secs(10),
            pod_ip_block: 1,
        }
    }
}

/// The client configuration of a kubeconfig file (its current context).
pub async fn config_for(kubeconfig: &std::path::Path) -> Result<kube::Config, LocalError> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| LocalError::Client(format!("{}: {e}", kubeconfig.display())))?;
    kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| LocalError::Client(format!("{}: {e}", kubeconfig.display())))
}

/// A kube client for a kubeconfig file.
pub async fn client_for(kubeconfig: &std::path::Path) -> Result<kube::Client, LocalError> {
    let cfg = config_for(kubeconfig).await?;
    kube::Client::try_from(cfg).map_err(|e| LocalError::Client(e.to_string()))
}

/// What a node runs beside its pods: the process kubelet and the Service proxy. Works
/// against any API server (the stand-in, or a real control plane in kubelet-only mode).
pub struct Node {
    pub name: String,
    client: kube::Client,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// `state_dir` is where the Service proxy reports the local addresses it picked.
    pub fn start(
        client: kube::Client,
        kcfg: crate::kubelet::KubeletConfig,
        state_dir: &std::path::Path,
    ) -> Self {
        let name = kcfg.node.clone();
        let mut pcfg = crate::proxy::ProxyConfig::new(state_dir.to_path_buf());
        pcfg.namespace = kcfg.namespace.clone();
        let tasks = vec![
            tokio::spawn(crate::kubelet::run(client.clone(), kcfg)),
            // The node's Service proxy (kube-proxy's part) runs beside the kubelet.
            tokio::spawn(crate::proxy::run(client.clone(), pcfg)),
        ];
        Self {
            name,
            client,
            tasks,
        }
    }

    /// Stops the kubelet (its pods' processes are killed) and, with `deregister`, deletes
    /// the Node object, as a node that leaves the cluster for good.
    pub async fn stop(self, deregister: bool) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        if deregister {
            let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(self.client);
            let _ = nodes
                .delete(&self.name, &kube::api::DeleteParams::default())
                .await;
        }
    }
}

pub struct Local {
    pub server: ApiServer,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    node: Option<Node>,
}

impl Local {
    pub async fn start(cfg: LocalConfig) -> Result<Self, LocalError> {
        std::fs::create_dir_all(&cfg.state_dir)?;
        let state_dir = std::fs::canonicalize(&cfg.state_dir)?;
        let mut sc = Config::new(state_dir.join("kubeconfig"));
        sc.addr = std::net::SocketAddr::from(([127, 0, 0, 1], cfg.port));
        sc.history = cfg.history;
        sc.bookmark_interval = cfg.bookmark_interval;
        sc.extra_ips = vec![KUBERNETES_SERVICE_IP.to_string()];
        let server = ApiServer::start(sc).await?;
        let client = client_for(&server.kubeconfig).await?;
        let mut tasks = if cfg.controllers {
            crate::controllers::spawn_all(client.clone())
        } else {
            Vec::new()
        };
        // Default accounts and the CA ConfigMap belong with the API server's CA: pods cannot
        // be admitted without them, so they run even when the other controllers do not.
        tasks.push(tokio::spawn(crate::controllers::serviceaccounts::run(
            client.clone(),
            server.ca_pem.clone(),
        )));
        let node = if cfg.kubelet {
            let mut kcfg = crate::kubelet::KubeletConfig::new(
                cfg.node.clone(),
                state_dir.join("pods"),
                cfg.images.clone(),
            );
            kcfg.backoff_base = cfg.restart_backoff;
            kcfg.ip_block = cfg.pod_ip_block;
            kcfg.api_server = Some((server.addr.ip().to_string(), server.addr.port()));
            Some(Node::start(client, kcfg, &state_dir))
        } else {
            None
        };
        Ok(Self {
            server,
            tasks,
            node,
        })
    }

    pub async fn stop(self) {
        if let Some(n) = self.node {
            n.stop(false).await;
        }
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.server.stop().await;
    }
}

/// `quiver-local up`: the cluster (with the CRD and the operator when `operator`) until
/// SIGINT/SIGTERM.
pub async fn run_until_signal(cfg: LocalConfig, operator: bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let pid_file = cfg.state_dir.join("quiver-local.pid");
    let local = Local::start(cfg).await?;
    std::fs::write(&pid_file, std::process::id().to_string())?;
    if operator {
        let client = client_for(&local.server.kubeconfig).await?;
        let applied = crate::install::install_operator(&client).await?;
        tracing::info!(objects = ?applied, "installed the VectorIndex CRD and the operator");
    }
    println!("{}", local.server.kubeconfig.display());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    local.stop().await;
    let _ = std::fs::remove_file(&pid_file);
    Ok(())
}

/// Kubelet-only mode: this machine as a node of the cluster in `kubeconfig` (the stand-in or
/// a real control plane), until SIGINT/SIGTERM.
pub async fn run_node_until_signal(
    kubeconfig: &std::path::Path,
    mut kcfg: crate::kubelet::KubeletConfig,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let config = config_for(kubeconfig).await?;
    if kcfg.api_server.is_none() {
        kcfg.api_server = crate::kubelet::KubeletConfig::api_server_from_url(&config.cluster_url);
    }
    let client = kube::Client::try_from(config).map_err(|e| LocalError::Client(e.to_string()))?;
    std::fs::create_dir_all(&kcfg.root)?;
    tracing::info!(node = %kcfg.node, kubeconfig = %kubeconfig.display(), "kubelet-only mode");
    let state_dir = kcfg
        .root
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| kcfg.root.clone());
    let node = Node::start(client, kcfg, &state_dir);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down; the pods' processes stop with the kubelet");
    node.stop(false).await;
    Ok(())
}
