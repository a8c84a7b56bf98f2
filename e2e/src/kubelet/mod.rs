//! The process kubelet: binds unscheduled pods to its node and runs each container as a
//! local process. It talks only through the Kubernetes API, so it also runs beside a real
//! API server and controller manager.

pub mod logs;
mod pod;
mod probes;
mod process;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::controllers::{name, scoped_api, trigger_on, uid};

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("bad --image entry {0:?}: expected name=path")]
    BadImage(String),
    #[error("no log for pod {0}")]
    NoLog(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("object encoding: {0}")]
    Json(#[from] serde_json::Error),
}

#[derive(Debug, Clone)]
pub struct KubeletConfig {
    pub node: String,
    /// Pod directories (logs, volumes) live under here.
    pub root: PathBuf,
    /// Image name → local binary.
    pub images: HashMap<String, PathBuf>,
    /// First restart back-off; doubles up to `backoff_max` (the real kubelet: 10s, 5min).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Pod IPs come from 127.<block>.x / 127.x.<block+n>…; separate kubelets on one host
    /// need separate blocks.
    pub ip_block: u32,
    /// The API server as pods reach it (`KUBERNETES_SERVICE_HOST`/`_PORT`): the address
    /// this kubelet itself uses, which the server's certificate names.
    pub api_server: Option<(String, u16)>,
    /// Only bind and run pods of this namespace (kubelet-only mode beside other nodes or
    /// other test kubelets); all namespaces when None.
    pub namespace: Option<String>,
    /// Bind-mount the service-account directory at its real path in each container's own
    /// mount namespace (needs root); checked at start by [`run`].
    pub bind_mounts: bool,
}

impl KubeletConfig {
    pub fn new(node: String, root: PathBuf, images: HashMap<String, PathBuf>) -> Self {
        Self {
            node,
            root,
            images,
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            ip_block: 1,
            api_server: None,
            namespace: None,
            bind_mounts: true,
        }
    }

    /// The variables a real kubelet gives every container for the `kubernetes` Service.
    pub fn service_env(&self) -> Vec<(String, String)> {
        let Some((host, port)) = &self.api_server else {
            return Vec::new();
        };
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), host.clone()),
            ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string()),
        ]
    }

    /// Host and port of a server URL such as `https://127.0.0.1:6443` (IPv6 brackets kept
    /// off, as the variables carry them).
    pub fn api_server_from_url(url: &http::Uri) -> Option<(String, u16)> {
        let host = url.host()?.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_u16().unwrap_or(match url.scheme_str() {
            Some("http") => 80,
            _ => 443,
        });
        Some((host.to_string(), port))
    }
}

pub fn parse_image_table(entries: &[String]) -> Result<HashMap<String, PathBuf>, KubeletError> {
    entries
        .iter()
        .map(|e| {
            let (k, v) = e
                .split_once('=')
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .ok_or_else(|| KubeletError::BadImage(e.clone()))?;
            // Absolute now: containers start in their own working directories, where a
            // relative path would name nothing.
            let path = std::path::absolute(v).map_err(|_| KubeletError::BadImage(e.clone()))?;
            if !path.is_file() {
                tracing::warn!(image = k, path = %path.display(), "image binary does not exist (yet)");
            }
            Ok((k.to_string(), path))
        })
        .collect()
}

/// The log file of a container (the first one when not named).
pub fn read_logs(
    root: &Path,
    ns: &str,
    pod: &str,
    container: Option<&str>,
) -> Result<String, KubeletError> {
    let dir = root.join(ns).join(pod).join("logs");
    let file = match container {
        Some(c) => dir.join(format!("{c}.log")),
        None => {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|_| KubeletError::NoLog(pod.into()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            entries
                .into_iter()
                .next()
                .ok_or_else(|| KubeletError::NoLog(pod.into()))?
        }
    };
    std::fs::read_to_string(&file).map_err(|_| KubeletError::NoLog(pod.into()))
}

/// Hands out loopback addresses; 127.0.0.1 stays with the API server.
pub struct IpPool {
    first_block: u32,
    next: AtomicU32,
}

impl IpPool {
    pub fn new(first_block: u32) -> Self {
        Self {
            first_block: first_block.max(1),
            next: AtomicU32::new(0),
        }
    }

    pub fn allocate(&self) -> Ipv4Addr {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Hosts .1 to .254 of 127.0.<block>.0/24, then the next block and so on.
        let block = n / 254 + self.first_block;
        let x = (block << 8) | (n % 254 + 1);
        Ipv4Addr::new(
            127,
            ((x >> 16) & 0xff) as u8,
            ((x >> 8) & 0xff) as u8,
            (x & 0xff) as u8,
        )
    }
}

async fn register_node(client: &Client, node: &str, log_port: u16) -> Result<(), KubeletError> {
    let api: Api<Node> = Api::all(client.clone());
    if api.get_opt(node).await?.is_none() {
        let n: Node = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node, "kubernetes.io/os": "linux"}}}),
        )?;
        match api.create(&PostParams::default(), &n).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let now = crate::controllers::now();
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "quiver process kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": node}],
        // Where the API server's pods/log proxy finds this kubelet (logs.rs).
        "daemonEndpoints": {"kubeletEndpoint": {"Port": log_port}},
        "capacity": {"cpu": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).to_string(), "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).to_string(), "memory": "8Gi", "pods": "110"},
        "nodeInfo": {"kubeletVersion": "v1.33.0-quiver", "operatingSystem": "linux", "architecture": std::env::consts::ARCH, "containerRuntimeVersion": "quiver-process://1"},
    }});
    api.patch_status(node, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}

