//! The summary a person reads (pure): the index phase and the Ready / Progressing / Degraded
//! conditions, from the lifecycle's versions and the ready pod counts. A condition keeps its
//! `lastTransitionTime` unless its status flips, so an unchanged index writes nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use quiver_api::v1alpha1::{IndexPhase, ReadyCount, VersionPhase, conditions};

use crate::lifecycle::{Hold, SUPERSEDED, Versions};

/// What the summary is computed from.
#[derive(Debug, Clone)]
pub struct Summary<'a> {
    pub versions: &'a Versions,
    pub shards: ReadyCount,
    /// Shard pods of `shards.desired` beyond the spec (hot shards' extra replicas): while
    /// they start, the index is not degraded.
    pub extra_shard_pods: u32,
    /// Shard numbers with at least one Ready replica, over the spec's shard count.
    pub shards_covered: (u32, u32),
    pub routers: ReadyCount,
    /// Set when the spec was refused by `validate()` (the message names the field).
    pub invalid: Option<String>,
    /// What keeps the lifecycle from following the spec (a pin, capacity), if anything.
    pub hold: Option<&'a Hold>,
    pub generation: Option<i64>,
    pub now: Timestamp,
}

/// (phase, [Ready, Progressing, Degraded]) with fresh transition times.
pub fn summarize(s: &Summary<'_>) -> (IndexPhase, Vec<Condition>) {
    let v = s.versions;
    let preparing = v.versions.iter().find(|x| {
        matches!(
            x.phase,
            VersionPhase::Pending
                | VersionPhase::Training
                | VersionPhase::Building
                | VersionPhase::Warming
                | VersionPhase::Gating
        )
    });
    // The newest version that failed for a reason of its own (not superseded).
    let newest_failed = v.versions.first().filter(|x| {
        x.phase == VersionPhase::Failed
            && !x
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with(SUPERSEDED))
    });
    let serving = v.active.is_some()
        && s.routers.ready > 0
        && s.shards_covered.0 >= s.shards_covered.1
        && s.shards_covered.1 > 0;

    let cond = |type_: &str, ok: bool, reason: &str, message: String| Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: s.generation,
        last_transition_time: Time(s.now),
    };

    let ready = match (&v.active, serving) {
        (Some(a), true) => cond(
            conditions::READY,
            true,
            "Serving",
            format!(
                "serving {a}{}; shard pods {}/{}, routers {}/{} ready",
                v.recall
                    .map(|r| format!(" (gate recall {r:.4})"))
                    .unwrap_or_default(),
                s.shards.ready,
                s.shards.desired,
                s.routers.ready,
                s.routers.desired
            ),
        ),
        (Some(a), false) => cond(
            conditions::READY,
            false,
            "PodsNotReady",
            format!(
                "{a} is active but not every shard has a ready replica or no router is ready (shards {}/{} covered, routers {}/{} ready)",
                s.shards_covered.0, s.shards_covered.1, s.routers.ready, s.routers.desired
            ),
        ),
        (None, _) => match preparing {
            Some(p) => cond(
                conditions::READY,
                false,
                "NoActiveVersion",
                format!("no version serves yet; {} is {:?}", p.name, p.phase),
            ),
            None => cond(
                conditions::READY,
                false,
                "NoActiveVersion",
                "no version serves".into(),
            ),
        },
    };

    let progressing = match preparing {
        Some(p) => cond(
            conditions::PROGRESSING,
            true,
            &format!("{:?}", p.phase),
            match &p.reason {
                Some(r) => format!("{} is {:?}: {r}", p.name, p.phase),
                None => format!("{} is {:?}", p.name, p.phase),
            },
        ),
        None => cond(
            conditions::PROGRESSING,
            false,
            "Idle",
            match &v.active {
                Some(a) => format!("{a} is active; nothing in preparation"),
                None => "nothing in preparation".into(),
            },
        ),
    };

    // The first thing a person should act on.
    let problem: Option<(String, String)> = if let Some(msg) = &s.invalid {
        Some((conditions::REASON_INVALID_SPEC.into(), msg.clone()))
    } else if let Some(h) = s.hold {
        Some((h.reason.clone(), h.message.clone()))
    } else if let Some((reason, msg)) = preparing
        .and_then(|p| p.reason.as_deref().map(|r| (p, r)))
        .map(|(p, r)| {
            let word = r.split(':').next().unwrap_or("Failed").to_string();
            (word, format!("{}: {r}", p.name))
        })
    {
        Some((reason, msg))
    } else if let Some(f) = newest_failed {
        let r = f.reason.clone().unwrap_or_else(|| "Failed".into());
        let word = r.split(':').next().unwrap_or("Failed").to_string();
        Some((word, format!("{}: {r}", f.name)))
    } else if v.active.is_some()
        && (s.shards.ready + s.extra_shard_pods < s.shards.desired
            || s.routers.ready < s.routers.desired)
    {
        Some((
            "PodsNotReady".into(),
            format!(
                "shard pods {}/{}, routers {}/{} ready",
                s.shards.ready, s.shards.desired, s.routers.ready, s.routers.desired
            ),
        ))
    } else {
        None
    };
    let degraded = match &problem {
        Some((reason, msg)) => cond(conditions::DEGRADED, true, reason, msg.clone()),
        None => cond(
            conditions::DEGRADED,
            false,
            "AsExpected",
            "nothing needs attention".into(),
        ),
    };

    let phase = match (&v.active, serving, &problem) {
        (Some(_), true, None) => IndexPhase::Ready,
        (Some(_), _, _) => IndexPhase::Degraded,
        (None, _, _) if newest_failed.is_some() || s.invalid.is_some() => IndexPhase::Failed,
        (None, _, _) if preparing.is_some_and(|p| p.attempts.is_some()) => IndexPhase::Failed,
        (None, _, _) if v.versions.is_empty() => IndexPhase::Pending,
        (None, _, _) => IndexPhase::Building,
    };
    (phase, vec![ready, progressing, degraded])
}

