//! The version lifecycle as a pure state machine: from the status, the spec's hash and what
//! was observed (Jobs, the nodes' Admin status, a gate measurement) to the next status and the
//! actions that move it on. No client and no clock: `now` is an input, so every transition is
//! unit-tested.
//!
//! Phases: Pending → Training → Building → Warming → Gating → Active → Draining → Retired, or
//! Failed. At most one version is in preparation (Pending..Gating) at a time; a newer spec
//! supersedes it. Intent first: a version enters the status as Pending before any Job for it
//! exists, and Jobs are created only for versions the stored status already names.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use quiver_api::names::VersionName;
use quiver_api::v1alpha1::{ListMove, ListSplit, VersionPhase, VersionStatus};

use crate::jobs::{JobKind, JobState};

/// Reason prefix of a version given up because a newer spec replaced it. Such a version does
/// not block a later one with the same hash (the spec may come back to it).
pub const SUPERSEDED: &str = "Superseded";

/// What one shard or router pod reported through `Admin/Status` (or that it could not).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeReport {
    pub pod: String,
    /// Shard number (shards only).
    pub shard: Option<u32>,
    /// The pod's Ready condition.
    pub ready: bool,
    /// Versions held warm, with their vector counts.
    pub warm: BTreeMap<String, u64>,
    /// Versions that failed to load, with the reason.
    pub failed: BTreeMap<String, String>,
    /// The version a router pins new queries to (routers), or the shard's active one.
    pub active: Option<String>,
    /// The Admin call failed (the pod is starting, or gone).
    pub unreachable: Option<String>,
    /// Queries in flight per version (routers).
    pub inflight: BTreeMap<String, u64>,
    /// Live queries per nearest-centroid-distance bucket, per version (routers; see
    /// [`crate::drift`]).
    pub drift: BTreeMap<String, Vec<u64>>,
}

/// A recall measurement of the Gating version by a router.
#[derive(Debug, Clone, PartialEq)]
pub enum GateOutcome {
    Measured {
        recall: f64,
        k: u32,
        nprobe: u32,
        queries: u32,
    },
    /// The measurement could not be made (retried).
    Error(String),
}

/// Everything the lifecycle reads.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The index's uid (version names carry a short form of it).
    pub uid: &'a str,
    pub spec_hash: &'a str,
    /// Shards and replicas per shard the spec asks for.
    pub shards: u32,
    pub replicas: u32,
    /// Build parts (> 1: a finalize Job after the build).
    pub parts: u32,
    pub min_recall: f64,
    /// State of every Job of this index, by name.
    pub jobs: &'a BTreeMap<String, JobState>,
    pub index: &'a str,
    pub shard_nodes: &'a [NodeReport],
    pub router_nodes: &'a [NodeReport],
    /// Set when the Gating version was measured this reconcile.
    pub gate: Option<&'a GateOutcome>,
    /// The `quiver.dev/retrain` annotation (a new value asks for one retrain).
    pub retrain: Option<&'a str>,
    /// `spec.pinnedVersion`, when set and not empty.
    pub pinned: Option<&'a str>,
    /// `spec.storage.retainVersions`: versions kept in storage, the active one included.
    pub retain: u32,
    /// A Warming version that a Ready replica still fails to load this long after it began
    /// warming fails (nodes retry loads on their own before that).
    pub warm_timeout: Duration,
    /// The newest fire time of `spec.retrain.schedule` after `Versions::last_scheduled` that
    /// is due (the caller asks the schedule; many missed runs give one time).
    pub schedule_due: Option<Timestamp>,
    /// Set when query drift asks for a retrain ([`crate::drift::triggers`]): the trigger, e.g.
    /// `drift:0.412`.
    pub drift: Option<&'a str>,
    /// Why no new version may start now (e.g. shard memory cannot hold two versions): triggers
    /// wait, unspent, and the status says why.
    pub refuse_new: Option<&'a Hold>,
    /// A rebalance asked for now (a new annotation token in Manual mode, the hysteresis in
    /// Auto mode), with the moves of the current plan.
    pub rebalance: Option<RebalanceAsk<'a>>,
    pub now: Timestamp,
}

/// A rebalance asked for: what the version records as its trigger, the annotation token it
/// spends (Manual), and the plan's moves of the active version's lists.
#[derive(Debug, Clone)]
pub struct RebalanceAsk<'a> {
    pub trigger: String,
    pub token: Option<&'a str>,
    /// The version the plan was measured on (it must still be the active one).
    pub version: Option<&'a str>,
    pub moves: &'a [ListMove],
    /// A list whose load no move can balance, to split instead (preferred over the moves).
    pub split: Option<ListSplit>,
}

/// Something that keeps the lifecycle from doing what the spec asks, for the Degraded
/// condition: a CamelCase reason and a message naming the field to change.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub reason: String,
    pub message: String,
}

/// The lifecycle part of the status.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Versions {
    /// Newest first.
    pub versions: Vec<VersionStatus>,
    pub active: Option<String>,
    pub target: Option<String>,
    pub recall: Option<f64>,
    pub counter: Option<u32>,
    /// The retrain token last acted on (`status.observedRetrain`).
    pub observed_retrain: Option<String>,
    /// The schedule fire time last acted on (`status.lastScheduledRetrain`).
    pub last_scheduled: Option<Time>,
    /// The rebalance token last acted on (`status.observedRebalance`).
    pub observed_rebalance: Option<String>,
}

/// Something worth an Event (and a log line).
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub warning: bool,
    /// CamelCase, e.g. `TrainFailed`.
    pub reason: String,
    pub version: String,
    pub message: String,
}

/// What the reconcile should do next.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Step {
    pub versions: Versions,
    /// Jobs to create (after the status is stored).
    pub create: Vec<(JobKind, String)>,
    /// Failed Jobs to delete so that they can be retried.
    pub delete: Vec<String>,
    pub notes: Vec<Note>,
    /// When to look again without any change: polling while nodes warm, back-off of retries.
    pub requeue: Option<Duration>,
    /// Why the spec is not followed right now (Degraded condition), if anything holds it.
    pub hold: Option<Hold>,
    /// A garbage-collection Job to create (after the status is stored).
    pub gc: Option<GcPlan>,
    /// Jobs not tied to a version in preparation that must stay (a running GC Job).
    pub keep_jobs: Vec<String>,
}

/// The files of `delete` go; files that the manifests of `keep` name stay even when they sit
/// under a deleted version (a rebalanced manifest reuses list files).
#[derive(Debug, Clone, PartialEq)]
pub struct GcPlan {
    pub job: String,
    pub delete: Vec<String>,
    pub keep: Vec<String>,
}

/// Failed versions kept in the status (their reason is history, and the newest failure of a
/// spec keeps a gate that failed from being retried); older ones are collected.
pub const FAILED_KEPT: usize = 3;

/// Poll interval while nodes load or a gate is pending (Job and pod changes wake the
/// controller anyway; node Admin status does not).
pub const POLL: Duration = Duration::from_secs(2);

/// Back-off before retry `attempt` (1-based) of a failed Job: 10 s, 20 s, 40 s, … up to 10 min.
pub fn backoff(attempt: u32) -> Duration {
    let secs = 10u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(6));
    Duration::from_secs(secs.min(600))
}

/// How long a Job of `v` must still wait before its next attempt (None: go now): the
/// back-off of its failed attempts, counted from the last failure.
fn retry_wait(v: &VersionStatus, now: Timestamp) -> Option<Duration> {
    let attempts = v.attempts.unwrap_or(0);
    let since = v
        .last_transition_time
        .as_ref()
        .map(|t| now.duration_since(t.0).as_secs_f64().max(0.0))
        .unwrap_or(f64::MAX);
    let wait = backoff(attempts).as_secs_f64();
    (attempts > 0 && since < wait).then(|| Duration::from_secs_f64((wait - since).max(1.0)))
}

/// Whether a new version must be made for `spec_hash`: no version of it is Active or in
/// preparation, and none failed for a reason that only a new trigger may retry (a gate).
pub fn needs_new_version(v: &Versions, spec_hash: &str) -> bool {
    match v
        .versions
        .iter()
        .find(|x| x.spec_hash.as_deref() == Some(spec_hash) && !is_superseded(x))
    {
        None => true,
        Some(x) => matches!(x.phase, VersionPhase::Draining | VersionPhase::Retired),
    }
}

fn is_superseded(v: &VersionStatus) -> bool {
    v.phase == VersionPhase::Failed
        && v.reason
            .as_deref()
            .is_some_and(|r| r.starts_with(SUPERSEDED))
}

/// One step of the lifecycle.
pub fn advance(current: &Versions, input: &Inputs<'_>) -> Result<Step, LifecycleError> {
    let mut step = Step {
        versions: current.clone(),
        ..Step::default()
    };
    let now = Time(input.now);

    // A pin freezes the index on one version: no trigger makes a new one until it goes.
    match input.pinned {
        Some(p) => pin(&mut step, p, input, &now),
        None => {
            restore_newest_good(&mut step, input, &now);
            if trigger(&mut step, input, &now)? {
                // Intent first: the status names the version before its train Job exists.
                return Ok(step);
            }
        }
    }

    if let Some(i) = step
        .versions
        .versions
        .iter()
        .position(|v| v.phase.is_preparing())
    {
        prepare(&mut step, i, input, &now);
    }
    retire_drained(&mut step, input, &now);
    collect(&mut step, input, &now);
    Ok(step)
}

