//! The controller: one reconcile per `VectorIndex`, as a pipeline
//! observe → validate → plan → apply → status, each step with its own error variant naming
//! the index and the object. Invalid specs are not errors: they get a condition and an Event
//! and wait for the next change. Transient errors are retried with back-off by
//! [`error_policy`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use quiver_api::FINALIZER;
use quiver_api::keys::labels;
use quiver_api::schedule::Schedule;
use quiver_api::v1alpha1::{
    ListMove, LoadStatus, ReadyCount, RebalanceMode, VectorIndex, VectorIndexStatus, VersionPhase,
};
use tracing::{info, warn};

use crate::apply::{self, ApplyError, Writes};
use crate::capacity;
use crate::children::{self, ChildConfig, ChildrenError};
use crate::conditions::{self, Summary};
use crate::deletion::{self, DeletionStep};
use crate::drift;
use crate::hotreplicas;
use crate::hotspots::{self, Measured};
use crate::jobs::{self, JobError, JobKind, JobState};
use crate::lifecycle::{self, Inputs, LifecycleError, Note, RebalanceAsk, Versions};
use crate::listload::LoadTracker;
use crate::metrics::Metrics;
use crate::observe::{self, ObserveError, is_ready};
use crate::rebalance::Hysteresis;
use crate::spec_hash::spec_hash;

/// Look again this often when nothing is going on (reads only; no write unless something
/// changed).
pub const RESYNC: Duration = Duration::from_secs(300);

pub struct Context {
    pub client: Client,
    pub cfg: ChildConfig,
    /// A version whose shard replicas keep failing to load it this long fails.
    pub warm_timeout: Duration,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// How often the routers' per-list counters of an active version are sampled (zero: never).
    pub load_sample: Duration,
    /// Per index (by uid): the decayed per-list load of its active version, in memory only (a
    /// restarted operator measures again; nothing acts on it before a full window).
    pub loads: Mutex<BTreeMap<String, IndexLoad>>,
}

impl Context {
    pub fn new(
        client: Client,
        cfg: ChildConfig,
        warm_timeout: Duration,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        load_sample: Duration,
    ) -> Self {
        Context {
            client,
            cfg,
            warm_timeout,
            recorder,
            metrics,
            load_sample,
            loads: Mutex::default(),
        }
    }
}

/// What the operator keeps of one index's load between samples.
pub struct IndexLoad {
    tracker: LoadTracker,
    sizes: Vec<u64>,
    owners: Vec<u32>,
    /// The tracker's time base.
    since: Instant,
    last: Instant,
    /// Each router's probe total at its last sample, and the probes counted since the first.
    totals: BTreeMap<String, u64>,
    probes_seen: u64,
    /// Probes counted by the last sample (0: no traffic since the one before).
    last_delta: u64,
    /// Auto rebalance: how long the imbalance has stayed above the threshold.
    hysteresis: Hysteresis,
}

/// Imbalance a plan's moves must take off for Auto to make a version of them.
const MIN_MOVE_GAIN: f64 = 0.1;

/// The trigger of a rebalance Auto mode made.
pub const AUTO_REBALANCE: &str = "rebalance:auto";

/// List probes counted before a load figure is published: fewer are noise (a handful of test
/// queries), and publishing them would be a write on an index that is otherwise idle.
pub const MIN_PROBES_PUBLISHED: u64 = 1000;

