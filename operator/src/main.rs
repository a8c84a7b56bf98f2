//! `quiver-operator`: the controller binary. Watches `VectorIndex` resources (one namespace
//! or all) and reconciles each into a serving index cluster; serves `/healthz`, `/readyz`
//! and `/metrics` on one HTTP port; stops on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Parser;
use kube::runtime::events::{Recorder, Reporter};
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseParams};
use quiver_operator::children::ChildConfig;
use quiver_operator::controller::{self, Context};
use quiver_operator::metrics::Metrics;

#[derive(Parser, Debug)]
#[command(
    name = "quiver-operator",
    version,
    about = "Quiver operator: reconciles VectorIndex resources into serving vector search clusters"
)]
struct Cli {
    /// Watch only this namespace (namespaced RBAC is then enough). Empty: every namespace.
    #[arg(long, env = "QUIVER_WATCH_NAMESPACE", default_value = "")]
    namespace: String,
    /// index-node image for indexes that do not set spec.pods.image.
    #[arg(long, env = "QUIVER_NODE_IMAGE", default_value = concat!("ghcr.io/quiver-dev/index-node:", env!("CARGO_PKG_VERSION")))]
    node_image: String,
    /// Address of the HTTP port (/healthz, /readyz, /metrics).
    #[arg(long, env = "QUIVER_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http: SocketAddr,
    /// This replica's name in Events and the leader lease (the pod name in a cluster).
    #[arg(long, env = "QUIVER_POD_NAME", default_value = "quiver-operator")]
    identity: String,
    /// Reconcile only while holding the leader Lease, so that several replicas are safe.
    /// Off: this process reconciles at once (one replica only).
    #[arg(long, env = "QUIVER_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "QUIVER_LEASE_NAME", default_value = "quiver-operator")]
    lease_name: String,
    /// Namespace of the leader Lease. Empty: the watched namespace, else the client's
    /// default namespace (the pod's own in a cluster).
    #[arg(long, env = "QUIVER_LEASE_NAMESPACE", default_value = "")]
    lease_namespace: String,
    /// Seconds a leader's lease lasts without renewal: a standby takes over within it.
    #[arg(long, env = "QUIVER_LEASE_DURATION_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(2..=3600))]
    lease_duration_secs: u64,
    /// The leader renews this many seconds before its lease expires (also the clock skew
    /// between nodes the election tolerates). Must be below the duration.
    #[arg(long, env = "QUIVER_LEASE_GRACE_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_grace_secs: u64,
    /// A version whose Ready shard replicas still fail to load it (a corrupt or missing list
    /// file) this many seconds after it began warming fails with the nodes' reason, and the
    /// active version keeps serving. Nodes retry failed loads with back-off until then.
    #[arg(long, env = "QUIVER_WARM_TIMEOUT_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    warm_timeout_secs: u64,
    /// Seconds between samples of the routers' per-list probe counters of each active version
    /// (`status.load`, the load metrics); 0 turns load measurement off. Rates are smoothed
    /// with a half-life of four intervals.
    #[arg(long, env = "QUIVER_LOAD_SAMPLE_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    load_sample_secs: u64,
}

