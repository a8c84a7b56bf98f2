//! `quiver-local demo --rebalance`: the rebalance benchmark. On the demo's Ready index, under a
//! Zipf-skewed query stream (`loadtest --zipf 1.5`, concurrency 8) through the Service, it
//! waits for the operator's load figures (`status.load`) and measures a run before. Then it
//! applies the operator's plan step by step (the `quiver.dev/rebalance` annotation, as
//! `kubectl quiver rebalance` does): a split while one list outweighs a mean shard, moves while
//! they help; it follows each new version to Active, waits for its figures and measures a
//! run. Last, Auto mode with `maxReplicasPerShard` one above the spec gives the hottest shard
//! a replica, and a run is measured once the operator counts it. Each run
//! prints QPS through the router, each shard's load share (the operator's, from probe counts)
//! and its CPU time per query (the shard processes' own user+system time over the queries
//! served). All shards share this machine's cores, so QPS alone hides what a rebalance buys;
//! with a core per shard replica the hottest shard bounds throughput at
//! `replicas / CPU-per-query`: the bound a rebalance must raise.
//!
//! Load runs back to back in 5 s `loadtest` runs in a thread, so that traffic never pauses
//! while the operator samples; the runs chosen for "before" and "after" are whole runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::api::{Api, Patch, PatchParams};
use quiver_api::VectorIndex;
use quiver_api::keys::annotations;
use quiver_api::v1alpha1::LoadStatus;
use serde_json::{Value, json};

pub struct RebalanceBench<'a> {
    pub api: &'a Api<VectorIndex>,
    pub namespace: &'a str,
    pub name: &'a str,
    pub index_node: &'a Path,
    pub target: String,
    pub queries: PathBuf,
    pub concurrency: usize,
    pub timeout_secs: u64,
    /// Plan steps applied (splits, moves) before the replica step.
    pub plan_steps: usize,
}

/// CPU ticks (user + system) of each shard's processes, by shard number: the node processes
/// the kubelet started with this index's environment and a shard number.
pub fn shard_cpu_ticks(namespace: &str, index: &str) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let mut ns = None;
        let mut ix = None;
        let mut shard = None;
        for kv in env.split(|b| *b == 0) {
            let kv = String::from_utf8_lossy(kv);
            if let Some((k, v)) = kv.split_once('=') {
                match k {
                    k if k == quiver_api::env::NAMESPACE => ns = Some(v.to_string()),
                    k if k == quiver_api::env::INDEX => ix = Some(v.to_string()),
                    k if k == quiver_api::env::SHARD => shard = v.parse::<u32>().ok(),
                    _ => {}
                }
            }
        }
        let (Some(ns), Some(ix), Some(shard)) = (ns, ix, shard) else {
            continue;
        };
        if ns != namespace || ix != index {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command (which may hold spaces) start at ") ".
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command.
        let ticks = f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        *out.entry(shard).or_default() += ticks;
    }
    out
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// One loadtest run with the shards' CPU ticks at its start and end.
#[derive(Clone)]
struct Run {
    started: Instant,
    summary: Value,
    cpu_before: BTreeMap<u32, u64>,
    cpu_after: BTreeMap<u32, u64>,
}

impl Run {
    fn ok(&self) -> u64 {
        self.summary["ok"].as_u64().unwrap_or(0)
    }

    /// CPU milliseconds per query of each shard (all its replicas).
    fn cpu_ms_per_query(&self) -> BTreeMap<u32, f64> {
        let q = self.ok().max(1) as f64;
        self.cpu_after
            .iter()
            .map(|(s, after)| {
                let before = self.cpu_before.get(s).copied().unwrap_or(0);
                let ms = after.saturating_sub(before) as f64 / clock_ticks() * 1000.0;
                (*s, ms / q)
            })
            .collect()
    }
}