/// `fresh` with each condition's `lastTransitionTime` taken from `old` when its status did
/// not change.
pub fn keep_transition_times(old: &[Condition], fresh: Vec<Condition>) -> Vec<Condition> {
    fresh
        .into_iter()
        .map(|mut c| {
            if let Some(o) = old.iter().find(|o| o.type_ == c.type_)
                && o.status == c.status
            {
                c.last_transition_time = o.last_transition_time.clone();
            }
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_api::v1alpha1::VersionStatus;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("time")
    }

    fn versions(list: &[(&str, VersionPhase, Option<&str>)], active: Option<&str>) -> Versions {
        Versions {
            versions: list
                .iter()
                .map(|(n, p, r)| {
                    let mut v = VersionStatus::pending(*n);
                    v.phase = *p;
                    v.reason = r.map(String::from);
                    v
                })
                .collect(),
            active: active.map(String::from),
            recall: active.map(|_| 0.95),
            ..Versions::default()
        }
    }

    fn summary(v: &Versions) -> Summary<'_> {
        Summary {
            versions: v,
            shards: ReadyCount {
                ready: 4,
                desired: 4,
            },
            extra_shard_pods: 0,
            shards_covered: (2, 2),
            routers: ReadyCount {
                ready: 2,
                desired: 2,
            },
            invalid: None,
            hold: None,
            generation: Some(3),
            now: at(0),
        }
    }

    fn get<'a>(c: &'a [Condition], t: &str) -> &'a Condition {
        c.iter().find(|c| c.type_ == t).expect(t)
    }

    #[test]
    fn an_active_index_with_every_pod_ready_is_ready_and_not_degraded() {
        let v = versions(
            &[("v1-7f3a9c2e", VersionPhase::Active, None)],
            Some("v1-7f3a9c2e"),
        );
        let (phase, c) = summarize(&summary(&v));
        assert_eq!(phase, IndexPhase::Ready);
        assert_eq!(get(&c, "Ready").status, "True");
        assert!(get(&c, "Ready").message.contains("gate recall 0.9500"));
        assert_eq!(get(&c, "Progressing").status, "False");
        assert_eq!(get(&c, "Degraded").status, "False");
    }

    /// A hot shard's extra replica starting is not a degradation; a missing pod of the spec is.
    #[test]
    fn an_extra_replica_starting_does_not_degrade_a_missing_spec_pod_does() {
        let v = versions(
            &[("v1-7f3a9c2e", VersionPhase::Active, None)],
            Some("v1-7f3a9c2e"),
        );
        let mut s = summary(&v);
        s.shards.desired = 5;
        s.extra_shard_pods = 1;
        assert_eq!(summarize(&s).0, IndexPhase::Ready);
        s.shards.ready = 3;
        let (phase, c) = summarize(&s);
        assert_eq!(phase, IndexPhase::Degraded);
        assert_eq!(get(&c, "Degraded").reason, "PodsNotReady");
    }

    #[test]
    fn a_hold_degrades_a_serving_index_with_its_own_reason() {
        let v = versions(
            &[("v1-7f3a9c2e", VersionPhase::Active, None)],
            Some("v1-7f3a9c2e"),
        );
        let hold = Hold {
            reason: "InsufficientMemory".into(),
            message: "raise spec.pods.resources.shard.limits.memory".into(),
        };
        let mut sum = summary(&v);
        sum.hold = Some(&hold);
        let (phase, c) = summarize(&sum);
        assert_eq!(
            phase,
            IndexPhase::Degraded,
            "serving, but the spec is not followed"
        );
        assert_eq!(get(&c, "Ready").status, "True");
        let d = get(&c, "Degraded");
        assert_eq!(
            (d.status.as_str(), d.reason.as_str(), d.message.as_str()),
            (
                "True",
                "InsufficientMemory",
                "raise spec.pods.resources.shard.limits.memory"
            )
        );
    }

    #[test]
    fn a_failing_train_of_the_first_version_fails_the_index_with_the_cause() {
        let mut v = versions(
            &[(
                "v1-7f3a9c2e",
                VersionPhase::Training,
                Some("TrainFailed: source s3://x/v.npy not found"),
            )],
            None,
        );
        v.versions[0].attempts = Some(1);
        let (phase, c) = summarize(&summary(&v));
        assert_eq!(phase, IndexPhase::Failed);
        let d = get(&c, "Degraded");
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "TrainFailed")
        );
        assert!(
            d.message.contains("s3://x/v.npy not found"),
            "{}",
            d.message
        );
        assert_eq!(get(&c, "Progressing").reason, "Training");
    }

    #[test]
    fn a_gate_failure_of_a_later_version_degrades_a_serving_index() {
        let v = versions(
            &[
                (
                    "v2-7f3a9c2e",
                    VersionPhase::Failed,
                    Some("GateFailed: recall 0.7100 < minRecall 0.9 at nprobe 16"),
                ),
                ("v1-7f3a9c2e", VersionPhase::Active, None),
            ],
            Some("v1-7f3a9c2e"),
        );
        let (phase, c) = summarize(&summary(&v));
        assert_eq!(phase, IndexPhase::Degraded);
        assert_eq!(get(&c, "Ready").status, "True");
        assert_eq!(get(&c, "Degraded").reason, "GateFailed");
    }

    #[test]
    fn building_the_first_version_and_an_invalid_spec() {
        let v = versions(&[("v1-7f3a9c2e", VersionPhase::Building, None)], None);
        assert_eq!(summarize(&summary(&v)).0, IndexPhase::Building);
        let empty = Versions::default();
        assert_eq!(summarize(&summary(&empty)).0, IndexPhase::Pending);
        let mut s = summary(&empty);
        s.invalid = Some("spec.dimension: must be at least 1".into());
        let (phase, c) = summarize(&s);
        assert_eq!(phase, IndexPhase::Failed);
        assert_eq!(get(&c, "Degraded").reason, "InvalidSpec");
    }

    #[test]
    fn transition_times_move_only_on_a_flip() {
        let v = versions(
            &[("v1-7f3a9c2e", VersionPhase::Active, None)],
            Some("v1-7f3a9c2e"),
        );
        let (_, first) = summarize(&summary(&v));
        let mut later = summary(&v);
        later.now = at(60);
        later.routers.ready = 0;
        let (_, fresh) = summarize(&later);
        let merged = keep_transition_times(&first, fresh);
        // Ready flipped to False: new time. Progressing stayed False: old time.
        assert_eq!(get(&merged, "Ready").last_transition_time, Time(at(60)));
        assert_eq!(
            get(&merged, "Progressing").last_transition_time,
            Time(at(0))
        );
    }
}