/// Rates are smoothed over this many sample intervals (the half-life): a burst fades within
/// a few samples, a steady skew holds.
const LOAD_HALF_LIFE_SAMPLES: f64 = 4.0;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("observe: {0}")]
    Observe(#[from] ObserveError),
    #[error("plan children: {0}")]
    Children(#[from] ChildrenError),
    #[error("plan Jobs: {0}")]
    Jobs(#[from] JobError),
    #[error("plan lifecycle of VectorIndex {index}: {source}")]
    Lifecycle {
        index: String,
        source: LifecycleError,
    },
    #[error("apply: {0}")]
    Apply(#[from] ApplyError),
    #[error("status of VectorIndex {index}: {source}")]
    Status { index: String, source: kube::Error },
    #[error("deletion of VectorIndex {index}: {what}: {source}")]
    Deletion {
        index: String,
        what: &'static str,
        source: kube::Error,
    },
}

impl Error {
    /// The failed step, a metric label.
    pub fn step(&self) -> &'static str {
        match self {
            Error::Observe(_) => "observe",
            Error::Children(_) | Error::Jobs(_) | Error::Lifecycle { .. } => "plan",
            Error::Apply(_) => "apply",
            Error::Status { .. } => "status",
            Error::Deletion { .. } => "delete",
        }
    }

    /// Why the step failed, a bounded metric label: the API status of the first Kubernetes
    /// error in the chain (`Conflict`, `NotFound`, `Forbidden`, `Invalid`, `ServerError`...),
    /// `Transport` for other client errors, `Internal` when no API call failed.
    pub fn reason(&self) -> &'static str {
        let mut at: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = at {
            if let Some(k) = e.downcast_ref::<kube::Error>() {
                return match k {
                    kube::Error::Api(s) => match s.code {
                        400 => "BadRequest",
                        401 => "Unauthorized",
                        403 => "Forbidden",
                        404 => "NotFound",
                        409 => "Conflict",
                        410 => "Expired",
                        422 => "Invalid",
                        429 => "TooManyRequests",
                        500..=599 => "ServerError",
                        _ => "Api",
                    },
                    _ => "Transport",
                };
            }
            at = e.source();
        }
        "Internal"
    }

    /// A write that lost a race with another writer (a resourceVersion conflict): retry now.
    fn is_conflict(&self) -> bool {
        matches!(
            self,
            Error::Status { source: kube::Error::Api(s), .. }
                | Error::Deletion { source: kube::Error::Api(s), .. } if s.code == 409
        )
    }
}

/// Runs the controller until `stop` resolves (a signal, or the lost leader lease); reconciles
/// in flight finish first. `namespace` None watches all namespaces.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    // Only our children: the index label is on every one of them.
    let owned = watcher::Config::default().labels(labels::INDEX);
    Controller::new(
        scoped::<VectorIndex>(&client, ns),
        watcher::Config::default(),
    )
    .owns(scoped::<StatefulSet>(&client, ns), owned.clone())
    .owns(scoped::<Deployment>(&client, ns), owned.clone())
    .owns(scoped::<Job>(&client, ns), owned.clone())
    .owns(scoped::<Service>(&client, ns), owned)
    .graceful_shutdown_on(stop)
    .run(reconcile, error_policy, ctx)
    .for_each(|res| async move {
        match res {
            Ok((obj, _)) => {
                tracing::debug!(index = %obj.name, namespace = ?obj.namespace, "reconciled")
            }
            Err(e) => tracing::debug!(error = %e, "reconcile failed"),
        }
    })
    .await;
}

/// An Api of one namespace, or of all.
fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Retries transient errors with a short back-off; conflicts at once.
pub fn error_policy(vi: Arc<VectorIndex>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .errors
        .get_or_create(&vec![
            ("step", err.step().to_string()),
            ("reason", err.reason().to_string()),
        ])
        .inc();
    warn!(index = %vi.name_any(), namespace = ?vi.namespace(), step = err.step(), reason = err.reason(), error = %err, "reconcile failed");
    if err.is_conflict() {
        Action::requeue(Duration::from_millis(200))
    } else {
        Action::requeue(Duration::from_secs(5))
    }
}

pub async fn reconcile(vi: Arc<VectorIndex>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let out = reconcile_inner(&vi, &ctx).await;
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    let outcome = match &out {
        Ok(_) => "ok",
        Err(_) => "error",
    };
    ctx.metrics
        .reconciles
        .get_or_create(&vec![("outcome", outcome.to_string())])
        .inc();
    out
}

