//! `quiver-local demo`: from nothing to a Ready, queried index on the local cluster. It starts
//! the cluster with the operator as a pod, generates a dataset with exact ground truth, applies
//! `examples/quickstart.yaml`, prints each phase of the first version with its time, queries
//! the index's Service with `index-node loadtest` (recall@10, QPS, p50/p99) and leaves the
//! cluster up for `kubectl`. With `--exit` it stops instead: the same run is the apply → Ready
//! benchmark (`--n 200000 --nlist 1024 --shards 2`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kube::api::{Api, PostParams};
use quiver_api::VectorIndex;
use quiver_api::v1alpha1::{IndexPhase, VersionPhase};
use serde_json::{Value, json};

use crate::install;
use crate::local::{Local, LocalConfig};

/// The quickstart manifest, as shipped in `examples/`.
pub const QUICKSTART: &str = include_str!("../../examples/quickstart.yaml");

pub struct DemoConfig {
    pub state_dir: PathBuf,
    /// A VectorIndex manifest instead of the quickstart.
    pub manifest: Option<PathBuf>,
    /// Image → binary (`quiver-operator` and `index-node` at least).
    pub images: HashMap<String, PathBuf>,
    /// Vectors to generate.
    pub n: usize,
    /// Query vectors (with exact ground truth) for the measurement.
    pub nq: usize,
    pub nlist: Option<u32>,
    pub shards: Option<u32>,
    /// Queries sent through the Service, and how many at once.
    pub queries: u64,
    pub concurrency: usize,
    /// Stop the cluster when done instead of serving until Ctrl-C.
    pub exit: bool,
    /// Seconds to wait for Ready.
    pub timeout_secs: u64,
    /// Then run the swap benchmark (retrain and swap under load, rollback; see
    /// [`crate::swapbench`]).
    pub swap: bool,
    /// Then run the rebalance benchmark (skewed load, the operator's plan applied; see
    /// [`crate::rebalancebench`]).
    pub rebalance: bool,
    /// Plan steps of the rebalance benchmark before its replica step.
    pub rebalance_steps: usize,
}

/// Phase timings of the first version: (phase, seconds spent in it).
type Timings = Vec<(VersionPhase, f64)>;

fn say(t0: Instant, msg: impl std::fmt::Display) {
    println!("[{:6.1}s] {msg}", t0.elapsed().as_secs_f64());
}