/// Makes a new version when a trigger asks for one (a spec that shapes the index, a new
/// retrain token, a due schedule). True when it did.
fn trigger(step: &mut Step, input: &Inputs<'_>, now: &Time) -> Result<bool, LifecycleError> {
    let token = input.retrain.map(str::trim).filter(|t| !t.is_empty());
    let new_token = token.filter(|t| step.versions.observed_retrain.as_deref() != Some(*t));
    let scheduled = input.schedule_due.filter(|due| {
        step.versions
            .last_scheduled
            .as_ref()
            .is_none_or(|last| last.0 < *due)
    });
    let by_spec = needs_new_version(&step.versions, input.spec_hash);
    if !(by_spec || new_token.is_some() || scheduled.is_some() || input.drift.is_some()) {
        return rebalance(step, input, now);
    }
    if let Some(h) = input.refuse_new {
        // Unspent: the trigger acts once the hold is gone.
        step.hold = Some(h.clone());
        return Ok(false);
    }
    let name = next_name(&step.versions, input.uid)?;
    let (trigger, why) = if step.versions.versions.is_empty() {
        ("create".to_string(), String::new())
    } else if by_spec {
        ("spec".to_string(), "the spec changed".to_string())
    } else if let Some(t) = new_token {
        (
            format!("retrain:{t}"),
            format!("retrain {t:?} was asked for"),
        )
    } else if let Some(at) = scheduled {
        (
            format!("schedule:{at}"),
            format!("spec.retrain.schedule fired at {at}"),
        )
    } else {
        let d = input.drift.unwrap_or("drift");
        (
            d.to_string(),
            format!("live queries drifted ({d} > spec.retrain.drift.threshold)"),
        )
    };
    // One version answers every trigger at hand: each is spent.
    if let Some(t) = token {
        step.versions.observed_retrain = Some(t.to_string());
    }
    if let Some(due) = scheduled {
        step.versions.last_scheduled = Some(Time(due));
    }
    supersede_preparing(step, |_| true, &format!("{why}; {name} replaces it"), now);
    let mut v = VersionStatus::pending(name.to_string());
    v.trigger = Some(trigger.clone());
    v.spec_hash = Some(input.spec_hash.to_string());
    v.shards = Some(input.shards);
    v.created_at = Some(now.clone());
    v.last_transition_time = Some(now.clone());
    step.versions.counter = Some(name.counter());
    step.notes.push(Note {
        warning: false,
        reason: "VersionCreated".into(),
        version: v.name.clone(),
        message: format!("new version {} ({trigger})", v.name),
    });
    step.versions.versions.insert(0, v);
    Ok(true)
}

/// Makes a rebalance version when one is asked for: the active version's files under a shard
/// map with the plan's moves applied (no train, no build: a remap Job writes its manifest).
/// It waits, unspent, while another version is in preparation (a rebalance never supersedes a
/// retrain) or a hold refuses new versions. True when it made one.
fn rebalance(step: &mut Step, input: &Inputs<'_>, now: &Time) -> Result<bool, LifecycleError> {
    let Some(ask) = &input.rebalance else {
        return Ok(false);
    };
    if ask
        .token
        .is_some_and(|t| step.versions.observed_rebalance.as_deref() == Some(t))
    {
        return Ok(false);
    }
    if step
        .versions
        .versions
        .iter()
        .any(|v| v.phase.is_preparing())
    {
        return Ok(false);
    }
    let active = step
        .versions
        .active
        .clone()
        .and_then(|a| step.versions.versions.iter().find(|v| v.name == a).cloned());
    let spend = |step: &mut Step| {
        if let Some(t) = ask.token {
            step.versions.observed_rebalance = Some(t.to_string());
        }
    };
    // Auto does not retry a rebalance of this version that failed (its gate, its load): a
    // new token can, and a new active version starts afresh.
    if ask.token.is_none()
        && let Some(a) = &active
        && step.versions.versions.iter().any(|v| {
            v.phase == VersionPhase::Failed
                && !is_superseded(v)
                && v.rebalanced_from.as_deref() == Some(a.name.as_str())
        })
    {
        return Ok(false);
    }
    let Some(active) = active.filter(|a| ask.version == Some(a.name.as_str())) else {
        spend(step);
        step.notes.push(Note {
            warning: true,
            reason: "RebalanceSkipped".into(),
            version: String::new(),
            message: format!(
                "{} asked for, but there is no plan for the active version yet (status.load)",
                ask.trigger
            ),
        });
        return Ok(false);
    };
    if ask.split.is_some() && active.spec_hash.as_deref() != Some(input.spec_hash) {
        // A split reads the source of the spec as it is now: only the version built from it.
        spend(step);
        step.notes.push(Note {
            warning: true,
            reason: "RebalanceSkipped".into(),
            version: active.name.clone(),
            message: format!(
                "{} asked for a list split, but {} was built from another spec; a new version \
                 of this spec comes first",
                ask.trigger, active.name
            ),
        });
        return Ok(false);
    }
    if ask.moves.is_empty() && ask.split.is_none() {
        spend(step);
        step.notes.push(Note {
            warning: false,
            reason: "RebalanceSkipped".into(),
            version: active.name.clone(),
            message: format!(
                "{} asked for, but no move of a whole list lowers the most loaded shard",
                ask.trigger
            ),
        });
        return Ok(false);
    }
    if let Some(h) = input.refuse_new {
        step.hold = Some(h.clone());
        return Ok(false);
    }
    spend(step);
    let name = next_name(&step.versions, input.uid)?;
    let mut v = VersionStatus::pending(name.to_string());
    v.trigger = Some(ask.trigger.clone());
    v.spec_hash = active.spec_hash.clone();
    v.shards = active.shards;
    v.rebalanced_from = Some(active.name.clone());
    // A split comes first: no map of whole lists balances a list hotter than the mean shard;
    // the next plan moves the halves if they need it.
    match &ask.split {
        Some(s) => v.split = Some(s.clone()),
        None => v.moves = ask.moves.to_vec(),
    }
    v.created_at = Some(now.clone());
    v.last_transition_time = Some(now.clone());
    step.versions.counter = Some(name.counter());
    step.notes.push(Note {
        warning: false,
        reason: "VersionCreated".into(),
        version: v.name.clone(),
        message: match &v.split {
            Some(s) => format!(
                "new version {} ({}): list {} of {} split in two, the new half on shard {}",
                v.name, ask.trigger, s.list, active.name, s.to
            ),
            None => format!(
                "new version {} ({}): {} list move(s) from {}, reusing its files",
                v.name,
                ask.trigger,
                v.moves.len(),
                active.name
            ),
        },
    });
    step.versions.versions.insert(0, v);
    Ok(true)
}

/// Gives up every version in preparation that `which` selects. A version that once passed
/// its gate (a rollback being restored) goes back to Retired, its files intact; any other one
/// fails as superseded.
fn supersede_preparing(
    step: &mut Step,
    which: impl Fn(&VersionStatus) -> bool,
    why: &str,
    now: &Time,
) {
    for v in step.versions.versions.iter_mut() {
        if !v.phase.is_preparing() || !which(v) {
            continue;
        }
        let restored = v.recall.is_some();
        set_phase(
            v,
            if restored {
                VersionPhase::Retired
            } else {
                VersionPhase::Failed
            },
            now,
        );
        v.reason = Some(format!("{SUPERSEDED}: {why}"));
        step.notes.push(Note {
            warning: false,
            reason: SUPERSEDED.into(),
            version: v.name.clone(),
            message: format!("{} superseded: {why}", v.name),
        });
        if step.versions.target.as_deref() == Some(v.name.as_str()) {
            step.versions.target = None;
        }
    }
}

/// Whether a version passed its gate once and its files are still retained (collected
/// versions leave the status): it can serve again.
fn is_good(v: &VersionStatus) -> bool {
    v.recall.is_some()
        && matches!(
            v.phase,
            VersionPhase::Active | VersionPhase::Draining | VersionPhase::Retired
        )
}

/// Puts a retained version back on the warm → gate → swap path.
fn restore(step: &mut Step, i: usize, why: &str, now: &Time) {
    let v = &mut step.versions.versions[i];
    let name = v.name.clone();
    set_phase(v, VersionPhase::Warming, now);
    step.versions.target = Some(name.clone());
    step.requeue = Some(POLL);
    step.notes.push(Note {
        warning: false,
        reason: "Restoring".into(),
        version: name.clone(),
        message: format!("{why}: shard and router pods load {name} again from storage"),
    });
}