async fn until(
    b: &RebalanceBench<'_>,
    what: &str,
    done: impl Fn(&VectorIndex) -> bool,
) -> Result<VectorIndex> {
    let t0 = Instant::now();
    loop {
        let vi = b.api.get(b.name).await?;
        if done(&vi) {
            return Ok(vi);
        }
        if t0.elapsed() > Duration::from_secs(b.timeout_secs) {
            bail!("{what}: not within {} s", b.timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn load_of(vi: &VectorIndex, version: &str) -> Option<LoadStatus> {
    vi.status
        .as_ref()?
        .load
        .clone()
        .filter(|l| l.version == version)
}

/// The first whole run that started after `after`.
async fn next_run(runs: &Mutex<Vec<Run>>, after: Instant, timeout: Duration) -> Result<Run> {
    let t0 = Instant::now();
    loop {
        if let Some(r) = runs
            .lock()
            .ok()
            .and_then(|r| r.iter().find(|r| r.started >= after).cloned())
        {
            return Ok(r);
        }
        if t0.elapsed() > timeout {
            bail!("no loadtest run finished");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(b: &RebalanceBench<'_>) -> Result<()> {
    let vi = b.api.get(b.name).await?;
    let v1 = vi
        .status
        .as_ref()
        .and_then(|s| s.active_version.clone())
        .context("no active version")?;
    let stop = Arc::new(AtomicBool::new(false));
    let runs: Arc<Mutex<Vec<Run>>> = Arc::default();
    let driver = {
        let (stop, runs) = (stop.clone(), runs.clone());
        let (bin, target, queries, conc) = (
            b.index_node.to_path_buf(),
            b.target.clone(),
            b.queries.clone(),
            b.concurrency,
        );
        let (ns, name) = (b.namespace.to_string(), b.name.to_string());
        tokio::task::spawn_blocking(move || -> Result<()> {
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let cpu_before = shard_cpu_ticks(&ns, &name);
                let args: Vec<std::ffi::OsString> = vec![
                    "--target".into(),
                    target.clone().into(),
                    "--k".into(),
                    "10".into(),
                    "--queries".into(),
                    queries.clone().into(),
                    "--zipf".into(),
                    "1.5".into(),
                    "--duration-secs".into(),
                    "5".into(),
                    "--concurrency".into(),
                    conc.to_string().into(),
                ];
                let summary = crate::demo::loadtest_json(&bin, &args)?;
                let cpu_after = shard_cpu_ticks(&ns, &name);
                if let Ok(mut r) = runs.lock() {
                    r.push(Run {
                        started,
                        summary,
                        cpu_before,
                        cpu_after,
                    });
                }
            }
            Ok(())
        })
    };
    let outcome = async {
        println!(
            "\nRebalance benchmark: Zipf(1.5) queries at concurrency {} through the Service",
            b.concurrency
        );
        let vi = until(
            b,
            "the operator's load figures of the first version",
            |vi| load_of(vi, &v1).is_some(),
        )
        .await?;
        let mut load = load_of(&vi, &v1).context("load")?;
        let run = next_run(&runs, Instant::now(), Duration::from_secs(60)).await?;
        report(&format!("before ({v1})"), &load, &run);
        let mut active = v1.clone();
        // The operator's plan, applied step by step as `kubectl quiver rebalance` would: a
        // split while one list outweighs a mean shard, then moves while they help.
        for step in 1..=b.plan_steps {
            let Some(what) = plan_step(&load) else {
                println!(
                    "\nthe plan has nothing left to do (imbalance {:.2})",
                    load.imbalance
                );
                break;
            };
            let token = format!("bench-{}-{step}", std::process::id());
            let decided = Instant::now();
            b.api
                .patch(
                    b.name,
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"metadata": {"annotations": {annotations::REBALANCE: token}}}),
                    ),
                )
                .await?;
            let from = active.clone();
            let vi = until(b, "the rebalanced version active", |vi| {
                vi.status.as_ref().is_some_and(|s| {
                    s.active_version
                        .as_deref()
                        .and_then(|a| s.version(a))
                        .is_some_and(|v| v.rebalanced_from.as_deref() == Some(from.as_str()))
                })
            })
            .await?;
            let to_active = decided.elapsed().as_secs_f64();
            active = vi.status.and_then(|s| s.active_version).context("active")?;
            let vi = until(b, "the load figures of the rebalanced version", |vi| {
                load_of(vi, &active).is_some()
            })
            .await?;
            load = load_of(&vi, &active).context("load")?;
            let run = next_run(&runs, Instant::now(), Duration::from_secs(60)).await?;
            report(&format!("after {what} ({active})"), &load, &run);
            println!("  decision → {active} Active {to_active:.1} s (no train or build Job)");
        }
        replica_step(b, &runs, &active, &load).await
    }
    .await;
    stop.store(true, Ordering::SeqCst);
    let driven = driver.await?;
    let all = runs.lock().map(|r| r.clone()).unwrap_or_default();
    let failed: u64 = all
        .iter()
        .map(|r| r.summary["failed"].as_u64().unwrap_or(0))
        .sum();
    let ok: u64 = all.iter().map(Run::ok).sum();
    println!("queries during the benchmark: {ok} served, {failed} failed");
    outcome?;
    driven
}

/// What applying the plan of `load` would do now, as the operator decides it (a split first;
/// moves when they take off more than noise), or None.
fn plan_step(load: &LoadStatus) -> Option<String> {
    if let Some(s) = load.split() {
        return Some(format!(
            "a split of list {} (new half on shard {})",
            s.list, s.to
        ));
    }
    let p = load.plan.as_ref()?;
    (!p.moves.is_empty() && p.imbalance_after + 0.1 <= load.imbalance)
        .then(|| format!("{} list move(s), {} bytes", p.moves.len(), p.bytes))
}

/// Auto mode with one more replica allowed per shard, no splits and the lowest threshold: the
/// operator gives the hottest shard a replica (after moves, if the plan still has some that
/// help, each measured too). Measures a run once the new
/// replica is counted in the load figures, then restores the spec's rebalance settings.
async fn replica_step(
    b: &RebalanceBench<'_>,
    runs: &Mutex<Vec<Run>>,
    active: &str,
    load: &LoadStatus,
) -> Result<()> {
    let vi = b.api.get(b.name).await?;
    let mut original = serde_json::to_value(&vi.spec.rebalance)?;
    // Absent fields must be null in a merge patch to be removed again.
    if original.get("maxReplicasPerShard").is_none() {
        original["maxReplicasPerShard"] = Value::Null;
    }
    if load.imbalance < 1.1 {
        println!(
            "\nno hot shard left (imbalance {:.2}): no replica to add",
            load.imbalance
        );
        return Ok(());
    }
    let replicas = vi.spec.replicas;
    // The lowest threshold: after any moves that still help, a shard above it gets a replica.
    let threshold = 1.05;
    let decided = Instant::now();
    b.api
        .patch(
            b.name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"rebalance": {"mode": "Auto", "splitLists": false,
                "maxReplicasPerShard": replicas + 1, "windowSeconds": 5, "threshold": threshold}}}),
            ),
        )
        .await?;
    let counted = |vi: &VectorIndex| {
        let s = vi.status.as_ref()?;
        let h = s.hot_shards.first()?;
        let l = s.load.as_ref()?;
        l.shards
            .iter()
            .any(|x| x.shard == h.shard && x.replicas >= h.replicas)
            .then(|| (h.shard, l.clone(), s.active_version.clone()))
    };
    let result = async {
        let vi = until(b, "a hot shard's replica counted in the load", |vi| {
            counted(vi).is_some()
        })
        .await?;
        let to_ready = decided.elapsed().as_secs_f64();
        let (shard, after, now_active) = counted(&vi).context("hot shard")?;
        let run = next_run(runs, Instant::now(), Duration::from_secs(60)).await?;
        let version = now_active.unwrap_or_else(|| active.to_string());
        report(
            &format!("after a replica of shard {shard} ({version})"),
            &after,
            &run,
        );
        println!("  Auto on → replica Ready and counted {to_ready:.1} s (the window is 5 s)");
        for v in vi.status.iter().flat_map(|s| &s.versions) {
            if v.trigger.as_deref() == Some("rebalance:auto") {
                println!(
                    "  Auto first made {} ({} list move(s){})",
                    v.name,
                    v.moves.len(),
                    v.split
                        .as_ref()
                        .map_or(String::new(), |s| format!(", split of list {}", s.list))
                );
            }
        }
        anyhow::Ok(())
    }
    .await;
    b.api
        .patch(
            b.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rebalance": original}})),
        )
        .await?;
    result
}