/// Samples the routers' per-list counters of the active version when a sample is due, and
/// returns the load figures measured now (None: not due, no router answered, or no rate yet:
/// a rate needs two samples of one router).
async fn measure_load(
    ctx: &Context,
    vi: &VectorIndex,
    active: Option<&str>,
    seen: &observe::Observed,
    now: Timestamp,
    counted: &mut Option<u64>,
) -> Option<LoadStatus> {
    let active = active?;
    if ctx.load_sample.is_zero() {
        return None;
    }
    let key = vi.uid().unwrap_or_default();
    let due = ctx.loads.lock().ok()?.get(&key).is_none_or(|l| {
        l.tracker.version() != active || l.last.elapsed() + SAMPLE_SLACK >= ctx.load_sample
    });
    if !due {
        return None;
    }
    let samples = observe::list_stats(&seen.router_pods, active).await;
    let nlist = samples.iter().map(|(_, l)| l.len()).max()?;
    let mut loads = ctx.loads.lock().ok()?;
    let fresh = || IndexLoad {
        tracker: LoadTracker::new(
            active,
            nlist,
            LOAD_HALF_LIFE_SAMPLES * ctx.load_sample.as_secs_f64(),
        ),
        sizes: vec![0; nlist],
        owners: vec![0; nlist],
        since: Instant::now(),
        last: Instant::now(),
        totals: BTreeMap::new(),
        probes_seen: 0,
        last_delta: 0,
        hysteresis: Hysteresis::default(),
    };
    let e = loads.entry(key).or_insert_with(fresh);
    if e.tracker.version() != active || e.sizes.len() != nlist {
        *e = fresh();
    }
    e.last = Instant::now();
    let at = e.since.elapsed().as_secs_f64();
    e.last_delta = 0;
    for (pod, lists) in &samples {
        let mut probes = vec![0u64; nlist];
        for s in lists {
            let i = s.list as usize;
            if i < nlist {
                probes[i] = s.probes;
                e.sizes[i] = s.size;
                e.owners[i] = s.shard;
            }
        }
        e.tracker.observe(pod, at, &probes);
        let total: u64 = probes.iter().sum();
        if let Some(was) = e.totals.insert(pod.clone(), total) {
            // A total that went down is a restarted router counting from zero.
            let delta = if total >= was { total - was } else { total };
            e.probes_seen += delta;
            e.last_delta += delta;
        }
    }
    *counted = Some(e.last_delta);
    let routers: Vec<String> = seen.router_pods.iter().map(|p| p.name_any()).collect();
    e.tracker
        .retain(&routers.iter().map(String::as_str).collect::<Vec<_>>());
    if !e.tracker.measured() || e.probes_seen < MIN_PROBES_PUBLISHED {
        return None;
    }
    // Ready replicas of each shard of the active version's map (a shard with none counts 1).
    let shards = e.owners.iter().copied().max().map_or(0, |m| m + 1) as usize;
    let mut replicas = vec![0u32; shards];
    for p in seen.shard_pods.iter().filter(|p| is_ready(p)) {
        let shard: Option<usize> = p.labels().get(labels::SHARD).and_then(|s| s.parse().ok());
        if let Some(r) = shard.and_then(|s| replicas.get_mut(s)) {
            *r += 1;
        }
    }
    for r in &mut replicas {
        *r = (*r).max(1);
    }
    let loads_now = e.tracker.loads(&e.sizes);
    hotspots::summarize(
        Measured {
            version: active,
            loads: &loads_now,
            sizes: &e.sizes,
            owners: &e.owners,
            replicas: &replicas,
            entry_bytes: capacity::entry_bytes(&vi.spec),
            max_bytes: vi.spec.rebalance.max_bytes_per_step,
        },
        vi.status
            .as_ref()
            .and_then(|s| s.load.as_ref())
            .filter(|l| l.version == active)
            .and_then(|l| l.plan.as_ref()),
        now,
    )
}

/// A reconcile woken a little before a sample is due takes it now rather than a whole
/// interval later.
const SAMPLE_SLACK: Duration = Duration::from_millis(250);

/// The rebalance asked for now, if any: a new `quiver.dev/rebalance` token (Manual or Auto),
/// or Auto's hysteresis after a full window above the threshold; either applies the plan of
/// `load` (the active version's freshest figures; `fresh`: measured this reconcile).
/// Whether Auto mode's window has passed: the imbalance of `load` (the active version's,
/// measured now: `fresh`) has stayed above the threshold for `windowSeconds`.
fn auto_window_passed(
    ctx: &Context,
    vi: &VectorIndex,
    load: Option<&LoadStatus>,
    fresh: bool,
    now: Timestamp,
) -> bool {
    let rb = &vi.spec.rebalance;
    // Auto judges fresh samples only, and only while queries flow: a sample that counted no
    // probe resets the window, so stale figures of traffic that ended never act.
    rb.mode == RebalanceMode::Auto
        && fresh
        && load.is_some_and(|l| {
            let Ok(mut loads) = ctx.loads.lock() else {
                return false;
            };
            loads
                .get_mut(&vi.uid().unwrap_or_default())
                .is_some_and(|e| {
                    if e.last_delta == 0 {
                        e.hysteresis = Hysteresis::default();
                        return false;
                    }
                    e.hysteresis.observe(
                        l.imbalance,
                        rb.threshold,
                        f64::from(rb.window_seconds),
                        now.as_millisecond() as f64 / 1000.0,
                    )
                })
        })
}

