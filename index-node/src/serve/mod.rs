//! `index-node serve --role shard|router`: the gRPC services, the HTTP port, version
//! convergence and graceful shutdown.

pub mod admin;
pub mod batcher;
pub mod eval;
pub mod holder;
pub mod http;
pub mod metrics;
pub mod router;
pub mod shard;
#[cfg(test)]
mod tests;
pub mod validate;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quiver_proto::admin_server::AdminServer;
use quiver_proto::query_server::QueryServer;
use quiver_proto::shard_server::ShardServer;
use tokio::sync::watch;

use crate::discovery::{FileReplicas, ReplicaSource, StaticReplicas, parse_static};
use crate::storage::{Storage, check_name};
use crate::versions::VersionArgs;
use metrics::Metrics;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Shard,
    Router,
}

#[derive(clap::Args, Debug)]
pub struct ServeCmd {
    #[arg(long, value_enum)]
    pub role: Role,
    /// IP to listen on (a pod's own IP; several nodes can share a machine on different
    /// loopback addresses with the same ports).
    #[arg(long, default_value = "0.0.0.0", env = "QUIVER_LISTEN_IP")]
    pub listen_ip: IpAddr,
    #[arg(long, default_value_t = 7000)]
    pub grpc_port: u16,
    #[arg(long, default_value_t = 7001)]
    pub http_port: u16,
    /// Storage root: file:///dir, a directory, or s3://bucket/prefix.
    #[arg(long, env = "QUIVER_STORAGE")]
    pub storage: String,
    #[arg(long, default_value = "default", env = "QUIVER_NAMESPACE")]
    pub namespace: String,
    #[arg(long, env = "QUIVER_INDEX")]
    pub index: String,
    /// Shard number (shard role).
    #[arg(long, env = "QUIVER_SHARD")]
    pub shard: Option<u32>,
    /// Router: shard replicas, `0=ip:port,ip:port;1=ip:port`.
    #[arg(long, conflicts_with = "shards_file")]
    pub shards: Option<String>,
    /// Router: JSON file `{"0": ["ip:port", ...]}` polled for changes.
    #[arg(long)]
    pub shards_file: Option<PathBuf>,
    /// Take the desired state from Kubernetes instead of flags and files: the versions to
    /// hold and the active one from the status of the VectorIndex `--index` in
    /// `--namespace` and, for a router, shard replicas from the index's Ready shard pods
    /// (pod IP, port `shard`). Needs read access (get, list, watch) to `vectorindexes` and,
    /// for routers, `pods`; uses the pod's service account, or KUBECONFIG outside a cluster.
    #[arg(long, conflicts_with_all = ["shards", "shards_file", "versions_file", "versions", "active"])]
    pub kube: bool,
    #[command(flatten)]
    pub versions: VersionArgs,
    /// Largest k a client may ask for.
    #[arg(long, default_value_t = 1000)]
    pub max_k: u32,
    /// Most queries in one BatchSearch (routers) or ShardBatchSearch (shards); routers also
    /// send at most this many queries in one ShardBatchSearch.
    #[arg(long, default_value_t = 1024)]
    pub max_batch: usize,
    /// Router: deadline of one shard call before trying another replica.
    #[arg(long, default_value_t = 2000)]
    pub shard_timeout_ms: u64,
    /// Router: calls in flight per shard replica. Queries that arrive while all are busy wait
    /// and go out together as one ShardBatchSearch when a call returns (no timer: an idle
    /// router adds no delay). Raise it towards a shard's core count on machines where shards
    /// have many cores each.
    #[arg(long, default_value_t = 1)]
    pub shard_inflight: usize,
    /// Router: seconds between two rounds of the recall canary, which sends evaluation
    /// queries (with their exact neighbours) through the active version and exports its
    /// recall as quiver_canary_recall; 0 turns it off.
    #[arg(long, default_value_t = 30)]
    pub canary_interval_secs: u64,
    /// Router: evaluation queries per canary round.
    #[arg(long, default_value_t = 20)]
    pub canary_queries: usize,
    /// Router: the canary measures recall@k with this k (at most the stored neighbours).
    #[arg(long, default_value_t = 10)]
    pub canary_k: usize,
    /// On SIGTERM: time between failing readiness and closing the listeners, so load
    /// balancers stop sending new queries first.
    #[arg(long, default_value_t = 2000)]
    pub shutdown_delay_ms: u64,
    /// Threads running requests: 0 = one per core; 1 = a single-threaded runtime (best when
    /// several nodes share a few cores).
    #[arg(long, default_value_t = 0, env = "QUIVER_WORKER_THREADS")]
    pub worker_threads: usize,
    /// Node name reported in status (defaults to listen address).
    #[arg(long, env = quiver_api::env::POD_NAME)]
    pub node_name: Option<String>,
}

