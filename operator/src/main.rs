//! `quiver-operator`: the controller binary. Watches `VectorIndex` resources (one namespace
//! or all) and reconciles each into a serving index cluster; serves `/healthz`, `/readyz`
//! and `/metrics` on one HTTP port; stops on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Parser;
use kube::runtime::events::{Recorder, Reporter};
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
    let ctx = Arc::new(Context {
        client,
        cfg: ChildConfig {
            node_image: cli.node_image.clone(),
        },
        recorder,
        metrics,
    });
    let namespace = Some(cli.namespace.clone()).filter(|n| !n.is_empty());
    tracing::info!(namespace = namespace.as_deref().unwrap_or("<all>"), node_image = %cli.node_image, "starting controller");
    http.ready.store(true, Ordering::SeqCst);
    controller::run(ctx, namespace).await;
    http.ready.store(false, Ordering::SeqCst);
    server.abort();
    tracing::info!("stopped");
    Ok(())
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