struct Http {
    metrics: Arc<Metrics>,
    ready: AtomicBool,
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("QUIVER_LOG_FORMAT").is_ok_and(|v| v == "json");
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::new());
    let http = Arc::new(Http {
        metrics: metrics.clone(),
        ready: AtomicBool::new(false),
    });
    let listener = tokio::net::TcpListener::bind(cli.http)
        .await
        .with_context(|| format!("cannot listen on {}", cli.http))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(http.clone());
    tracing::info!(addr = %cli.http, "http listening");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "quiver-operator".into(),
            instance: Some(cli.identity.clone()),
        },
    );
    let ctx = Arc::new(Context::new(
        client,
        ChildConfig {
            node_image: cli.node_image.clone(),
        },
        Duration::from_secs(cli.warm_timeout_secs),
        recorder,
        metrics,
        Duration::from_secs(cli.load_sample_secs),
    ));
    let namespace = Some(cli.namespace.clone()).filter(|n| !n.is_empty());
    http.ready.store(true, Ordering::SeqCst);
    if !cli.leader_election {
        tracing::info!(namespace = namespace.as_deref().unwrap_or("<all>"), node_image = %cli.node_image, "starting controller (no leader election)");
        http.metrics.leader.set(1);
        controller::run(ctx, namespace, shutdown_signal()).await;
        server.abort();
        tracing::info!("stopped");
        return Ok(());
    }

    if cli.lease_grace_secs >= cli.lease_duration_secs {
        anyhow::bail!(
            "--lease-grace-secs ({}) must be below --lease-duration-secs ({})",
            cli.lease_grace_secs,
            cli.lease_duration_secs
        );
    }
    let lease_ns = [cli.lease_namespace.clone(), cli.namespace.clone()]
        .into_iter()
        .find(|n| !n.is_empty())
        .unwrap_or_else(|| ctx.client.default_namespace().to_string());
    // Unique per process: a restarted pod with the same name must not inherit the lock.
    let identity = format!("{}-{}", cli.identity, std::process::id());
    let manager = LeaseManager::new(
        ctx.client.clone(),
        &cli.lease_name,
        &lease_ns,
        LeaseParams::new(&identity, cli.lease_duration_secs, cli.lease_grace_secs),
        LeaseCreateMode::AutoCreate,
    )
    .await
    .with_context(|| format!("leader lease {lease_ns}/{}", cli.lease_name))?;
    let (mut leader, lease_task) = manager.watch().await;
    tracing::info!(lease = %cli.lease_name, namespace = %lease_ns, %identity, "waiting for the leader lease");
    let mut signal = Box::pin(shutdown_signal());
    // Standby until this replica leads (or is told to stop).
    loop {
        if *leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            _ = &mut signal => {
                drop(leader);
                let _ = lease_task.await;
                server.abort();
                tracing::info!("stopped before leading");
                return Ok(());
            }
            changed = leader.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the leader election task ended");
                }
            }
        }
    }
    http.metrics.leader.set(1);
    tracing::info!(namespace = namespace.as_deref().unwrap_or("<all>"), node_image = %cli.node_image, %identity, "leading: starting controller");
    let lost = Arc::new(AtomicBool::new(false));
    let stop = {
        let lost = lost.clone();
        let mut leader = leader.clone();
        async move {
            tokio::select! {
                _ = signal => {}
                _ = async {
                    while leader.changed().await.is_ok() {
                        if !*leader.borrow() { break; }
                    }
                } => { lost.store(true, Ordering::SeqCst); }
            }
        }
    };
    controller::run(ctx, namespace, stop).await;
    http.metrics.leader.set(0);
    http.ready.store(false, Ordering::SeqCst);
    server.abort();
    if lost.load(Ordering::SeqCst) {
        // Another replica may be reconciling already: never run on without the lease.
        anyhow::bail!("lost the leader lease; exiting so that this replica restarts as a standby");
    }
    // Dropping the receiver makes the lease task release the lock: a standby takes over at
    // once instead of after the lease duration.
    drop(leader);
    match lease_task.await {
        Ok(Ok(_)) => tracing::info!("stopped; leader lease released"),
        Ok(Err(e)) => tracing::warn!(error = %e, "stopped; releasing the leader lease failed"),
        Err(e) => tracing::warn!(error = %e, "stopped; the lease task panicked"),
    }
    Ok(())
}

/// SIGTERM (what a kubelet sends) or Ctrl-C.
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
                tracing::warn!(error = %e, "cannot install a SIGTERM handler; only Ctrl-C stops");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn readyz(State(h): State<Arc<Http>>) -> impl IntoResponse {
    if h.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics_text(State(h): State<Arc<Http>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.encode(),
    )
}