/// Response metadata key a shard sets when it refuses a version it does not hold warm.
pub const REFUSED_HEADER: &str = "quiver-refused";

/// State shared by the services of one process.
pub struct Node {
    pub name: String,
    pub metrics: Metrics,
    pub shutting_down: AtomicBool,
    pub inner: RoleState,
}

pub enum RoleState {
    Shard(Arc<shard::ShardState>),
    Router(Arc<router::RouterState>),
}

impl Node {
    /// (ready, reason) for `/readyz` and gRPC health.
    pub fn readiness(&self) -> (bool, String) {
        if self.shutting_down.load(Ordering::SeqCst) {
            return (false, "shutting down".into());
        }
        match &self.inner {
            RoleState::Shard(s) => s.readiness(),
            RoleState::Router(r) => r.readiness(),
        }
    }
}

/// Common context of both roles.
#[derive(Clone)]
pub struct Ctx {
    pub storage: Storage,
    pub namespace: String,
    pub index: String,
    pub max_k: u32,
    pub max_batch: usize,
}

pub fn run(cmd: ServeCmd) -> anyhow::Result<()> {
    runtime(cmd.worker_threads)?.block_on(serve(cmd))
}

/// The process's tokio runtime: one worker per core by default; `1` runs everything on one
/// thread (no wake-ups of idle workers or hand-offs between threads, which cost more than
/// they give when several processes share a few cores).
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