fn rebalance_ask<'a>(
    vi: &'a VectorIndex,
    old: &VectorIndexStatus,
    load: Option<&'a LoadStatus>,
    auto_due: bool,
) -> Option<RebalanceAsk<'a>> {
    if vi.spec.rebalance.mode == RebalanceMode::Off {
        return None;
    }
    let moves: &[ListMove] = load.and_then(|l| l.plan.as_ref()).map_or(&[], |p| &p.moves);
    let version = load.map(|l| l.version.as_str());
    let split = load
        .and_then(LoadStatus::split)
        .filter(|_| vi.spec.rebalance.split_lists);
    // Auto makes a new version for moves only when they lower the imbalance by more than
    // noise; otherwise a hot shard's extra replica (hotreplicas) is the next step.
    let moves_help = load.is_some_and(|l| {
        l.plan.as_ref().is_some_and(|p| {
            !p.moves.is_empty() && p.imbalance_after + MIN_MOVE_GAIN <= l.imbalance
        })
    });
    let token = vi
        .annotations()
        .get(quiver_api::keys::annotations::REBALANCE)
        .map(|t| t.trim())
        .filter(|t| !t.is_empty() && old.observed_rebalance.as_deref() != Some(*t));
    match token {
        Some(t) => Some(RebalanceAsk {
            trigger: format!("rebalance:{t}"),
            token: Some(t),
            version,
            moves,
            split,
        }),
        None if auto_due && (moves_help || split.is_some()) => Some(RebalanceAsk {
            trigger: AUTO_REBALANCE.to_string(),
            token: None,
            version,
            moves,
            split,
        }),
        None => None,
    }
}

