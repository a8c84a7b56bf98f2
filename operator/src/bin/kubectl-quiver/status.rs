//! `status [NAME]`: every index of the namespace, or one index in detail: its versions, what
//! is in progress and why it is stuck.

use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use quiver_api::VectorIndex;
use quiver_api::v1alpha1::{LoadStatus, ReadyCount, VersionPhase, conditions};
use serde::Serialize;

use crate::connect::{Global, connect};
use crate::output::{self, NONE, OutputArg, or_none, recall};
use crate::versions::{self, VersionRow, counter, pinned, retrain_token};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VectorIndex. Default: every index of the namespace.
    pub name: Option<String>,
    /// List the indexes of every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[command(flatten)]
    pub out: OutputArg,
}

/// A phase held longer than this is reported as possibly stuck.
pub const STUCK_SECS: i64 = 10 * 60;

/// What `status -o json|yaml` prints for one index (a list prints `{items: [...]}`).
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub name: String,
    pub namespace: String,
    pub phase: Option<String>,
    pub active_version: Option<String>,
    pub target_version: Option<String>,
    pub pinned_version: Option<String>,
    pub recall: Option<f64>,
    pub shards: Option<ReadyCount>,
    pub routers: Option<ReadyCount>,
    pub age: String,
    pub versions: Vec<VersionRow>,
    /// What is being done now (versions in preparation or draining, asks not acted on yet).
    pub in_progress: Vec<String>,
    /// What needs a person (a Degraded or not-Ready condition, failed versions, a phase held
    /// too long).
    pub attention: Vec<String>,
    pub conditions: Vec<Condition>,
    /// Where the active version's load falls (`status.load`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadStatus>,
}

#[derive(Serialize, Debug)]
pub struct List {
    pub items: Vec<Summary>,
}

/// The pods that hold the answer to a version stuck in a phase.
fn role_of(p: VersionPhase) -> &'static str {
    match p {
        VersionPhase::Pending | VersionPhase::Training => "train",
        VersionPhase::Building => "build",
        VersionPhase::Warming => "shard",
        _ => "router",
    }
}

fn condition<'a>(vi: &'a VectorIndex, ty: &str) -> Option<&'a Condition> {
    vi.status.as_ref()?.condition(ty)
}

/// (in progress, needs attention): the lines a person reads first.
pub fn diagnose(vi: &VectorIndex, now: Timestamp) -> (Vec<String>, Vec<String>) {
    let name = vi.metadata.name.as_deref().unwrap_or_default();
    let mut progress = Vec::new();
    let mut attention = Vec::new();
    let Some(st) = vi.status.as_ref() else {
        attention.push(format!(
            "no status: the operator has not reconciled {name} yet (is it running? kubectl quiver logs {name} --role operator)"
        ));
        return (progress, attention);
    };
    let pin = pinned(vi);

    // Versions on their way, and the ones draining.
    for v in &st.versions {
        let in_phase = v
            .last_transition_time
            .as_ref()
            .map(|t| now.as_second() - t.0.as_second());
        if v.phase.is_preparing() {
            let mut line = format!("{} is {:?}", v.name, v.phase);
            if let Some(s) = in_phase {
                let _ = write!(line, " for {}", output::human_duration(s));
            }
            if let Some(t) = &v.trigger {
                let _ = write!(line, " (trigger {t})");
            }
            if let Some(a) = v.attempts.filter(|a| *a > 0) {
                let _ = write!(
                    line,
                    "; {a} failed attempt{}",
                    if a == 1 { "" } else { "s" }
                );
            }
            if let Some(r) = &v.reason {
                let _ = write!(line, ": {r}");
            }
            progress.push(line);
            if in_phase.is_some_and(|s| s > STUCK_SECS) {
                attention.push(format!(
                    "{} has been {:?} for {}: see kubectl quiver logs {name} --role {}",
                    v.name,
                    v.phase,
                    output::human_duration(in_phase.unwrap_or_default()),
                    role_of(v.phase)
                ));
            }
        } else if v.phase == VersionPhase::Draining {
            progress.push(format!(
                "{} is Draining: queries pinned to it finish before it is retired",
                v.name
            ));
        }
    }
    if let Some(c) = condition(vi, conditions::PROGRESSING).filter(|c| c.status == "True") {
        progress.push(format!("Progressing ({}): {}", c.reason, c.message));
    }

    // Asks the operator has not acted on yet.
    if let (Some(g), Some(o)) = (vi.metadata.generation, st.observed_generation)
        && g > o
    {
        progress.push(format!(
            "spec generation {g} not yet observed by the operator (status is of generation {o})"
        ));
    }
    let token = retrain_token(vi);
    if let Some(t) = token
        && st.observed_retrain.as_deref() != Some(t)
    {
        match pin {
            Some(p) => attention.push(format!(
                "retrain {t:?} waits: spec.pinnedVersion is {p}; kubectl quiver unpin {name} lets it run"
            )),
            None => progress.push(format!("retrain {t:?} asked for, not yet acted on")),
        }
    }
    let observed = match (vi.metadata.generation, st.observed_generation) {
        (Some(g), Some(o)) => o >= g,
        _ => true,
    };
    if let Some(p) = pin
        && observed
        && st.active_version.as_deref() != Some(p)
        && st.version(p).is_none_or(|v| !v.phase.is_preparing())
    {
        attention.push(format!(
            "spec.pinnedVersion is {p} but {} is active",
            or_none(st.active_version.as_deref())
        ));
    }

    // Why it is stuck.
    if let Some(c) = condition(vi, conditions::DEGRADED).filter(|c| c.status == "True") {
        attention.push(format!("Degraded ({}): {}", c.reason, c.message));
    }
    if let Some(c) = condition(vi, conditions::READY).filter(|c| c.status != "True") {
        attention.push(format!("not Ready ({}): {}", c.reason, c.message));
    }
    let active = st.active_version.as_deref().and_then(counter);
    for v in &st.versions {
        let newer = match (counter(&v.name), active) {
            (Some(c), Some(a)) => c > a,
            _ => true,
        };
        let superseded = v
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("Superseded"));
        if v.phase == VersionPhase::Failed && newer && !superseded {
            let line = format!(
                "{} Failed: {}",
                v.name,
                v.reason.as_deref().unwrap_or("no reason given")
            );
            // The Degraded condition often says the same thing already.
            if !attention
                .iter()
                .any(|a| a.contains(v.reason.as_deref().unwrap_or(&line)))
            {
                attention.push(line);
            }
        }
    }
    (progress, attention)
}