async fn serve(cmd: ServeCmd) -> anyhow::Result<()> {
    check_name("--namespace", &cmd.namespace)?;
    check_name("--index", &cmd.index)?;
    for v in &cmd.versions.versions {
        check_name("--versions", v)?;
    }
    let ctx = Ctx {
        storage: Storage::open(&cmd.storage)?,
        namespace: cmd.namespace.clone(),
        index: cmd.index.clone(),
        max_k: cmd.max_k.max(1),
        max_batch: cmd.max_batch.max(1),
    };
    let grpc_addr = SocketAddr::new(cmd.listen_ip, cmd.grpc_port);
    let http_addr = SocketAddr::new(cmd.listen_ip, cmd.http_port);
    let name = cmd
        .node_name
        .clone()
        .unwrap_or_else(|| grpc_addr.to_string());
    let kube = match cmd.kube {
        true => Some(kube::Client::try_default().await.map_err(|e| {
            anyhow::anyhow!(
                "--kube: no Kubernetes client (in-cluster service account or KUBECONFIG): {e}"
            )
        })?),
        false => None,
    };
    let versions: Box<dyn crate::versions::VersionSource> = match &kube {
        Some(client) => Box::new(crate::k8s::KubeVersions {
            client: client.clone(),
            namespace: cmd.namespace.clone(),
            index: cmd.index.clone(),
            shard: match cmd.role {
                Role::Shard => cmd.shard,
                Role::Router => None,
            },
        }),
        None => cmd.versions.source(),
    };
    let desired = versions.watch();
    let role_name = match cmd.role {
        Role::Shard => "shard",
        Role::Router => "router",
    };
    let metrics = Metrics::new(role_name);

    let inner = match cmd.role {
        Role::Shard => {
            let shard = cmd
                .shard
                .ok_or_else(|| anyhow::anyhow!("--shard is required with --role shard"))?;
            RoleState::Shard(shard::ShardState::new(
                ctx.clone(),
                shard,
                metrics.version_gauges(),
            ))
        }
        Role::Router => {
            let source: Box<dyn ReplicaSource> = match (&kube, &cmd.shards, &cmd.shards_file) {
                (Some(client), _, _) => Box::new(crate::k8s::PodReplicas {
                    client: client.clone(),
                    namespace: cmd.namespace.clone(),
                    index: cmd.index.clone(),
                }),
                (None, Some(spec), _) => Box::new(StaticReplicas(parse_static(spec)?)),
                (None, None, Some(path)) => Box::new(FileReplicas {
                    path: path.clone(),
                    interval: Duration::from_millis(200),
                }),
                (None, None, None) => {
                    anyhow::bail!("--role router needs --kube, --shards or --shards-file")
                }
            };
            RoleState::Router(router::RouterState::new(
                ctx.clone(),
                source.watch(),
                Duration::from_millis(cmd.shard_timeout_ms.max(1)),
                cmd.shard_inflight,
                metrics.shard_batch.clone(),
                metrics.version_gauges(),
            ))
        }
    };
    let node = Arc::new(Node {
        name,
        metrics,
        shutting_down: AtomicBool::new(false),
        inner,
    });
    match &node.inner {
        RoleState::Shard(s) => s.clone().start(desired.clone()),
        RoleState::Router(r) => {
            r.clone().start(node.clone(), desired.clone());
            tokio::spawn(eval::run(
                r.clone(),
                node.clone(),
                eval::Canary {
                    interval: Duration::from_secs(cmd.canary_interval_secs),
                    queries: cmd.canary_queries,
                    k: cmd.canary_k,
                },
            ));
        }
    }

    let (health, health_svc) = tonic_health::server::health_reporter();
    let (stop_tx, stop_rx) = watch::channel(false);
    let health_task = tokio::spawn(health_loop(node.clone(), health, stop_rx.clone()));

    let http_listener = http::bind(http_addr).await?;
    let http_task = tokio::spawn(http::serve(
        http_listener,
        node.clone(),
        wait(stop_rx.clone()),
    ));

    let listener = tokio::net::TcpListener::bind(grpc_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {grpc_addr} (grpc): {e}"))?;
    tracing::info!(addr = %grpc_addr, role = role_name, "grpc listening");
    // With a custom listener the builder's tcp_nodelay does not apply: set it here, or Nagle
    // adds ~40 ms to small responses.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let admin = AdminServer::new(admin::AdminSvc { node: node.clone() });
    let builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_svc)
        .add_service(admin);
    let router = match &node.inner {
        RoleState::Shard(s) => builder.add_service(
            ShardServer::new(shard::ShardSvc {
                state: s.clone(),
                node: node.clone(),
            })
            // Batches from routers are cut to batcher::CALL_BUDGET; accept that with margin.
            .max_decoding_message_size(batcher::message_limit(ctx.max_k as usize))
            .max_encoding_message_size(batcher::message_limit(ctx.max_k as usize)),
        ),
        RoleState::Router(r) => builder.add_service(QueryServer::new(router::QuerySvc {
            state: r.clone(),
            node: node.clone(),
        })),
    };
    let grpc = tokio::spawn(router.serve_with_incoming_shutdown(incoming, wait(stop_rx.clone())));

    shutdown_signal().await;
    // Fail readiness first, give load balancers time to notice, then stop accepting and let
    // in-flight requests finish (tonic's graceful shutdown waits for them).
    tracing::info!("shutdown requested: failing readiness");
    node.shutting_down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(cmd.shutdown_delay_ms)).await;
    let _ = stop_tx.send(true);
    match grpc.await {
        Ok(Err(e)) => tracing::error!(error = %e, "grpc server error"),
        Err(e) => tracing::error!(error = %e, "grpc task failed"),
        Ok(Ok(())) => {}
    }
    if let Ok(Err(e)) = http_task.await {
        tracing::error!(error = %e, "http server error");
    }
    health_task.abort();
    tracing::info!("stopped");
    Ok(())
}

async fn wait(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot install SIGTERM handler; only Ctrl-C stops");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// What gRPC health answers for each name: the whole server ("") and the role's own service
/// follow readiness; Admin answers whenever the process is up and not shutting down (the
/// operator needs status while versions load).
pub fn health_statuses(node: &Node) -> Vec<(&'static str, tonic_health::ServingStatus)> {
    use tonic::server::NamedService;
    use tonic_health::ServingStatus::{NotServing, Serving};
    let (ready, _) = node.readiness();
    let ready = if ready { Serving } else { NotServing };
    let up = if node.shutting_down.load(Ordering::SeqCst) {
        NotServing
    } else {
        Serving
    };
    let role = match &node.inner {
        RoleState::Shard(_) => <ShardServer<shard::ShardSvc> as NamedService>::NAME,
        RoleState::Router(_) => <QueryServer<router::QuerySvc> as NamedService>::NAME,
    };
    vec![
        ("", ready),
        (role, ready),
        (<AdminServer<admin::AdminSvc> as NamedService>::NAME, up),
    ]
}

/// Mirrors readiness into the gRPC health service.
async fn health_loop(
    node: Arc<Node>,
    health: tonic_health::server::HealthReporter,
    _stop: watch::Receiver<bool>,
) {
    let mut last = Vec::new();
    loop {
        let now = health_statuses(&node);
        if now != last {
            for &(service, status) in &now {
                health.set_service_status(service, status).await;
            }
            last = now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