async fn reconcile_inner(vi: &VectorIndex, ctx: &Context) -> Result<Action, Error> {
    let index = vi.name_any();
    let ns = vi.namespace().unwrap_or_default();
    let has_finalizer = vi.finalizers().iter().any(|f| f == FINALIZER);
    if vi.meta().deletion_timestamp.is_some() {
        // Children go with it by ownerReference; files per the deletion policy.
        ctx.metrics.forget_index(&ns, &index);
        if let Ok(mut loads) = ctx.loads.lock() {
            loads.remove(&vi.uid().unwrap_or_default());
        }
        return delete(vi, ctx, has_finalizer).await;
    }
    if let step @ (DeletionStep::AddFinalizer | DeletionStep::RemoveFinalizer) = deletion::plan(
        vi.spec.storage.deletion_policy,
        has_finalizer,
        false,
        &JobState::Absent,
    ) {
        set_finalizer(ctx, vi, step == DeletionStep::AddFinalizer).await?;
        // The write makes a new resourceVersion: the status is written by the reconcile its
        // watch event brings.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let now = Timestamp::now();
    let old = vi.status.clone().unwrap_or_default();

    // validate (pure)
    if let Err(errs) = vi.spec.validate(&index) {
        let message = errs.to_string();
        let versions = versions_of(&old);
        let (phase, conds) = conditions::summarize(&Summary {
            versions: &versions,
            shards: old.shards.unwrap_or_default(),
            extra_shard_pods: 0,
            shards_covered: (0, vi.spec.shards),
            routers: old.routers.unwrap_or_default(),
            invalid: Some(message.clone()),
            hold: None,
            generation: vi.meta().generation,
            now,
        });
        let mut status = old.clone();
        status.phase = Some(phase);
        status.observed_generation = vi.meta().generation;
        status.conditions = conditions::keep_transition_times(&old.conditions, conds);
        if status != old {
            write_status(ctx, vi, status).await?;
            ctx.metrics
                .writes
                .get_or_create(&vec![("kind", "status".into())])
                .inc();
            publish(
                ctx,
                vi,
                &[Note {
                    warning: true,
                    reason: "InvalidSpec".into(),
                    version: String::new(),
                    message: message.clone(),
                }],
            )
            .await;
        }
        ctx.metrics
            .reconciles
            .get_or_create(&vec![("outcome", "invalid".to_string())])
            .inc();
        warn!(index = %index, namespace = %ns, error = %message, "spec refused");
        return Ok(Action::await_change());
    }

    // observe
    let seen = observe::observe(&ctx.client, vi).await?;
    let mut counted = None;
    let load_measured = measure_load(
        ctx,
        vi,
        old.active_version.as_deref(),
        &seen,
        now,
        &mut counted,
    )
    .await;

    // plan (pure)
    let hash = spec_hash(&vi.spec);
    let uid = vi.uid().unwrap_or_default();
    let current = versions_of(&old);
    let schedule = vi.spec.retrain.as_ref().and_then(|r| {
        // validate() refused a schedule that does not parse.
        Schedule::parse(r.schedule.as_deref()?, r.time_zone.as_deref()).ok()
    });
    // Query drift of the active version, measured now (None: no router answered, or too few
    // queries yet), and the stored figure when nothing was measured.
    let drift_measured = old
        .active_version
        .as_deref()
        .and_then(|a| drift::measure(a, &seen.router_nodes, now));
    let drift_now = drift_measured.clone().or_else(|| {
        old.drift
            .clone()
            .filter(|d| old.active_version.as_deref() == Some(d.version.as_str()))
    });
    let drift_threshold = vi
        .spec
        .retrain
        .as_ref()
        .and_then(|r| r.drift.as_ref())
        .map(|d| (d.threshold, d.min_queries));
    let drift_trigger = drift::triggers(
        drift_now.as_ref(),
        drift_threshold,
        old.active_version.as_deref(),
        &old.versions,
    )
    .then(|| {
        format!(
            "drift:{:.3}",
            drift_now.as_ref().map_or(0.0, |d| d.statistic)
        )
    });
    let schedule_due = schedule.as_ref().and_then(|s| {
        let since = old
            .last_scheduled_retrain
            .as_ref()
            .or(vi.meta().creation_timestamp.as_ref())
            .map(|t| t.0)?;
        s.due(since, now)
    });
    let active_vectors = old.active_version.as_ref().and_then(|a| {
        let v = old.version(a)?;
        Some((a.as_str(), v.vectors?))
    });
    let synthetic = vi.spec.source.synthetic.as_ref().map(|s| s.count);
    let refuse_new = capacity::check(&vi.spec, active_vectors, synthetic);
    let pinned = vi
        .spec
        .pinned_version
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty());
    let load_now = load_measured
        .clone()
        .or_else(|| old.load.clone())
        .filter(|l| old.active_version.as_deref() == Some(l.version.as_str()));
    let auto_due = auto_window_passed(ctx, vi, load_now.as_ref(), load_measured.is_some(), now);
    let rebalance_ask = rebalance_ask(vi, &old, load_now.as_ref(), auto_due);
    let step = lifecycle::advance(
        &current,
        &Inputs {
            uid: &uid,
            spec_hash: &hash,
            shards: vi.spec.shards,
            replicas: vi.spec.replicas,
            parts: vi.spec.build.parts.max(1),
            min_recall: vi.spec.rollout.min_recall,
            jobs: &seen.job_states,
            index: &index,
            shard_nodes: &seen.shard_nodes,
            router_nodes: &seen.router_nodes,
            gate: seen.gate.as_ref(),
            retrain: vi
                .annotations()
                .get(quiver_api::keys::annotations::RETRAIN)
                .map(String::as_str),
            pinned,
            retain: vi.spec.storage.retain_versions,
            warm_timeout: ctx.warm_timeout,
            schedule_due,
            drift: drift_trigger.as_deref(),
            refuse_new: refuse_new.as_ref(),
            rebalance: rebalance_ask.clone(),
            now,
        },
    )
    .map_err(|source| Error::Lifecycle {
        index: index.clone(),
        source,
    })?;
    // Hot shards: another replica when Auto's window passed with no split or move to make,
    // one given back after a cool window.
    let rb = &vi.spec.rebalance;
    let auto = rb.mode == RebalanceMode::Auto;
    let bounds = hotreplicas::Bounds {
        shards: vi.spec.shards,
        replicas: vi.spec.replicas,
        max: match rb.max_replicas_per_shard {
            Some(m) if auto => m.max(vi.spec.replicas),
            _ => vi.spec.replicas,
        },
        threshold: rb.threshold,
        window_secs: i64::from(rb.window_seconds),
    };
    let sample = match (counted, load_measured.as_ref()) {
        (Some(0), _) => hotreplicas::Sample::Idle,
        (Some(_), Some(l)) => hotreplicas::Sample::Load(l),
        _ => hotreplicas::Sample::None,
    };
    let grow = auto_due
        && rebalance_ask.is_none()
        && !step
            .versions
            .versions
            .iter()
            .any(|v| v.phase.is_preparing());
    let hot = hotreplicas::next(&old.hot_shards, bounds, sample, grow, now);
    let hot_notes = hotreplicas::notes(&old.hot_shards, &hot, load_now.as_ref());
    let grew = hot_notes.iter().any(|n| n.reason == hotreplicas::GREW);
    let desired = children::build(vi, &ctx.cfg, &hot)?;
    if grew
        || rebalance_ask.as_ref().is_some_and(|a| a.token.is_none())
            && step.versions.versions.first().is_some_and(|v| {
                v.trigger.as_deref() == Some(AUTO_REBALANCE) && old.version(&v.name).is_none()
            })
    {
        // Auto acted: the next rebalance waits for a full window of its own.
        if let Ok(mut loads) = ctx.loads.lock()
            && let Some(l) = loads.get_mut(&uid)
        {
            l.hysteresis.acted();
        }
    }
    let new_jobs = step
        .create
        .iter()
        .map(|(kind, version)| match kind {
            JobKind::Remap => match step.versions.versions.iter().find(|v| &v.name == version) {
                Some(v) => jobs::remap(vi, &ctx.cfg, v),
                None => Err(JobError::Remap(version.clone())),
            },
            JobKind::Split => match step.versions.versions.iter().find(|v| &v.name == version) {
                Some(v) => jobs::split(vi, &ctx.cfg, v),
                None => Err(JobError::Split(version.clone())),
            },
            _ => jobs::build(vi, &ctx.cfg, *kind, version, &hash),
        })
        .chain(step.gc.iter().map(|plan| jobs::gc(vi, &ctx.cfg, plan)))
        .collect::<Result<Vec<_>, _>>()?;

    // apply: serving children first (they do not depend on versions)
    let mut writes = apply::children(&ctx.client, desired, &seen.children).await?;

    // status: intent first, before the Jobs it names
    let shard_ready = seen.shard_pods.iter().filter(|p| is_ready(p)).count() as u32;
    let router_ready = seen.router_pods.iter().filter(|p| is_ready(p)).count() as u32;
    let covered: BTreeSet<u32> = seen
        .shard_pods
        .iter()
        .filter(|p| is_ready(p))
        .filter_map(|p| p.labels().get(labels::SHARD)?.parse().ok())
        .filter(|s| *s < vi.spec.shards)
        .collect();
    let shard_pods_desired: u32 = (0..vi.spec.shards)
        .map(|s| hotreplicas::replicas_of(&hot, s, vi.spec.replicas))
        .sum();
    let shards = ReadyCount {
        ready: shard_ready,
        desired: shard_pods_desired,
    };
    let routers = ReadyCount {
        ready: router_ready,
        desired: vi.spec.router.replicas,
    };
    let (phase, conds) = conditions::summarize(&Summary {
        versions: &step.versions,
        shards,
        extra_shard_pods: shard_pods_desired.saturating_sub(vi.spec.shards * vi.spec.replicas),
        shards_covered: (covered.len() as u32, vi.spec.shards),
        routers,
        invalid: None,
        hold: step.hold.as_ref(),
        generation: vi.meta().generation,
        now,
    });
    let mut status = old.clone();
    status.observed_generation = vi.meta().generation;
    status.phase = Some(phase);
    status.active_version = step.versions.active.clone();
    status.target_version = step.versions.target.clone();
    status.recall = step.versions.recall;
    status.versions = step.versions.versions.clone();
    status.version_counter = step.versions.counter;
    status.observed_retrain = step.versions.observed_retrain.clone();
    status.observed_rebalance = step.versions.observed_rebalance.clone();
    status.last_scheduled_retrain = step.versions.last_scheduled.clone();
    status.drift = drift::to_publish(
        old.drift.as_ref(),
        drift_measured.as_ref(),
        status.active_version.as_deref(),
        now,
    );
    status.load = hotspots::to_publish(
        old.load.as_ref(),
        load_measured,
        status.active_version.as_deref(),
    );
    status.hot_shards = hot;
    status.shards = Some(shards);
    status.routers = Some(routers);
    status.conditions = conditions::keep_transition_times(&old.conditions, conds);
    if status != old {
        write_status(ctx, vi, status.clone()).await?;
        ctx.metrics
            .writes
            .get_or_create(&vec![("kind", "status".into())])
            .inc();
    }

    // Jobs the stored status now names; failed ones out of the way of their retry; Jobs of
    // versions no longer in preparation (beyond the active one's, kept as history) deleted.
    for j in &new_jobs {
        apply::create_job(&ctx.client, j, &mut writes).await?;
        info!(index = %index, namespace = %ns, job = %j.name_any(), "job created");
    }
    let keep: BTreeSet<String> = seen
        .jobs
        .iter()
        .filter(|j| {
            let v = j.labels().get(labels::VERSION).cloned().unwrap_or_default();
            let keep_version = status.versions.iter().any(|s| {
                s.name == v
                    && (s.phase.is_preparing() || Some(&s.name) == status.active_version.as_ref())
            });
            (keep_version || step.keep_jobs.contains(&j.name_any()))
                && !step.delete.contains(&j.name_any())
        })
        .map(|j| j.name_any())
        .chain(new_jobs.iter().map(|j| j.name_any()))
        .collect();
    apply::jobs_except(&ctx.client, &seen.jobs, &keep, &mut writes).await?;
    record_writes(&ctx.metrics, &writes);

    let notes: Vec<Note> = step.notes.iter().cloned().chain(hot_notes).collect();
    publish(ctx, vi, &notes).await;
    for n in &notes {
        if n.warning {
            warn!(index = %index, namespace = %ns, version = %n.version, reason = %n.reason, "{}", n.message);
        } else {
            info!(index = %index, namespace = %ns, version = %n.version, reason = %n.reason, "{}", n.message);
        }
    }
    let age = status.active_version.as_ref().and_then(|a| {
        let since = status.version(a)?.last_transition_time.as_ref()?;
        Some(now.duration_since(since.0).as_secs())
    });
    ctx.metrics
        .set_index(&ns, &index, shard_ready, router_ready, status.recall, age);
    if let Some(d) = &drift_now {
        ctx.metrics.set_drift(&ns, &index, d.statistic);
    }
    ctx.metrics.set_load(&ns, &index, status.load.as_ref());
    ctx.metrics.set_lifecycle(
        &ns,
        &index,
        &old,
        &status,
        now,
        (shard_pods_desired, vi.spec.router.replicas),
    );

    let preparing = status.versions.iter().any(|v| {
        matches!(
            v.phase,
            VersionPhase::Pending
                | VersionPhase::Warming
                | VersionPhase::Gating
                | VersionPhase::Draining
        )
    });
    let mut wait = match step.requeue {
        Some(d) => d,
        None if preparing => lifecycle::POLL,
        None => RESYNC,
    };
    if status.active_version.is_some() && !ctx.load_sample.is_zero() {
        wait = wait.min(ctx.load_sample);
    }
    // Wake for the next scheduled retrain (a second late, so that it is due then).
    let next_fire = schedule
        .as_ref()
        .and_then(|s| s.next_after(now))
        .map(|t| Duration::from_secs(now.duration_until(t).as_secs().max(0) as u64 + 1));
    Ok(Action::requeue(next_fire.map_or(wait, |f| f.min(wait))))
}