/// Prints one measured run: QPS, and per shard the operator's load share, the CPU share, the
/// CPU per query and the throughput bound with a core per replica.
fn report(what: &str, load: &LoadStatus, r: &Run) {
    let cpu = r.cpu_ms_per_query();
    let total: f64 = cpu.values().sum();
    println!(
        "\n{what}: {:.0} QPS through the router (all shards on this machine's cores), imbalance {:.2}",
        r.summary["qps"].as_f64().unwrap_or(0.0),
        load.imbalance
    );
    println!(
        "  shard  load share  replicas  CPU share  CPU ms/query  bound QPS (a core per replica)"
    );
    let mut bound = f64::INFINITY;
    for s in &load.shards {
        let ms = cpu.get(&s.shard).copied().unwrap_or(0.0);
        let q = if ms > 0.0 {
            f64::from(s.replicas.max(1)) * 1000.0 / ms
        } else {
            f64::INFINITY
        };
        bound = bound.min(q);
        println!(
            "  {:<5}  {:>9.0}%  {:>8}  {:>8.0}%  {:>12.3}  {:>10.0}",
            s.shard,
            s.share * 100.0,
            s.replicas,
            if total > 0.0 { ms / total * 100.0 } else { 0.0 },
            ms,
            q
        );
    }
    println!("  throughput bound set by the hottest shard: {bound:.0} QPS");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_query_is_ticks_over_queries() {
        let r = Run {
            started: Instant::now(),
            summary: json!({"ok": 1000}),
            cpu_before: BTreeMap::from([(0, 100), (1, 50)]),
            cpu_after: BTreeMap::from([(0, 300), (1, 60)]),
        };
        let ms = r.cpu_ms_per_query();
        let tick_ms = 1000.0 / clock_ticks();
        assert!((ms[&0] - 200.0 * tick_ms / 1000.0).abs() < 1e-9, "{ms:?}");
        assert!((ms[&1] - 10.0 * tick_ms / 1000.0).abs() < 1e-9, "{ms:?}");
    }

    /// A process with a shard's environment is found under its shard number, and only for
    /// its own namespace and index.
    #[test]
    fn shard_processes_are_found_by_their_environment() {
        let ns = format!("bench-{}", std::process::id());
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .env(quiver_api::env::NAMESPACE, &ns)
            .env(quiver_api::env::INDEX, "docs")
            .env(quiver_api::env::SHARD, "3")
            .spawn()
            .expect("sleep");
        let found = shard_cpu_ticks(&ns, "docs");
        let other = shard_cpu_ticks(&ns, "other");
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found.keys().copied().collect::<Vec<_>>(), [3], "{found:?}");
        assert!(other.is_empty(), "{other:?}");
    }
}