pub fn summary(vi: &VectorIndex, now: Timestamp) -> Summary {
    let st = vi.status.clone().unwrap_or_default();
    let (in_progress, attention) = diagnose(vi, now);
    Summary {
        name: vi.metadata.name.clone().unwrap_or_default(),
        namespace: vi.metadata.namespace.clone().unwrap_or_default(),
        phase: st.phase.map(|p| format!("{p:?}")),
        active_version: st.active_version.clone(),
        target_version: st.target_version.clone(),
        pinned_version: pinned(vi).map(str::to_string),
        recall: st.recall,
        shards: st.shards,
        routers: st.routers,
        age: output::age(vi.metadata.creation_timestamp.as_ref(), now),
        versions: versions::rows(vi, now),
        in_progress,
        attention,
        conditions: st.conditions,
        load: st.load,
    }
}

fn count(c: Option<ReadyCount>) -> String {
    c.map(|c| format!("{}/{}", c.ready, c.desired))
        .unwrap_or_else(|| NONE.into())
}

/// The index list: NAME PHASE ACTIVE SHARDS ROUTERS RECALL AGE (NAMESPACE first with -A);
/// `wide` adds the target and pinned versions and the first thing to look at.
pub fn list_table(items: &[Summary], wide: bool, all_namespaces: bool) -> String {
    let mut headers = Vec::new();
    if all_namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "NAME", "PHASE", "ACTIVE", "SHARDS", "ROUTERS", "RECALL", "AGE",
    ]);
    if wide {
        headers.extend(["TARGET", "PINNED", "MESSAGE"]);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            let mut row = Vec::new();
            if all_namespaces {
                row.push(s.namespace.clone());
            }
            row.extend([
                s.name.clone(),
                or_none(s.phase.as_deref()),
                or_none(s.active_version.as_deref()),
                count(s.shards),
                count(s.routers),
                recall(s.recall),
                s.age.clone(),
            ]);
            if wide {
                row.extend([
                    or_none(s.target_version.as_deref()),
                    or_none(s.pinned_version.as_deref()),
                    or_none(s.attention.first().or(s.in_progress.first())),
                ]);
            }
            row
        })
        .collect();
    output::table(&headers, &rows)
}