/// Time between a failed cleanup Job and its retry.
const CLEANUP_RETRY: Duration = Duration::from_secs(30);

/// A deleted index: with our finalizer and policy `Delete`, run the cleanup Job, and let the
/// resource go once it has succeeded (see [`deletion`]).
async fn delete(vi: &VectorIndex, ctx: &Context, has_finalizer: bool) -> Result<Action, Error> {
    let index = vi.name_any();
    let ns = vi.namespace().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let fail = |what| {
        let index = index.clone();
        move |source| Error::Deletion {
            index,
            what,
            source,
        }
    };
    let background = DeleteParams::background();
    let (job, state) = if has_finalizer {
        match observe::cleanup_job(&ctx.client, vi).await? {
            observe::Cleanup::Ours(job, state) => (job, state),
            observe::Cleanup::Foreign(old) => {
                // Left by an earlier resource of this name: out of the way first.
                if old.metadata.deletion_timestamp.is_none() {
                    jobs_api
                        .delete(&old.name_any(), &background)
                        .await
                        .map_err(fail("deleting a stale cleanup Job"))?;
                }
                return Ok(Action::requeue(lifecycle::POLL));
            }
        }
    } else {
        (None, JobState::Absent)
    };
    let step = deletion::plan(vi.spec.storage.deletion_policy, has_finalizer, true, &state);
    let job_name = quiver_api::names::cleanup_job(&index);
    match step {
        DeletionStep::Nothing | DeletionStep::AddFinalizer => Ok(Action::await_change()),
        DeletionStep::RemoveFinalizer => {
            set_finalizer(ctx, vi, false).await?;
            info!(index = %index, namespace = %ns, "deleted; storage files retained");
            Ok(Action::await_change())
        }
        DeletionStep::CreateCleanup => {
            let j = jobs::cleanup(vi, &ctx.cfg)?;
            let mut writes = apply::Writes::default();
            apply::create_job(&ctx.client, &j, &mut writes).await?;
            record_writes(&ctx.metrics, &writes);
            event(ctx, vi, EventType::Normal, "CleanupStarted", "Delete",
                  format!("deletionPolicy Delete: Job {job_name} deletes the files of every version under {}", vi.spec.storage.uri)).await;
            info!(index = %index, namespace = %ns, job = %job_name, "cleanup job created");
            Ok(Action::requeue(lifecycle::POLL))
        }
        DeletionStep::Wait => Ok(Action::requeue(lifecycle::POLL)),
        DeletionStep::Finish => {
            // The Job has no owner: delete it before the finalizer goes, or it would stay.
            jobs_api
                .delete(&job_name, &background)
                .await
                .map_err(fail("deleting the finished cleanup Job"))?;
            set_finalizer(ctx, vi, false).await?;
            info!(index = %index, namespace = %ns, "deleted; storage files deleted");
            Ok(Action::await_change())
        }
        DeletionStep::Retry { message } => {
            let failed_at = job
                .as_ref()
                .and_then(|j| j.status.as_ref()?.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Failed"))
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0);
            let waited = failed_at
                .map(|t| {
                    Duration::from_secs(Timestamp::now().duration_since(t).as_secs().max(0) as u64)
                })
                .unwrap_or(CLEANUP_RETRY);
            if waited < CLEANUP_RETRY {
                return Ok(Action::requeue(CLEANUP_RETRY - waited));
            }
            event(ctx, vi, EventType::Warning, "CleanupFailed", "Delete",
                  format!("{message}; retrying (set spec.storage.deletionPolicy: Retain to keep the files and let the resource go)")).await;
            warn!(index = %index, namespace = %ns, error = %message, "cleanup failed; retrying");
            jobs_api
                .delete(&job_name, &background)
                .await
                .map_err(fail("deleting the failed cleanup Job"))?;
            Ok(Action::requeue(lifecycle::POLL))
        }
    }
}