pub async fn run(cfg: DemoConfig) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let t0 = Instant::now();
    let index_node = cfg
        .images
        .get("index-node")
        .cloned()
        .context("no binary for the image index-node (--image index-node=PATH)")?;
    ensure!(
        cfg.images.contains_key("quiver-operator"),
        "no binary for the image quiver-operator (--image quiver-operator=PATH)"
    );
    let pid_file = cfg.state_dir.join("quiver-local.pid");
    if let Ok(pid) = std::fs::read_to_string(&pid_file)
        && let Ok(pid) = pid.trim().parse::<i32>()
        // SAFETY: kill(2) with signal 0 only checks that the pid exists.
        && unsafe { libc::kill(pid, 0) } == 0
    {
        bail!(
            "a local cluster (pid {pid}) already runs from {}; stop it with `quiver-local down` or pick another --state-dir",
            cfg.state_dir.display()
        );
    }
    std::fs::create_dir_all(&cfg.state_dir)?;
    let state = std::fs::canonicalize(&cfg.state_dir)?;
    let demo = state.join("demo");
    let store = demo.join("store");
    // The demo's own storage starts empty (the API server keeps nothing across runs).
    if store.exists() {
        std::fs::remove_dir_all(&store).with_context(|| format!("clearing {}", store.display()))?;
    }
    std::fs::create_dir_all(&store)?;

    let mut vi = manifest(&cfg)?;
    let name = vi
        .metadata
        .name
        .clone()
        .context("the manifest's VectorIndex has no name")?;
    let ns = vi
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let data = demo.join("data");
    generate(&cfg, &index_node, &vi, &data, t0)?;
    vi.spec.source.uri = Some(format!("file://{}", data.join("base.fvecs").display()));
    vi.spec.source.synthetic = None;
    vi.spec.storage.uri = format!("file://{}", store.display());
    vi.spec
        .validate(&name)
        .map_err(|e| anyhow::anyhow!("the manifest: {e}"))?;

    let mut lc = LocalConfig::new(state.clone());
    lc.images = cfg.images.clone();
    let local = Local::start(lc).await?;
    std::fs::write(&pid_file, std::process::id().to_string())?;
    let kubeconfig = local.server.kubeconfig.clone();
    say(
        t0,
        format_args!("local cluster up (kubeconfig {})", kubeconfig.display()),
    );
    let outcome = async {
        let client = crate::local::client_for(&kubeconfig).await?;
        install::install_operator(&client).await?;
        install::wait_operator_available(&client, 90).await?;
        say(
            t0,
            format_args!(
                "operator running ({}/{})",
                install::OPERATOR_NAMESPACE,
                install::OPERATOR_DEPLOYMENT
            ),
        );
        let api: Api<VectorIndex> = Api::namespaced(client.clone(), &ns);
        api.create(&PostParams::default(), &vi)
            .await
            .with_context(|| format!("applying VectorIndex {ns}/{name}"))?;
        say(t0, format_args!("applied VectorIndex {ns}/{name}"));
        let (timings, ready) = follow(&api, &name, t0, cfg.timeout_secs).await?;
        let total: f64 = timings.iter().map(|t| t.1).sum();
        let split: Vec<String> = timings
            .iter()
            .map(|(p, s)| format!("{p:?} {s:.1}s"))
            .collect();
        let st = ready.status.clone().unwrap_or_default();
        say(
            t0,
            format_args!(
                "Ready: apply → Ready {total:.1}s ({}); active {} with gate recall {}",
                split.join(", "),
                st.active_version.as_deref().unwrap_or("?"),
                st.recall.map_or("?".into(), |r| format!("{r:.3}"))
            ),
        );
        let addr = crate::proxy::service_addresses(&client, &state, &ns, &name)
            .await?
            .into_iter()
            .find(|(p, _)| p == quiver_api::ports::QUERY_NAME)
            .map(|(_, a)| a)
            .with_context(|| format!("Service {ns}/{name} has no port {:?}", quiver_api::ports::QUERY_NAME))?;
        let load = loadtest(&cfg, &index_node, &data, &addr.to_string())?;
        say(
            t0,
            format_args!(
                "{} queries through Service {name} ({addr}), {} at a time: recall@10 {}, {:.0} QPS, p50 {:.2} ms, p99 {:.2} ms, {} failed",
                load["queries"],
                cfg.concurrency,
                load["recall"].as_f64().map_or("?".into(), |r| format!("{r:.3}")),
                load["qps"].as_f64().unwrap_or(0.0),
                load["p50_ms"].as_f64().unwrap_or(0.0),
                load["p99_ms"].as_f64().unwrap_or(0.0),
                load["failed"],
            ),
        );
        if cfg.swap {
            crate::swapbench::run(&crate::swapbench::SwapBench {
                api: &api,
                name: &name,
                index_node: &index_node,
                target: addr.to_string(),
                queries: data.join("queries.fvecs"),
                gt: data.join("groundtruth.ivecs"),
                concurrency: 8,
                timeout_secs: cfg.timeout_secs,
            })
            .await?;
        }
        if cfg.rebalance {
            crate::rebalancebench::run(&crate::rebalancebench::RebalanceBench {
                api: &api,
                namespace: &ns,
                name: &name,
                index_node: &index_node,
                target: addr.to_string(),
                queries: data.join("queries.fvecs"),
                concurrency: 8,
                timeout_secs: cfg.timeout_secs,
                plan_steps: cfg.rebalance_steps,
            })
            .await?;
        }
        anyhow::Ok(())
    }
    .await;
    if outcome.is_ok() && !cfg.exit {
        let me = std::env::args()
            .next()
            .unwrap_or_else(|| "quiver-local".into());
        let sd = cfg.state_dir.display();
        println!(
            "\nThe cluster stays up until Ctrl-C (or `{me} --state-dir {sd} down`). Look around:\n\
             \x20 export KUBECONFIG={}\n\
             \x20 kubectl get vectorindexes,statefulsets,deployments,jobs,pods -A\n\
             \x20 kubectl describe vi {name}\n\
             \x20 kubectl get events --sort-by=.lastTimestamp\n\
             \x20 {me} --state-dir {sd} logs {name}-shard-0-0      # a shard's log (-n for other namespaces)\n\
             \x20 {me} --state-dir {sd} service {name}             # where this machine reaches the Service\n\
             \x20 {} loadtest --target <that address> --queries {} --gt {}",
            kubeconfig.display(),
            index_node.display(),
            data.join("queries.fvecs").display(),
            data.join("groundtruth.ivecs").display(),
        );
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    tracing::info!("stopping the local cluster");
    local.stop().await;
    let _ = std::fs::remove_file(&pid_file);
    outcome
}

/// The VectorIndex to apply: the manifest with the demo's overrides.
fn manifest(cfg: &DemoConfig) -> Result<VectorIndex> {
    let text = match &cfg.manifest {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => QUICKSTART.to_string(),
    };
    let objs = install::parse_manifest(&text)?;
    let obj = objs
        .into_iter()
        .find(|o| o.types.as_ref().is_some_and(|t| t.kind == "VectorIndex"))
        .context("the manifest holds no VectorIndex")?;
    let mut vi: VectorIndex =
        serde_json::from_value(serde_json::to_value(obj)?).context("the manifest's VectorIndex")?;
    if let Some(nlist) = cfg.nlist {
        vi.spec.index.nlist = nlist;
        vi.spec.index.nprobe = vi.spec.index.nprobe.map(|p| p.min(nlist));
    }
    if let Some(shards) = cfg.shards {
        vi.spec.shards = shards;
    }
    Ok(vi)
}

