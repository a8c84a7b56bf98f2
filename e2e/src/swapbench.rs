//! `quiver-local demo --swap`: the swap benchmark. On the demo's Ready index, under
//! `index-node loadtest` load through the Service, it retrains (the `quiver.dev/retrain`
//! annotation), follows the new version to Active and the old one to Retired, then rolls
//! back (`spec.pinnedVersion` to the old version) and returns (clears the pin). It prints
//! queries served and failed, answers naming a version other than the two, p99 during the
//! swap against p99 before it, the time from the trigger to Active, and the rollback time
//! (spec change → first answer from the old version, and → old version Active).
//!
//! Load runs in 1 s `loadtest` runs in a thread; a run's p99 counts as "during the swap" when
//! the run overlaps the time from the new version's Warming to the old one's retirement.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::api::{Api, Patch, PatchParams};
use quiver_api::VectorIndex;
use quiver_api::keys::annotations;
use quiver_api::v1alpha1::VersionPhase;
use serde_json::{Value, json};

/// What the benchmark needs of the demo.
pub struct SwapBench<'a> {
    pub api: &'a Api<VectorIndex>,
    pub name: &'a str,
    pub index_node: &'a Path,
    pub target: String,
    pub queries: PathBuf,
    pub gt: PathBuf,
    pub concurrency: usize,
    pub timeout_secs: u64,
}

/// One loadtest run: when it ran (Unix ms) and its summary.
struct Run {
    start: u64,
    end: u64,
    summary: Value,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a loadtest run needs, owned (runs go on in a blocking task).
struct LoadSpec {
    index_node: PathBuf,
    target: String,
    queries: PathBuf,
    gt: PathBuf,
    concurrency: usize,
}

impl LoadSpec {
    fn of(b: &SwapBench<'_>) -> Self {
        LoadSpec {
            index_node: b.index_node.to_path_buf(),
            target: b.target.clone(),
            queries: b.queries.clone(),
            gt: b.gt.clone(),
            concurrency: b.concurrency,
        }
    }
}

fn loadtest(b: &LoadSpec, secs: f64) -> Result<Run> {
    let start = unix_ms();
    let args: Vec<std::ffi::OsString> = vec![
        "--target".into(),
        b.target.clone().into(),
        "--k".into(),
        "10".into(),
        "--queries".into(),
        b.queries.clone().into(),
        "--gt".into(),
        b.gt.clone().into(),
        "--duration-secs".into(),
        secs.to_string().into(),
        "--concurrency".into(),
        b.concurrency.to_string().into(),
    ];
    let summary = crate::demo::loadtest_json(&b.index_node, &args)?;
    Ok(Run {
        start,
        end: unix_ms(),
        summary,
    })
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// Phase of `version` in the index's status.
async fn phase_of(
    api: &Api<VectorIndex>,
    name: &str,
    version: &str,
) -> Result<Option<VersionPhase>> {
    let vi = api.get(name).await?;
    Ok(vi
        .status
        .as_ref()
        .and_then(|s| s.version(version))
        .map(|v| v.phase))
}

/// Polls every 50 ms until `done` holds of the status; the Unix ms it first held.
async fn until(b: &SwapBench<'_>, what: &str, done: impl Fn(&VectorIndex) -> bool) -> Result<u64> {
    let t0 = Instant::now();
    loop {
        let vi = b.api.get(b.name).await?;
        if done(&vi) {
            return Ok(unix_ms());
        }
        if t0.elapsed() > Duration::from_secs(b.timeout_secs) {
            let versions = vi.status.map(|s| s.versions).unwrap_or_default();
            bail!("{what}: not within {} s ({versions:?})", b.timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn active(vi: &VectorIndex) -> Option<&str> {
    vi.status.as_ref()?.active_version.as_deref()
}

/// Runs the benchmark and prints its report.
pub async fn run(b: &SwapBench<'_>) -> Result<()> {
    let vi = b.api.get(b.name).await?;
    let v1 = active(&vi).context("no active version")?.to_string();
    let spec = LoadSpec::of(b);
    // Blocking work off the runtime: the local cluster runs on it in this process.
    let before = tokio::task::spawn_blocking(move || loadtest(&spec, 10.0))
        .await
        .context("the load task")??;
    let bs = &before.summary;
    println!(
        "swap benchmark: before the swap, 10 s at concurrency {}: {} queries, {:.0} QPS, p50 {:.2} ms, p99 {:.2} ms, recall@10 {:.3}, {} failed",
        b.concurrency,
        u(bs, "queries"),
        f(bs, "qps"),
        f(bs, "p50_ms"),
        f(bs, "p99_ms"),
        f(bs, "recall"),
        u(bs, "failed")
    );

    // Background load in 1 s runs, recorded with their times.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let spec = LoadSpec::of(b);
    let load = tokio::task::spawn_blocking(move || -> Result<Vec<Run>> {
        let mut out = Vec::new();
        while !flag.load(Ordering::SeqCst) {
            out.push(loadtest(&spec, 1.0)?);
        }
        Ok(out)
    });
    let marks = drive(b, &v1).await;
    stop.store(true, Ordering::SeqCst);
    let runs = load.await.context("the load task")??;
    report(b, &v1, &runs, &marks?, &before);
    Ok(())
}

/// When each step of the swap and the rollback happened (Unix ms).
struct Marks {
    v2: String,
    trigger: u64,
    warming: u64,
    active: u64,
    retired: u64,
    pin: u64,
    rolled_back: u64,
    returned: u64,
}

async fn drive(b: &SwapBench<'_>, v1: &str) -> Result<Marks> {
    // Let the load settle first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let token = format!("bench-{}", unix_ms());
    let trigger = unix_ms();
    b.api
        .patch(
            b.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {annotations::RETRAIN: token}}})),
        )
        .await?;
    let newest = |vi: &VectorIndex| -> Option<(String, VersionPhase)> {
        let v = vi.status.as_ref()?.versions.first()?;
        (v.name != v1).then(|| (v.name.clone(), v.phase))
    };
    let warming = until(b, "the new version Warming", |vi| {
        newest(vi).is_some_and(|(_, p)| {
            matches!(
                p,
                VersionPhase::Warming | VersionPhase::Gating | VersionPhase::Active
            )
        })
    })
    .await?;
    let active_at = until(b, "the new version Active", |vi| {
        newest(vi).is_some_and(|(_, p)| p == VersionPhase::Active)
    })
    .await?;
    let v2 = active(&b.api.get(b.name).await?)
        .context("no active version")?
        .to_string();
    let retired = until(b, "the old version Retired", |vi| {
        vi.status
            .as_ref()
            .and_then(|s| s.version(v1))
            .is_some_and(|v| v.phase == VersionPhase::Retired)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let pin = unix_ms();
    b.api
        .patch(
            b.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"pinnedVersion": v1}})),
        )
        .await?;
    let rolled_back = until(b, "the rollback", |vi| active(vi) == Some(v1)).await?;
    until(b, "the newer version Retired after the rollback", |vi| {
        vi.status
            .as_ref()
            .and_then(|s| s.version(&v2))
            .is_some_and(|v| v.phase == VersionPhase::Retired)
    })
    .await?;
    b.api
        .patch(
            b.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"pinnedVersion": null}})),
        )
        .await?;
    let returned = until(b, "back on the newest version", |vi| {
        active(vi) == Some(v2.as_str())
    })
    .await?;
    if phase_of(b.api, b.name, v1).await? != Some(VersionPhase::Retired) {
        until(b, "the old version Retired again", |vi| {
            vi.status
                .as_ref()
                .and_then(|s| s.version(v1))
                .is_some_and(|v| v.phase == VersionPhase::Retired)
        })
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(Marks {
        v2,
        trigger,
        warming,
        active: active_at,
        retired,
        pin,
        rolled_back,
        returned,
    })
}