/// Adds or removes our finalizer; the resourceVersion makes it fail on a stale object rather
/// than drop a finalizer another controller added meanwhile.
async fn set_finalizer(ctx: &Context, vi: &VectorIndex, present: bool) -> Result<(), Error> {
    let api: Api<VectorIndex> =
        Api::namespaced(ctx.client.clone(), &vi.namespace().unwrap_or_default());
    let finalizers = deletion::finalizers_with(vi.finalizers(), FINALIZER, present);
    let patch = serde_json::json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": vi.resource_version(),
    }});
    api.patch(
        &vi.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|source| Error::Deletion {
        index: vi.name_any(),
        what: if present {
            "adding the finalizer"
        } else {
            "removing the finalizer"
        },
        source,
    })?;
    ctx.metrics
        .writes
        .get_or_create(&vec![("kind", "finalizer".into())])
        .inc();
    Ok(())
}

fn versions_of(s: &VectorIndexStatus) -> Versions {
    Versions {
        versions: s.versions.clone(),
        active: s.active_version.clone(),
        target: s.target_version.clone(),
        recall: s.recall,
        counter: s.version_counter,
        observed_retrain: s.observed_retrain.clone(),
        observed_rebalance: s.observed_rebalance.clone(),
        last_scheduled: s.last_scheduled_retrain.clone(),
    }
}