/// One index in detail.
pub fn detail(s: &Summary, wide: bool, now: Timestamp) -> String {
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: String| {
        let _ = writeln!(out, "{:<11}{v}", format!("{k}:"));
    };
    field(&mut out, "Name", s.name.clone());
    field(&mut out, "Namespace", s.namespace.clone());
    field(&mut out, "Phase", or_none(s.phase.as_deref()));
    field(
        &mut out,
        "Active",
        match (&s.active_version, s.recall) {
            (Some(a), Some(r)) => format!("{a} (gate recall {r:.4})"),
            (a, _) => or_none(a.as_deref()),
        },
    );
    field(&mut out, "Target", or_none(s.target_version.as_deref()));
    field(
        &mut out,
        "Pinned",
        match &s.pinned_version {
            Some(p) => format!("{p} (spec.pinnedVersion: no new version until unpinned)"),
            None => NONE.into(),
        },
    );
    field(&mut out, "Shards", format!("{} ready", count(s.shards)));
    field(&mut out, "Routers", format!("{} ready", count(s.routers)));
    field(&mut out, "Age", s.age.clone());
    if let Some(l) = &s.load {
        let hot = crate::rebalance::hot_shard(l).unwrap_or_default();
        field(
            &mut out,
            "Load",
            format!(
                "imbalance {:.2}: {hot} (kubectl quiver rebalance {} --dry-run)",
                l.imbalance, s.name
            ),
        );
    }

    out.push_str("\nVersions:\n");
    if s.versions.is_empty() {
        out.push_str("  none yet\n");
    } else {
        for l in versions::table(&s.versions, wide).lines() {
            let _ = writeln!(out, "  {l}");
        }
    }

    let list = |out: &mut String, title: &str, lines: &[String]| {
        if !lines.is_empty() {
            let _ = writeln!(out, "\n{title}:");
            for l in lines {
                let _ = writeln!(out, "  {l}");
            }
        }
    };
    list(&mut out, "In progress", &s.in_progress);
    list(&mut out, "Needs attention", &s.attention);
    if s.in_progress.is_empty() && s.attention.is_empty() {
        out.push_str("\nNothing in progress; nothing needs attention.\n");
    }

    if !s.conditions.is_empty() {
        out.push_str("\nConditions:\n");
        let rows: Vec<Vec<String>> = s
            .conditions
            .iter()
            .map(|c| {
                vec![
                    c.type_.clone(),
                    c.status.clone(),
                    or_none(Some(&c.reason)),
                    output::age(Some(&c.last_transition_time), now),
                    c.message.clone(),
                ]
            })
            .collect();
        for l in output::table(&["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"], &rows).lines() {
            let _ = writeln!(out, "  {l}");
        }
    }
    out
}

