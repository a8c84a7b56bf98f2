//! The whole local cluster in one process: API server, controllers, process kubelet.

use std::collections::HashMap;
use std::path::PathBuf;

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

/// A kube client for a kubeconfig file.
pub async fn client_for(kubeconfig: &std::path::Path) -> Result<kube::Client, LocalError> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| LocalError::Client(e.to_string()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| LocalError::Client(e.to_string()))?;
    kube::Client::try_from(cfg).map_err(|e| LocalError::Client(e.to_string()))
}

pub struct Local {
    pub server: ApiServer,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Local {
    pub async fn start(cfg: LocalConfig) -> Result<Self, LocalError> {
        std::fs::create_dir_all(&cfg.state_dir)?;
        let state_dir = std::fs::canonicalize(&cfg.state_dir)?;
        let mut sc = Config::new(state_dir.join("kubeconfig"));
        sc.addr = std::net::SocketAddr::from(([127, 0, 0, 1], cfg.port));
        sc.history = cfg.history;
        sc.bookmark_interval = cfg.bookmark_interval;
        let server = ApiServer::start(sc).await?;
        let client = client_for(&server.kubeconfig).await?;
        let mut tasks = if cfg.controllers {
            crate::controllers::spawn_all(client.clone())
        } else {
            Vec::new()
        };
        if cfg.kubelet {
            // The node's Service proxy (kube-proxy's part) runs beside the kubelet.
            let pcfg = crate::proxy::ProxyConfig::new(state_dir.clone());
            tasks.push(tokio::spawn(crate::proxy::run(client.clone(), pcfg)));
            let mut kcfg = crate::kubelet::KubeletConfig::new(
                cfg.node.clone(),
                state_dir.join("pods"),
                cfg.images.clone(),
            );
            kcfg.backoff_base = cfg.restart_backoff;
            kcfg.ip_block = cfg.pod_ip_block;
            tasks.push(tokio::spawn(crate::kubelet::run(client, kcfg)));
        }
        Ok(Self { server, tasks })
    }

    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.server.stop().await;
    }
}

pub async fn run_until_signal(cfg: LocalConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let pid_file = cfg.state_dir.join("quiver-local.pid");
    let local = Local::start(cfg).await?;
    std::fs::write(&pid_file, std::process::id().to_string())?;
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
