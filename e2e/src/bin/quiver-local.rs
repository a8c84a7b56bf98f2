//! `quiver-local up|demo|kubelet|down|logs|service`: the local cluster on one machine.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Local Kubernetes stand-in: API server, controllers and a process kubelet")]
struct Cli {
    /// State directory (kubeconfig, pid file, pod volumes and logs).
    #[arg(
        long,
        env = "QUIVER_LOCAL_DIR",
        default_value = ".quiver-local",
        global = true
    )]
    state_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the cluster and run until SIGINT/SIGTERM.
    Up {
        /// API server port on 127.0.0.1 (0 = a free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Image to local binary, e.g. `index-node=target/release/index-node` (repeatable).
        #[arg(long = "image")]
        images: Vec<String>,
        /// Node name the kubelet registers.
        #[arg(long, default_value = "quiver-node")]
        node: String,
        /// Do not run the process kubelet.
        #[arg(long)]
        no_kubelet: bool,
        /// Do not install the VectorIndex CRD and the operator (operator/deploy/operator.yaml).
        #[arg(long)]
        no_operator: bool,
    },
    /// From nothing to a Ready, queried index: start the cluster with the operator, generate
    /// vectors with exact ground truth, apply examples/quickstart.yaml, show each phase with
    /// its time, query the index's Service (recall@10, QPS, p50/p99), then serve until Ctrl-C.
    /// Run through cargo (`cargo run --release -p quiver-e2e -- demo`), it builds the
    /// quiver-operator and index-node binaries first.
    Demo {
        /// Image to local binary (repeatable); quiver-operator and index-node default to the
        /// binaries beside this one.
        #[arg(long = "image")]
        images: Vec<String>,
        /// A VectorIndex manifest to apply instead of examples/quickstart.yaml (its source and
        /// storage URIs are replaced by the demo's files).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Vectors to generate (the manifest gives their dimension and metric).
        #[arg(long, default_value_t = 50_000)]
        n: usize,
        /// Query vectors, with exact ground truth.
        #[arg(long, default_value_t = 1000)]
        nq: usize,
        /// Override spec.index.nlist.
        #[arg(long)]
        nlist: Option<u32>,
        /// Override spec.shards.
        #[arg(long)]
        shards: Option<u32>,
        /// Queries sent through the Service.
        #[arg(long, default_value_t = 5000)]
        queries: u64,
        /// Queries in flight.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Seconds to wait for Ready.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Stop the cluster when done (for benchmarks) instead of serving until Ctrl-C.
        #[arg(long)]
        exit: bool,
        /// Then benchmark a version swap: retrain under load at concurrency 8 through the
        /// Service, follow the swap, roll back with spec.pinnedVersion and return; prints
        /// queries served and failed, p99 before and during the swap, trigger → Active and
        /// rollback times.
        #[arg(long)]
        swap: bool,
        /// Then benchmark a rebalance: Zipf-skewed queries at concurrency 8 through the
        /// Service, the operator's plan applied step by step (quiver.dev/rebalance: splits,
        /// then moves), then a hot shard's extra replica (Auto); prints QPS, each shard's load
        /// share and CPU time per query, and the throughput bound with a core per shard
        /// replica, before and after each step, and decision → Active.
        #[arg(long)]
        rebalance: bool,
        /// Plan steps the rebalance benchmark applies before the replica step (0: straight to
        /// the replica step, from the skewed start).
        #[arg(long, default_value_t = 6)]
        rebalance_steps: usize,
    },
    /// Kubelet-only mode: run just the process kubelet and the Service proxy against any
    /// API server (a real control plane, or another `up --no-kubelet`), until SIGINT/SIGTERM.
    Kubelet {
        /// The cluster to join.
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
        /// Image to local binary, e.g. `index-node=target/release/index-node` (repeatable).
        #[arg(long = "image")]
        images: Vec<String>,
        /// Node name to register.
        #[arg(long, default_value = "quiver-node")]
        node: String,
        /// Only bind and run pods of this namespace (default: every unscheduled pod).
        #[arg(long)]
        namespace: Option<String>,
        /// First loopback block for pod IPs (127.0.<block>.1 onwards); separate kubelets on
        /// one machine need separate blocks.
        #[arg(long, default_value_t = 1)]
        ip_block: u32,
    },
    /// Stop a running `up` (SIGTERM to the pid in the state directory).
    Down,
    /// Print where a client on this machine reaches a Service: `service <name> [-n namespace]`.
    Service {
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Kubeconfig of the cluster (default: the one in the state directory).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Print a container's log: `logs <pod> [-c container] [-n namespace]`.
    Logs {
        pod: String,
        #[arg(short, long)]
        container: Option<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
}

fn init_logs(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The binaries the operator's pods run, beside this one (target/<profile>/), unless the
/// table maps them already.
fn with_sibling_binaries(mut images: HashMap<String, PathBuf>) -> HashMap<String, PathBuf> {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(PathBuf::from))
    {
        for name in ["quiver-operator", "index-node"] {
            images
                .entry(name.to_string())
                .or_insert_with(|| dir.join(name));
        }
    }
    images
}

/// Run through cargo (which sets `CARGO`), builds the binaries the demo's pods run in this
/// binary's profile, so that a fresh clone needs one command.
fn build_siblings() -> Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let exe = std::env::current_exe()?;
    let profile = exe
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|p| p.to_str())
        .unwrap_or("debug")
        .to_string();
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-p", "quiver-operator", "-p", "index-node"]);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("building quiver-operator and index-node ({profile})");
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of quiver-operator and index-node failed ({status})");
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Up {
            port,
            images,
            node,
            no_kubelet,
            no_operator,
        } => {
            init_logs("info");
            let images = with_sibling_binaries(quiver_e2e::kubelet::parse_image_table(&images)?);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let mut cfg = quiver_e2e::local::LocalConfig::new(cli.state_dir);
            cfg.port = port;
            cfg.images = images;
            cfg.node = node;
            cfg.kubelet = !no_kubelet;
            rt.block_on(quiver_e2e::local::run_until_signal(cfg, !no_operator))
        }
        Cmd::Demo {
            images,
            manifest,
            n,
            nq,
            nlist,
            shards,
            queries,
            concurrency,
            timeout_secs,
            exit,
            swap,
            rebalance,
            rebalance_steps,
        } => {
            init_logs("warn");
            build_siblings()?;
            let images = with_sibling_binaries(quiver_e2e::kubelet::parse_image_table(&images)?);
            for (image, bin) in &images {
                if !bin.is_file() {
                    bail!(
                        "image {image}: {} does not exist; build it (cargo build --release -p {image}) or pass --image {image}=PATH",
                        bin.display()
                    );
                }
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(quiver_e2e::demo::run(quiver_e2e::demo::DemoConfig {
                state_dir: cli.state_dir,
                manifest,
                images,
                n,
                nq,
                nlist,
                shards,
                queries,
                concurrency,
                exit,
                timeout_secs,
                swap,
                rebalance,
                rebalance_steps,
            }))
        }
        Cmd::Kubelet {
            kubeconfig,
            images,
            node,
            namespace,
            ip_block,
        } => {
            init_logs("info");
            let images = quiver_e2e::kubelet::parse_image_table(&images)?;
            std::fs::create_dir_all(&cli.state_dir)?;
            let root = std::fs::canonicalize(&cli.state_dir)?.join("pods");
            let mut kcfg = quiver_e2e::kubelet::KubeletConfig::new(node, root, images);
            kcfg.namespace = namespace;
            kcfg.ip_block = ip_block;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(quiver_e2e::local::run_node_until_signal(&kubeconfig, kcfg))
        }
        Cmd::Down => {
            let pid_file = cli.state_dir.join("quiver-local.pid");
            let pid: i32 = std::fs::read_to_string(&pid_file)
                .with_context(|| format!("no running cluster ({} missing)", pid_file.display()))?
                .trim()
                .parse()
                .context("bad pid file")?;
            // SAFETY: kill(2) with a pid read from our own pid file; no memory is involved.
            let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
            if rc != 0 {
                bail!(
                    "could not signal pid {pid}: {}",
                    std::io::Error::last_os_error()
                );
            }
            for _ in 0..100 {
                if !pid_file.exists() {
                    println!("stopped");
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            bail!("pid {pid} did not stop within 10s")
        }
        Cmd::Service {
            name,
            namespace,
            kubeconfig,
        } => {
            let kubeconfig = kubeconfig.unwrap_or_else(|| cli.state_dir.join("kubeconfig"));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let addrs = rt.block_on(async {
                let client = quiver_e2e::local::client_for(&kubeconfig)
                    .await
                    .with_context(|| format!("kubeconfig {}", kubeconfig.display()))?;
                quiver_e2e::proxy::service_addresses(&client, &cli.state_dir, &namespace, &name)
                    .await
                    .map_err(anyhow::Error::from)
            })?;
            for (port_name, addr) in addrs {
                if port_name.is_empty() {
                    println!("{addr}");
                } else {
                    println!("{addr} {port_name}");
                }
            }
            Ok(())
        }
        Cmd::Logs {
            pod,
            container,
            namespace,
        } => {
            let text = quiver_e2e::kubelet::read_logs(
                &cli.state_dir.join("pods"),
                &namespace,
                &pod,
                container.as_deref(),
            )?;
            print!("{text}");
            Ok(())
        }
    }
}