/// Replaces the status (optimistic concurrency: a newer object makes this fail with a
/// conflict, and the reconcile runs again on what is stored).
async fn write_status(
    ctx: &Context,
    vi: &VectorIndex,
    status: VectorIndexStatus,
) -> Result<(), Error> {
    let api: Api<VectorIndex> =
        Api::namespaced(ctx.client.clone(), &vi.namespace().unwrap_or_default());
    let mut obj = vi.clone();
    obj.status = Some(status);
    api.replace_status(&vi.name_any(), &PostParams::default(), &obj)
        .await
        .map_err(|source| Error::Status {
            index: vi.name_any(),
            source,
        })?;
    Ok(())
}

fn record_writes(m: &Metrics, w: &Writes) {
    for (kind, n) in [
        ("apply", w.applied),
        ("create", w.created),
        ("delete", w.deleted),
    ] {
        if n > 0 {
            m.writes
                .get_or_create(&vec![("kind", kind.into())])
                .inc_by(u64::from(n));
        }
    }
}

/// Events for the lifecycle steps.
async fn publish(ctx: &Context, vi: &VectorIndex, notes: &[Note]) {
    for n in notes {
        let (type_, action) = (
            if n.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            if n.version.is_empty() {
                "Validate"
            } else {
                "Lifecycle"
            },
        );
        event(ctx, vi, type_, &n.reason, action, n.message.clone()).await;
    }
}

/// One Event on the index. A failure to publish is logged, not a reconcile error: Events are
/// best effort in Kubernetes too.
async fn event(
    ctx: &Context,
    vi: &VectorIndex,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &vi.object_ref(&())).await {
        warn!(index = %vi.name_any(), error = %e, "cannot publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("x", "y")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn error_reason_is_the_api_status_anywhere_in_the_chain() {
        let status = Error::Status {
            index: "docs".into(),
            source: api(409),
        };
        assert_eq!((status.step(), status.reason()), ("status", "Conflict"));
        assert!(status.is_conflict());
        let gone = Error::Deletion {
            index: "docs".into(),
            what: "finalizer",
            source: api(503),
        };
        assert_eq!((gone.step(), gone.reason()), ("delete", "ServerError"));
        assert!(!gone.is_conflict());
        // Nested one level down (the apply step's own error type).
        let apply = Error::Apply(ApplyError {
            verb: "apply",
            kind: "StatefulSet".into(),
            name: "docs-shard-0".into(),
            source: api(403),
        });
        assert_eq!((apply.step(), apply.reason()), ("apply", "Forbidden"));
        let plan = Error::Lifecycle {
            index: "docs".into(),
            source: LifecycleError::Name(
                quiver_api::names::VersionName::parse("nope").expect_err("not a version name"),
            ),
        };
        assert_eq!((plan.step(), plan.reason()), ("plan", "Internal"));
    }
}