/// `spec.pinnedVersion`: serve exactly that version. Other versions in preparation give way;
/// a retained older one goes through warm → gate → swap; triggers wait until the pin goes.
fn pin(step: &mut Step, pinned: &str, input: &Inputs<'_>, now: &Time) {
    let Some(i) = step.versions.versions.iter().position(|v| v.name == pinned) else {
        let retained: Vec<&str> = step
            .versions
            .versions
            .iter()
            .filter(|v| is_good(v))
            .map(|v| v.name.as_str())
            .collect();
        step.hold = Some(Hold {
            reason: "PinnedVersionUnavailable".into(),
            message: format!(
                "spec.pinnedVersion {pinned} is not a version this index retains (retained: {}); nothing changes until it names one",
                if retained.is_empty() {
                    "none".to_string()
                } else {
                    retained.join(", ")
                }
            ),
        });
        return;
    };
    supersede_preparing(
        step,
        |v| v.name != pinned,
        &format!("spec.pinnedVersion is {pinned}"),
        now,
    );
    let v = &step.versions.versions[i];
    match v.phase {
        VersionPhase::Active => {
            if v.spec_hash.as_deref() != Some(input.spec_hash) {
                step.hold = Some(Hold {
                    reason: "Pinned".into(),
                    message: format!(
                        "spec.pinnedVersion holds {pinned}, which was built from another spec; a version of the current spec waits until spec.pinnedVersion is cleared"
                    ),
                });
            }
        }
        // Becomes active when it passes its gate, like any version.
        p if p.is_preparing() => {}
        VersionPhase::Draining | VersionPhase::Retired if v.recall.is_some() => {
            restore(step, i, &format!("spec.pinnedVersion is {pinned}"), now)
        }
        p => {
            step.hold = Some(Hold {
                reason: "PinnedVersionUnavailable".into(),
                message: format!(
                    "spec.pinnedVersion {pinned} is {p:?}{}: only a version that passed its gate can be pinned",
                    v.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                ),
            });
        }
    }
}

/// Unpinned, the index serves its newest good version: after a pin to an older one is
/// cleared, that newest one is restored (when the spec still matches it; otherwise the
/// spec's trigger makes a new version anyway).
fn restore_newest_good(step: &mut Step, input: &Inputs<'_>, now: &Time) {
    if step
        .versions
        .versions
        .iter()
        .any(|v| v.phase.is_preparing())
    {
        return;
    }
    let Some(active) = step.versions.active.clone() else {
        return;
    };
    let Some(i) = step.versions.versions.iter().position(is_good) else {
        return;
    };
    let v = &step.versions.versions[i];
    if v.name != active && v.spec_hash.as_deref() == Some(input.spec_hash) {
        restore(
            step,
            i,
            "spec.pinnedVersion is unset and this is the newest version that passed its gate",
            now,
        );
    }
}