pub async fn run(g: &Global, args: &Args) -> anyhow::Result<()> {
    let kube = connect(g).await?;
    let now = Timestamp::now();
    if let Some(name) = &args.name {
        let s = summary(&kube.index(name).await?, now);
        match args.out.document(&s)? {
            Some(text) => print!("{text}"),
            None => print!("{}", detail(&s, args.out.wide(), now)),
        }
        return Ok(());
    }
    let api = if args.all_namespaces {
        kube::Api::<VectorIndex>::all(kube.client.clone())
    } else {
        kube.indexes()
    };
    let mut items = api
        .list(&ListParams::default())
        .await
        .map_err(|e| anyhow::anyhow!("listing vectorindexes: {e}"))?
        .items;
    items.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let list = List {
        items: items.iter().map(|vi| summary(vi, now)).collect(),
    };
    if let Some(text) = args.out.document(&list)? {
        print!("{text}");
    } else if list.items.is_empty() {
        if args.all_namespaces {
            eprintln!("No VectorIndex found.");
        } else {
            eprintln!("No VectorIndex found in {} namespace.", kube.namespace);
        }
    } else {
        print!(
            "{}",
            list_table(&list.items, args.out.wide(), args.all_namespaces)
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::versions::tests::{now, sample};

    #[test]
    fn a_version_in_preparation_is_in_progress_and_stuck_after_ten_minutes() {
        let vi = sample();
        let (progress, attention) = diagnose(&vi, now());
        assert_eq!(
            progress[0],
            "v3-0a0b0c0d is Building for 14m (trigger retrain:ticket-9); 2 failed attempts: build part 1 failed: no space left on device"
        );
        assert!(progress[1].starts_with("Progressing (Building): v3-0a0b0c0d is Building"));
        assert_eq!(
            attention,
            ["v3-0a0b0c0d has been Building for 14m: see kubectl quiver logs docs --role build"]
        );
    }

    #[test]
    fn degraded_conditions_failed_versions_and_unobserved_asks_are_reported() {
        let mut vi = sample();
        let st = vi.status.as_mut().unwrap();
        st.versions[0].phase = VersionPhase::Failed;
        st.versions[0].reason = Some("GateFailed: recall 0.7100 < minRecall 0.9".into());
        st.target_version = None;
        st.conditions[1].status = "False".into();
        st.conditions[2].status = "True".into();
        st.conditions[2].reason = "GateFailed".into();
        st.conditions[2].message = "v3-0a0b0c0d: GateFailed: recall 0.7100 < minRecall 0.9".into();
        vi.metadata.generation = Some(3);
        vi.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(quiver_api::annotations::RETRAIN.into(), "ticket-10".into());
        let (progress, attention) = diagnose(&vi, now());
        assert_eq!(
            progress,
            [
                "spec generation 3 not yet observed by the operator (status is of generation 2)",
                "retrain \"ticket-10\" asked for, not yet acted on"
            ]
        );
        // The failed version's reason is in the Degraded line already: said once.
        assert_eq!(
            attention,
            ["Degraded (GateFailed): v3-0a0b0c0d: GateFailed: recall 0.7100 < minRecall 0.9"]
        );
        // Pinned: the retrain waits, and says so.
        vi.spec.pinned_version = Some("v2-0a0b0c0d".into());
        let (_, attention) = diagnose(&vi, now());
        assert!(
            attention[0]
                .starts_with("retrain \"ticket-10\" waits: spec.pinnedVersion is v2-0a0b0c0d"),
            "{attention:?}"
        );
    }

    #[test]
    fn an_index_without_status_points_at_the_operator() {
        let mut vi = sample();
        vi.status = None;
        let (p, a) = diagnose(&vi, now());
        assert!(p.is_empty());
        assert!(a[0].contains("--role operator"), "{a:?}");
        let s = summary(&vi, now());
        assert_eq!(s.phase, None);
        let t = list_table(&[s], false, false);
        assert!(
            t.lines()
                .nth(1)
                .unwrap()
                .starts_with("docs   <none>   <none>"),
            "{t}"
        );
    }

    #[test]
    fn the_list_and_the_detail_view() {
        let s = summary(&sample(), now());
        assert_eq!(s.age, "3h");
        let t = list_table(std::slice::from_ref(&s), false, false);
        assert_eq!(
            t,
            "NAME   PHASE   ACTIVE        SHARDS   ROUTERS   RECALL   AGE\n\
             docs   Ready   v2-0a0b0c0d   4/4      2/2       0.9700   3h\n"
        );
        let w = list_table(std::slice::from_ref(&s), true, true);
        let first = w.lines().nth(1).unwrap();
        assert!(first.starts_with("search      docs   Ready"), "{w}");
        assert!(
            first.ends_with("has been Building for 14m: see kubectl quiver logs docs --role build"),
            "{w}"
        );

        let d = detail(&s, false, now());
        assert!(
            d.contains("Active:    v2-0a0b0c0d (gate recall 0.9700)"),
            "{d}"
        );
        assert!(d.contains("\nVersions:\n  NAME "), "{d}");
        assert!(
            d.contains("\nIn progress:\n  v3-0a0b0c0d is Building"),
            "{d}"
        );
        assert!(
            d.contains("\nNeeds attention:\n  v3-0a0b0c0d has been Building"),
            "{d}"
        );
        assert!(d.contains("Progressing   True     Building"), "{d}");
        assert!(!d.contains("Load:"), "no load measured: {d}");
        let mut loaded = summary(&sample(), now());
        loaded.load = Some(crate::rebalance::tests::sample());
        let d = detail(&loaded, false, now());
        assert!(
            d.contains("Load:      imbalance 1.60: shard 0 takes 80% of the load on 1 replica"),
            "{d}"
        );
        assert!(
            d.contains("(kubectl quiver rebalance docs --dry-run)\n"),
            "{d}"
        );

        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["phase"], "Ready");
        assert_eq!(v["shards"]["ready"], 4);
        assert_eq!(v["versions"][1]["name"], "v2-0a0b0c0d");
        assert_eq!(v["conditions"][0]["type"], "Ready");
    }
}