struct Worker {
    tx: watch::Sender<Value>,
    task: JoinHandle<()>,
}

/// Runs until aborted; aborting drops the workers, which kills their processes.
pub async fn run(client: Client, mut cfg: KubeletConfig) {
    if cfg.bind_mounts {
        cfg.bind_mounts = process::can_bind_mount(&cfg.root);
        if !cfg.bind_mounts {
            tracing::warn!(
                path = crate::apiserver::admission::SERVICE_ACCOUNT_DIR,
                "cannot bind-mount (not root?): the service-account directory is only rewritten in arguments, so kube::Config::incluster() in pods will not find its token"
            );
        }
    }
    let cfg = Arc::new(cfg);
    let ips = Arc::new(IpPool::new(cfg.ip_block));
    // The log endpoint lives as long as this kubelet (dropped when the task is aborted).
    let log_server = loop {
        match logs::start(cfg.root.clone(), std::net::IpAddr::from([127, 0, 0, 1])).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "starting the log endpoint failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    while let Err(e) = register_node(&client, &cfg.node, log_server.port).await {
        tracing::warn!(error = %e, "registering node failed; retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (tx, mut rx) = mpsc::channel(1);
    let _watch = trigger_on(scoped_api::<Pod>(&client, cfg.namespace.as_deref()), tx);
    let mut workers: HashMap<String, Worker> = HashMap::new();
    loop {
        if let Err(e) = sync(&client, &cfg, &ips, &mut workers).await {
            tracing::debug!(error = %e, "kubelet sync failed");
        }
        tokio::select! {
            r = rx.recv() => if r.is_none() { return },
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        while rx.try_recv().is_ok() {}
    }
}

async fn sync(
    client: &Client,
    cfg: &Arc<KubeletConfig>,
    ips: &Arc<IpPool>,
    workers: &mut HashMap<String, Worker>,
) -> Result<(), KubeletError> {
    let pods = scoped_api::<Pod>(client, cfg.namespace.as_deref())
        .list(&ListParams::default())
        .await?;
    let mut seen = Vec::new();
    for p in pods.items {
        let v = serde_json::to_value(&p)?;
        let node = v["spec"]["nodeName"].as_str().unwrap_or_default();
        let ns = v["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if node.is_empty() {
            if v["metadata"]["deletionTimestamp"].is_null() {
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name(&v)}, "target": {"apiVersion": "v1", "kind": "Node", "name": cfg.node}});
                match api
                    .create_subresource::<Value, Value>(
                        "binding",
                        name(&v),
                        &PostParams::default(),
                        &binding,
                    )
                    .await
                {
                    Ok(_) => tracing::debug!(pod = name(&v), node = %cfg.node, "bound"),
                    Err(e) => tracing::debug!(pod = name(&v), error = %e, "binding failed"),
                }
            }
            continue;
        }
        if node != cfg.node {
            continue;
        }
        let id = uid(&v).to_string();
        seen.push(id.clone());
        match workers.get(&id) {
            Some(w) if !w.task.is_finished() => {
                let _ = w.tx.send(v);
            }
            Some(_) => {}
            None => {
                let (tx, rx) = watch::channel(v);
                let task = tokio::spawn(
                    pod::PodWorker::new(client.clone(), cfg.clone(), ips.clone(), rx).run(),
                );
                workers.insert(id, Worker { tx, task });
            }
        }
    }
    // Pods gone from the API: their workers stop (dropping kills the processes).
    workers.retain(|id, w| {
        let keep = seen.contains(id);
        if !keep {
            w.task.abort();
        }
        keep
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn pod_ips_skip_the_api_server_address() {
        let pool = super::IpPool::new(1);
        let ips: Vec<String> = (0..300).map(|_| pool.allocate().to_string()).collect();
        assert_eq!(ips[0], "127.0.1.1");
        assert!(
            !ips.iter()
                .any(|i| i == "127.0.0.1" || i.ends_with(".0") || i.ends_with(".255"))
        );
        let mut dedup = ips.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), ips.len());
    }

    #[test]
    fn image_table_paths_are_absolute_and_entries_checked() {
        let t = super::parse_image_table(&["index-node=target/release/index-node".into()])
            .expect("valid entry");
        let p = &t["index-node"];
        assert!(p.is_absolute(), "{}", p.display());
        assert!(p.ends_with("target/release/index-node"));
        for bad in ["index-node", "=x", "x=", ""] {
            let err = super::parse_image_table(&[bad.to_string()]).expect_err(bad);
            assert!(err.to_string().contains("expected name=path"), "{err}");
        }
    }
}