/// Garbage collection: Retired versions beyond `retainVersions` (counted newest first, the
/// active and pinned ones included) and Failed ones beyond [`FAILED_KEPT`] lose their files
/// in one Job, then leave the status. Never while a version is prepared (a rebalanced
/// manifest being written may reuse older files), never the active or pinned version.
fn collect(step: &mut Step, input: &Inputs<'_>, now: &Time) {
    if step
        .versions
        .versions
        .iter()
        .any(|v| v.phase.is_preparing())
    {
        return;
    }
    let (mut kept_good, mut kept_failed) = (0u32, 0usize);
    let mut delete = Vec::new();
    for v in &step.versions.versions {
        let protected = step.versions.active.as_deref() == Some(v.name.as_str())
            || input.pinned == Some(v.name.as_str())
            || v.phase.is_held();
        match v.phase {
            VersionPhase::Failed if !protected => {
                kept_failed += 1;
                if kept_failed > FAILED_KEPT {
                    delete.push(v.name.clone());
                }
            }
            VersionPhase::Retired if !protected => {
                kept_good += 1;
                if kept_good > input.retain.max(1) {
                    delete.push(v.name.clone());
                }
            }
            _ => kept_good += u32::from(is_good(v)),
        }
    }
    let Some(n) = delete
        .iter()
        .filter_map(|d| VersionName::parse(d).ok())
        .map(|d| d.counter())
        .max()
    else {
        return;
    };
    let job = quiver_api::names::gc_job(input.index, n);
    let keep: Vec<String> = step
        .versions
        .versions
        .iter()
        .filter(|v| !delete.contains(&v.name))
        .map(|v| v.name.clone())
        .collect();
    let plan = GcPlan {
        job: job.clone(),
        delete: delete.clone(),
        keep,
    };
    // Retries back off on the newest collected version's attempts.
    let Some(first) = step
        .versions
        .versions
        .iter()
        .position(|v| v.name == delete[0])
    else {
        return;
    };
    match input.jobs.get(&job).cloned().unwrap_or(JobState::Absent) {
        JobState::Succeeded => {
            step.versions.versions.retain(|v| !delete.contains(&v.name));
            step.notes.push(Note {
                warning: false,
                reason: "Collected".into(),
                version: delete[0].clone(),
                message: format!(
                    "deleted the files of {} (storage.retainVersions {}; Job {job})",
                    delete.join(", "),
                    input.retain
                ),
            });
        }
        JobState::Running | JobState::Deleting => step.keep_jobs.push(job),
        JobState::Absent => match retry_wait(&step.versions.versions[first], input.now) {
            None => {
                step.keep_jobs.push(job);
                step.gc = Some(plan);
            }
            Some(wait) => step.requeue = Some(wait),
        },
        JobState::Failed { message } => {
            let v = &mut step.versions.versions[first];
            let attempts = v.attempts.unwrap_or(0) + 1;
            v.attempts = Some(attempts);
            v.last_transition_time = Some(now.clone());
            step.delete.push(job.clone());
            step.requeue = Some(backoff(attempts));
            step.notes.push(Note {
                warning: true,
                reason: "GcFailed".into(),
                version: delete[0].clone(),
                message: format!(
                    "garbage collection of {} failed (attempt {attempts}, retry in {} s): {message}",
                    delete.join(", "),
                    backoff(attempts).as_secs()
                ),
            });
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("cannot name the next version: {0}")]
    Name(#[from] quiver_api::names::VersionNameError),
}

fn next_name(v: &Versions, uid: &str) -> Result<VersionName, LifecycleError> {
    let highest = v
        .versions
        .iter()
        .filter_map(|x| VersionName::parse(&x.name).ok())
        .map(|n| n.counter())
        .chain(v.counter)
        .max()
        .unwrap_or(0);
    Ok(VersionName::new(highest + 1, uid)?)
}

fn set_phase(v: &mut VersionStatus, phase: VersionPhase, now: &Time) {
    v.phase = phase;
    v.attempts = None;
    v.reason = None;
    v.last_transition_time = Some(now.clone());
}

/// Moves the version in preparation (index `i`) one step on.
fn prepare(step: &mut Step, i: usize, input: &Inputs<'_>, now: &Time) {
    let name = step.versions.versions[i].name.clone();
    let job = |k: JobKind| k.job_name(input.index, &name);
    let state = |k: JobKind| input.jobs.get(&job(k)).cloned().unwrap_or(JobState::Absent);
    let phase = step.versions.versions[i].phase;
    let remap = step.versions.versions[i].rebalanced_from.clone();
    let split = step.versions.versions[i].split.clone();
    // A rebalance is made by one Job: a split or a remap.
    let kind = if split.is_some() {
        JobKind::Split
    } else {
        JobKind::Remap
    };
    match phase {
        VersionPhase::Pending if remap.is_some() => {
            step.create.push((kind, name.clone()));
            set_phase(&mut step.versions.versions[i], VersionPhase::Building, now);
            let from = remap.as_deref().unwrap_or_default();
            step.notes.push(Note {
                warning: false,
                reason: "Building".into(),
                version: name.clone(),
                message: match split {
                    Some(s) => format!(
                        "splitting list {} of {from} into {name} (Job {})",
                        s.list,
                        job(kind)
                    ),
                    None => format!(
                        "writing {name}'s manifest over the files of {from} (Job {})",
                        job(kind)
                    ),
                },
            });
        }
        VersionPhase::Pending => {
            step.create.push((JobKind::Train, name.clone()));
            set_phase(&mut step.versions.versions[i], VersionPhase::Training, now);
            step.notes.push(Note {
                warning: false,
                reason: "Training".into(),
                version: name.clone(),
                message: format!("training {name} (Job {})", job(JobKind::Train)),
            });
        }
        VersionPhase::Training
            if run_job(step, i, JobKind::Train, state(JobKind::Train), input, now) =>
        {
            let v = &mut step.versions.versions[i];
            set_phase(v, VersionPhase::Building, now);
            step.create.push((JobKind::Build, name.clone()));
            step.notes.push(Note {
                warning: false,
                reason: "Building".into(),
                version: name.clone(),
                message: format!(
                    "trained {name}; building it in {} part(s) (Job {})",
                    input.parts.max(1),
                    job(JobKind::Build)
                ),
            });
        }
        VersionPhase::Building => {
            let finalize = state(JobKind::Finalize);
            let built = if remap.is_some() {
                run_job(step, i, kind, state(kind), input, now)
            } else if input.parts > 1 && finalize != JobState::Absent {
                run_job(step, i, JobKind::Finalize, finalize, input, now)
            } else if run_job(step, i, JobKind::Build, state(JobKind::Build), input, now) {
                if input.parts > 1 {
                    step.create.push((JobKind::Finalize, name.clone()));
                    false
                } else {
                    true
                }
            } else {
                false
            };
            if built {
                let v = &mut step.versions.versions[i];
                set_phase(v, VersionPhase::Warming, now);
                step.versions.target = Some(name.clone());
                step.requeue = Some(POLL);
                step.notes.push(Note {
                    warning: false,
                    reason: "Warming".into(),
                    version: name.clone(),
                    message: format!("built {name}; shard and router pods are loading it"),
                });
            }
        }
        VersionPhase::Warming => warm(step, i, input, now),
        VersionPhase::Gating => gate(step, i, input, now),
        _ => {}
    }
}

/// Drives one Job of version `i`; true once it succeeded. A failed Job is recorded (reason,
/// attempts), deleted, and created again after the back-off.
fn run_job(
    step: &mut Step,
    i: usize,
    kind: JobKind,
    state: JobState,
    input: &Inputs<'_>,
    now: &Time,
) -> bool {
    let v = &mut step.versions.versions[i];
    let job = kind.job_name(input.index, &v.name);
    match state {
        JobState::Succeeded => return true,
        JobState::Running => {}
        JobState::Deleting => step.requeue = Some(POLL),
        JobState::Absent => {
            // First run (an operator restarted after recording the phase), or a retry.
            match retry_wait(v, input.now) {
                None => step.create.push((kind, v.name.clone())),
                Some(wait) => step.requeue = Some(wait),
            }
        }
        JobState::Failed { message } => {
            let attempts = v.attempts.unwrap_or(0) + 1;
            let reason = format!("{}Failed: {message}", kind.word());
            v.attempts = Some(attempts);
            v.reason = Some(reason.clone());
            v.last_transition_time = Some(now.clone());
            step.delete.push(job);
            step.requeue = Some(backoff(attempts));
            step.notes.push(Note {
                warning: true,
                reason: format!("{}Failed", kind.word()),
                version: v.name.clone(),
                message: format!(
                    "{} of {} failed (attempt {attempts}, retry in {} s): {message}",
                    kind.word().to_ascii_lowercase(),
                    v.name,
                    backoff(attempts).as_secs()
                ),
            });
        }
    }
    false
}

/// Warming → Gating once every shard of the version has a warm replica, every Ready shard
/// replica holds it warm, and a router holds it.
fn warm(step: &mut Step, i: usize, input: &Inputs<'_>, now: &Time) {
    step.requeue = Some(POLL);
    let v = &mut step.versions.versions[i];
    let name = v.name.clone();
    let shards = v.shards.unwrap_or(input.shards);
    let mut cold: Vec<String> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut warm_shards = BTreeSet::new();
    let mut vectors = BTreeMap::new();
    for n in input.shard_nodes {
        let Some(s) = n.shard.filter(|s| *s < shards) else {
            continue;
        };
        if let Some(count) = n.warm.get(&name) {
            warm_shards.insert(s);
            vectors.entry(s).or_insert(*count);
        } else if n.ready {
            // A Ready replica serves queries: it must hold the version before it goes active.
            if let Some(why) = n.failed.get(&name) {
                failures.push(format!("{}: {why}", n.pod));
            }
            cold.push(n.pod.clone());
        }
    }
    let router_warm = input
        .router_nodes
        .iter()
        .any(|r| r.warm.contains_key(&name));
    let all_shards = (0..shards).all(|s| warm_shards.contains(&s));
    if all_shards && cold.is_empty() && router_warm {
        set_phase(v, VersionPhase::Gating, now);
        v.vectors = Some(vectors.values().sum());
        step.notes.push(Note {
            warning: false,
            reason: "Gating".into(),
            version: name.clone(),
            message: format!("{name} is warm on every shard; measuring its recall"),
        });
        return;
    }
    // Nodes retry failed loads with their own back-off; past the warm timeout a failure
    // that persists (a corrupt file, a version that does not fit) fails the version.
    let warming_for = v
        .last_transition_time
        .as_ref()
        .map(|t| input.now.duration_since(t.0).as_secs_f64().max(0.0))
        .unwrap_or(0.0);
    if let Some(first) = failures.first()
        && warming_for >= input.warm_timeout.as_secs_f64()
    {
        let reason = format!(
            "WarmFailed: {first} (still failing {} s after warming began)",
            warming_for.round()
        );
        set_phase(v, VersionPhase::Failed, now);
        v.reason = Some(reason.clone());
        step.versions.target = None;
        step.requeue = None;
        step.notes.push(Note {
            warning: true,
            reason: "WarmFailed".into(),
            version: name.clone(),
            message: format!("{name} failed: {reason}; the active version keeps serving"),
        });
        return;
    }
    let reason = failures.first().map(|f| format!("WarmFailed: {f}"));
    if v.reason != reason {
        if let Some(r) = &reason {
            step.notes.push(Note {
                warning: true,
                reason: "WarmFailed".into(),
                version: name.clone(),
                message: r.clone(),
            });
        }
        v.reason = reason;
    }
}

/// Gating → Active (the previous active version starts draining) or Failed.
fn gate(step: &mut Step, i: usize, input: &Inputs<'_>, now: &Time) {
    let name = step.versions.versions[i].name.clone();
    match input.gate {
        None => step.requeue = Some(POLL),
        Some(GateOutcome::Error(e)) => {
            step.requeue = Some(POLL);
            let reason = Some(format!("GateError: {e}"));
            let v = &mut step.versions.versions[i];
            if v.reason != reason {
                v.reason = reason;
            }
        }
        Some(GateOutcome::Measured {
            recall,
            k,
            nprobe,
            queries,
        }) => {
            let recall = (recall * 10_000.0).round() / 10_000.0;
            if recall + 1e-12 >= input.min_recall {
                let previous = step.versions.active.replace(name.clone());
                for v in step.versions.versions.iter_mut() {
                    if v.name == name {
                        set_phase(v, VersionPhase::Active, now);
                        v.recall = Some(recall);
                    } else if Some(&v.name) == previous.as_ref() || v.phase == VersionPhase::Active
                    {
                        set_phase(v, VersionPhase::Draining, now);
                    }
                }
                step.versions.target = None;
                step.versions.recall = Some(recall);
                step.notes.push(Note {
                    warning: false,
                    reason: "Activated".into(),
                    version: name.clone(),
                    message: format!(
                        "{name} passed its gate (recall@{k} {recall:.4} >= minRecall {} at nprobe {nprobe}, {queries} queries) and is active",
                        input.min_recall
                    ),
                });
            } else {
                let reason = format!(
                    "GateFailed: recall {recall:.4} < minRecall {} at nprobe {nprobe}",
                    input.min_recall
                );
                let v = &mut step.versions.versions[i];
                set_phase(v, VersionPhase::Failed, now);
                v.recall = Some(recall);
                v.reason = Some(reason.clone());
                step.versions.target = None;
                step.notes.push(Note {
                    warning: true,
                    reason: "GateFailed".into(),
                    version: name.clone(),
                    message: format!("{name}: {reason} (recall@{k}, {queries} queries)"),
                });
            }
        }
    }
}

/// Draining → Retired once no router can route to it any more: every router that answers
/// pins the active version and reports no query in flight on the drained one (a router that
/// does not answer blocks it while it is Ready, as it may still hold queries; one that is not
/// Ready gets no traffic). Shards drop a version only once it is Retired.
fn retire_drained(step: &mut Step, input: &Inputs<'_>, now: &Time) {
    let Some(active) = step.versions.active.clone() else {
        return;
    };
    let answering = || {
        input
            .router_nodes
            .iter()
            .filter(|r| r.unreachable.is_none())
    };
    let blocked = input
        .router_nodes
        .iter()
        .any(|r| r.unreachable.is_some() && r.ready);
    let moved = !blocked
        && answering().next().is_some()
        && answering().all(|r| r.active.as_deref() == Some(active.as_str()));
    for v in step.versions.versions.iter_mut() {
        if v.phase != VersionPhase::Draining {
            continue;
        }
        let busy: u64 = answering()
            .map(|r| r.inflight.get(&v.name).copied().unwrap_or(0))
            .sum();
        if moved && busy == 0 {
            set_phase(v, VersionPhase::Retired, now);
            step.notes.push(Note {
                warning: false,
                reason: "Retired".into(),
                version: v.name.clone(),
                message: format!(
                    "{} retired: every router serves {active} and none has a query on it",
                    v.name
                ),
            });
        } else {
            step.requeue = Some(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "7f3a9c2e-0000-4000-8000-000000000001";
    const HASH: &str = "00000000000000aa";

    struct World {
        jobs: BTreeMap<String, JobState>,
        shards: Vec<NodeReport>,
        routers: Vec<NodeReport>,
        gate: Option<GateOutcome>,
        now: Timestamp,
        parts: u32,
        retrain: Option<String>,
        pinned: Option<String>,
        retain: u32,
        schedule_due: Option<Timestamp>,
        drift: Option<String>,
        refuse: Option<Hold>,
        /// A rebalance asked for: (trigger, token, plan's version, moves).
        rebalance: Option<(String, Option<String>, String, Vec<ListMove>)>,
        /// The split the rebalance asks for, if any.
        split: Option<ListSplit>,
    }

    impl World {
        fn new() -> Self {
            World {
                jobs: BTreeMap::new(),
                shards: Vec::new(),
                routers: Vec::new(),
                gate: None,
                now: Timestamp::from_second(1_800_000_000).expect("time"),
                parts: 1,
                retrain: None,
                pinned: None,
                retain: 2,
                schedule_due: None,
                drift: None,
                refuse: None,
                rebalance: None,
                split: None,
            }
        }

        fn step(&self, v: &Versions, hash: &str) -> Step {
            advance(
                v,
                &Inputs {
                    uid: UID,
                    spec_hash: hash,
                    shards: 2,
                    replicas: 2,
                    parts: self.parts,
                    min_recall: 0.9,
                    jobs: &self.jobs,
                    index: "docs",
                    shard_nodes: &self.shards,
                    router_nodes: &self.routers,
                    gate: self.gate.as_ref(),
                    retrain: self.retrain.as_deref(),
                    pinned: self.pinned.as_deref(),
                    retain: self.retain,
                    warm_timeout: Duration::from_secs(300),
                    schedule_due: self.schedule_due,
                    drift: self.drift.as_deref(),
                    refuse_new: self.refuse.as_ref(),
                    rebalance: self.rebalance.as_ref().map(|(t, tok, v, m)| RebalanceAsk {
                        trigger: t.clone(),
                        token: tok.as_deref(),
                        version: Some(v.as_str()),
                        moves: m,
                        split: self.split.clone(),
                    }),
                    now: self.now,
                },
            )
            .expect("step")
        }

        fn job(&mut self, name: &str, s: JobState) {
            self.jobs.insert(name.into(), s);
        }

        fn later(&mut self, secs: i64) {
            self.now = self
                .now
                .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(secs))
                .expect("time");
        }
    }

    fn node(pod: &str, shard: Option<u32>, warm: &[&str]) -> NodeReport {
        NodeReport {
            pod: pod.into(),
            shard,
            ready: true,
            warm: warm.iter().map(|v| (v.to_string(), 100)).collect(),
            ..NodeReport::default()
        }
    }

    fn phase(s: &Step) -> VersionPhase {
        s.versions.versions[0].phase
    }

    /// Runs the first version from nothing to Active, checking each step.
    fn to_active(w: &mut World) -> Versions {
        let s = w.step(&Versions::default(), HASH);
        assert_eq!(s.versions.versions.len(), 1);
        assert_eq!(s.versions.versions[0].name, "v1-7f3a9c2e");
        assert_eq!(phase(&s), VersionPhase::Pending);
        assert!(
            s.create.is_empty(),
            "intent first: no Job before the status names it"
        );

        let s = w.step(&s.versions, HASH);
        assert_eq!(phase(&s), VersionPhase::Training);
        assert_eq!(s.create, vec![(JobKind::Train, "v1-7f3a9c2e".into())]);

        w.job("docs-v1-7f3a9c2e-train", JobState::Running);
        let s2 = w.step(&s.versions, HASH);
        assert_eq!(phase(&s2), VersionPhase::Training);
        assert!(s2.create.is_empty());

        w.job("docs-v1-7f3a9c2e-train", JobState::Succeeded);
        let s = w.step(&s2.versions, HASH);
        assert_eq!(phase(&s), VersionPhase::Building);
        assert_eq!(s.create, vec![(JobKind::Build, "v1-7f3a9c2e".into())]);

        w.job("docs-v1-7f3a9c2e-build", JobState::Succeeded);
        let s = w.step(&s.versions, HASH);
        assert_eq!(phase(&s), VersionPhase::Warming);
        assert_eq!(s.versions.target.as_deref(), Some("v1-7f3a9c2e"));

        // One shard warm only: keep warming.
        w.shards = vec![
            node("docs-shard-0-0", Some(0), &["v1-7f3a9c2e"]),
            node("docs-shard-1-0", Some(1), &[]),
        ];
        w.routers = vec![node("docs-router-a", None, &["v1-7f3a9c2e"])];
        let s = w.step(&s.versions, HASH);
        assert_eq!(phase(&s), VersionPhase::Warming);
        assert_eq!(s.requeue, Some(POLL));

        w.shards[1] = node("docs-shard-1-0", Some(1), &["v1-7f3a9c2e"]);
        let s = w.step(&s.versions, HASH);
        assert_eq!(phase(&s), VersionPhase::Gating);
        assert_eq!(s.versions.versions[0].vectors, Some(200));

        w.gate = Some(GateOutcome::Measured {
            recall: 0.95,
            k: 10,
            nprobe: 16,
            queries: 100,
        });
        let s = w.step(&s.versions, HASH);
        assert_eq!(phase(&s), VersionPhase::Active);
        assert_eq!(s.versions.active.as_deref(), Some("v1-7f3a9c2e"));
        assert_eq!(s.versions.target, None);
        assert_eq!(s.versions.recall, Some(0.95));
        w.gate = None;
        s.versions
    }

    #[test]
    fn a_new_index_goes_from_nothing_to_active() {
        let mut w = World::new();
        let v = to_active(&mut w);
        // Idle: nothing to do, nothing changes.
        let s = w.step(&v, HASH);
        assert_eq!(s.versions, v);
        assert!(s.create.is_empty() && s.delete.is_empty() && s.notes.is_empty());
    }

    #[test]
    fn a_multi_part_build_runs_finalize_before_warming() {
        let mut w = World::new();
        w.parts = 3;
        let mut v = w.step(&Versions::default(), HASH).versions;
        v = w.step(&v, HASH).versions;
        w.job("docs-v1-7f3a9c2e-train", JobState::Succeeded);
        v = w.step(&v, HASH).versions;
        w.job("docs-v1-7f3a9c2e-build", JobState::Succeeded);
        let s = w.step(&v, HASH);
        assert_eq!(phase(&s), VersionPhase::Building);
        assert_eq!(s.create, vec![(JobKind::Finalize, "v1-7f3a9c2e".into())]);
        w.job("docs-v1-7f3a9c2e-finalize", JobState::Running);
        let s = w.step(&s.versions, HASH);
        assert_eq!(phase(&s), VersionPhase::Building);
        assert!(s.create.is_empty());
        w.job("docs-v1-7f3a9c2e-finalize", JobState::Succeeded);
        assert_eq!(phase(&w.step(&s.versions, HASH)), VersionPhase::Warming);
    }

    #[test]
    fn a_failed_train_is_recorded_deleted_and_retried_after_the_backoff() {
        let mut w = World::new();
        let mut v = w.step(&Versions::default(), HASH).versions;
        v = w.step(&v, HASH).versions;
        w.job(
            "docs-v1-7f3a9c2e-train",
            JobState::Failed {
                message: "source s3://x/v.npy not found".into(),
            },
        );
        let s = w.step(&v, HASH);
        let ver = &s.versions.versions[0];
        assert_eq!(ver.phase, VersionPhase::Training);
        assert_eq!(ver.attempts, Some(1));
        assert_eq!(
            ver.reason.as_deref(),
            Some("TrainFailed: source s3://x/v.npy not found")
        );
        assert_eq!(s.delete, vec!["docs-v1-7f3a9c2e-train".to_string()]);
        assert_eq!(s.requeue, Some(backoff(1)));
        assert!(
            s.notes
                .iter()
                .any(|n| n.warning && n.reason == "TrainFailed")
        );

        // Deleted; the back-off has not elapsed: wait, do not create.
        w.jobs.clear();
        w.later(3);
        let s2 = w.step(&s.versions, HASH);
        assert!(s2.create.is_empty());
        assert!(s2.requeue.expect("requeue") <= backoff(1));
        w.later(10);
        let s3 = w.step(&s2.versions, HASH);
        assert_eq!(s3.create, vec![(JobKind::Train, "v1-7f3a9c2e".into())]);
        // Still the same version: one version per spec, however many attempts.
        assert_eq!(s3.versions.versions.len(), 1);
    }

    #[test]
    fn a_new_spec_supersedes_the_version_in_preparation() {
        let w = World::new();
        let mut v = w.step(&Versions::default(), HASH).versions;
        v = w.step(&v, HASH).versions;
        let s = w.step(&v, "00000000000000bb");
        assert_eq!(s.versions.versions.len(), 2);
        assert_eq!(s.versions.versions[0].name, "v2-7f3a9c2e");
        assert_eq!(s.versions.versions[0].trigger.as_deref(), Some("spec"));
        assert_eq!(s.versions.versions[1].phase, VersionPhase::Failed);
        assert!(is_superseded(&s.versions.versions[1]));
        // Going back to the first spec makes a third version, not a resurrection.
        let s = w.step(&s.versions, HASH);
        assert_eq!(s.versions.versions[0].name, "v3-7f3a9c2e");
    }

    #[test]
    fn a_new_retrain_token_makes_one_version_and_the_same_token_none() {
        let mut w = World::new();
        let active = to_active(&mut w);
        w.retrain = Some("ticket-42".into());
        let s = w.step(&active, HASH);
        assert_eq!(s.versions.versions.len(), 2);
        assert_eq!(s.versions.versions[0].name, "v2-7f3a9c2e");
        assert_eq!(s.versions.versions[0].phase, VersionPhase::Pending);
        assert_eq!(
            s.versions.versions[0].trigger.as_deref(),
            Some("retrain:ticket-42")
        );
        assert_eq!(s.versions.observed_retrain.as_deref(), Some("ticket-42"));
        // The active version keeps serving while v2 is prepared.
        assert_eq!(s.versions.active.as_deref(), Some("v1-7f3a9c2e"));
        assert_eq!(s.versions.versions[1].phase, VersionPhase::Active);
        // The same token again (every later reconcile) makes nothing new.
        let again = w.step(&s.versions, HASH);
        assert_eq!(again.versions.versions.len(), 2);
        assert_eq!(again.versions.versions[0].phase, VersionPhase::Training);
        // Removing the annotation does nothing either.
        w.retrain = None;
        assert_eq!(w.step(&again.versions, HASH).versions.versions.len(), 2);
        // Blank is no token.
        w.retrain = Some("  ".into());
        assert_eq!(w.step(&again.versions, HASH).versions.versions.len(), 2);
    }

    #[test]
    fn a_token_present_at_creation_is_spent_by_the_first_version() {
        let mut w = World::new();
        w.retrain = Some("t1".into());
        let s = w.step(&Versions::default(), HASH);
        assert_eq!(s.versions.versions[0].trigger.as_deref(), Some("create"));
        assert_eq!(s.versions.observed_retrain.as_deref(), Some("t1"));
        let s = w.step(&s.versions, HASH);
        assert_eq!(
            s.versions.versions.len(),
            1,
            "no retrain right after create"
        );
    }

    #[test]
    fn a_new_token_supersedes_the_version_in_preparation() {
        let mut w = World::new();
        let active = to_active(&mut w);
        w.retrain = Some("a".into());
        let v = w.step(&active, HASH).versions;
        let v = w.step(&v, HASH).versions;
        assert_eq!(v.versions[0].phase, VersionPhase::Training);
        w.retrain = Some("b".into());
        let s = w.step(&v, HASH);
        assert_eq!(s.versions.versions.len(), 3);
        assert_eq!(s.versions.versions[0].trigger.as_deref(), Some("retrain:b"));
        let old = &s.versions.versions[1];
        assert_eq!(old.phase, VersionPhase::Failed);
        let reason = old.reason.as_deref().unwrap_or_default();
        assert!(
            reason.starts_with("Superseded: retrain \"b\" was asked for; v3-7f3a9c2e"),
            "{reason}"
        );
        assert_eq!(s.versions.active.as_deref(), Some("v1-7f3a9c2e"));
        // A spec change and a new token at once make one version, triggered by the spec.
        w.retrain = Some("c".into());
        let s = w.step(&s.versions, H2);
        assert_eq!(s.versions.versions.len(), 4);
        assert_eq!(s.versions.versions[0].trigger.as_deref(), Some("spec"));
        assert_eq!(s.versions.observed_retrain.as_deref(), Some("c"));
    }

    const H2: &str = "00000000000000bb";

    /// A second spec after `active`, walked to Gating (warm everywhere).
    fn second_to_gating(w: &mut World, active: &Versions) -> Versions {
        let mut v = w.step(active, H2).versions;
        v = w.step(&v, H2).versions;
        w.job("docs-v2-7f3a9c2e-train", JobState::Succeeded);
        v = w.step(&v, H2).versions;
        w.job("docs-v2-7f3a9c2e-build", JobState::Succeeded);
        v = w.step(&v, H2).versions;
        for n in w.shards.iter_mut().chain(w.routers.iter_mut()) {
            n.warm.insert("v2-7f3a9c2e".into(), 100);
        }
        w.step(&v, H2).versions
    }

    #[test]
    fn a_gate_below_min_recall_fails_the_version_and_keeps_the_active_one() {
        let mut w = World::new();
        let active = to_active(&mut w);
        let h2 = H2;
        let v = second_to_gating(&mut w, &active);
        assert_eq!(v.versions[0].phase, VersionPhase::Gating);
        w.gate = Some(GateOutcome::Measured {
            recall: 0.71,
            k: 10,
            nprobe: 16,
            queries: 100,
        });
        let s = w.step(&v, h2);
        let failed = &s.versions.versions[0];
        assert_eq!(failed.phase, VersionPhase::Failed);
        assert_eq!(
            failed.reason.as_deref(),
            Some("GateFailed: recall 0.7100 < minRecall 0.9 at nprobe 16")
        );
        assert_eq!(s.versions.active.as_deref(), Some("v1-7f3a9c2e"));
        assert_eq!(s.versions.target, None);
        // No retry until a new trigger.
        w.gate = None;
        let again = w.step(&s.versions, h2);
        assert_eq!(again.versions, s.versions);
        assert!(again.create.is_empty());
    }

    #[test]
    fn the_previous_version_drains_and_retires_once_every_router_moved() {
        let mut w = World::new();
        let active = to_active(&mut w);
        let h2 = H2;
        let v = second_to_gating(&mut w, &active);
        w.gate = Some(GateOutcome::Measured {
            recall: 0.97,
            k: 10,
            nprobe: 16,
            queries: 100,
        });
        w.routers[0].active = Some("v1-7f3a9c2e".into());
        let s = w.step(&v, h2);
        w.gate = None;
        assert_eq!(s.versions.active.as_deref(), Some("v2-7f3a9c2e"));
        assert_eq!(s.versions.versions[1].phase, VersionPhase::Draining);
        // A router still on v1: v1 keeps draining.
        let s = w.step(&s.versions, h2);
        assert_eq!(s.versions.versions[1].phase, VersionPhase::Draining);
        w.routers[0].active = Some("v2-7f3a9c2e".into());
        let s = w.step(&s.versions, h2);
        assert_eq!(s.versions.versions[1].phase, VersionPhase::Retired);
    }

    #[test]
    fn a_ready_shard_replica_that_is_still_cold_holds_the_gate() {
        let mut w = World::new();
        let mut v = w.step(&Versions::default(), HASH).versions;
        v = w.step(&v, HASH).versions;
        w.job("docs-v1-7f3a9c2e-train", JobState::Succeeded);
        v = w.step(&v, HASH).versions;
        w.job("docs-v1-7f3a9c2e-build", JobState::Succeeded);
        v = w.step(&v, HASH).versions;
        w.shards = vec![
            node("docs-shard-0-0", Some(0), &["v1-7f3a9c2e"]),
            node("docs-shard-0-1", Some(0), &[]),
            node("docs-shard-1-0", Some(1), &["v1-7f3a9c2e"]),
        ];
        w.routers = vec![node("docs-router-a", None, &["v1-7f3a9c2e"])];
        assert_eq!(
            w.step(&v, HASH).versions.versions[0].phase,
            VersionPhase::Warming
        );
        w.shards[1]
            .failed
            .insert("v1-7f3a9c2e".into(), "checksum mismatch".into());
        let s = w.step(&v, HASH);
        assert_eq!(
            s.versions.versions[0].reason.as_deref(),
            Some("WarmFailed: docs-shard-0-1: checksum mismatch")
        );
        // A failed replica that is not Ready (out of rotation) does not block: its shard
        // has a warm replica.
        w.shards[1].ready = false;
        w.shards[1].failed.clear();
        assert_eq!(
            w.step(&v, HASH).versions.versions[0].phase,
            VersionPhase::Gating
        );
    }

    /// Walks a new version for `hash` (or for a retrain token already set) from its trigger
    /// to Active, and the previous one to Retired.
    fn next_active(w: &mut World, v: &Versions, hash: &str) -> Versions {
        let mut v = w.step(v, hash).versions;
        let name = v.versions[0].name.clone();
        assert_eq!(v.versions[0].phase, VersionPhase::Pending);
        v = w.step(&v, hash).versions;
        w.job(&format!("docs-{name}-train"), JobState::Succeeded);
        v = w.step(&v, hash).versions;
        w.job(&format!("docs-{name}-build"), JobState::Succeeded);
        v = w.step(&v, hash).versions;
        assert_eq!(v.versions[0].phase, VersionPhase::Warming);
        warm_and_swap(w, &v, hash, &name)
    }

    /// Makes every node hold `name`, passes its gate and moves routers to it.
    fn warm_and_swap(w: &mut World, v: &Versions, hash: &str, name: &str) -> Versions {
        for n in w.shards.iter_mut().chain(w.routers.iter_mut()) {
            n.warm.insert(name.into(), 100);
        }
        let v = w.step(v, hash).versions;
        let at = v
            .versions
            .iter()
            .position(|x| x.name == name)
            .expect("version");
        assert_eq!(v.versions[at].phase, VersionPhase::Gating);
        w.gate = Some(GateOutcome::Measured {
            recall: 0.95,
            k: 10,
            nprobe: 16,
            queries: 100,
        });
        let v = w.step(&v, hash).versions;
        w.gate = None;
        assert_eq!(v.active.as_deref(), Some(name));
        for r in w.routers.iter_mut() {
            r.active = Some(name.into());
        }
        let v = w.step(&v, hash).versions;
        assert!(
            v.versions.iter().all(|x| x.phase != VersionPhase::Draining),
            "{v:?}"
        );
        v
    }

    /// A rebalance version: made from the active one with the plan's moves, it runs one remap
    /// Job (no train, no build) and then goes the same warm, gate, swap path; the token is
    /// spent once; a rebalance waits while another version is in preparation, and one asked
    /// for without moves or for another version than the active one is skipped with a note.
    #[test]
    fn a_rebalance_remaps_the_active_version_and_swaps_like_any_other() {
        let mut w = World::new();
        let v1 = to_active(&mut w);
        let moves = vec![ListMove {
            list: 3,
            from: 0,
            to: 1,
            bytes: 100,
        }];
        let ask = |token: &str, version: &str, moves: &[ListMove]| {
            Some((
                format!("rebalance:{token}"),
                Some(token.to_string()),
                version.to_string(),
                moves.to_vec(),
            ))
        };
        // Nothing to move: the token is spent with a note, no version.
        w.rebalance = ask("t0", "v1-7f3a9c2e", &[]);
        let s = w.step(&v1, HASH);
        assert_eq!(s.versions.versions.len(), 1);
        assert_eq!(s.versions.observed_rebalance.as_deref(), Some("t0"));
        assert!(
            s.notes.iter().any(|n| n.reason == "RebalanceSkipped"),
            "{:?}",
            s.notes
        );
        // A plan of another version (the load of the active one not measured yet): skipped.
        w.rebalance = ask("t1", "v0-7f3a9c2e", &moves);
        let s = w.step(&v1, HASH);
        assert_eq!(s.versions.versions.len(), 1);

        w.rebalance = ask("t2", "v1-7f3a9c2e", &moves);
        let s = w.step(&v1, HASH);
        let v2 = &s.versions.versions[0];
        assert_eq!(v2.name, "v2-7f3a9c2e");
        assert_eq!(v2.phase, VersionPhase::Pending);
        assert_eq!(v2.trigger.as_deref(), Some("rebalance:t2"));
        assert_eq!(v2.rebalanced_from.as_deref(), Some("v1-7f3a9c2e"));
        assert_eq!(v2.moves, moves);
        assert_eq!(v2.spec_hash.as_deref(), Some(HASH), "the same spec");
        assert_eq!(s.versions.observed_rebalance.as_deref(), Some("t2"));
        assert!(s.create.is_empty(), "intent first");
        // The same token again: nothing new.
        let again = w.step(&s.versions, HASH);
        assert_eq!(again.versions.versions.len(), 2);

        let s = w.step(&s.versions, HASH);
        assert_eq!(phase(&s), VersionPhase::Building);
        assert_eq!(s.create, vec![(JobKind::Remap, "v2-7f3a9c2e".into())]);
        // Another ask while v2 is prepared waits: never two at once, nothing superseded.
        w.rebalance = ask("t3", "v1-7f3a9c2e", &moves);
        let held = w.step(&s.versions, HASH);
        assert_eq!(held.versions.versions.len(), 2);
        assert_eq!(held.versions.observed_rebalance.as_deref(), Some("t2"));
        w.rebalance = None;
        w.job("docs-v2-7f3a9c2e-remap", JobState::Succeeded);
        let s = w.step(&s.versions, HASH);
        assert_eq!(phase(&s), VersionPhase::Warming);
        assert!(
            !s.create
                .iter()
                .any(|(k, _)| matches!(k, JobKind::Train | JobKind::Build)),
            "{:?}",
            s.create
        );
        let v = warm_and_swap(&mut w, &s.versions, HASH, "v2-7f3a9c2e");
        assert_eq!(v.active.as_deref(), Some("v2-7f3a9c2e"));
        assert_eq!(phase_of(&v, "v1-7f3a9c2e"), Some(VersionPhase::Retired));
        // The same spec hash as the active rebalance: no retrain follows.
        assert_eq!(w.step(&v, HASH).versions.versions.len(), 2);
    }

    /// Auto asking to move list 0 of v1 from shard 0 to 1.
    fn auto_ask() -> Option<(String, Option<String>, String, Vec<ListMove>)> {
        Some((
            "rebalance:auto".into(),
            None,
            "v1-7f3a9c2e".into(),
            vec![ListMove {
                list: 0,
                from: 0,
                to: 1,
                bytes: 1,
            }],
        ))
    }

    #[test]
    fn a_failed_remap_is_retried_after_the_backoff() {
        let mut w = World::new();
        let v1 = to_active(&mut w);
        w.rebalance = auto_ask();
        let s = w.step(&v1, HASH);
        w.rebalance = None;
        let s = w.step(&s.versions, HASH);
        w.job(
            "docs-v2-7f3a9c2e-remap",
            JobState::Failed {
                message: "storage unreachable".into(),
            },
        );
        let s = w.step(&s.versions, HASH);
        assert_eq!(phase(&s), VersionPhase::Building);
        assert!(
            s.versions.versions[0]
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("RemapFailed: storage unreachable")),
            "{:?}",
            s.versions.versions[0]
        );
        assert_eq!(s.delete, vec!["docs-v2-7f3a9c2e-remap".to_string()]);

        // Failed for good (say, its gate): Auto does not make another from the same version.
        let mut v = s.versions.clone();
        v.versions[0].phase = VersionPhase::Failed;
        v.versions[0].reason = Some("GateFailed: recall 0.5 < minRecall 0.9".into());
        w.rebalance = auto_ask();
        assert_eq!(w.step(&v, HASH).versions.versions.len(), 2);
        // A token still can.
        if let Some(r) = &mut w.rebalance {
            r.0 = "rebalance:t9".into();
            r.1 = Some("t9".into());
        }
        assert_eq!(w.step(&v, HASH).versions.versions.len(), 3);
    }

    /// A split is preferred over the plan's moves: one split Job (no train, no build), then
    /// the same warm, gate, swap path. A split of a version built from another spec waits for
    /// a version of this one (the Job reads the spec's source).
    #[test]
    fn a_split_rebalance_runs_one_split_job_and_swaps_like_any_other() {
        let mut w = World::new();
        let v1 = to_active(&mut w);
        w.rebalance = auto_ask();
        w.split = Some(ListSplit {
            list: 7,
            from: 0,
            to: 1,
        });
        // The spec changed and its version failed its gate: v1 is of the old spec.
        let mut stale = v1.clone();
        let mut failed = VersionStatus::pending("v2-7f3a9c2e");
        failed.phase = VersionPhase::Failed;
        failed.spec_hash = Some("another-hash".into());
        failed.reason = Some("GateFailed: recall 0.5 < minRecall 0.9".into());
        stale.versions.insert(0, failed);
        let s = w.step(&stale, "another-hash");
        assert!(
            s.notes
                .iter()
                .any(|n| n.reason == "RebalanceSkipped" && n.message.contains("another spec")),
            "{:?}",
            s.notes
        );
        assert!(!s.versions.versions.iter().any(|v| v.split.is_some()));

        let s = w.step(&v1, HASH);
        let v2 = &s.versions.versions[0];
        assert_eq!(v2.rebalanced_from.as_deref(), Some("v1-7f3a9c2e"));
        assert_eq!(v2.split, w.split);
        assert!(
            v2.moves.is_empty(),
            "the split first; moves wait for the next plan"
        );
        assert!(
            s.notes
                .iter()
                .any(|n| n.message.contains("list 7 of v1-7f3a9c2e split")),
            "{:?}",
            s.notes
        );
        w.rebalance = None;
        let s = w.step(&s.versions, HASH);
        assert_eq!(phase(&s), VersionPhase::Building);
        assert_eq!(s.create, vec![(JobKind::Split, "v2-7f3a9c2e".into())]);
        w.job("docs-v2-7f3a9c2e-split", JobState::Succeeded);
        let s = w.step(&s.versions, HASH);
        assert_eq!(phase(&s), VersionPhase::Warming);
        let v = warm_and_swap(&mut w, &s.versions, HASH, "v2-7f3a9c2e");
        assert_eq!(v.active.as_deref(), Some("v2-7f3a9c2e"));
    }

    fn phase_of(v: &Versions, name: &str) -> Option<VersionPhase> {
        v.versions.iter().find(|x| x.name == name).map(|x| x.phase)
    }

    #[test]
    fn a_due_schedule_makes_one_version_and_many_missed_runs_count_once() {
        let mut w = World::new();
        let active = to_active(&mut w);
        let due = w.now;
        w.schedule_due = Some(due);
        let s = w.step(&active, HASH);
        assert_eq!(s.versions.versions.len(), 2);
        let trigger = s.versions.versions[0].trigger.clone().unwrap_or_default();
        assert!(trigger.starts_with("schedule:"), "{trigger}");
        assert_eq!(s.versions.last_scheduled, Some(Time(due)));
        // The same due time again (the caller asks the schedule every reconcile): nothing.
        let again = w.step(&s.versions, HASH);
        assert_eq!(again.versions.versions.len(), 2);
        // A later fire time while v2 is prepared supersedes it, once.
        w.later(3600);
        w.schedule_due = Some(w.now);
        let s = w.step(&again.versions, HASH);
        assert_eq!(s.versions.versions.len(), 3);
        assert_eq!(s.versions.versions[1].phase, VersionPhase::Failed);
        assert_eq!(s.versions.last_scheduled, Some(Time(w.now)));
    }

    #[test]
    fn drift_makes_one_version_named_for_it() {
        let mut w = World::new();
        let active = to_active(&mut w);
        w.drift = Some("drift:0.412".into());
        let s = w.step(&active, HASH);
        assert_eq!(s.versions.versions.len(), 2);
        assert_eq!(
            s.versions.versions[0].trigger.as_deref(),
            Some("drift:0.412")
        );
        assert!(
            s.notes
                .iter()
                .any(|n| n.reason == "VersionCreated" && n.message.contains("drift:0.412"))
        );
    }

    #[test]
    fn a_refusal_holds_triggers_unspent_until_it_goes() {
        let mut w = World::new();
        let active = to_active(&mut w);
        w.retrain = Some("t1".into());
        w.refuse = Some(Hold {
            reason: "InsufficientMemory".into(),
            message: "spec.pods.resources.shard.limits.memory 1Mi cannot hold two versions".into(),
        });
        let s = w.step(&active, HASH);
        assert_eq!(s.versions.versions.len(), 1, "no version while refused");
        assert_eq!(s.versions.observed_retrain, None, "the token is not spent");
        assert_eq!(
            s.hold.as_ref().map(|h| h.reason.as_str()),
            Some("InsufficientMemory")
        );
        w.refuse = None;
        let s = w.step(&s.versions, HASH);
        assert_eq!(s.versions.versions.len(), 2);
        assert_eq!(
            s.versions.versions[0].trigger.as_deref(),
            Some("retrain:t1")
        );
        assert_eq!(s.hold, None);
    }

    #[test]
    fn a_load_failure_that_outlasts_the_warm_timeout_fails_the_version() {
        let mut w = World::new();
        let active = to_active(&mut w);
        let mut v = w.step(&active, H2).versions;
        v = w.step(&v, H2).versions;
        w.job("docs-v2-7f3a9c2e-train", JobState::Succeeded);
        v = w.step(&v, H2).versions;
        w.job("docs-v2-7f3a9c2e-build", JobState::Succeeded);
        v = w.step(&v, H2).versions;
        assert_eq!(v.target.as_deref(), Some("v2-7f3a9c2e"));
        w.shards[0]
            .failed
            .insert("v2-7f3a9c2e".into(), "list 17: checksum mismatch".into());
        w.later(10);
        let s = w.step(&v, H2);
        assert_eq!(phase(&s), VersionPhase::Warming, "nodes retry first");
        w.later(300);
        let s = w.step(&s.versions, H2);
        let failed = &s.versions.versions[0];
        assert_eq!(failed.phase, VersionPhase::Failed);
        let reason = failed.reason.clone().unwrap_or_default();
        assert!(
            reason.starts_with("WarmFailed: docs-shard-0-0: list 17: checksum mismatch"),
            "{reason}"
        );
        assert_eq!(s.versions.active.as_deref(), Some("v1-7f3a9c2e"));
        assert_eq!(s.versions.target, None);
        assert!(
            s.notes
                .iter()
                .any(|n| n.warning && n.reason == "WarmFailed")
        );
        // A failed version of this spec is not rebuilt until a new trigger.
        assert_eq!(w.step(&s.versions, H2).versions, s.versions);
    }

    #[test]
    fn a_pin_rolls_back_through_warm_gate_swap_and_unpinning_returns() {
        let mut w = World::new();
        let v1 = to_active(&mut w);
        w.retrain = Some("r".into());
        let v2 = next_active(&mut w, &v1, HASH);
        assert_eq!(phase_of(&v2, "v1-7f3a9c2e"), Some(VersionPhase::Retired));
        // Nodes dropped v1 once it was Retired.
        for n in w.shards.iter_mut().chain(w.routers.iter_mut()) {
            n.warm.remove("v1-7f3a9c2e");
        }
        w.pinned = Some("v1-7f3a9c2e".into());
        let s = w.step(&v2, HASH);
        assert_eq!(
            phase_of(&s.versions, "v1-7f3a9c2e"),
            Some(VersionPhase::Warming)
        );
        assert_eq!(s.versions.target.as_deref(), Some("v1-7f3a9c2e"));
        assert_eq!(
            s.versions.active.as_deref(),
            Some("v2-7f3a9c2e"),
            "v2 serves meanwhile"
        );
        assert!(s.create.is_empty(), "a rollback needs no Job");
        let rolled = warm_and_swap(&mut w, &s.versions, HASH, "v1-7f3a9c2e");
        assert_eq!(
            phase_of(&rolled, "v2-7f3a9c2e"),
            Some(VersionPhase::Retired)
        );
        assert_eq!(rolled.versions.len(), 2, "no new version for a rollback");
        // Pinned: a new token and a spec change wait, and the status says so.
        w.retrain = Some("r2".into());
        let s = w.step(&rolled, H2);
        assert_eq!(s.versions.versions.len(), 2);
        assert_eq!(s.hold.as_ref().map(|h| h.reason.as_str()), Some("Pinned"));
        // Unpinned (same spec): back to the newest good version, v2, which the nodes dropped
        // when it was Retired.
        for n in w.shards.iter_mut().chain(w.routers.iter_mut()) {
            n.warm.remove("v2-7f3a9c2e");
        }
        w.pinned = None;
        w.retrain = Some("r".into());
        let s = w.step(&rolled, HASH);
        assert_eq!(
            phase_of(&s.versions, "v2-7f3a9c2e"),
            Some(VersionPhase::Warming)
        );
        assert_eq!(s.versions.versions.len(), 2);
        let back = warm_and_swap(&mut w, &s.versions, HASH, "v2-7f3a9c2e");
        assert_eq!(phase_of(&back, "v1-7f3a9c2e"), Some(VersionPhase::Retired));
        assert_eq!(w.step(&back, HASH).versions, back, "settled");
    }

    #[test]
    fn a_pin_to_an_unknown_or_failed_version_changes_nothing_and_says_why() {
        let mut w = World::new();
        let v1 = to_active(&mut w);
        w.pinned = Some("v9-7f3a9c2e".into());
        let s = w.step(&v1, H2);
        assert_eq!(s.versions, v1, "no new version, no change");
        let h = s.hold.expect("hold");
        assert_eq!(h.reason, "PinnedVersionUnavailable");
        assert!(h.message.contains("retained: v1-7f3a9c2e"), "{}", h.message);
    }

    #[test]
    fn a_pin_supersedes_the_version_in_preparation() {
        let mut w = World::new();
        let v1 = to_active(&mut w);
        let mut v = w.step(&v1, H2).versions;
        v = w.step(&v, H2).versions;
        assert_eq!(v.versions[0].phase, VersionPhase::Training);
        w.pinned = Some("v1-7f3a9c2e".into());
        let s = w.step(&v, H2);
        assert_eq!(s.versions.versions[0].phase, VersionPhase::Failed);
        assert!(
            s.versions.versions[0]
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("spec.pinnedVersion is v1-7f3a9c2e")),
        );
        assert_eq!(s.versions.active.as_deref(), Some("v1-7f3a9c2e"));
    }

    #[test]
    fn versions_beyond_retain_are_collected_by_one_job_then_leave_the_status() {
        let mut w = World::new();
        w.retain = 2;
        let mut v = to_active(&mut w);
        for t in ["a", "b"] {
            w.retrain = Some(t.into());
            v = next_active(&mut w, &v, HASH);
        }
        // v3 Active, v2 and v1 Retired: v1 is beyond retainVersions 2.
        let s = w.step(&v, HASH);
        let plan = s.gc.clone().expect("a GC plan");
        assert_eq!(plan.job, "docs-gc-1");
        assert_eq!(plan.delete, vec!["v1-7f3a9c2e".to_string()]);
        assert_eq!(
            plan.keep,
            vec!["v3-7f3a9c2e".to_string(), "v2-7f3a9c2e".to_string()]
        );
        assert_eq!(s.keep_jobs, vec!["docs-gc-1".to_string()]);
        // Running: kept, not created again.
        w.job("docs-gc-1", JobState::Running);
        let s2 = w.step(&s.versions, HASH);
        assert_eq!(s2.gc, None);
        assert_eq!(s2.keep_jobs, vec!["docs-gc-1".to_string()]);
        // Failed: recorded, deleted, retried after the back-off.
        w.job(
            "docs-gc-1",
            JobState::Failed {
                message: "storage down".into(),
            },
        );
        let s3 = w.step(&s2.versions, HASH);
        assert_eq!(s3.delete, vec!["docs-gc-1".to_string()]);
        assert!(s3.notes.iter().any(|n| n.warning && n.reason == "GcFailed"));
        w.jobs.remove("docs-gc-1");
        assert_eq!(w.step(&s3.versions, HASH).gc, None, "backing off");
        w.later(11);
        assert!(w.step(&s3.versions, HASH).gc.is_some(), "retried");
        w.job("docs-gc-1", JobState::Succeeded);
        let done = w.step(&s3.versions, HASH);
        assert_eq!(phase_of(&done.versions, "v1-7f3a9c2e"), None);
        assert_eq!(done.versions.versions.len(), 2);
        assert!(done.keep_jobs.is_empty(), "the finished Job goes");
        // A pinned version is never collected.
        let mut w2 = World::new();
        w2.retain = 1;
        let mut v = to_active(&mut w2);
        w2.retrain = Some("a".into());
        v = next_active(&mut w2, &v, HASH);
        w2.pinned = Some("v2-7f3a9c2e".into());
        let s = w2.step(&v, HASH);
        let plan = s.gc.expect("v1 goes");
        assert_eq!(plan.delete, vec!["v1-7f3a9c2e".to_string()]);
    }

    #[test]
    fn a_draining_version_retires_only_when_no_router_has_a_query_on_it() {
        let mut w = World::new();
        let active = to_active(&mut w);
        let v = second_to_gating(&mut w, &active);
        w.gate = Some(GateOutcome::Measured {
            recall: 0.97,
            k: 10,
            nprobe: 16,
            queries: 100,
        });
        let s = w.step(&v, H2);
        w.gate = None;
        w.routers[0].active = Some("v2-7f3a9c2e".into());
        w.routers[0].inflight.insert("v1-7f3a9c2e".into(), 3);
        let s = w.step(&s.versions, H2);
        assert_eq!(
            phase_of(&s.versions, "v1-7f3a9c2e"),
            Some(VersionPhase::Draining)
        );
        // A Ready router that does not answer may still hold queries: wait.
        w.routers[0].inflight.clear();
        w.routers.push(NodeReport {
            pod: "docs-router-b".into(),
            ready: true,
            unreachable: Some("timed out".into()),
            ..NodeReport::default()
        });
        let s = w.step(&s.versions, H2);
        assert_eq!(
            phase_of(&s.versions, "v1-7f3a9c2e"),
            Some(VersionPhase::Draining)
        );
        // Not Ready: out of the Service, no traffic.
        w.routers[1].ready = false;
        let s = w.step(&s.versions, H2);
        assert_eq!(
            phase_of(&s.versions, "v1-7f3a9c2e"),
            Some(VersionPhase::Retired)
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(4), Duration::from_secs(80));
        assert_eq!(backoff(30), Duration::from_secs(600));
    }
}
