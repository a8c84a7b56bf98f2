//! An in-memory Kubernetes API server stand-in (HTTP on loopback).

pub mod admission;
mod apply;
pub mod auth;
pub mod cel;
mod convert;
mod discovery;
pub mod error;
mod formats;
mod http;
mod patch;
mod podlog;
mod protobuf;
pub mod registry;
mod scale;
pub mod schema;
pub mod selectors;
pub mod services;
pub mod store;
mod table;
pub mod time;
pub mod tls;
mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("writing kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct Config {
    /// 127.0.0.1:0 picks a free port.
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    /// Watch history kept (events); older resourceVersions get 410.
    pub history: usize,
    pub bookmark_interval: Duration,
    /// Addresses besides loopback that the serving certificate names (e.g. the ClusterIP
    /// of the `kubernetes` Service).
    pub extra_ips: Vec<String>,
}

impl Config {
    pub fn new(kubeconfig: impl Into<PathBuf>) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            kubeconfig: kubeconfig.into(),
            history: 10_000,
            bookmark_interval: Duration::from_secs(10),
            extra_ips: Vec::new(),
        }
    }
}

pub struct ApiServer {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    /// PEM of the cluster CA (what pods get as `ca.crt`).
    pub ca_pem: String,
    pub store: Arc<Store>,
    /// Successful writes per user (an audit log's view).
    pub audit: Arc<auth::WriteAudit>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// A kubeconfig (JSON is valid YAML) for the server; the user has no credentials, which
/// the stand-in serves as the cluster admin.
pub fn write_kubeconfig(path: &Path, server: &str, ca_pem: &str) -> std::io::Result<()> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let cfg = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "quiver-local", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "quiver-local", "user": {}}],
        "contexts": [{"name": "quiver-local", "context": {"cluster": "quiver-local", "user": "quiver-local", "namespace": "default"}}],
        "current-context": "quiver-local",
        "preferences": {},
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(&cfg).unwrap_or_default())
}

impl ApiServer {
    pub async fn start(cfg: Config) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(cfg.addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: cfg.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: cfg.addr,
            source,
        })?;
        let pki = tls::Pki::generate(&cfg.extra_ips)?;
        write_kubeconfig(&cfg.kubeconfig, &format!("https://{addr}"), &pki.ca_pem).map_err(
            |source| ServerError::Kubeconfig {
                path: cfg.kubeconfig.clone(),
                source,
            },
        )?;
        let listener = tls::TlsListener::new(listener, &pki)?;
        let store = Arc::new(Store::new(cfg.history));
        store.add_kubernetes_service(addr);
        let audit = Arc::new(auth::WriteAudit::default());
        let state = Arc::new(http::AppState {
            store: store.clone(),
            addr: addr.to_string(),
            bookmark_interval: cfg.bookmark_interval,
            tokens: auth::Tokens::default(),
            audit: audit.clone(),
        });
        let app = axum::Router::new().fallback(http::handle).with_state(state);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "API server stopped");
            }
        });
        tracing::info!(%addr, kubeconfig = %cfg.kubeconfig.display(), "API server listening");
        Ok(Self {
            addr,
            kubeconfig: cfg.kubeconfig,
            ca_pem: pki.ca_pem,
            store,
            audit,
            shutdown: Some(tx),
            task,
        })
    }

    /// Stops accepting requests; open watches are dropped.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
        let _ = self.task.await;
    }
}