fn report(b: &SwapBench<'_>, v1: &str, runs: &[Run], m: &Marks, before: &Run) {
    let (mut served, mut failed, mut other) = (0u64, 0u64, 0u64);
    let mut during_p99: Vec<f64> = Vec::new();
    let mut first_v1_after_pin: Option<u64> = None;
    for r in runs {
        served += u(&r.summary, "ok");
        failed += u(&r.summary, "failed");
        for (v, seen) in r.summary["versions"].as_object().into_iter().flatten() {
            if v != v1 && v != &m.v2 {
                other += u(seen, "answers");
            }
            if v == v1
                && let Some(first) = seen["first_unix_ms"].as_u64()
                && first >= m.pin
            {
                first_v1_after_pin = Some(first_v1_after_pin.map_or(first, |x| x.min(first)));
            }
        }
        if r.end >= m.warming && r.start <= m.retired {
            during_p99.push(f(&r.summary, "p99_ms"));
        }
    }
    during_p99.sort_by(f64::total_cmp);
    let worst = during_p99.last().copied().unwrap_or(0.0);
    let median = during_p99.get(during_p99.len() / 2).copied().unwrap_or(0.0);
    let s = |a: u64, z: u64| z.saturating_sub(a) as f64 / 1000.0;
    println!(
        "swap benchmark: {} → {} under load at concurrency {}: {served} queries served, {failed} failed, {other} answers naming another version",
        v1, m.v2, b.concurrency
    );
    println!(
        "swap benchmark: p99 before {:.2} ms; during the swap (Warming → {v1} Retired, {} 1-s runs) median {median:.2} ms, worst {worst:.2} ms",
        f(&before.summary, "p99_ms"),
        during_p99.len()
    );
    println!(
        "swap benchmark: trigger → {} Active {:.1} s (→ Warming {:.1} s, Warming → Active {:.1} s); Active → {v1} Retired {:.1} s",
        m.v2,
        s(m.trigger, m.active),
        s(m.trigger, m.warming),
        s(m.warming, m.active),
        s(m.active, m.retired)
    );
    println!(
        "swap benchmark: rollback (spec.pinnedVersion: {v1}): spec change → first answer from {v1} {}, → {v1} Active {:.1} s; unpinned → {} Active again {:.1} s",
        first_v1_after_pin.map_or("not seen".to_string(), |t| format!("{:.2} s", s(m.pin, t))),
        s(m.pin, m.rolled_back),
        m.v2,
        s(m.rolled_back, m.returned)
    );
}