/// `index-node bench generate` into `data`, unless it already holds this dataset.
fn generate(
    cfg: &DemoConfig,
    bin: &Path,
    vi: &VectorIndex,
    data: &Path,
    t0: Instant,
) -> Result<()> {
    let params = json!({
        "n": cfg.n, "nq": cfg.nq, "dim": vi.spec.dimension, "metric": vi.spec.metric.as_str(),
        "held_out": vi.spec.rollout.eval_queries,
    });
    let stamp = data.join("params.json");
    if std::fs::read_to_string(&stamp)
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        == Some(params.clone())
    {
        say(
            t0,
            format_args!("dataset in {} (as generated before)", data.display()),
        );
        return Ok(());
    }
    say(
        t0,
        format_args!(
            "generating {} × {} vectors and {} queries with exact ground truth",
            cfg.n, vi.spec.dimension, cfg.nq
        ),
    );
    let status = Command::new(bin)
        .args(["bench", "generate", "--out"])
        .arg(data)
        .args(["--n", &cfg.n.to_string(), "--nq", &cfg.nq.to_string()])
        .args(["--dim", &vi.spec.dimension.to_string()])
        .args(["--metric", vi.spec.metric.as_str(), "--gt-k", "10"])
        .args(["--held-out", &vi.spec.rollout.eval_queries.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    ensure!(
        status.success(),
        "index-node bench generate failed ({status})"
    );
    std::fs::write(&stamp, params.to_string())?;
    say(t0, format_args!("dataset in {}", data.display()));
    Ok(())
}

/// Follows the first version's phases until the index is Ready; prints each change.
async fn follow(
    api: &Api<VectorIndex>,
    name: &str,
    t0: Instant,
    secs: u64,
) -> Result<(Timings, VectorIndex)> {
    let start = Instant::now();
    let mut timings: Timings = Vec::new();
    let mut current: Option<(VersionPhase, Instant)> = None;
    loop {
        let vi = api
            .get(name)
            .await
            .with_context(|| format!("reading VectorIndex {name}"))?;
        let st = vi.status.clone().unwrap_or_default();
        if let Some(v) = st.versions.last() {
            let changed = current.as_ref().is_none_or(|(p, _)| *p != v.phase);
            if changed {
                let now = Instant::now();
                if let Some((p, since)) = current.take() {
                    timings.push((p, (now - since).as_secs_f64()));
                }
                say(t0, format_args!("{} {:?}", v.name, v.phase));
                current = Some((v.phase, now));
            }
            if v.phase == VersionPhase::Failed {
                bail!(
                    "version {} failed: {}",
                    v.name,
                    v.reason.clone().unwrap_or_default()
                );
            }
        } else if timings.is_empty() && current.is_none() {
            // Before the operator writes the first version: time to pick it up.
            current = Some((VersionPhase::Pending, Instant::now()));
        }
        if st.phase == Some(IndexPhase::Ready) {
            // Active counts until the index reports Ready (every shard and router serving it).
            if let Some((p, since)) = current.take() {
                timings.push((p, since.elapsed().as_secs_f64()));
            }
            return Ok((timings, vi));
        }
        if let Some(c) = st.condition("Degraded").filter(|c| c.status == "True") {
            tracing::debug!(reason = %c.reason, message = %c.message, "degraded");
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let why = st
                .condition("Progressing")
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_default();
            bail!("not Ready after {secs} s ({why})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `index-node loadtest` through the Service; its JSON summary.
fn loadtest(cfg: &DemoConfig, bin: &Path, data: &Path, target: &str) -> Result<Value> {
    let args: Vec<std::ffi::OsString> = vec![
        "--target".into(),
        target.into(),
        "--k".into(),
        "10".into(),
        "--queries".into(),
        data.join("queries.fvecs").into(),
        "--gt".into(),
        data.join("groundtruth.ivecs").into(),
        "--count".into(),
        cfg.queries.to_string().into(),
        "--concurrency".into(),
        cfg.concurrency.to_string().into(),
    ];
    loadtest_json(bin, &args)
}

/// Runs `index-node loadtest --json` with `args`; its JSON summary (the last line).
pub(crate) fn loadtest_json(bin: &Path, args: &[std::ffi::OsString]) -> Result<Value> {
    let out = Command::new(bin)
        .args(["loadtest", "--json"])
        .args(args)
        .output()
        .with_context(|| format!("running {} loadtest", bin.display()))?;
    ensure!(
        out.status.success(),
        "index-node loadtest failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("loadtest output {line:?}"))
}
